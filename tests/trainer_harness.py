"""Helpers for the trainer tests: forked gloo ranks (torch imported once), a tiny model, and an independent
single-process reference loop (plain module, plain autograd, plain SGD — no DTensor, FSDP or pipelining)."""
from __future__ import annotations

import importlib.util
import multiprocessing as mp
import os
import queue
import tempfile
import time
import traceback
import warnings
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from costmodel import ModelSpec, parse_plan
from launcher.runtime.config import TrainConfig
from launcher.runtime.data import SyntheticTokens, TokenFile
from launcher.runtime.model import Transformer
from launcher.runtime.moe import set_aux_loss_scale
from launcher.runtime.optim import lr_factor

torch.set_num_threads(1)

# float8 layers are torchao's: tests that build them skip where it is not installed (it is in the `test` extra)
needs_torchao = pytest.mark.skipif(importlib.util.find_spec("torchao") is None, reason="float8 needs torchao")

TINY = ModelSpec(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=256, name="tiny")
# a mixture of experts small enough for CPU: a dense first block, 8 experts of which each token takes 2, one shared
TINY_MOE = ModelSpec(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                     num_key_value_heads=2, vocab_size=256, name="tiny-moe", num_experts=8, num_experts_per_tok=2,
                     moe_intermediate_size=32, num_shared_experts=1, first_k_dense_replace=1,
                     router_aux_loss_coef=0.01)
BASE_PLAN = dict(global_batch_size=8, micro_batch_size=2, seq_len=32, dp=1, tp=1, pp=1, zero=3, recompute="none")
# CLIP is below the tiny model's gradient norms (~0.55-0.6), so every check also covers clipping
STEPS, LR, SEED, CLIP = 5, 0.5, 1234, 0.5


def plan_of(**changes):
    with warnings.catch_warnings():  # "float8 without compile is slow" is about GPUs, not these tests
        warnings.simplefilter("ignore")
        return parse_plan({**BASE_PLAN, **changes})


def config(plan, *, model: ModelSpec = TINY, **kw) -> TrainConfig:
    """A CPU test config: SGD, no LR warm-up, fp32, float8 filter off (tiny Linears), fast compile backend."""
    base = dict(plan=plan, model=model, steps=STEPS, seed=SEED, optimizer="sgd", lr=LR, warmup_steps=0,
                max_grad_norm=CLIP,
                fp8_skip_small=False, compile_backend="aot_eager", timing_warmup_steps=0)
    base.update(kw)
    return TrainConfig(**base)


def _worker(rank: int, world: int, store_path: str, backend: str, fn, args, results) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    try:
        if "nccl" in backend:
            torch.cuda.set_device(rank)
        store = dist.FileStore(store_path, world)
        dist.init_process_group(backend, store=store, rank=rank, world_size=world, timeout=timedelta(seconds=60))
        out = fn(rank, *args)
        from launcher.runtime.trainer import close_distributed
        close_distributed()
        results.put((rank, "ok", out))
    except BaseException:  # report everything, including SystemExit, to the parent
        results.put((rank, "error", traceback.format_exc()))
    finally:
        results.close()
        results.join_thread()  # flush the queue's feeder thread before the hard exit
        os._exit(0)  # skip atexit handlers inherited from pytest


def spawn(fn, world: int, *args, timeout_s: float = 90.0, backend: str = "gloo") -> list:
    """Run ``fn(rank, *args)`` on ``world`` forked ranks (gloo; "cpu:gloo,cuda:nccl" puts rank r on GPU r);
    their return values by rank. Never hangs: ranks still running at the deadline are killed and the test fails."""
    ctx = mp.get_context("fork")
    results = ctx.Queue()
    with tempfile.TemporaryDirectory() as tmp:
        procs = [ctx.Process(target=_worker, args=(r, world, os.path.join(tmp, "store"), backend, fn, args, results))
                 for r in range(world)]
        for p in procs:
            p.start()
        got, deadline = {}, time.monotonic() + timeout_s
        try:
            while len(got) < world:
                try:
                    rank, status, out = results.get(timeout=max(0.1, deadline - time.monotonic()))
                except queue.Empty:
                    raise AssertionError(f"ranks {sorted(set(range(world)) - set(got))} did not finish in "
                                         f"{timeout_s} s") from None
                if status != "ok":
                    raise AssertionError(f"rank {rank} failed:\n{out}")
                got[rank] = out
        finally:
            for p in procs:
                p.join(timeout=5)
                if p.is_alive():
                    p.kill()
                    p.join()
    return [got[r] for r in range(world)]


