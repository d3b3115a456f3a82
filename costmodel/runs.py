"""Measured runs read back for `loadmaster calibrate` and benchmarks/fidelity.py.

A run is whatever the trainer or the bench left on disk:
- a run directory (``loadmaster launch``): summary.json with the measured medians, and beside it plan.yaml,
  model.yaml and cluster.yaml when the launcher wrote them (else the names summary.json records);
- a summary.json (``python -m launcher.runtime.train --out``) or a metrics.jsonl whose summary.json lies beside it;
- a bench.jsonl (``python -m launcher.runtime.bench``): one measured plan per line, ``"oom": true`` for a plan that ran
  out of memory, ``"error"`` for one that could not run (skipped).
Each record's ``kernels`` (the kernel choices that ran, after the trainer's fallbacks) replace the plan's; records
without it predate the choices and are priced as the kernels the trainer then ran (costmodel.plan.LEGACY_KERNELS).
Every failure to read is a one-line SpecError naming the file and, for JSON Lines, the line.
"""
from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

from .errors import SpecError, short
from .plan import KERNEL_KEYS, LEGACY_KERNELS, Plan, parse_plan
from .specs import REPO_ROOT, ClusterSpec, ModelSpec, load_cluster, load_model, shipped


@dataclass
class MeasuredRun:
    """One plan as measured: medians over the timed steps, memory as the max over ranks (bytes)."""

    name: str
    """Run name (bench entry name, or the run directory's name)."""
    source: str
    """File it was read from (with the line for JSON Lines)."""
    model: ModelSpec
    cluster: ClusterSpec
    plan: Plan
    step_time_s: float | None
    """Median step time; None for an out-of-memory run."""
    peak_memory_bytes: float | None
    """Largest torch.cuda.max_memory_allocated over ranks and steps; None when not measured."""
    peak_reserved_bytes: float | None = None
    """Same for max_memory_reserved (allocator segments), when recorded."""
    oom: bool = False
    """The plan ran out of device memory."""


def read_runs(paths: list[str | Path], *, cluster: ClusterSpec | str | None = None) -> tuple[list[MeasuredRun], list[str]]:
    """Every measured run in ``paths`` and notes on what was skipped (lines that record an error).

    ``cluster`` overrides the cluster every record names (for runs whose cluster was detected, not given)."""
    override = load_cluster(cluster) if cluster is not None else None
    runs: list[MeasuredRun] = []
    skipped: list[str] = []
    for p in map(Path, paths):
        if p.is_dir():
            runs.append(_from_run_dir(p, override))
        elif not p.exists():
            raise SpecError(p, "<file>", "no such file or run directory",
                            "give run directories, summary.json, metrics.jsonl or bench .jsonl files")
        elif p.suffix == ".jsonl":
            lines = _jsonl(p)
            if lines and all("plan" not in d and "step" in d for _, d in lines):  # a metrics.jsonl
                if not (p.parent / "summary.json").is_file():
                    raise SpecError(p, "<file>", "holds per-step metrics but no summary.json lies beside it (the "
                                    "run did not finish?)", "give the run directory of a finished run")
                runs.append(_from_run_dir(p.parent, override))
                continue
            for i, d in lines:
                where = f"{p}:{i}"
                if d.get("superseded"):  # kept as data, but a later measurement of the same plan replaces it
                    skipped.append(f"{where} ({d.get('name', '?')}): superseded: {d['superseded'][:120]}")
                    continue
                if d.get("error") and not d.get("oom"):
                    skipped.append(f"{where} ({d.get('name', '?')}): not measured: {d['error'][:120]}")
                    continue
                runs.append(_record(d, where, p.parent, override))
        else:
            runs.append(_record(_json(p), str(p), p.parent, override))
    return runs, skipped


def _json(path: Path) -> dict:
    try:
        d = json.loads(path.read_text())
    except OSError as e:
        raise SpecError(path, "<file>", f"cannot be read ({e.strerror})", "check the path") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SpecError(path, "<file>", f"is not JSON ({getattr(e, 'msg', e)})",
                        "give a summary.json or a JSON Lines file") from None
    if not isinstance(d, dict):
        raise SpecError(path, "<file>", f"holds a {type(d).__name__}, not a run record", "give a summary.json")
    return d


def _jsonl(path: Path) -> list[tuple[int, dict]]:
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError(path, "<file>", f"cannot be read ({getattr(e, 'strerror', None) or e})",
                        "check the path") from None
    out = []
    for i, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
        except json.JSONDecodeError as e:
            raise SpecError(f"{path}:{i}", "<line>", f"is not JSON ({e.msg})", "one JSON object per line") from None
        if not isinstance(d, dict):
            raise SpecError(f"{path}:{i}", "<line>", "is not a JSON object", "one JSON object per line")
        out.append((i, d))
    return out


