"""Every plan knob against a plain single-process run: losses and gradient norms over 5 SGD steps agree to 1e-4
relative (gloo, fp32, 2–4 forked ranks). The reference (trainer_harness.reference) uses no DTensor, FSDP or
pipelining: one module, one forward over the global batch, torch's own clip_grad_norm_ and a manual SGD step."""
from __future__ import annotations

import functools

import pytest
from trainer_harness import TINY, assert_close, config, needs_torchao, plan_of, reference, run_plan, spawn

from costmodel import ModelSpec

TIED_GELU = ModelSpec(**{**TINY.__dict__, "tie_word_embeddings": True, "hidden_act": "gelu", "name": "tied-gelu"})
# Qwen2's q/k/v biases and Llama-3.1's RoPE scaling (tiny context so that some wavelengths are scaled)
BIASED_SCALED = ModelSpec(**{**TINY.__dict__, "qkv_bias": True, "name": "biased-scaled", "rope_scaling": {
    "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
    "original_max_position_embeddings": 16}})


@functools.lru_cache(maxsize=None)
def ref(**kw):
    return reference(plan_of(), **kw)


def check(kw: dict, ref_kw: dict | None = None, **cfg_kw) -> dict:
    plan = plan_of(**kw)
    out = spawn(run_plan, plan.world_size, config(plan, **cfg_kw))
    losses, norms = ref(**(ref_kw or {}), **({"model": cfg_kw["model"]} if "model" in cfg_kw else {}))
    for rank_summary in out:  # every rank reports the same global loss and norm
        assert_close(rank_summary["losses"], losses, what=f"{kw} loss")
        assert_close(rank_summary["grad_norms"], norms, what=f"{kw} grad norm")
    assert out[0]["steps_done"] == 5
    return out[0]


@pytest.mark.parametrize("zero", [3, 2, 0])
def test_data_parallel_zero_levels_match_reference(zero):
    # 8 sequences = 2 ranks × 2 micro-batches × 2: also exercises accumulation with sync on the last only
    check(dict(dp=2, zero=zero))


@pytest.mark.parametrize("zero", [3, 2])
def test_gradients_reduced_after_every_micro_batch_match_reference(zero):
    check(dict(dp=2, zero=zero, grad_reduce="every"))


def _count_reduce_scatters(rank: int, cfg) -> int:
    import torch.distributed as dist
    calls = [0]

    def counting(real):
        def call(*args, **kwargs):
            calls[0] += 1
            return real(*args, **kwargs)
        return call
    for name in ("reduce_scatter_tensor", "reduce_scatter_single"):  # FSDP2 uses the latter from torch 2.12
        if hasattr(dist, name):
            setattr(dist, name, counting(getattr(dist, name)))
    run_plan(rank, cfg)
    return calls[0]


def test_grad_reduce_every_reduce_scatters_once_per_micro_batch():
    counts = {}
    for mode in ("last", "every"):
        plan = plan_of(dp=2, zero=2, grad_reduce=mode)
        counts[mode] = spawn(_count_reduce_scatters, 2, config(plan, steps=1))[0]
    assert counts["last"] > 0
    assert counts["every"] == plan.num_microbatches * counts["last"]


def test_tensor_parallel_with_sequence_parallel_and_loss_parallel():
    check(dict(tp=2))


def test_tied_embeddings_and_plain_gelu_mlp_under_tensor_parallel():
    check(dict(tp=2), model=TIED_GELU)


@pytest.mark.parametrize("sequence_parallel", [True, False])
def test_tensor_parallel_with_the_vocabulary_replicated(sequence_parallel):
    check(dict(tp=2, sequence_parallel=sequence_parallel, vocab_parallel=False))


def test_tensor_parallel_without_sequence_parallel():
    check(dict(tp=2, sequence_parallel=False))


def test_pipeline_resharding_after_forward_matches_reference():
    check(dict(pp=2, dp=2, zero=3, micro_batch_size=1, pp_reshard_after_forward=True))


