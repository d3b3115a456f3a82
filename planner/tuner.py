"""The tuner: the fastest plan that fits, with a lower bound on the step time over the whole space.

The search (planner.knobs names every knob and how it is searched):

1. Items are (layout, schedule): a (tp, cp, pp, dp) layout with its expert-parallel degree and micro-batch split,
   and one of its schedules (1F1B; Interleaved1F1B with 2–4 chunks). Each item holds its cases: every combination
   of zero level, checkpointing mode, compile, gradient reduction, sequence parallelism, float8 recipe, context-
   parallel exchange and kernel choices the layout allows.
2. Every item gets a memory-blind lower bound per case (planner.bounds: the least time per micro-batch of each
   rank role, over splits by Lagrangian relaxation), all layouts costed in a few batched calls of the cost model.
3. Best first: the item with the least bound is taken. The first time, its bound is refined — memory- and
   extra-aware floors per block count (planner.stages.RoleTable.floors), over splits by a dynamic programme with
   Tmax (planner.milp.floor_bound) — and it goes back into the queue; the second time it is searched. An item
   (or a case) whose bound is not below the best plan found less the gap is never searched; the search ends when
   the least bound in the queue reaches that threshold.
4. Searching an item: exact per-rank tables (planner.stages: every checkpointed and state-offloaded block count,
   the least activation offload that fits, float8 none or the most allowed; rows whose time floor exceeds what
   could still win are not costed). Without a pipeline each case's best candidate is its optimum. With one, a
   dynamic programme over splits with Tmax (planner.milp.split_dp; a lower bound and a plan) and, where it leaves
   a gap, the MILP pick each rank's candidate; the block counts widen from the even split until the bound shows
   that no count outside them can win (a count at which nothing fits ends the widening that way).

The certificate: every (item, case) contributes a lower bound — its solved optimum (or the solver's bound), the
bound that pruned it, or, for items a time limit left unsearched, their bound (0 for layouts not even bounded).
The least of them bounds every plan of the space; ``TuneResult.gap`` is the best plan's distance to it. Every plan
returned is costed by ``predict`` (check_plan and the fit rule) and must agree with the tables.

The runner-ups are the best plans of the other cases and items searched (only the first is certified); plans with
the same predicted time and memory are merged into one row.
"""
from __future__ import annotations

import heapq
import itertools
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from costmodel import ClusterSpec, ModelSpec, Plan, SpecError, load_cluster, load_model, parse_plan
from costmodel.hardware import HardwareProfile, profile_for
from costmodel.plan import even_split
from costmodel.prediction import Prediction, predict
from costmodel.specs import portable_ref

from .bounds import block_grid, position_bound, rho_candidates, sum_bound
from .knobs import cases as all_cases
from .milp import Choice, coefficients, floor_bound, solve, split_dp
from .space import Layout, Schedule, SearchSpace, expert_degrees, layouts, micro_batches, probe_problem, schedules, \
    uniform_blocks
from .stages import Cap, Context, RoleTable, case_inputs, cost_batch, even, in_flight_by_rank, role_of, roles

MILP_LIMIT_S = 2.5
"""Time limit of one case's MILP; one that runs out keeps its incumbent and its bound, which the certificate uses."""


def check_limits(top_k: int, time_limit_s: float, gap: float) -> None:
    """The search's own arguments, as user errors (ValueError naming the value and the fix)."""
    if not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top-k {top_k} must be a positive whole number of plans; use 1 or more")
    if not (isinstance(time_limit_s, (int, float)) and time_limit_s > 0) or math.isnan(time_limit_s):
        raise ValueError(f"time limit {time_limit_s} s must be a positive number of seconds; use e.g. 60")
    if not (isinstance(gap, (int, float)) and 0 <= gap < 1):
        raise ValueError(f"gap {gap} must be a relative gap in [0, 1); use e.g. 0.01 for 1 %")


@dataclass
class Candidate:
    """One plan the tuner found: its prediction, and how its case was solved."""

    plan: Plan
    prediction: Prediction
    gap: float
    """The case solver's own gap (the MILP's, or 0 where the case was solved exactly)."""
    status: str
    equivalent: list[Plan] = field(default_factory=list)
    """Other plans with the same predicted step time and peak memory, merged into this row."""

    @property
    def step_time_s(self) -> float:
        return self.prediction.step_time_s


