"""Per-category calibration from a step anatomy: GPU kernel time by category (benchmarks/gpu/step_anatomy.py on
the GPU) against the cost model's time for the same category, and the profile constants that reconcile them.

    python benchmarks/anatomy_fit.py                       # table + fitted constants (profiles/h200-measured.yaml)
    python benchmarks/anatomy_fit.py --write               # ... and store them in that profile

Unlike `loadmaster calibrate`, which fits constants to step times (where a too-fast GEMM and a too-slow
elementwise pass cancel), each constant here is fitted to the kernel time of its own category, so it is
identified by construction:

- ``in_training_gemm``: bf16 GEMM kernel time of the plans without float8 over the model's bf16 GEMM time.
  Isolated back-to-back GEMMs (the profile) run at a power-limited clock; in a step they alternate with
  memory-bound kernels and run faster.
- ``in_training_fp8_gemm``: float8 GEMM time (the GEMM kernel time of float8 plans less their bf16 GEMMs, priced
  with the fitted bf16 ratio) over the model's. torchao runs its two backward GEMMs without fast accumulation.
- ``in_training_attention``: SDPA kernel time over the model's.
- ``elementwise_efficiency``: the share of HBM bandwidth at which the model's memory-bound work (norms, RoPE,
  activations, casts, FSDP2 copies, loss, optimizer) must run to take the measured non-GEMM, non-attention
  kernel time of the plans without host offload.
- ``cpu_adam_params_per_s``: offloaded parameters over the GPU's idle time beyond the plain plans' median
  (the GPU waits while the CPU steps them).
The 29 measured runs outside the anatomy check the result (benchmarks/fidelity.py).
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import statistics
import sys
import warnings
from pathlib import Path

import numpy as np
import sympy as sp
import yaml

from costmodel import load_cluster, load_model, parse_plan, predict
from costmodel.plan import LEGACY_KERNELS
from costmodel.hardware import HardwareProfile, load_profile
from costmodel.prediction import stage_inputs
from costmodel.stage import lambdify_modules  # smax/smin as numpy
from costmodel.symbols import K, M
from costmodel.timing import attention_s, block_gemm_s, block_linears, gemm_s, tokens

ROOT = Path(__file__).resolve().parents[1]

ANATOMY = ROOT / "benchmarks" / "data" / "h200-1gpu-anatomy.json"
PLANS = ROOT / "benchmarks" / "gpu" / "plans_1gpu.yaml"
PROFILE = ROOT / "profiles" / "h200-measured.yaml"
FP8_KERNEL = ("_qrtst_", "_qqtst_")  # cuBLASLt's float8 GEMM kernels on sm90 (nvjet ...q?tst...)


@functools.cache
def _part_functions() -> dict[str, tuple[list[str], object]]:
    """The bf16 GEMM, float8 GEMM and attention seconds of one micro-batch, lambdified once: (input names, fn)."""
    af, ab = attention_s()
    T = tokens()
    fp8_only, bf16_in_fp8 = 0, 0  # float8 blocks' Linears that torchao's size filter leaves in bf16 go to "gemm"
    for name, Kd, Nd, elig in block_linears():
        w = M.gated if name == "w3" else 1
        fp8_only += w * elig * gemm_s(2 * T * Kd * Nd, 1)
        bf16_in_fp8 += w * (1 - elig) * gemm_s(2 * T * Kd * Nd, 0)
    exprs = {"gemm": 3 * (K.l - K.f) * block_gemm_s(0) + 3 * K.f * bf16_in_fp8 + 3 * gemm_s(2 * T * M.h * M.V / K.t),
             "fp8_gemm": 3 * K.f * fp8_only, "attention": K.l * (af + ab)}
    out = {}
    for name, ex in exprs.items():
        syms = sorted(ex.free_symbols, key=str)
        fn = sp.lambdify(syms, ex, modules=lambdify_modules())
        out[name] = ([str(s) for s in syms], fn)
    return out


def model_parts(entry: dict, prof: HardwareProfile) -> dict[str, float]:
    """The model's bf16 GEMM, float8 GEMM and attention seconds of one step (one GPU)."""
    plan = parse_plan(entry["plan"], entry["name"])
    inputs = stage_inputs(load_model(entry["model"]), load_cluster("1xh200"), plan, prof)
    return {name: float(np.sum(fn(*[inputs[a] for a in args]))) * plan.num_microbatches
            for name, (args, fn) in _part_functions().items()}


