"""The trainer's pieces in one process: model, AC policies, offload, float8 and its rotation, data, LR, PP split."""
from __future__ import annotations

from collections import Counter

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from trainer_harness import TINY, config, needs_torchao, plan_of

from costmodel import ModelSpec, SpecError
from launcher.runtime.data import SyntheticTokens, TokenFile, sample_ids
from launcher.runtime.kernels import rope_tables as block_tables, rope_transposed
from launcher.runtime.model import Transformer, build_model, rope_tables
from launcher.runtime.optim import lr_factor
from launcher.runtime.parallel.ac import apply_ac
from costmodel.fp8 import fp8_skipped
from launcher.runtime.parallel.fp8 import apply_fp8
from launcher.runtime.parallel.fp8_schedule import Fp8Schedule
from launcher.runtime.parallel.offload import SaveOnCpuWrapper, apply_offload
from launcher.runtime.parallel.pipeline import split_pipeline

aten = torch.ops.aten


def real_model(spec: ModelSpec = TINY, seq_len: int = 16, seed: int = 0) -> Transformer:
    model = build_model(spec, seq_len)
    model.to_empty(device="cpu")
    model.init_weights(seed=seed)
    return model


def test_parameter_count_matches_the_spec():
    for spec in (TINY, ModelSpec(**{**TINY.__dict__, "tie_word_embeddings": True, "hidden_act": "gelu"})):
        model = build_model(spec, 16)
        assert sum(p.numel() for p in model.parameters()) == spec.num_params()


def test_tied_output_shares_the_embedding_weight():
    spec = ModelSpec(**{**TINY.__dict__, "tie_word_embeddings": True})
    model = real_model(spec)
    assert model.output.weight is model.tok_embeddings.weight


def test_init_is_deterministic_and_seeded():
    a, b, c = real_model(seed=1), real_model(seed=1), real_model(seed=2)
    for (name, pa), pb, pc in zip(a.named_parameters(), b.parameters(), c.parameters()):
        assert torch.equal(pa, pb), name
        if pa.dim() > 1:
            assert not torch.equal(pa, pc), name
    assert abs(a.layers["0"].attention.wq.weight.std().item() - 0.02) < 0.004


def test_gqa_attention_equals_repeated_kv_heads():
    model = real_model()
    attn, x = model.layers["0"].attention, torch.randn(2, 16, TINY.hidden_size)
    cos, sin = model.rope_cos[:16], model.rope_sin[:16]
    q = rope_transposed(attn.wq(x).view(2, 16, -1, 16).transpose(1, 2), cos, sin)
    k = rope_transposed(attn.wk(x).view(2, 16, -1, 16).transpose(1, 2), cos, sin)
    v = attn.wv(x).view(2, 16, -1, 16).transpose(1, 2)
    rep = TINY.num_attention_heads // TINY.kv_heads
    out = F.scaled_dot_product_attention(q, k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1),
                                         is_causal=True)
    expected = attn.wo(out.transpose(1, 2).reshape(2, 16, -1))
    torch.testing.assert_close(attn(x, *block_tables("eager", model.rope_cos, model.rope_sin, x.dtype)), expected)


def test_rope_rotates_pairs_without_changing_norms():
    cos, sin = rope_tables(16, 8, 10000.0)
    x = torch.randn(1, 2, 8, 16)
    y = rope_transposed(x, cos, sin)
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1))
    torch.testing.assert_close(y[..., 0, :], x[..., 0, :])  # position 0: no rotation


class OpCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[func] += 1
        return func(*args, **(kwargs or {}))


def backward_ops(mode: str) -> Counter:
    model = real_model()
    apply_ac(model, mode=mode, num_blocks=1)
    block, x = model.layers["0"], torch.randn(2, 16, TINY.hidden_size, requires_grad=True)
    out = block(x, *block_tables("eager", model.rope_cos, model.rope_sin, x.dtype))
    with OpCounter() as counter:
        out.sum().backward()
    return counter.ops


def test_ac_wraps_only_the_first_blocks():
    model = real_model()
    apply_ac(model, mode="full", num_blocks=2)
    wrapped = [type(b).__name__ != "TransformerBlock" for b in model.layers.values()]
    assert wrapped == [True, True, False, False]
    assert "layers.0.attention.wq.weight" in model.state_dict()  # the wrapper is invisible in checkpoints


