"""Write the tuner-vs-hand-grid plan files: the tuner's plan and hand-picked alternatives per case.

    python benchmarks/gpu/make_grid.py [FILE...]  # runs the tuner here (needs pulp/highspy: not on the GPU node)

For each case the tuner (planner.tuner.tune, default search space, float8 off) picks a plan; the hand grid is
what a user would try by hand: FSDP + full checkpointing with micro-batch 1 (TorchTitan's usual default),
larger micro-batches, selective or no checkpointing, compile on/off, zero 2/3 and, on two GPUs, TP.
Writes ``benchmarks/gpu/tuner_vs_grid_<n>gpu.yaml`` (launcher.runtime.bench input; the tuner's entry has
``tuner: true``) and prints the predictions. The measured check (tuner's plan best or within 3 %) is
``benchmarks/tuner_vs_grid.py`` on the returned bench JSONL.
"""
from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

import yaml

from costmodel import GiB

HERE = Path(__file__).resolve().parent

# (name suffix, plan knobs besides global batch and sequence length)
GRID_1GPU = [
    ("fsdp-full-mb1", dict(micro_batch_size=1, dp=1, zero=3, recompute="full")),
    ("fsdp-full-mb1-cmp", dict(micro_batch_size=1, dp=1, zero=3, recompute="full", compile=True)),
    ("fsdp-sel-mb2-cmp", dict(micro_batch_size=2, dp=1, zero=3, recompute="selective", compile=True)),
    ("fsdp-none-mb2-cmp", dict(micro_batch_size=2, dp=1, zero=3, recompute="none", compile=True)),
    ("fsdp-none-mb4-cmp", dict(micro_batch_size=4, dp=1, zero=3, recompute="none", compile=True)),
    ("z2-none-mb4", dict(micro_batch_size=4, dp=1, zero=2, recompute="none")),
    ("fsdp-none-mb8", dict(micro_batch_size=8, dp=1, zero=3, recompute="none")),
    ("z2-sel-mb8-cmp", dict(micro_batch_size=8, dp=1, zero=2, recompute="selective", compile=True)),
]
GRID_2GPU = [
    ("fsdp-full-mb1", dict(micro_batch_size=1, dp=2, zero=3, recompute="full")),
    ("fsdp-full-mb1-cmp", dict(micro_batch_size=1, dp=2, zero=3, recompute="full", compile=True)),
    ("fsdp-sel-mb2-cmp", dict(micro_batch_size=2, dp=2, zero=3, recompute="selective", compile=True)),
    ("fsdp-none-mb4-cmp", dict(micro_batch_size=4, dp=2, zero=3, recompute="none", compile=True)),
    ("z2-none-mb4", dict(micro_batch_size=4, dp=2, zero=2, recompute="none")),
    ("fsdp-none-mb4", dict(micro_batch_size=4, dp=2, zero=3, recompute="none")),
    ("tp2-none-mb8-cmp", dict(micro_batch_size=8, dp=1, tp=2, zero=3, recompute="none", compile=True)),
    ("tp2-sel-mb4-cmp", dict(micro_batch_size=4, dp=1, tp=2, zero=3, recompute="selective", compile=True)),
]
# the runtime comparison's grid: Llama-3.2-1B shape, untied, seq 8192, gbs 8 — FSDP ± checkpointing at mbs 1/2/4, with and without
# compile, TorchTitan's default (FSDP + full checkpointing, mbs 1) first; default kernels (the tuner picks its own)
GRID_1GPU_8K = [
    ("fsdp-full-mb1", dict(micro_batch_size=1, dp=1, zero=3, recompute="full")),
    ("fsdp-full-mb1-cmp", dict(micro_batch_size=1, dp=1, zero=3, recompute="full", compile=True)),
    ("fsdp-none-mb1", dict(micro_batch_size=1, dp=1, zero=3, recompute="none")),
    ("fsdp-sel-mb2", dict(micro_batch_size=2, dp=1, zero=3, recompute="selective")),
    ("fsdp-none-mb2-cmp", dict(micro_batch_size=2, dp=1, zero=3, recompute="none", compile=True)),
    ("fsdp-sel-mb4-cmp", dict(micro_batch_size=4, dp=1, zero=3, recompute="selective", compile=True)),
    ("fsdp-full-mb4-cmp", dict(micro_batch_size=4, dp=1, zero=3, recompute="full", compile=True)),
    ("fsdp-none-mb4-cmp", dict(micro_batch_size=4, dp=1, zero=3, recompute="none", compile=True)),
]
CASES = [
    dict(tag="t1", gpus=1, model="llama3.2-1b", cluster="1xh200", global_batch_size=16, seq_len=4096, grid=GRID_1GPU),
    dict(tag="t2", gpus=2, model="llama3.2-3b", cluster="2xh200", global_batch_size=16, seq_len=4096, grid=GRID_2GPU),
    # kernels: the tuner's plan gets the fastest kernel choices of the default space for it (planner.space.best_kernels)
    dict(tag="t8", gpus=1, model="benchmarks/gpu/models/llama3.2-1b-untied.yaml", cluster="1xh200", global_batch_size=8,
         seq_len=8192, grid=GRID_1GPU_8K, kernels=True, file="tuner_vs_grid_8k.yaml"),
]


