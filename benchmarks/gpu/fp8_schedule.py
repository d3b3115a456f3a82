"""Float8 schedules against bf16 on one GPU: the loss and the speed of four arms on two models.

    python -m benchmarks.gpu.fp8_schedule --out DIR [--budget-s 540] [--steps 300] [--models M,..] [--arms A,..]
    python -m benchmarks.gpu.fp8_schedule --out DIR --cpu-smoke     # tiny model, CPU, torchao emulation, seconds
    python -m benchmarks.fp8_schedule_report DIR                    # here: the table, the Pareto figure, docs/
    python -m benchmarks.gpu.fp8_schedule --make-plans              # here (the tuner needs pulp): rewrites PLANS

Every arm runs the tuner's plan for its model (PLANS: `loadmaster plan` on one H200 under ``--fp8-budget auto``,
compile pinned on, the float8 set rotating every 25 steps), on the same Zipf-bigram token file and seed:
``bf16`` (float8 off), ``static`` (the tuner's float8 count on the first blocks, fixed), ``window`` (the same
count, the sliding window, temperature 0) and ``loss-aware`` (the same count drawn loss-aware at the plan's
temperature, the sensitivity probe at its default interval). The trainer (launcher.runtime.trainer.run) runs in
this process, one arm after another, without checkpoints; compile time counts (the report shows tokens/s with and
without the first steps). Arms run in priority order (both models' bf16 and loss-aware, then window, then
static); an arm whose estimate (the plan's predicted step time × steps × 1.3 + 45 s of build and compile) would
overrun ``--budget-s`` is skipped and listed as such.

Writes DIR/<model>/<arm>/{metrics.jsonl,summary.json}, DIR/results.jsonl (one line per arm: wall time, steps,
skipped or failed) and the token file (``--tokens``, default DIR/zipf_tokens.bin: 5 MB; put it outside DIR
when DIR comes back over a network). The token file is a Zipf-bigram stream (``write_zipf_tokens``): token ids follow
a Zipf law over the vocabulary and each token is, with probability 1/2, a fixed random successor of the previous
base draw — structure a model learns beyond the unigram entropy, so the loss keeps falling for 300 steps.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[2]
PLANS = ROOT / "benchmarks" / "gpu" / "fp8_schedule_plans.yaml"
MODELS = {"llama3.2-1b": "llama3.2-1b", "llama3-8b-8l": "benchmarks/gpu/models/llama3-8b-8l.yaml"}
SHAPES = {"llama3.2-1b": (2, 2048), "llama3-8b-8l": (2, 2048)}
"""(global batch, sequence length): 4,096 tokens a step keeps 8 arms of 300 steps near 5 minutes on one H200
(predicted 0.09 and 0.15 s a step) while float8 still pays at these widths (predicted 2-5 %)."""
ARMS = ("bf16", "static", "window", "loss-aware")
PRIORITY = [("llama3.2-1b", "bf16"), ("llama3-8b-8l", "bf16"), ("llama3.2-1b", "loss-aware"),
            ("llama3-8b-8l", "loss-aware"), ("llama3.2-1b", "window"), ("llama3-8b-8l", "window"),
            ("llama3.2-1b", "static"), ("llama3-8b-8l", "static")]
ROTATION_STEPS = 25
"""12 periods in 300 steps: every block of a half-float8 model is visited six times by the sliding window."""
START_S = 45.0
"""Per-arm build, initialisation and compile allowance of the budget check (the earlier H200 loss runs took
60-90 s of start and compile cold; the on-disk inductor cache makes later arms cheaper)."""
SMOKE_MODEL = "benchmarks/gpu/models/tiny-smoke.yaml"


def write_zipf_tokens(path: Path, *, num_tokens: int, vocab_size: int, seed: int = 0, exponent: float = 1.1,
                      copy_prob: float = 0.5) -> None:
    """A flat token file: Zipf(exponent) ids over a shuffled vocabulary, each replaced with probability
    ``copy_prob`` by a fixed random successor of the previous base draw (a learnable bigram)."""
    rng = np.random.default_rng(seed)
    ranks = np.arange(1, vocab_size + 1, dtype=np.float64)
    cdf = np.cumsum(ranks ** -exponent)
    cdf /= cdf[-1]
    ids = rng.permutation(vocab_size)  # frequency rank -> token id
    base = ids[np.minimum(np.searchsorted(cdf, rng.random(num_tokens)), vocab_size - 1)]
    successor = rng.permutation(vocab_size)
    tokens = base.copy()
    copy = rng.random(num_tokens - 1) < copy_prob
    tokens[1:][copy] = successor[base[:-1][copy]]
    dtype = np.uint16 if vocab_size <= 65536 else np.uint32
    path.parent.mkdir(parents=True, exist_ok=True)
    tokens.astype(dtype).tofile(path)


def arm_plan(tuned, arm: str):
    """The plan of one arm, from the tuner's float8 plan."""
    if arm == "bf16":
        return tuned.replace(fp8_layers=0, fp8_rotation_steps=0, fp8_temperature=0.0)
    if arm == "static":
        return tuned.replace(fp8_rotation_steps=0, fp8_temperature=0.0)
    if arm == "window":
        return tuned.replace(fp8_temperature=0.0)
    return tuned