def test_selective_ac_recomputes_elementwise_ops_but_no_matmul():
    base, full, selective = backward_ops("none"), backward_ops("full"), backward_ops("selective")
    mm = aten.mm.default
    assert full[mm] > base[mm]  # full recompute re-runs the 7 projections
    assert selective[mm] == base[mm]  # selective saved every matmul output
    assert selective[aten.silu.default] == 1 and base[aten.silu.default] == 0  # SiLU is recomputed
    assert selective[aten._fused_rms_norm.default] + selective[aten.rsqrt.default] > 0  # and the norms


def test_activation_offload_wraps_blocks_after_the_checkpointed_ones(monkeypatch):
    model = real_model()
    apply_ac(model, mode="full", num_blocks=1)
    state = apply_offload(model, first_block=1, num_activation_blocks=2, num_state_blocks=3, pin_memory=False)
    kinds = [type(b).__name__ for b in model.layers.values()]
    assert kinds[1:] == ["SaveOnCpuWrapper", "SaveOnCpuWrapper", "TransformerBlock"]
    assert state == {"0", "1", "2"}
    packed = []
    real = torch.autograd.graph.save_on_cpu

    class Counting(real):
        def __init__(self, pin_memory=False, device_type="cuda"):
            super().__init__(pin_memory=pin_memory, device_type=device_type)
            inner = self.pack_hook
            self.pack_hook = lambda t: (packed.append(t.shape), inner(t))[1]
    monkeypatch.setattr(torch.autograd.graph, "save_on_cpu", Counting)
    model(torch.randint(0, 256, (1, 16))).sum().backward()
    assert packed  # saved tensors of the offloaded blocks went through save_on_cpu
    with pytest.raises(ValueError, match="does not fit"):
        apply_offload(real_model(), first_block=3, num_activation_blocks=2, num_state_blocks=0, pin_memory=False)


def test_torchao_size_filter_thresholds():
    assert fp8_skipped(4096, 1024, "tensorwise") and not fp8_skipped(4096, 1025, "tensorwise")
    assert not fp8_skipped(4097, 1024, "tensorwise")
    assert fp8_skipped(8192, 2048, "rowwise") and fp8_skipped(1024, 8192, "rowwise")
    assert fp8_skipped(2048, 4096, "rowwise") and not fp8_skipped(4096, 4096, "rowwise")


@needs_torchao
def test_float8_converts_the_first_blocks_and_keeps_parameters():
    model = real_model()
    before = {n: p for n, p in model.named_parameters()}
    groups = apply_fp8(model, num_blocks=2, recipe="tensorwise", emulate=True, rotating=False, skip_small=False)
    assert [len(g) for g in groups] == [7, 7]  # wq wk wv wo w1 w2 w3
    assert all(type(m) is nn.Linear for m in model.layers["2"].modules() if isinstance(m, nn.Linear))
    after = {n: p for n, p in model.named_parameters()}
    assert before.keys() == after.keys() and all(before[n] is after[n] for n in before)
    lin = groups[0][0]
    x = torch.randn(4, 64)
    y8 = lin(x)
    lin.float8_enabled = False
    y = lin(x)
    torch.testing.assert_close(y, F.linear(x, lin.weight), rtol=0, atol=0)
    assert (y8 - y).abs().max() > 1e-4 * y.abs().max()  # float8 really quantises


@needs_torchao
def test_float8_size_filter_leaves_small_linears_alone():
    model = real_model()
    assert apply_fp8(model, num_blocks=4, recipe="tensorwise", emulate=True, rotating=False) == [[]] * 4


@needs_torchao
@pytest.mark.parametrize("n,k,expected", [
    (1, 2, [[0], [0], [1], [1], [2], [2], [3], [3], [0]]),
    (2, 1, [[0, 1], [2, 3], [0, 1]]),
    (3, 1, [[0, 1, 2], [0, 1, 3], [0, 2, 3]]),
])
def test_float8_rotation_window(n, k, expected):
    model = real_model()
    groups = apply_fp8(model, num_blocks=n, recipe="tensorwise", emulate=True, rotating=True, skip_small=False)
    assert len(groups) == 4  # every block converted, only the window active
    rot = Fp8Schedule.from_parts([(0, model)], plan=plan_of(fp8_layers=n, fp8_rotation_steps=k), num_layers=4,
                                 seed=0)
    for step, window in enumerate(expected):
        assert rot.set_step(step) == window
        assert [all(m.float8_enabled for m in g) for g in groups] == [i in window for i in range(4)]


