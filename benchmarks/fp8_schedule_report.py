"""The table, the acceptance checks and the Pareto figure of a benchmarks.gpu.fp8_schedule run (CPU, here).

    python -m benchmarks.fp8_schedule_report DIR [--md docs/fp8-schedule.md] [--png docs/fp8-schedule-pareto.png]
                                                 [--csv FILE] [--tail 50] [--warmup 10]

Per model and arm: the last-``tail`` mean loss and its difference from bf16; tokens/s over the steps after
``warmup`` (the probe steps included) and over all steps (compile included); the speed-up over bf16, measured and
as the cost model predicted it for the GPU the run found (the trainer's summary); the float8 share of block-steps;
the sensitivity probes (how many, their share of the time); for loss-aware draws, how often the most sensitive
block ran in float8 against the mean. Then the acceptance per model: loss-aware within 0.5 % of bf16, no
worse than the sliding window, at the predicted speed-up within 5 %. ``--md`` rewrites the block between the
``<!-- fp8-schedule:results -->`` markers of that file; ``--png`` draws loss against tokens/s (the Pareto picture)
above the loss curves.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ARMS = ("bf16", "static", "window", "loss-aware")
BEGIN, END = "<!-- fp8-schedule:results -->", "<!-- /fp8-schedule:results -->"
LOSS_TARGET, SPEED_TARGET = 0.005, 0.05
"""The float8 schedule's acceptance: loss within 0.5 % of bf16, speed-up within 5 % of the tuner's prediction."""


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.is_file() else []


def arm_stats(run: Path, *, num_layers: int, tail: int, warmup: int) -> dict:
    """The numbers of one arm's run directory (metrics.jsonl, summary.json)."""
    lines = read_jsonl(run / "metrics.jsonl")
    summary = json.loads((run / "summary.json").read_text())
    plan = summary["plan"]
    tokens = plan["global_batch_size"] * plan["seq_len"]
    times = [x["step_time_s"] for x in lines]
    steady = times[warmup:] or times
    probes = [x["fp8_probe_s"] for x in lines if "fp8_probe_s" in x]
    windows = [x.get("fp8_window", []) for x in lines]
    out = {"steps": len(lines), "loss_tail": sum(x["loss"] for x in lines[-tail:]) / len(lines[-tail:]),
           "tok_s": tokens * len(steady) / sum(steady), "tok_s_all": tokens * len(times) / sum(times),
           "compile_s": sum(times[:warmup]) - warmup * sum(steady) / len(steady),
           "fp8_share": sum(map(len, windows)) / (num_layers * len(lines)),
           "probes": len(probes), "probe_share": sum(probes) / sum(steady) if probes else 0.0,
           "predicted_step_s": (summary.get("predicted") or {}).get("step_time_s"),
           "losses": [x["loss"] for x in lines]}
    last_ema = next((x["fp8_sensitivity"] for x in reversed(lines) if "fp8_sensitivity" in x), None)
    if last_ema and any(last_ema):
        top = max(range(num_layers), key=lambda b: last_ema[b])
        out["most_sensitive"] = {"block": top, "ratio": last_ema[top] * num_layers / sum(last_ema),
                                 "fp8_share": sum(top in w for w in windows) / len(windows)}
    return out


def provenance(run_dir: Path) -> str:
    """Where the numbers come from: device, torch, steps, and whether it was the CPU smoke."""
    lines = read_jsonl(run_dir / "results.jsonl")
    first = lines[0] if lines else {}
    what = ("CPU smoke: tiny model, a pipeline check; neither its losses nor its speeds mean anything"
            if first.get("smoke") else f"{first.get('steps')} steps per arm")
    return f"Measured on {first.get('device', '?')}, torch {first.get('torch', '?')}; {what}."


