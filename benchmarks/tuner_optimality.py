"""Is the tuner's plan the best plan under its own cost model? An independent brute force through `predict`.

    python benchmarks/tuner_optimality.py [--case NAME ...] [--quick]

For every case the brute force enumerates the space stated in its row — every integer count of checkpointed,
activation-offloaded and state-offloaded (and float8) blocks per stage, with the plan-wide values listed — and
costs each plan with the public ``costmodel.predict``: none of the tuner's tables, bounds, reductions or solvers.

- One stage (pp = 1): every plan of the space, one ``predict`` call each.
- A pipeline (1F1B): a stage's cost depends only on its own knobs and position, so each stage's candidates are
  costed by ``predict`` calls on whole plans that vary that stage alone (the per-stage results ``predict``
  reports), then every block split of the window and every combination of the stages' candidates that fit is
  scored with ``costmodel.pipeline.step_time``, keeping per stage only candidates no other beats in both time and
  extra (a plan with such a stage swapped in is never slower: ``ΣT`` falls by as much as any hidden extra can
  rise). The best plan found is costed again by ``predict`` as a whole.

Where the brute-force space is smaller than the tuner's, the tuner runs twice: pinned to the same space (the
``common`` column: the comparison), and free (its own best, never slower). The gap is
``tuner / brute − 1`` in the common space; every case must be within 1 %.
"""
from __future__ import annotations

import argparse
import itertools
import math
import sys
import time
import warnings
from dataclasses import dataclass, field

import numpy as np

from costmodel import Plan, SpecError, check_plan, load_cluster, load_model
from costmodel.hardware import profile_for
from costmodel.pipeline import step_time
from costmodel.plan import KERNEL_KEYS, even_split
from costmodel.prediction import predict
from planner.space import SearchSpace, layouts, micro_batches
from planner.tuner import tune


@dataclass
class Case:
    name: str
    model: str
    cluster: str
    gbs: int
    seq: int
    pins: dict
    """The user's pins (the tuner's free run)."""
    space: dict
    """The brute force's further restrictions (SearchSpace fields; the tuner's common run uses pins and these). Empty:
    the free run's layout, micro-batch and plan-wide values."""
    window: int = 0
    """Pipelines: block counts within ±window of the even split per stage."""
    counts: dict = field(default_factory=dict)
    """Restrictions of the per-stage counts: {"os": 0} fixes state offload at 0, {"oa": 0} activation offload."""
    note: str = ""


CASES = [
    Case("8b-1xh100", "llama3-8b", "1xh100", 8, 8192, {},
         dict(zero=(2, 3), compile=(True,), grad_reduce=("every",), micro_batch_size=1),
         note="memory binds: state offload + checkpointing in exact counts"),
    Case("70b-8xh100-tp2pp4", "llama3-70b", "8xh100", 64, 4096, dict(tp=2, pp=4),
         dict(micro_batch_size=1, zero=(2,), compile=(True,), sequence_parallel=(True,), schedules=("1F1B",)),
         window=3, note="pinned tp 2 · pp 4"),
    Case("3b-untied-2xl4-pp2", "llama3.2-3b-untied", "2xl4", 16, 2048, dict(pp=2),
         dict(micro_batch_size=1, zero=(2,), compile=(True,), schedules=("1F1B",)), window=4,
         note="pinned pp 2 (Llama-3.2-3B's shape, untied: the tied original cannot run with pp > 1)"),
    Case("7b-2xl4-pp2", "llama2-7b", "2xl4", 8, 1024, dict(pp=2),
         dict(micro_batch_size=4, zero=(2,), compile=(True,), schedules=("1F1B",)), window=4,
         note="pinned pp 2: only an uneven split fits"),
    Case("405b-64xh100", "llama3-405b", "8x8xh100", 64, 8192, {}, {}, counts={"oa": 0},
         note="the tuner's layout, micro-batch and plan-wide values; every r and os, no activation offload"),
    Case("13b-4xa100-40g", "llama2-13b", "4xa100-40g", 32, 4096, {}, {},
         note="the tuner's layout, micro-batch and plan-wide values; every count"),
    Case("fp8-1b-1xh200", "llama3.2-1b", "1xh200", 8, 4096, dict(fp8_budget=0.5),
         dict(zero=(2,), compile=(True,), grad_reduce=("every",), micro_batch_size=2),
         note="float8 share 0.5: every float8 count 0..8 and both recipes"),
    Case("fp8-8b-8xh100", "llama3-8b", "8xh100", 64, 4096, dict(fp8_budget=1.0), {}, counts={"os": 0},
         note="float8 allowed everywhere: the tuner's layout and micro-batch, every r, oa and float8 count, "
              "both recipes, no state offload"),
]


def _stage_options(n: int, fp8_max: int, fix: dict):
    for r in range(n + 1):
        for oa in ([fix["oa"]] if "oa" in fix else range(n - r + 1)):
            if r + oa > n:
                continue
            for os_ in ([fix["os"]] if "os" in fix else range(n + 1)):
                for f in range(fp8_max + 1):
                    yield r, oa, os_, f


