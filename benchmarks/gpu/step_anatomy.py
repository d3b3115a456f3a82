"""Where one training step's GPU time goes: kernel time by category (torch.profiler), the GPU's idle share of the
step, and the cost model's time breakdown beside it, for named plans of a launcher.runtime.bench plans file. One GPU.

    python3 benchmarks/gpu/step_anatomy.py --plans benchmarks/gpu/plans_1gpu.yaml --names A,B --json OUT.json
    python3 benchmarks/gpu/step_anatomy.py --report OUT.json          # the table again, anywhere (no GPU)

The idle share says whether a step is bound by the host (kernel launches, Python, tensor-subclass dispatch) or
by the GPU: the cost model's eager float8 and small-micro-batch terms are checked against it.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# (category, substrings of the lower-cased kernel name); the first match wins
# (the first sessions' files named a "gemm fp8" category that in fact caught float8 cast kernels: their
# e4m3 template names and inductor's ``triton_..._scaled_mm_...`` fusions; every GEMM was under "gemm")
CATEGORIES = [
    ("nccl", ("nccl",)),
    ("attention", ("sdpa", "fmha", "flash", "attn")),
    ("triton", ("triton",)),                         # inductor's fused kernels (float8 casts fused in, too)
    ("gemm", ("gemm", "nvjet", "cutlass", "xmma", "cublas")),  # bf16 and float8 (nvjet ..._q?tst_...)
    ("float8 cast", ("e4m3", "e5m2", "float8")),
    ("optimizer", ("adam",)),
    ("foreach", ("multi_tensor",)),                  # FSDP2's copy-in, grad accumulation, clipping
    ("fsdp copy", ("split_with_sizes", "chunk_cat")),  # FSDP2's copy-out and reduce-scatter copy-in
    ("reduction", ("reduce",)),
    ("elementwise", ("elementwise", "vectorized", "copy", "cat", "index", "fill")),
]


def category(name: str, cat: str) -> str:
    if cat == "gpu_memcpy":
        for kind in ("HtoD", "DtoH", "DtoD"):
            if kind in name:
                return f"memcpy {kind}"
        return "memcpy"
    if cat == "gpu_memset":
        return "memset"
    low = name.lower()
    return next((c for c, keys in CATEGORIES if any(k in low for k in keys)), "other")


def busy_s(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of (start, end) intervals (kernels on several streams overlap)."""
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b > end:
            total += b - max(a, end)
            end = b
    return total


