"""torchao float8 training on the Linear layers of some blocks; which of them run in float8 at each step is
``fp8_schedule.Fp8Schedule``'s choice."""
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
    (``Fp8Schedule``) runs in float8; the others compute ``F.linear`` in the parameter dtype. Linears torchao's
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
