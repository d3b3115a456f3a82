"""`predict` on every shipped model × cluster pair, and properties any sound cost model has."""
import dataclasses
import math

import numpy as np
import pytest

from costmodel import load_cluster, load_model, predict
from costmodel.plan import parse_plan
from costmodel.specs import ClusterSpec, shipped


def simple_plan(gpus: int, **over):
    d = dict(global_batch_size=2 * gpus, micro_batch_size=1, seq_len=2048, dp=gpus, tp=1, pp=1, zero=3,
             recompute="full")
    d.update(over)
    return parse_plan(d)


@pytest.mark.parametrize("model", shipped("models"))
def test_every_model_on_every_cluster_gives_finite_positive_numbers(model):
    m = load_model(model)
    for cname in shipped("clusters"):
        c = load_cluster(cname)
        pred = predict(m, c, simple_plan(c.num_gpus))
        for v in (pred.step_time_s, pred.peak_memory_bytes, pred.tokens_per_s, pred.mfu):
            assert math.isfinite(v) and v > 0, (model, cname, v)
        assert 0 < pred.mfu < 1
        assert all(v >= 0 and math.isfinite(v) for v in pred.memory_breakdown.values())
        assert all(v >= 0 and math.isfinite(v) for v in pred.time_breakdown.values())
        if not pred.feasible:
            top = max(pred.memory_breakdown, key=pred.memory_breakdown.get)
            assert top in pred.reasons[0] and "exceeds" in pred.reasons[0]


