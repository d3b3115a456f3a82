"""A mixture-of-experts block of Qwen3-30B-A3B-sized experts at ep = 1 on one GPU, measured against the cost model,
and the grouped-GEMM efficiency points the model's ``grouped_gemm_efficiency`` constant stands for.

    python -m benchmarks.gpu.moe_block --out DIR [--budget-s 120] [--profile h200-measured]   # ~1 min on one H200
    python -m benchmarks.gpu.moe_block --out DIR --cpu-smoke                                   # tiny shapes, seconds

1. Grouped GEMM: ``torch._grouped_mm`` forward + backward of the experts' gate/up (2048 → 768) and down (768 → 2048)
   projections, 128 experts, 64 … 2048 rows per expert, against the profile's isolated dense-GEMM curve at one
   expert's GEMM size (costmodel.timing.moe_gemm_s prices a grouped GEMM as that curve × the constant). The median
   ratio over the points is the measured ``grouped_gemm_efficiency``; ``grouped_gemm_efficiency.yaml`` holds it
   as a profile ``constants:`` entry with its source line.
2. MoE block: launcher.runtime.moe.MoE (router, top-8 of 128 experts of width 768, grouped GEMMs, combine, balance
   loss) on 4k, 8k and 16k tokens, bf16: forward + backward time (CUDA events, median) and the bytes it keeps from
   forward to backward (allocated after forward − before − output), against costmodel's moe_gemm_s,
   moe_elementwise_bytes and moe_saved_bytes for the same tokens. The time is predicted twice: with the profile's
   stored constant, and with the one measured in step 1 (what the model will say once it is stored). Targets:
   time within 5 %, memory within 3 %. Isolated kernels: the prediction leaves out the profile's
   in-training GEMM factor (the block is not inside a training step).

Writes DIR/moe_block.json (every point), DIR/summary.md (tables) and DIR/grouped_gemm_efficiency.yaml.
"""
from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import sympy as sp
import torch

from costmodel import ModelSpec, load_model
from costmodel.hardware import load_profile
from costmodel.memory import moe_saved_bytes
from costmodel.stage import hardware_inputs, lambdify_modules, model_inputs
from costmodel.symbols import H, K, M, R
from costmodel.timing import efficiency, moe_elementwise_bytes, moe_gemm_s

ROWS_PER_EXPERT = (64, 128, 256, 512, 1024, 2048)
BLOCK_TOKENS = (4096, 8192, 16384)
TARGET_TIME, TARGET_MEMORY = 0.05, 0.03


def shapes(smoke: bool) -> tuple[ModelSpec, tuple[int, ...], tuple[int, ...]]:
    """(spec, rows per expert, block token counts): Qwen3-30B-A3B's experts, or tiny ones for the CPU smoke."""
    if smoke:
        spec = ModelSpec(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
                         vocab_size=256, num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32,
                         name="tiny-moe")
        return spec, (4, 16), (64, 128)
    return load_model("qwen3-30b-a3b"), ROWS_PER_EXPERT, BLOCK_TOKENS


def timed_ms(fn, device: torch.device, repeats: int) -> float:
    """Median milliseconds of ``fn`` after two warm-up calls (CUDA events on GPU)."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(times)


def grouped(x: torch.Tensor, w: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
    """x (rows, K) @ w (E, N, K)^T per expert group; the trainer's kernel on CUDA, a loop elsewhere."""
    if x.is_cuda:
        return torch._grouped_mm(x, w.transpose(-2, -1), offs=offs)
    ends = offs.tolist()
    starts = [0] + ends[:-1]
    return torch.cat([x[a:b] @ w[j].t() for j, (a, b) in enumerate(zip(starts, ends))])