def load_plans(smoke: bool) -> dict:
    """model name -> (tuned plan, model spec, predicted step seconds); the tiny CPU versions with ``smoke``."""
    from benchmarks.gpu.smoke import smoke_plan
    from costmodel import load_model, parse_plan
    data = yaml.safe_load(PLANS.read_text())
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, entry in data["models"].items():
            model = load_model(MODELS[name])
            plan = entry["plan"]
            if smoke:   # rotation every 3 steps on 8 tiny blocks: draws, probes and windows all happen in 12 steps
                plan = {**smoke_plan(plan, model.num_hidden_layers), "fp8_rotation_steps": 3}
                model = load_model(SMOKE_MODEL)
            out[name] = (parse_plan(plan, PLANS), model, entry["predicted"]["fp8_step_s"])
    return out


def run_arm(name: str, arm: str, plan, model, *, out: Path, tokens: Path, steps: int, smoke: bool) -> dict:
    """Train one arm in this process (a 1-rank group); its summary."""
    from launcher.runtime.config import TrainConfig
    from launcher.runtime.trainer import run
    cfg = TrainConfig(plan=arm_plan(plan, arm), model=model, steps=steps, data=str(tokens), out=str(out / name / arm),
                      resume=False, checkpoint_at_end=False, timing_warmup_steps=min(10, steps // 3), seed=0,
                      fp8_skip_small=not smoke)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return run(cfg)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, help="run directory")
    ap.add_argument("--budget-s", type=float, default=540.0, help="wall seconds all arms may take")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--tokens", type=Path, help="token file (default DIR/zipf_tokens.bin; written when missing)")
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated, of: " + ", ".join(MODELS))
    ap.add_argument("--arms", default=",".join(ARMS), help="comma-separated, of: " + ", ".join(ARMS))
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny model on the CPU, 12 steps (pipeline check)")
    ap.add_argument("--make-plans", action="store_true", help="run the tuner here and rewrite " + PLANS.name)
    args = ap.parse_args(argv)
    if args.make_plans:
        return make_plans()
    if args.out is None:
        ap.error("--out is required")
    models, arms = args.models.split(","), args.arms.split(",")
    bad = sorted(set(models) - set(MODELS)) + sorted(set(arms) - set(ARMS))
    if bad:
        ap.error(f"unknown {bad}; models are {list(MODELS)}, arms {list(ARMS)}")
    steps = min(args.steps, 12) if args.cpu_smoke else args.steps
    plans = load_plans(args.cpu_smoke)
    t_start = time.perf_counter()
    tokens = args.tokens or args.out / "zipf_tokens.bin"
    need = max(steps * p.global_batch_size * p.seq_len + p.seq_len + 1 for p, _, _ in plans.values())
    vocab = max(m.vocab_size for _, m, _ in plans.values())
    if not tokens.is_file() or tokens.stat().st_size < need * (2 if vocab <= 65536 else 4):
        write_zipf_tokens(tokens, num_tokens=need, vocab_size=vocab)
    import torch

    from launcher.runtime.trainer import close_distributed, init_distributed
    if args.cpu_smoke:
        torch.set_num_threads(1)   # a tiny model: more threads only fight over shared cores (15× slower on 2 busy)
    init_distributed(600.0)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU (torchao emulation)"
    print(f"torch {torch.__version__} on {device}", flush=True)
    results = args.out / "results.jsonl"
    for name, arm in PRIORITY:
        if name not in models or arm not in arms:
            continue
        plan, model, step_s = plans[name]
        estimate = START_S + 1.3 * step_s * steps
        elapsed = time.perf_counter() - t_start
        line = {"model": name, "arm": arm, "steps": steps, "num_layers": model.num_hidden_layers,
                "device": device, "torch": torch.__version__, "smoke": args.cpu_smoke, "estimate_s": round(estimate, 1)}
        if not args.cpu_smoke and elapsed + estimate > args.budget_s:
            line.update(skipped=f"{elapsed:.0f} s spent + {estimate:.0f} s estimated > --budget-s {args.budget_s:.0f}")
        else:
            t0 = time.perf_counter()
            try:
                s = run_arm(name, arm, plan, model, out=args.out, tokens=tokens, steps=steps, smoke=args.cpu_smoke)
                line.update(steps_done=s["steps_done"], final_loss=s["final_loss"], step_time_s=s["step_time_s"],
                            peak_memory_bytes=s["peak_memory_bytes"])
            except Exception as e:   # one failed arm (an OOM, a compile error) must not lose the others
                line.update(skipped=f"failed: {type(e).__name__}: {' '.join(str(e).split())[:300]}")
            line["wall_s"] = round(time.perf_counter() - t0, 1)
        print(json.dumps(line), flush=True)
        with open(results, "a") as f:
            f.write(json.dumps(line) + "\n")
    close_distributed()
    print(f"all arms: {time.perf_counter() - t_start:.0f} s; table: python -m benchmarks.fp8_schedule_report "
          f"{args.out}", flush=True)
    return 0


