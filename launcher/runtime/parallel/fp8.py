"""torchao float8 training on the Linear layers of some blocks, with an optional rotating float8 window."""
from __future__ import annotations

import dataclasses
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from costmodel.fp8 import fp8_skipped
from launcher.runtime.model import Transformer
from launcher.runtime.moe import MoE


def _switchable_class():
    from torchao.float8.float8_linear import Float8Linear

    class SwitchableFloat8Linear(Float8Linear):
        """A torchao Float8Linear that runs its matmuls in float8 only while ``float8_enabled``; otherwise it is
        a plain ``F.linear`` on the same weight object (what rotation needs: no new parameters, no new
        optimizer)."""

        float8_enabled: bool = True

        def forward(self, input: torch.Tensor) -> torch.Tensor:
            if self.float8_enabled:
                return super().forward(input)
            return F.linear(input, self.weight, self.bias)

    return SwitchableFloat8Linear


def apply_fp8(model: Transformer, *, num_blocks: int, recipe: Literal["tensorwise", "rowwise"],
              emulate: bool, rotating: bool, skip_small: bool = True) -> list[list[nn.Module]]:
    """Swap Linear layers of transformer blocks for torchao float8 Linears; returns them grouped per block.

    Without rotation only the Linears of the first ``num_blocks`` blocks of the stage are converted (and run
    in float8 from then on). With ``rotating`` every block's Linears are converted but only the current window
    (``Fp8Rotation``) runs in float8; the others compute ``F.linear`` in the parameter dtype. Linears torchao's
    size filter would skip stay ``nn.Linear`` (``skip_small=False`` only for CPU tests on tiny models). The
    weight ``Parameter`` objects are kept, so apply this before TP/FSDP and before building the optimizer.
    ``emulate=True`` (no CUDA GPU) computes float8 casts and scaled matmuls in high precision on any device.
    Embedding and output projection are never converted (torchao leaves them to bf16 too).
    """
    if num_blocks <= 0:
        return []
    try:
        from torchao.float8 import Float8LinearConfig
    except ImportError:
        raise ValueError("fp8_layers > 0 needs torchao (pip install torchao; 0.18 matches torch 2.11), "
                         "or set fp8_layers: 0") from None
    config = dataclasses.replace(Float8LinearConfig.from_recipe_name(recipe), emulate=emulate)
    cls = _switchable_class()
    names = list(model.layers.keys())
    chosen = names if rotating else names[:num_blocks]
    groups = []
    for name in chosen:
        block, converted = model.layers[name], []
        for child_name, child in list(block.named_modules()):
            # a MoE block's router and experts stay bf16 (the cost model prices them so)
            if type(child) is not nn.Linear or isinstance(getattr(block, "feed_forward", None), MoE) \
                    and child_name.startswith("feed_forward."):
                continue
            if skip_small and fp8_skipped(child.in_features, child.out_features, recipe):
                continue
            new = cls.from_float(child, config=config)
            parent_name, _, attr = child_name.rpartition(".")
            setattr(block.get_submodule(parent_name) if parent_name else block, attr, new)
            converted.append(new)
        groups.append(converted)
    return groups


class Fp8Rotation:
    """DPQuant-style rotation of the float8 window over one stage's blocks.

    At step ``t`` the window is blocks [w, w + n) modulo the stage's B blocks, with
    w = (t // rotation_steps) · n mod B: every ``rotation_steps`` steps it shifts by ``n`` = fp8_layers blocks,
    so over B / n periods every block spends the same number of steps in float8.
    """

    def __init__(self, groups: list[list[nn.Module]], *, num_blocks: int, rotation_steps: int) -> None:
        self.groups, self.num_blocks, self.rotation_steps = groups, num_blocks, rotation_steps

    def window(self, step: int) -> list[int]:
        """Stage-local indices of the blocks that run in float8 at ``step``."""
        total = len(self.groups)
        if self.rotation_steps <= 0 or self.num_blocks >= total:
            return list(range(min(self.num_blocks, total)))
        start = (step // self.rotation_steps) * self.num_blocks % total
        return sorted((start + i) % total for i in range(self.num_blocks))

    def set_step(self, step: int) -> list[int]:
        """Route each converted Linear through float8 or not for ``step``; returns the window."""
        active = set(self.window(step))
        for i, linears in enumerate(self.groups):
            for lin in linears:
                lin.float8_enabled = i in active
        return sorted(active)
