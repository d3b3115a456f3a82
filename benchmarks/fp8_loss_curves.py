"""300-step bf16 vs float8 (rotating) loss curves of Llama-3.2-1B on one GPU, on a synthetic token file.

Superseded by ``python -m benchmarks.gpu.fp8_schedule`` (four float8 schedules on two models); kept
because the earlier loss-bf16 and loss-fp8 runs (benchmarks/data/loss) were measured with it.

    python benchmarks/fp8_loss_curves.py --out DIR [--variant bf16|fp8|both] [--steps 300] [--smoke]
    python benchmarks/plot_loss_curves.py DIR -o benchmarks/loss_curves.png

The token file is a Zipf-bigram stream: token ids follow a Zipf law (exponent 1.1) over the 128k vocabulary,
and each token is, with probability 1/2, a fixed random function of the previous base token — structure a
model can learn beyond the unigram entropy, so the curves keep falling for 300 steps. It is generated here
(deterministic, seed 0; one epoch of 300 × 4 × 2048 ≈ 2.5 M tokens, 10 MB, uint32) and read with
``launcher.runtime.train``'s ``--data`` reader (launcher.runtime.data.TokenFile).
Both arms run the plans recipes/plans/llama3.2-1b-loss-{bf16,fp8rot}.yaml (4 × 2048 tokens a step,
compiled; float8 on 8 of 16 blocks, the window moving every 25 steps) through launcher.runtime.trainer.run in this
process, without the end-of-run checkpoint ``launcher.runtime.train`` always writes (20 GB of DCP for a 1B model with
AdamW state). Budget: predicted 0.13 s/step, so ~40-60 s of steps plus ~60-90 s of start, compile and
recompiles (the float8 window flips) per arm, ~2.5 min; the two arms can run on two GPUs at
once, or one after the other (~5 min, well inside the 9-minute limit) on one.
Writes DIR/<variant>/metrics.jsonl and summary.json. ``--smoke`` runs a tiny model for a few steps on CPU.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from benchmarks.gpu.fp8_schedule import write_zipf_tokens

ROOT = Path(__file__).resolve().parent.parent
PLANS = {"bf16": ROOT / "recipes/plans/llama3.2-1b-loss-bf16.yaml",
         "fp8": ROOT / "recipes/plans/llama3.2-1b-loss-fp8rot.yaml"}
SMOKE_MODEL = ROOT / "benchmarks/gpu/models/tiny-smoke.yaml"


def run_variant(variant: str, *, out: Path, tokens: Path, steps: int, smoke: bool) -> dict:
    """Train one arm in this process (a 1-rank process group) and return its summary."""
    from costmodel import load_model, load_plan
    from launcher.runtime.config import TrainConfig
    from launcher.runtime.trainer import run
    plan = load_plan(PLANS[variant])
    model = load_model(SMOKE_MODEL if smoke else plan.model)
    if smoke:  # tiny and eager on CPU: torch.compile would dominate a smoke test
        plan = plan.replace(seq_len=64, global_batch_size=2, micro_batch_size=2, compile=False,
                            fp8_layers=min(plan.fp8_layers, 2), fp8_rotation_steps=min(plan.fp8_rotation_steps, 2))
    cfg = TrainConfig(plan=plan, model=model, steps=steps, data=str(tokens), out=str(out / variant),
                      cluster="1xh200", resume=False, checkpoint_at_end=False, timing_warmup_steps=3,
                      fp8_skip_small=not smoke, seed=0)
    return run(cfg)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="run directory (DIR/bf16, DIR/fp8)")
    ap.add_argument("--variant", choices=["bf16", "fp8", "both"], default="both")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--tokens", help="token file (default: DIR/zipf_tokens.bin, generated when missing)")
    ap.add_argument("--smoke", action="store_true", help="tiny model, CPU, few steps")
    args = ap.parse_args(argv)
    out = Path(args.out)
    steps = min(args.steps, 6) if args.smoke else args.steps
    from costmodel import load_model, load_plan
    plan = load_plan(PLANS["bf16"])
    model = load_model(SMOKE_MODEL if args.smoke else plan.model)
    seq, gbs = (64, 2) if args.smoke else (plan.seq_len, plan.global_batch_size)
    tokens = Path(args.tokens) if args.tokens else out / "zipf_tokens.bin"
    if not tokens.is_file():
        t0 = time.perf_counter()
        write_zipf_tokens(tokens, num_tokens=steps * gbs * seq + seq + 1, vocab_size=model.vocab_size)
        print(f"wrote {tokens}: {steps * gbs * seq + seq + 1:,} tokens in {time.perf_counter() - t0:.1f} s",
              flush=True)
    from launcher.runtime.trainer import close_distributed, init_distributed
    init_distributed(600.0)
    variants = ["bf16", "fp8"] if args.variant == "both" else [args.variant]
    for v in variants:
        t0 = time.perf_counter()
        s = run_variant(v, out=out, tokens=tokens, steps=steps, smoke=args.smoke)
        print(json.dumps({"variant": v, "wall_s": round(time.perf_counter() - t0, 1), "steps": s["steps_done"],
                          "final_loss": s["final_loss"], "step_time_s": s["step_time_s"],
                          "tokens_per_s_per_gpu": s["tokens_per_s_per_gpu"],
                          "peak_memory_bytes": s["peak_memory_bytes"]}), flush=True)
    close_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
