"""Inter-stage MILP: pick each pipeline stage's block count and candidate to minimise Mist's
imbalance-aware step time ``(M-1)·Tmax + Σ T_i + Dmax`` with ``Dmax ≥ D_i - Σ_{j<i} T_j``."""
from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass

import numpy as np
import pulp

from costmodel.pipeline import step_time

from .stages import StageTable


@dataclass
class Choice:
    """A solved pipeline: the candidate index of every stage, its objective, and how it was found."""

    picks: list[int]
    objective: float
    gap: float
    status: str          # optimal | time limit (incumbent) | dynamic programme
    seconds: float


def objective(options: list[StageTable], picks: list[int], M: int) -> float:
    t = np.array([o.t_mb[j] for o, j in zip(options, picks)])
    d = np.array([o.delta[j] for o, j in zip(options, picks)])
    return float(step_time(t, d, M))


def split_dp(options: list[StageTable], L: int, M: int) -> tuple[Choice | None, float]:
    """Exact minimum of ``(M-1)·Tmax + Σ T_i + D_0`` over block splits and candidates, by enumerating Tmax
    and a dynamic programme over stages and blocks used (vectorised over every Tmax at once); returns that
    solution (scored with the full objective: a warm start and upper bound) and a lower bound of the MILP.

    Given Tmax, every stage should take, per block count, its fastest candidate under Tmax; only the
    first stage trades time against its once-per-step extra D_0, which usually sets Dmax (later stages'
    extras are hidden behind the earlier stages' work)."""
    t0 = time.perf_counter()
    taus = np.unique(np.concatenate([o.t_mb for o in options]))
    nt = len(taus)
    cost = np.full((nt, L + 1), math.inf)
    cost[:, 0] = 0.0
    back = []
    for i, o in enumerate(options):
        new = np.full((nt, L + 1), math.inf)
        arg = np.full((nt, L + 1), -1, dtype=np.int64)
        for n in np.unique(o.knobs["l"]):
            idx = np.nonzero(o.knobs["l"] == n)[0]
            idx = idx[np.argsort(o.t_mb[idx], kind="stable")]
            val = o.t_mb[idx] + (o.delta[idx] if i == 0 else 0.0)
            run = np.minimum.accumulate(val)                       # best value among the k fastest
            at = np.maximum.accumulate(np.where(val <= run, np.arange(len(idx)), 0))
            k = np.searchsorted(o.t_mb[idx], taus, side="right") - 1  # fastest-first prefix under each Tmax
            has = k >= 0
            c = np.where(has, run[np.maximum(k, 0)], math.inf)
            j = np.where(has, idx[at[np.maximum(k, 0)]], -1)
            shifted = np.full((nt, L + 1), math.inf)
            shifted[:, n:] = cost[:, :L + 1 - n] + c[:, None]
            better = shifted < new
            new = np.where(better, shifted, new)
            arg = np.where(better, j[:, None], arg)
        cost = new
        back.append(arg)
    totals = (M - 1) * taus + cost[:, L]
    if not np.isfinite(totals).any():
        return None, math.inf
    best = int(np.argmin(totals))
    lb = float(totals[best])
    picks, rest = [], L
    for i in range(len(options) - 1, -1, -1):
        j = int(back[i][best, rest])
        picks.append(j)
        rest -= int(options[i].knobs["l"][j])
    picks = picks[::-1]
    # lb is the exact minimum of (M-1)·Tmax + ΣT + D_0, and the MILP's Dmax >= D_0: it bounds the MILP
    obj = objective(options, picks, M)
    return Choice(picks, obj, max(0.0, obj / lb - 1.0), "dynamic programme", time.perf_counter() - t0), lb


_banner_shown = False


def _swallow_highs_banner() -> None:
    """HiGHS >= 1.16 prints its banner from C++ (file descriptor 1) when the process builds its first solver,
    whatever output_flag says, and never again. Build that first one with stdout pointed at /dev/null, so no
    `plan`, `plan --json` or notebook ever shows it; later solvers are silent (output_flag off)."""
    global _banner_shown
    if _banner_shown:
        return
    import highspy
    sys.stdout.flush()
    saved, null = os.dup(1), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
        highspy.Highs()
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(null)
    _banner_shown = True


