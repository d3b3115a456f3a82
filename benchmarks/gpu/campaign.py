"""The GPU measurement campaign: a queue of jobs, run on one or two GPUs within a deadline, resumable.

    python3 -m benchmarks.gpu.campaign PART... [--budget-s 560] [--resume-from DIR] [--skip JOB,...] [--cpu-smoke]

(run_campaign.sh is the entry point on the device machine.) PART is a job name or one of PARTS. Jobs start
in JOBS order: a job starts when enough GPUs are free (one-GPU jobs run side by side, one per GPU); when the
next job must wait for GPUs, a later one-GPU job may use an idle GPU if it should end first. A profile job is
``exclusive``: it starts on a quiet machine and only ``light`` jobs run beside it (it times host copies and
CPU AdamW). At the deadline running jobs are killed: launcher.runtime.bench writes one line per finished plan, so a
cut sweep resumes at its next plan in the next call (pass the collected results back with --resume-from).
A bench process that dies is rerun from its next plan; a crash (not launcher.runtime.bench's out-of-memory stop on
several ranks) is recorded as a ``crash`` line for the plan that was running. Work goes to WORK/<job>/
(log.txt, status.json, outputs); after every job WORK is packed into $OUT/results.tgz and $OUT/summary.md is
rewritten, so whatever finished comes back even if the call is cut.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from benchmarks.gpu import budget
from benchmarks.gpu import campaign_report as report
from benchmarks.gpu.campaign_smoke import smoke_entries

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent

PY = sys.executable
TORCHRUN = [PY, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]


@dataclass
class Job:
    """One unit of the campaign: a launcher.runtime.bench group or a command."""

    name: str
    gpus: int
    est_s: float
    """Expected wall seconds on the device (start-up included)."""
    cmd: list[str] = field(default_factory=list)
    """Command (not bench jobs); {dir} is replaced by the job's directory."""
    plans: str | None = None
    group: str | None = None
    steps: int = 6
    warmup: int = 2
    plain: list[tuple[str, str]] = field(default_factory=list)
    """(plan file, entry name) pairs run by benchmarks/plain_fsdp2.py, one process each."""
    committed: str | None = None
    """Where collect.py --commit puts this job's result (repository-relative). When it exists, the job counts as
    done (a bench job: the plans in it count as measured) unless --remeasure."""
    exclusive: bool = False
    """Runs with nothing but light jobs beside it (the profiles measure host copies and CPU AdamW)."""
    light: bool = False
    """Uses one GPU briefly and little CPU: may run beside an exclusive job."""

    @property
    def bench(self) -> bool:
        return self.plans is not None

    @property
    def cluster(self) -> str:
        return f"{self.gpus}xh200"


P1, P2 = "benchmarks/gpu/plans_1gpu.yaml", "benchmarks/gpu/plans_2gpu.yaml"
G1, G2 = "benchmarks/gpu/tuner_vs_grid_1gpu.yaml", "benchmarks/gpu/tuner_vs_grid_2gpu.yaml"
PLAIN_1GPU = [(P1, "g1-l8b8l-bf16-eager"), (P1, "g1-l8b8l-bf16-cmp"), (P1, "g1-g13-s4k-full")]
PLAIN_2GPU = [(P2, "g2-g13-dp2-z2"), (P2, "g2-g13-dp2-z3-full-s8k")]
DATA = "benchmarks/data"
# plans whose kernel-time anatomy (step_anatomy.py) checks the cost model's worst-predicted terms
ANATOMY = ["g1-l8b8l-bf16-eager", "g1-l8b8l-fp8-eager", "g1-l8b8l-bf16-cmp", "g1-l8b8l-fp8-cmp",
           "g1-l8b8l-fp8row-cmp", "g1-l1b-s4k-mb1x16", "g1-l1b-s2k-mb4", "g1-l1b-s4k-stateoff4-v2",
           "g1-l1b-s4k-actoff8-v2"]
