"""Predict every plan of a campaign plan file and budget its wall time on the device (CPU only, no torch needed).

    python benchmarks/gpu/budget.py benchmarks/gpu/plans_1gpu.yaml benchmarks/gpu/plans_2gpu.yaml [--steps 6] [--check]
    python benchmarks/gpu/budget.py --select a benchmarks/gpu/plans_1gpu.yaml -o /tmp/plans_1gpu_a.yaml
    python benchmarks/gpu/budget.py --measured .campaign/results    # measured overheads, to recalibrate

A plan file is launcher.bench's input: a YAML list of {name, model, plan} entries, here with an optional
``group`` (run_campaign.sh runs one group per launcher.bench process). The cluster is taken from the file name
(``*1gpu*`` → 1xh200, ``*2gpu*`` → 2xh200) or ``cluster:`` in the entry. Wall time of one plan on the device is
estimated as setup + compile + steps × predicted step time × SAFETY; the constants below are guesses to be
replaced by the ``wall_s`` launcher.bench records per plan. ``--check`` exits 1 when a plan does not load, an
``oom`` plan is predicted to fit, another plan is predicted not to fit, or a group is over GROUP_LIMIT_S.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import yaml

# Seconds, per launcher.bench process: python + torch + CUDA context + process group (+ NCCL for 2 GPUs).
PROCESS_START_S = 25.0
# Per plan: meta model, sharding, weight init and optimizer, plus this many seconds per billion parameters.
PLAN_SETUP_S, SETUP_PER_BPARAM_S = 5.0, 1.5
# torch.compile of one block's forward and backward graph (cold inductor cache; DESIGN.md saw 2-9 s per
# module on H200); float8 graphs take longer.
COMPILE_S, FP8_COMPILE_EXTRA_S = 20.0, 10.0
# An out-of-memory plan fails within its first step.
OOM_S = 15.0
# Measured step time over predicted: the datasheet profile may be optimistic.
SAFETY = 1.25
# A group must finish well inside the device's 10-minute command limit.
GROUP_LIMIT_S = 480.0
GiB = 2**30


def read_entries(path: str | Path) -> list[dict]:
    data = yaml.safe_load(Path(path).read_text())
    entries = data.get("plans") if isinstance(data, dict) else data
    if not isinstance(entries, list):
        raise ValueError(f"{path}: not a list of {{name, model, plan}} entries")
    return entries


def cluster_for(path: str | Path, entry: dict) -> str:
    if entry.get("cluster"):
        return str(entry["cluster"])
    stem = Path(path).stem
    for n in (1, 2, 4, 8):
        if f"{n}gpu" in stem:
            return f"{n}xh200"
    world = entry["plan"]["dp"] * entry["plan"].get("tp", 1) * entry["plan"].get("pp", 1)
    return f"{world}xh200"


def estimate_wall_s(entry: dict, pred, params: float, steps: int) -> float:
    """Device wall seconds of one plan inside a running launcher.bench process."""
    plan = entry["plan"]
    setup = PLAN_SETUP_S + SETUP_PER_BPARAM_S * params / 1e9
    if not pred.feasible:
        return setup + OOM_S
    compile_s = (COMPILE_S + (FP8_COMPILE_EXTRA_S if plan.get("fp8_layers") else 0.0)) if plan.get("compile") \
        else 0.0
    return setup + compile_s + steps * pred.step_time_s * SAFETY


def knobs(plan: dict) -> str:
    """A short description of a plan's knobs for the table."""
    parts = [f"b{plan['global_batch_size']}/{plan['micro_batch_size']}", f"s{plan['seq_len'] // 1024}k",
             f"d{plan['dp']}t{plan.get('tp', 1)}p{plan.get('pp', 1)}", f"z{plan['zero']}"]
    if plan["recompute"] != "none":
        rl = plan.get("recompute_layers")
        parts.append(f"{plan['recompute'][:3]}{'' if rl is None else rl}")
    for key, tag in (("offload_activation_layers", "oa"), ("offload_state_layers", "os"), ("fp8_layers", "f8")):
        if plan.get(key):
            parts.append(f"{tag}{plan[key]}")
    if plan.get("fp8_recipe") == "rowwise":
        parts.append("row")
    if plan.get("pp", 1) > 1:
        parts.append(plan.get("pp_schedule", "1F1B"))
    if plan.get("sequence_parallel") is False:
        parts.append("noSP")
    if plan.get("grad_reduce") == "every":
        parts.append("every")
    if plan.get("compile"):
        parts.append("cmp")
    return " ".join(parts)


def entry_estimate(entry: dict, cluster: str, steps: int, source: str = "<plans>") -> tuple[object, str, float]:
    """(prediction, model name, estimated device wall seconds) of one entry; SpecError/ValueError if it does
    not load."""
    from costmodel import load_model, parse_plan
    from costmodel.prediction import predict
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = load_model(entry["model"])
        pred = predict(model, cluster, parse_plan(entry["plan"], f"{source}:{entry.get('name', '?')}"))
    return pred, model.name or str(entry["model"]), estimate_wall_s(entry, pred, model.num_params(), steps)


def group_estimate_s(entries: list[dict], cluster: str, steps: int) -> float:
    """Device wall seconds of one launcher.bench process over ``entries`` (0 when there are none)."""
    if not entries:
        return 0.0
    return PROCESS_START_S + sum(entry_estimate(e, cluster, steps)[2] for e in entries)