def collect(run_dir: Path, *, tail: int, warmup: int) -> dict[str, dict[str, dict]]:
    """model -> arm -> stats for every arm that ran; skipped arms carry their reason."""
    meta = {(x["model"], x["arm"]): x for x in read_jsonl(run_dir / "results.jsonl")}
    out: dict[str, dict[str, dict]] = {}
    for (model, arm), m in meta.items():
        run = run_dir / model / arm
        if m.get("skipped") or not (run / "summary.json").is_file():
            out.setdefault(model, {})[arm] = {"skipped": m.get("skipped", "no summary.json")}
            continue
        out.setdefault(model, {})[arm] = {**arm_stats(run, num_layers=m["num_layers"], tail=tail, warmup=warmup),
                                          "wall_s": m.get("wall_s")}
    return out


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:+.2%}"


def table(results: dict, tail: int) -> tuple[list[str], list[str]]:
    """(markdown table lines, acceptance lines)."""
    rows = [f"| model | arm | float8 share | last-{tail} loss | vs bf16 | tokens/s | with compile | speed-up "
            "measured | predicted | probes (time) | most sensitive block in float8 | wall s |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
    checks = []
    for model, arms in results.items():
        base = arms.get("bf16", {})
        for arm in ARMS:
            a = arms.get(arm)
            if a is None:
                continue
            if "skipped" in a:
                rows.append(f"| {model} | {arm} | skipped: {a['skipped']} |" + " |" * 9)
                continue
            d_loss = a["loss_tail"] / base["loss_tail"] - 1 if "loss_tail" in base else None
            speed = a["tok_s"] / base["tok_s"] if "tok_s" in base else None
            pred = (base["predicted_step_s"] / a["predicted_step_s"]
                    if base.get("predicted_step_s") and a.get("predicted_step_s") else None)
            a.update(d_loss=d_loss, speedup=speed, predicted_speedup=pred)
            ms = a.get("most_sensitive")
            sens = (f"block {ms['block']} ({ms['ratio']:.1f}× mean): {ms['fp8_share']:.0%} vs {a['fp8_share']:.0%}"
                    if ms and arm == "loss-aware" else "")
            rows.append(f"| {model} | {arm} | {a['fp8_share']:.0%} | {a['loss_tail']:.4f} | {_pct(d_loss)} | "
                        f"{a['tok_s']:,.0f} | {a['tok_s_all']:,.0f} | {'-' if speed is None else f'{speed:.3f}'} | "
                        f"{'-' if pred is None else f'{pred:.3f}'} | {a['probes']} ({a['probe_share']:.1%}) | "
                        f"{sens} | {a['wall_s'] if a.get('wall_s') is not None else '-'} |")
        la, win = arms.get("loss-aware", {}), arms.get("window", {})
        if la.get("d_loss") is not None:
            checks.append(f"{model}: loss-aware vs bf16 {la['d_loss']:+.2%} "
                          f"({'within' if abs(la['d_loss']) <= LOSS_TARGET else 'OUTSIDE'} 0.5 %)")
        if la.get("loss_tail") is not None and win.get("loss_tail") is not None:
            checks.append(f"{model}: loss-aware {la['loss_tail']:.5f} vs sliding window {win['loss_tail']:.5f} "
                          f"({'no worse' if la['loss_tail'] <= win['loss_tail'] else 'WORSE'})")
        if la.get("speedup") and la.get("predicted_speedup"):
            err = la["speedup"] / la["predicted_speedup"] - 1
            checks.append(f"{model}: loss-aware speed-up {la['speedup']:.3f} measured vs {la['predicted_speedup']:.3f} "
                          f"predicted ({err:+.1%}, {'within' if abs(err) <= SPEED_TARGET else 'OUTSIDE'} 5 %)")
    return rows, checks


def write_md(path: Path, text: str) -> None:
    """Replace the results block of ``path`` (between BEGIN and END) with ``text``."""
    doc = path.read_text()
    if BEGIN not in doc or END not in doc:
        raise SystemExit(f"error: {path} has no {BEGIN} ... {END} block to fill; add one")
    head, rest = doc.split(BEGIN, 1)
    path.write_text(head + BEGIN + "\n" + text.rstrip("\n") + "\n" + END + rest.split(END, 1)[1])


def plot(results: dict, path: Path, tail: int) -> bool:
    """Loss against tokens/s per model (the Pareto picture), loss curves below; False without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    models = [m for m, arms in results.items() if any("tok_s" in a for a in arms.values())]
    fig, axes = plt.subplots(2, len(models), figsize=(5.5 * len(models), 8), dpi=110, squeeze=False)
    colours = dict(zip(ARMS, ("black", "tab:orange", "tab:blue", "tab:green")))
    for col, model in enumerate(models):
        arms = {a: s for a, s in results[model].items() if "tok_s" in s}
        top, bottom = axes[0][col], axes[1][col]
        pts = sorted((s["tok_s"], s["loss_tail"], a) for a, s in arms.items())
        front, best = [], float("inf")
        for x, y, a in sorted(pts, key=lambda p: -p[0]):   # fastest first: on the front unless a faster one is better
            if y < best:
                front.append((x, y))
                best = y
        top.plot(*zip(*sorted(front)), "--", color="grey", linewidth=0.8, label="Pareto front")
        for x, y, a in pts:
            top.scatter(x, y, color=colours[a], zorder=3)
            top.annotate(a, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
        top.set_title(f"{model}", fontsize=10)
        top.set_xlabel("tokens/s (after warm-up, probes included)")
        top.set_ylabel(f"mean loss, last {tail} steps")
        top.grid(alpha=0.3)
        top.legend(fontsize=8)
        for a, s in arms.items():
            ys = s["losses"]
            k = 10   # 10-step running mean: the per-step loss of 4,096 tokens is noisy
            smooth = [sum(ys[max(0, i - k + 1):i + 1]) / len(ys[max(0, i - k + 1):i + 1]) for i in range(len(ys))]
            bottom.plot(range(1, len(ys) + 1), smooth, color=colours[a], linewidth=1, label=a)
        bottom.set_xlabel("step")
        bottom.set_ylabel("training loss (10-step mean)")
        lo = min(min(s["losses"][len(s["losses"]) // 3:]) for s in arms.values())
        hi = max(max(s["losses"][len(s["losses"]) // 3:]) for s in arms.values())
        bottom.set_ylim(lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo))
        bottom.grid(alpha=0.3)
        bottom.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--md", type=Path, help="markdown file whose results block to rewrite")
    ap.add_argument("--png", type=Path, help="figure path")
    ap.add_argument("--csv", type=Path, help="one row per arm")
    ap.add_argument("--tail", type=int, default=50, help="steps averaged at the end")
    ap.add_argument("--warmup", type=int, default=10, help="first steps left out of tokens/s (compile)")
    args = ap.parse_args(argv)
    if not (args.run_dir / "results.jsonl").is_file():
        print(f"error: {args.run_dir} has no results.jsonl; run python -m benchmarks.gpu.fp8_schedule --out "
              f"{args.run_dir} first", file=sys.stderr)
        return 2
    results = collect(args.run_dir, tail=args.tail, warmup=args.warmup)
    rows, checks = table(results, args.tail)
    text = provenance(args.run_dir) + "\n\n" + "\n".join(rows) + "\n\n" + "\n".join(f"- {c}" for c in checks) + "\n"
    print(text)
    if args.md:
        write_md(args.md, text)
    if args.csv:
        keys = ("fp8_share", "loss_tail", "d_loss", "tok_s", "tok_s_all", "speedup", "predicted_speedup", "probes",
                "probe_share", "compile_s", "wall_s")
        lines = ["model,arm," + ",".join(keys)]
        lines += [f"{m},{a}," + ",".join("" if s.get(k) is None else f"{s[k]:.6g}" for k in keys)
                  for m, arms in results.items() for a, s in arms.items() if "tok_s" in s]
        args.csv.write_text("\n".join(lines) + "\n")
    if args.png and not plot(results, args.png, args.tail):
        print("no matplotlib: no figure", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