@dataclass
class TuneResult:
    """What the tuner found. ``best`` is None when nothing fits; ``diagnosis`` then says why."""

    best: Candidate | None
    top: list[Candidate]
    seconds: float
    groups: int
    groups_searched: int
    cases_solved: int
    diagnosis: list[str] = field(default_factory=list)
    bound_s: float = 0.0
    """A lower bound on the step time of every plan of the space (all layouts, micro-batches, knobs)."""
    timed_out: bool = False
    """The time limit stopped the search before every layout was searched or bounded out."""
    groups_pruned: int = 0
    """Layouts whose bound showed they could not beat the plans found."""
    rows_costed: int = 0
    """Stage candidates the cost model evaluated."""
    gap_asked: float = 0.0
    """The relative gap within which the search stopped proving (``tune``'s ``gap``)."""

    @property
    def gap(self) -> float:
        """Relative distance of the best plan's step time to the lower bound (1 when there is no bound)."""
        if self.best is None:
            return math.nan
        return max(0.0, 1.0 - self.bound_s / self.best.step_time_s)

    def summary(self) -> str:
        """One line: what was searched, whether the time limit cut it, and the best plan's certified gap."""
        head = f"searched {self.groups_searched} of {self.groups} layouts in {self.seconds:.2f} s"
        if self.groups_pruned:
            head += f" ({self.groups_pruned} ruled out by the bound)"
        if self.timed_out:
            head += ": time limit"
        if self.best is None:
            return head + ("; no plan found before it" if self.timed_out else "; no plan fits")
        bound = f"{self.bound_s:.4g} s" if self.bound_s > 0 else "none (layouts left unbounded)"
        asked = ", the gap asked for" if not self.timed_out and self.gap_asked and \
            self.gap >= self.gap_asked - 1e-9 else ""
        return (f"{head}; best {'found ' if self.timed_out else ''}{self.best.step_time_s:.4g} s, gap to bound "
                f"{self.gap:.2%} (lower bound over the whole space: {bound}{asked})")


class TopK:
    """The k best plans so far, equivalent ones (same predicted time and peak memory) merged."""

    def __init__(self, k: int):
        self.k, self.items = k, []

    def kth(self) -> float:
        return self.items[self.k - 1].step_time_s if len(self.items) >= self.k else math.inf

    def best(self) -> float:
        return self.items[0].step_time_s if self.items else math.inf

    def push(self, c: Candidate) -> None:
        for other in self.items:
            if other.plan == c.plan or c.plan in other.equivalent:
                return
            if math.isclose(other.step_time_s, c.step_time_s, rel_tol=1e-9) and math.isclose(
                    other.prediction.peak_memory_bytes, c.prediction.peak_memory_bytes, rel_tol=1e-9):
                other.equivalent.append(c.plan)
                return
        self.items.append(c)
        self.items.sort(key=lambda x: x.step_time_s)
        del self.items[self.k:]