def grouped_points(spec: ModelSpec, rows: tuple[int, ...], device, dtype, prof, repeats, deadline) -> list[dict]:
    """Forward + backward of each expert projection as one grouped GEMM, against the profile's dense curve."""
    E, h, F = spec.num_experts, spec.hidden_size, spec.expert_width
    out = []
    for name, k_dim, n_dim in (("gate_up", h, F), ("down", F, h)):
        w = (0.02 * torch.randn(E, n_dim, k_dim, device=device, dtype=dtype)).requires_grad_()
        for m in rows:
            if time.monotonic() > deadline:
                return out
            x = torch.randn(m * E, k_dim, device=device, dtype=dtype, requires_grad=True)
            offs = torch.arange(1, E + 1, device=device, dtype=torch.int32) * m
            grad = torch.randn(m * E, n_dim, device=device, dtype=dtype)
            ms = timed_ms(lambda: grouped(x, w, offs).backward(grad), device, repeats)
            flops = 3 * 2 * m * E * k_dim * n_dim            # forward + input and weight gradients
            per_expert = 2 * m * k_dim * n_dim               # one expert's forward GEMM: the curve's x
            dense_tflops = prof.bf16_tflops * prof.gemm(per_expert)   # isolated curve, no in-training factor
            tflops = flops / ms / 1e9
            out.append({"gemm": name, "rows_per_expert": m, "experts": E, "K": k_dim, "N": n_dim, "ms": ms,
                        "tflops": tflops, "curve_tflops_at_expert_size": dense_tflops,
                        "grouped_gemm_efficiency": tflops / dense_tflops})
    return out


@functools.lru_cache(maxsize=1)
def _model_fn():
    """(symbols, lambdified [time, GEMM, elementwise, saved bytes]) of one MoE FFN, built once."""
    gemm, ew = moe_gemm_s(), moe_elementwise_bytes(compiled=False) / (H.hbm * H.ew_eff)
    gpu = 3 * (gemm + ew)                               # backward: twice the forward (costmodel.timing)
    host = 3 * R.kern_moe_eager * H.launch
    exprs = [sp.Max(gpu, host), 3 * gemm, 3 * ew, moe_saved_bytes(compiled=False)]
    syms = sorted(set().union(*(e.free_symbols for e in exprs)), key=str)
    return syms, sp.lambdify(syms, exprs, modules=lambdify_modules())


def predicted(spec: ModelSpec, tokens: int, prof, gg_eff: float | None) -> dict:
    """The cost model's forward + backward seconds and saved bytes of one MoE FFN (costmodel.timing/memory terms),
    isolated kernels: in-training factors at 1; ``gg_eff`` replaces the profile's grouped-GEMM constant."""
    hw = hardware_inputs(prof)
    hw["ge_max"] = prof.gemm.max_eff   # isolated: not inside a training step
    if gg_eff is not None:
        hw["gg_eff"] = gg_eff
    values = {**model_inputs(spec), **hw, "b": 1, "s": tokens, "t": 1, "c": 1, "e": 1, "imb": 0, "lm": 1, "l": 1}
    syms, fn = _model_fn()
    out = fn(*[values[str(s)] for s in syms])
    return dict(zip(("time_s", "gemm_s", "elementwise_s", "saved_bytes"), (float(v) for v in out)))


def block_points(spec: ModelSpec, tokens_list: tuple[int, ...], device, dtype, prof, gg_fit, repeats,
                 deadline) -> list[dict]:
    from launcher.runtime.moe import MoE
    torch.manual_seed(0)
    moe = MoE(spec).to(device=device, dtype=dtype)
    with torch.no_grad():
        for p in moe.parameters():
            p.normal_(0.0, 0.02)
    out = []
    cuda = device.type == "cuda"
    for T in tokens_list:
        if time.monotonic() > deadline:
            break
        x = torch.randn(T, spec.hidden_size, device=device, dtype=dtype, requires_grad=True)
        grad = torch.randn_like(x)

        def step():
            moe(x).backward(grad)
        ms = timed_ms(step, device, repeats)
        saved = peak = None
        if cuda:
            moe.zero_grad(set_to_none=False)   # weight gradients exist before, as in training after step 1
            step()
            x.grad = None
            torch.cuda.synchronize()
            before = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            y = moe(x)
            after = torch.cuda.memory_allocated()
            saved = after - before - y.numel() * y.element_size()
            y.backward(grad)
            peak = torch.cuda.max_memory_allocated() - before
            del y
        row = {"tokens": T, "ms": ms, "saved_bytes": saved, "fwd_bwd_peak_bytes": peak}
        for label, gg in (("profile", None), ("measured_gg", gg_fit)):
            pred = predicted(spec, T, prof, gg)
            row[f"pred_{label}"] = pred
            row[f"time_err_{label}"] = pred["time_s"] * 1e3 / ms - 1
        pred = row["pred_profile"]
        row["memory_err"] = pred["saved_bytes"] / saved - 1 if saved else None
        out.append(row)
    return out


