"""The tuner: enumerate layouts, bound and prune them, search each stage's knobs, solve the pipeline MILP."""
from __future__ import annotations

import heapq
import itertools
import math
import time
from pathlib import Path
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from costmodel import ClusterSpec, ModelSpec, Plan, load_cluster, load_model, parse_plan
from costmodel.hardware import HardwareProfile, profile_for
from costmodel.plan import PER_STAGE_KEYS, even_split
from costmodel.specs import portable_ref
from costmodel.prediction import Prediction, predict
from costmodel.stage import evaluate, hardware_inputs, knob_inputs, model_inputs

from .milp import Choice, solve, split_dp
from .space import SearchSpace, expert_degrees, layouts, micro_batches, middle_exact
from .stages import MODE_CODE, OUTPUTS, Group, StageTable, evaluate_role, needed_in_flight, role_of, roles, \
    stage_options

MODE_NAME = {v: k for k, v in MODE_CODE.items()}
MILP_LIMIT_S = 2.5
"""Time limit of one case's MILP; one that runs out returns its incumbent (never worse than the DP warm start)
and its gap, which the result reports."""


@dataclass
class Candidate:
    """One solved case: the plan, its prediction, and how the solver got there."""

    plan: Plan
    prediction: Prediction
    gap: float
    status: str

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


def _ideal_rate(model, cluster, prof, seq_len, groups: list[Group], space: SearchSpace, fixed) -> np.ndarray:
    """Lower bound of each group's per-block time: the marginal cost of one more block with the fastest
    knobs (no checkpointing or offload, compile and float8 where allowed) and memory ignored."""
    k = int(max(space.compile))
    f_frac = space.max_fp8_fraction if k else 0.0
    rows = [(g, z) for g in groups for z in space.zero]
    col = lambda fn: np.array([fn(g, z) for g, z in rows], dtype=float)  # noqa: E731
    t, d, pp, c = col(lambda g, z: g.tp), col(lambda g, z: g.dp), col(lambda g, z: g.pp), col(lambda g, z: g.cp)
    moe_frac = model.moe_layers_in(0, model.num_hidden_layers) / model.num_hidden_layers

    def at(l, every):
        inp = knob_inputs(b=col(lambda g, z: g.mbs), s=seq_len, t=t, d=d, pp=pp, zero=col(lambda g, z: z),
                          sequence_parallel=space.sequence_parallel, selective=0, l=l, r=0, oa=0, os=0,
                          f=np.floor(f_frac * l), compile=k, m=1, M=col(lambda g, z: g.M), first=0, last=0, nV=0,
                          reduce_every=every, ep=col(lambda g, z: g.ep), lm=moe_frac * l, cp=c)
        return np.asarray(evaluate(OUTPUTS, {**fixed, **inp}, prof, cluster.gpus_per_node)["t_mb"])
    big = float(model.num_hidden_layers)

    def marginal(every):  # either way of reducing gradients may be the cheaper one
        return at(big, every) - at(big - 1.0, every) if big > 1 else at(1.0, every)
    rate = np.minimum(marginal(0), marginal(1))
    per_group = rate.reshape(len(groups), len(space.zero)).min(axis=1)
    return np.maximum(per_group, 0.0)


def _fill(pp: int, M: int, interleaved: bool) -> float:
    """Steady micro-batches plus the fill and drain of a pipeline with equal ranks: M - 1 + pp under 1F1B,
    M - 1 + (pp + 1) / 2 with 2 interleaved chunks per rank (costmodel.pipeline.step_time)."""
    return M - 1 + ((pp + 1) / 2 if interleaved else pp)


def _can_interleave(space: SearchSpace, pp: int, M: int) -> bool:
    return "Interleaved1F1B" in space.schedules and pp > 1 and M >= pp


def _case_lower_bound(options: list[StageTable], L: int, M: int, interleaved: bool) -> float:
    pp = len(options)
    rho = min(float(np.min(o.t_mb / o.knobs["l"])) for o in options)
    return _fill(pp, M, interleaved) / pp * L * rho + max(0.0, float(np.min(options[0].delta)))