class Search:
    """State shared by the layouts of one tune call: context, top plans, the deadline and the certificate."""

    def __init__(self, ctx: Context, top: TopK, gap: float, deadline: float, refs: tuple[str | None, str | None]):
        self.ctx, self.top, self.gap, self.deadline, self.refs = ctx, top, gap, deadline, refs
        self.cases_solved = 0
        self.refused = 0
        self.exact = uniform_blocks(ctx.model)
        self._legal: dict = {}

    def threshold(self) -> float:
        """Bound at or above which nothing needs searching: the best plan so far, less the gap. (The runner-ups
        are the best plans of the cases and layouts this search solved; only the first is certified.)"""
        return self.top.best() * (1 - self.gap)

    def out_of_time(self) -> bool:
        return time.perf_counter() > self.deadline

    def legal_cases(self, g: Layout) -> list[dict]:
        """The cases of a layout whose every value check_plan accepts there (probed one knob value at a time)."""
        out = []
        for case in all_cases(self.ctx.space, g):
            ok = True
            for key, val in case.items():
                k = (g.tp, g.cp, g.pp, g.dp, g.ep, key, val)
                if k not in self._legal:
                    self._legal[k] = probe_problem(
                        self.ctx.model, self.ctx.cluster, global_batch_size=g.dp * g.pp, micro_batch_size=1,
                        seq_len=self.ctx.seq_len, dp=g.dp, tp=g.tp, pp=g.pp, cp=g.cp, ep=g.ep,
                        **{"zero": 2, "recompute": "none", "sequence_parallel": min(self.ctx.space.sequence_parallel),
                           key: val}) is None
                ok &= self._legal[k]
            if ok:
                out.append(case)
        return out

    # ---- plans ------------------------------------------------------------------------------------------
    def to_plan(self, g: Layout, s: Schedule, case: dict, picks: list[tuple[int, int, int, int, int]]) -> Plan:
        """The plan of per-rank counts (n, r, oa, os, f), chunks spread as planner.stages spreads them."""
        ctx, v, L = self.ctx, s.v, self.ctx.model.num_hidden_layers
        S = g.pp * v
        per = {k: [0] * S for k in ("n", "r", "oa", "os", "f")}
        for rank, (n, r, oa, os_, f) in enumerate(picks):
            nj, rj, osj = even([n], v)[0], even([r], v)[0], even([os_], v)[0]
            oaj = even([r + oa], v)[0] - rj
            fj = np.floor(ctx.space.max_fp8_fraction * nj + 1e-9).astype(int) if f > 0 else np.zeros(v, dtype=int)
            for j in range(v):
                c = rank + j * g.pp
                for k, x in (("n", nj), ("r", rj), ("oa", oaj), ("os", osj), ("f", fj)):
                    per[k][c] = int(x[j])
        one = lambda xs: xs[0] if len(set(xs)) == 1 else xs  # noqa: E731
        rec = case["recompute"] if any(per["r"]) else "none"
        partial = any(0 < f < n for f, n in zip(per["f"], per["n"]))
        data = {**case, "global_batch_size": ctx.global_batch_size, "micro_batch_size": g.mbs,
                "seq_len": ctx.seq_len, "dp": g.dp, "tp": g.tp, "pp": g.pp, "cp": g.cp, "ep": g.ep, "recompute": rec,
                "recompute_layers": one(per["r"]) if rec != "none" else None,
                "offload_activation_layers": one(per["oa"]), "offload_state_layers": one(per["os"]),
                "fp8_layers": one(per["f"]), **ctx.space.fp8_schedule_keys(partial),
                "fp8_recipe": case["fp8_recipe"] if any(per["f"]) else "tensorwise",
                "layers_per_stage": None if per["n"] == even_split(L, S) else per["n"],
                "pp_schedule": s.name, "virtual_stages": v}
        if data["pp"] == 1:
            data["pp_schedule"] = "1F1B"
        model_ref, cluster_ref = self.refs
        if model_ref:
            data["model"] = model_ref
        if cluster_ref:
            data["cluster"] = cluster_ref
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return parse_plan(data, "<tuned plan>")

    def offer(self, g: Layout, s: Schedule, case: dict, picks, objective: float, gap: float, status: str) -> None:
        """Cost the plan with predict (the one judge: check_plan and the fit rule) and keep it if it is among the
        best."""
        if objective >= self.top.kth():
            return
        try:
            plan = self.to_plan(g, s, case, picks)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                pred = predict(self.ctx.model, self.ctx.cluster, plan, profile=self.ctx.prof)
        except SpecError:
            self.refused += 1     # a rule of check_plan the tables did not see: never returned
            return
        # the tables are exact except for MoE blocks of a model whose blocks differ, counted by role there
        # (planner.stages.RoleTable._moe_blocks): predict's cost is the plan's
        assert not self.exact or math.isclose(pred.step_time_s, objective, rel_tol=1e-6), \
            (pred.step_time_s, objective, plan)
        if not pred.feasible:
            self.refused += 1
            return
        self.top.push(Candidate(plan, pred, gap, status))


