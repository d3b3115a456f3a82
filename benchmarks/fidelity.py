"""Fidelity scoreboard: the cost model's predictions against committed measured runs, replayed on CPU.

    python benchmarks/fidelity.py [RUNS...] [--profile PROFILE] [--published FILE] [--json]

RUNS default to benchmarks/data/*.jsonl (launcher.runtime.bench lines: the model, the plan, the cluster it ran on,
the measured median step time and peak allocated memory over ranks, or ``"oom": true``); run directories and
summary.json files work too (costmodel.runs). Predictions are recomputed with the current cost model and
profile, so a change to either shows up here. Targets: median |error| ≤ 5 % and max ≤ 15 % for step
time and for peak allocated memory, every out-of-memory run predicted not to fit.

A second table replays published numbers (benchmarks/data/published.yaml) — reported, never tuned to.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from costmodel import GiB
from costmodel import load_cluster, load_model, load_profile, parse_plan
from costmodel.hardware import HardwareProfile, profile_for
from costmodel.memory import ENGINES
from costmodel.plan import LEGACY_KERNELS
from costmodel.prediction import predict
from costmodel.runs import MeasuredRun, read_runs

DATA = Path(__file__).resolve().parent / "data"
PUBLISHED = DATA / "published.yaml"
TARGET_MEDIAN, TARGET_MAX = 0.05, 0.15


NOT_RUNS = {"runtime-vs-torchtitan.jsonl"}
"""JSON Lines under data/ that are not launcher.runtime.bench runs (one line per plan and engine)."""


def measured_files(data: Path = DATA) -> list[Path]:
    """The committed measured runs: benchmarks/data/*.jsonl (subfolders hold other kinds of data)."""
    return sorted(p for p in data.glob("*.jsonl") if p.name not in NOT_RUNS)


@dataclass
class Row:
    """One measured run beside its prediction (times in s, memory in bytes)."""

    name: str
    source: str
    oom_measured: bool
    oom_predicted: bool
    t_meas: float
    t_pred: float
    m_meas: float
    m_pred: float

    @property
    def t_err(self) -> float:
        return self.t_pred / self.t_meas - 1 if self.t_meas else math.nan

    @property
    def m_err(self) -> float:
        return self.m_pred / self.m_meas - 1 if self.m_meas else math.nan


def _profile(run_cluster, profile: str | Path | HardwareProfile | None) -> HardwareProfile:
    return load_profile(profile).with_cluster(run_cluster) if profile else profile_for(run_cluster)


def score(runs: list[MeasuredRun], profile: str | Path | HardwareProfile | None = None) -> list[Row]:
    """Every run beside costmodel.predict under ``profile`` (default: the cluster's, measured if present)."""
    rows = []
    for r in runs:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pred = predict(r.model, r.cluster, r.plan, profile=_profile(r.cluster, profile))
        rows.append(Row(r.name, Path(r.source.split(":")[0]).stem, r.oom, not pred.feasible,
                        r.step_time_s or math.nan, pred.step_time_s, r.peak_memory_bytes or math.nan,
                        pred.peak_memory_bytes))
    return rows


def summary(rows: list[Row]) -> dict:
    ok = [r for r in rows if not r.oom_measured]
    te = [abs(r.t_err) for r in ok if math.isfinite(r.t_err)]
    me = [abs(r.m_err) for r in ok if math.isfinite(r.m_err)]
    ooms = [r for r in rows if r.oom_measured]
    return {"runs": len(ok), "oom_runs": len(ooms), "oom_called": sum(r.oom_predicted for r in ooms),
            "false_oom": sum(r.oom_predicted for r in ok),
            "time_median_abs_err": statistics.median(te) if te else math.nan,
            "time_max_abs_err": max(te, default=math.nan),
            "mem_median_abs_err": statistics.median(me) if me else math.nan,
            "mem_max_abs_err": max(me, default=math.nan)}


def table(paths: list[str | Path] | None = None, profile: str | Path | None = None) -> tuple[list[Row], dict]:
    """(rows, summary) of the scoreboard for ``paths`` (default: the committed measured runs)."""
    runs, _ = read_runs(list(paths) if paths is not None else measured_files())
    rows = score(runs, profile)
    return rows, summary(rows)


def misses(s: dict) -> list[str]:
    """The issue's targets this summary misses (empty: all met)."""
    out = []
    for what in ("time", "mem"):
        med, mx = s[f"{what}_median_abs_err"], s[f"{what}_max_abs_err"]
        if not med <= TARGET_MEDIAN:
            out.append(f"{what} median |error| {med:.1%} > {TARGET_MEDIAN:.0%}")
        if not mx <= TARGET_MAX:
            out.append(f"{what} max |error| {mx:.1%} > {TARGET_MAX:.0%}")
    if s["oom_called"] < s["oom_runs"]:
        out.append(f"{s['oom_runs'] - s['oom_called']} of {s['oom_runs']} out-of-memory runs not predicted")
    return out


@dataclass
class PublishedRow:
    """A published measurement beside the prediction for the same setup."""

    name: str
    reference: str
    split: str
    engine: str
    tokens_meas: float
    tokens_pred: float
    mem_meas_gib: float | None
    mem_kind: str
    mem_pred_gib: float
    notes: str
    unsupported: list[str]

    @property
    def tokens_err(self) -> float:
        """Relative error of the predicted step time (measured tokens/s over predicted, less 1)."""
        return self.tokens_meas / self.tokens_pred - 1

    @property
    def mem_err(self) -> float | None:
        return self.mem_pred_gib / self.mem_meas_gib - 1 if self.mem_meas_gib else None


# Engines that keep a tied embedding's copy on the last pipeline stage (its gradient all-reduced with the first
# stage's): the cost of two vocabulary matrices, as an untied model has. loadmaster's trainer refuses the case.
_COPIES_TIED_EMBEDDINGS = {"megatron", "nemo", "deepspeed"}


def replay(entry: dict, path: str | Path = PUBLISHED, profile: str | Path | None = None):
    """(prediction, profile) of one published row under its engine's conventions (costmodel.memory.ENGINES),
    on its GPU variant's profile (profiles/variants) when the row names one."""
    model = load_model(entry["model"])
    # other engines' own kernels are priced as loadmaster's first ones (the rows were added with those; TorchTitan's
    # complex RoPE, for one, moves more bytes than the transposed rotate-half), unless a row names its kernels
    plan = parse_plan({**LEGACY_KERNELS, **entry["plan"]}, f"{path}:{entry['name']}")
    engine = entry.get("engine", "loadmaster")
    if model.tie_word_embeddings and plan.num_stages > 1 and engine in _COPIES_TIED_EMBEDDINGS:
        model = dataclasses.replace(model, tie_word_embeddings=False)
    cluster = load_cluster(entry["cluster"])
    if profile is None and entry.get("gpu_variant"):
        profile = entry["gpu_variant"]
    prof = _profile(cluster, profile)
    return predict(model, cluster, plan, profile=prof, opts=ENGINES.get(engine, ENGINES["loadmaster"])), prof


def published(path: str | Path = PUBLISHED, profile: str | Path | None = None) -> list[PublishedRow]:
    """Predictions for every entry of the published-number file. Memory is compared as the source reports it:
    ``allocated`` (max_memory_allocated) or ``reserved`` (max_memory_reserved: allocated × (1 + the profile's
    fragmentation))."""
    rows = []
    for e in yaml.safe_load(Path(path).read_text()):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pred, prof = replay(e, path, profile)
        m = e["measured"]
        kind = m.get("memory_kind", "allocated")
        mem = pred.peak_memory_bytes * ((1 + prof.fragmentation) if kind == "reserved" else 1) / GiB
        rows.append(PublishedRow(e["name"], e["reference"], e.get("split", "fit"), e.get("engine", "other"),
                                 float(m["tokens_per_s_per_gpu"]), pred.tokens_per_s_per_gpu, m.get("memory_gib"),
                                 kind, mem, e.get("notes", ""), list(e.get("unsupported", []))))
    return rows


def published_summary(rows: list[PublishedRow], split: str) -> dict:
    """Step-time error of the scored rows of one split (rows with a parallelism the schema lacks are left out)."""
    errs = [abs(r.tokens_err) for r in rows if r.split == split and not r.unsupported]
    return {"rows": len(errs), "median": statistics.median(errs) if errs else math.nan,
            "max": max(errs, default=math.nan)}


def _print_measured(rows: list[Row], s: dict) -> None:
    print("| run | set | step meas (s) | step pred (s) | err | peak meas (GiB) | peak pred (GiB) | err |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        if r.oom_measured:
            print(f"| {r.name} | {r.source} | OOM | {r.t_pred:.3f} | | OOM | {r.m_pred / GiB:.1f} | "
                  f"{'called' if r.oom_predicted else 'MISSED'} |")
            continue
        flag = " (pred OOM)" if r.oom_predicted else ""
        print(f"| {r.name} | {r.source} | {r.t_meas:.3f} | {r.t_pred:.3f} | {r.t_err:+.1%} | "
              f"{r.m_meas / GiB:.2f} | {r.m_pred / GiB:.2f} | {r.m_err:+.1%}{flag} |")
    print(f"\n{s['runs']} runs + {s['oom_runs']} OOM runs ({s['oom_called']} called, {s['false_oom']} false OOM): "
          f"step time median |err| {s['time_median_abs_err']:.1%}, max {s['time_max_abs_err']:.1%}; "
          f"peak memory median |err| {s['mem_median_abs_err']:.1%}, max {s['mem_max_abs_err']:.1%}")
    missed = misses(s)
    print("targets met" if not missed else "targets missed: " + "; ".join(missed))
    fitted = anatomy_names()
    held = [r for r in rows if r.name not in fitted and not r.oom_measured]
    if fitted and held:
        h = summary(held)
        print(f"held out of the anatomy fit (benchmarks/anatomy_fit.py fitted profile constants to the kernel times of "
              f"{len(fitted)} of these plans): {h['runs']} runs, step time median |err| "
              f"{h['time_median_abs_err']:.1%}, max {h['time_max_abs_err']:.1%}")


def anatomy_names() -> set[str]:
    """Plans whose kernel times the committed profile constants were fitted to (benchmarks/anatomy_fit.py)."""
    path = DATA / "h200-1gpu-anatomy.json"
    return {r["name"] for r in json.loads(path.read_text())} if path.is_file() else set()


def _print_published(rows: list[PublishedRow]) -> None:
    print("\n| published | split | engine | tokens/s/GPU meas | pred | step-time err | memory meas (GiB) | pred (GiB) "
          "| err |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        mem = (f"{r.mem_meas_gib:.1f} ({r.mem_kind}) | {r.mem_pred_gib:.1f} | {r.mem_err:+.1%}" if r.mem_meas_gib
               else f"- | {r.mem_pred_gib:.1f} | ")
        split = r.split + (f" (not scored: {', '.join(r.unsupported)})" if r.unsupported else "")
        print(f"| {r.name} | {split} | {r.engine} | {r.tokens_meas:,.0f} | {r.tokens_pred:,.0f} | "
              f"{r.tokens_err:+.1%} | {mem} |")
    print()
    for split in ("fit", "holdout"):
        s = published_summary(rows, split)
        label = "hold-out" if split == "holdout" else "fit"
        print(f"published {label}: {s['rows']} rows, step time median |err| {s['median']:.1%}, max {s['max']:.1%}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="*", help="bench .jsonl files, run directories or summary.json files "
                    "(default: benchmarks/data/*.jsonl)")
    ap.add_argument("--profile", help="profile to predict with (default: the cluster's, measured if present)")
    ap.add_argument("--published", default=str(PUBLISHED), help="published-number file ('' to skip)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    paths = args.runs or measured_files()
    rows, s = table(paths, args.profile) if paths else ([], None)
    pub = published(args.published, args.profile) if args.published else []
    if args.json:
        print(json.dumps({"summary": s, "rows": [asdict(r) for r in rows],
                          "published": [dict(asdict(r), tokens_err=r.tokens_err, mem_err=r.mem_err) for r in pub],
                          "published_summary": {k: published_summary(pub, k) for k in ("fit", "holdout")}},
                         indent=1))
        return 0
    if s is None:
        print(f"no measured runs under {DATA} yet (launcher.runtime.bench lines, *.jsonl)", file=sys.stderr)
    else:
        _print_measured(rows, s)
    if pub:
        _print_published(pub)
    return 0


if __name__ == "__main__":
    sys.exit(main())