def make_plans() -> int:
    """Run the tuner for each model on one H200 under the auto float8 budget and write PLANS (here: pulp)."""
    import planner
    from costmodel import load_model, parse_fp8_budget
    from costmodel.fp8 import probe_every
    from costmodel.prediction import predict
    budget = parse_fp8_budget("auto")
    out = {"budget": budget, "cluster": "1xh200", "models": {}}
    for name, ref in MODELS.items():
        gbs, seq = SHAPES[name]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            best = planner.plan(ref, "1xh200", global_batch_size=gbs, seq_len=seq, compile=True, fp8_budget=budget,
                                fp8_rotation_steps=ROTATION_STEPS).best
            plan = best.plan
            bf16 = predict(load_model(ref), "1xh200", arm_plan(plan, "bf16"))
        out["models"][name] = {
            "plan": plan.to_dict(),
            "predicted": {"bf16_step_s": round(bf16.step_time_s, 5), "fp8_step_s": round(best.step_time_s, 5),
                          "speedup": round(bf16.step_time_s / best.step_time_s, 4),
                          "probe_s": round(best.prediction.fp8_probe_s, 5),
                          "probe_every": probe_every(best.prediction.fp8_probe_s, best.step_time_s)}}
    header = ("# The tuner's plans for benchmarks/gpu/fp8_schedule.py, written by `python -m "
              "benchmarks.gpu.fp8_schedule --make-plans`\n# (planner.plan on 1xh200, compile pinned, fp8_budget auto, "
              f"rotation every {ROTATION_STEPS} steps); predictions for one H200. Do not edit by hand.\n")
    PLANS.write_text(header + yaml.safe_dump(out, sort_keys=False))
    print(PLANS.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
