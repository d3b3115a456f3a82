"""The mixture-of-experts block in the trainer: expert parallelism over gloo against a single-process reference
(5 SGD steps, losses and gradient norms within 1e-5), checkpoints that resume under another ep, and one rank of a
64-rank EP plan under PyTorch's fake process group (what `loadmaster rehearse` runs on one GPU)."""
from __future__ import annotations

import functools
import multiprocessing as mp
import shutil

import pytest
from trainer_harness import TINY_MOE, assert_close, config, plan_of, reference, run_plan, spawn

from costmodel import ModelSpec

RTOL = 1e-5
SIGMOID_MOE = ModelSpec(**{**TINY_MOE.__dict__, "scoring_func": "sigmoid", "routed_scaling_factor": 2.5,
                           "num_shared_experts": 0, "first_k_dense_replace": 0, "name": "tiny-moe-sigmoid"})


@functools.lru_cache(maxsize=None)
def ref(model: ModelSpec, micro_batch_size: int):
    # the balance loss is taken per micro-batch (per rank): the reference splits the batch the same way
    return reference(plan_of(), model=model, micro_batch_size=micro_batch_size)


def check(kw: dict, model: ModelSpec = TINY_MOE) -> None:
    plan = plan_of(**kw)
    out = spawn(run_plan, plan.world_size, config(plan, model=model))
    losses, norms = ref(model, plan.micro_batch_size)
    for summary in out:
        assert_close(summary["losses"], losses, rtol=RTOL, what=f"{kw} loss")
        assert_close(summary["grad_norms"], norms, rtol=RTOL, what=f"{kw} grad norm")


def test_moe_block_without_expert_parallelism_matches_reference():
    check(dict(dp=2))


def test_expert_parallel_2_matches_reference():
    check(dict(dp=2, ep=2))


def test_expert_parallel_2_times_expert_fsdp_2_matches_reference():
    # 4 ranks: EP groups {0, 1} and {2, 3}; ranks 0 and 2 hold the same experts and FSDP-shard them
    check(dict(dp=4, ep=2, micro_batch_size=1))


def test_expert_parallel_with_replicated_zero0_and_sigmoid_router():
    check(dict(dp=4, ep=2, micro_batch_size=1, zero=0), model=SIGMOID_MOE)


def test_expert_parallel_with_pipeline_and_selective_checkpointing():
    check(dict(dp=2, ep=2, pp=2, micro_batch_size=1, recompute="selective"))


def test_single_process_moe_counts_every_parameter_of_the_spec():
    import torch

    from launcher.runtime.model import Transformer
    with torch.device("meta"):
        model = Transformer(TINY_MOE, 32)
    assert sum(p.numel() for p in model.parameters()) == TINY_MOE.num_params()
    assert type(model.layers["0"].feed_forward).__name__ == "FeedForward"   # first_k_dense_replace 1
    assert type(model.layers["1"].feed_forward).__name__ == "MoE"


ADAM = dict(optimizer="adamw", lr=1e-2, steps=6, model=TINY_MOE)


def _train(rank: int, cfg, fault: str | None = None) -> dict:
    import os
    if fault:
        os.environ["LOADMASTER_FAULT"] = fault
    from launcher.runtime.trainer import run
    return run(cfg)


def test_checkpoint_saved_under_one_ep_resumes_under_another(tmp_path):
    full = spawn(_train, 2, config(plan_of(dp=2, ep=2), out=str(tmp_path / "full"), **ADAM))[0]
    spawn(_train, 2, config(plan_of(dp=2, ep=2), out=str(tmp_path / "pre"), **ADAM), "sigterm:1:2")
    # same micro-batches of 2 sequences (the balance loss is taken per micro-batch), another expert layout
    for name, kw in (("ep4", dict(dp=4, ep=4)), ("ep1", dict(dp=2))):
        shutil.copytree(tmp_path / "pre", tmp_path / name)
        plan = plan_of(**kw)
        out = spawn(_train, plan.world_size, config(plan, out=str(tmp_path / name), **ADAM))[0]
        assert (out["start_step"], out["steps_done"]) == (3, 6)
        assert_close(out["losses"], full["losses"][3:], rtol=1e-5, what=f"resumed under {name}: loss")
        assert_close(out["grad_norms"], full["grad_norms"][3:], rtol=1e-4, what=f"resumed under {name}: norm")


def _fake_rank(rank: int, world: int, kw: dict, results) -> None:
    try:
        import torch
        import torch.distributed as dist
        from torch.testing._internal.distributed.fake_pg import FakeStore

        from launcher.runtime.trainer import build, local_device, train_step
        dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=world)
        cfg = config(plan_of(**kw), model=TINY_MOE, steps=1)
        s = build(cfg, local_device())
        tokens = torch.randint(0, TINY_MOE.vocab_size, (cfg.plan.global_batch_size // cfg.plan.dp, 33))
        loss, norm = train_step(s, 0, (tokens[:, :-1], tokens[:, 1:]))
        w1 = s.parts[0].layers["1"].feed_forward.experts.w1
        results.put(("ok", tuple(w1.to_local().shape), tuple(w1.shape), float(loss), float(norm)))
    except BaseException as e:  # noqa: BLE001 - report to the parent
        import traceback
        results.put(("error", traceback.format_exc(), None, None, None))
        raise SystemExit(1) from e


def test_one_rank_of_a_64_rank_expert_parallel_plan_runs_under_the_fake_process_group():
    # dp 64 = 8 EP groups of 8: each rank holds 1 of the 8 experts, FSDP-shards it over the 8 ranks holding the
    # same expert (along dim 1: 32 rows of w1 → 4 each); collectives are no-ops, routing assumes symmetric counts
    ctx = mp.get_context("fork")
    results = ctx.Queue()
    p = ctx.Process(target=_fake_rank, args=(37, 64, dict(dp=64, ep=8, global_batch_size=64, micro_batch_size=1),
                                             results))
    p.start()
    status, local, full, loss, norm = results.get(timeout=120)
    p.join(timeout=10)
    assert status == "ok", local
    assert full == (8, 32, 64) and local == (1, 4, 64)
    assert loss == pytest.approx(5.55, abs=0.5) and norm == norm   # finite, near log(256)
