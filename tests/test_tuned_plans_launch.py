"""Every plan the tuner returns runs: 200 random jobs (dense and tied-embedding models, a mixture of experts,
clusters of 1 to 64 GPUs, pins of tp, pp, zero, schedule, micro-batch and compile) are tuned, and each plan must
pass the trainer's own config check (launcher.runtime.config.validate, as every rank runs it) and
`loadmaster launch --dry-run` (resolve_launch and its fit check, predict_launch)."""
from __future__ import annotations

import random
import warnings

import pytest

from costmodel import load_cluster, load_model
from launcher.launch.request import LaunchRequest, predict_launch, resolve_launch
from launcher.runtime.config import TrainConfig, validate
from planner.space import SearchSpace
from planner.tuner import tune

MODELS = ["llama3.2-1b", "llama3.2-3b", "llama3.2-3b-untied", "llama2-7b", "llama3-8b", "qwen2.5-7b",
          "mistral-7b", "gpt3-1.3b", "llama3-70b", "mixtral-8x7b"]
CLUSTERS = ["1xh200", "1xh100", "2xh200", "4xh200", "8xh100", "2xl4", "4xl4", "8xa100-40g", "2x8xh100", "8x8xh100"]
JOBS = 200


def _job(rng: random.Random) -> tuple[str, str, int, int, dict]:
    model, cluster = rng.choice(MODELS), rng.choice(CLUSTERS)
    n = load_cluster(cluster).num_gpus
    seq = rng.choice([512, 1024, 2048, 4096, 8192])
    gbs = n * rng.choice([1, 2, 4, 8]) * rng.choice([1, 2])
    pins: dict = {}
    for key, values in (("tp", [1, 2, 4, 8]), ("pp", [1, 2, 4]), ("zero", [(0,), (2,), (3,)]),
                        ("schedules", [("1F1B",), ("Interleaved1F1B",), ("GPipe",)]),
                        ("micro_batch_size", [1, 2]), ("compile", [(True,), (False,)])):
        if rng.random() < 0.2:
            pins[key] = rng.choice(values)
    return model, cluster, gbs, seq, pins


def _cases() -> list:
    rng = random.Random(20261206)
    return [_job(rng) for _ in range(JOBS)]


def test_two_hundred_tuned_plans_pass_the_trainer_check_and_launch_dry_run(tmp_path, monkeypatch):
    from launcher.runtime.parallel import cp
    monkeypatch.setattr(cp, "cp_unavailable", lambda: None)   # the plans are for GPU clusters: CP would run there
    planned, tied, pipelined, moe = 0, 0, 0, 0
    for i, (model, cluster, gbs, seq, pins) in enumerate(_cases()):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = tune(model, cluster, gbs, seq, SearchSpace(**pins), top_k=1, time_limit_s=10, diagnose=False)
        if res.best is None:
            continue
        plan, spec = res.best.plan, load_model(model)
        planned += 1
        tied += spec.tie_word_embeddings
        pipelined += plan.pp > 1
        moe += spec.is_moe
        what = f"job {i}: {model} on {cluster}, {gbs}×{seq}, pins {pins}: {plan.to_dict()}"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            validate(TrainConfig(plan=plan, model=spec, fp8_emulate=True), plan.world_size)
            path = tmp_path / f"plan{i}.yaml"
            path.write_text(plan.to_yaml())
            launch = resolve_launch(LaunchRequest(target=str(path), out=str(tmp_path / f"run{i}"), dry_run=True),
                                    cuda_devices=0, gpu_kind=None, dry_run=True)
            assert launch.nnodes * launch.nproc_per_node == plan.world_size, what
            pred = predict_launch(launch)
            assert pred is not None and pred.feasible, what
    assert planned >= 150 and tied >= 10 and pipelined >= 10 and moe >= 3, (planned, tied, pipelined, moe)


@pytest.mark.parametrize("pins", [{"zero": (5,)}, {"schedules": ("Nope",)}, {"virtual_stages": (1,)}])
def test_pins_the_space_refuses_are_value_errors(pins):
    with pytest.raises(ValueError):
        tune("llama3-8b", "8xh100", 64, 4096, SearchSpace(**pins), top_k=1)
