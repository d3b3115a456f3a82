"""Merge the results the device calls sent back, and write the files to commit.

    python -m benchmarks.gpu.collect FILES_AT/results.tgz [...] [--into .campaign/results]   # after each call
    python -m benchmarks.gpu.collect --commit [--into .campaign/results] [--dest .]            # at the end

Each call's results.tgz holds WORK/<job>/ (campaign.py). Merging keeps, per bench plan, a real measurement
over a crash record, and the newest otherwise, so ``--into`` always holds everything measured so far; carry
that folder to the next call (run_campaign.sh resumes from .campaign/results).

``--commit`` writes each job's result to its ``Job.committed`` path (campaign.py; the campaign then counts it
as measured), under ``--dest`` (the repository root by default):
  benchmarks/data/h200-{1,2}gpu-{sweep-a,sweep-b,grid}.jsonl   launcher.runtime.bench lines (what fidelity.py replays),
                                        crash lines completed with model, plan and cluster from the job's plans
  benchmarks/data/plain/h200-{1,2}gpu-plain.jsonl              plain FSDP2 runs (benchmarks/trainer_gpu.py)
  benchmarks/data/loss/{bf16,fp8}_{metrics.jsonl,summary.json}, the two loss runs, and their plot
      benchmarks/loss_curves_fp8_vs_bf16.{png,csv}             (benchmarks/plot_loss_curves.py)
  benchmarks/data/h200-sdpa-gqa.json                           the SDPA/GQA backend check
  benchmarks/data/profiles/h200-measured-2gpu.yaml             the 2-GPU quick profile, whose measured link,
      collective fits and communication overlap also go into profiles/h200-measured.yaml (the full 1-GPU
      profile; its source line says so)
Smoke results (plans with ``smoke_of``) are refused unless --allow-smoke.
"""
from __future__ import annotations

import argparse
import copy
import json
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path

import yaml

from benchmarks.gpu.campaign_report import read_jsonl

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent

MERGED = {"bench.jsonl", "plain.jsonl", "status.json"}
STATE_RANK = {"done": 3, "failed": 2, "partial": 1, "cut": 1, "running": 0, "pending": 0}
TWO_GPU_MARK = " | 2-GPU fields (intra_node, constants.comm_*, records.collectives) from: "


def _better(old: dict | None, new: dict) -> dict:
    """The line to keep for one plan: a measurement beats a crash record; otherwise the newer one."""
    if old is not None and new.get("crash") and not old.get("crash"):
        return old
    return new


def merge_lines(old: list[dict], new: list[dict]) -> list[dict]:
    by_name: dict[str, dict] = {}
    for line in old + new:
        by_name[line["name"]] = _better(by_name.get(line["name"]), line)
    return list(by_name.values())


def merge_job(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.rglob("*"):
        rel = f.relative_to(src)
        if f.is_dir() or str(rel) in MERGED:
            continue
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, dst / rel)
    for name in ("bench.jsonl", "plain.jsonl"):
        if (src / name).is_file():
            lines = merge_lines(read_jsonl(dst / name), read_jsonl(src / name))
            (dst / name).write_text("".join(json.dumps(x) + "\n" for x in lines))
    if (src / "status.json").is_file():
        new = json.loads((src / "status.json").read_text())
        old = json.loads((dst / "status.json").read_text()) if (dst / "status.json").is_file() else {}
        keep = old if STATE_RANK.get(old.get("state"), 0) > STATE_RANK.get(new.get("state"), 0) else new
        (dst / "status.json").write_text(json.dumps(keep, indent=1) + "\n")


def merge(inputs: list[str], into: Path) -> list[str]:
    """Merge results.tgz files or results folders into ``into``; returns the job names seen."""
    jobs = []
    for ref in inputs:
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(ref)
            if src.is_file():
                with tarfile.open(src) as tar:
                    tar.extractall(tmp, filter="data")
                src = Path(tmp) / "results"
            for job in sorted(p for p in src.iterdir() if p.is_dir()):
                merge_job(job, into / job.name)
                jobs.append(job.name)
    return jobs


def completed_lines(job_dir: Path, job) -> list[dict]:
    """bench.jsonl lines of one job, each with model, plan, cluster and world_size (from the job's plans.yaml where
    launcher.runtime.bench or a crash record left them out), in plan-file order."""
    entries = {e["name"]: e for e in yaml.safe_load((job_dir / "plans.yaml").read_text())} \
        if (job_dir / "plans.yaml").is_file() else {}
    out = []
    for line in read_jsonl(job_dir / "bench.jsonl"):
        e = entries.get(line["name"], {})
        line.setdefault("model", str(e.get("model")))
        line.setdefault("plan", e.get("plan"))
        line.setdefault("cluster", job.cluster)
        plan = line["plan"] or {}
        line.setdefault("world_size", plan.get("dp", 1) * plan.get("tp", 1) * plan.get("pp", 1))
        line.setdefault("campaign_job", job.name)
        if e.get("tuner"):
            line["tuner"] = True
        out.append(line)
    order = list(entries)
    return sorted(out, key=lambda x: order.index(x["name"]) if x["name"] in order else len(order))


