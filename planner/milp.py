"""Inter-stage choice: pick each pipeline rank's block count and candidate to minimise the step time of
costmodel.pipeline.step_time, ``a·Tmax + b·ΣT + Dmax`` with ``Dmax ≥ D_i − Σ_{j<i} T_j`` (Mist's imbalance-aware
form; ``a = M − 1 + (v − 1)/v``, ``b = 1/v`` for ``v`` chunks per rank, v = 1 without interleaving).

An exact dynamic programme over Tmax and blocks used solves it with ``Dmax`` replaced by ``D_0`` (a lower bound,
and usually the optimum: later ranks' extras hide behind earlier ranks' work); the MILP (HiGHS) closes the rest.
"""
from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass

import numpy as np
import pulp

from costmodel.pipeline import step_time

from .stages import Options


@dataclass
class Choice:
    """A solved pipeline: the candidate index of every rank, its step time, a lower bound on the best step time of
    these candidates, and how it was found."""

    picks: list[int]
    objective: float
    bound: float
    status: str          # optimal | time limit (incumbent) | dynamic programme
    seconds: float

    @property
    def gap(self) -> float:
        return max(0.0, 1.0 - self.bound / self.objective) if self.objective > 0 else 0.0


def coefficients(M: int, v: int = 1) -> tuple[float, float]:
    """(a, b) of ``a·Tmax + b·ΣT + Dmax`` for M micro-batches and v chunks per rank (costmodel.pipeline)."""
    return M - 1 + (v - 1) / v, 1.0 / v


def objective(options: list[Options], picks: list[int], M: int, v: int = 1) -> float:
    t = np.array([o.T[j] for o, j in zip(options, picks)])
    d = np.array([o.D[j] for o, j in zip(options, picks)])
    return float(step_time(t, d, M, v))


def _dp(options: list[Options], L: int, taus: np.ndarray, weight: np.ndarray, d_weight: np.ndarray):
    """For each weighting w (rows of ``weight`` and ``d_weight``, shape (weightings, ranks)) and each τ: the least
    ``Σ_i w_i·T_i + d_i·D_i`` over block splits and candidates with every T ≤ τ (shape (weightings, len(taus))),
    and the back-pointers to rebuild a choice. Blocks used after each rank are kept within what the ranks before
    and after can still make up."""
    nl, nt, pp = weight.shape[0], len(taus), len(options)
    n_min = [int(o.n.min()) for o in options]
    n_max = [int(o.n.max()) for o in options]
    cost = np.full((nl, nt, L + 1), math.inf)
    cost[:, :, 0] = 0.0
    back = []
    for i, o in enumerate(options):
        lo = max(sum(n_min[:i + 1]), L - sum(n_max[i + 1:]))
        hi = min(sum(n_max[:i + 1]), L - sum(n_min[i + 1:]))
        new = np.full((nl, nt, L + 1), math.inf)
        arg = np.full((nl, nt, L + 1), -1, dtype=np.int64)
        for n in np.unique(o.n):
            a0, a1 = max(lo, n), hi                      # blocks used after this rank
            if a1 < a0:
                continue
            idx = np.nonzero(o.n == n)[0]
            idx = idx[np.argsort(o.T[idx], kind="stable")]
            val = weight[:, i, None] * o.T[idx][None, :] + d_weight[:, i, None] * o.D[idx][None, :]
            run = np.minimum.accumulate(val, axis=1)                  # best value among the k fastest
            pos = np.arange(len(idx))[None, :]
            at = np.maximum.accumulate(np.where(val <= run, pos, 0), axis=1)
            k = np.searchsorted(o.T[idx], taus, side="right") - 1   # fastest-first prefix under each Tmax
            has = k >= 0
            kk = np.maximum(k, 0)
            c = np.where(has[None, :], run[:, kk], math.inf)          # (weightings, taus)
            j = np.where(has[None, :], idx[at[:, kk]], -1)
            cand = cost[:, :, a0 - n:a1 - n + 1] + c[:, :, None]
            tgt = new[:, :, a0:a1 + 1]
            better = cand < tgt
            np.copyto(tgt, cand, where=better)
            np.copyto(arg[:, :, a0:a1 + 1], np.broadcast_to(j[:, :, None], better.shape), where=better)
        cost = new
        back.append(arg)
    return cost[:, :, L], back


def _rebuild(options: list[Options], back, w: int, t: int, L: int) -> list[int] | None:
    picks, rest = [], L
    for i in range(len(options) - 1, -1, -1):
        j = int(back[i][w, t, rest])
        if j < 0:
            return None
        picks.append(j)
        rest -= int(options[i].n[j])
    return picks[::-1]


