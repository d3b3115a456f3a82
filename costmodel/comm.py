"""Collective times from measured curves: NCCL bus bandwidth against message size, per collective and group size,
for the links inside a node and between nodes (a profile's ``collectives`` section).

Conventions are nccl-tests': ``size`` is the all-reduce buffer, the all-gather output and the reduce-scatter
input; ``busbw = size / time × f`` with ``f = 2(n-1)/n`` for all-reduce and ``(n-1)/n`` for all-gather and
reduce-scatter. So a collective of ``size`` bytes over ``n`` ranks takes ``f · size / busbw(size)``.

Rules where nothing was measured (each stated once, here):
- **sizes**: bus bandwidth is interpolated log-log between measured sizes; below the smallest the time stays at
  that size's (latency-bound), above the largest the bus bandwidth stays at the largest size's;
- **group sizes**: a group of ``n`` ranks uses the curve of the largest measured group ``m`` not above ``n`` (the
  smallest if none is), read at the same chunk per ring step: the bus bandwidth of ``size`` over ``n`` ranks is
  the curve's at ``size · m / n`` (a ring moves size / n per step; its bandwidth term does not grow with n);
- **collectives**: an unmeasured all-gather or reduce-scatter uses the all-reduce curve (NCCL's ring reaches
  the same bus bandwidth for all three), all-to-all the all-gather curve, and a point-to-point send of ``s``
  bytes takes what a 2-rank all-gather of ``2s`` takes (each rank sends its half once);
- **between nodes**: the inter-node curve was measured with ``members_per_node`` GPUs of each node in the group;
  NCCL gives each of them a NIC (rail), so a group with ``m`` members per node gets ``m / members_per_node`` of
  that bus bandwidth, and never more than the same collective inside a node;
- **all-to-all between nodes** also takes at least the bytes each GPU sends to other nodes, ``size · (n - m) / n``,
  over its own NIC: nothing aggregates them as hierarchical all-reduces do. A NIC's rate is the inter-node tier's
  largest all-reduce bus bandwidth per member of a node (the convention ``HardwareProfile.with_cluster`` scales by).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import SpecError, require, short

OPS = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all")
_FALLBACK = {"all_gather": "all_reduce", "reduce_scatter": "all_reduce", "all_to_all": "all_gather"}


def bus_factor(op: str, world_size: int) -> float:
    """NCCL's bus-bandwidth factor: bytes each GPU moves over its link per byte of message."""
    if world_size < 1:
        raise ValueError(f"world_size {world_size} must be at least 1")
    n = world_size
    factors = {"all_reduce": 2.0 * (n - 1) / n, "all_gather": (n - 1) / n, "reduce_scatter": (n - 1) / n,
               "all_to_all": (n - 1) / n, "send_recv": 1.0}
    if op not in factors:
        raise ValueError(f"unknown collective {op!r}; use one of {', '.join(factors)}")
    return factors[op]


@dataclass(kw_only=True, frozen=True)
class Tier:
    """One tier of links: measured bus-bandwidth curves per collective and group size."""

    source: str
    """Where the curves come from (measured: date, GPUs, command; or a publication)."""
    curves: dict[str, dict[int, list[list[float]]]]
    """{collective: {ranks: [[size_bytes, busbw_GBps], ...]}} with collective in all_reduce, all_gather,
    reduce_scatter, all_to_all (all_reduce is required)."""
    members_per_node: int | None = None
    """Between nodes: GPUs of each node in the measured groups (the NICs the curve had); None inside a node."""
    scale: float = 1.0
    """Multiplier of every bus bandwidth: a link faster or slower than the measured one (the profile's NIC rate
    over the curve's, a cluster's stated link speed), said in ``source``."""
    _cache: dict = field(default_factory=dict, init=False, compare=False, repr=False, hash=False)

    def _curve(self, op: str, n: int) -> tuple[int, np.ndarray, np.ndarray, str]:
        """(measured ranks m, log sizes, log bus bandwidths in B/s, collective) of the curve that stands for
        ``op`` over ``n`` ranks."""
        key = (op, n)
        if key not in self._cache:
            cur = op
            while cur not in self.curves:
                cur = _FALLBACK.get(cur, "all_reduce")
            by_n = self.curves[cur]
            below = [m for m in by_n if m <= n]
            m = max(below) if below else min(by_n)
            pts = np.asarray(sorted(by_n[m]), dtype=float)
            self._cache[key] = (m, np.log(pts[:, 0]), np.log(pts[:, 1] * 1e9 * self.scale), cur)
        return self._cache[key]

    def time_s(self, op: str, n: int, nbytes) -> np.ndarray:
        """Seconds of ``op`` over ``n`` ranks on this tier for sizes ``nbytes`` (array); 0 for n = 1."""
        nbytes = np.maximum(np.asarray(nbytes, dtype=float), 1.0)
        if n <= 1:
            return np.zeros_like(nbytes)
        m, ls, lb, cur = self._curve(op, n)
        # a ring's bus bandwidth depends on the chunk each step moves, size / ranks: look up the same chunk
        x = np.log(nbytes * m / n)
        busbw = np.exp(np.interp(x, ls, lb))
        # below the smallest size the time stays (latency-bound): bus bandwidth falls in proportion
        busbw = np.where((x < ls[0]) & (len(ls) > 1), np.exp(lb[0] + x - ls[0]), busbw)
        return bus_factor(op, n) * nbytes / busbw

