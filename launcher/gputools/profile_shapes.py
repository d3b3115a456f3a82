"""Which problem sizes `loadmaster profile` measures: the GEMMs and attention calls the shipped models make.

Pure functions (no device), so the choice of shapes is tested on CPU.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence, TypeVar

from costmodel.specs import RECIPES, ModelSpec, load_model

T = TypeVar("T")


@dataclass(frozen=True, order=True, slots=True)
class GemmShape:
    """``(m, k) @ (k, n)``: m tokens, k input features, n output features (a Linear's x @ W.T)."""

    m: int
    n: int
    k: int

    @property
    def flops(self) -> float:
        return 2.0 * self.m * self.n * self.k


@dataclass(frozen=True, order=True, slots=True)
class AttentionShape:
    """One causal SDPA call: q is (batch, heads, seq, head_dim); k and v have kv_heads heads (GQA)."""

    batch: int
    heads: int
    kv_heads: int
    seq: int
    head_dim: int

    @property
    def flops(self) -> float:
        # Convention shared with the cost model (attention curve): the forward does 4·b·a·s²·dh (QK^T and PV,
        # 2 FLOPs per multiply-add), halved by the causal mask -> 2·b·a·s²·dh; the flash-style backward
        # recomputes the scores and does dQ, dK, dV, dP: 2.5x the forward. Forward + backward = 3.5x.
        return 3.5 * 2.0 * self.batch * self.heads * self.seq ** 2 * self.head_dim


def recipe_models() -> list[ModelSpec]:
    """Every shipped model recipe (recipes/models/*.yaml)."""
    return [load_model(p) for p in sorted((RECIPES / "models").glob("*.yaml"))]


def local_heads(model: ModelSpec, tp: int) -> tuple[int, int] | None:
    """(query heads, kv heads) on one of ``tp`` ranks, or None if the heads cannot be split that way.

    Query heads must divide evenly; kv heads split evenly or, when tp is a multiple of them, are replicated
    so each rank holds one (Megatron's GQA rule).
    """
    a, g = model.num_attention_heads, model.kv_heads
    if a % tp:
        return None
    if g % tp == 0:
        return a // tp, g // tp
    return (a // tp, 1) if tp % g == 0 else None


def projection_shapes(model: ModelSpec, tokens: int, tp: int) -> list[GemmShape]:
    """The four block projections of one tensor-parallel rank (column-parallel split n, row-parallel k).

    QKV h -> (a + 2g)·dh and up h -> F are column-parallel; out a·dh -> h and down F -> h are row-parallel
    (Megatron). Projections that cannot be split tp ways are left out (the model cannot use that degree).
    """
    h, f, dh = model.hidden_size, model.intermediate_size, int(model.head_dim)
    out = []
    heads = local_heads(model, tp)
    if heads is not None:
        a, g = heads
        out += [GemmShape(tokens, (a + 2 * g) * dh, h), GemmShape(tokens, h, a * dh)]
    if f % tp == 0:
        out += [GemmShape(tokens, f // tp, h), GemmShape(tokens, h, f // tp)]
    return out


def model_gemm_shapes(models: Iterable[ModelSpec], tokens: Sequence[int], tp_degrees: Sequence[int]) -> list[GemmShape]:
    """Distinct projection GEMMs over models x tokens per micro-batch x tensor-parallel degrees, sorted."""
    shapes = {s for mdl in models for m in tokens for tp in tp_degrees for s in projection_shapes(mdl, m, tp)}
    return sorted(shapes, key=lambda s: (s.flops, s))


def square_shapes(sizes: Sequence[int]) -> list[GemmShape]:
    return [GemmShape(s, s, s) for s in sizes]


def model_attention_shapes(models: Iterable[ModelSpec], seq_lens: Sequence[int], head_dims: Sequence[int],
                           tp_degrees: Sequence[int], tokens: int) -> list[AttentionShape]:
    """Distinct per-rank attention calls: heads split by tp (kv heads replicated when tp exceeds them),
    batch = tokens // seq so every call holds about the same number of tokens."""
    shapes = set()
    for mdl in models:
        dh = int(mdl.head_dim)
        if dh not in head_dims:
            continue
        for tp in tp_degrees:
            heads = local_heads(mdl, tp)
            if heads is None:
                continue
            for s in seq_lens:
                shapes.add(AttentionShape(max(1, tokens // s), heads[0], heads[1], s, dh))
    return sorted(shapes, key=lambda s: (s.flops, s))


def spread(items: Sequence[T], count: int | None, key: Callable[[T], float]) -> list[T]:
    """At most ``count`` items evenly spaced in log(key) order, smallest and largest kept (None: all)."""
    ordered = sorted(items, key=key)
    if count is None or len(ordered) <= count:
        return ordered
    if count < 2:
        raise ValueError(f"count {count} must be at least 2 to keep both ends of the size range")
    logs = [math.log(key(x)) for x in ordered]
    targets = [logs[0] + (logs[-1] - logs[0]) * i / (count - 1) for i in range(count)]
    picked: list[int] = []
    for t in targets:  # nearest unpicked item to each target
        best = min((i for i in range(len(ordered)) if i not in picked), key=lambda i: abs(logs[i] - t))
        picked.append(best)
    return [ordered[i] for i in sorted(picked)]
