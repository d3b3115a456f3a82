"""Context parallelism on one GPU: one cp rank's ring attention, and whole cp ranks, beside the cost model.

    python -m benchmarks.gpu.cp_roles --out DIR [--budget-s 60] [--only NAME ...] [--cpu-smoke]

Under PyTorch's fake process-group backend a cp rank runs alone: torch 2.13's fake all-gather fills each chunk of
its output with the local input and its all-to-all copies, so the ring's buffers have their real sizes and its
kernels their real shapes; only the exchange itself costs nothing. Two parts, each line appended to a file as it
finishes:

1. ``cp_attention.jsonl``: Llama-3-8B attention (32 heads, 8 K/V heads, head_dim 128) of one rank's share of a
   32k-128k sequence, forward + backward through torch's ``context_parallel`` (cuDNN/flash), for cp rank 0 and the
   last cp rank, beside the cost model's compute-only time (attention at the ring step's size + the merge
   traffic) and its transient memory (the saved output and log-sum-exp, the gradients and ``cp_buffers``). If
   ``context_parallel`` fails under the fake backend, the error is recorded and the ring runs through
   launcher.gputools.cp_ring (the same torch ring functions without DTensor dispatch) instead, and so do part 2.
2. ``cp_roles.jsonl``: whole ranks of the plans of cp_roles.yaml (``loadmaster rehearse``: compute time and peak
   memory against the model), cheapest first, while the budget lasts; ``python benchmarks/rehearse.py
   DIR/cp_roles.jsonl`` tabulates them.

About 20 s for part 1 and 40-80 s per role of part 2 on an H100/H200 (a role started before the budget runs to its
end): the default budget takes part 1 and the first role, 1.5-2 minutes in all; ``--budget-s 600`` every role.
``--cpu-smoke`` runs both on tiny shapes on the CPU with the ring stand-in (the code path, not the numbers).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path

import numpy as np
import sympy as sp
import torch
import torch.nn.functional as F

from benchmarks.rehearse import summary_lines, table_lines
from costmodel import ModelSpec, load_cluster, load_model
from costmodel.hardware import profile_for, profile_name_for_gpu
from costmodel.memory import FP32, BF16, cp_buffer_bytes
from costmodel.stage import all_symbols, hardware_inputs, lambdify_modules, model_inputs
from costmodel.timing import attention_s, cp_attention_s

ROLES = Path(__file__).resolve().parent / "cp_roles.yaml"
# (cp, sequence): 16k-token shares of 32k-128k sequences, and two short shares where the merges weigh most
ATTENTION_CASES = [(2, 32768), (4, 65536), (8, 131072), (8, 32768), (16, 131072)]
SMOKE_MODEL = ModelSpec(name="smoke", hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                        num_attention_heads=4, num_key_value_heads=2, vocab_size=256)


def model_attention(spec: ModelSpec, prof, seq: int, cp: int, allgather: bool) -> dict[str, float]:
    """The cost model's compute-only seconds and transient bytes of one block's attention on one cp rank."""
    att_f, att_b = attention_s()
    cpx = cp_attention_s()
    exprs = [att_f + cpx["merge_fwd"], att_b + cpx["merge_bwd"], cp_buffer_bytes("forward"),
             cp_buffer_bytes("backward")]
    syms = all_symbols()
    fn = sp.lambdify(syms, exprs, modules=lambdify_modules())
    values = {**hardware_inputs(prof), **model_inputs(spec), "b": 1, "s": seq, "t": 1, "c": cp,
              "cag": float(allgather), "bw_cp": 1e30, "bw_cp_p2p": 1e30}
    fwd_s, bwd_s, buf_f, buf_b = (float(np.asarray(v)) for v in fn(*[values.get(str(x), 1.0) for x in syms]))
    q = seq // cp * spec.num_attention_heads * int(spec.head_dim)
    kv = 2 * seq // cp * spec.kv_heads * int(spec.head_dim)
    saved = BF16 * q + FP32 * seq // cp * spec.num_attention_heads     # SDPA's output and log-sum-exp
    return {"model_s": fwd_s + bwd_s, "model_bytes": max(saved + buf_f, saved + BF16 * (q + kv) + buf_b)}


def measure_attention(spec: ModelSpec, cp: int, seq: int, rank: int, rotate: str, path: str, device: torch.device,
                      iters: int) -> dict:
    """Forward + backward of one cp rank's attention under the fake backend: median seconds, peak extra bytes."""
    from torch.distributed.device_mesh import init_device_mesh

    from launcher.gputools.cp_ring import ring_cp
    from launcher.gputools.replay import fake_process_group, forget_dtensor_caches
    from launcher.runtime.parallel.cp import apply_cp
    forget_dtensor_caches()
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    local, dh = seq // cp, int(spec.head_dim)
    q, k, v = (torch.randn(1, h, local, dh, device=device, dtype=dtype, requires_grad=True)
               for h in (spec.num_attention_heads, spec.kv_heads, spec.kv_heads))
    grad = torch.randn_like(q)
    context = apply_cp if path == "context_parallel" else ring_cp
    with fake_process_group(rank, cp):
        mesh = init_device_mesh(device.type, (cp,), mesh_dim_names=("cp",))

        def step():
            # context_parallel shards at least one buffer: a dummy token row of the full sequence
            tokens = torch.zeros(1, seq, dtype=torch.long, device=device)
            with context([], mesh, tokens=tokens, labels=tokens.clone(), rotate=rotate):
                F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True).backward(grad)
            q.grad = k.grad = v.grad = None
        step()
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        sync()
        base = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        times = []
        for _ in range(iters):
            sync()
            t0 = time.perf_counter()
            step()
            sync()
            times.append(time.perf_counter() - t0)
        peak = torch.cuda.max_memory_allocated(device) - base if device.type == "cuda" else float("nan")
    return {"measured_s": statistics.median(times), "measured_bytes": float(peak)}