def budget(paths: list[str], steps: int) -> tuple[list[dict], list[str]]:
    """(one row per entry, problems found)."""
    rows, problems = [], []
    for path in paths:
        for entry in read_entries(path):
            name, cluster = entry.get("name", "?"), cluster_for(path, entry)
            try:
                pred, model_name, wall_s = entry_estimate(entry, cluster, steps, str(path))
            except (ValueError, KeyError) as e:
                problems.append(f"{path}: {name}: {' '.join(str(e).split())}")
                continue
            expect_oom = "oom" in name.split("-")
            if expect_oom == pred.feasible:
                problems.append(f"{path}: {name}: predicted {'to fit' if pred.feasible else 'not to fit'} "
                                f"({pred.peak_memory_bytes / GiB:.1f} GiB) but named as "
                                f"{'an OOM' if expect_oom else 'a fitting'} plan")
            rows.append({"file": Path(path).name, "group": str(entry.get("group", "-")), "name": name,
                         "model": model_name, "cluster": cluster, "knobs": knobs(entry["plan"]),
                         "feasible": pred.feasible, "step_s": pred.step_time_s,
                         "peak_gib": pred.peak_memory_bytes / GiB, "mfu": pred.mfu, "wall_s": wall_s})
    return rows, problems


def measured_overheads(results: Path) -> list[str]:
    """Per measured plan: wall seconds, the steps' share and the rest (setup + compile), to recalibrate the
    constants above from a campaign's results (.campaign/results)."""
    import json
    rows = ["| job | plan | compile | wall s | steps s | overhead s |", "|---|---|:-:|---:|---:|---:|"]
    for f in sorted(results.glob("*/bench.jsonl")):
        for line in f.read_text().splitlines():
            d = json.loads(line)
            if d.get("wall_s") is None or not d.get("step_time_s"):
                continue
            steps_s = len(d.get("losses") or []) * d["step_time_s"]
            rows.append(f"| {f.parent.name} | {d['name']} | {'y' if (d.get('plan') or {}).get('compile') else ''} | "
                        f"{d['wall_s']:.0f} | {steps_s:.0f} | {d['wall_s'] - steps_s:.0f} |")
    return rows


def print_table(rows: list[dict], limit_s: float) -> list[str]:
    """Print the plan table and the per-group totals; return the groups over ``limit_s``."""
    print(f"| {'plan':28} | {'model':12} | {'knobs':44} | fits | step s | peak GiB | MFU | est. wall s |")
    print(f"|{'-' * 30}|{'-' * 14}|{'-' * 46}|------|--------|----------|-----|-------------|")
    for r in rows:
        print(f"| {r['name']:28} | {r['model'][:12]:12} | {r['knobs'][:44]:44} | {'yes' if r['feasible'] else 'NO':4} "
              f"| {r['step_s']:6.3f} | {r['peak_gib']:8.1f} | {r['mfu']:3.0%} | {r['wall_s']:11.0f} |")
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["file"], r["group"]), []).append(r)
    over = []
    print("\n| file | group | plans | est. wall s (incl. process start) |\n|---|---|---:|---:|")
    for (f, g), rs in groups.items():
        total = PROCESS_START_S + sum(r["wall_s"] for r in rs)
        print(f"| {f} | {g} | {len(rs)} | {total:.0f} |")
        if total > limit_s:
            over.append(f"{f} group {g}: {total:.0f} s > {limit_s:.0f} s")
    n_oom = sum(not r["feasible"] for r in rows)
    print(f"\n{len(rows)} plans ({n_oom} predicted OOM); estimated device wall "
          f"{sum(PROCESS_START_S + sum(r['wall_s'] for r in rs) for rs in groups.values()) / 60:.1f} min")
    return over


def select(path: str, group: str, out: str) -> int:
    """Write the entries of one group (launcher.bench input) to ``out``; returns how many."""
    chosen = [e for e in read_entries(path) if str(e.get("group", "-")) == group]
    if not chosen:
        raise SystemExit(f"error: {path} has no entry in group {group!r}")
    Path(out).write_text(yaml.safe_dump(chosen, sort_keys=False, width=200))
    return len(chosen)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="*", help="campaign plan files")
    ap.add_argument("--measured", metavar="RESULTS", help="print measured per-plan overheads of collected results")
    ap.add_argument("--steps", type=int, default=6, help="steps per plan (launcher.bench --steps)")
    ap.add_argument("--check", action="store_true", help="exit 1 on any problem")
    ap.add_argument("--select", metavar="GROUP", help="write the entries of GROUP of the one file to -o")
    ap.add_argument("-o", "--output", help="output file of --select")
    args = ap.parse_args(argv)
    if args.measured:
        print("\n".join(measured_overheads(Path(args.measured))))
        return 0
    if not args.files:
        ap.error("give plan files")
    if args.select is not None:
        if len(args.files) != 1 or not args.output:
            ap.error("--select takes one plan file and -o OUT")
        print(f"{select(args.files[0], args.select, args.output)} plans of group {args.select} -> {args.output}")
        return 0
    rows, problems = budget(args.files, args.steps)
    problems += print_table(rows, GROUP_LIMIT_S)
    for p in problems:
        print(f"problem: {p}", file=sys.stderr)
    return 1 if (args.check and problems) else 0


if __name__ == "__main__":
    sys.exit(main())
