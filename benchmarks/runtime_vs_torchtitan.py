"""loadmaster's trainer beside TorchTitan on the same plans, from committed measurements.

    python benchmarks/runtime_vs_torchtitan.py [LINES.jsonl] [--json]

Reads benchmarks/data/runtime-vs-torchtitan.jsonl (written on a GPU by ``python -m
benchmarks.gpu.runtime_vs_torchtitan``: one line per plan and engine) and prints, per plan, each engine's
tokens/s/GPU and peak memory and loadmaster's ratio to TorchTitan (or to the plain FSDP2 script where TorchTitan
could not run the plan), then the acceptance check: loadmaster ≥ 1.00× on every plan and ≥ 1.05× at the median,
peak memory not higher. The plans' settings and what differs between the engines are in the GPU script's
docstring.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from benchmarks.gpu import kit
from benchmarks.gpu.runtime_vs_torchtitan import COLUMNS, LINES, comparison

DATA = Path(__file__).resolve().parent / "data" / LINES


def verdict(rows: list[dict]) -> dict:
    """The comparison's figures over the plans both engines ran."""
    both = [r for r in rows if r.get("speedup") is not None]
    speed = [r["speedup"] for r in both]
    mem = [r["memory_ratio"] for r in both if r.get("memory_ratio") is not None]
    return {"plans": len(rows), "compared": len(both), "min_speedup": min(speed, default=None),
            "median_speedup": statistics.median(speed) if speed else None,
            "max_memory_ratio": max(mem, default=None),
            "slower": [r["plan"] for r in both if r["speedup"] < 1.0],
            "more_memory": [r["plan"] for r in both if (r.get("memory_ratio") or 0) > 1.0]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("lines", nargs="?", default=str(DATA), help="the comparison's JSON Lines")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    path = Path(args.lines)
    if not path.is_file():
        print(f"no measurements yet: {path} (run python -m benchmarks.gpu.runtime_vs_torchtitan on a GPU)",
              file=sys.stderr)
        return 1
    lines = kit.read_jsonl(path)
    rows = comparison(lines)
    v = verdict(rows)
    if args.json:
        print(json.dumps({"rows": rows, "verdict": v}, indent=1))
        return 0
    gpus = sorted({x["gpu"] for x in lines if x.get("gpu")})
    tt = sorted({str(x.get("torchtitan")) for x in lines if x["engine"] == "torchtitan" and x.get("torchtitan")})
    print(f"GPU: {', '.join(gpus)}; TorchTitan {', '.join(tt) or '(did not run)'}\n")
    print(kit.table(rows, COLUMNS))
    print("\nselective checkpointing is each engine's own: loadmaster saves every matmul output, TorchTitan's per-op "
          "policy every second one (less memory, more recompute); RoPE: loadmaster rotate-half, TorchTitan complex")
    if v["compared"]:
        ok = v["min_speedup"] >= 1.0 and v["median_speedup"] >= 1.05 and not v["more_memory"]
        mem = "-" if v["max_memory_ratio"] is None else f"{v['max_memory_ratio']:.3f}"
        print(f"\n{v['compared']} of {v['plans']} plans compared: loadmaster / other tokens/s min "
              f"{v['min_speedup']:.3f}, median {v['median_speedup']:.3f}; peak memory ratio max {mem}"
              + ("" if ok else f"; slower on {v['slower'] or '-'}, more memory on {v['more_memory'] or '-'}"))
        print("targets met (≥ 1.00× every plan, ≥ 1.05× median, memory not higher)" if ok else "targets missed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