@pytest.mark.parametrize("layout", [dict(tp=2), dict(dp=2, zero=3)])
def test_qkv_biases_and_rope_scaling_match_reference(layout):
    check(layout, model=BIASED_SCALED)


@pytest.mark.parametrize("schedule", ["1F1B", "GPipe"])
def test_pipeline_two_stages(schedule):
    check(dict(pp=2, micro_batch_size=1, pp_schedule=schedule))


def test_pipeline_interleaved_virtual_stages():
    check(dict(pp=2, micro_batch_size=1, pp_schedule="Interleaved1F1B", virtual_stages=2))


def test_pipeline_uneven_split():
    check(dict(pp=2, micro_batch_size=1, layers_per_stage=[3, 1]))


def test_pipeline_times_data_parallel():
    check(dict(pp=2, dp=2, micro_batch_size=1))


def test_pipeline_times_tensor_parallel():
    check(dict(pp=2, tp=2, micro_batch_size=1))


def test_token_file_data_is_split_across_data_parallel_ranks(tmp_path):
    import numpy as np
    path = tmp_path / "tokens.bin"
    np.random.default_rng(0).integers(0, 256, 5000).astype(np.uint16).tofile(path)
    plan = plan_of(dp=2)
    out = spawn(run_plan, 2, config(plan, data=str(path)))
    losses, norms = reference(plan_of(), data=str(path))
    assert_close(out[0]["losses"], losses, what="file data loss")
    assert_close(out[0]["grad_norms"], norms, what="file data grad norm")
    assert abs(out[0]["losses"][0] - ref()[0][0]) > 1e-2  # the file was read, not the synthetic stream


def test_data_parallel_times_tensor_parallel():
    check(dict(dp=2, tp=2))


@pytest.mark.parametrize("recompute,layers", [("full", None), ("full", 2), ("selective", None)])
def test_activation_checkpointing(recompute, layers):
    check(dict(dp=2, recompute=recompute, recompute_layers=layers))


def test_activation_offload_after_checkpointed_blocks():
    check(dict(dp=2, recompute="full", recompute_layers=1, offload_activation_layers=2))


def test_state_offload():
    check(dict(dp=2, offload_state_layers=2))


@needs_torchao
def test_float8_fixed_blocks_match_float8_reference():
    fp8 = dict(fp8_layers=2, micro_batch_size=2)
    out = check(dict(dp=2, fp8_layers=2), fp8)
    # the check must be able to tell float8 from bf16: the bf16 reference is much farther away
    bf16_losses, bf16_norms = ref()
    fp8_losses, fp8_norms = ref(**fp8)
    near = max(abs(a - b) for a, b in zip(out["grad_norms"], fp8_norms))
    far = max(abs(a - b) for a, b in zip(out["grad_norms"], bf16_norms))
    assert near * 10 < far, (near, far)


@needs_torchao
def test_float8_rotation_matches_rotating_reference():
    rot = dict(fp8_layers=1, fp8_rotation_steps=2, micro_batch_size=2)
    out = check(dict(dp=2, fp8_layers=1, fp8_rotation_steps=2), rot)
    fixed_losses, fixed_norms = ref(fp8_layers=1, micro_batch_size=2)
    rot_losses, rot_norms = ref(**rot)
    near = max(abs(a - b) for a, b in zip(out["grad_norms"], rot_norms))
    far = max(abs(a - b) for a, b in zip(out["grad_norms"], fixed_norms))
    assert near * 10 < far, (near, far)  # a window that never moved would match the fixed reference


def test_compile_with_selective_checkpointing():
    check(dict(dp=2, compile=True, recompute="selective", recompute_layers=2))


@needs_torchao
def test_tensor_parallel_float8():
    check(dict(tp=2, fp8_layers=2), dict(fp8_layers=2, micro_batch_size=2))