def run_plan(rank: int, cfg: TrainConfig) -> dict:
    """Worker body: the in-process trainer API on this rank."""
    from launcher.runtime.trainer import run
    return run(cfg)


def reference(plan, *, model: ModelSpec = TINY, steps: int = STEPS, fp8_layers: int = 0,
              fp8_rotation_steps: int = 0, max_grad_norm: float = CLIP, micro_batch_size: int | None = None,
              data: str | None = None) -> tuple[list[float], list[float]]:
    """Losses and gradient norms of a plain single-process run of the same model, seed, data and LR.

    The global batch goes through in one forward unless ``micro_batch_size`` is given; float8 needs it,
    because dynamic scaling takes its amax per forward call (per micro-batch)."""
    with torch.device("meta"):
        model_ = Transformer(model, plan.seq_len)
    model_.to_empty(device="cpu")
    model_.init_weights(seed=SEED)
    rotation = None
    if fp8_layers:
        from launcher.runtime.parallel.fp8 import apply_fp8
        from launcher.runtime.parallel.fp8_schedule import Fp8Schedule
        apply_fp8(model_, num_blocks=fp8_layers, recipe="tensorwise", emulate=True,
                  rotating=fp8_rotation_steps > 0, skip_small=False)
        rotation = Fp8Schedule.from_parts([(0, model_)], plan=plan.replace(
            pp=1, layers_per_stage=None, fp8_layers=fp8_layers, fp8_rotation_steps=fp8_rotation_steps),
            num_layers=model.num_hidden_layers, seed=SEED)
    source = SyntheticTokens(vocab_size=model.vocab_size, seq_len=plan.seq_len, seed=SEED) if data is None \
        else TokenFile(data, dtype="uint16", vocab_size=model.vocab_size, seq_len=plan.seq_len)
    losses, norms = [], []
    for step in range(steps):
        if rotation:
            rotation.set_step(step)
        ids = range(step * plan.global_batch_size, (step + 1) * plan.global_batch_size)
        rows = torch.stack([source.sample(i) for i in ids])
        chunks = rows.split(micro_batch_size or len(rows))
        set_aux_loss_scale(model_, 1.0 / len(chunks))
        loss = 0.0
        for chunk in chunks:
            logits = model_(chunk[:, :-1])
            part = F.cross_entropy(logits.flatten(0, 1).float(), chunk[:, 1:].flatten()) / len(chunks)
            part.backward()
            loss += part.item()
        norm = torch.nn.utils.clip_grad_norm_(model_.parameters(), max_norm_or_inf(max_grad_norm))
        lr = LR * lr_factor(step, warmup_steps=0, total_steps=steps, min_ratio=0.1)
        with torch.no_grad():
            for p in model_.parameters():
                p -= lr * p.grad
                p.grad = None
        losses.append(loss)
        norms.append(norm.item())
    return losses, norms


def max_norm_or_inf(max_norm: float) -> float:
    return max_norm if max_norm > 0 else float("inf")


def assert_close(actual: list[float], expected: list[float], rtol: float = 1e-4, what: str = "") -> None:
    assert len(actual) == len(expected), (what, actual, expected)
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert abs(a - e) <= rtol * abs(e), f"{what} step {i + 1}: {a} vs reference {e} (rtol {rtol})"