def analyse_trace(path: Path) -> dict:
    """Per-category kernel seconds, the top kernels and the GPU-busy seconds of a Chrome trace."""
    events = json.loads(path.read_text())["traceEvents"]
    gpu = [e for e in events if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset") and "dur" in e]
    by_cat, by_name, count = defaultdict(float), defaultdict(float), defaultdict(int)
    for e in gpu:
        s = e["dur"] * 1e-6
        by_cat[category(e["name"], e["cat"])] += s
        by_name[e["name"][:120]] += s
        count[e["name"][:120]] += 1
    span = (max(e["ts"] + e["dur"] for e in gpu) - min(e["ts"] for e in gpu)) * 1e-6 if gpu else 0.0
    top = sorted(by_name.items(), key=lambda kv: -kv[1])[:25]
    return {"kernels": len(gpu), "span_s": span, "busy_s": busy_s([(e["ts"], e["ts"] + e["dur"]) for e in gpu]) * 1e-6,
            "by_category_s": dict(sorted(by_cat.items(), key=lambda kv: -kv[1])),
            "top_kernels": [{"name": n, "s": s, "count": count[n]} for n, s in top]}


def anatomy(entry: dict, *, warmup: int, timed: int) -> dict:
    """Build the plan with the trainer, run ``warmup`` steps, time ``timed`` steps, then profile one."""
    import torch
    from costmodel import load_model, parse_plan, predict
    from launcher.runtime.config import TrainConfig
    from launcher.runtime.data import local_batch
    from launcher.runtime.trainer import build, local_device, release_memory, train_step

    plan = parse_plan(entry["plan"], entry["name"])
    spec = load_model(entry["model"])
    cfg = TrainConfig(plan=plan, model=spec, steps=warmup + timed + 1, timing_warmup_steps=0, cluster="1xh200",
                      collective_timeout_s=300, out=None, resume=False, checkpoint_at_end=False, warmup_steps=0)
    device = local_device()   # a CPU run only checks this script (its trace has no kernels)
    s = build(cfg, device)
    kernels = dict(s.kernels)   # what runs (anatomy_fit prices the plan with these)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()
    try:
        step = 0

        def one() -> None:
            nonlocal step
            train_step(s, step, local_batch(s.source, plan, step=step, dp_rank=0, device=device))
            step += 1
        for _ in range(warmup):
            one()
        sync()
        times = []
        for _ in range(timed):
            t0 = time.perf_counter()
            one()
            sync()
            times.append(time.perf_counter() - t0)
        from torch.profiler import ProfilerActivity, profile
        with tempfile.TemporaryDirectory() as tmp:
            trace = Path(tmp, "trace.json")
            acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
            with profile(activities=acts) as prof:
                t0 = time.perf_counter()
                one()
                sync()
                profiled_s = time.perf_counter() - t0
            prof.export_chrome_trace(str(trace))
            out = analyse_trace(trace)
    finally:
        del s
        release_memory(plan.compile)
    pred = predict(spec, "1xh200", plan.replace(**kernels))
    out.update(name=entry["name"], kernel_choices=kernels, step_s=sorted(times)[len(times) // 2], profiled_step_s=profiled_s,
               predicted_step_s=pred.step_time_s, predicted_breakdown_s=pred.time_breakdown,
               torch=torch.__version__, device=torch.cuda.get_device_name() if device.type == "cuda" else "cpu")
    out["gpu_idle_share"] = 1 - out["busy_s"] / profiled_s if profiled_s else None
    return out


def table(results: list[dict]) -> str:
    cats = sorted({c for r in results for c in r.get("by_category_s", {})})
    lines = ["| plan | step (s) | pred (s) | profiled (s) | GPU busy (s) | idle | " + " | ".join(cats) + " |",
             "|---|" + "---:|" * (5 + len(cats))]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['name']} | error: {r['error'][:80]} |")
            continue
        c = r["by_category_s"]
        lines.append(f"| {r['name']} | {r['step_s']:.3f} | {r['predicted_step_s']:.3f} | {r['profiled_step_s']:.3f} "
                     f"| {r['busy_s']:.3f} | {100 * r['gpu_idle_share']:.0f}% | "
                     + " | ".join(f"{c.get(k, 0):.3f}" for k in cats) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--plans", help="launcher.runtime.bench plans file")
    ap.add_argument("--names", help="comma-separated entry names (default: all)")
    ap.add_argument("--json", help="write the results here (rewritten after every plan)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--timed", type=int, default=2)
    ap.add_argument("--report", help="print the table of a results file and exit")
    a = ap.parse_args(argv)
    if a.report:
        print(table(json.loads(Path(a.report).read_text())))
        return 0
    if not a.plans:
        ap.error("--plans is required (or --report)")
    import yaml
    from launcher.runtime.trainer import init_distributed
    entries = yaml.safe_load(Path(a.plans).read_text())
    if a.names:
        wanted = a.names.split(",")
        unknown = set(wanted) - {e["name"] for e in entries}
        if unknown:
            ap.error(f"--names: no entries {sorted(unknown)} in {a.plans}")
        entries = [e for n in wanted for e in entries if e["name"] == n]
    init_distributed(600)
    results = []
    for e in entries:
        try:
            results.append(anatomy(e, warmup=a.warmup, timed=a.timed))
        except Exception as exc:  # noqa: BLE001 - one plan's failure (OOM, missing torchao) must not end the sweep
            results.append({"name": e["name"], "error": f"{type(exc).__name__}: {exc}"[:400]})
        print(table(results[-1:]).splitlines()[-1], flush=True)
        if a.json:
            Path(a.json).write_text(json.dumps(results, indent=1) + "\n")
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
