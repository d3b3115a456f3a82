"""The trainer's kernel choices (Plan.rope_impl, loss_impl, norm_impl, swiglu_impl) as inputs of the cost formulas.

The formulas (memory.py, timing.py) are written once in symbols such as ``R.rope_eager`` (bytes per q/k element of
an eager block's RoPE) or ``R.loss_fwd`` (live bytes per logit in the loss's forward); which runtime constant feeds
each symbol depends on the choice, and ``KERNEL_CONSTANTS`` below is the one table that says so. Every value is a
constant of profiles/runtime/loadmaster.yaml with its source. Compiled blocks use the ``*_compiled`` constants
whatever the in-block choices say (inductor fuses RoPE, norms and SwiGLU itself; the trainer warns).
"""
from __future__ import annotations

import math
import typing
from typing import Mapping, Sequence

import numpy as np

from .constants import runtime_constants
from .plan import KERNEL_KEYS, Plan
from .specs import ModelSpec

KERNEL_CONSTANTS: dict[str, dict[str, dict[str, str]]] = {
    "rope_impl": {impl: {"rope_eager": f"rope_bytes_{impl}", "kern_rope": f"rope_kernels_{impl}"}
                  for impl in ("eager", "eager_transposed", "liger")},
    "norm_impl": {impl: {"normres_eager": f"norm_residual_bytes_{impl}", "kern_norm": f"norm_kernels_{impl}"}
                  for impl in ("eager", "liger")},
    "swiglu_impl": {impl: {"gate_eager": f"mlp_gate_bytes_{impl}", "kern_act": f"swiglu_kernels_{impl}",
                           "gate_saved": f"mlp_gate_saved_tensors_{impl}"} for impl in ("eager", "liger")},
    "loss_impl": {impl: {"loss_fwd": f"loss_forward_bytes_per_logit{sfx}",
                         "loss_bwd": f"loss_backward_bytes_per_logit{sfx}",
                         "loss_traffic": f"loss_traffic_bytes_per_logit{sfx}",
                         "loss_keep": f"loss_retained_bytes_per_logit{sfx}"}
                  for impl, sfx in (("eager", ""), ("compiled", "_compiled"), ("liger_fused", "_liger_fused"))},
}
"""plan key -> choice -> {formula symbol: runtime constant}."""

DEFAULT_KERNELS = {k: next(f for f in Plan.__dataclass_fields__.values() if f.name == k).default for k in KERNEL_KEYS}
"""The Plan's default choices (what the tuner prices until it searches kernels)."""


def choices(key: str) -> tuple[str, ...]:
    """The values plan key ``key`` accepts (its Literal type)."""
    return typing.get_args(typing.get_type_hints(Plan)[key])


def loss_chunks(tokens: float, vocab_size: int, hidden_size: int) -> int:
    """Token chunks liger-kernel 0.8.5's fused linear cross-entropy cuts a micro-batch into
    (ops/fused_linear_cross_entropy.py): chunks of next_power_of_2(ceil(tokens / ceil(V / h))) tokens."""
    tokens = int(tokens)
    inc = -(-vocab_size // hidden_size)
    chunk = min(1 << max(0, math.ceil(math.log2(max(1, -(-tokens // inc))))), tokens)
    return -(-tokens // chunk)


def kernel_inputs(kernels: Mapping[str, str | Sequence[str]], *, model: ModelSpec | None = None,
                  tokens: float | np.ndarray | None = None) -> dict[str, float | np.ndarray]:
    """The formula inputs of the kernel choices ``kernels`` (plan key -> choice, or an array of choices over
    candidates; keys left out take the Plan's default). With ``model`` and ``tokens`` (per micro-batch) it also
    gives the fused loss's flag ``fl`` and token chunks ``nch``; without them, those of the unfused loss."""
    consts = runtime_constants()
    picked = {k: kernels.get(k, DEFAULT_KERNELS[k]) for k in KERNEL_KEYS}
    out: dict[str, float | np.ndarray] = {}
    for key, choice in picked.items():
        table = KERNEL_CONSTANTS[key]
        if isinstance(choice, str):
            for sym, name in table[choice].items():
                out[sym] = consts[name].value
            continue
        arr = np.asarray(choice)
        for sym in next(iter(table.values())):
            out[sym] = np.array([consts[table[c][sym]].value for c in arr.tolist()], dtype=float)
    loss = picked["loss_impl"]
    fused = (np.asarray(loss) == "liger_fused").astype(float)
    out["fl"] = float(fused) if fused.ndim == 0 else fused
    if model is None or tokens is None or not fused.any():
        out["nch"] = 1.0 if fused.ndim == 0 else np.ones_like(fused)
    else:
        t = np.broadcast_to(np.asarray(tokens, dtype=float), fused.shape)
        n = np.array([loss_chunks(x, model.vocab_size, model.hidden_size) for x in t.reshape(-1)], dtype=float)
        out["nch"] = np.where(fused > 0, n.reshape(fused.shape), 1.0) if fused.ndim else float(n[0])
    return out


def plan_kernels(plan: Plan) -> dict[str, str]:
    """The plan's kernel choices, by plan key."""
    return {k: getattr(plan, k) for k in KERNEL_KEYS}
