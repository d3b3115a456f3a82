"""The run directory: what a launch writes there so that the run is reproducible and resumable from it alone,
and how a finished run reads back (measured vs predicted).

RUN/plan.yaml, model.yaml (the resolved ModelSpec), cluster.yaml (when known), launch.json (settings, command,
environment), prediction.json; the trainer adds metrics.jsonl, summary.json, checkpoints/ and, when preempted,
``preempted``; torchrun tees each rank's output into logs/node<R>/<run>_<id>/attempt_<k>/<local rank>/.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from costmodel import GiB, ClusterSpec, ModelSpec, Plan, SpecError, load_cluster, load_model, load_plan
from costmodel.runs import run_summary
from costmodel.specs import as_dict

if TYPE_CHECKING:
    from launcher.launch.request import Launch


def read_run_dir(run_dir: Path) -> tuple[Plan, ModelSpec, ClusterSpec | None, dict]:
    """(plan, model, cluster or None, launch settings) of an existing run directory."""
    meta = run_dir / "launch.json"
    if not meta.is_file():
        raise SpecError(run_dir, "launch.json", "no such file: not a run directory",
                        "launch a plan YAML (with --out DIR) to create one")
    settings = json.loads(meta.read_text())["settings"]
    cluster = load_cluster(run_dir / "cluster.yaml") if (run_dir / "cluster.yaml").is_file() else None
    return load_plan(run_dir / "plan.yaml"), load_model(run_dir / "model.yaml"), cluster, settings


def write_atomic(path: Path, text: str) -> None:
    """Atomic write: other nodes sharing the run directory never read half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_run_dir(launch: Launch, *, command: list[str], env: dict[str, str], prediction) -> None:
    """Create or continue the run directory; refuse one that holds a different plan, model or cluster."""
    rd = launch.run_dir
    (rd / "logs").mkdir(parents=True, exist_ok=True)
    if launch.gpu:
        (rd / "comm_trace").mkdir(exist_ok=True)
    specs = {"plan.yaml": launch.plan.to_yaml(),
             "model.yaml": yaml.safe_dump(as_dict(launch.model), sort_keys=False)}
    if launch.cluster is not None:
        specs["cluster.yaml"] = yaml.safe_dump(as_dict(launch.cluster), sort_keys=False)
    for name, text in specs.items():
        path = rd / name
        if path.is_file() and yaml.safe_load(path.read_text()) != yaml.safe_load(text):
            raise SpecError(path, "<file>", "the run directory holds another run",
                            f"resume it with `loadmaster launch {rd}` or launch into a new --out")
        if not path.is_file() or not launch.from_run_dir:
            write_atomic(path, text)
    if launch.node_rank == 0:
        meta = {"settings": launch.settings(), "command": command, "env": env,
                "launched_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        write_atomic(rd / "launch.json", json.dumps(meta, indent=2) + "\n")
        if prediction is not None:
            pred = prediction.to_dict()
            pred.pop("stages", None)
            write_atomic(rd / "prediction.json", json.dumps(pred, indent=2, default=float) + "\n")


def last_checkpoint(run_dir: Path) -> tuple[int, Path] | None:
    """(optimizer steps, path) of the newest complete checkpoint, None without one; torn ones are passed over
    quietly here (the trainer warns about them when it resumes)."""
    from launcher.runtime.checkpoint import MARKER, is_complete
    ckpts = run_dir / "checkpoints"
    for path in sorted(ckpts.glob("step-*"), reverse=True) if ckpts.is_dir() else []:
        if path.is_dir() and is_complete(path)[0]:
            return int(json.loads((path / MARKER).read_text())["step"]), path
    return None


def steps_done(run_dir: Path) -> int:
    """Optimizer steps in the newest complete checkpoint (0 without one)."""
    found = last_checkpoint(run_dir)
    return found[0] if found else 0


def preempted_since(run_dir: Path, t0: float) -> bool:
    marker = run_dir / "preempted"
    return marker.is_file() and marker.stat().st_mtime >= t0 - 1


def summary_lines(run_dir: Path) -> list[str]:
    """Measured vs predicted step time, memory, throughput and MFU from the run directory's summary.json."""
    s = run_summary(run_dir)
    if s is None:
        return [f"{run_dir}: no summary.json yet"]
    pred, err = s.get("predicted") or {}, s.get("error_pct") or {}
    loss = f"{s['final_loss']:.4f}" if s.get("final_loss") is not None else "-"
    lines = [f"{run_dir}: steps {s.get('start_step', 0)} → {s['steps_done']}, final loss {loss}"
             f"{', preempted' if s.get('preempted') else ''}",
             f"{'':14}{'measured':>14}{'predicted':>14}{'error':>9}"]
    fmts = {"step_time_s": lambda v: f"{v:.4f} s", "peak_memory_bytes": lambda v: f"{v / GiB:.2f} GiB",
            "tokens_per_s_per_gpu": lambda v: f"{v:,.0f}", "mfu": lambda v: f"{v:.1%}"}
    for key, label in (("step_time_s", "step time"), ("peak_memory_bytes", "peak memory"),
                       ("tokens_per_s_per_gpu", "tokens/s/GPU"), ("mfu", "MFU")):
        m, p = s.get(key), pred.get(key)
        if m is None and p is None:
            continue
        e = f"{err[key]:+.1f} %" if key in err else ""
        lines.append(f"{label:14}{fmts[key](m) if m is not None else '-':>14}"
                     f"{fmts[key](p) if p is not None else '-':>14}{e:>9}")
    if s.get("prediction_error"):
        lines.append(f"no prediction: {s['prediction_error']}")
    return lines