def write_jsonl(path: Path, lines: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))


def merge_two_gpu_fields(full: dict, two: dict) -> dict:
    """The full (1-GPU) profile with the fields only a multi-GPU run measures taken from ``two``."""
    from costmodel.hardware import parse_profile
    out = copy.deepcopy(full)
    out["intra_node"] = two["intra_node"]
    for k in ("comm_compute_slowdown", "comm_efficiency"):
        out["constants"][k] = two["constants"][k]
    if "collectives" in two.get("records", {}):
        out.setdefault("records", {})["collectives"] = two["records"]["collectives"]
    out["source"] = " ".join(str(full["source"]).split(TWO_GPU_MARK)[0].split()) + TWO_GPU_MARK + \
        " ".join(str(two["source"]).split())
    parse_profile(out, "<merged profile>")  # the result must load
    return out


def commit(into: Path, dest: Path, allow_smoke: bool) -> list[str]:
    """Write every job's result found in ``into`` to its committed path under ``dest``; returns what was written."""
    from benchmarks.gpu.campaign import JOBS
    written = []
    for job in JOBS:
        src, dst = into / job.name, dest / job.committed
        if job.bench and (src / "bench.jsonl").is_file():
            lines = completed_lines(src, job)
            if any("smoke_of" in ln for ln in lines) and not allow_smoke:
                raise SystemExit(f"error: {job.name}: smoke results; refusing to commit them (--allow-smoke for tests)")
            write_jsonl(dst, lines)
            written.append(f"{dst} ({len(lines)} runs)")
        elif job.plain and (src / "plain.jsonl").is_file():
            lines = read_jsonl(src / "plain.jsonl")
            write_jsonl(dst, lines)
            written.append(f"{dst} ({len(lines)} runs)")
        elif job.name.startswith("loss-"):
            v = job.name.removeprefix("loss-")
            if (src / v / "metrics.jsonl").is_file():
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src / v / "metrics.jsonl", dst)
                shutil.copy2(src / v / "summary.json", dst.with_name(f"{v}_summary.json"))
                written.append(str(dst))
        else:
            outputs = [p for p in src.glob("*") if p.suffix in (".json", ".yaml") and p.name != "status.json"] \
                if src.is_dir() else []
            if outputs:
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(outputs[0], dst)
                written.append(str(dst))
                if job.name == "profile-2gpu":
                    written.append(merge_profile(dst, dest))
    loss = dest / "benchmarks" / "data" / "loss"
    if all((loss / f"{v}_metrics.jsonl").is_file() for v in ("bf16", "fp8")):
        with tempfile.TemporaryDirectory() as tmp:
            for v in ("bf16", "fp8"):
                (Path(tmp) / v).mkdir()
                shutil.copy2(loss / f"{v}_metrics.jsonl", Path(tmp) / v / "metrics.jsonl")
            from benchmarks import plot_loss_curves
            png = dest / "benchmarks" / "loss_curves_fp8_vs_bf16.png"
            plot_loss_curves.main([tmp, "-o", str(png)])
            written.append(f"{png} (+ .csv)")
    return written


def merge_profile(two_gpu: Path, dest: Path) -> str:
    """Put the 2-GPU profile's link and communication fields into profiles/h200-measured.yaml (under ``dest``,
    else the repository's)."""
    target = dest / "profiles" / "h200-measured.yaml"
    base = target if target.is_file() else ROOT / "profiles" / "h200-measured.yaml"
    if not base.is_file():
        return f"no profiles/h200-measured.yaml to merge {two_gpu.name} into"
    from costmodel.hardware import parse_profile
    merged = merge_two_gpu_fields(yaml.safe_load(base.read_text()), yaml.safe_load(two_gpu.read_text()))
    prof = parse_profile(merged, "<merged profile>")
    target.parent.mkdir(parents=True, exist_ok=True)  # the profiler's own layout (launcher.gputools.profile_assemble)
    target.write_text(yaml.safe_dump(prof.to_dict(), sort_keys=False, width=120, default_flow_style=None))
    return f"{target} (2-GPU link, collective and overlap fields merged in)"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("inputs", nargs="*", help="results.tgz files or results folders, oldest first")
    ap.add_argument("--into", default=str(ROOT / ".campaign" / "results"))
    ap.add_argument("--commit", action="store_true", help="write the files to commit under --dest")
    ap.add_argument("--dest", default=str(ROOT))
    ap.add_argument("--allow-smoke", action="store_true")
    args = ap.parse_args(argv)
    into = Path(args.into)
    if args.inputs:
        jobs = merge(args.inputs, into)
        print(f"merged {len(jobs)} job folders into {into}: {', '.join(sorted(set(jobs)))}")
    if args.commit:
        for w in commit(into, Path(args.dest), args.allow_smoke):
            print(f"wrote {w}")
    if not args.inputs and not args.commit:
        ap.error("give results to merge, --commit, or both")
    return 0


if __name__ == "__main__":
    sys.exit(main())