@pytest.mark.parametrize("zero", [0, 2, 3])
@pytest.mark.parametrize("model", ["llama3-8b", "llama3-70b", "gpt3-13b"])
def test_more_gpus_never_more_memory_per_gpu_for_the_same_per_gpu_work(model, zero):
    m = load_model(model)
    last = None
    for gpus in (1, 2, 4, 8, 16, 64, 256):
        c = ClusterSpec(nodes=max(1, gpus // 8), gpus_per_node=min(gpus, 8), gpu="h100-sxm")
        peak = predict(m, c, simple_plan(gpus, zero=zero, micro_batch_size=1)).peak_memory_bytes
        if last is not None:
            assert peak <= last * (1 + 1e-9), (gpus, peak, last)
        last = peak


def test_infeasible_plan_names_the_largest_term():
    pred = predict("llama3-70b", "1xh100", simple_plan(1, recompute="none"))
    assert not pred.feasible
    assert "exceeds the 79.1 GiB" in pred.reasons[0]
    assert max(pred.memory_breakdown, key=pred.memory_breakdown.get) in pred.reasons[0]


def test_memory_knobs_move_memory_the_right_way():
    base = dict(global_batch_size=16, micro_batch_size=2, seq_len=4096, dp=8, tp=1, pp=1, zero=3, recompute="none")
    peak = lambda **o: predict("llama3-8b", "8xh100", parse_plan({**base, **o})).peak_memory_bytes  # noqa
    none = peak()
    assert peak(recompute="selective") < none
    assert peak(recompute="full") < peak(recompute="selective")
    assert peak(recompute="full", recompute_layers=16) < none
    assert peak(offload_activation_layers=16) < none
    assert peak(offload_state_layers=16) < none
    assert peak(zero=2) > none and peak(zero=0) > peak(zero=2)
    assert peak(micro_batch_size=1, global_batch_size=8) < none


def test_time_knobs_move_time_the_right_way():
    base = dict(global_batch_size=16, micro_batch_size=2, seq_len=4096, dp=8, tp=1, pp=1, zero=3, recompute="none")
    t = lambda **o: predict("llama3-8b", "8xh100", parse_plan({**base, **o})).step_time_s  # noqa
    none = t()
    assert t(recompute="full") > t(recompute="selective") > none
    assert t(offload_activation_layers=8) > none
    assert t(compile=True) < none
    assert t(compile=True, fp8_layers=32) < t(compile=True)       # 8B widths gain from float8 when compiled
    assert t(fp8_layers=32) > none                                  # eager float8 is slower (DESIGN.md)


def test_rowwise_float8_costs_the_profiles_measured_gemm_slowdown():
    from costmodel.hardware import load_profile
    plan = parse_plan(dict(global_batch_size=16, micro_batch_size=2, seq_len=4096, dp=8, tp=1, pp=1, zero=3,
                           recompute="none", compile=True, fp8_layers=32))
    row = plan.replace(fp8_recipe="rowwise")
    prof = load_profile("h100-sxm")
    same = prof.with_constants("test", fp8_rowwise_gemm_slowdown=1.0)
    slow = prof.with_constants("test", fp8_rowwise_gemm_slowdown=1.5)
    t = lambda p, pr: predict("llama3-8b", "8xh100", p, profile=pr).time_breakdown["compute_fwd"]  # noqa
    assert t(row, slow) > t(row, same)
    assert t(plan, slow) == pytest.approx(t(plan, same))             # tensorwise plans do not use it


def test_pipeline_bubble_shrinks_with_more_microbatches():
    def bubble(gbs):
        plan = parse_plan(dict(global_batch_size=gbs, micro_batch_size=1, seq_len=4096, dp=1, tp=8, pp=8,
                               zero=0, recompute="full"))
        p = predict("llama3-70b", "8x8xh100", plan)
        return p.time_breakdown["pipeline_bubble"] / p.step_time_s
    assert bubble(64) < bubble(16) < bubble(8)


def test_tokens_and_mfu_follow_the_flops_convention():
    from costmodel.flops import model_flops_per_token
    m = load_model("llama3-8b")
    plan = simple_plan(8)
    p = predict(m, "8xh100", plan)
    assert p.tokens_per_s == pytest.approx(plan.tokens_per_step / p.step_time_s)
    assert p.mfu == pytest.approx(model_flops_per_token(m, 2048) * p.tokens_per_s_per_gpu / 989e12)
    assert np.isclose(p.tokens_per_s_per_gpu * 8, p.tokens_per_s)


def _pp2(**over):
    d = dict(global_batch_size=16, micro_batch_size=1, seq_len=4096, dp=1, tp=1, pp=2, zero=2, recompute="full")
    return parse_plan({**d, **over})


def test_gpipe_last_stage_keeps_every_micro_batchs_log_softmax():
    m = dataclasses.replace(load_model("llama3.2-1b"), tie_word_embeddings=False)  # pipelines need untied
    gpipe, f1b = (predict(m, "2xh200", _pp2(pp_schedule=s)).ranks[1] for s in ("GPipe", "1F1B"))
    per_mb = 4 * 4096 * m.vocab_size                     # fp32 log-softmax output of one micro-batch
    assert f1b["memory_breakdown"]["retained_logits"] == 0
    assert gpipe["memory_breakdown"]["retained_logits"] == pytest.approx(15 * per_mb)


def test_pipeline_receive_buffers_grow_with_the_micro_batch_count():
    m = dataclasses.replace(load_model("llama3.2-1b"), tie_word_embeddings=False)  # pipelines need untied
    buf = lambda gbs: predict(m, "2xh200", _pp2(global_batch_size=gbs)).ranks[0]["memory_breakdown"][  # noqa
        "pipeline_buffers"]
    assert buf(16) == pytest.approx(16 * 2 * 4096 * m.hidden_size)   # first stage: gradient buffers only
    assert buf(32) == pytest.approx(2 * buf(16))
    one_stage = predict(m, "1xh200", parse_plan(dict(global_batch_size=16, micro_batch_size=1, seq_len=4096,
                                                          dp=1, tp=1, pp=1, zero=2, recompute="full")))
    assert one_stage.memory_breakdown.get("pipeline_buffers", 0.0) == 0.0


@pytest.mark.parametrize("values", [[7, 7, 3, 9, 3, 7], list(range(20)) * 2, [5]])
def test_collective_groups_factorise_as_unique_does(values):
    """costmodel.stage groups a stage table's rows by (group, stride, op) without a sort; every row maps back to
    its own value and the distinct values are each listed once, past the compare passes too (20 values)."""
    import numpy as np
    from costmodel.stage import _factorize
    a = np.asarray(values, dtype=np.int64)
    uniq, inverse = _factorize(a)
    assert (uniq[inverse] == a).all() and sorted(uniq.tolist()) == sorted(set(values))
