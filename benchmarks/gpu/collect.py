"""Merge the results the device calls sent back, and write the files to commit.

    python benchmarks/gpu/collect.py FILES_AT/results.tgz [...] [--into .campaign/results]   # after each call
    python benchmarks/gpu/collect.py --commit [--into .campaign/results] [--dest .]            # at the end

Each call's results.tgz holds WORK/<job>/ (campaign.py). Merging keeps, per bench plan, a real measurement
over a crash record, and the newest otherwise, so ``--into`` always holds everything measured so far; carry
that folder to the next call (run_campaign.sh resumes from .campaign/results).

``--commit`` writes, under ``--dest`` (the repository root by default):
  benchmarks/data/h200_{sweep,grid}_{1,2}gpu.jsonl   launcher.bench lines (what benchmarks/fidelity.py replays),
                                                     out-of-memory and crash lines completed with the plan,
                                                     model and cluster launcher.bench leaves out of them
  benchmarks/data/plain/h200_plain_fsdp2.jsonl        plain FSDP2 reference runs (benchmarks/trainer_gpu.py)
  benchmarks/data/loss/{bf16,fp8}_metrics.jsonl       the 300-step loss curves, and
  benchmarks/loss_curves_fp8_vs_bf16.{png,csv}        their plot (benchmarks/plot_loss_curves.py)
  benchmarks/data/sdpa_gqa_h200.json                  the SDPA/GQA backend check
  profiles/h200-measured.yaml                         the 2-GPU quick profile (picked up for every H200 cluster)
  benchmarks/data/profiles/h200-measured-1gpu.yaml    the 1-GPU quick profile
Smoke results (plans with ``smoke_of``) are refused unless --allow-smoke.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))
from campaign_report import read_jsonl  # noqa: E402

MERGED = {"bench.jsonl", "plain.jsonl", "status.json"}
STATE_RANK = {"done": 3, "failed": 2, "partial": 1, "cut": 1, "running": 0, "pending": 0}
JOB_CLUSTER = {"sweep1-a": "1xh200", "sweep1-b": "1xh200", "grid-1gpu": "1xh200",
               "sweep2-a": "2xh200", "sweep2-b": "2xh200", "grid-2gpu": "2xh200"}
BENCH_FILES = {"h200_sweep_1gpu.jsonl": ["sweep1-a", "sweep1-b"], "h200_sweep_2gpu.jsonl": ["sweep2-a", "sweep2-b"],
               "h200_grid_1gpu.jsonl": ["grid-1gpu"], "h200_grid_2gpu.jsonl": ["grid-2gpu"]}


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


def completed_lines(job_dir: Path, job: str) -> list[dict]:
    """bench.jsonl lines of one job, each with model, plan, cluster and world_size (from the job's plans.yaml
    where launcher.bench left them out: out-of-memory and crash lines), in plan-file order."""
    entries = {e["name"]: e for e in yaml.safe_load((job_dir / "plans.yaml").read_text())}
    cluster = JOB_CLUSTER[job]
    out = []
    for line in read_jsonl(job_dir / "bench.jsonl"):
        e = entries.get(line["name"], {})
        line.setdefault("model", str(e.get("model")))
        line.setdefault("plan", e.get("plan"))
        line.setdefault("cluster", cluster)
        plan = line["plan"] or {}
        line.setdefault("world_size", plan.get("dp", 1) * plan.get("tp", 1) * plan.get("pp", 1))
        line["campaign_job"] = job
        if e.get("tuner"):
            line["tuner"] = True
        out.append(line)
    order = list(entries)
    return sorted(out, key=lambda x: order.index(x["name"]) if x["name"] in order else len(order))


def write_jsonl(path: Path, lines: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))


def commit(into: Path, dest: Path, allow_smoke: bool) -> list[str]:
    written = []
    data = dest / "benchmarks" / "data"
    for fname, jobs in BENCH_FILES.items():
        lines = [ln for j in jobs if (into / j / "bench.jsonl").is_file() for ln in completed_lines(into / j, j)]
        if any("smoke_of" in ln for ln in lines) and not allow_smoke:
            raise SystemExit(f"error: {fname}: smoke results; refusing to commit them (--allow-smoke for tests)")
        if lines:
            write_jsonl(data / fname, lines)
            written.append(f"{data / fname} ({len(lines)} runs)")
    plain = [ln for j in ("plain-1gpu", "plain-2gpu") for ln in read_jsonl(into / j / "plain.jsonl")]
    if plain:
        write_jsonl(data / "plain" / "h200_plain_fsdp2.jsonl", plain)
        written.append(f"{data / 'plain' / 'h200_plain_fsdp2.jsonl'} ({len(plain)} runs)")
    loss_dir = None
    for v in ("bf16", "fp8"):
        m = into / f"loss-{v}" / v / "metrics.jsonl"
        if m.is_file():
            (data / "loss").mkdir(parents=True, exist_ok=True)
            shutil.copy2(m, data / "loss" / f"{v}_metrics.jsonl")
            shutil.copy2(m.with_name("summary.json"), data / "loss" / f"{v}_summary.json")
            written.append(str(data / "loss" / f"{v}_metrics.jsonl"))
            loss_dir = data / "loss"
    if loss_dir and all((loss_dir / f"{v}_metrics.jsonl").is_file() for v in ("bf16", "fp8")):
        with tempfile.TemporaryDirectory() as tmp:
            for v in ("bf16", "fp8"):
                (Path(tmp) / v).mkdir()
                shutil.copy2(loss_dir / f"{v}_metrics.jsonl", Path(tmp) / v / "metrics.jsonl")
            import plot_loss_curves
            png = dest / "benchmarks" / "loss_curves_fp8_vs_bf16.png"
            plot_loss_curves.main([tmp, "-o", str(png)])
            written.append(f"{png} (+ .csv)")
    for src, dst in ((into / "sdpa-gqa" / "sdpa_gqa.json", data / "sdpa_gqa_h200.json"),
                     (into / "profile-2gpu" / "h200-measured.yaml", dest / "profiles" / "h200-measured.yaml"),
                     (into / "profile-1gpu" / "h200-measured-1gpu.yaml",
                      data / "profiles" / "h200-measured-1gpu.yaml")):
        if src.is_file():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
            written.append(str(dst))
    return written


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
        sys.path.insert(0, str(ROOT / "benchmarks"))
        for w in commit(into, Path(args.dest), args.allow_smoke):
            print(f"wrote {w}")
    if not args.inputs and not args.commit:
        ap.error("give results to merge, --commit, or both")
    return 0


if __name__ == "__main__":
    sys.exit(main())
