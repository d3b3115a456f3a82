"""Plot (or tabulate) the bf16 vs float8 loss curves of benchmarks/fp8_loss_curves.py.

    python benchmarks/plot_loss_curves.py RUN_DIR [-o benchmarks/loss_curves.png] [--csv benchmarks/loss_curves.csv]

RUN_DIR holds ``bf16/metrics.jsonl`` and ``fp8/metrics.jsonl`` (launcher's per-step metrics). Prints the mean
loss over the last ``--tail`` steps of each run and their relative difference (target: within 2 %), writes a
CSV of both curves, and a PNG when matplotlib is installed.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

VARIANTS = ("bf16", "fp8")
TARGET = 0.02


def read_losses(path: Path) -> dict[int, float]:
    """step → loss of one metrics.jsonl (a resumed run's later lines win)."""
    out = {}
    for line in path.read_text().splitlines():
        if line.strip():
            rec = json.loads(line)
            out[int(rec["step"])] = float(rec["loss"])
    return out


def compare(curves: dict[str, dict[int, float]], tail: int) -> dict:
    """Mean loss over the last ``tail`` common steps of each run and the relative difference of fp8 to bf16."""
    common = sorted(set.intersection(*(set(c) for c in curves.values())))
    last = common[-tail:]
    means = {v: sum(curves[v][s] for s in last) / len(last) for v in curves}
    rel = means["fp8"] / means["bf16"] - 1
    return {"steps": len(common), "tail_steps": len(last), "means": means, "rel_diff": rel,
            "within_target": abs(rel) <= TARGET}


def write_csv(curves: dict[str, dict[int, float]], path: Path) -> None:
    steps = sorted(set().union(*(set(c) for c in curves.values())))
    rows = ["step," + ",".join(curves)]
    rows += [f"{s}," + ",".join(f"{curves[v][s]:.6f}" if s in curves[v] else "" for v in curves) for s in steps]
    path.write_text("\n".join(rows) + "\n")


def plot(curves: dict[str, dict[int, float]], result: dict, path: Path, title: str) -> bool:
    """Write the PNG; False when matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for v, c in curves.items():
        steps = sorted(c)
        ax.plot(steps, [c[s] for s in steps], label=f"{v} (last-{result['tail_steps']} mean "
                f"{result['means'][v]:.3f})", linewidth=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (nats)")
    ax.set_title(f"{title}\nfloat8 vs bf16 at the end: {result['rel_diff']:+.2%}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", help="directory with bf16/metrics.jsonl and fp8/metrics.jsonl")
    ap.add_argument("-o", "--output", default="benchmarks/loss_curves.png")
    ap.add_argument("--csv", help="CSV path (default: next to the PNG)")
    ap.add_argument("--tail", type=int, default=20, help="steps averaged at the end")
    ap.add_argument("--title", default="llama3.2-1b on one H200, Zipf-bigram token stream, 4 x 2048 tokens/step")
    args = ap.parse_args(argv)
    run_dir = Path(args.run_dir)
    missing = [v for v in VARIANTS if not (run_dir / v / "metrics.jsonl").is_file()]
    if missing:
        print(f"error: {run_dir} has no {', '.join(f'{v}/metrics.jsonl' for v in missing)}", file=sys.stderr)
        return 2
    curves = {v: read_losses(run_dir / v / "metrics.jsonl") for v in VARIANTS}
    result = compare(curves, args.tail)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    csv = Path(args.csv) if args.csv else out.with_suffix(".csv")
    write_csv(curves, csv)
    drew = plot(curves, result, out, args.title)
    print("| run | steps | first loss | last-%d mean |" % result["tail_steps"])
    print("|---|---:|---:|---:|")
    for v, c in curves.items():
        print(f"| {v} | {len(c)} | {c[min(c)]:.4f} | {result['means'][v]:.4f} |")
    print(f"float8 vs bf16 over the last {result['tail_steps']} steps: {result['rel_diff']:+.2%} "
          f"({'within' if result['within_target'] else 'OUTSIDE'} the {TARGET:.0%} target); "
          f"wrote {csv}{' and ' + str(out) if drew else ' (no matplotlib: no PNG)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