class LayoutSearch:
    """One layout and micro-batch split: its schedules, cases, role tables, bounds and solved cases."""

    def __init__(self, search: Search, g: Layout):
        self.search, self.g = search, g
        ctx = search.ctx
        self.L = ctx.model.num_hidden_layers
        self.cases = search.legal_cases(g)
        self.schedules = schedules(ctx.model, ctx.cluster, ctx.space, ctx.global_batch_size, ctx.seq_len, g) \
            if self.cases else []
        self.tables: dict[tuple[Schedule, str], RoleTable] = {}
        self.lb: dict[Schedule, np.ndarray] = {}       # per schedule: lower bound per case
        self.t0: dict[Schedule, tuple[dict, dict]] = {}
        self.contrib: list[float] = []
        self.inputs: dict | None = None
        self.slopes: dict = {}
        self.last_solve: dict = {}
        self.refined: set[Schedule] = set()

    # ---- bounds -----------------------------------------------------------------------------------------
    def role_table(self, s: Schedule, role: str) -> RoleTable:
        key = (s, role)
        if key not in self.tables:
            m = in_flight_by_rank(s, self.g.pp, self.g.M)
            ms = [m[i] for i in range(self.g.pp) if role_of(i, self.g.pp) == role]
            if self.inputs is None:
                self.inputs = case_inputs(self.search.ctx, self.g, self.cases)
            self.tables[key] = RoleTable(self.search.ctx, self.g, s, role, self.cases, ms, self.inputs, self.slopes)
        return self.tables[key]

    def n_range(self, s: Schedule) -> tuple[int, int]:
        return s.v, self.L - (self.g.pp - 1) * s.v

    def bound_jobs(self) -> list:
        """The rows the memory-blind bound needs (``t0``'s five counts per role), for the caller to cost in a
        batch with other layouts'."""
        jobs = []
        for s in self.schedules:
            lo, hi = self.n_range(s)
            for role in roles(self.g.pp):
                grid = np.array([self.L]) if self.g.pp == 1 else block_grid(lo, hi)
                rt = self.role_table(s, role)
                jobs.append((s, role, grid, rt, rt.t0_rows(rt.t0_sample(grid))))
        return jobs

    def bound(self, jobs: list | None = None, costed: list | None = None) -> float:
        """The memory-blind lower bound of every (schedule, case); returns the least. ``jobs`` and ``costed``: the
        caller's ``bound_jobs()`` and the outputs of their rows, in order (None: cost them here)."""
        g, best = self.g, math.inf
        jobs = jobs if jobs is not None else self.bound_jobs()
        if costed is None:
            costed = cost_batch(self.search.ctx, [(rt, rows) for _, _, _, rt, rows in jobs],
                                fn=self.search.ctx.fn_time)
        by_s: dict = {}
        for (s, role, grid, rt, rows), out in zip(jobs, costed):
            by_s.setdefault(s, ({}, {}))
            by_s[s][0][role] = grid
            by_s[s][1][role] = rt.t0(grid, costed=(rows, out))
        for s in self.schedules:
            grids, t0s = by_s[s]
            self.t0[s] = (grids, t0s)
            if g.pp == 1:
                lb = g.M * t0s["only"][:, 0]
            else:
                a, b = coefficients(g.M, s.v)
                lb = (a / g.pp + b) * sum_bound(self.counts(), grids, t0s, rho_candidates(grids, t0s), self.L)
            self.lb[s] = lb
            best = min(best, float(lb.min()))
        return best

    def refine(self, s: Schedule) -> float:
        """A memory- and extra-aware lower bound of every case of a pipeline schedule; returns the least.

        Per role, the floors of planner.stages.RoleTable.floors at every count near the even split and at a
        geometric sample of the others (a count between samples keeps the floors of the sample below it: time,
        extra and memory never fall with more blocks), never below the memory-blind time; then for weights λ (the
        first rank alone, all ranks equally) ``step ≥ Σ_i (a/pp + b − Σ_{k>i} λ_k)·T_i + λ_i·D_i`` (planner.milp),
        minimised over splits by Lagrangian relaxation."""
        g, L = self.g, self.L
        if g.pp == 1:         # one rank: M·T + D at least M·(its time floor) + (its extra floor)
            active = [int(c) for c in np.nonzero(self.lb[s] < self.search.threshold())[0]]
            if active:
                T1, D1 = self.role_table(s, "only").floors([L], 1.0, cases=active)
                lb = self.lb[s].copy()
                lb[active] = np.maximum(lb[active], g.M * T1[active, 0] + np.where(np.isinf(T1[active, 0]), 0,
                                                                                    D1[active, 0]))
                self.lb[s] = lb
            self.refined.add(s)
            return float(self.lb[s].min())
        lo, hi = self.n_range(s)
        e = L / g.pp
        ns = np.arange(lo, hi + 1)
        near = np.arange(max(lo, math.floor(e) - 1), min(hi, math.ceil(e) + 1) + 1)
        samples = np.unique(np.concatenate([near, np.round(np.geomspace(lo, hi, 7)).astype(int), [lo, hi]]))
        grids, t0s = self.t0[s]
        m_all = in_flight_by_rank(s, g.pp, g.M)
        active = [int(c) for c in np.nonzero(self.lb[s] < self.search.threshold())[0]]
        if not active:
            return float(self.lb[s].min())
        # floors at the sampled counts stand for every count up to the next sample (they never fall with more
        # blocks); the memory-blind time holds at every count
        at = np.searchsorted(samples, ns, side="right") - 1
        tb, db = {}, {}
        for role in roles(g.pp):
            m_role = min(float(m_all[i]) for i in range(g.pp) if role_of(i, g.pp) == role)
            T1, D1 = self.role_table(s, role).floors(list(samples), m_role, cases=active)
            t = np.maximum(t0s[role][active], T1[active][:, at])
            d = D1[active][:, at]
            d[np.isinf(t)] = 0.0
            tb[role], db[role] = t, d
        a, b = coefficients(g.M, s.v)
        pos_roles = [role_of(i, g.pp) for i in range(g.pp)]
        # no split at all: the ranks' largest feasible counts cannot add up to L
        top = {r: np.array([ns[np.isfinite(row)].max() if np.isfinite(row).any() else -1 for row in tb[r]]) for r in tb}
        short = sum(top[r] for r in pos_roles) < L
        best = np.full(len(active), -math.inf)
        for lam in (np.eye(g.pp)[0], np.full(g.pp, 1.0 / g.pp)):
            after = np.concatenate([np.cumsum(lam[::-1])[::-1][1:], [0.0]])
            coef = a / g.pp + b - after
            slopes = np.concatenate([np.diff(c * tb[r] + w * db[r], axis=1).ravel()
                                     for c, w, r in {(float(c), float(w), r) for c, w, r in zip(coef, lam, pos_roles)}])
            slopes = np.unique(slopes[np.isfinite(slopes) & (slopes > 0)])
            if len(slopes) > 64:
                slopes = np.quantile(slopes, np.linspace(0, 1, 64))
            rho = np.concatenate([[0.0], slopes])
            val = position_bound(coef, lam, [tb[r] for r in pos_roles], [db[r] for r in pos_roles], ns, L, rho)
            best = np.maximum(best, val)
        best[short] = math.inf
        if g.pp <= 8:       # the dynamic programme over splits with Tmax: stronger, and cheap for few ranks
            live = np.nonzero(np.isfinite(best))[0]
            if len(live):
                Tf = np.stack([tb[r][live] for r in pos_roles], axis=1)
                Df = np.stack([db[r][live] for r in pos_roles], axis=1)
                best[live] = np.maximum(best[live], floor_bound(Tf, Df, ns, L, g.M, s.v))
        lb = self.lb[s].copy()
        lb[active] = np.maximum(lb[active], np.where(np.isnan(best), math.inf, best))
        self.lb[s] = lb
        self.refined.add(s)
        return float(lb.min())

    def counts(self, without: str | None = None) -> dict[str, int]:
        c = {r: 0 for r in ("first", "middle", "last")}
        for i in range(self.g.pp):
            c[role_of(i, self.g.pp)] += 1
        if without:
            c[without] -= 1
        return c

    # ---- search -----------------------------------------------------------------------------------------
    def run(self, s: Schedule) -> None:
        """Search the cases of one schedule that the bound leaves open; record each one's lower bound."""
        lb = self.lb[s]
        active = [ci for ci in np.argsort(lb) if lb[ci] < self.search.threshold()]
        if len(active) < len(lb):
            self.contrib.append(float(np.delete(lb, active).min()) if active else float(lb.min()))
        if not active:
            return
        if self.g.pp == 1:
            self.run_single(s, active)
        else:
            self.run_pipeline(s, active)

    def run_single(self, s: Schedule, active: list[int]) -> None:
        g, search = self.g, self.search
        rt = self.role_table(s, "only")
        thr = search.threshold()
        rt.add([self.L], cases=active, cap=Cap(lambda c, n: np.full(len(c), thr / g.M), thr)
               if math.isfinite(thr) else None)
        for ci in active:
            o = rt.options(1.0, int(ci))
            search.cases_solved += 1
            if len(o) == 0:
                continue                   # nothing fits: this case bounds nothing
            val = g.M * o.T + o.D
            j = int(np.argmin(val))
            self.contrib.append(min(float(val[j]), rt.cut_bound(int(ci))))
            search.offer(g, s, self.cases[ci], [(self.L, int(o.r[j]), int(o.oa[j]), int(o.os[j]), int(o.f[j]))],
                         float(val[j]), 0.0, "optimal")

    def run_pipeline(self, s: Schedule, active: list[int]) -> None:
        """Solve each active case over block counts widened from the even split until the bound closes them."""
        g, search, L = self.g, self.search, self.L
        n_lo, n_hi = self.n_range(s)
        rls = roles(g.pp)
        e = L / g.pp
        rng = {r: [max(n_lo, math.floor(e) - 2), min(n_hi, math.ceil(e) + 2)] for r in rls}
        m_all = in_flight_by_rank(s, g.pp, g.M)
        pos_role = [role_of(i, g.pp) for i in range(g.pp)]
        solved: dict[int, float] = {}
        a, b = coefficients(g.M, s.v)
        grids, t0s = self.t0[s]
        rho = rho_candidates(grids, t0s)
        while True:
            thr = search.threshold()
            for r in rls:
                self.role_table(s, r).add(range(rng[r][0], rng[r][1] + 1), cases=active,
                                          cap=self.cap(s, r, thr, a, b, grids, t0s, rho))
            for ci in active:
                if search.out_of_time():
                    break
                solved[ci] = self.solve_case(s, int(ci), pos_role, m_all)
            if search.out_of_time():
                break
            # can a block count outside the ranges beat the threshold, for any active case?
            grew = False
            thr = search.threshold()
            for r in rls:
                up, down = self.outside_bounds(s, r, rng[r], active, m_all, pos_role, a, b, grids, t0s, rho)
                if up < thr and rng[r][1] < n_hi:
                    rng[r][1] = min(n_hi, rng[r][1] + max(2, (rng[r][1] - rng[r][0] + 1) // 2))
                    grew = True
                if down[0] < thr and rng[r][0] > n_lo:
                    rng[r][0] = down[1]
                    grew = True
            if not grew:
                break
        for ci in active:
            if ci not in solved:        # the time limit came first: its memory-blind bound stands
                self.contrib.append(float(self.lb[s][ci]))
                continue
            outside = math.inf
            for r in rls:
                up, (down, _) = self.outside_bounds(s, r, rng[r], [ci], m_all, pos_role, a, b, grids, t0s, rho)
                outside = min(outside, up, down, self.role_table(s, r).cut_bound(int(ci)))
            self.contrib.append(min(solved[ci], outside))

    def cap(self, s: Schedule, role: str, thr: float, a: float, b: float, grids, t0s, rho) -> Cap | None:
        """The time per micro-batch a rank of ``role`` with n blocks must stay below for the step to beat ``thr``:
        ``(a + b)·T + b·(the others' least sum with L − n blocks) < thr``."""
        if not math.isfinite(thr):
            return None
        others = self.counts(without=role)
        L = self.L

        def time_cap(c, n):
            un, inv = np.unique(n, return_inverse=True)
            s_oth = sum_bound(others, grids, t0s, rho, L - un)        # (cases, len(un))
            return (thr - b * s_oth[c, inv]) / (a + b)
        return Cap(time_cap, thr)

    def solve_case(self, s: Schedule, ci: int, pos_role: list[str], m_all: np.ndarray) -> float:
        """The best pipeline of one case over the block counts costed so far; returns its lower bound there."""
        g, search = self.g, self.search
        options = [self.role_table(s, pos_role[i]).options(float(m_all[i]), ci) for i in range(g.pp)]
        search.cases_solved += 1
        if any(len(o) == 0 for o in options):
            return math.inf
        sig = tuple(len(o) for o in options)
        if self.last_solve.get((s, ci), (None,))[0] == sig:     # nothing new since the last solve
            return self.last_solve[(s, ci)][1]
        thr = search.threshold()
        warm, lower = split_dp(options, self.L, g.M, s.v, cutoff=thr)
        if warm is None:
            self.last_solve[(s, ci)] = (sig, lower)
            return lower
        choice: Choice = warm
        if warm.gap > search.gap and lower < thr:
            left = search.deadline - time.perf_counter()
            got = solve(options, self.L, g.M, s.v, time_limit_s=min(MILP_LIMIT_S, max(0.1, left)),
                        gap=search.gap, warm=warm)
            choice = got or warm
        picks = [(int(o.n[j]), int(o.r[j]), int(o.oa[j]), int(o.os[j]), int(o.f[j]))
                 for o, j in zip(options, choice.picks)]
        search.offer(g, s, self.cases[ci], picks, choice.objective, choice.gap, choice.status)
        self.last_solve[(s, ci)] = (sig, choice.bound)
        return choice.bound

    def outside_bounds(self, s: Schedule, role: str, rng: list[int], cases: list[int], m_all, pos_role, a, b,
                       grids, t0s, rho) -> tuple[float, tuple[float, int]]:
        """Lower bounds of the step time when a rank of ``role`` holds more blocks than ``rng`` allows, and when it
        holds fewer (with the smallest such count that could still win).

        More blocks never take less time, extra or memory, so every candidate with more blocks than the range's top
        is at least as slow, in T and in D, as one at the top (or at least as slow as the cap there): the bound
        ``a·max(T, S/(pp − 1)) + b·(T + S) + max(0, D − i·τ)`` is taken over those, with S the others' least sum of
        T (memory-blind) and τ < threshold / a the largest Tmax that could still win, i the role's last position
        (its extra hides behind at most i ranks). Fewer blocks: memory-blind T only."""
        g, L = self.g, self.L
        n_lo, n_hi = self.n_range(s)
        others = self.counts(without=role)
        rt = self.role_table(s, role)
        grid, t0 = grids[role], t0s[role]
        positions = [i for i in range(g.pp) if pos_role[i] == role]
        m_role = min(float(m_all[i]) for i in positions)
        thr = self.search.threshold()
        tau = thr / a if a > 0 and math.isfinite(thr) else math.inf
        hide = max(positions) * tau
        n_oth = max(1, g.pp - 1)
        up_best, down_best, down_n = math.inf, math.inf, rng[0]
        idx = np.array(cases)
        for side in ("up", "down"):
            ns = np.arange(rng[1] + 1, n_hi + 1) if side == "up" else np.arange(n_lo, rng[0])
            if len(ns) == 0:
                continue
            s_oth = sum_bound(others, grids, t0s, rho, L - ns)[idx]              # (cases, len(ns))
            k = np.searchsorted(grid, ns, side="right") - 1
            t_i = t0[idx][:, k]                                                   # memory-blind floor
            if side == "up":
                vals = []
                for row, c in enumerate(idx):
                    T, D, cut = rt.at(m_role, int(c), rng[1])
                    T = np.concatenate([T, [cut]])
                    D = np.concatenate([D, [0.0 if math.isfinite(cut) else math.inf]])
                    T = np.maximum(T[:, None], t_i[row][None, :])
                    f = a * np.maximum(T, s_oth[row][None, :] / n_oth) + b * (T + s_oth[row][None, :]) \
                        + np.maximum(0.0, D[:, None] - hide)
                    vals.append(f.min(axis=0))
                up_best = float(np.min(vals))
            else:
                val = a * np.maximum(t_i, s_oth / n_oth) + b * (t_i + s_oth)
                best_per_n = val.min(axis=0)
                down_best = float(best_per_n.min())
                below = np.nonzero(best_per_n < thr)[0]
                down_n = int(ns[below[0]]) if len(below) else rng[0]
        return up_best, (down_best, down_n)


def tune(model: ModelSpec | str, cluster: ClusterSpec | str, global_batch_size: int, seq_len: int,
         space: SearchSpace | None = None, *, top_k: int = 5, time_limit_s: float = 60.0, gap: float = 0.01,
         profile: HardwareProfile | None = None, progress: Callable[[int, int, str], None] | None = None,
         diagnose: bool = True) -> TuneResult:
    """Find the fastest plan that fits, and a lower bound over the whole space (module docstring).
    ``progress(done, total, message)`` is called as layouts finish; ``diagnose`` False skips the diagnosis of an
    empty result (the diagnosis itself runs the tuner)."""
    check_limits(top_k, time_limit_s, gap)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):   # inf - inf in bounds of infeasible cases
        return _tune(model, cluster, global_batch_size, seq_len, space, top_k=top_k, time_limit_s=time_limit_s,
                     gap=gap, profile=profile, progress=progress, diagnose=diagnose)


def _tune(model, cluster, global_batch_size, seq_len, space, *, top_k, time_limit_s, gap, profile, progress,
          diagnose) -> TuneResult:
    t_start = time.perf_counter()
    space = space or SearchSpace()
    # written plans name their model and cluster so that they load from any directory
    model_ref = portable_ref(model, "models") if isinstance(model, (str, Path)) else None
    cluster_ref = portable_ref(cluster, "clusters") if isinstance(cluster, (str, Path)) else None
    model, cluster = load_model(model), load_cluster(cluster)
    if global_batch_size < 1 or seq_len < 1:
        raise ValueError(f"global batch {global_batch_size} and seq len {seq_len} must be positive")
    prof = profile or profile_for(cluster)
    ctx = Context(model, cluster, prof, seq_len, global_batch_size, space)
    groups = [Layout(t, p, d, mbs, M, cp=c, ep=e) for (t, c, p, d) in layouts(model, cluster, space, seq_len)
              for e in expert_degrees(model, d, space)
              for (mbs, M) in micro_batches(model, cluster, global_batch_size, seq_len, t, p, d, space, cp=c)]
    result = TuneResult(None, [], 0.0, len(groups), 0, 0, gap_asked=gap)
    if not groups:
        if diagnose:
            from .diagnose import diagnose as why
            result.diagnosis = why(model, cluster, global_batch_size, seq_len, space, prof, no_layout=True)
        result.seconds = time.perf_counter() - t_start
        return result
    top = TopK(top_k)
    search = Search(ctx, top, gap, t_start + time_limit_s, (model_ref, cluster_ref))
    # best first over (layout, schedule): a memory-blind bound for all, refined (pipelines) when first reached
    queue: list = []
    tick = itertools.count()
    searched: set[int] = set()
    contrib: list[float] = []
    bounded = 0
    searches: list[LayoutSearch] = []
    batch: list = []

    def bound_batch() -> None:       # one call of the cost model for many layouts' bounds
        nonlocal bounded
        jobs = [(ls, ls.bound_jobs()) for ls in batch]
        flat = [(rt, rows) for _, js in jobs for _, _, _, rt, rows in js]
        outs = cost_batch(ctx, flat, fn=ctx.fn_time)
        at = 0
        for ls, js in jobs:
            ls.bound(js, outs[at:at + len(js)])
            at += len(js)
            bounded += 1
            for s in ls.schedules:
                heapq.heappush(queue, (float(ls.lb[s].min()), next(tick), ls.index, ls, s))
        batch.clear()
    for g in groups:
        if search.out_of_time():
            break
        ls = LayoutSearch(search, g)
        ls.index = len(searches)
        searches.append(ls)
        batch.append(ls)
        if len(batch) >= 16:
            bound_batch()
    if batch and not search.out_of_time():
        bound_batch()
    if bounded < len(groups):
        result.timed_out = True
        contrib.append(0.0)                   # layouts not even bounded
    done: set[tuple[int, Schedule]] = set()

    def search_item(gi: int, ls: LayoutSearch, s: Schedule) -> None:
        if progress:
            g = ls.g
            progress(len(searched), len(groups), f"tp={g.tp}" + (f" cp={g.cp}" if g.cp > 1 else "") +
                     f" pp={g.pp} dp={g.dp}" + (f" ep={g.ep}" if g.ep > 1 else "") + f" mbs={g.mbs}")
        searched.add(gi)
        done.add((gi, s))
        ls.run(s)
        contrib.extend(ls.contrib)
        ls.contrib = []

    # first the plain schedules (one chunk per rank: quick to solve), best bound first, for up to a quarter of the
    # time: the costly interleaved cases of deep pipelines, whose bounds are loose, then meet a good threshold,
    # and a time limit still returns a plan
    warm_until = t_start + 0.25 * time_limit_s
    for lb, _, gi, ls, s in sorted((item for item in queue if item[4].v == 1), key=lambda item: item[:2]):
        if search.out_of_time() or lb >= search.threshold() or \
                (math.isfinite(search.threshold()) and time.perf_counter() > warm_until):
            break
        if not ls.refine(s) < search.threshold():
            continue                      # stays queued: its run skips the cases the refined bound rules out
        search_item(gi, ls, s)
    while queue:
        lb, _, gi, ls, s = queue[0]
        if (gi, s) in done:
            heapq.heappop(queue)
            continue
        if search.out_of_time():
            result.timed_out = True
            contrib.extend(item[0] for item in queue)
            break
        if lb >= search.threshold():
            contrib.extend(item[0] for item in queue)     # every other item's bound is at least this
            break
        heapq.heappop(queue)
        if s not in ls.refined:
            new = ls.refine(s)
            if new > lb:
                heapq.heappush(queue, (new, next(tick), gi, ls, s))
                continue
        search_item(gi, ls, s)
    result.groups_searched = len(searched)
    result.groups_pruned = bounded - len(searched) if not result.timed_out else 0
    result.top = list(top.items)
    result.best = result.top[0] if result.top else None
    result.bound_s = max(0.0, min(contrib + [top.best()]))
    result.cases_solved = search.cases_solved
    result.rows_costed = sum(rt.rows_costed for ls in searches for rt in ls.tables.values())
    if result.best is None and diagnose:
        from .diagnose import diagnose as why
        result.diagnosis = why(model, cluster, global_batch_size, seq_len, space, prof,
                               timed_out=result.timed_out, searched=(result.groups_searched, result.groups),
                               time_limit_s=time_limit_s)
    result.seconds = time.perf_counter() - t_start
    return result


__all__ = ["tune", "TuneResult", "Candidate", "check_limits"]