def test_without_torchao_a_float8_plan_is_a_user_error(monkeypatch):
    import importlib.util
    import sys

    from launcher.runtime.config import validate
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "torchao" else find_spec(name, *a))
    with pytest.raises(SpecError, match="fp8_layers: needs torchao, which is not installed; pip install torchao"):
        validate(config(plan_of(fp8_layers=1)), world_size=1)
    for name in ("torchao", "torchao.float8"):
        monkeypatch.setitem(sys.modules, name, None)  # importing it now fails, as where it is not installed
    with pytest.raises(ValueError, match="fp8_layers > 0 needs torchao"):
        apply_fp8(real_model(), num_blocks=1, recipe="tensorwise", emulate=True, rotating=False)


def test_sample_ids_partition_the_global_batch():
    plan = plan_of(dp=2, micro_batch_size=2, global_batch_size=8)
    ids = [sample_ids(plan, step=3, dp_rank=r) for r in range(2)]
    assert sorted(ids[0] + ids[1]) == list(range(24, 32))
    assert ids[0][:2] == [24, 25] and ids[1][:2] == [26, 27]


def test_synthetic_tokens_are_a_function_of_seed_and_sample():
    a, b = SyntheticTokens(vocab_size=256, seq_len=32, seed=0), SyntheticTokens(vocab_size=256, seq_len=32, seed=1)
    assert torch.equal(a.sample(7), a.sample(7)) and not torch.equal(a.sample(7), a.sample(8))
    assert not torch.equal(a.sample(7), b.sample(7))
    assert a.sample(7).shape == (33,) and 0 <= a.sample(7).min() and a.sample(7).max() < 256


def test_token_file_reads_consecutive_windows(tmp_path):
    path = tmp_path / "tokens.bin"
    torch.arange(1000, dtype=torch.int32).numpy().astype("uint16").tofile(path)
    f = TokenFile(path, dtype="uint16", vocab_size=1000, seq_len=10)
    f.validate()
    assert f.sample(0).tolist() == list(range(11)) and f.sample(1)[0] == 10


@pytest.mark.parametrize("content,dtype,match", [
    (None, "uint16", "no such file"),
    (list(range(5)), "uint16", "fewer than one sequence"),
    (list(range(100)) + [300], "uint16", "token id 300 at position 100"),
    (b"\x01\x02\x03", "uint16", "not a multiple"),
])
def test_token_file_errors_name_the_problem(tmp_path, content, dtype, match):
    path = tmp_path / "tokens.bin"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.tensor(content).numpy().astype(dtype).tofile(path)
    with pytest.raises(SpecError, match=match):
        TokenFile(path, dtype=dtype, vocab_size=256, seq_len=10).validate()


def test_lr_warms_up_then_decays_to_the_floor():
    f = [lr_factor(s, warmup_steps=4, total_steps=20, min_ratio=0.1) for s in range(21)]
    assert f[:4] == [0.25, 0.5, 0.75, 1.0] and f[4] == 1.0
    assert all(a >= b for a, b in zip(f[4:], f[5:])) and f[20] == pytest.approx(0.1)


def test_pipeline_split_keeps_global_fqns():
    model = build_model(TINY, 16)
    full = {n for n, _ in model.named_parameters()}
    seen = set()
    for rank in range(2):
        for stage, part in split_pipeline(model, layers_per_stage=[1, 1, 1, 1], pp_rank=rank, pp=2,
                                          virtual_stages=2):
            names = {n for n, _ in part.named_parameters()}
            assert (part.tok_embeddings is not None) == (stage == 0)
            assert (part.output is not None) == (stage == 3)
            assert list(part.layers.keys()) == [str(stage)]
            seen |= names
    assert seen == full


