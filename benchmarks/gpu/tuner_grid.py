"""The tuner's plan against a hand-picked grid on one H200, run by the trainer.

    python -m benchmarks.gpu.tuner_grid --out DIR [--budget-s 200] [--plans benchmarks/gpu/tuner_vs_grid_8k.yaml]
        [--cpu-smoke]

The grid file (made here by ``python benchmarks/gpu/make_grid.py tuner_vs_grid_8k.yaml``: the tuner needs pulp)
holds the tuner's plan for Llama-3.2-1B's shape (untied, 128k vocabulary), seq 8192, global batch 8 — with the
kernel choices planner.space.best_kernels priced fastest for it — and 8 hand-picked plans: FSDP ± checkpointing
at micro-batch 1/2/4, compiled or not, TorchTitan's default (FSDP + full checkpointing, micro-batch 1) first.
launcher.runtime.bench runs them in one process (5 steps, medians over the last 3) and writes DIR/bench.jsonl as
plans finish; lines carry the plan, model, cluster and kernels, so ``benchmarks/fidelity.py DIR/bench.jsonl``
scores the cost model on them (commit as benchmarks/data/h200-1gpu-grid-8k.jsonl). The process is killed at the
budget (a rerun with the same --out continues at the next plan). Prints the ranking, whether the tuner's plan is
the fastest, and its speed-up over TorchTitan's default (target ≥ 1.3×).
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from benchmarks.gpu import kit

GRID = kit.ROOT / "benchmarks" / "gpu" / "tuner_vs_grid_8k.yaml"
DEFAULT_SUFFIX = "-fsdp-full-mb1"   # TorchTitan's default plan in the grid


def smoke_file(src: Path, out: Path) -> Path:
    """The grid on the tiny CPU model: same names and knobs, seq 64, eager."""
    entries = yaml.safe_load(src.read_text())
    for e in entries:
        e["model"] = str(kit.TINY)
        e["plan"].update(seq_len=64, compile=False)
        e["plan"].pop("loss_impl", None)
    path = out / "grid-smoke.yaml"
    path.write_text(yaml.safe_dump(entries, sort_keys=False))
    return path


def verdict(lines: list[dict]) -> dict:
    ok = sorted((d for d in lines if d.get("step_time_s") and not d.get("oom") and not d.get("error")),
                key=lambda d: d["step_time_s"])
    tuner = next((d for d in ok if d["name"].endswith("-tuner")), None)
    default = next((d for d in ok if d["name"].endswith(DEFAULT_SUFFIX)), None)
    return {"ran": len(ok), "of": len(lines), "fastest": ok[0]["name"] if ok else None,
            "tuner_is_fastest": bool(tuner and ok and ok[0] is tuner),
            "tuner_vs_best": tuner["step_time_s"] / ok[0]["step_time_s"] - 1 if tuner and ok else None,
            "speedup_over_torchtitan_default": default["step_time_s"] / tuner["step_time_s"]
            if tuner and default else None}


def main(argv: list[str] | None = None) -> int:
    ap = kit.parser(__doc__.splitlines()[0])
    ap.add_argument("--plans", default=str(GRID))
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.set_defaults(budget_s=200.0)
    args = ap.parse_args(argv)
    deadline = kit.Deadline(args.budget_s)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    site = kit.install_wheels()
    plans = smoke_file(Path(args.plans), out) if args.cpu_smoke else Path(args.plans)
    steps, warmup = (3, 1) if args.cpu_smoke else (args.steps, args.warmup)
    cmd = [sys.executable, "-m", "launcher.runtime.bench", "--plans", str(plans), "--out", str(out),
           "--steps", str(steps), "--warmup", str(warmup)]
    if not args.cpu_smoke:
        cmd += ["--cluster", kit.one_gpu_cluster()]
    try:
        subprocess.run(cmd, env=kit.child_env(site), timeout=max(5.0, deadline.left() - 5), check=False)
    except subprocess.TimeoutExpired:
        print("bench killed at the budget: the lines written so far stay; rerun with the same --out to continue")
    lines = kit.read_jsonl(out / "bench.jsonl")
    rows = sorted(({"plan": d["name"], "step_s": d.get("step_time_s"), "tok_s": d.get("tokens_per_s_per_gpu"),
                    "gib": (d.get("peak_memory_bytes") or 0) / 2**30,
                    "pred_s": (d.get("predicted") or {}).get("step_time_s"), "err": d.get("error_pct"),
                    "oom": d.get("oom") or None} for d in lines), key=lambda r: r["step_s"] or 1e9)
    print(kit.table(rows, [("plan", "plan", ""), ("step s", "step_s", ".3f"), ("tok/s/GPU", "tok_s", ",.0f"),
                           ("peak GiB", "gib", ".1f"), ("predicted s", "pred_s", ".3f"), ("error %", "err", "+.1f"),
                           ("OOM", "oom", "")]))
    v = verdict(lines)
    sp = v["speedup_over_torchtitan_default"]
    print(f"\n{v['ran']} of {v['of']} plans ran; fastest {v['fastest']}; tuner's plan fastest: {v['tuner_is_fastest']}"
          + (f"; {sp:.2f}× TorchTitan's default (target ≥ 1.3×)" if sp else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
