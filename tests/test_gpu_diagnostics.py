"""The GPU diagnostics' host-side logic: step anatomy's trace reading and verify_runs' comparison table."""
import json

import pytest

from benchmarks.gpu import step_anatomy, verify_runs


def test_busy_time_is_the_union_of_overlapping_kernels():
    assert step_anatomy.busy_s([(0, 10), (5, 12), (20, 25), (21, 22)]) == 17
    assert step_anatomy.busy_s([]) == 0


@pytest.mark.parametrize("name,cat,want", [
    ("nvjet_sm90_tst_256x128_64x4_1x2_h_bz_coopA_NNT", "kernel", "gemm"),
    ("nvjet_sm90_qqtst_128x128_128x6_2x1_v_bz_ovscale_TNT", "kernel", "gemm"),   # float8: anatomy_fit splits it
    ("void at::native::float8_copy_kernel_cuda<c10::Float8_e4m3fn>", "kernel", "float8 cast"),
    ("triton_poi_fused__fused_rms_norm__scaled_mm__to_copy_clamp", "kernel", "triton"),
    ("cudnn_generated_fort_native_sdpa_sm90_flash_bprop_wgmma_f16", "kernel", "attention"),
    ("ncclDevKernel_AllGather_RING_LL", "kernel", "nccl"),
    ("void at::native::multi_tensor_apply_kernel<FusedAdamMathFunctor>", "kernel", "optimizer"),
    ("void at::native::multi_tensor_apply_kernel<CopyFunctor>", "kernel", "foreach"),
    ("void at::native::split_with_sizes_copy_out_contiguous_no_cast_kernel", "kernel", "fsdp copy"),
    ("triton_poi_fused__to_copy_clamp_mul_0", "kernel", "triton"),
    ("Memcpy HtoD (Pinned -> Device)", "gpu_memcpy", "memcpy HtoD"),
    ("Memset (Device)", "gpu_memset", "memset"),
    ("some_custom_kernel", "kernel", "other"),
])
def test_kernel_categories(name, cat, want):
    assert step_anatomy.category(name, cat) == want


def test_trace_analysis_sums_categories_and_finds_the_idle_gaps(tmp_path):
    events = [{"cat": "kernel", "name": "nvjet_sm90_tst_a", "ts": 0, "dur": 600},
              {"cat": "kernel", "name": "nvjet_sm90_tst_a", "ts": 600, "dur": 200},
              {"cat": "gpu_memcpy", "name": "Memcpy DtoH (Device -> Pinned)", "ts": 700, "dur": 300},
              {"cat": "kernel", "name": "flash_fwd", "ts": 1500, "dur": 500},
              {"cat": "cpu_op", "name": "aten::mm", "ts": 0, "dur": 50}]  # host events are not GPU time
    trace = tmp_path / "trace.json"
    trace.write_text(json.dumps({"traceEvents": events}))
    out = step_anatomy.analyse_trace(trace)
    assert out["kernels"] == 4
    assert out["by_category_s"] == pytest.approx({"gemm": 800e-6, "memcpy DtoH": 300e-6, "attention": 500e-6})
    assert out["busy_s"] == pytest.approx(1500e-6) and out["span_s"] == pytest.approx(2000e-6)
    assert out["top_kernels"][0] == {"name": "nvjet_sm90_tst_a", "s": pytest.approx(800e-6), "count": 2}


def test_verify_table_compares_eager_traces_and_sets_superseded_and_failed_ones_apart(tmp_path):
    G = 2**30
    traced = [{"name": "a", "peak_memory_bytes": 10.1 * G, "predicted_peak_memory_bytes": 10.5 * G, "notes": []},
              {"name": "b", "peak_memory_bytes": 20 * G, "predicted_peak_memory_bytes": 19 * G, "notes": [],
               "superseded": "traced before a fix"},
              {"name": "c", "error": "ValueError: interleaved"},
              {"name": "d", "peak_memory_bytes": 8 * G, "predicted_peak_memory_bytes": 8 * G,
               "notes": ["compile: traced eager"]}]
    measured = [{"name": n, "peak_memory_bytes": g * G, "plan": {"compile": n == "d"}}
                for n, g in (("a", 10.0), ("b", 18.0), ("c", 5.0), ("d", 7.0))]
    tp, mp = tmp_path / "t.json", tmp_path / "m.jsonl"
    tp.write_text(json.dumps(traced))
    mp.write_text("".join(json.dumps(m) + "\n" for m in measured))
    table = verify_runs.compare(tp, [mp])
    assert "| a | 10.00 | 10.10 | +1.0% | 10.50 | +5.0% |" in table
    assert "superseded: traced before a fix" in table and "ValueError: interleaved" in table
    # only the eager, current trace counts in the summary line
    assert "1 eager plans: traced peak median |err| 1.0%, max 1.0%" in table