def split_dp(options: list[Options], L: int, M: int, v: int = 1, cutoff: float = math.inf
             ) -> tuple[Choice | None, float]:
    """A lower bound of the step time over block splits and candidates, exact dynamic programmes, and the best
    choice they find (scored with the full step time: a warm start and an upper bound).

    For a Tmax τ (every rank's T ≤ τ) and weights λ_k ≥ 0 summing to 1, ``Dmax ≥ Σ_k λ_k (D_k − Σ_{j<k} T_j)``,
    so the step time is at least ``a·τ + Σ_j (b − Σ_{k>j} λ_k)·T_j + Σ_k λ_k·D_k`` — a sum over ranks, which a
    dynamic programme over ranks and blocks used minimises exactly for every τ at once. Weights tried: each rank
    alone (exact when one rank's extra sets Dmax) and all ranks equally (exact when the extras balance, as when
    CPU optimizer steps of offloaded state dominate). The bound is the least over τ of the largest of these.

    Only τ from the largest of the ranks' least T up to ``cutoff / a`` are tried: a larger τ alone gives a step
    time of at least ``cutoff``, which the returned bound then does not exceed."""
    t0 = time.perf_counter()
    a, b = coefficients(M, v)
    pp = len(options)
    taus = np.unique(np.concatenate([o.T for o in options]))
    t_low = max(float(o.T.min()) for o in options)
    taus = taus[(taus >= t_low) & (a * taus < cutoff)] if a > 0 else taus[taus >= t_low]
    if len(taus) == 0:
        return None, cutoff
    # ranks whose extra can set Dmax: the first always; a later one only if its largest extra can exceed the
    # first's least extra after the least time of the ranks before it
    t_min = np.array([float(o.T.min()) for o in options])
    ks = [0] + [k for k in range(1, pp) if float(options[k].D.max()) - t_min[:k].sum() > float(options[0].D.min())]
    lambdas = [np.eye(pp)[k] for k in ks]
    if pp > 1:
        lambdas.append(np.full(pp, 1.0 / pp))
    lam = np.array(lambdas)                                                  # (weightings, ranks)
    after = np.concatenate([np.cumsum(lam[:, ::-1], axis=1)[:, ::-1][:, 1:], np.zeros((len(lam), 1))], axis=1)
    g, back = _dp(options, L, taus, b - after, lam)                           # Σ_{k>j} λ_k in ``after``
    per = a * taus[None, :] + g
    best_lb = per.max(axis=0)
    if not np.isfinite(best_lb).any():
        return None, cutoff
    t_star = int(np.argmin(best_lb))
    lb = min(float(best_lb[t_star]), cutoff)
    best: tuple[float, list[int]] | None = None
    for w in range(len(lam)):
        for t in {t_star, int(np.argmin(per[w]))}:
            if not math.isfinite(g[w, t]):
                continue
            picks = _rebuild(options, back, w, t, L)
            if picks is None:
                continue
            obj = objective(options, picks, M, v)
            if best is None or obj < best[0]:
                best = (obj, picks)
    if best is None:
        return None, lb
    obj, picks = best
    return Choice(picks, obj, min(lb, obj), "dynamic programme", time.perf_counter() - t0), lb


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


def _warm_highs():
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
    return _WarmHiGHS


def solve(options: list[Options], L: int, M: int, v: int = 1, *, time_limit_s: float = 10.0, gap: float = 0.01,
          warm: Choice | None = None) -> Choice | None:
    """The inter-stage MILP with HiGHS (time limit and relative gap always set): the best choice found and the
    solver's lower bound. None when no assignment of block counts can sum to L."""
    t0 = time.perf_counter()
    a, b = coefficients(M, v)
    if len(options) == 1:
        o = options[0]
        idx = np.nonzero(o.n == L)[0]
        if len(idx) == 0:
            return None
        val = M * o.T[idx] + o.D[idx]
        j = int(idx[np.argmin(val)])
        obj = objective(options, [j], M, v)
        return Choice([j], obj, obj, "optimal", time.perf_counter() - t0)
    prob = pulp.LpProblem("stages", pulp.LpMinimize)
    if hasattr(prob, "add_variable"):   # pulp >= 3.3 attaches variables to the model
        var = lambda name, **kw: prob.add_variable(name, **kw)  # noqa: E731
    else:
        var = pulp.LpVariable
    x = [[var(f"x_{i}_{j}", cat="Binary") for j in range(len(o))] for i, o in enumerate(options)]
    tmax = var("tmax", lowBound=0)
    dmax = var("dmax", lowBound=0)
    T = [pulp.lpSum(float(o.T[j]) * x[i][j] for j in range(len(o))) for i, o in enumerate(options)]
    prob += a * tmax + b * pulp.lpSum(T) + dmax
    for i, o in enumerate(options):
        prob += pulp.lpSum(x[i]) == 1
        prob += tmax >= T[i]
        D = pulp.lpSum(float(o.D[j]) * x[i][j] for j in range(len(o)))
        prob += dmax >= D - pulp.lpSum(T[:i])
    prob += pulp.lpSum(int(o.n[j]) * x[i][j] for i, o in enumerate(options) for j in range(len(o))) == L
    if warm is not None:
        for i, j in enumerate(warm.picks):
            for jj, xv in enumerate(x[i]):
                xv.setInitialValue(1.0 if jj == j else 0.0)
        t_w = [options[i].T[j] for i, j in enumerate(warm.picks)]
        tmax.setInitialValue(max(t_w))
        dmax.setInitialValue(max(0.0, max(options[i].D[j] - sum(t_w[:i]) for i, j in enumerate(warm.picks))))
    solver = _warm_highs()(msg=False, timeLimit=max(0.05, time_limit_s), gapRel=gap, threads=1)
    _swallow_highs_banner()
    status = prob.solve(solver)
    model = prob.solverModel
    import highspy
    hs = model.getModelStatus()
    if status != pulp.LpStatusOptimal or pulp.value(prob.objective) is None:
        return warm
    picks = [int(np.argmax([xv.varValue or 0.0 for xv in row])) for row in x]
    info = model.getInfo()
    dual = float(getattr(info, "mip_dual_bound", -math.inf))
    timed_out = hs == highspy.HighsModelStatus.kTimeLimit
    obj = objective(options, picks, M, v)
    bound = max(dual if math.isfinite(dual) else -math.inf, warm.bound if warm is not None else -math.inf)
    if warm is not None and warm.objective < obj:
        picks, obj = warm.picks, warm.objective
    return Choice(picks, obj, min(bound, obj) if math.isfinite(bound) else 0.0,
                  "time limit (incumbent)" if timed_out else "optimal", time.perf_counter() - t0)