def _plan_wide(space: SearchSpace, p: int, M: int, t: int):
    modes = [m for m in space.recompute if m != "none"] or ["none"]
    return itertools.product(space.zero, modes, space.compile, space.grad_reduce if p == 1 and M > 1 else ["last"],
                             space.sequence_parallel if t > 1 else [True], space.fp8_recipes
                             if space.max_fp8_fraction else ["tensorwise"])


def brute_force(case: Case, space: SearchSpace) -> tuple[float, Plan | None, int]:
    """(best step time, its plan, plans costed) over the case's brute-force space."""
    model, cluster = load_model(case.model), load_cluster(case.cluster)
    prof = profile_for(cluster)
    L, frac = model.num_hidden_layers, space.max_fp8_fraction
    assert all(len(getattr(space, k)) == 1 for k in KERNEL_KEYS), "common_space pins one value per kernel choice"
    best, costed = (math.inf, None), 0
    for t, cp, p, d in layouts(model, cluster, space, case.seq):
        for mbs, M in micro_batches(model, cluster, case.gbs, case.seq, t, p, d, space, cp=cp):
            for zero, rec, comp, gr, sp, recipe in _plan_wide(space, p, M, t):
                fp8_max = (lambda n: int(frac * n + 1e-9)) if frac and comp else (lambda n: 0)
                base = dict(global_batch_size=case.gbs, micro_batch_size=mbs, seq_len=case.seq, dp=d, tp=t, pp=p,
                            cp=cp, zero=zero, recompute=rec, compile=comp, grad_reduce=gr, sequence_parallel=sp,
                            fp8_recipe=recipe, **{k: getattr(space, k)[0] for k in KERNEL_KEYS})
                if p == 1:
                    got, c = _single(model, cluster, prof, base, L, fp8_max(L), case.counts)
                else:
                    got, c = _pipeline(model, cluster, prof, base, L, p, M, case.window, fp8_max, case.counts)
                costed += c
                if got[0] < best[0]:
                    best = got
    return best[0], best[1], costed


def _plan(base: dict, L: int, **kw) -> Plan:
    """A plan of the base keys and per-stage counts; recompute none where nothing is checkpointed, a float8 rotation
    where a stage runs part of its blocks in float8 (as a user would write them)."""
    data = {**base, **kw}
    layers = data.get("layers_per_stage") or [L]
    as_list = lambda x: x if isinstance(x, list) else [x] * len(layers)  # noqa: E731
    if not any(as_list(data.get("recompute_layers") or 0)):
        data["recompute"], data["recompute_layers"] = "none", None
    f = as_list(data.get("fp8_layers", 0))
    data["fp8_rotation_steps"] = 100 if any(0 < fi < n for fi, n in zip(f, layers)) else 0
    if not any(f):
        data["fp8_recipe"] = "tensorwise"
    return Plan(**data)


def _single(model, cluster, prof, base, L, fp8_max, fix):
    best, costed = (math.inf, None), 0
    for r, oa, os_, f in _stage_options(L, fp8_max, fix):
        plan = _plan(base, L, recompute_layers=r, offload_activation_layers=oa, offload_state_layers=os_,
                     fp8_layers=f)
        try:
            pred = predict(model, cluster, plan, profile=prof)
        except SpecError:
            continue
        costed += 1
        if pred.feasible and pred.step_time_s < best[0]:
            best = (pred.step_time_s, plan)
    return best, costed


def _pipeline(model, cluster, prof, base, L, pp, M, window, fp8_max, fix):
    """Per stage position and block count, every candidate costed by predict (that stage varying, the others
    fixed); then every split of the window and combination of (T, D)-Pareto candidates."""
    even = L / pp
    lo, hi = max(1, math.floor(even) - window), math.ceil(even) + window
    table: dict[tuple[int, int], list[tuple[float, float, tuple]]] = {}
    costed = 0
    for i in range(pp):
        for n in range(lo, hi + 1):
            rest = L - n
            if rest < pp - 1:
                continue
            fill = even_split(rest, pp - 1)
            split = fill[:i] + [n] + fill[i:]
            cands = []
            for r, oa, os_, f in _stage_options(n, fp8_max(n), fix):
                per = lambda x, y: [x if j == i else y for j in range(pp)]  # noqa: E731
                plan = _plan(base, L, layers_per_stage=split, recompute_layers=per(r, 0),
                             offload_activation_layers=per(oa, 0), offload_state_layers=per(os_, 0),
                             fp8_layers=per(f, 0))
                try:
                    pred = predict(model, cluster, plan, profile=prof)
                except SpecError:
                    continue
                costed += 1
                st = pred.stages[i]
                if prof.fits(st["peak_memory_bytes"]) and \
                        st["host_memory_bytes"] * cluster.gpus_per_node <= prof.host_budget_bytes:
                    cands.append((st["t_microbatch_s"], st["delta_s"], (r, oa, os_, f)))
            cands.sort()
            front, best_d = [], math.inf          # no other candidate lower in both T and D
            for c in cands:
                if c[1] < best_d:
                    front.append(c)
                    best_d = c[1]
            table[(i, n)] = front
    best = (math.inf, None)
    for split in itertools.product(range(lo, hi + 1), repeat=pp):
        if sum(split) != L or any(not table.get((i, n)) for i, n in enumerate(split)):
            continue
        opts = [table[(i, n)] for i, n in enumerate(split)]
        for combo in itertools.product(*opts):
            t = np.array([c[0] for c in combo])
            d = np.array([c[1] for c in combo])
            s = float(step_time(t, d, M))
            if s < best[0]:
                best = (s, (list(split), [c[2] for c in combo]))
    if best[1] is None:
        return (math.inf, None), costed
    split, knobs = best[1]
    plan = _plan(base, L, layers_per_stage=split, recompute_layers=[k[0] for k in knobs],
                 offload_activation_layers=[k[1] for k in knobs], offload_state_layers=[k[2] for k in knobs],
                 fp8_layers=[k[3] for k in knobs])
    pred = predict(model, cluster, plan, profile=prof)
    assert pred.feasible and math.isclose(pred.step_time_s, best[0], rel_tol=1e-9), (pred.step_time_s, best[0])
    return (best[0], plan), costed