def run_summary(run_dir: str | Path) -> dict | None:
    """The summary.json a finished run directory holds (None while the run has not finished)."""
    path = Path(run_dir) / "summary.json"
    return _json(path) if path.is_file() else None


def _from_run_dir(d: Path, override: ClusterSpec | None) -> MeasuredRun:
    summary = d / "summary.json"
    rec = run_summary(d)
    if rec is None:
        raise SpecError(d, "summary.json", "missing: not a finished run directory",
                        "give the directory of a run that finished (it writes summary.json)")
    rec.setdefault("name", d.name)
    if (d / "plan.yaml").is_file():
        rec["plan"] = str(d / "plan.yaml")
    if (d / "model.yaml").is_file():
        rec["model"] = str(d / "model.yaml")
    if (d / "cluster.yaml").is_file():
        rec["cluster"] = str(d / "cluster.yaml")
    return _record(rec, str(summary), d, override)


def _record(d: dict, where: str, base: Path, override: ClusterSpec | None) -> MeasuredRun:
    for key in ("plan", "model"):
        if not d.get(key):
            raise SpecError(where, key, "missing from the run record", "record the run with launcher.runtime.bench or "
                            "launcher.runtime.train --out (both write the plan and the model)")
    plan = d["plan"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the plan ran already; its warnings (zero 1, ...) are no news here
        if isinstance(plan, dict):
            plan = parse_plan(plan, where)
        else:
            from .plan import load_plan
            plan = load_plan(plan)
        plan = _kernels_that_ran(plan, d.get("kernels"), where)
    model = _model(d["model"], where, base)
    cluster = override or _cluster(d, plan, where)
    oom = bool(d.get("oom"))
    t = d.get("step_time_s")
    if not oom and not (isinstance(t, (int, float)) and t > 0):
        raise SpecError(where, "step_time_s", f"is {short(t)}", "a measured run needs its median step time")
    mem, res = d.get("peak_memory_bytes"), d.get("peak_reserved_bytes")
    return MeasuredRun(name=str(d.get("name") or Path(where).stem), source=where, model=model, cluster=cluster,
                       plan=plan, step_time_s=None if oom else float(t),
                       peak_memory_bytes=float(mem) if mem else None, peak_reserved_bytes=float(res) if res else None,
                       oom=oom)


def _kernels_that_ran(plan: Plan, kernels, where: str) -> Plan:
    """The plan with the kernels the run recorded as run (``kernels``: the trainer's choices after its fallbacks);
    a record without them predates the choices and ran LEGACY_KERNELS, so it is priced as that."""
    if kernels is None:
        kernels = LEGACY_KERNELS
    if not isinstance(kernels, dict) or not set(kernels) <= set(KERNEL_KEYS):
        raise SpecError(where, "kernels", f"is {kernels!r}", f"a mapping of {', '.join(KERNEL_KEYS)} to choices")
    return parse_plan({**plan.to_dict(), **kernels}, where)


def _model(ref, where: str, base: Path) -> ModelSpec:
    """A model from a path (as given, beside the run file, or under the repository) or a recipe: its file
    stem or its ``name`` (summary.json records the name)."""
    if isinstance(ref, dict):
        from .errors import build_dataclass
        return build_dataclass(ModelSpec, ref, where, what="model")
    ref = str(ref)
    for cand in (Path(ref), base / ref, REPO_ROOT / ref):
        if cand.is_file():
            return load_model(cand)
    if ref in shipped("models"):
        return load_model(ref)
    for name in shipped("models"):
        spec = load_model(name)
        if spec.name == ref:
            return spec
    raise SpecError(where, "model", f"{short(ref)} is neither a model file nor a shipped model recipe",
                    "run calibrate where the model file is, or name a recipe in recipes/models")


def _cluster(d: dict, plan: Plan, where: str) -> ClusterSpec:
    """The cluster the record names; a detected one (``detected-NxGxGPU``, the trainer's when no --cluster was
    given; the older ``detected-GPU`` means one node of the run's world size) is rebuilt from its name."""
    ref = d.get("cluster")
    if not ref:
        raise SpecError(where, "cluster", "missing: the run recorded no GPU profile (a CPU run?)",
                        "pass --cluster with the cluster the run used")
    ref = str(ref)
    m = re.fullmatch(r"detected-(\d+)x(\d+)x(.+)", ref)
    if m:
        return ClusterSpec(nodes=int(m[1]), gpus_per_node=int(m[2]), gpu=m[3], name=ref)
    if ref.startswith("detected-"):
        world = int(d.get("world_size") or plan.world_size)
        if world > 8:
            raise SpecError(where, "cluster", f"{ref} with {world} GPUs: GPUs per node were not recorded",
                            "pass --cluster with the cluster the run used")
        return ClusterSpec(nodes=1, gpus_per_node=world, gpu=ref.removeprefix("detected-"), name=ref)
    return load_cluster(ref)
