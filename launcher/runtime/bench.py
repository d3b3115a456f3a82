"""Measure many plans in one process group: ``torchrun --nproc-per-node G -m launcher.runtime.bench --plans plans.yaml
--out DIR --steps N --warmup W``.

plans.yaml is a list (or ``{plans: [...]}``) of ``{name, model, plan: {...}}`` entries for this world size.
Each plan gets a fresh model and optimizer (meshes are reused per shape), runs N steps, and is torn down with
its memory freed; one JSON line per plan goes to DIR/bench.jsonl (measured medians over the steps after the
first W, the prediction and the error in %). Entries already in that file are skipped, so a rerun continues
a crashed sweep. A user error in one entry is recorded (``"error"``) and the sweep goes on. On one rank an
out-of-memory plan is recorded as ``"oom": true`` and the sweep goes on; with several ranks the others would
wait in a collective, so the line is written and the sweep stops (exit 1).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from costmodel import SpecError, load_model, parse_plan
from costmodel.errors import read_yaml
from launcher.runtime.config import TrainConfig
from launcher.runtime.faults import EXIT_COLLECTIVE_TIMEOUT, EXIT_USER_ERROR, is_timeout, timeout_message
from launcher.runtime.metrics import detect_cluster
from launcher.runtime.trainer import close_distributed, init_distributed, release_memory, run

_KEEP = ("step_time_s", "tokens_per_s_per_gpu", "mfu", "peak_memory_bytes", "peak_reserved_bytes", "final_loss",
         "losses", "steps_measured", "predicted", "error_pct", "prediction_error", "cluster", "world_size", "kernels")


def read_entries(path: str) -> list[dict]:
    """The plan entries of ``path``, each checked for name/model/plan (SpecError otherwise)."""
    p = Path(path)
    if not p.is_file():
        raise SpecError(p, "--plans", "no such file", "give a YAML list of {name, model, plan} entries")
    import yaml
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError:
        data = read_yaml(p)  # raises the one-line SpecError with the line number
    entries = data.get("plans") if isinstance(data, dict) else data
    if not isinstance(entries, list) or not entries:
        raise SpecError(p, "plans", "is not a non-empty list", "write a list of {name, model, plan} entries")
    for i, e in enumerate(entries):
        if not isinstance(e, dict) or not {"name", "model", "plan"} <= e.keys():
            raise SpecError(p, f"plans[{i}]", "needs keys name, model and plan", "add the missing keys")
    names = [e["name"] for e in entries]
    if len(set(names)) != len(names):
        raise SpecError(p, "name", "entry names repeat", "give every entry its own name")
    return entries


def measure(entry: dict, *, steps: int, warmup: int, cluster: str | None, timeout_s: float,
            source: str) -> dict:
    """Run one entry with the in-process trainer and return its JSON line."""
    line: dict = {"name": entry["name"], "model": str(entry["model"])}
    t0 = time.perf_counter()
    try:
        plan = parse_plan(entry["plan"], f"{source}:{entry['name']}")
        cfg = TrainConfig(plan=plan, model=load_model(entry["model"]), steps=steps, timing_warmup_steps=warmup,
                          cluster=cluster, collective_timeout_s=timeout_s, out=None, resume=False,
                          checkpoint_at_end=False, warmup_steps=0, seed=int(entry.get("seed", 0)))
        summary = run(cfg)
        line.update({k: summary.get(k) for k in _KEEP if k in summary}, plan=plan.to_dict(), oom=False)
    except (SpecError, ValueError) as e:
        line["error"] = " ".join(str(e).split())
    except torch.OutOfMemoryError as e:
        # the plan and the GPU it ran on, so the fidelity scoreboard can check the OOM was predicted
        line.update(oom=True, error=str(e).splitlines()[0][:300], plan=plan.to_dict())
        spec = detect_cluster(torch.device("cuda"), cluster) if torch.cuda.is_available() else None
        if spec is not None:
            line["cluster"] = spec.name
    line["wall_s"] = time.perf_counter() - t0
    if torch.cuda.is_available():
        line["device"] = torch.cuda.get_device_name()
    line["torch"] = torch.__version__
    return line


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="launcher.runtime.bench", description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("--plans", required=True, help="YAML list of {name, model, plan} entries")
    p.add_argument("--out", required=True, help="directory for bench.jsonl")
    p.add_argument("--steps", type=int, default=10, help="steps per plan")
    p.add_argument("--warmup", type=int, default=3, help="steps left out of the medians")
    p.add_argument("--cluster", help="cluster recipe for predictions (default: detected)")
    p.add_argument("--collective-timeout-s", type=float, default=600.0)
    p.add_argument("--rerun", action="store_true", help="measure entries already in bench.jsonl again")
    args = p.parse_args(argv)
    try:
        entries = read_entries(args.plans)
        if args.steps <= args.warmup:
            raise SpecError("<flags>", "steps", f"{args.steps} leaves no step after --warmup {args.warmup}",
                            "use more steps than warm-up steps")
    except SpecError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return EXIT_USER_ERROR
    init_distributed(args.collective_timeout_s)
    rank, world = dist.get_rank(), dist.get_world_size()
    out = Path(args.out)
    results = out / "bench.jsonl"
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    done = set()
    if results.is_file() and not args.rerun:
        done = {json.loads(x)["name"] for x in results.read_text().splitlines() if x.strip()}
    for entry in entries:
        if entry["name"] in done:
            continue
        try:
            line = measure(entry, steps=args.steps, warmup=args.warmup, cluster=args.cluster,
                           timeout_s=args.collective_timeout_s, source=args.plans)
        except Exception as e:
            if not is_timeout(e):
                raise
            print(f"error: {entry['name']}: {timeout_message(e, args.collective_timeout_s)}", file=sys.stderr)
            os._exit(EXIT_COLLECTIVE_TIMEOUT)
        release_memory()
        stop = bool(line.get("oom")) and world > 1
        if rank == 0 or stop:  # an OOM rank records its own line: it may not be rank 0
            with open(results, "a") as f:
                f.write(json.dumps(dict(line, rank=rank) if stop else line) + "\n")
            print(json.dumps({k: line.get(k) for k in ("name", "step_time_s", "tokens_per_s_per_gpu", "mfu",
                                                       "peak_memory_bytes", "error_pct", "oom", "error")}),
                  flush=True)
        if stop:
            print(f"error: rank {rank}: {entry['name']} ran out of memory; stopping the sweep (other ranks "
                  "cannot leave their collectives); rerun to continue with the next entry", file=sys.stderr)
            os._exit(1)
        dist.barrier()
    close_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