def to_plan(model: ModelSpec, g: Group, options: list[StageTable], picks: list[int], *, zero: int, mode: int,
            compile_: bool, rev: int, global_batch_size: int, seq_len: int, space: SearchSpace, model_ref: str | None,
            cluster_ref: str | None) -> Plan:
    """The plan a MILP choice stands for, in the one plan schema."""
    col = lambda name: [int(o.knobs[name][j]) for o, j in zip(options, picks)]  # noqa: E731
    l, r, oa, os_, f = col("l"), col("r"), col("oa"), col("os"), col("f")
    one = lambda xs: xs[0] if len(set(xs)) == 1 else xs  # noqa: E731
    even = even_split(model.num_hidden_layers, g.pp)
    rec = MODE_NAME[mode] if any(r) else "none"
    partial_fp8 = any(0 < fi < li for fi, li in zip(f, l))
    data = dict(global_batch_size=global_batch_size, micro_batch_size=g.mbs, seq_len=seq_len, dp=g.dp, tp=g.tp,
                pp=g.pp, cp=g.cp, ep=g.ep, zero=zero, recompute=rec, recompute_layers=one(r) if rec != "none" else None,
                offload_activation_layers=one(oa), offload_state_layers=one(os_), fp8_layers=one(f),
                **space.fp8_schedule_keys(partial_fp8),
                layers_per_stage=None if l == even else l, compile=bool(compile_),
                grad_reduce="every" if rev else "last",
                sequence_parallel=space.sequence_parallel)
    if model_ref:
        data["model"] = model_ref
    if cluster_ref:
        data["cluster"] = cluster_ref
    return parse_plan(data, "<tuned plan>")