def part_attention(out: Path, device: torch.device, smoke: bool, budget_end: float) -> str:
    """Part 1; returns the attention path that ran ("context_parallel", or "ring" if it failed)."""
    spec = SMOKE_MODEL if smoke else load_model("llama3-8b")
    path = "ring" if device.type == "cpu" else "context_parallel"
    name = profile_name_for_gpu(torch.cuda.get_device_name(0), torch.cuda.get_device_properties(0).total_memory) \
        if device.type == "cuda" else None
    prof = profile_for(dataclasses.replace(load_cluster("1xh100"), gpu=name or "h100-sxm"))
    cases = [(2, 64), (4, 64)] if smoke else ATTENTION_CASES
    for cp, seq in cases:
        for rank, rotate in ((0, "allgather"), (cp - 1, "allgather"), (cp - 1, "alltoall")):
            if time.monotonic() > budget_end:
                return path
            line = {"cp": cp, "seq_len": seq, "cp_rank": rank, "rotate": rotate, "device": str(device),
                    "profile": prof.name}
            try:
                got = measure_attention(spec, cp, seq, rank, rotate, path, device, iters=2 if smoke else 3)
            except Exception as e:   # noqa: BLE001  the finding is the failure itself
                if path == "ring":
                    raise
                line["context_parallel_error"] = " ".join(f"{type(e).__name__}: {e}".split())[:400]
                print(f"context_parallel failed under the fake backend ({line['context_parallel_error']}); "
                      "using launcher.gputools.cp_ring from here on", flush=True)
                path = "ring"
                got = measure_attention(spec, cp, seq, rank, rotate, path, device, iters=3)
            line.update(path=path, **got, **model_attention(spec, prof, seq, cp, rotate == "allgather"))
            line["time_error"] = line["model_s"] / line["measured_s"] - 1
            line["memory_error"] = line["model_bytes"] / line["measured_bytes"] - 1
            with (out / "cp_attention.jsonl").open("a") as f:
                f.write(json.dumps(line) + "\n")
            print(f"attention cp{cp} seq {seq:>6} rank {rank:>2} {rotate:9s} ({path}): "
                  f"{line['measured_s'] * 1e3:8.2f} ms (model {line['model_s'] * 1e3:8.2f}, "
                  f"{line['time_error']:+.1%}), extra memory {line['measured_bytes'] / 2**20:8.1f} MiB "
                  f"(model {line['model_bytes'] / 2**20:8.1f})", flush=True)
    return path


