"""Tuner vs hand grid on H200: is the tuner's plan the measured best, or within 3 % of it?

    python benchmarks/tuner_vs_grid.py [benchmarks/data/h200-1gpu-grid.jsonl benchmarks/data/h200-2gpu-grid.jsonl]

The cases and the tuner's plans are made by benchmarks/gpu/make_grid.py (tuner_vs_grid_*gpu.yaml); the runs by
the GPU measurements (benchmarks/gpu/README.md). Cases are told apart by the name prefix (t1-, t2-, ...); the
tuner's entry carries ``tuner: true`` (added by benchmarks/gpu/collect.py) or ends in ``-tuner``. Prints, per
case, the plans by measured tokens/s/GPU with the cost model's prediction beside them, and the verdict.
"""
from __future__ import annotations

import argparse
import glob
import json
import sys
from pathlib import Path

from costmodel import GiB

DATA = Path(__file__).resolve().parent / "data"
TOLERANCE = 0.03


def _gib(x: float | None) -> str:
    return "-" if x is None else f"{x / GiB:.1f}"


def is_tuner(d: dict) -> bool:
    return bool(d.get("tuner")) or d["name"].endswith("-tuner")


def case_report(case: str, runs: list[dict]) -> tuple[list[str], bool | None]:
    """Table lines of one case and whether the tuner's plan passes (None when it cannot be judged)."""
    ok = [d for d in runs if not d.get("oom") and not d.get("error") and d.get("tokens_per_s_per_gpu")]
    ok.sort(key=lambda d: -d["tokens_per_s_per_gpu"])
    rows = [f"### {case}: {runs[0]['model']} on {runs[0].get('cluster', '?')}, global batch "
            f"{runs[0]['plan']['global_batch_size']} x {runs[0]['plan']['seq_len']}", "",
            "| rank | plan | tuner | tok/s/GPU | step s | peak GiB | pred tok/s/GPU | vs best |",
            "|---:|---|:-:|---:|---:|---:|---:|---:|"]
    best = ok[0]["tokens_per_s_per_gpu"] if ok else None
    for i, d in enumerate(ok, 1):
        pred = (d.get("predicted") or {}).get("tokens_per_s_per_gpu")
        rows.append(f"| {i} | {d['name']} | {'yes' if is_tuner(d) else ''} | {d['tokens_per_s_per_gpu']:,.0f} | "
                    f"{d['step_time_s']:.3f} | {_gib(d.get('peak_memory_bytes'))} | "
                    f"{f'{pred:,.0f}' if pred else '-'} | {d['tokens_per_s_per_gpu'] / best - 1:+.1%} |")
    for d in runs:
        if d not in ok:
            rows.append(f"| - | {d['name']} | {'yes' if is_tuner(d) else ''} | {'OOM' if d.get('oom') else 'error'} "
                        "| | | | |")
    tuner = [d for d in runs if is_tuner(d)]
    if not tuner:
        return rows + ["", "no tuner plan measured"], None
    t = tuner[0]
    if t not in ok:
        return rows + ["", f"tuner's plan {t['name']} did not run ({'OOM' if t.get('oom') else 'error'}): FAIL"], False
    gap = 1 - t["tokens_per_s_per_gpu"] / best
    passed = gap <= TOLERANCE
    rows += ["", f"tuner's plan is {'the measured best' if gap <= 0 else f'{gap:.1%} below the measured best'} "
             f"({len(ok)} plans ran): {'PASS' if passed else 'FAIL'} (tolerance {TOLERANCE:.0%})"]
    return rows, passed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="*", default=sorted(glob.glob(str(DATA / "h200-*gpu-grid.jsonl"))))
    args = ap.parse_args(argv)
    if not args.files:
        print(f"no grid runs under {DATA}; run them first (benchmarks/gpu/README.md)", file=sys.stderr)
        return 1
    cases: dict[str, list[dict]] = {}
    for f in args.files:
        for line in Path(f).read_text().splitlines():
            if line.strip():
                d = json.loads(line)
                cases.setdefault(d["name"].split("-", 1)[0], []).append(d)
    verdicts = []
    for case, runs in cases.items():
        rows, passed = case_report(case, runs)
        print("\n".join(rows) + "\n")
        verdicts.append(passed)
    print(f"{sum(v is True for v in verdicts)} of {len(verdicts)} cases pass")
    return 0


if __name__ == "__main__":
    sys.exit(main())
