"""Pipeline schedules as the cost model sees them: micro-batches in flight per rank, and the step time
of stages that run concurrently (Mist's imbalance-aware form)."""
from __future__ import annotations

import numpy as np


def in_flight(schedule: str, pp: int, rank, num_microbatches, virtual_stages: int = 1):
    """Micro-batches whose activations a pipeline rank holds at its peak (per stage chunk for interleaved).

    1F1B: rank i runs pp - i warm-up forwards before its first backward. GPipe: all micro-batches.
    Interleaved 1F1B (Megatron's order): 2(pp-i-1) + (v-1)·pp + 1 chunk-forwards, spread over v chunks.
    """
    rank = np.asarray(rank)
    Mb = np.asarray(num_microbatches)
    if pp == 1:
        return np.ones_like(rank + Mb, dtype=float)
    if schedule == "GPipe":
        return np.asarray(Mb + 0 * rank, dtype=float)
    if schedule == "Interleaved1F1B":
        v = virtual_stages
        chunks = np.minimum(2 * (pp - rank - 1) + (v - 1) * pp + 1, Mb * v)
        return chunks / v
    return np.minimum(pp - rank, Mb).astype(float)


def step_time(t_mb, delta, num_microbatches: int, virtual_stages: int = 1):
    """Step time of pipeline ranks with per-micro-batch times ``t_mb`` and once-per-step extras ``delta``
    (arrays over ranks, first rank first; a trailing candidate axis is allowed).

    ``(M - 1)·max T + (Σ T + (v - 1)·max T) / v + max_i (D_i - Σ_{j<i} T_j)``: the bottleneck rank runs the
    steady state, every rank adds its share of the fill and drain bubble, and a rank's extra work is hidden by
    the time earlier ranks are still busy. One rank: ``M·T + D``.
    """
    t_mb, delta = np.asarray(t_mb, dtype=float), np.asarray(delta, dtype=float)
    Mb, v = num_microbatches, virtual_stages
    tmax = t_mb.max(axis=0)
    before = np.cumsum(t_mb, axis=0) - t_mb
    dmax = np.maximum((delta - before).max(axis=0), 0.0)
    return (Mb - 1) * tmax + (t_mb.sum(axis=0) + (v - 1) * tmax) / v + dmax


def bubble_time(t_mb, num_microbatches: int, virtual_stages: int = 1):
    """Idle time of the bottleneck rank: the step minus its own work (for the breakdown)."""
    t_mb = np.asarray(t_mb, dtype=float)
    return step_time(t_mb, np.zeros_like(t_mb), num_microbatches, virtual_stages) \
        - num_microbatches * t_mb.max(axis=0)