# Queue order = priority: what the issues need most comes first, so a short campaign loses the least.
# Bench jobs' estimates are computed from the cost model (budget.py).
JOBS = [
    Job("profile-2gpu", 2, 150, TORCHRUN + ["-m", "launcher.gputools.profile", "--quick",
                                            "--name", "h200-measured-2gpu", "-o", "{dir}/h200-measured-2gpu.yaml"],
        committed=f"{DATA}/profiles/h200-measured-2gpu.yaml", exclusive=True),
    Job("sdpa-gqa", 1, 45, [PY, "benchmarks/gpu/sdpa_gqa_check.py", "--json", "{dir}/sdpa_gqa.json"],
        committed=f"{DATA}/h200-sdpa-gqa.json", light=True),
    Job("loss-bf16", 1, 110, [PY, "benchmarks/fp8_loss_curves.py", "--variant", "bf16", "--out", "{dir}"],
        committed=f"{DATA}/loss/bf16_metrics.jsonl"),
    Job("loss-fp8", 1, 130, [PY, "benchmarks/fp8_loss_curves.py", "--variant", "fp8", "--out", "{dir}"],
        committed=f"{DATA}/loss/fp8_metrics.jsonl"),
    Job("anatomy-1gpu", 1, 150, [PY, "benchmarks/gpu/step_anatomy.py", "--plans", P1, "--names", ",".join(ANATOMY),
                                 "--json", "{dir}/anatomy.json"], committed=f"{DATA}/h200-1gpu-anatomy.json"),
    Job("verify-1gpu", 1, 120, [PY, "benchmarks/gpu/verify_runs.py", "--plans", P1, "--budget-s", "100", "--json",
                                "{dir}/verify.json"], committed=f"{DATA}/h200-1gpu-verify.json", light=True),
    Job("sweep1-c", 1, 0, plans=P1, group="c", committed=f"{DATA}/h200-1gpu-sweep-c.jsonl"),
    Job("sweep1-a", 1, 0, plans=P1, group="a", committed=f"{DATA}/h200-1gpu-sweep-a.jsonl"),
    Job("sweep1-b", 1, 0, plans=P1, group="b", committed=f"{DATA}/h200-1gpu-sweep-b.jsonl"),
    Job("sweep2-a", 2, 0, plans=P2, group="a", committed=f"{DATA}/h200-2gpu-sweep-a.jsonl"),
    Job("grid-1gpu", 1, 0, plans=G1, group="a", steps=7, warmup=3, committed=f"{DATA}/h200-1gpu-grid.jsonl"),
    Job("plain-1gpu", 1, 105, plain=PLAIN_1GPU, committed=f"{DATA}/plain/h200-1gpu-plain.jsonl"),
    Job("grid-2gpu", 2, 0, plans=G2, group="a", steps=7, warmup=3, committed=f"{DATA}/h200-2gpu-grid.jsonl"),
    Job("plain-2gpu", 2, 70, plain=PLAIN_2GPU, committed=f"{DATA}/plain/h200-2gpu-plain.jsonl"),
    Job("sweep2-b", 2, 0, plans=P2, group="b", committed=f"{DATA}/h200-2gpu-sweep-b.jsonl"),
    # the full one-GPU profile is profiles/h200-measured.yaml; this quick one runs only when asked for by name
    Job("profile-1gpu", 1, 120, [PY, "-m", "launcher.gputools.profile", "--quick", "--name", "h200-measured-1gpu-quick",
                                 "-o", "{dir}/h200-measured-1gpu-quick.yaml"],
        committed=f"{DATA}/profiles/h200-measured-1gpu-quick.yaml", exclusive=True),
]
PARTS = {"check": ["sdpa-gqa"], "profile": ["profile-2gpu", "profile-1gpu"],
         "sweep1": ["sweep1-a", "sweep1-b", "sweep1-c"], "diagnose": ["anatomy-1gpu", "verify-1gpu"],
         "sweep2": ["sweep2-a", "sweep2-b"], "grid": ["grid-1gpu", "grid-2gpu"], "loss": ["loss-bf16", "loss-fp8"],
         "plain": ["plain-1gpu", "plain-2gpu"], "all": [j.name for j in JOBS if j.name != "profile-1gpu"]}