def common_space(case: Case, free_best) -> dict:
    """The brute force's space: the case's pins and restrictions, or (no restrictions given) the tuner's own layout,
    micro-batch and plan-wide values of its free run (float8 share as pinned)."""
    # the kernel choices (planner.knobs' case knobs) of the tuner's own plan, one each, for both searches
    kernels = {k: (getattr(free_best.plan, k),) for k in KERNEL_KEYS} if free_best else {}
    if case.space:
        return {**kernels, **case.pins, **case.space}
    p = free_best.plan
    return dict(case.pins, **kernels, tp=p.tp, pp=p.pp, dp=p.dp, micro_batch_size=p.micro_batch_size, zero=(p.zero,),
                recompute=("none", p.recompute) if p.recompute != "none" else ("none", "full"), compile=(p.compile,),
                grad_reduce=(p.grad_reduce,), sequence_parallel=(p.sequence_parallel,), schedules=(p.pp_schedule,))


def run(case: Case) -> dict:
    warnings.simplefilter("ignore")
    t0 = time.perf_counter()
    free = tune(case.model, case.cluster, case.gbs, case.seq, SearchSpace(**case.pins), top_k=1, time_limit_s=600)
    free_s = time.perf_counter() - t0
    pins = common_space(case, free.best)
    space = SearchSpace(**pins)
    t0 = time.perf_counter()
    common = tune(case.model, case.cluster, case.gbs, case.seq, space, top_k=1, gap=0.0, time_limit_s=600)
    common_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    brute_t, brute_plan, costed = brute_force(case, space)
    brute_s = time.perf_counter() - t0
    model, cluster = load_model(case.model), load_cluster(case.cluster)
    for res in (free, common):
        if res.best is not None:
            check_plan(res.best.plan, model, cluster)
    tuned = common.best.step_time_s if common.best else math.inf
    gap = tuned / brute_t - 1 if math.isfinite(brute_t) else math.nan
    return dict(case=case, free=free, free_s=free_s, common=common, common_s=common_s, brute_t=brute_t,
                brute_plan=brute_plan, costed=costed, brute_s=brute_s, gap=gap, pins=pins)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", action="append", help="run only these cases (by name)")
    args = ap.parse_args(argv)
    cases = [c for c in CASES if not args.case or c.name in args.case]
    print("| case | tuner s | its step s | gap to its bound | tuner (common) s | its step s | brute force step s "
          "| plans costed | brute s | gap | brute-force space |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    worst = 0.0
    for case in cases:
        r = run(case)
        fb, cb = r["free"].best, r["common"].best
        # both finding nothing agrees; one finding nothing does not
        agree = not math.isfinite(r["brute_t"]) and cb is None
        worst = max(worst, 0.0 if agree else r["gap"] if math.isfinite(r["gap"]) else math.inf)
        pins = ", ".join(f"{k}={'/'.join(map(str, v)) if isinstance(v, tuple) else v}" for k, v in r["pins"].items())
        fix = ", ".join(f"{k} = {v}" for k, v in case.counts.items())
        print(f"| {case.name} | {r['free_s']:.2f} | {fb.step_time_s if fb else math.nan:.4f} | "
              f"{r['free'].gap if fb else math.nan:.2%} | {r['common_s']:.2f} | "
              f"{cb.step_time_s if cb else math.nan:.4f} | {r['brute_t']:.4f} | {r['costed']:,} | {r['brute_s']:.0f} | "
              f"{r['gap']:+.3%} | {pins}{'; window ±' + str(case.window) if case.window else ''}"
              f"{'; ' + fix if fix else ''} ({case.note}) |", flush=True)
        if cb is not None and r["brute_plan"] is not None and r["gap"] > 1e-9:
            print(f"|  | tuner {cb.plan.to_dict()} | brute {r['brute_plan']} |", flush=True)
    verdict = worst <= 0.01
    print(f"\nworst gap {worst:+.3%}: {'PASS' if verdict else 'FAIL'} (every case within 1 %)")
    return 0 if verdict else 1


if __name__ == "__main__":
    sys.exit(main())
