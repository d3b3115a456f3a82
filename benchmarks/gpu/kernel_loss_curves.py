"""300-step loss curves of Llama-3.2-1B, bf16 with the kernels the committed runs ran against each new kernel
path, same data and seed: the last 20 steps' mean loss of every path within 0.5 % of the baseline's.

    python -m benchmarks.gpu.kernel_loss_curves --out DIR [--budget-s 170] [--steps 300] [--cpu-smoke]

Arms (one plan key changed each, launcher.runtime.kernels): baseline (rope eager_transposed, eager loss, PyTorch
norm and SwiGLU), rope-eager (the new default), loss-liger-fused, loss-compiled, rope-liger, swiglu-liger,
norm-liger; a liger arm whose kernel cannot run is reported as fallen back (its summary's ``kernels``), not
compared. Each arm trains 300 steps of 2 × 1024 tokens (eager blocks, zero 3, no checkpointing) on the Zipf-bigram
token file of benchmarks/fp8_loss_curves.py, in this process (launcher.runtime.trainer.run, no checkpoint), so
the whole job takes ~2.5 minutes on an H200. Writes DIR/<arm>/{metrics.jsonl,summary.json} and
DIR/kernel_loss_curves.json, then prints the table.
"""
from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

from benchmarks.gpu import kit

MODEL = "llama3.2-1b"
PLAN = dict(global_batch_size=2, micro_batch_size=2, seq_len=1024, dp=1, tp=1, pp=1, zero=3, recompute="none")
BASELINE = {"rope_impl": "eager_transposed", "loss_impl": "eager", "norm_impl": "eager", "swiglu_impl": "eager"}
ARMS = {"baseline": {}, "rope-eager": {"rope_impl": "eager"}, "loss-liger-fused": {"loss_impl": "liger_fused"},
        "loss-compiled": {"loss_impl": "compiled"}, "rope-liger": {"rope_impl": "liger"},
        "swiglu-liger": {"swiglu_impl": "liger"}, "norm-liger": {"norm_impl": "liger"}}
LAST, TOLERANCE = 20, 0.005


def run_arm(name: str, *, out: Path, tokens: Path, steps: int, smoke: bool) -> dict:
    from costmodel import load_model, parse_plan
    from launcher.runtime.config import TrainConfig
    from launcher.runtime.trainer import run
    plan = parse_plan({**PLAN, **BASELINE, **ARMS[name]}, f"kernel_loss_curves:{name}")
    if smoke:
        plan = plan.replace(seq_len=64)
    model = load_model(kit.TINY if smoke else MODEL)
    cfg = TrainConfig(plan=plan, model=model, steps=steps, data=str(tokens), out=str(out / name), resume=False,
                      checkpoint_at_end=False, timing_warmup_steps=3, seed=0,
                      cluster=None if smoke else kit.one_gpu_cluster(),
                      compile_backend="aot_eager" if smoke else "inductor")
    return run(cfg)


def last_mean(losses: list[float]) -> float:
    return statistics.fmean(losses[-LAST:])


def main(argv: list[str] | None = None) -> int:
    ap = kit.parser(__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--arms", default=",".join(ARMS), help="comma-separated arms, baseline first")
    ap.set_defaults(budget_s=170.0)
    args = ap.parse_args(argv)
    deadline = kit.Deadline(args.budget_s)
    kit.install_wheels()
    from benchmarks.fp8_loss_curves import write_zipf_tokens
    from costmodel import load_model
    from launcher.runtime.trainer import close_distributed, init_distributed
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    steps = min(args.steps, 6) if args.cpu_smoke else args.steps
    vocab = load_model(kit.TINY if args.cpu_smoke else MODEL).vocab_size
    tokens = out / "zipf_tokens.bin"
    need = steps * PLAN["global_batch_size"] * (PLAN["seq_len"] + 1) + 1
    if not tokens.is_file():
        write_zipf_tokens(tokens, num_tokens=need, vocab_size=vocab)
    init_distributed(600)
    results, per_arm_s = {}, None
    for name in args.arms.split(","):
        if per_arm_s is not None and not deadline.allows(per_arm_s * 1.1):
            results[name] = {"skipped": f"budget: {deadline.left():.0f} s left, an arm took {per_arm_s:.0f} s"}
            continue
        t0 = time.perf_counter()
        summary = run_arm(name, out=out, tokens=tokens, steps=steps, smoke=args.cpu_smoke)
        took = time.perf_counter() - t0
        per_arm_s = max(per_arm_s or 0.0, took)
        results[name] = {"kernels": summary["kernels"], "losses": summary["losses"], "wall_s": took,
                         "step_time_s": summary.get("step_time_s"), "last_mean": last_mean(summary["losses"])}
    base = results.get("baseline", {}).get("last_mean")
    for name, r in results.items():
        if "last_mean" not in r or base is None:
            continue
        r["rel_diff"] = r["last_mean"] / base - 1
        asked = {**BASELINE, **ARMS[name]}
        r["ran_as_asked"] = r["kernels"] == asked
        r["within_tolerance"] = abs(r["rel_diff"]) <= TOLERANCE if r["ran_as_asked"] else None
    report = {"model": MODEL if not args.cpu_smoke else "tiny-smoke", "plan": PLAN, "steps": steps, "last": LAST,
              "tolerance": TOLERANCE, "device": kit.device_name(), "versions": kit.versions(), "arms": results}
    (out / "kernel_loss_curves.json").write_text(json.dumps(report, indent=1) + "\n")
    close_distributed()
    rows = [{"arm": n, **{k: v for k, v in r.items() if k != "losses"},
             "ran": ("yes" if r.get("ran_as_asked") else "fell back") if "kernels" in r else None}
            for n, r in results.items()]
    print(kit.table(rows, [("arm", "arm", ""), ("ran", "ran", ""), ("last-20 mean loss", "last_mean", ".4f"),
                           ("vs baseline", "rel_diff", "+.3%"), ("within 0.5 %", "within_tolerance", ""),
                           ("step s", "step_time_s", ".3f"), ("wall s", "wall_s", ".0f"), ("skipped", "skipped", "")]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
