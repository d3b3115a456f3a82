"""Vectorised cost-model throughput: candidate stage evaluations per second on one CPU core.

    OMP_NUM_THREADS=1 python benchmarks/costmodel_speed.py [--n 1000000]
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from costmodel import load_model, load_profile  # noqa: E402
from costmodel.stage import evaluate, hardware_inputs, knob_inputs, model_inputs, stage_model  # noqa: E402


def random_candidates(n: int, rng: np.random.Generator) -> dict:
    pick = lambda xs: rng.choice(np.asarray(xs, dtype=float), n)  # noqa: E731
    t, d, pp = pick([1, 2, 4, 8]), pick([1, 2, 4, 8, 16, 64]), pick([1, 2, 4, 8])
    l = pick([4, 8, 16, 32])
    r = np.floor(rng.random(n) * (l + 1))
    oa = np.floor(rng.random(n) * (l - r + 1))
    return {**knob_inputs(b=pick([1, 2, 4, 8]), s=8192, t=t, d=d, pp=pp, zero=pick([0, 2, 3]),
                          sequence_parallel=1, selective=pick([0, 1]), l=l, r=r, oa=oa,
                          os=np.floor(rng.random(n) * (l + 1)), f=np.floor(rng.random(n) * (l + 1)),
                          compile=pick([0, 1]), m=np.minimum(pp, 4), M=pick([1, 8, 32]),
                          first=pick([0, 1]), last=pick([0, 1]), nV=pick([0, 1, 2]))}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    t0 = time.perf_counter()
    outputs = ("peak", "t_mb", "delta")
    stage_model(outputs)
    build = time.perf_counter() - t0
    prof = load_profile("h100-sxm")
    fixed = {**model_inputs(load_model("llama3-70b")), **hardware_inputs(load_profile("h100-sxm"))}
    cand = random_candidates(args.n, np.random.default_rng(0))
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        out = evaluate(outputs, {**fixed, **cand}, prof, 8)   # collective sizes, curve look-up, the terms
        times.append(time.perf_counter() - t0)
    assert all(np.isfinite(np.asarray(v)).all() for v in out.values())
    best = min(times)
    print("| what | value |\n|---|---|")
    print(f"| sympy build + lambdify (peak, t_mb, delta) | {build:.2f} s |")
    print(f"| candidates per evaluation | {args.n:,} |")
    print(f"| best of {args.repeats} evaluation time | {best:.3f} s |")
    print(f"| candidate evaluations per second (1 core) | {args.n / best:,.0f} |")


if __name__ == "__main__":
    main()
