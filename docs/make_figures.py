"""Regenerate the README's what-if figures (one of each plot kind), as recipes/notebooks/whatif.ipynb draws them.

    python docs/make_figures.py            # writes docs/whatif-*.png
"""
from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import planner
from costmodel import ClusterSpec
from planner import plots

MODEL = "llama3-70b"
GLOBAL_BATCH, SEQ_LEN = 512, 4096
# knobs that win for a 70B at this batch anyway; they keep each search about a second
PINS = dict(compile=True, micro_batch_size=1, schedules="1F1B", offload=False)
CLUSTERS = {
    "64 × H100": "8x8xh100",
    "64 × H200": "8x8xh200",
    "64 × A100-80G": "8x8xa100-80g",
    "128 × A100-80G": ClusterSpec(name="16x8xa100-80g", nodes=16, gpus_per_node=8, gpu="a100-80g"),
}
BASE = dict(global_batch_size=GLOBAL_BATCH, micro_batch_size=1, seq_len=SEQ_LEN, dp=64, tp=1, pp=1, zero=2,
            recompute="none", compile=True)


def figures() -> dict[str, object]:
    best = {}
    for setup, cluster in CLUSTERS.items():
        res = planner.plan(MODEL, cluster, global_batch_size=GLOBAL_BATCH, seq_len=SEQ_LEN, time_limit_s=30, **PINS)
        if res.best is None:
            raise SystemExit(f"no plan fits on {setup}: {res.diagnosis}")
        best[setup] = res.best
    layouts = planner.sweep(MODEL, "8x8xh100", BASE, tp=[1, 2, 4, 8], pp=[1, 2, 4, 8, 16], zero=[2, 3],
                            recompute=["none", "selective", "full"])
    knobs = planner.sweep(MODEL, "8x8xh100", dict(BASE, tp=2, pp=4, dp=8, recompute="full"),
                          recompute_layers=[0, 5, 10, 15, 20], offload_activation_layers=[0, 5, 10, 20],
                          offload_state_layers=[0, 10, 20], fp8_layers=[0, 20])
    return {
        "whatif-memory.png": plots.memory_breakdown(best["64 × H100"]),
        "whatif-time.png": plots.time_breakdown(list(best.values()),
                                                labels=[f"{s}  {e.layout}" for s, e in best.items()]),
        "whatif-tp-pp.png": plots.tp_pp_heatmap(layouts),
        "whatif-pareto.png": plots.pareto_front(
            knobs, title="tp2·pp4·dp8 on 64 H100: checkpointing, offload and float8"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent, help="folder for the PNGs")
    ap.add_argument("--dpi", type=int, default=110)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    warnings.filterwarnings("ignore", message=".*runs as zero 2.*")
    for name, fig in figures().items():
        fig.savefig(args.out / name, dpi=args.dpi)
        print(args.out / name)


if __name__ == "__main__":
    main()
