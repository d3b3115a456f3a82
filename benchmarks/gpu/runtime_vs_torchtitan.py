"""The same plans run by loadmaster's trainer and by TorchTitan on one GPU: step time, tokens/s/GPU and
peak memory of each engine, one JSON line per (plan, engine).

    python -m benchmarks.gpu.runtime_vs_torchtitan --out DIR [--budget-s 320] [--steps 12] [--warmup 2] [--cpu-smoke]

Six plans (PLANS): Llama-3.2-1B and -3B shapes (untied, 128k vocabulary: TorchTitan's llama3 has no tying) and an
8-block slice of Llama-3-8B; checkpointing none / selective / full; compile on and off; float8 on one. Each
engine runs every plan in one process of its own: loadmaster through launcher.runtime.bench's ``measure`` (the
in-process trainer), TorchTitan 0.2.2 through benchmarks/gpu/torchtitan_synth.py (its wheels from .whl). Both run
FSDP2 (one rank, re-sharding after forward), bf16 compute with fp32 master weights and reduction, fused AdamW,
clipping at 1.0, the fp32 cross-entropy, SDPA. Compile means compiled blocks and a compiled loss in both
(TorchTitan's compile.components default; loadmaster's ``loss_impl: compiled``). What differs and stays:
``selective`` is each engine's own policy (loadmaster saves every matmul output, TorchTitan every second one:
less memory, more recompute), and each engine's RoPE (loadmaster: real rotate-half; TorchTitan: complex).
Median step time over the steps after ``--warmup`` (12 steps, 10 timed); peak memory is
torch.cuda.max_memory_allocated over all steps. A plan TorchTitan cannot run is run by the plain FSDP2 script
(benchmarks/plain_fsdp2.py, engine ``plain``) where that script supports it and time is left.

Writes DIR/runtime-vs-torchtitan.jsonl (keys plan, engine, gpu, step_time_s, tokens_per_s_per_gpu,
peak_memory_bytes; ``error`` when a plan could not run) — commit it as benchmarks/data/runtime-vs-torchtitan.jsonl —
and DIR/loadmaster-bench.jsonl (launcher.runtime.bench lines of the loadmaster runs: benchmarks/fidelity.py
scores them), then prints the comparison (benchmarks/runtime_vs_torchtitan.py prints it from the committed file).
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.gpu import kit

M1B, M3B, M8B8 = (f"benchmarks/gpu/models/{n}.yaml" for n in ("llama3.2-1b-untied", "llama3.2-3b-untied",
                                                             "llama3-8b-8l"))
ONE = dict(dp=1, tp=1, pp=1, zero=3)
PLANS = [
    {"name": "l1b-s4k-none", "model": M1B,
     "plan": dict(ONE, global_batch_size=2, micro_batch_size=2, seq_len=4096, recompute="none")},
    {"name": "l1b-s4k-full-cmp", "model": M1B,
     "plan": dict(ONE, global_batch_size=4, micro_batch_size=2, seq_len=4096, recompute="full", compile=True,
                  loss_impl="compiled")},
    {"name": "l3b-s4k-sel", "model": M3B,
     "plan": dict(ONE, global_batch_size=2, micro_batch_size=1, seq_len=4096, recompute="selective")},
    {"name": "l3b-s4k-sel-cmp", "model": M3B,
     "plan": dict(ONE, global_batch_size=2, micro_batch_size=2, seq_len=4096, recompute="selective", compile=True,
                  loss_impl="compiled")},
    {"name": "l8b8l-s4k-full", "model": M8B8,
     "plan": dict(ONE, global_batch_size=2, micro_batch_size=2, seq_len=4096, recompute="full")},
    {"name": "l8b8l-s4k-none-cmp-fp8", "model": M8B8,
     "plan": dict(ONE, global_batch_size=2, micro_batch_size=2, seq_len=4096, recompute="none", compile=True,
                  loss_impl="compiled", fp8_layers=8)},
]
LINES = "runtime-vs-torchtitan.jsonl"
KEEP = ("plan", "engine", "gpu", "step_time_s", "tokens_per_s_per_gpu", "peak_memory_bytes")


def smoke_plans() -> list[dict]:
    """The plans shrunk to the tiny CPU model (no float8: torchao's kernels need a GPU)."""
    out = []
    for e in PLANS:
        plan = {k: v for k, v in e["plan"].items() if k not in ("fp8_layers", "loss_impl")}
        plan.update(seq_len=64, compile=False)
        out.append({"name": e["name"], "model": str(kit.TINY), "plan": plan})
    return out


def loadmaster_worker(plans: list[dict], lines: Path, bench_lines: Path, *, steps: int, warmup: int,
                      deadline_unix: float, smoke: bool) -> None:
    """Every plan through the in-process trainer (launcher.runtime.bench.measure), one line each as it ends."""
    from launcher.runtime.bench import measure
    from launcher.runtime.trainer import close_distributed, init_distributed, release_memory
    init_distributed(600)
    gpu, took = kit.device_name(), 0.0
    for e in plans:
        line = {"plan": e["name"], "engine": "loadmaster", "gpu": gpu, "model": e["model"], "plan_knobs": e["plan"]}
        if time.time() + 1.2 * took > deadline_unix:
            line["error"] = f"skipped: the budget would run out (previous plan took {took:.0f} s)"
        else:
            t0 = time.perf_counter()
            got = measure(e, steps=steps, warmup=warmup, cluster=None if smoke else kit.one_gpu_cluster(),
                          timeout_s=600, source="runtime_vs_torchtitan")
            took = time.perf_counter() - t0
            release_memory(True)
            kit.append_jsonl(bench_lines, got)
            line.update({k: got.get(k) for k in ("step_time_s", "tokens_per_s_per_gpu", "peak_memory_bytes")})
            line.update({k: got[k] for k in ("kernels", "error", "oom", "wall_s") if got.get(k) is not None})
        kit.append_jsonl(lines, line)
        print(json.dumps({k: line.get(k) for k in (*KEEP, "error")}), flush=True)
    close_distributed()


def plain_fallback(plans: list[dict], lines: Path, out: Path, *, steps: int, warmup: int, deadline: kit.Deadline,
                   env: dict) -> None:
    """benchmarks/plain_fsdp2.py for the plans TorchTitan could not run (not for lack of time) that it supports."""
    import yaml
    done = {(x["plan"], x["engine"]) for x in kit.read_jsonl(lines) if not x.get("error")}
    failed = {x["plan"] for x in kit.read_jsonl(lines) if x["engine"] == "torchtitan" and x.get("error")
              and not x["error"].startswith("skipped")}
    todo = [e for e in plans if e["name"] in failed and (e["name"], "plain") not in done
            and e["plan"].get("recompute") in ("none", "full") and not e["plan"].get("fp8_layers")]
    if not todo:
        return
    yaml_path, raw = out / "plain-plans.yaml", out / "plain-raw.jsonl"
    yaml_path.write_text(yaml.safe_dump(todo, sort_keys=False))
    for e in todo:
        if not deadline.allows(30):
            break
        cmd = [sys.executable, str(kit.ROOT / "benchmarks" / "plain_fsdp2.py"), "--plans", str(yaml_path),
               "--name", e["name"], "--steps", str(steps), "--warmup", str(warmup), "--out", str(raw)]
        subprocess.run(cmd, env=env, timeout=max(10.0, deadline.left()), check=False)
    for x in kit.read_jsonl(raw):
        kit.append_jsonl(lines, {"plan": x["name"], "engine": "plain", "gpu": x["device"],
                                 "step_time_s": x["step_time_s"], "tokens_per_s_per_gpu": x["tokens_per_s_per_gpu"],
                                 "peak_memory_bytes": x["peak_memory_bytes"], "plan_knobs": x["plan"]})
    raw.unlink(missing_ok=True)


def comparison(lines: list[dict]) -> list[dict]:
    """One row per plan: each engine's tokens/s/GPU and peak memory, loadmaster over the other engine."""
    rows = {}
    for x in lines:
        r = rows.setdefault(x["plan"], {"plan": x["plan"]})
        eng = x["engine"]
        if x.get("error"):
            r[f"{eng}_error"] = x["error"][:60]
            continue
        r[f"{eng}_tok_s"], r[f"{eng}_gib"] = x["tokens_per_s_per_gpu"], (x.get("peak_memory_bytes") or 0) / 2**30
        r["gpu"] = x.get("gpu")
    for r in rows.values():
        other = "torchtitan" if "torchtitan_tok_s" in r else "plain" if "plain_tok_s" in r else None
        r["vs"] = other
        if other and "loadmaster_tok_s" in r:
            r["speedup"] = r["loadmaster_tok_s"] / r[f"{other}_tok_s"]
            if r[f"{other}_gib"]:
                r["memory_ratio"] = r["loadmaster_gib"] / r[f"{other}_gib"]
    return list(rows.values())


COLUMNS = [("plan", "plan", ""), ("loadmaster tok/s", "loadmaster_tok_s", ",.0f"),
           ("torchtitan tok/s", "torchtitan_tok_s", ",.0f"), ("plain tok/s", "plain_tok_s", ",.0f"),
           ("speed-up", "speedup", ".3f"), ("loadmaster GiB", "loadmaster_gib", ".1f"),
           ("torchtitan GiB", "torchtitan_gib", ".1f"), ("memory ratio", "memory_ratio", ".3f"),
           ("torchtitan error", "torchtitan_error", "")]


def main(argv: list[str] | None = None) -> int:
    ap = kit.parser(__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--engines", default="loadmaster,torchtitan")
    ap.add_argument("--names", help="comma-separated plan names (default: all)")
    ap.set_defaults(budget_s=320.0)
    ap.add_argument("--worker", choices=["loadmaster"], help=argparse_hidden())
    ap.add_argument("--plans-json", help=argparse_hidden())
    ap.add_argument("--deadline-unix", type=float, help=argparse_hidden())
    args = ap.parse_args(argv)
    out = Path(args.out)
    if args.worker:
        loadmaster_worker(json.loads(Path(args.plans_json).read_text()), out / LINES, out / "loadmaster-bench.jsonl",
                          steps=args.steps, warmup=args.warmup, deadline_unix=args.deadline_unix,
                          smoke=args.cpu_smoke)
        return 0
    deadline = kit.Deadline(args.budget_s)
    out.mkdir(parents=True, exist_ok=True)
    site = kit.install_wheels()
    env = kit.child_env(site)
    plans = smoke_plans() if args.cpu_smoke else PLANS
    if args.names:
        plans = [e for e in plans if e["name"] in args.names.split(",")]
    steps, warmup = (3, 1) if args.cpu_smoke else (args.steps, args.warmup)
    plans_json = out / "plans.json"
    plans_json.write_text(json.dumps(plans, indent=1))
    engines = args.engines.split(",")
    lines = out / LINES
    if "loadmaster" in engines:
        end = time.time() + deadline.left() * (0.5 if "torchtitan" in engines else 0.9)   # both do the same work
        cmd = [sys.executable, "-m", "benchmarks.gpu.runtime_vs_torchtitan", "--worker", "loadmaster", "--out",
               str(out), "--plans-json", str(plans_json), "--deadline-unix", str(end), "--steps", str(steps),
               "--warmup", str(warmup)] + (["--cpu-smoke"] if args.cpu_smoke else [])
        _run(cmd, env, timeout=end - time.time() + 60)
    if "torchtitan" in engines:
        if args.cpu_smoke:   # TorchTitan needs a CUDA GPU: record it as not run, as a failed import would be
            for e in plans:
                kit.append_jsonl(lines, {"plan": e["name"], "engine": "torchtitan", "gpu": "cpu",
                                         "error": "TorchTitan needs a CUDA GPU (cpu smoke)"})
        else:
            end = time.time() + deadline.left() * 0.85
            cmd = [sys.executable, "-m", "benchmarks.gpu.torchtitan_synth", "--plans", str(plans_json), "--out",
                   str(lines), "--steps", str(steps), "--warmup", str(warmup), "--deadline-unix", str(end)]
            if not _run(cmd, env, timeout=end - time.time() + 60):
                reported = {x["plan"] for x in kit.read_jsonl(lines) if x["engine"] == "torchtitan"}
                for e in plans:
                    if e["name"] not in reported:
                        kit.append_jsonl(lines, {"plan": e["name"], "engine": "torchtitan", "gpu": kit.device_name(),
                                                 "error": "the TorchTitan process failed (see its output above)"})
        plain_fallback(plans, lines, out, steps=steps, warmup=warmup, deadline=deadline, env=env)
    rows = comparison(kit.read_jsonl(lines))
    print(f"\n{kit.versions()}")
    print(kit.table(rows, COLUMNS))
    return 0


def _run(cmd: list[str], env: dict, timeout: float) -> bool:
    """Run a worker; False if it failed or ran past ``timeout`` (then killed: its finished lines stay)."""
    try:
        return subprocess.run(cmd, env=env, timeout=max(5.0, timeout), check=False).returncode == 0
    except subprocess.TimeoutExpired:
        print(f"killed at its deadline: {' '.join(cmd[:4])}", flush=True)
        return False


def argparse_hidden():
    import argparse
    return argparse.SUPPRESS


if __name__ == "__main__":
    sys.exit(main())