MIN_START_S = 45.0  # do not start a job with less time than this left
MAX_CRASHES = 3


class Terminated(Exception):
    """SIGTERM reached the scheduler (the outer timeout of run_campaign.sh)."""


def _terminate(signum, frame) -> None:
    raise Terminated()


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (torchrun starts its workers in sessions of their own)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def kill_tree(proc: subprocess.Popen) -> None:
    for p in reversed(descendants(proc.pid)):
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


class Campaign:
    def __init__(self, jobs: list[Job], *, work: Path, out: Path, budget_s: float, lanes: int, smoke: bool,
                 min_start_s: float = MIN_START_S) -> None:
        self.jobs, self.work, self.out, self.smoke, self.min_start_s = jobs, work, out, smoke, min_start_s
        self.t0, self.budget_s, self.lanes = time.monotonic(), budget_s, lanes
        self.free = list(range(lanes))
        self.running: dict[str, tuple[Job, subprocess.Popen, list[int], float, float]] = {}
        self.crashes: dict[str, int] = {}

    def left_s(self) -> float:
        return self.budget_s - (time.monotonic() - self.t0)

    def jdir(self, job: Job) -> Path:
        return self.work / job.name

    def status(self, job: Job) -> dict:
        p = self.jdir(job) / "status.json"
        return json.loads(p.read_text()) if p.is_file() else {"state": "pending"}

    def set_status(self, job: Job, **kw) -> None:
        st = {**self.status(job), **kw, "job": job.name}
        (self.jdir(job) / "status.json").write_text(json.dumps(st, indent=1) + "\n")

    # ---- commands ---------------------------------------------------------------------------------
    def entries(self, job: Job) -> list[dict]:
        """The plan entries a bench or plain job runs (the bench group, or the named plain entries)."""
        files = {job.plans} if job.bench else {f for f, _ in job.plain}
        out = []
        for f in sorted(files):
            names = {n for ff, n in job.plain if ff == f}
            out += [e for e in yaml.safe_load((ROOT / f).read_text())
                    if (job.bench and str(e.get("group", "-")) == job.group) or e["name"] in names]
        return out

    def refresh_estimate(self, job: Job) -> None:
        """A bench job's estimate: the cost model's for the plans it still has to run (budget.py)."""
        if job.bench and not self.smoke:
            done = {ln["name"] for ln in report.read_jsonl(self.jdir(job) / "bench.jsonl")}
            job.est_s = budget.group_estimate_s([e for e in self.entries(job) if e["name"] not in done],
                                                job.cluster, job.steps)

    def seed_committed(self) -> None:
        """Count committed results (``Job.committed``) as measured: a bench job's committed plans are not run
        again, other jobs with a committed result are done."""
        for job in self.jobs:
            path = ROOT / job.committed if job.committed else None
            if path is None or not path.is_file() or self.status(job).get("state") in ("done", "failed"):
                continue
            d = self.jdir(job)
            d.mkdir(parents=True, exist_ok=True)
            if not job.bench:
                self.set_status(job, state="done", note=f"committed: {job.committed}")
                continue
            names = {e["name"] for e in self.entries(job)}
            have = {ln["name"] for ln in report.read_jsonl(d / "bench.jsonl")}
            new = [ln for ln in report.read_jsonl(path) if ln["name"] in names - have]
            with open(d / "bench.jsonl", "a") as f:
                f.writelines(json.dumps(ln) + "\n" for ln in new)
            missing = names - have - {ln["name"] for ln in new}
            self.set_status(job, state="pending" if missing else "done",
                            note=f"{len(names) - len(missing)} of {len(names)} plans committed in {job.committed}")

    def prepare(self, job: Job) -> None:
        d = self.jdir(job)
        d.mkdir(parents=True, exist_ok=True)
        if job.bench or job.plain:
            entries = self.entries(job)
            if self.smoke:
                entries = smoke_entries(entries)
            (d / "plans.yaml").write_text(yaml.safe_dump(entries, sort_keys=False, width=200))
        self.refresh_estimate(job)

    def command(self, job: Job) -> list[str]:
        d = self.jdir(job)
        if job.bench:
            steps, warmup = (2, 1) if self.smoke else (job.steps, job.warmup)
            bench = ["-m", "launcher.runtime.bench", "--plans", str(d / "plans.yaml"), "--out", str(d),
                     "--steps", str(steps), "--warmup", str(warmup), "--cluster", job.cluster,
                     "--collective-timeout-s", "180"]
            return (TORCHRUN + bench) if job.gpus == 2 else [PY] + bench
        if job.plain:
            runner = TORCHRUN if job.gpus == 2 else [PY]
            steps = ["--steps", "2", "--warmup", "1"] if self.smoke else ["--steps", "6", "--warmup", "2"]
            lines = [" ".join(runner + ["benchmarks/plain_fsdp2.py", "--plans", str(d / "plans.yaml"), "--name", n,
                                        "--out", str(d / "plain.jsonl")] + steps) for _, n in job.plain]
            return ["bash", "-c", " ; ".join(lines)]
        cmd = [c.replace("{dir}", str(d)) for c in job.cmd]
        if self.smoke and "launcher.gputools.profile" in cmd:
            return [PY, "-m", "launcher.gputools.profile", "--help"]  # needs CUDA: only check that it imports
        if self.smoke and "benchmarks/gpu/step_anatomy.py" in cmd:
            return cmd[:2] + ["--help"]  # full-size models: only check that it imports
        if self.smoke and "benchmarks/fp8_loss_curves.py" in cmd:
            cmd.append("--smoke")
        return cmd

    def start(self, job: Job, gpus: list[int]) -> None:
        self.prepare(job)
        env = dict(os.environ, PYTHONUNBUFFERED="1", CUDA_VISIBLE_DEVICES=",".join(map(str, gpus)),
                   PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
        if self.smoke:
            env.pop("CUDA_VISIBLE_DEVICES")
        log = open(self.jdir(job) / "log.txt", "a")
        log.write(f"\n=== {time.strftime('%H:%M:%S')} start on GPU {gpus}: {' '.join(self.command(job))}\n")
        log.flush()
        proc = subprocess.Popen(self.command(job), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + max(1.0, self.left_s() - 5.0)
        self.running[job.name] = (job, proc, gpus, time.monotonic(), deadline)
        self.set_status(job, state="running", gpus=gpus)
        print(f"[{self.elapsed():6.0f}s] start {job.name} on GPU {gpus} (est {job.est_s:.0f} s, "
              f"{self.left_s():.0f} s left)", flush=True)

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    # ---- completion -------------------------------------------------------------------------------
    def finish(self, name: str, killed: bool) -> None:
        job, proc, gpus, started, _ = self.running.pop(name)
        self.free = sorted(self.free + gpus)
        wall = time.monotonic() - started
        rc = proc.returncode
        if job.bench:
            state, again = self.after_bench(job, rc, killed)
        else:
            state, again = ("cut" if killed else "done" if rc == 0 else "failed"), False
        prev = self.status(job)
        self.set_status(job, state=state, rc=rc, wall_s=round(prev.get("wall_s", 0.0) + wall, 1))
        print(f"[{self.elapsed():6.0f}s] {job.name}: {state} (rc {rc}, {wall:.0f} s)", flush=True)
        print(report.job_table(job.name, self.jdir(job)), flush=True)
        if again:
            self.pending.insert(0, job)
        self.pack()

    def after_bench(self, job: Job, rc: int, killed: bool) -> tuple[str, bool]:
        """(state, rerun now?) of a bench job; records a crash line for the plan that was running."""
        d = self.jdir(job)
        entries = yaml.safe_load((d / "plans.yaml").read_text())
        lines = report.read_jsonl(d / "bench.jsonl")
        done = {ln["name"] for ln in lines}
        missing = [e for e in entries if e["name"] not in done]
        if not missing:
            return "done", False
        if killed:
            return "cut", False
        oom_stop = rc == 1 and lines and lines[-1].get("oom")
        if not oom_stop:  # a crash: record it against the plan that was running, then go on with the next
            e = missing[0]
            tail = (d / "log.txt").read_text(errors="replace").splitlines()[-40:]
            oom = any("OutOfMemoryError" in t or "out of memory" in t for t in tail)
            crash = {"name": e["name"], "model": str(e["model"]), "plan": e["plan"], "cluster": job.cluster,
                     "oom": oom, "crash": True, "error": f"exit {rc}: " + " | ".join(t.strip() for t in tail[-3:])}
            with open(d / "bench.jsonl", "a") as f:
                f.write(json.dumps(crash) + "\n")
            self.crashes[job.name] = self.crashes.get(job.name, 0) + 1
            if self.crashes[job.name] > MAX_CRASHES:
                return "failed", False
        return "partial", len(missing) > (0 if oom_stop else 1)

    def pack(self) -> None:
        """WORK → $OUT/results.tgz (no token files), and $OUT/summary.md."""
        self.out.mkdir(parents=True, exist_ok=True)
        tmp = self.out / "results.tgz.tmp"
        with tarfile.open(tmp, "w:gz") as tar:
            tar.add(self.work, arcname="results",
                    filter=lambda ti: None if ti.name.endswith(".bin") or "/checkpoints" in ti.name else ti)
        tmp.replace(self.out / "results.tgz")
        (self.out / "summary.md").write_text(report.summary(self.work, [j.name for j in JOBS]))

    # ---- the loop ---------------------------------------------------------------------------------
    def run(self) -> None:
        self.pending = [j for j in self.jobs if self.status(j).get("state") not in ("done", "failed")]
        for j in self.jobs:
            if j not in self.pending:
                print(f"{j.name}: already {self.status(j)['state']} (from --resume-from)")
        for j in self.pending:
            self.refresh_estimate(j)
        signal.signal(signal.SIGTERM, _terminate)
        try:
            self.loop()
        except BaseException as e:  # SIGTERM from the outer timeout, or a bug here: leave no job running
            print(f"[{self.elapsed():6.0f}s] {type(e).__name__}: killing the running jobs", flush=True)
            for name, (job, proc, *_rest) in list(self.running.items()):
                kill_tree(proc)
                self.finish(name, killed=True)
            raise
        finally:
            self.pack()

    def loop(self) -> None:
        while self.pending or self.running:
            for name, (job, proc, *_rest, deadline) in list(self.running.items()):
                if proc.poll() is not None:
                    self.finish(name, killed=False)
                elif time.monotonic() > deadline:
                    kill_tree(proc)
                    self.finish(name, killed=True)
            self.schedule()
            time.sleep(0.5)

    def schedule(self) -> None:
        """Start what may start now, in queue order (see the module docstring for the rules)."""
        for job in list(self.pending):
            running = [r[0] for r in self.running.values()]
            if job.gpus > self.lanes:
                self.pending.remove(job)
                self.set_skip(job, f"needs {job.gpus} GPUs, {self.lanes} here")
                continue
            if self.left_s() < self.min_start_s or (not job.bench and self.left_s() < job.est_s * 1.2):
                if not self.running:
                    self.pending.remove(job)
                    self.set_skip(job, f"not started: {self.left_s():.0f} s left (est {job.est_s:.0f} s)")
                continue
            if any(j.exclusive for j in running) and not job.light:
                continue  # a profile is measuring: only light jobs beside it
            if job.exclusive and any(not j.light for j in running):
                return  # a profile waits for the machine to be quiet
            if len(self.free) >= job.gpus:
                self.pending.remove(job)
                self.start(job, self.free[:job.gpus])
                self.free = self.free[job.gpus:]
                continue
            # the head of the queue waits for GPUs; a later one-GPU job may use an idle GPU meanwhile if it
            # should end before the first running job does
            ends = [started + j.est_s for j, _, _, started, _ in self.running.values()]
            slack = (min(ends) - time.monotonic()) if ends else 0.0
            later = [j for j in self.pending[self.pending.index(job) + 1:]
                     if j.gpus == 1 and j.est_s <= slack and not j.exclusive]
            if self.free and later:
                self.pending.remove(later[0])
                self.start(later[0], self.free[:1])
                self.free = self.free[1:]
            return

    def set_skip(self, job: Job, why: str) -> None:
        self.jdir(job).mkdir(parents=True, exist_ok=True)
        if self.status(job).get("state") in (None, "pending"):
            self.set_status(job, state="pending", note=why)
        else:
            self.set_status(job, note=why)
        print(f"[{self.elapsed():6.0f}s] {job.name}: {why}", flush=True)


def select(parts: list[str], skip: list[str]) -> list[Job]:
    names = set()
    for p in parts:
        if p in PARTS:
            names.update(PARTS[p])
        elif p in {j.name for j in JOBS}:
            names.add(p)
        else:
            raise SystemExit(f"error: unknown part {p!r}; use one of {', '.join(list(PARTS) + [j.name for j in JOBS])}")
    return [j for j in JOBS if j.name in names and j.name not in skip]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("parts", nargs="+")
    ap.add_argument("--budget-s", type=float, default=560.0,
                    help="wall seconds for the whole call (from $CAMPAIGN_START_EPOCH when run_campaign.sh set it)")
    ap.add_argument("--work", help="work directory, emptied first (default /tmp/lmc; a new temporary one with "
                    "--cpu-smoke)")
    ap.add_argument("--out", help="where results.tgz and summary.md go (default $OUT, else .out/campaign; with "
                    "--cpu-smoke beside the work directory)")
    ap.add_argument("--resume-from", help="collected results of earlier calls (default .campaign/results)")
    ap.add_argument("--skip", default="", help="comma-separated job names to leave out")
    ap.add_argument("--lanes", type=int, help="GPUs to use (default: all visible, at most 2; 4 on an x4 machine)")
    ap.add_argument("--remeasure", action="store_true", help="run jobs whose results are committed, too")
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny model, CPU/gloo, 2 steps: catches typos")
    args = ap.parse_args(argv)
    jobs = select(args.parts, [s for s in args.skip.split(",") if s])
    if args.work:
        work = Path(args.work)
    else:
        work = Path(tempfile.mkdtemp(prefix="lmc-smoke-")) if args.cpu_smoke else Path("/tmp/lmc")
    default_out = Path(str(work) + "-out") if args.cpu_smoke else ROOT / ".out" / "campaign"
    out = Path(args.out or os.environ.get("OUT") or default_out)
    if work.exists():
        shutil.rmtree(work)
    resume = Path(args.resume_from) if args.resume_from else None if args.cpu_smoke else ROOT / ".campaign" / "results"
    if resume is not None and resume.is_dir():
        shutil.copytree(resume, work)
        for st in work.glob("*/status.json"):  # a job cut or running last time is pending now
            d = json.loads(st.read_text())
            if d.get("state") not in ("done", "failed"):
                st.write_text(json.dumps({**d, "state": "pending"}) + "\n")
        print(f"resuming from {resume}")
    work.mkdir(parents=True, exist_ok=True)
    if args.lanes is not None:
        lanes = args.lanes
    elif args.cpu_smoke:
        lanes = 2
    else:
        import torch
        lanes = min(2, torch.cuda.device_count())
    if lanes == 0:
        print("error: no GPU visible; use --cpu-smoke on a machine without one", file=sys.stderr)
        return 2
    spent_s = time.time() - float(os.environ.get("CAMPAIGN_START_EPOCH", time.time()))  # run_campaign.sh's set-up
    print(f"campaign: {', '.join(j.name for j in jobs)} on {lanes} lane(s), {args.budget_s - spent_s:.0f} s left, "
          f"work {work}, out {out}", flush=True)
    c = Campaign(jobs, work=work, out=out, budget_s=args.budget_s - spent_s, lanes=lanes, smoke=args.cpu_smoke)
    if not (args.cpu_smoke or args.remeasure):
        c.seed_committed()
    try:
        c.run()
    except Terminated:
        return 124
    finally:
        print(report.summary(work, [j.name for j in JOBS], full=False), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
