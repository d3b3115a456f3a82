"""The search space of the tuner: which plan knobs it may choose, and the parallel layouts that are legal."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from costmodel.specs import ClusterSpec, ModelSpec

ZERO_LEVELS = (0, 2, 3)  # zero 1 runs as 2 under FSDP2 (costmodel.plan.Plan), so the tuner never offers it


@dataclass(kw_only=True, frozen=True)
class SearchSpace:
    """What the tuner may choose. ``None`` leaves a knob free; a value pins it."""

    tp: int | None = None
    """Pinned tensor-parallel degree."""
    pp: int | None = None
    """Pinned pipeline degree."""
    dp: int | None = None
    """Pinned data-parallel degree."""
    micro_batch_size: int | None = None
    """Pinned micro-batch size."""
    zero: tuple[int, ...] = ZERO_LEVELS
    """ZeRO levels to consider."""
    recompute: tuple[str, ...] = ("none", "full", "selective")
    """Checkpointing modes to consider ("none" = no block checkpointed)."""
    compile: tuple[bool, ...] = (False, True)
    """torch.compile off/on."""
    offload: bool = True
    """Consider offloading activations and state to the CPU."""
    max_fp8_fraction: float = 0.0
    """Largest share of a stage's blocks that may run in float8 (0 = off; float8 changes numerics)."""
    fp8_rotation_steps: int = 100
    """When only part of a stage runs in float8, rotate the float8 set every this many steps (DPQuant)."""
    schedules: tuple[str, ...] = ("1F1B", "Interleaved1F1B")
    """Pipeline schedules to consider (Interleaved1F1B is tried on the best 1F1B plans)."""
    cross_node_tp: bool = False
    """Allow a tensor-parallel group to span nodes."""
    sequence_parallel: bool = True
    """Use sequence parallelism with tp > 1."""
    layer_slack: int = 2
    """Stages may hold this many blocks more or fewer than the even split (Mist: 2)."""
    knob_levels: int = 9
    """At most this many values of each per-stage block count (checkpointed, offloaded) are sampled."""
    max_micro_batch_size: int = 64
    """Largest micro-batch considered."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_fp8_fraction <= 1.0:
            raise ValueError(f"max_fp8_fraction {self.max_fp8_fraction} must be between 0 and 1")
        bad = set(self.recompute) - {"none", "full", "selective"}
        if bad:
            raise ValueError(f"recompute {sorted(bad)} unknown; use none, full or selective")
        if not set(self.zero) <= {0, 1, 2, 3}:
            raise ValueError(f"zero {self.zero} must be within 0-3")
        bad = set(self.schedules) - {"1F1B", "Interleaved1F1B", "GPipe"}
        if bad:
            raise ValueError(f"schedules {sorted(bad)} unknown; use 1F1B, Interleaved1F1B or GPipe")


def divisors(n: int) -> list[int]:
    small = [d for d in range(1, int(math.isqrt(n)) + 1) if n % d == 0]
    return sorted(set(small + [n // d for d in small]))


def tp_degrees(model: ModelSpec, cluster: ClusterSpec, space: SearchSpace) -> list[int]:
    """TP degrees that divide heads, kv heads and the MLP, inside a node unless allowed."""
    out = []
    for t in divisors(cluster.num_gpus):
        if model.num_attention_heads % t or model.kv_heads % t or model.intermediate_size % t:
            continue
        if t > cluster.gpus_per_node and not space.cross_node_tp:
            continue
        if space.tp is not None and t != space.tp:
            continue
        out.append(t)
    return out


def layouts(model: ModelSpec, cluster: ClusterSpec, space: SearchSpace, seq_len: int) -> list[tuple[int, int, int]]:
    """Every (tp, pp, dp) with tp·pp·dp = GPUs that the model and the pins allow."""
    N, L = cluster.num_gpus, model.num_hidden_layers
    out = []
    for t in tp_degrees(model, cluster, space):
        if t > 1 and space.sequence_parallel and seq_len % t:
            continue
        for p in divisors(N // t):
            if p > L or (space.pp is not None and p != space.pp):
                continue
            d = N // (t * p)
            if space.dp is not None and d != space.dp:
                continue
            out.append((t, p, d))
    return out


def micro_batches(global_batch: int, dp: int, pp: int, space: SearchSpace) -> list[tuple[int, int]]:
    """(micro-batch size, micro-batches per step) that split the global batch exactly."""
    if global_batch % dp:
        return []
    per_rank = global_batch // dp
    out = []
    for mbs in divisors(per_rank):
        if mbs > space.max_micro_batch_size or (space.micro_batch_size is not None and mbs != space.micro_batch_size):
            continue
        M = per_rank // mbs
        if pp > 1 and M < pp:
            continue
        out.append((mbs, M))
    return out


def levels(n: int) -> np.ndarray:
    """n fractions spread over [0, 1] (both ends kept); a knob's value is round(fraction × its upper bound)."""
    return np.linspace(0.0, 1.0, max(n, 2))


def layer_counts(num_layers: int, stages: int, slack: int) -> list[int]:
    """Block counts a stage may hold: the even split ± slack, at least 1."""
    even = num_layers / stages
    lo, hi = max(1, math.floor(even) - slack), min(num_layers - stages + 1, math.ceil(even) + slack)
    return list(range(lo, hi + 1))
