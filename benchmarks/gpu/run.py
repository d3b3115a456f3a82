"""Run GPU measurement jobs on this machine, one after another, each into OUT/JOB, within a time budget.

    python -m benchmarks.gpu.run --out OUT [--budget-s 540] [--pack] JOB[:SECONDS] [JOB[:SECONDS] ...]
    python -m benchmarks.gpu.run --list

Each job is one command of this repository (the table ``JOBS``); a job gets what is left of the budget, at most its
own cap (or the SECONDS given after its name), and is stopped when that runs out (what it wrote so far stays).
Wheels in ``.whl/`` (torchao, TorchTitan and their needs; not in git) are installed into ``/tmp/site`` first. The
last lines printed are a table of the jobs: exit code, seconds, log file. ``--pack`` then folds everything under OUT
into OUT/results.tar.gz (the device tool brings back at most 8 files; every job writes several).
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# name: (command with {out} and {budget} filled in, cap in seconds, what it measures)
JOBS: dict[str, tuple[list[str], float, str]] = {
    "profile": (["python", "-m", "launcher.gputools.profile", "-o", "{out}/profile.yaml"], 180,
                "the GPU's hardware profile: GEMM/float8/SDPA curves, HBM, host copies, CPU AdamW, overlap"),
    "profile-quick": (["python", "-m", "launcher.gputools.profile", "--quick", "-o", "{out}/profile.yaml"], 120,
                      "the same, fewer shapes (< 2 minutes)"),
    "anatomy": (["python", "-m", "benchmarks.gpu.step_anatomy", "--plans", "benchmarks/gpu/plans_1gpu.yaml",
                 "--names", "g1-l8b8l-bf16-eager,g1-l8b8l-fp8-cmp,g1-l1b-s2k-mb4,g1-l1b-s4k-stateoff4-v2",
                 "--json", "{out}/anatomy.json"], 240,
                "kernel time by category of four plans (benchmarks/anatomy_fit.py turns it into profile constants)"),
    "rehearse": (["python", "-m", "benchmarks.gpu.rehearse_roles", "--out", "{out}", "--budget-s", "{budget}"], 420,
                 "rank roles of 8B/70B/405B plans rehearsed under fake collectives"),
    "rehearse-moe": (["python", "-m", "benchmarks.gpu.rehearse_roles", "--cases", "benchmarks/gpu/rehearse_moe.yaml",
                      "--out", "{out}", "--budget-s", "{budget}"], 180, "expert-parallel rank roles rehearsed"),
    "moe-block": (["python", "-m", "benchmarks.gpu.moe_block", "--out", "{out}", "--budget-s", "{budget}"], 150,
                  "a Qwen3-30B-A3B MoE block and grouped-GEMM efficiency against the cost model"),
    "kernels": (["python", "-m", "benchmarks.gpu.kernel_bench", "--out", "{out}", "--budget-s", "{budget}"], 75,
                "each kernel choice (RoPE, loss, norm, SwiGLU) timed at model shapes: the runtime constants it implies"),
    "torchtitan": (["python", "-m", "benchmarks.gpu.runtime_vs_torchtitan", "--out", "{out}", "--budget-s",
                    "{budget}"], 340, "the same plans run by loadmaster's trainer and by TorchTitan 0.2.2"),
    "grid": (["python", "-m", "benchmarks.gpu.tuner_grid", "--out", "{out}", "--budget-s", "{budget}"], 220,
             "the tuner's plan against a hand grid (Llama-3.2-1B shape, seq 8192, gbs 8)"),
    "kernel-loss": (["python", "-m", "benchmarks.gpu.kernel_loss_curves", "--out", "{out}", "--budget-s", "{budget}"],
                    190, "300-step loss curves, bf16 vs each kernel choice"),
    "fp8-schedule": (["python", "-m", "benchmarks.gpu.fp8_schedule", "--out", "{out}", "--tokens", "/tmp/zipf.bin",
                      "--budget-s", "{budget}"], 480, "float8 schedules: 300-step loss curves and tokens/s"),
    "cp": (["python", "-m", "benchmarks.gpu.cp_roles", "--out", "{out}", "--budget-s", "60"], 150,
           "context parallelism: a cp rank's ring attention and cp rank roles (8-64 GPUs, 32k-128k) rehearsed"),
}


def install_wheels(site: Path = Path("/tmp/site")) -> str | None:
    """pip-install .whl/*.whl into ``site`` (no index, no dependencies); returns the PYTHONPATH entry."""
    wheels = sorted((ROOT / ".whl").glob("*.whl"))
    if not wheels:
        return None
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                    "--no-cache-dir", "--upgrade", "--target", str(site), *map(str, wheels)], check=True)
    shutil.rmtree(site / "test", ignore_errors=True)   # torchao's wheel ships a top-level `test` package
    return str(site)


def run(jobs: list[str], out: Path, budget_s: float) -> list[tuple[str, int | None, float, Path]]:
    """Run ``jobs`` in order; (job, exit code or None when skipped/stopped, seconds, log) per job."""
    t0, rows = time.monotonic(), []
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    site = install_wheels()
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), site, env.get("PYTHONPATH")) if p)
    for spec in jobs:
        job, _, given = spec.partition(":")
        argv, cap, _ = JOBS[job]
        cap = float(given) if given else cap
        left = budget_s - (time.monotonic() - t0)
        jdir = out / job
        jdir.mkdir(parents=True, exist_ok=True)
        log = jdir / "log.txt"
        if left < 10:
            rows.append((job, None, 0.0, log))
            continue
        limit = min(cap, left)
        cmd = [sys.executable if a == "python" else a.format(out=jdir, budget=int(limit - 15)) for a in argv]
        start = time.monotonic()
        with log.open("w") as f:
            print(f"== {job}: {' '.join(cmd)}", flush=True)
            try:
                code = subprocess.run(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT,
                                      timeout=limit).returncode
            except subprocess.TimeoutExpired:
                code = None
        rows.append((job, code, time.monotonic() - start, log))
        tail = log.read_text().splitlines()[-15:]
        print("\n".join(tail), flush=True)
    return rows


def _seconds_ok(text: str) -> bool:
    try:
        return not text or float(text) > 0
    except ValueError:
        return False


def pack(out: Path) -> Path:
    """Everything under ``out`` moved into ``out``/results.tar.gz (paths relative to ``out``)."""
    archive = out / "results.tar.gz"
    members = [p for p in out.iterdir() if p != archive]
    with tarfile.open(archive, "w:gz") as tar:
        for p in members:
            tar.add(p, arcname=p.name)
    for p in members:
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    return archive


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("jobs", nargs="*", help="job names (--list shows them)")
    ap.add_argument("--out", default="out")
    ap.add_argument("--budget-s", type=float, default=540.0)
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--pack", action="store_true", help="fold OUT into OUT/results.tar.gz at the end")
    a = ap.parse_args(argv)
    if a.list or not a.jobs:
        for name, (_, cap, what) in JOBS.items():
            print(f"{name:<24} {cap:>5.0f} s  {what}")
        return 0
    unknown = [j for j in a.jobs if j.partition(":")[0] not in JOBS or not _seconds_ok(j.partition(":")[2])]
    if unknown:
        print(f"error: unknown job or cap {', '.join(unknown)}; use JOB or JOB:SECONDS (SECONDS > 0) with JOB one "
              f"of {', '.join(JOBS)}", file=sys.stderr)
        return 2
    rows = run(a.jobs, Path(a.out), a.budget_s)
    print("| job | exit | seconds | log |\n|---|---:|---:|---|")
    for job, code, secs, log in rows:
        print(f"| {job} | {'skipped' if code is None and secs == 0 else 'stopped' if code is None else code} | "
              f"{secs:.0f} | {log} |")
    if a.pack:
        print(f"packed into {pack(Path(a.out))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