def part_roles(out: Path, path: str, smoke: bool, only: list[str] | None, budget_end: float) -> list[dict]:
    """Part 2: rehearse the roles of cp_roles.yaml while the budget lasts."""
    from launcher.gputools.rehearse import rehearse
    from benchmarks.gpu.rehearse_roles import role_entries
    lines, skipped = [], []
    for e, plan, model in role_entries(ROLES, only, budget_end, skipped):
        if smoke:   # the tiny model, the plan's layout, a short sequence
            model = dataclasses.replace(SMOKE_MODEL, name=f"smoke-{model.name}")
            plan = plan.replace(seq_len=16 * plan.cp * plan.tp)
        per_pp = plan.world_size // plan.pp
        ranks = [p * per_pp + c * plan.tp for p in e["pp_ranks"] for c in e["cp_ranks"]]
        try:
            res = rehearse(model, e["cluster"], plan, ranks=ranks, steps=1 if smoke else 2, warmup_steps=1,
                           cp_attention=path)
        except (ValueError, RuntimeError) as err:
            lines.append({"name": e["name"], "error": " ".join(str(err).split())[:500]})
            print(f"{e['name']}: {lines[-1]['error']}", flush=True)
            continue
        for r in res.ranks:
            lines.append({"name": f"{e['name']} cp{(r.rank % per_pp) // plan.tp}", "model": e["model"],
                          "cluster": e["cluster"], "plan": plan.to_dict(), "device": res.device,
                          "cp_attention": path, **r.to_dict(), "notes": res.notes})
            print(f"{lines[-1]['name']} pp{r.pp_rank}: compute {r.step_time_s:.3f}s (model "
                  f"{r.predicted_compute_s:.3f}s), peak {r.peak_memory_bytes / 2**30:.2f} GiB (model "
                  f"{r.predicted_peak_bytes / 2**30:.2f})", flush=True)
        with (out / "cp_roles.jsonl").open("a") as f:
            f.writelines(json.dumps(x) + "\n" for x in lines[-len(res.ranks):])
    if skipped:
        print(f"skipped (budget): {', '.join(skipped)}")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="folder for cp_attention.jsonl and cp_roles.jsonl")
    ap.add_argument("--budget-s", type=float, default=60.0, help="no new case or role starts after this")
    ap.add_argument("--only", nargs="*", default=None, help="role names of cp_roles.yaml (default: all)")
    ap.add_argument("--skip-attention", action="store_true", help="part 2 only")
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny shapes on the CPU (the code path only)")
    a = ap.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    end = time.monotonic() + a.budget_s
    device = torch.device("cpu") if a.cpu_smoke or not torch.cuda.is_available() else torch.device("cuda", 0)
    if device.type == "cpu" and not a.cpu_smoke:
        raise SystemExit("no CUDA GPU: run with --cpu-smoke for the code path")
    if device.type == "cpu":
        torch.set_num_threads(1)   # rehearse forks its ranks on a CPU: no OpenMP pool may be live in the parent
    path = "ring" if device.type == "cpu" else "context_parallel"
    if not a.skip_attention:
        path = part_attention(out, device, a.cpu_smoke, end)
    lines = part_roles(out, path, a.cpu_smoke, a.only, end)
    if lines:
        print("\n".join(table_lines(lines)))
        print("\n".join(summary_lines(lines)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
