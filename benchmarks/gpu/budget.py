"""Predict every plan of a campaign plan file and budget its wall time on the device (CPU only, no torch needed).

    python benchmarks/gpu/budget.py benchmarks/gpu/plans_1gpu.yaml benchmarks/gpu/plans_2gpu.yaml [--steps 6] [--check]
    python benchmarks/gpu/budget.py --select a benchmarks/gpu/plans_1gpu.yaml -o /tmp/plans_1gpu_a.yaml
    python benchmarks/gpu/budget.py --measured .campaign/results benchmarks/data/h200-*.jsonl  # recalibrate

A plan file is launcher.runtime.bench's input: a YAML list of {name, model, plan} entries, here with an optional
``group`` (run_campaign.sh runs one group per launcher.runtime.bench process). The cluster is taken from the file name
(``*1gpu*`` → 1xh200, ``*2gpu*`` → 2xh200) or ``cluster:`` in the entry. Wall time of one plan on the device is
estimated as setup + compile + steps × predicted step time × SAFETY; the constants below are guesses to be
replaced by the ``wall_s`` launcher.runtime.bench records per plan. ``--check`` exits 1 when a plan does not load, an
``oom`` plan is predicted to fit, another plan is predicted not to fit, or a group is over GROUP_LIMIT_S.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import yaml

from costmodel import GiB

# Seconds, per launcher.runtime.bench process: python + torch + CUDA context + process group (+ NCCL for 2 GPUs).
PROCESS_START_S = 20.0
# Calibrated on the first H200 runs of plans_1gpu.yaml (23 plans, benchmarks/data/h200-1gpu-sweep-*.jsonl;
# `--measured` prints the comparison): per plan, model build, sharding, init and optimizer took 1-3 s beyond
# its steps; torch.compile added 5-20 s (bf16) and 15-25 s (float8); an OOM plan failed within 1-3 s; and
# measured steps ran ~15 % over the cost model's prediction (warm-up steps included).
PLAN_SETUP_S, SETUP_PER_BPARAM_S = 2.0, 0.2
COMPILE_S, FP8_COMPILE_EXTRA_S = 15.0, 8.0
OOM_S = 2.0
SAFETY = 1.2
# A group must finish well inside the device's 10-minute command limit.
GROUP_LIMIT_S = 480.0


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
    """Device wall seconds of one plan inside a running launcher.runtime.bench process."""
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
    """Device wall seconds of one launcher.runtime.bench process over ``entries`` (0 when there are none)."""
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


def measured_overheads(paths: list[Path]) -> list[str]:
    """Measured wall seconds of each plan (launcher.runtime.bench's ``wall_s``) beside this file's estimate, from bench
    JSONL files or folders holding them (.campaign/results): to recalibrate the constants above."""
    import json
    files = [f for p in paths for f in ([p] if p.is_file() else sorted(p.glob("**/bench.jsonl")))]
    rows = ["| file | plan | compile | steps | wall s | est. s | est. / wall |", "|---|---|:-:|---:|---:|---:|---:|"]
    wall_sum = est_sum = 0.0
    for f in files:
        for line in f.read_text().splitlines():
            d = json.loads(line)
            if d.get("wall_s") is None or not d.get("plan") or not d.get("cluster") or d.get("crash"):
                continue
            steps = len(d.get("losses") or [])
            try:
                _, _, est = entry_estimate(d, d["cluster"], steps or 1)
            except (ValueError, KeyError):
                continue
            wall_sum, est_sum = wall_sum + d["wall_s"], est_sum + est
            rows.append(f"| {f.parent.name if f.name == 'bench.jsonl' else f.stem} | {d['name']} | "
                        f"{'y' if d['plan'].get('compile') else ''} | {steps} | {d['wall_s']:.1f} | {est:.1f} | "
                        f"{est / d['wall_s']:.2f} |")
    rows.append(f"\ntotal: measured {wall_sum:.0f} s, estimated {est_sum:.0f} s (process start-up not included)")
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
    """Write the entries of one group (launcher.runtime.bench input) to ``out``; returns how many."""
    chosen = [e for e in read_entries(path) if str(e.get("group", "-")) == group]
    if not chosen:
        raise SystemExit(f"error: {path} has no entry in group {group!r}")
    Path(out).write_text(yaml.safe_dump(chosen, sort_keys=False, width=200))
    return len(chosen)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="*", help="campaign plan files")
    ap.add_argument("--measured", nargs="+", metavar="RESULTS",
                    help="bench JSONL files or result folders: measured wall time of each plan beside the estimate")
    ap.add_argument("--steps", type=int, default=6, help="steps per plan (launcher.runtime.bench --steps)")
    ap.add_argument("--check", action="store_true", help="exit 1 on any problem")
    ap.add_argument("--select", metavar="GROUP", help="write the entries of GROUP of the one file to -o")
    ap.add_argument("-o", "--output", help="output file of --select")
    args = ap.parse_args(argv)
    if args.measured:
        print("\n".join(measured_overheads([Path(x) for x in args.measured])))
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
