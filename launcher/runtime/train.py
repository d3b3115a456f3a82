"""Train one plan on every rank: ``torchrun --nproc-per-node G -m launcher.runtime.train --plan plan.yaml --model M``.

Every flag but --plan and --model is a TrainConfig field (its docstring is the help; costmodel/flags.py builds
them). Flags are long and distinct from torchrun's own (torchrun rejects script flags that prefix its flags).
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
from costmodel.flags import FlagParser, add_flags, from_namespace
from launcher.runtime.config import TrainConfig, validate, world_size_from_env
from launcher.runtime.faults import (EXIT_COLLECTIVE_TIMEOUT, EXIT_PREEMPTED, EXIT_USER_ERROR, is_timeout,
                                     timeout_message)


def parser(*, add_help: bool = True) -> FlagParser:
    """The trainer's flags: ``--plan`` and ``--model`` here, every other one generated from TrainConfig's fields.
    Its ``parse_args`` raises FlagError on a bad command line."""
    p = FlagParser(prog="python -m launcher.runtime.train", description=__doc__.splitlines()[0], add_help=add_help)
    p.add_argument("--plan", required=True, metavar="PATH", help="Plan YAML (costmodel.Plan keys).")
    p.add_argument("--model", metavar="MODEL", help="Model recipe name or path (default: the plan's model).")
    add_flags(p, TrainConfig)
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Load and check everything a rank can check alone (SpecError on user errors)."""
    plan = load_plan(args.plan)
    model_ref = args.model or plan.model
    if not model_ref:
        raise SpecError(args.plan, "model", "the plan names no model and --model is missing", "pass --model")
    cfg = from_namespace(TrainConfig, args, plan=plan, model=load_model(model_ref), plan_source=str(args.plan))
    validate(cfg, world_size_from_env())
    return cfg


def main(argv: list[str] | None = None) -> int:
    warnings.formatwarning = lambda msg, cat, *a, **k: f"warning: {msg}\n"
    try:
        cfg = config_from_args(parser().parse_args(argv))
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
