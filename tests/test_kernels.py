"""Kernel choices (Plan.rope_impl, loss_impl, norm_impl, swiglu_impl): the plain paths' numerics, the liger
fallback on a machine without a GPU, the fused loss's plumbing through FSDP2, and how the cost model prices each.

liger-kernel's Triton kernels need a CUDA GPU, so here (CPU) every liger choice falls back to PyTorch's; its fused
linear cross-entropy is replaced by a plain reference to check that the trainer computes the loss where FSDP2 has
the output projection unsharded. The kernels themselves are checked on GPU (benchmarks/gpu/kernel_bench.py, the
loss curves of benchmarks/gpu/kernel_loss_curves.py)."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from trainer_harness import TINY, assert_close, config, plan_of, run_plan, spawn

from costmodel import ModelSpec, SpecError, check_plan, predict
from costmodel.kernels import kernel_inputs, loss_chunks
from launcher.runtime import kernels
from launcher.runtime.model import build_model, rope_tables


def real_model(spec: ModelSpec = TINY, seq_len: int = 16, rope: str = "eager"):
    model = build_model(spec, seq_len)
    model.to_empty(device="cpu")
    model.init_weights(seed=0)
    kernels.set_block_kernels(model, {"rope_impl": rope, "loss_impl": "eager", "norm_impl": "eager",
                                      "swiglu_impl": "eager"})
    return model


# ------------------------------------------------------------------------------------------- RoPE numerics
def test_sequence_major_rope_equals_the_transposed_rotate_half_rope():
    cos, sin = rope_tables(16, 12, 500000.0)
    x = torch.randn(2, 12, 3, 16, dtype=torch.float64, requires_grad=True)   # (b, s, heads, dh)
    new = kernels.apply_rope("eager", x, x, *kernels.rope_tables("eager", cos.double(), sin.double(),
                                                                  torch.float64))[0]
    old = kernels.rope_transposed(x.transpose(1, 2), cos.double(), sin.double()).transpose(1, 2)
    torch.testing.assert_close(new, old, rtol=1e-6, atol=1e-6)
    g = torch.randn_like(new)
    (d_new,) = torch.autograd.grad(new, x, g)
    (d_old,) = torch.autograd.grad(old, x, g)
    torch.testing.assert_close(d_new, d_old, rtol=1e-6, atol=1e-6)


def test_the_written_out_rope_backward_is_the_gradient_of_its_forward():
    cos, sin = kernels.rope_tables("eager", *rope_tables(8, 5, 10000.0), torch.float64)
    x = torch.randn(1, 5, 2, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: kernels.RotateHalf.apply(t, cos, sin), (x,))


def test_the_new_and_the_first_rope_give_the_same_model():
    # fp32 on CPU (liger's RoPE needs a GPU: benchmarks/gpu/kernel_loss_curves.py compares it there)
    tokens = torch.randint(0, TINY.vocab_size, (2, 16))
    torch.testing.assert_close(real_model(rope="eager_transposed")(tokens), real_model(rope="eager")(tokens),
                               rtol=1e-6, atol=1e-6)


def test_blocks_without_rope_ignore_positions():
    spec = ModelSpec(**{**TINY.__dict__, "no_rope_layers": [1, 0, 1, 0]})
    assert spec.rope_share == 0.5 and not spec.uses_rope(1)
    model = real_model(spec)
    assert [b.attention.use_rope for b in model.layers.values()] == [True, False, True, False]
    # tables for other positions change what a RoPE block computes, not what a NoPE block does
    block, x = model.layers["1"], torch.randn(1, 16, TINY.hidden_size)
    tables = kernels.rope_tables("eager", model.rope_cos, model.rope_sin, x.dtype)
    shifted = kernels.rope_tables("eager", model.rope_cos.roll(3, 0), model.rope_sin.roll(3, 0), x.dtype)
    torch.testing.assert_close(block(x, *tables), block(x, *shifted))
    assert not torch.allclose(model.layers["0"](x, *tables), model.layers["0"](x, *shifted))


def test_no_rope_layers_come_from_a_config_interval(tmp_path):
    import json
    from costmodel import load_model
    cfg = {"architectures": ["SmolLM3ForCausalLM"], "hidden_size": 64, "intermediate_size": 128,
           "num_hidden_layers": 8, "num_attention_heads": 4, "vocab_size": 256, "no_rope_layer_interval": 4}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    assert load_model(tmp_path / "config.json").no_rope_layers == [1, 1, 1, 0, 1, 1, 1, 0]
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "no_rope_layers": [1, 0] * 4}))
    assert load_model(tmp_path / "config.json").no_rope_layers == [1, 0] * 4
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "no_rope_layers": [1, 2] * 4}))
    with pytest.raises(SpecError, match="no_rope_layers"):
        load_model(tmp_path / "config.json")


def test_the_rope_block_compiles_whole():
    model = real_model()
    block, x = model.layers["0"], torch.randn(2, 16, TINY.hidden_size, requires_grad=True)
    tables = kernels.rope_tables("eager", model.rope_cos, model.rope_sin, x.dtype)
    compiled = torch.compile(block, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(x, *tables), block(x, *tables))
    torch._dynamo.reset()


# ------------------------------------------------------------------------------ norm, SwiGLU, loss numerics
def test_plain_norm_and_swiglu_paths_are_pytorchs():
    x, w = torch.randn(3, 5, 8), torch.rand(8) + 0.5
    torch.testing.assert_close(kernels.rms_norm("eager", x, w, 1e-5), torch.nn.RMSNorm(8, eps=1e-5, )(x) * w)
    a, b = torch.randn(4, 6), torch.randn(4, 6)
    torch.testing.assert_close(kernels.swiglu("eager", a, b), F.silu(a) * b)


def test_the_compiled_loss_equals_the_eager_loss():
    logits = torch.randn(2, 7, 50, requires_grad=True)
    labels = torch.randint(0, 50, (2, 7))
    eager = kernels.logits_loss("eager", backend="aot_eager")(logits, labels)
    (g_eager,) = torch.autograd.grad(eager, logits)
    compiled = kernels.logits_loss("compiled", backend="aot_eager")(logits, labels)
    (g_comp,) = torch.autograd.grad(compiled, logits)
    torch.testing.assert_close(compiled, eager)
    torch.testing.assert_close(g_comp, g_eager)
    torch._dynamo.reset()


# ---------------------------------------------------------------------------------------- fallback
def test_liger_choices_fall_back_to_pytorch_without_a_gpu_with_a_warning():
    plan = plan_of(rope_impl="liger", loss_impl="liger_fused", norm_impl="liger", swiglu_impl="liger")
    with pytest.warns(UserWarning, match="need a CUDA GPU"):
        got = kernels.effective_kernels(plan, "cpu")
    assert got == {"rope_impl": "eager", "loss_impl": "eager", "norm_impl": "eager", "swiglu_impl": "eager"}
    assert kernels.effective_kernels(plan_of(loss_impl="compiled"), "cpu")["loss_impl"] == "compiled"


def test_compiled_blocks_drop_the_in_block_liger_choices_with_a_warning(monkeypatch):
    monkeypatch.setattr(kernels, "liger_problem", lambda device_type: None)
    with pytest.warns(UserWarning, match="compile fuses"):
        got = kernels.effective_kernels(plan_of(compile=True, norm_impl="liger", loss_impl="liger_fused"), "cuda")
    assert got["norm_impl"] == "eager" and got["loss_impl"] == "liger_fused"


def _reference_flce(hidden, weight, labels):   # what liger computes, in plain PyTorch
    return kernels.cross_entropy_fp32(hidden @ weight.T, labels)


def _run_with_reference_flce(rank, cfg):
    kernels.liger_problem.cache_clear()
    kernels.liger_problem = lambda device_type: None          # pretend liger can run here (forked rank only)
    kernels.fused_linear_cross_entropy = _reference_flce
    return run_plan(rank, cfg)


def test_the_fused_loss_runs_inside_the_fsdp_root_and_trains_like_the_eager_loss():
    base = dict(dp=2, recompute="full")
    fused, eager = (spawn(_run_with_reference_flce, 2, config(plan_of(**base, loss_impl=loss), steps=3))
                    for loss in ("liger_fused", "eager"))
    assert fused[0]["kernels"]["loss_impl"] == "liger_fused" and eager[0]["kernels"]["loss_impl"] == "eager"
    assert_close(fused[0]["losses"], eager[0]["losses"], rtol=1e-5, what="fused vs eager loss")
    assert_close(fused[0]["grad_norms"], eager[0]["grad_norms"], rtol=1e-4, what="grad norms")


def test_a_run_records_the_kernels_that_ran():
    (out,) = spawn(run_plan, 1, config(plan_of(norm_impl="liger", loss_impl="compiled"), steps=2))
    assert out["kernels"] == {"rope_impl": "eager", "loss_impl": "compiled", "norm_impl": "eager",
                              "swiglu_impl": "eager"}


# --------------------------------------------------------------------------------------------- plan rules
@pytest.mark.parametrize("changes, key", [
    (dict(loss_impl="liger_fused", pp=2, global_batch_size=8), "loss_impl"),
    (dict(loss_impl="liger_fused", tp=2), "loss_impl"),
    (dict(loss_impl="compiled", tp=2), "loss_impl"),
    (dict(rope_impl="liger", recompute="selective"), "rope_impl"),
    (dict(norm_impl="liger", tp=2), "norm_impl"),
])
def test_kernel_choices_that_cannot_run_are_refused_naming_the_key(changes, key):
    with pytest.raises(SpecError, match=key):
        check_plan(plan_of(**changes), TINY)


def test_kernel_choices_that_can_run_pass():
    for changes in (dict(rope_impl="liger", recompute="selective", compile=True),
                    dict(loss_impl="compiled", tp=2, vocab_parallel=False),
                    dict(norm_impl="liger", tp=2, sequence_parallel=False), dict(rope_impl="liger", recompute="full")):
        check_plan(plan_of(**changes), TINY)
    gelu = ModelSpec(**{**TINY.__dict__, "hidden_act": "gelu"})
    with pytest.raises(SpecError, match="swiglu_impl"):
        check_plan(plan_of(swiglu_impl="liger"), gelu)


# ------------------------------------------------------------------------------------------ the cost model
def _predict(**changes):
    base = dict(global_batch_size=8, micro_batch_size=2, seq_len=4096, dp=1, tp=1, pp=1, zero=3, recompute="none")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return predict("llama3.2-1b", "1xh200", {**base, **changes})


def test_liger_chunks_tokens_as_its_code_says():
    # liger-kernel's own example (ops/fused_linear_cross_entropy.py): BT 4096·4, V 32000, H 4096 → chunks of 2048
    assert loss_chunks(4096 * 4, 32000, 4096) == 8
    assert loss_chunks(8192, 128256, 2048) == 32 and loss_chunks(100, 128256, 2048) == 50


def test_the_fused_loss_trades_the_logits_memory_for_a_little_time():
    eager, fused = _predict(), _predict(loss_impl="liger_fused")
    logits = 2 * 4096 * 128256
    saved = eager.peak_memory_bytes - fused.peak_memory_bytes
    assert 8 * logits < saved < 12 * logits          # the fp32 copy and log-softmax of every logit
    assert eager.step_time_s < fused.step_time_s < 1.1 * eager.step_time_s


def test_the_compiled_loss_saves_memory_and_time():
    eager, compiled = _predict(), _predict(loss_impl="compiled")
    assert compiled.peak_memory_bytes < eager.peak_memory_bytes - 5 * 2 * 4096 * 128256
    assert compiled.step_time_s < eager.step_time_s


def test_the_rope_choices_order_as_their_bytes_and_compiled_blocks_ignore_them():
    t = {r: _predict(rope_impl=r).step_time_s for r in ("eager_transposed", "eager", "liger")}
    assert t["eager_transposed"] > t["eager"] > t["liger"]
    assert _predict(compile=True, rope_impl="eager_transposed").step_time_s == _predict(compile=True).step_time_s


def test_liger_swiglu_saves_an_mlp_wide_tensor_per_block():
    eager, liger = _predict(), _predict(swiglu_impl="liger")
    per_block = 2 * 2 * 4096 * 8192                  # bf16, 2 × 4096 tokens, intermediate 8192
    assert eager.peak_memory_bytes - liger.peak_memory_bytes == pytest.approx(16 * per_block, rel=1e-6)


def test_blocks_without_rope_cost_no_rope():
    import dataclasses
    from costmodel import load_model
    spec = load_model("llama3.2-1b")
    half = dataclasses.replace(spec, no_rope_layers=[1, 0] * 8)
    plan = dict(global_batch_size=8, micro_batch_size=2, seq_len=4096, dp=1, tp=1, pp=1, zero=3, recompute="none")
    full, nope = predict(spec, "1xh200", plan), predict(half, "1xh200", plan)
    rope_all = _predict(rope_impl="eager").step_time_s - _predict(rope_impl="liger").step_time_s
    assert 0 < full.step_time_s - nope.step_time_s
    assert nope.step_time_s < full.step_time_s - 0.3 * rope_all


def test_kernel_inputs_take_arrays_of_choices_over_candidates():
    got = kernel_inputs({"loss_impl": np.array(["eager", "liger_fused"])}, model=TINY, tokens=np.array([64, 64]))
    assert got["fl"].tolist() == [0.0, 1.0] and got["nch"][0] == 1.0 and got["nch"][1] == loss_chunks(64, 256, 64)
    assert got["loss_fwd"].tolist() == [10.0, 0.0]


# ----------------------------------------------------------------------------------- on a GPU, with liger
needs_liger = pytest.mark.skipif(kernels.liger_problem("cuda") is not None, reason="needs liger-kernel and a GPU")


def _grads(fn, *inputs):
    inputs = [x.detach().clone().requires_grad_() for x in inputs]
    out = fn(*inputs)
    out = out if isinstance(out, tuple) else (out,)
    torch.autograd.backward(out, [torch.ones_like(o) for o in out])
    return [o.detach().float() for o in out], [x.grad.float() for x in inputs]


@pytest.mark.gpu
@needs_liger
@pytest.mark.parametrize("what", ["rope", "norm", "swiglu", "loss"])
def test_liger_kernels_match_the_plain_ones_on_a_gpu(what):
    dev, bf = "cuda", torch.bfloat16
    if what == "rope":
        cos, sin = (t.to(dev) for t in rope_tables(64, 256, 500000.0))
        q, k = torch.randn(2, 256, 8, 64, device=dev, dtype=bf), torch.randn(2, 256, 2, 64, device=dev, dtype=bf)

        def run(impl):
            tables = kernels.rope_tables(impl, cos, sin, bf)
            return _grads(lambda a, b: kernels.apply_rope(impl, a * 1.0, b * 1.0, *tables), q, k)
        got, want = run("liger"), run("eager")
    elif what == "norm":
        x, w = torch.randn(512, 1024, device=dev, dtype=bf), torch.rand(1024, device=dev, dtype=bf) + 0.5
        got, want = (_grads(lambda a, b: kernels.rms_norm(i, a, b, 1e-5), x, w) for i in ("liger", "eager"))
    elif what == "swiglu":
        a, b = torch.randn(512, 2048, device=dev, dtype=bf), torch.randn(512, 2048, device=dev, dtype=bf)
        got, want = (_grads(lambda x, y: kernels.swiglu(i, x * 1.0, y * 1.0), a, b) for i in ("liger", "eager"))
    else:
        h, w = torch.randn(1, 1024, 256, device=dev, dtype=bf), torch.randn(8192, 256, device=dev, dtype=bf) * 0.06
        labels = torch.randint(0, 8192, (1, 1024), device=dev)
        got = _grads(lambda x, y: kernels.fused_linear_cross_entropy(x, y, labels), h, w)
        want = _grads(lambda x, y: kernels.cross_entropy_fp32(x @ y.T, labels), h, w)
    for g, e in zip(got[0] + got[1], want[0] + want[1]):
        torch.testing.assert_close(g, e, rtol=2e-2, atol=2e-2)


@pytest.mark.gpu
def test_the_inductor_compiled_loss_matches_the_eager_loss_on_a_gpu():
    logits = torch.randn(2, 512, 32000, device="cuda", dtype=torch.bfloat16)
    labels = torch.randint(0, 32000, (2, 512), device="cuda")
    got = _grads(lambda x: kernels.logits_loss("compiled", backend="inductor")(x, labels), logits)
    want = _grads(lambda x: kernels.cross_entropy_fp32(x, labels), logits)
    torch.testing.assert_close(got[0][0], want[0][0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got[1][0], want[1][0], rtol=1e-2, atol=1e-5)
    torch._dynamo.reset()


def test_exports_name_the_kernel_choices_the_engine_does_not_run():
    from launcher.export.common import export_plan
    model = ModelSpec(**{**TINY.__dict__, "name": "tiny"})
    plan = plan_of(loss_impl="liger_fused", compile=True)
    assert any("loss_impl liger_fused" in w for w in export_plan(plan, model, None, "torchtitan").warnings)
    compiled = plan_of(loss_impl="compiled", compile=True)
    assert not any("loss_impl" in w for w in export_plan(compiled, model, None, "torchtitan").warnings)
    assert any("loss_impl compiled" in w for w in export_plan(compiled, model, None, "megatron").warnings)


def test_the_search_space_offers_kernel_choices_the_case_can_run():
    from planner.space import SearchSpace, kernel_combinations
    with pytest.raises(ValueError, match="loss_impl"):
        SearchSpace(loss_impl=("fastest",))
    space = SearchSpace.with_liger()
    eager = kernel_combinations(space, TINY, plan_of(recompute="selective"))
    assert {"rope_impl": "liger", "loss_impl": "eager", "norm_impl": "eager", "swiglu_impl": "eager"} not in eager
    assert len(eager) == 1 * 3 * 2 * 2                     # liger RoPE cannot run under selective checkpointing
    compiled = kernel_combinations(space, TINY, plan_of(compile=True))
    assert len(compiled) == 3                             # compiled blocks: only the loss choice matters
    assert all(c["loss_impl"] != "liger_fused" for c in kernel_combinations(space, TINY, plan_of(tp=2)))


def test_best_kernels_picks_the_fastest_choice_that_fits():
    from costmodel import load_cluster, load_model
    from planner.space import SearchSpace, best_kernels
    plan = plan_of(global_batch_size=8, micro_batch_size=2, seq_len=4096)
    got, pred = best_kernels(load_model("llama3.2-1b"), load_cluster("1xh200"), plan, SearchSpace())
    assert got.loss_impl == "compiled" and pred.step_time_s < _predict().step_time_s