class _WarmHiGHS(pulp.HiGHS):
    """pulp.HiGHS that hands the variables' initial values to HiGHS as a MIP start (pulp 3.x has none)."""

    def callSolver(self, lp):  # noqa: N802 (pulp's name)
        import highspy
        start = [v.varValue if v.varValue is not None else 0.0 for v in lp.variables()]
        if any(start):
            sol = highspy.HighsSolution()
            sol.col_value = start
            sol.value_valid = True
            lp.solverModel.setSolution(sol)
        lp.solverModel.run()


def solve(options: list[StageTable], L: int, M: int, *, time_limit_s: float = 10.0, gap: float = 0.01,
          warm: Choice | None = None) -> Choice | None:
    """Solve the inter-stage MILP with HiGHS (time limit and relative gap always set); on a time-out the
    incumbent is returned with its gap. None when no assignment of block counts can sum to L."""
    t0 = time.perf_counter()
    pp = len(options)
    if pp == 1:
        o = options[0]
        idx = np.nonzero(o.knobs["l"] == L)[0]
        if len(idx) == 0:
            return None
        j = int(idx[np.argmin(M * o.t_mb[idx] + o.delta[idx])])
        return Choice([j], float(M * o.t_mb[j] + o.delta[j]), 0.0, "optimal", time.perf_counter() - t0)
    prob = pulp.LpProblem("stages", pulp.LpMinimize)
    if hasattr(prob, "add_variable"):   # pulp >= 3.3 attaches variables to the model
        var = lambda name, **kw: prob.add_variable(name, **kw)  # noqa: E731
    else:
        var = pulp.LpVariable
    x = [[var(f"x_{i}_{j}", cat="Binary") for j in range(len(o))] for i, o in enumerate(options)]
    tmax = var("tmax", lowBound=0)
    dmax = var("dmax", lowBound=0)
    T = [pulp.lpSum(float(o.t_mb[j]) * x[i][j] for j in range(len(o))) for i, o in enumerate(options)]
    prob += (M - 1) * tmax + pulp.lpSum(T) + dmax
    for i, o in enumerate(options):
        prob += pulp.lpSum(x[i]) == 1
        prob += tmax >= T[i]
        D = pulp.lpSum(float(o.delta[j]) * x[i][j] for j in range(len(o)))
        prob += dmax >= D - pulp.lpSum(T[:i])
    prob += pulp.lpSum(int(o.knobs["l"][j]) * x[i][j] for i, o in enumerate(options) for j in range(len(o))) == L
    if warm is not None:
        for i, j in enumerate(warm.picks):
            for jj, var in enumerate(x[i]):
                var.setInitialValue(1.0 if jj == j else 0.0)
        t_w = [options[i].t_mb[j] for i, j in enumerate(warm.picks)]
        tmax.setInitialValue(max(t_w))
        dmax.setInitialValue(max(0.0, max(options[i].delta[j] - sum(t_w[:i]) for i, j in enumerate(warm.picks))))
    solver = _WarmHiGHS(msg=False, timeLimit=max(0.05, time_limit_s), gapRel=gap, threads=1)
    _swallow_highs_banner()
    status = prob.solve(solver)
    model = prob.solverModel
    hs = model.getModelStatus()
    import highspy
    if status != pulp.LpStatusOptimal or pulp.value(prob.objective) is None:
        return warm
    picks = [int(np.argmax([v.varValue or 0.0 for v in row])) for row in x]
    info = model.getInfo()
    mip_gap = float(getattr(info, "mip_gap", 0.0))
    timed_out = hs == highspy.HighsModelStatus.kTimeLimit
    obj = objective(options, picks, M)
    if warm is not None and warm.objective < obj:
        return warm
    return Choice(picks, obj, mip_gap if math.isfinite(mip_gap) else 0.0,
                  "time limit (incumbent)" if timed_out else "optimal", time.perf_counter() - t0)
