"""launcher.gputools.profile_shapes: which GEMM and attention sizes the profiler measures."""
import pytest

from costmodel.specs import load_model
from launcher.gputools.profile_shapes import (AttentionShape, GemmShape, local_heads, model_attention_shapes,
                                     model_gemm_shapes, projection_shapes, recipe_models, spread)


def test_llama3_8b_projections_without_tensor_parallelism():
    shapes = projection_shapes(load_model("llama3-8b"), 4096, 1)
    # QKV: (32 + 2*8) heads * 128; out: 32*128 -> 4096; up 4096 -> 14336; down 14336 -> 4096
    assert shapes == [GemmShape(4096, 6144, 4096), GemmShape(4096, 4096, 4096),
                      GemmShape(4096, 14336, 4096), GemmShape(4096, 4096, 14336)]


def test_tensor_parallel_splits_columns_of_qkv_and_up_and_rows_of_out_and_down():
    shapes = projection_shapes(load_model("llama3-8b"), 2048, 8)
    assert shapes == [GemmShape(2048, (4 + 2 * 1) * 128, 4096), GemmShape(2048, 4096, 4 * 128),
                      GemmShape(2048, 14336 // 8, 4096), GemmShape(2048, 4096, 14336 // 8)]


def test_kv_heads_are_replicated_when_tp_exceeds_them_and_uneven_heads_are_refused():
    assert local_heads(load_model("llama3-70b"), 8) == (8, 1)
    assert local_heads(load_model("qwen2.5-7b"), 4) == (7, 1)  # 4 kv heads over 4 ranks
    assert local_heads(load_model("qwen2.5-7b"), 8) is None  # 28 query heads do not split 8 ways
    assert len(projection_shapes(load_model("qwen2.5-7b"), 2048, 8)) == 2  # MLP only (18944 / 8)


def test_model_gemm_shapes_are_distinct_and_sorted_by_flops():
    shapes = model_gemm_shapes(recipe_models(), (2048, 4096), (1, 2))
    assert len(shapes) == len(set(shapes))
    flops = [s.flops for s in shapes]
    assert flops == sorted(flops)
    assert GemmShape(4096, 6144, 4096) in shapes  # llama3-8b QKV at tp 1


def test_attention_flops_follow_the_stated_convention():
    s = AttentionShape(batch=2, heads=32, kv_heads=8, seq=4096, head_dim=128)
    forward_causal = 4 * 2 * 32 * 4096**2 * 128 / 2
    assert s.flops == pytest.approx(forward_causal * 3.5)


def test_attention_shapes_keep_tokens_per_call_and_filter_head_dims():
    shapes = model_attention_shapes(recipe_models(), (1024, 16384), (64,), (1, 2), tokens=16384)
    assert shapes and all(s.head_dim == 64 for s in shapes)
    assert {s.batch * s.seq for s in shapes} == {16384}
    assert AttentionShape(16, 32, 8, 1024, 64) in shapes  # llama3.2-1b at tp 1


def test_spread_keeps_both_ends_and_the_count():
    items = [2.0**k for k in range(40)]
    picked = spread(items, 5, key=lambda x: x)
    assert picked[0] == items[0] and picked[-1] == items[-1]
    assert len(picked) == 5
    assert picked == [2.0**k for k in (0, 10, 20, 29, 39)] or picked == [2.0**k for k in (0, 10, 19, 29, 39)]


def test_spread_returns_everything_when_count_is_none_or_large():
    items = [3.0, 1.0, 2.0]
    assert spread(items, None, key=lambda x: x) == [1.0, 2.0, 3.0]
    assert spread(items, 10, key=lambda x: x) == [1.0, 2.0, 3.0]


def test_spread_refuses_a_count_below_two():
    with pytest.raises(ValueError, match="count 1 must be at least 2"):
        spread([1.0, 2.0, 3.0], 1, key=lambda x: x)
