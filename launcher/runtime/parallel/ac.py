"""Activation checkpointing of the first N transformer blocks of a stage: full or selective per-op."""
from __future__ import annotations

import functools
from typing import Literal

import torch
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

from launcher.runtime.model import Transformer

_aten = torch.ops.aten
# Ops whose outputs selective AC saves: every matmul and every SDPA backend (names vary by device and version).
_SAVED_OP_NAMES = [
    ("mm", "default"), ("addmm", "default"), ("bmm", "default"), ("_scaled_mm", "default"), ("_grouped_mm", "default"),
    ("_scaled_dot_product_flash_attention", "default"),
    ("_scaled_dot_product_efficient_attention", "default"),
    ("_scaled_dot_product_cudnn_attention", "default"),
    ("_scaled_dot_product_flash_attention_for_cpu", "default"),
]


def _ignore_profiler_markers() -> None:
    """Let selective checkpointing ignore the profiler's record_function markers, as it ignores ``aten.detach``.

    FSDP2 wraps its hooks in ``record_function``; a unit nested in a checkpointed block (a MoE block's experts under
    expert parallelism, launcher.runtime.parallel.fsdp) enters them a different number of times in the recompute
    than in forward, which the cache of saved outputs reports as nondeterminism. The markers touch no tensor."""
    from torch.utils import checkpoint
    profiler = torch.ops.profiler
    for packet, overloads in ((profiler._record_function_enter_new, ("default",)),
                              (profiler._record_function_exit, ("default", "_RecordFunction"))):
        checkpoint.SAC_IGNORED_OPS.update(getattr(packet, o) for o in overloads if hasattr(packet, o))


def saved_ops() -> set:
    """The aten overloads selective checkpointing keeps (those this torch build has)."""
    ops = set()
    for name, overload in _SAVED_OP_NAMES:
        packet = getattr(_aten, name, None)
        if packet is not None and hasattr(packet, overload):
            ops.add(getattr(packet, overload))
    return ops


def _selective_policy(saved: set, ctx, op, *args, **kwargs) -> CheckpointPolicy:
    return CheckpointPolicy.MUST_SAVE if op in saved else CheckpointPolicy.PREFER_RECOMPUTE


def selective_context_fn():
    """A ``context_fn`` for ``torch.utils.checkpoint.checkpoint`` implementing the selective policy."""
    _ignore_profiler_markers()
    return create_selective_checkpoint_contexts(functools.partial(_selective_policy, saved_ops()))


def apply_ac(model: Transformer, *, mode: Literal["none", "full", "selective"], num_blocks: int) -> None:
    """Wrap the first ``num_blocks`` blocks of ``model.layers`` (in stage order) in non-reentrant checkpointing.

    - ``full``: a block saves only its input; backward re-runs its whole forward (Korthikanti's 2sbh per block
      at 16 bit, for the stored input only).
    - ``selective``: a block saves the outputs of every matmul (aten mm/addmm/bmm/_scaled_mm: the q, k, v, wo,
      w1, w3, w2 projections) and of scaled-dot-product attention, and recomputes everything else in backward
      (norms, RoPE, SiLU and the gate product, residual adds, casts; with tensor parallelism also the
      all-gathers/reduce-scatters between them, which follow non-saved ops).
    Blocks after the first ``num_blocks`` are untouched. The wrapper's ``_checkpoint_wrapped_module`` prefix is
    stripped from ``state_dict`` keys and by DCP's state-dict helpers, so checkpoints do not see it.
    """
    if mode == "none" or num_blocks <= 0:
        return
    if mode not in ("full", "selective"):
        raise ValueError(f"recompute {mode!r} is not supported; use none, full or selective")
    names = list(model.layers.keys())[:num_blocks]
    for name in names:
        block = model.layers[name]
        if mode == "full":
            wrapped = checkpoint_wrapper(block, preserve_rng_state=False)
        else:
            wrapped = checkpoint_wrapper(block, preserve_rng_state=False, context_fn=selective_context_fn)
        model.layers[name] = wrapped