def full_plan(knobs: dict, *, global_batch_size: int, seq_len: int) -> dict:
    plan = {"global_batch_size": global_batch_size, "micro_batch_size": knobs["micro_batch_size"],
            "seq_len": seq_len, "dp": knobs.get("dp", 1), "tp": knobs.get("tp", 1), "pp": knobs.get("pp", 1),
            "zero": knobs["zero"], "recompute": knobs["recompute"]}
    plan.update({k: v for k, v in knobs.items() if k not in plan})
    return plan


def make_case(case: dict) -> tuple[list[dict], list[str]]:
    """(bench entries, header comment lines) of one case."""
    from costmodel import load_cluster, parse_plan
    from costmodel.hardware import profile_for
    from costmodel.prediction import predict
    from planner.tuner import tune
    t0 = time.perf_counter()
    result = tune(case["model"], case["cluster"], case["global_batch_size"], case["seq_len"], top_k=5)
    seconds = time.perf_counter() - t0
    if result.best is None:
        raise SystemExit(f"error: the tuner found no plan for {case['tag']}: {result.diagnosis}")
    best = result.best.plan
    if case.get("kernels"):
        from costmodel import load_model
        from planner.space import SearchSpace, best_kernels
        best, _ = best_kernels(load_model(case["model"]), load_cluster(case["cluster"]), best, SearchSpace())
    tuned = {k: v for k, v in best.to_dict().items() if k not in ("model", "cluster")}
    entries = []
    for suffix, knobs in case["grid"]:
        plan = full_plan(knobs, global_batch_size=case["global_batch_size"], seq_len=case["seq_len"])
        if parse_plan(plan) == parse_plan(tuned):
            continue  # the tuner picked this one itself
        entries.append({"name": f"{case['tag']}-{suffix}", "group": "a", "model": case["model"], "plan": plan})
    # last: on several ranks launcher.runtime.bench stops at an out-of-memory plan, and the tuner's may be the fullest
    entries.append({"name": f"{case['tag']}-tuner", "group": "a", "tuner": True, "model": case["model"],
                    "plan": tuned})
    header = [f"tuner: loadmaster plan {case['model']} --cluster {case['cluster']} --global-batch-size "
              f"{case['global_batch_size']} --seq-len {case['seq_len']} (default space, float8 off); "
              f"{seconds:.1f} s, gap to bound {result.gap:.2%}"
              + ("; kernel choices by planner.space.best_kernels" if case.get("kernels") else ""),
              f"predicted ({profile_for(load_cluster(case['cluster'])).name} profile):"]
    for e in entries:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            p = predict(case["model"], case["cluster"], parse_plan(e["plan"]))
        header.append(f"  {e['name']:26} step {p.step_time_s:6.3f} s  {p.tokens_per_s_per_gpu:8,.0f} tok/s/GPU  "
                      f"peak {p.peak_memory_bytes / GiB:6.1f} GiB{'' if p.feasible else '  (predicted OOM)'}")
    return entries, header


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    files = sorted({c.get("file", f"tuner_vs_grid_{c['gpus']}gpu.yaml") for c in CASES})
    for name in (argv or files):
        cases = [c for c in CASES if c.get("file", f"tuner_vs_grid_{c['gpus']}gpu.yaml") == name]
        entries, header = [], []
        for case in cases:
            e, h = make_case(case)
            entries += e
            header += h
        path = HERE / name
        comment = "\n".join(["# Tuner vs hand grid, made by benchmarks/gpu/make_grid.py; "
                             "launcher.runtime.bench input.", "# The entry with `tuner: true` is the tuner's plan."]
                            + [f"# {line}" for line in header])
        body = "".join(f"- {yaml.safe_dump(e, default_flow_style=True, sort_keys=False, width=400).strip()}\n"
                       for e in entries)
        path.write_text(comment + "\n" + body)
        print(f"{path}:\n" + "\n".join(header))
    return 0


if __name__ == "__main__":
    sys.exit(main())