def parse_tier(data: object, source: str, key: str) -> Tier:
    """A tier from its profile mapping, with one-line errors naming the key."""
    require(isinstance(data, dict), source, key, f"is {short(data)}", "give source, curves (and members_per_node)")
    unknown = set(data) - {"source", "curves", "members_per_node", "scale"}
    require(not unknown, source, f"{key}.{sorted(unknown)[0] if unknown else ''}", "unknown key",
            "a tier has source, curves, members_per_node and scale")
    scale = data.get("scale", 1.0)
    require(isinstance(scale, (int, float)) and scale > 0, source, f"{key}.scale", f"is {short(scale)}",
            "a positive multiplier of the curves' bus bandwidth (say why in source)")
    require(isinstance(data.get("source"), str) and len(data["source"]) >= 8, source, f"{key}.source",
            "missing or empty", "say where the curves come from")
    curves = data.get("curves")
    require(isinstance(curves, dict) and "all_reduce" in curves, source, f"{key}.curves",
            "needs at least an all_reduce curve", "give {all_reduce: {ranks: [[bytes, busbw_GBps], ...]}}")
    out: dict[str, dict[int, list[list[float]]]] = {}
    for op, by_n in curves.items():
        require(op in OPS, source, f"{key}.curves.{op}", "unknown collective", f"use one of {', '.join(OPS)}")
        require(isinstance(by_n, dict) and by_n, source, f"{key}.curves.{op}", "is empty",
                "give {ranks: [[bytes, busbw_GBps], ...]}")
        out[op] = {}
        for n, pts in by_n.items():
            where = f"{key}.curves.{op}.{n}"
            require(isinstance(n, int) and n >= 2, source, where, "ranks must be an integer >= 2", "fix the key")
            ok = isinstance(pts, list) and len(pts) >= 1 and all(
                isinstance(p, list) and len(p) == 2 and all(isinstance(v, (int, float)) and v > 0 for v in p)
                for p in pts)
            require(ok, source, where, "is not a list of [bytes, busbw_GBps] pairs > 0", "fix the points")
            sizes = [p[0] for p in pts]
            require(len(set(sizes)) == len(sizes), source, where, "repeats a size", "one point per size")
            out[op][n] = sorted([int(a) if float(a).is_integer() else float(a), float(b)] for a, b in pts)
    m = data.get("members_per_node")
    require(m is None or (isinstance(m, int) and m >= 1), source, f"{key}.members_per_node", f"is {short(m)}",
            "a positive integer (GPUs of each node in the measured groups)")
    return Tier(source=data["source"], curves=out, members_per_node=m, scale=float(scale))


def tier_dict(t: Tier) -> dict:
    out = {"source": t.source, "curves": {op: {n: [list(p) for p in pts] for n, pts in by_n.items()}
                                          for op, by_n in t.curves.items()}}
    if t.members_per_node is not None:
        out["members_per_node"] = t.members_per_node
    if t.scale != 1.0:
        out["scale"] = t.scale
    return out


def group_time_s(intra: Tier, inter: Tier, op: str, n: int, members_per_node: int, nodes: int, nbytes) -> np.ndarray:
    """Seconds of ``op`` over a group of ``n`` ranks laid out as ``members_per_node`` GPUs on each of ``nodes``
    nodes (one node: the intra-node curve; several: the slower of the intra-node curve and the NICs the group's
    members of a node drive, module docstring)."""
    t_in = intra.time_s(op, n, nbytes)
    if nodes <= 1:
        return t_in
    if inter.members_per_node is None:
        raise SpecError("profile", "collectives.inter_node.members_per_node", "missing",
                        "say how many GPUs of each node the inter-node curves had")
    share = members_per_node / inter.members_per_node
    t = np.maximum(t_in, inter.time_s(op, n, nbytes) / share)
    if op == "all_to_all":
        t = np.maximum(t, np.asarray(nbytes, dtype=float) * (n - members_per_node) / n / nic_bytes_per_s(inter))
    return t


def nic_bytes_per_s(inter: Tier) -> float:
    """One GPU's NIC rate between nodes (B/s): the tier's largest all-reduce bus bandwidth per node member."""
    best = max(pts[-1][1] for pts in inter.curves["all_reduce"].values())
    return best * 1e9 * inter.scale / (inter.members_per_node or 1)