def floor_bound(T: np.ndarray, D: np.ndarray, ns: np.ndarray, L: int, M: int, v: int = 1, n_taus: int = 32
                ) -> np.ndarray:
    """Lower bounds of the step time from per-rank floors, one per case: ``T[c, i, j]`` and ``D[c, i, j]`` bound the
    time per micro-batch and the once-per-step extra of every candidate of case c's rank i with ``ns[j]`` blocks
    (inf: none fits).

    As in ``split_dp``, for each Tmax τ and weights λ (the first rank, the last, all equally)
    ``step ≥ a·τ + Σ_j w_j·T_j + Σ_k λ_k·D_k`` with ``w_j = b − Σ_{k>j} λ_k``; a rank with w_j ≥ 0 counts its floor,
    one with w_j < 0 counts τ (its T is at most τ). A dynamic programme over ranks and blocks used minimises it for
    a grid of τ per case: for τ between grid points τ_k ≤ τ < τ_k+1 the bound takes a·τ_k and the programme's value
    at τ_k+1 (which never rises with τ)."""
    a, b = coefficients(M, v)
    C, pp, N = T.shape
    lams = np.unique(np.array([np.eye(pp)[0], np.eye(pp)[pp - 1], np.full(pp, 1.0 / pp)]), axis=0)
    after = np.concatenate([np.cumsum(lams[:, ::-1], axis=1)[:, ::-1][:, 1:], np.zeros((len(lams), 1))], axis=1)
    w = b - after                                                                     # (λ, ranks)
    pos, neg = np.maximum(w, 0.0), np.minimum(w, 0.0).sum(axis=1)
    # a τ grid per case, from the largest of the ranks' least floors to the largest finite floor
    fin = np.where(np.isfinite(T), T, np.nan)
    t_low = np.nanmax(np.nanmin(fin, axis=2), axis=1)                                # (C,)
    t_high = np.nanmax(fin.reshape(C, -1), axis=1)
    grid = t_low[:, None] + (t_high - t_low)[:, None] * np.linspace(0, 1, n_taus)[None, :]   # (C, τ)
    nl, nt = len(lams), n_taus
    cost = np.full((C, nl, nt, L + 1), math.inf)
    cost[..., 0] = 0.0
    for i in range(pp):
        new = np.full_like(cost, math.inf)
        for j, n in enumerate(ns):
            n = int(n)
            if n > L:
                continue
            t, d = T[:, i, j], D[:, i, j]                                            # (C,)
            val = pos[None, :, i] * t[:, None] + lams[None, :, i] * d[:, None]        # (C, λ)
            c = np.where((t[:, None] <= grid)[:, None, :], val[:, :, None], math.inf)       # (C, λ, τ)
            np.minimum(new[..., n:], cost[..., :L + 1 - n] + c[..., None], out=new[..., n:])
        cost = new
    g = cost[..., L]                                                                  # (C, λ, τ)
    up = np.concatenate([g[..., 1:], g[..., -1:]], axis=2)
    upper = np.concatenate([grid[:, 1:], grid[:, -1:]], axis=1)
    per = a * grid[:, None, :] + up + neg[None, :, None] * upper[:, None, :]
    per = np.where(np.isnan(per), math.inf, per)
    out = per.max(axis=1).min(axis=1)
    out[~np.isfinite(t_low)] = math.inf
    return out
