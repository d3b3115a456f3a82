"""Train one plan on every rank: ``torchrun --nproc-per-node G -m launcher.runtime.train --plan plan.yaml --model M``.

Flags are long and distinct from torchrun's own (torchrun rejects script flags that prefix its flags).
Exit codes (launcher/runtime/faults.py): 0 done, 2 user error (one line on every rank, before any collective),
3 a collective timed out, 75 preempted by SIGTERM (checkpoint saved, RUN/preempted written; rerun to resume).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import warnings

from costmodel import SpecError, load_model, load_plan
from launcher.runtime.config import TrainConfig, validate, world_size_from_env
from launcher.runtime.faults import (EXIT_COLLECTIVE_TIMEOUT, EXIT_PREEMPTED, EXIT_USER_ERROR, is_timeout,
                                     timeout_message)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="launcher.runtime.train", description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("--plan", required=True, help="plan YAML (costmodel.Plan keys)")
    p.add_argument("--model", help="model recipe name or path (default: the plan's model)")
    p.add_argument("--steps", type=int, default=10, help="optimizer steps to reach")
    p.add_argument("--data", help="flat binary token file (default: synthetic tokens)")
    p.add_argument("--data-dtype", choices=["uint16", "uint32"], help="token width in --data")
    p.add_argument("--out", help="run directory (metrics.jsonl, summary.json, checkpoints/)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=3e-4, help="peak learning rate")
    p.add_argument("--warmup-steps", type=int, help="linear LR warm-up steps (default: steps // 10)")
    p.add_argument("--optimizer", choices=["adamw", "sgd"], default="adamw")
    p.add_argument("--checkpoint-every", type=int, default=0, help="checkpoint every K steps (and at the end)")
    p.add_argument("--keep-checkpoints", type=int, default=2, help="complete checkpoints to keep")
    p.add_argument("--collective-timeout-s", type=float, default=600.0, help="fail a collective stuck this long")
    p.add_argument("--cluster", help="cluster recipe for the prediction (default: detected from the GPUs)")
    p.add_argument("--timing-warmup-steps", type=int, default=2, help="steps left out of the summary medians")
    p.add_argument("--param-dtype", choices=["bfloat16", "float32"], help="compute dtype (default: bf16 on GPU)")
    return p.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Load and check everything a rank can check alone (SpecError on user errors)."""
    plan = load_plan(args.plan)
    model_ref = args.model or plan.model
    if not model_ref:
        raise SpecError(args.plan, "model", "the plan names no model and --model is missing", "pass --model")
    cfg = TrainConfig(plan=plan, model=load_model(model_ref), steps=args.steps, seed=args.seed, lr=args.lr,
                      warmup_steps=args.warmup_steps, optimizer=args.optimizer, data=args.data,
                      data_dtype=args.data_dtype, out=args.out, checkpoint_every=args.checkpoint_every,
                      keep_checkpoints=args.keep_checkpoints, collective_timeout_s=args.collective_timeout_s,
                      cluster=args.cluster, timing_warmup_steps=args.timing_warmup_steps,
                      param_dtype=args.param_dtype, plan_source=str(args.plan))
    validate(cfg, world_size_from_env())
    return cfg


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    warnings.formatwarning = lambda msg, cat, *a, **k: f"warning: {msg}\n"
    try:
        cfg = config_from_args(args)
    except (SpecError, ValueError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr, flush=True)
        return EXIT_USER_ERROR
    from launcher.runtime.trainer import close_distributed, init_distributed, run
    init_distributed(cfg.collective_timeout_s)
    try:
        summary = run(cfg)
    except Exception as e:
        if not is_timeout(e):
            raise
        print(f"error: {timeout_message(e, cfg.collective_timeout_s)}", file=sys.stderr, flush=True)
        os._exit(EXIT_COLLECTIVE_TIMEOUT)  # the group is broken: no barrier, no clean teardown
    close_distributed()
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({k: summary.get(k) for k in ("steps_done", "final_loss", "step_time_s",
                                                      "tokens_per_s_per_gpu", "mfu", "peak_memory_bytes",
                                                      "preempted")}), flush=True)
    return EXIT_PREEMPTED if summary["preempted"] else 0


if __name__ == "__main__":
    sys.exit(main())