def measured_parts(r: dict) -> dict[str, float]:
    c = r["by_category_s"]
    gemm = c.get("gemm", 0.0)  # bf16 and float8 GEMMs alike (cuBLASLt's nvjet kernels); casts are not in it
    fp8 = sum(k["s"] for k in r["top_kernels"] if any(t in k["name"] for t in FP8_KERNEL))
    host = sum(v for k, v in c.items() if k in ("memcpy HtoD", "memcpy DtoH"))
    return {"gemm": gemm - fp8, "fp8_gemm": fp8, "gemm_total": gemm, "attention": c.get("attention", 0.0),
            "other": r["busy_s"] - gemm - c.get("attention", 0.0) - host, "idle": r["step_s"] - r["busy_s"]}


def model_other(entry: dict, prof: HardwareProfile, parts: dict[str, float]) -> float:
    """The model's step time less its GEMMs and attention: memory-bound work (and any host-bound excess)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return predict(entry["model"], "1xh200", parse_plan(entry["plan"]), profile=prof).step_time_s \
            - parts["gemm"] - parts["fp8_gemm"] - parts["attention"]


IN_TRAINING = ("in_training_gemm", "in_training_fp8_gemm", "in_training_attention")
SOURCE = "measured: python benchmarks/anatomy_fit.py on the step anatomy benchmarks/data/h200-1gpu-anatomy.json"


def isolated_cpu_adam(prof: HardwareProfile) -> float:
    """The profiler's isolated CPU AdamW rate (kept in the profile's records when a fit replaced it)."""
    return float(prof.records.get("cpu_adam_isolated_params_per_s", prof.cpu_adam_params_per_s))


def as_ran(r: dict, entry: dict) -> dict:
    """The plans-file entry of anatomy record ``r`` with the kernels that ran: those it records, else the ones the
    trainer ran before kernel choices (costmodel.plan.LEGACY_KERNELS; the committed anatomy predates them)."""
    ran = r["kernel_choices"] if "kernel_choices" in r else LEGACY_KERNELS   # ("kernels" counts kernels there)
    return {**entry, "plan": {**entry["plan"], **ran}}


def fit(results: list[dict], entries: dict[str, dict], base: HardwareProfile) -> tuple[dict, list[str]]:
    """The fitted constants and the table lines (model seconds with the base profile's in_training = 1)."""
    neutral = base.with_constants("neutral for the fit", **{k: 1.0 for k in IN_TRAINING})
    rows = []
    for r in results:
        e = as_ran(r, entries[r["name"]])
        plan = e["plan"]
        rows.append((r["name"], e, measured_parts(r), model_parts(e, neutral), int(plan.get("fp8_layers", 0)) > 0,
                     plan.get("fp8_recipe", "tensorwise") == "rowwise",
                     bool(plan.get("offload_state_layers") or plan.get("offload_activation_layers"))))
    bf16 = [x for x in rows if not x[4]]
    g = sum(x[2]["gemm"] for x in bf16) / sum(x[3]["gemm"] for x in bf16)
    tw = [x for x in rows if x[4] and not x[5]]
    f8 = sum(x[2]["gemm_total"] - x[3]["gemm"] * g for x in tw) / sum(x[3]["fp8_gemm"] for x in tw)
    at = sum(x[2]["attention"] for x in rows) / sum(x[3]["attention"] for x in rows)
    in_training = dict(zip(IN_TRAINING, (round(1 / g, 3), round(1 / f8, 3), round(1 / at, 3))))
    # elementwise efficiency: bisect on the plans without host offload (their memcpy is not memory-bound work)
    plain = [x for x in rows if not x[6]]
    target = sum(x[2]["other"] for x in plain)
    scaled = base.with_constants("fit", **in_training)
    parts = [model_parts(x[1], scaled) for x in plain]  # GEMMs and attention do not depend on ew_eff
    lo, hi = 0.05, 1.0
    for _ in range(30):
        mid = (lo + hi) / 2
        prof = scaled.with_constants("fit", elementwise_efficiency=mid)
        got = sum(model_other(x[1], prof, pp) for x, pp in zip(plain, parts))
        lo, hi = (mid, hi) if got > target else (lo, mid)
    ew = round((lo + hi) / 2, 3)
    # CPU AdamW: the GPU idles while the CPU steps the offloaded blocks
    idle0 = statistics.median(x[2]["idle"] for x in plain)
    cpu = []
    for name, e, meas, *_ in rows:
        layers = int(e["plan"].get("offload_state_layers", 0))
        if layers:
            params = load_model(e["model"]).params_per_block() * layers
            cpu.append(params / max(1e-6, meas["idle"] - idle0))
    fitted = {**in_training, "elementwise_efficiency": ew}
    if cpu:
        fitted["cpu_adam_params_per_s"] = float(f"{statistics.median(cpu):.3g}")
    lines = ["| plan | bf16 GEMM meas / model (s) | float8 GEMM meas / model | attention meas / model | "
             "other kernels (s) | GPU idle (s) |", "|---|---:|---:|---:|---:|---:|"]
    for name, _, meas, mod, *_ in rows:
        lines.append(f"| {name} | {meas['gemm']:.3f} / {mod['gemm']:.3f} | {meas['fp8_gemm']:.3f} / "
                     f"{mod['fp8_gemm']:.3f} | {meas['attention']:.3f} / {mod['attention']:.3f} | "
                     f"{meas['other']:.3f} | {meas['idle']:.3f} |")
    return fitted, lines


def apply(base: HardwareProfile, fitted: dict) -> HardwareProfile:
    """``base`` with the fitted constants stored."""
    prof = base.with_constants(SOURCE, **{k: v for k, v in fitted.items() if k != "cpu_adam_params_per_s"})
    if "cpu_adam_params_per_s" in fitted:
        prof = dataclasses.replace(prof, cpu_adam_params_per_s=fitted["cpu_adam_params_per_s"])
    return prof


def leave_one_out(results: list[dict], entries: dict[str, dict], base: HardwareProfile) -> list[tuple[str, float]]:
    """(plan, relative step-time error) of each plan predicted with constants fitted without it (a plan the
    fit needs for a constant, e.g. the only state-offload plan for the CPU rate, keeps the base value)."""
    out = []
    for r in results:
        rest = [x for x in results if x is not r]
        fitted, _ = fit(rest, entries, base)
        prof = apply(base, fitted)
        if "cpu_adam_params_per_s" not in fitted:  # no other plan to fit it on: the profiler's own measurement
            prof = dataclasses.replace(prof, cpu_adam_params_per_s=isolated_cpu_adam(base))
        e = as_ran(r, entries[r["name"]])
        pred = predict(e["model"], "1xh200", parse_plan(e["plan"]), profile=prof).step_time_s
        out.append((r["name"], pred / r["step_s"] - 1))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--anatomy", default=str(ANATOMY))
    ap.add_argument("--plans", default=str(PLANS))
    ap.add_argument("--profile", default=str(PROFILE))
    ap.add_argument("--write", action="store_true", help="store the fitted constants in --profile")
    ap.add_argument("--loo", action="store_true", help="also print the leave-one-out step-time error per plan")
    a = ap.parse_args(argv)
    warnings.simplefilter("ignore")  # the plans' own warnings (eager float8) were shown when they were measured
    results = [r for r in json.loads(Path(a.anatomy).read_text()) if "error" not in r]
    entries = {e["name"]: e for e in yaml.safe_load(Path(a.plans).read_text())}
    base = load_profile(a.profile)
    fitted, lines = fit(results, entries, base)
    print("\n".join(lines))
    print(f"\nfitted on {len(results)} plans of {a.anatomy}:")
    print(yaml.safe_dump(fitted, sort_keys=False).rstrip())
    if a.loo:
        loo = leave_one_out(results, entries, base)
        print("\n| plan | step time error, constants fitted without it |\n|---|---:|")
        print("\n".join(f"| {n} | {e:+.1%} |" for n, e in loo))
        errs = [abs(e) for _, e in loo]
        print(f"\nleave-one-out over {len(errs)} plans: median |err| {statistics.median(errs):.1%}, "
              f"max {max(errs):.1%}")
    if a.write:
        # keep the profiler's isolated CPU AdamW measurement beside the in-step rate that replaces it
        base = dataclasses.replace(base, records={**base.records,
                                                  "cpu_adam_isolated_params_per_s": isolated_cpu_adam(base)})
        prof = apply(base, fitted)
        note = "; cpu_adam_params_per_s from benchmarks/anatomy_fit.py"
        if note not in prof.source:
            prof = dataclasses.replace(prof, source=prof.source + note)
        Path(a.profile).write_text(prof.to_yaml())
        print(f"wrote {a.profile}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