def summary(res: dict) -> str:
    lines = [f"# MoE block on {res['device']} ({res['torch']}), profile {res['profile']}", "",
             f"## Grouped GEMM (forward + backward), {res['grouped'][0]['experts'] if res['grouped'] else '-'} "
             "experts", "",
             "| GEMM | rows/expert | ms | TFLOP/s | curve at one expert's size | ratio |", "|---|---:|---:|---:|---:|---:|"]
    for p in res["grouped"]:
        lines.append(f"| {p['gemm']} | {p['rows_per_expert']} | {p['ms']:.3f} | {p['tflops']:.0f} | "
                     f"{p['curve_tflops_at_expert_size']:.0f} | {p['grouped_gemm_efficiency']:.3f} |")
    lines += ["", f"measured grouped_gemm_efficiency (median): {res['grouped_gemm_efficiency']:.3f} "
              f"(profile: {res['profile_grouped_gemm_efficiency']:.3f})", "",
              "## MoE block forward + backward (ep = 1)", "",
              "| tokens | ms | pred ms (profile) | err | pred ms (measured gg) | err | saved MiB | pred MiB | err |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for b in res["block"]:
        mib = lambda x: f"{x / 2**20:.1f}" if x else "-"  # noqa: E731
        mem_err = f"{b['memory_err']:+.1%}" if b["memory_err"] is not None else "-"
        lines.append(f"| {b['tokens']} | {b['ms']:.2f} | {b['pred_profile']['time_s'] * 1e3:.2f} | "
                     f"{b['time_err_profile']:+.1%} | {b['pred_measured_gg']['time_s'] * 1e3:.2f} | "
                     f"{b['time_err_measured_gg']:+.1%} | {mib(b['saved_bytes'])} | "
                     f"{mib(b['pred_profile']['saved_bytes'])} | {mem_err} |")
    lines += ["", f"targets: time within {TARGET_TIME:.0%} (with the measured constant stored), memory within "
              f"{TARGET_MEMORY:.0%}: {res['verdict']}"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="folder for moe_block.json, summary.md and the constant")
    ap.add_argument("--budget-s", type=float, default=120.0, help="stop starting new points after this many seconds")
    ap.add_argument("--profile", default="h200-measured", help="hardware profile the predictions use")
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny shapes on the CPU (fp32, expert loop)")
    args = ap.parse_args(argv)
    deadline = time.monotonic() + args.budget_s
    cuda = torch.cuda.is_available() and not args.cpu_smoke
    if not cuda and not args.cpu_smoke:
        print("no CUDA GPU: run on one H200, or pass --cpu-smoke", file=sys.stderr)
        return 2
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    repeats = 10 if cuda else 2
    spec, rows, tokens = shapes(args.cpu_smoke)
    prof = load_profile(args.profile)
    points = grouped_points(spec, rows, device, dtype, prof, repeats, deadline)
    gg = statistics.median(p["grouped_gemm_efficiency"] for p in points) if points else None
    block = block_points(spec, tokens, device, dtype, prof, gg, repeats, deadline)
    ok_t = all(abs(b["time_err_measured_gg"]) <= TARGET_TIME for b in block)
    ok_m = all(b["memory_err"] is not None and abs(b["memory_err"]) <= TARGET_MEMORY for b in block)
    res = {"device": torch.cuda.get_device_name() if cuda else "cpu (smoke)", "torch": torch.__version__,
           "profile": prof.name, "model": spec.name, "grouped": points, "grouped_gemm_efficiency": gg,
           "profile_grouped_gemm_efficiency": prof.const("grouped_gemm_efficiency"), "block": block,
           "verdict": f"time {'met' if ok_t else 'missed'}, memory {'met' if ok_m else 'missed or not measured'}"}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "moe_block.json").write_text(json.dumps(res, indent=1))
    text = summary(res)
    (args.out / "summary.md").write_text(text)
    if gg is not None:
        src = (f"measured {date.today()} on {res['device']} with torch {torch.__version__} by python -m "
               f"benchmarks.gpu.moe_block: median over {len(points)} points (Qwen3-30B-A3B experts, 128 x "
               f"{rows[0]}-{rows[-1]} rows, torch._grouped_mm forward + backward) of grouped TFLOP/s over the "
               f"{prof.name} dense curve at one expert's GEMM FLOPs")
        (args.out / "grouped_gemm_efficiency.yaml").write_text(
            f"  grouped_gemm_efficiency: {{value: {gg:.3f}, source: '{src}'}}\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
