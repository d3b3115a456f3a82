"""Intra-stage search: every per-stage knob combination evaluated at once with the cost model, memory
filtered, and each stage position's Pareto frontier of (time per micro-batch, once-per-step extra)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from costmodel.hardware import HardwareProfile
from costmodel.memory import IN_STEP_PHASES
from costmodel.pipeline import in_flight
from costmodel.plan import vocab_matrices
from costmodel.specs import ClusterSpec, ModelSpec
from costmodel.stage import evaluate, hardware_inputs, knob_inputs, model_inputs

from .space import SearchSpace, layer_counts, levels, moe_layers_of_role

OUTPUTS = ("t_mb", "delta", *IN_STEP_PHASES, "peak_optimizer", "act_per_microbatch",
           "accumulator_bytes", "host_state", "host_act_per_microbatch")
KNOBS = ("zero", "mode", "k", "rev", "l", "r", "oa", "os", "f")  # mode: 0 none, 1 full, 2 selective;
# rev: gradients reduced after every micro-batch (grad_reduce: every; only without pipelining)
MODE_CODE = {"none": 0, "full": 1, "selective": 2}
ROLES = {"only": (1, 1), "first": (1, 0), "middle": (0, 0), "last": (0, 1)}


@dataclass
class Group:
    """One parallel layout and micro-batch split: every stage of it shares these."""

    tp: int
    pp: int
    dp: int
    mbs: int
    M: int
    ep: int = 1
    cp: int = 1


@dataclass
class StageTable:
    """Candidates of one stage role in one group: knob columns and cost columns (arrays, same length)."""

    knobs: dict[str, np.ndarray]
    t_mb: np.ndarray
    delta: np.ndarray
    m_fit: np.ndarray          # most micro-batches in flight that fit in GPU and host memory

    def take(self, idx: np.ndarray) -> "StageTable":
        return StageTable({k: v[idx] for k, v in self.knobs.items()}, self.t_mb[idx], self.delta[idx],
                          self.m_fit[idx])

    def __len__(self) -> int:
        return len(self.t_mb)


def roles(pp: int) -> list[str]:
    return ["only"] if pp == 1 else ["first"] + (["middle"] if pp > 2 else []) + ["last"]


def role_of(stage: int, pp: int) -> str:
    return "only" if pp == 1 else "first" if stage == 0 else "last" if stage == pp - 1 else "middle"


def knob_grid(model: ModelSpec, g: Group, role: str, space: SearchSpace) -> dict[str, np.ndarray]:
    """All per-stage knob combinations of a role, as flat integer columns."""
    L = model.num_hidden_layers
    ls = [L] if g.pp == 1 else layer_counts(L, g.pp, space.layer_slack)
    modes = [MODE_CODE[m] for m in space.recompute]
    frac = levels(space.knob_levels)
    off = levels(3) if space.offload else np.zeros(1)
    fp8 = [0.0, space.max_fp8_fraction] if space.max_fp8_fraction > 0 else [0.0]
    rev = [0, 1] if g.pp == 1 and g.M > 1 else [0]
    zeros = [z for z in space.zero if not (z == 0 and g.cp > 1)]   # cp shards over dp × cp (costmodel.plan)
    grid = np.meshgrid(np.asarray(zeros), modes, [int(c) for c in space.compile], rev, ls, frac, off, off,
                       fp8, indexing="ij")
    zero, mode, k, rev, l, fr, fa, fs, ff = (x.ravel() for x in grid)
    r = np.where(mode == 0, 0, np.round(fr * l)).astype(int)
    if 0 not in modes:
        r = np.maximum(r, 1)
    oa = np.round(fa * (l - r)).astype(int)
    os_ = np.round(fs * l).astype(int)
    f = np.where(k == 1, np.floor(ff * l + 1e-9), 0).astype(int)     # float8 pays only when compiled
    mode = np.where(r == 0, 0, mode)
    # rounding repeats some rows; the Pareto step drops repeats, cheaper than sorting them out here
    return dict(zip(KNOBS, (zero, mode, k, rev, l, r, oa, os_, f)))


def evaluate_role(model: ModelSpec, cluster: ClusterSpec, prof: HardwareProfile, seq_len: int, g: Group,
                  role: str, space: SearchSpace, fixed: dict | None = None) -> StageTable:
    """Cost every knob combination of one stage role; keep those that fit at least one micro-batch."""
    kn = knob_grid(model, g, role, space)
    first, last = ROLES[role]
    nV = vocab_matrices(first, last, g.pp, model.tie_word_embeddings)
    inputs = knob_inputs(b=g.mbs, s=seq_len, t=g.tp, d=g.dp, pp=g.pp, zero=kn["zero"],
                         sequence_parallel=space.sequence_parallel, selective=(kn["mode"] == 2), l=kn["l"],
                         r=kn["r"], oa=kn["oa"], os=kn["os"], f=kn["f"], compile=kn["k"], m=0.0, M=g.M,
                         first=first, last=last, nV=nV, reduce_every=kn["rev"], ep=g.ep,
                         lm=moe_layers_of_role(model, role, kn["l"], g.pp), cp=g.cp)
    inputs["acc"] = np.zeros(1)
    fixed = fixed or {**model_inputs(model), **hardware_inputs(prof)}
    out = evaluate(OUTPUTS, {**fixed, **inputs}, prof, cluster.gpus_per_node)
    n = len(kn["l"])
    out = {k: np.broadcast_to(np.asarray(v, dtype=float), (n,)) for k, v in out.items()}
    m_fit = fitting_microbatches(out, prof, cluster, g.M)
    table = StageTable(kn, out["t_mb"], out["delta"], m_fit)
    return table.take(np.nonzero(m_fit >= 1)[0])


def fitting_microbatches(out: dict, prof: HardwareProfile, cluster: ClusterSpec, M: int) -> np.ndarray:
    """Largest number of micro-batches in flight (0..M) whose peak fits the GPU and the host.

    Memory is linear in the micro-batches in flight m; the fp32 gradient accumulators exist at the peak
    unless all M micro-batches are in flight at once (costmodel.stage.knob_inputs: acc)."""
    cap = prof.usable_memory_bytes
    base = np.max([out[ph] for ph in IN_STEP_PHASES], axis=0)
    act = np.maximum(out["act_per_microbatch"], 1.0)
    ok_opt = out["peak_optimizer"] <= cap
    below_M = np.floor((cap - base - out["accumulator_bytes"]) / act)
    fits_all = base + M * act <= cap
    # all M in flight needs no accumulators; fewer do (acc): M counts only if every smaller number fits too, as the
    # caller asks for "at least m_needed" (a MoE stage's unsharded fp32 accumulators can outweigh M - m activations)
    m = np.where(fits_all & ((below_M >= M - 1) | (M == 1)), M, np.clip(below_M, 0, M - 1))
    host_cap = prof.host_budget_bytes / cluster.gpus_per_node
    host_m = np.floor((host_cap - out["host_state"]) / np.maximum(out["host_act_per_microbatch"], 1.0))
    m = np.minimum(m, np.where(out["host_state"] <= host_cap, host_m, -1))
    return np.where(ok_opt, np.maximum(m, 0), 0).astype(np.int64)


def pareto(t: np.ndarray, d: np.ndarray, keep: int) -> np.ndarray:
    """Indices of the (t, d) Pareto frontier (both minimised), sampled down to ``keep`` points evenly along
    it, the fastest and the smallest-extra points always kept."""
    if len(t) == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.lexsort((d, t))
    best_d = np.minimum.accumulate(d[order])
    prev = np.concatenate(([np.inf], best_d[:-1]))
    front = order[d[order] < prev]
    if len(front) > keep:
        front = front[np.unique(np.round(np.linspace(0, len(front) - 1, keep)).astype(int))]
    return front


def stage_options(table: StageTable, m_needed: int, keep: int) -> StageTable:
    """A stage's frontier: per block count, the Pareto points among candidates that fit m_needed in flight."""
    ok = np.nonzero(table.m_fit >= m_needed)[0]
    picks = []
    for l in np.unique(table.knobs["l"][ok]):
        sel = ok[table.knobs["l"][ok] == l]
        picks.append(sel[pareto(table.t_mb[sel], table.delta[sel], keep)])
    idx = np.concatenate(picks) if picks else np.zeros(0, dtype=np.int64)
    return table.take(idx)


def needed_in_flight(pp: int, M: int) -> list[int]:
    """1F1B: stage i holds min(pp - i, M) micro-batches at its peak."""
    return [int(x) for x in in_flight("1F1B", pp, np.arange(pp), M)]
