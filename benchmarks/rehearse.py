"""Rehearsed rank roles against the cost model: compute time and peak memory per role, from committed runs of
`python -m benchmarks.gpu.rehearse_roles` (benchmarks/data/rehearse-*.jsonl).

    python benchmarks/rehearse.py [FILES...]

Targets (issue: trust at scale): compute time median |error| <= 3 %, max <= 10 %; peak memory median <= 2 %,
max <= 5 %, over >= 20 roles.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data"


def read(paths: list[Path]) -> list[dict]:
    out = []
    for p in paths:
        out += [json.loads(x) for x in Path(p).read_text().splitlines() if x.strip()]
    return out


def table_lines(lines: list[dict]) -> list[str]:
    rows = ["| role | pp rank | compute meas (s) | model (s) | err | peak meas (GiB) | model (GiB) | err |",
            "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for x in lines:
        if "error" in x:
            rows.append(f"| {x['name']} | | | | | | | {x['error'][:80]} |")
            continue
        meas = x["step_time_s"] * x.get("scale", 1.0)
        mem = x["peak_memory_bytes"]
        rows.append(f"| {x['name']} | {x['pp_rank']} | {meas:.3f} | {x['predicted_compute_s']:.3f} | "
                    f"{x['time_error']:+.1%} | {mem / 2**30:.2f} | {x['predicted_peak_bytes'] / 2**30:.2f} | "
                    f"{x['memory_error']:+.1%} |")
    return rows


def summary(lines: list[dict]) -> dict:
    ok = [x for x in lines if "error" not in x]
    te = [abs(x["time_error"]) for x in ok]
    me = [abs(x["memory_error"]) for x in ok if not math.isnan(x["memory_error"])]
    med = lambda v: statistics.median(v) if v else math.nan  # noqa: E731
    return {"roles": len(ok), "failed": len(lines) - len(ok), "time_median": med(te), "time_max": max(te, default=math.nan),
            "memory_median": med(me), "memory_max": max(me, default=math.nan)}


def summary_lines(lines: list[dict]) -> list[str]:
    s = summary(lines)
    return [f"{s['roles']} roles rehearsed ({s['failed']} failed): compute time median |err| {s['time_median']:.1%}, "
            f"max {s['time_max']:.1%}; peak memory median |err| {s['memory_median']:.1%}, max {s['memory_max']:.1%}"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="*", help="rehearse.jsonl files (default: benchmarks/data/rehearse-*.jsonl)")
    a = ap.parse_args(argv)
    paths = a.files or sorted(DATA.glob("rehearse-*.jsonl"))
    if not paths:
        print("no rehearsed roles committed yet (python -m benchmarks.gpu.rehearse_roles on a GPU)")
        return 0
    lines = read(paths)
    print("\n".join(table_lines(lines)))
    print()
    print("\n".join(summary_lines(lines)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