def test_trainer_refuses_tied_embeddings_over_pipeline_stages_through_the_plan_check():
    from launcher.runtime.config import TrainConfig, validate
    from trainer_harness import plan_of
    spec = ModelSpec(**{**TINY.__dict__, "tie_word_embeddings": True})
    with pytest.raises(ValueError, match="use pp: 1"):
        validate(TrainConfig(plan=plan_of(pp=2, micro_batch_size=1), model=spec), world_size=2)


def test_save_on_cpu_wrapper_is_invisible_in_state_dict():
    model = real_model()
    apply_offload(model, first_block=0, num_activation_blocks=1, num_state_blocks=0, pin_memory=False)
    assert isinstance(model.layers["0"], SaveOnCpuWrapper)
    assert "layers.0.attention.wq.weight" in model.state_dict()


def test_clip_grad_norm_matches_torch_and_really_clips():
    from launcher.runtime.optim import clip_grad_norm_
    a = [torch.nn.Parameter(torch.randn(5, 3)) for _ in range(3)]
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    for p, q in zip(a, b):
        p.grad = torch.randn_like(p)
        q.grad = p.grad.clone()
    ours = clip_grad_norm_(a, 0.5)
    theirs = torch.nn.utils.clip_grad_norm_(b, 0.5)
    torch.testing.assert_close(ours, theirs)
    for p, q in zip(a, b):
        torch.testing.assert_close(p.grad, q.grad)
    assert torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in a])) == pytest.approx(0.5, rel=1e-5)


def test_trainer_imports_nothing_gpu_nodes_may_lack():
    import subprocess
    import sys
    code = ("import sys, launcher.runtime.train, launcher.runtime.bench, launcher.runtime.trainer, costmodel; "
            "costmodel.predict; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'pulp', 'highspy', 'typer', 'rich', "
            "'planner', 'torchao'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"  # torchao only once a plan asks for float8


def test_activation_offload_copies_activations_not_the_blocks_weights():
    from launcher.runtime.parallel.offload import SaveOnCpuWrapper
    torch.manual_seed(0)
    block = torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.GELU(), torch.nn.Linear(256, 256))
    x = torch.randn(4, 256, requires_grad=True)
    wrapped = SaveOnCpuWrapper(block, pin_memory=False)
    wrapped(x).sum().backward()
    grads = [p.grad.clone() for p in block.parameters()] + [x.grad.clone()]
    # saved for backward: the input, the first Linear's output (GELU's input) and GELU's output, fp32 each
    assert wrapped.offloaded_bytes == 3 * 4 * 256 * 4
    for t in [*block.parameters(), x]:
        t.grad = None
    block(x).sum().backward()
    assert all(torch.equal(a, b) for a, b in zip(grads, [p.grad for p in block.parameters()] + [x.grad]))


def test_activation_offload_tells_activations_from_weights_under_fake_tensors_too():
    # loadmaster verify traces under FakeTensorMode, where every data pointer is 0: keys on it took every
    # activation for a weight and the trace kept them all on the device
    from torch._subclasses.fake_tensor import FakeTensorMode

    from launcher.runtime.parallel.offload import SaveOnCpuWrapper
    with FakeTensorMode():
        block = torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.GELU(), torch.nn.Linear(256, 256))
        wrapped = SaveOnCpuWrapper(block, pin_memory=False)
        wrapped(torch.randn(4, 256, requires_grad=True)).sum().backward()
    assert wrapped.offloaded_bytes == 3 * 4 * 256 * 4


def test_fused_and_foreach_adamw_take_the_same_step():
    from launcher.runtime.optim import build_optimizer
    torch.manual_seed(0)
    base = torch.nn.Linear(16, 8)
    grads = [torch.randn_like(p) for p in base.parameters()]
    after = {}
    for impl in ("fused", "foreach"):
        m = torch.nn.Linear(16, 8)
        m.load_state_dict(base.state_dict())
        opt = build_optimizer(m, kind="adamw", lr=1e-2, weight_decay=0.1, impl=impl)
        assert opt.defaults["fused" if impl == "fused" else "foreach"]
        for _ in range(3):
            for p, g in zip(m.parameters(), grads):
                p.grad = g.clone()
            opt.step()
        after[impl] = [p.detach().clone() for p in m.parameters()]
    for a, b in zip(after["fused"], after["foreach"]):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="optimizer_impl 'slow'"):
        build_optimizer(base, kind="adamw", lr=1e-2, weight_decay=0.1, impl="slow")