def _interleaved_variant(plan: Plan, model: ModelSpec) -> Plan | None:
    """The same plan on Interleaved1F1B with 2 chunks per rank, each chunk half of its rank's blocks."""
    L = model.num_hidden_layers
    if plan.pp < 2 or plan.num_microbatches < plan.pp:
        return None
    layers = plan.stage_layers(L)
    if any(n < 2 for n in layers):
        return None
    half = lambda xs: [xs[i] // 2 + xs[i] % 2 for i in range(len(xs))] + [xs[i] // 2 for i in range(len(xs))]  # noqa
    chunk_layers = half(layers)
    knobs = {}
    for key in PER_STAGE_KEYS:
        vals = half(plan.per_stage(key, L))
        vals = [min(v, n) for v, n in zip(vals, chunk_layers)]
        knobs[key] = vals[0] if len(set(vals)) == 1 and key != "recompute_layers" else vals
    rec = knobs["recompute_layers"] if plan.recompute != "none" else [0] * len(chunk_layers)
    oa = knobs["offload_activation_layers"]
    oa = oa if isinstance(oa, list) else [oa] * len(chunk_layers)
    knobs["offload_activation_layers"] = [min(o, n - r) for o, n, r in zip(oa, chunk_layers, rec)]
    if plan.recompute == "none":
        knobs["recompute_layers"] = None
    return plan.replace(pp_schedule="Interleaved1F1B", virtual_stages=2, layers_per_stage=chunk_layers, **knobs)


def interleave(plan: Plan, model: ModelSpec, cluster: ClusterSpec, prof: HardwareProfile, *,
               mode: str | None = "full", max_tries: int = 64) -> tuple[Plan, Prediction] | None:
    """The plan on Interleaved1F1B, checkpointing more blocks where the deeper warm-up no longer fits.

    Interleaving shrinks the bubble by the number of chunks but deepens the warm-up: every rank holds at least
    (v - 1)·pp chunk-forwards (costmodel.pipeline.in_flight), the last ranks many more than under 1F1B. The
    repair checkpoints one more block of each over-full rank's least-checkpointed chunk until every rank fits
    (or gives up); a rank whose blocks are all selectively checkpointed and still over-full turns the plan's
    checkpointing to full. ``mode`` None forbids checkpointing."""
    v2 = _interleaved_variant(plan, model)
    if v2 is None:
        return None
    L = model.num_hidden_layers
    if v2.recompute == "none" and mode is not None:
        v2 = v2.replace(recompute=mode, recompute_layers=[0] * v2.num_stages)
    for _ in range(max_tries):
        pred = predict(model, cluster, v2, profile=prof)
        if pred.feasible:
            return v2, pred
        if v2.recompute == "none" or pred.host_memory_bytes > prof.host_budget_bytes:
            return None
        rec, layers = v2.per_stage("recompute_layers", L), v2.stage_layers(L)
        oa = v2.per_stage("offload_activation_layers", L)
        over = [r["rank"] for r in pred.ranks if not prof.fits(r["peak_memory_bytes"])]  # as predict judges
        full_now = False
        for rank in over:  # one more checkpointed block on every rank that does not fit
            chunks = [c for c in range(rank, v2.num_stages, v2.pp) if rec[c] + oa[c] < layers[c]]
            if not chunks:
                # every block of the rank keeps only selective checkpointing's saves: checkpoint them fully
                if v2.recompute == "selective" and mode == "full":
                    full_now = True
                    continue
                return None
            c = min(chunks, key=lambda c: rec[c] / layers[c])
            rec[c] += 1
        v2 = v2.replace(recompute_layers=rec, **({"recompute": "full"} if full_now else {}))
    return None


def tune(model: ModelSpec | str, cluster: ClusterSpec | str, global_batch_size: int, seq_len: int,
         space: SearchSpace | None = None, *, top_k: int = 5, time_limit_s: float = 60.0, gap: float = 0.01,
         profile: HardwareProfile | None = None, progress: Callable[[int, int, str], None] | None = None
         ) -> TuneResult:
    """Find the fastest plan that fits. ``progress(done, total, message)`` is called as groups finish."""
    t_start = time.perf_counter()
    space = space or SearchSpace()
    # written plans name their model and cluster so that they load from any directory
    model_ref = portable_ref(model, "models") if isinstance(model, (str, Path)) else None
    cluster_ref = portable_ref(cluster, "clusters") if isinstance(cluster, (str, Path)) else None
    model, cluster = load_model(model), load_cluster(cluster)
    if global_batch_size < 1 or seq_len < 1:
        raise ValueError(f"global batch {global_batch_size} and seq len {seq_len} must be positive")
    prof = profile or profile_for(cluster)
    L = model.num_hidden_layers
    groups = [Group(t, p, d, mbs, M, ep=e, cp=c) for (t, c, p, d) in layouts(model, cluster, space, seq_len)
              for e in expert_degrees(model, d, space) for (mbs, M) in micro_batches(global_batch_size, d, p, space)]
    result = TuneResult(None, [], 0.0, len(groups), 0, 0)
    if not groups:
        from .diagnose import diagnose
        result.diagnosis = diagnose(model, cluster, global_batch_size, seq_len, space, prof, no_layout=True)
        result.seconds = time.perf_counter() - t_start
        return result
    fixed = {**model_inputs(model), **hardware_inputs(prof)}
    rate = _ideal_rate(model, cluster, prof, seq_len, groups, space, fixed)
    lb = np.array([_fill(g.pp, g.M, _can_interleave(space, g.pp, g.M)) / g.pp * L * r
                   for g, r in zip(groups, rate)])
    order = np.argsort(lb)
    best: list[tuple[float, int, Candidate]] = []   # max-heap by objective (negated), size top_k
    counter = 0

    def kth() -> float:
        return -best[0][0] if len(best) >= top_k else math.inf

    def push(c: Candidate) -> None:
        nonlocal counter
        if any(c.plan == b.plan for _, _, b in best):
            return
        counter += 1
        heapq.heappush(best, (-c.step_time_s, counter, c))
        if len(best) > top_k:
            heapq.heappop(best)

    for n_done, gi in enumerate(order):
        g = groups[gi]
        if progress:
            progress(n_done, len(groups), f"tp={g.tp}" + (f" cp={g.cp}" if g.cp > 1 else "") + f" pp={g.pp} dp={g.dp}"
                     + (f" ep={g.ep}" if g.ep > 1 else "") + f" mbs={g.mbs}")
        if lb[gi] >= kth() * (1 - gap) or time.perf_counter() - t_start > time_limit_s:
            continue
        result.groups_searched += 1
        tables = {role: evaluate_role(model, cluster, prof, seq_len, g, role, space, fixed) for role in roles(g.pp)}
        m_need = needed_in_flight(g.pp, g.M)
        inter = _can_interleave(space, g.pp, g.M)
        # interleaving can at best shrink a 1F1B step by this factor (equal ranks, same knobs)
        shrink = _fill(g.pp, g.M, True) / _fill(g.pp, g.M, False) if inter else 1.0
        # pipelines never reshard; cp shards over dp × cp, never replicates (costmodel.plan)
        zeros = sorted({2 if (z == 3 and g.pp > 1) else z for z in space.zero if not (z == 0 and g.cp > 1)})
        for zero in zeros:
            for mode in sorted({MODE_CODE[m] for m in space.recompute if m != "none"} or {0}):
                for k, rev in itertools.product(sorted({int(c) for c in space.compile}),
                                                [0, 1] if g.pp == 1 and g.M > 1 else [0]):
                    options = []
                    for i in range(g.pp):
                        tab = tables[role_of(i, g.pp)]
                        kn = tab.knobs
                        case = (kn["zero"] == zero) & (kn["k"] == k) & (kn["rev"] == rev) \
                            & ((kn["mode"] == 0) | (kn["mode"] == mode))
                        options.append(stage_options(tab.take(np.nonzero(case)[0]), m_need[i], keep=12))
                    if any(len(o) == 0 for o in options):
                        continue
                    if _case_lower_bound(options, L, g.M, inter) >= kth() * (1 - gap):
                        continue
                    remaining = time_limit_s - (time.perf_counter() - t_start)
                    if g.pp == 1:
                        choice = solve(options, L, g.M)
                    else:
                        warm, lower = split_dp(options, L, g.M)
                        if warm is None or lower * shrink >= kth() * (1 - gap):
                            continue
                        # a case that only interleaving could bring into the top k needs no exact 1F1B optimum
                        good_enough = warm.gap <= gap or lower >= kth() * (1 - gap)
                        choice = warm if good_enough else solve(
                            options, L, g.M, time_limit_s=min(MILP_LIMIT_S, max(0.1, remaining)), gap=gap, warm=warm)
                    if choice is None:
                        continue
                    result.cases_solved += 1
                    if choice.objective * shrink >= kth():
                        continue
                    plan = to_plan(model, g, options, choice.picks, zero=zero, mode=mode, compile_=bool(k), rev=rev,
                                   global_batch_size=global_batch_size, seq_len=seq_len, space=space,
                                   model_ref=model_ref, cluster_ref=cluster_ref)
                    pred = predict(model, cluster, plan, profile=prof)
                    assert not middle_exact(model, g.pp, space.layer_slack) or \
                        abs(pred.step_time_s - choice.objective) <= 1e-6 * choice.objective + 1e-9, \
                        (pred.step_time_s, choice.objective)
                    # a stage table may misjudge a stage whose MoE and dense blocks differ from its role's (middle_exact)
                    if (g.pp == 1 or "1F1B" in space.schedules) and choice.objective < kth() and pred.feasible:
                        push(Candidate(plan, pred, choice.gap, choice.status))
                    if inter:
                        found = interleave(plan, model, cluster, prof, mode=MODE_NAME[mode] if mode else None)
                        if found is not None and found[1].step_time_s < kth():
                            push(Candidate(found[0], found[1], choice.gap, choice.status + ", interleaved"))
    top = sorted((c for _, _, c in best), key=lambda c: c.step_time_s)
    result.top = [c for c in top if c.prediction.feasible]
    result.best = result.top[0] if result.top else None
    if result.best is None:
        from .diagnose import diagnose
        result.diagnosis = diagnose(model, cluster, global_batch_size, seq_len, space, prof)
    result.seconds = time.perf_counter() - t_start
    return result
