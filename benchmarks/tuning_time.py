"""Tuning time of `loadmaster plan` on the issue's four reference cases, full knob space (float8 allowed).

    python benchmarks/tuning_time.py [--repeat 3] [--fp8-budget 1.0]

Prints one row per case: best-of-N wall time, the chosen layout, predicted step time, the solver's gap on the
winning case, how many (tp, cp, pp, dp, micro-batch) groups were searched out of all, and MILP/DP cases solved.
Single-threaded HiGHS; run it on an otherwise idle machine (timings are wall clock).
"""
from __future__ import annotations

import argparse
import time
import warnings

from planner.space import SearchSpace
from planner.tuner import tune

CASES = [  # (model, cluster, global batch, seq len, target seconds)
    ("llama3-8b", "8xh100", 512, 8192, 1.0),
    ("llama3-70b", "64x8xh100", 1024, 8192, 10.0),
    ("llama3-405b", "256x8xh100", 2048, 8192, 60.0),
    ("gpt3-22b", "4x8xa100-40g", 512, 4096, 10.0),
    # mixture of experts (issue 16): expert parallelism is one more dimension of the same targets by GPU count
    ("qwen3-30b-a3b", "8xh100", 256, 4096, 1.0),
    ("mixtral-8x7b", "8x8xh100", 1024, 4096, 10.0),
    ("mixtral-8x22b", "16x8xh100", 1024, 4096, 10.0),
    ("qwen3-235b-a22b", "32x8xh100", 2048, 4096, 10.0),
    ("deepseek-v3", "256x8xh100", 4096, 4096, 60.0),
    # long context (issue 16): context parallelism joins the search at 32k tokens and more
    ("llama3-8b", "8xh100", 8, 131072, 10.0),
    ("llama3-70b", "64x8xh100", 64, 131072, 60.0),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3, help="runs per case; the fastest is reported")
    ap.add_argument("--fp8-budget", default="1.0")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    tune("llama3.2-1b", "1xh200", 8, 2048)  # import and lambdify once, outside the timings
    space = SearchSpace(fp8_budget=args.fp8_budget)
    print(f"{'case':<40} {'time s':>7} {'target':>6} {'gap':>6} {'groups':>9} {'cases':>5}  plan")
    for model, cluster, gbs, seq, target in CASES:
        best_s, res = float("inf"), None
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            res = tune(model, cluster, gbs, seq, space)
            best_s = min(best_s, time.perf_counter() - t0)
        b = res.best
        cp, ep = (f" cp{b.plan.cp}" if b.plan.cp > 1 else "", f" ep{b.plan.ep}" if b.plan.ep > 1 else "") if b else ("", "")
        plan = (f"tp{b.plan.tp}{cp} pp{b.plan.pp} dp{b.plan.dp}{ep} zero{b.plan.zero} mbs{b.plan.micro_batch_size} "
                f"{b.plan.pp_schedule if b.plan.pp > 1 else ''} {b.plan.recompute} "
                f"step {b.step_time_s:.2f} s mfu {b.prediction.mfu:.2f}") if b else "nothing fits"
        gap = f"{b.gap:.2%}" if b else "-"
        print(f"{model + ' ' + cluster + f' {gbs}x{seq}':<40} {best_s:7.2f} {target:6.0f} {gap:>6} "
              f"{res.groups_searched:>4}/{res.groups:<4} {res.cases_solved:>5}  {plan}")


if __name__ == "__main__":
    main()
