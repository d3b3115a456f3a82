"""What-if figure: tokens/s per GPU of a mixture-of-experts model over the expert-parallel degree (and over the
context-parallel degree, once plans have a ``cp`` key), from the notebook API's sweep.

    python docs/whatif_ep.py                      # writes docs/whatif-ep.png (Qwen3-30B-A3B, 64 H100, 32k tokens)
    python docs/whatif_ep.py --model mixtral-8x7b --seq-len 4096 --out /tmp/ep.png
"""
from __future__ import annotations

import argparse
import dataclasses
import warnings
from pathlib import Path

import planner
from costmodel import Plan
from planner import plots


def sweep(model: str, cluster: str, seq_len: int, global_batch: int) -> planner.Sweep:
    """Every legal ep (and cp) at zero 3, full checkpointing, one sequence per micro-batch."""
    base = dict(global_batch_size=global_batch, micro_batch_size=1, seq_len=seq_len, dp=1, tp=1, pp=1, zero=3,
                recompute="full", compile=True, grad_reduce="every")
    axes = {"ep": [1, 2, 4, 8, 16, 32, 64]}
    if "cp" in {f.name for f in dataclasses.fields(Plan)}:   # the context-parallel half adds this key
        axes["cp"] = [1, 2, 4, 8]
    return planner.sweep(model, cluster, base, **axes)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="qwen3-30b-a3b")
    ap.add_argument("--cluster", default="8x8xh100")
    ap.add_argument("--seq-len", type=int, default=32768)
    ap.add_argument("--global-batch-size", type=int, default=128)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "whatif-ep.png")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    sw = sweep(args.model, args.cluster, args.seq_len, args.global_batch_size)
    series = "cp" if "cp" in sw.axes else None
    fig = plots.degree_lines(sw, "ep", series, title=f"{args.model} on {args.cluster}, {args.seq_len} tokens per "
                             "sequence:\ntokens/s per GPU over expert parallelism")
    fig.savefig(args.out, dpi=110)
    for e in sw:
        print(e.layout, "fits" if e.feasible else f"does not fit: {e.reason[:80]}",
              f"{e.tokens_per_s_per_gpu:,.0f} tokens/s/GPU" if e.feasible else "")
    print(args.out)


if __name__ == "__main__":
    main()
