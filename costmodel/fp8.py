"""Which Linear layers torchao converts to float8: its size filter, stated once for the trainer and the cost model.

torchao's default filters come from its H100 microbenchmarks (../shared/DESIGN.md): on a Linear with K input and
N output features, tensorwise skips ``K <= 4096 and N <= 1024``; rowwise skips ``N <= 2048 or K <= 1024 or
(N <= 4096 and K <= 2048)``. Skipped Linears stay in bf16.
"""
from __future__ import annotations

import math

from .specs import ModelSpec

PROBE_SHARE = 0.01
"""The share of training time the float8 loss-sensitivity probe may take (the float8 schedule's accepted overhead)."""


def fp8_skipped(in_features: int, out_features: int, recipe: str) -> bool:
    """Whether torchao's size filter leaves a Linear in bf16 (too small for float8 to pay)."""
    k, n = in_features, out_features
    if recipe == "tensorwise":
        return k <= 4096 and n <= 1024
    if recipe == "rowwise":
        return n <= 2048 or k <= 1024 or (n <= 4096 and k <= 2048)
    raise ValueError(f"fp8_recipe {recipe!r} is unknown; use tensorwise or rowwise")


def fp8_eligible(model: ModelSpec, recipe: str = "tensorwise") -> dict[str, int]:
    """Which Linears of a block torchao converts to float8 (1) or leaves in bf16 (0), by the cost model's names:
    e_q (wq), e_kv (wk, wv), e_o (wo), e_up (w1, w3), e_down (w2)."""
    h, F, dh = model.hidden_size, model.intermediate_size, int(model.head_dim)
    a, g = model.num_attention_heads, model.kv_heads
    shapes = {"e_q": (h, a * dh), "e_kv": (h, g * dh), "e_o": (a * dh, h), "e_up": (h, F), "e_down": (F, h)}
    return {k: int(not fp8_skipped(*kn, recipe)) for k, kn in shapes.items()}


def probe_every(probe_s: float, step_time_s: float) -> int:
    """Steps between two float8 loss-sensitivity probes that keeps them within PROBE_SHARE of the training time:
    ``probe_s`` (Prediction.fp8_probe_s) over that share of ``step_time_s``, rounded up, at least 1."""
    if probe_s <= 0 or step_time_s <= 0:
        return 1
    return max(1, math.ceil(probe_s / (PROBE_SHARE * step_time_s)))
