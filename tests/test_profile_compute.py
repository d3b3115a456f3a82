"""launcher.gputools.profile_compute: each measurement runs on a CPU device with tiny sizes; CUDA-only ones on a GPU."""
import pytest
import torch

from launcher.gputools import profile_compute as compute
from launcher.gputools.profile_shapes import AttentionShape, GemmShape
from launcher.gputools.profile_timing import TimingConfig

CPU = torch.device("cpu")
FAST = TimingConfig(repeats=3, sample_s=0.002, warmup_s=0.0, warmup_calls=1, max_inner=10)


def test_measure_gemm_times_every_shape_and_bigger_takes_longer():
    rows = compute.measure_gemm([GemmShape(32, 32, 32), GemmShape(256, 256, 256)], CPU, FAST)
    assert [(r["m"], r["n"], r["k"]) for r in rows] == [(32, 32, 32), (256, 256, 256)]
    assert 0 < rows[0]["seconds"] < rows[1]["seconds"]  # 512x the FLOPs


def test_measure_fp8_gemm_skips_shapes_float8_cannot_align():
    ok, why = compute.fp8_supported(CPU)
    if not ok:
        pytest.skip(why)
    rows = compute.measure_fp8_gemm([GemmShape(32, 48, 64), GemmShape(32, 40, 64)], CPU, FAST)
    assert [(r["m"], r["n"], r["k"]) for r in rows] == [(32, 48, 64)]
    assert rows[0]["seconds"] > 0


def test_measure_attention_runs_causal_gqa_forward_and_backward():
    shapes = [AttentionShape(batch=1, heads=4, kv_heads=2, seq=64, head_dim=16),
              AttentionShape(batch=1, heads=4, kv_heads=4, seq=256, head_dim=16)]
    rows = compute.measure_attention(shapes, CPU, FAST)
    assert [(r["kv_heads"], r["seq"]) for r in rows] == [(2, 64), (4, 256)]
    assert all(r["seconds"] > 0 for r in rows)


def test_copy_bandwidth_counts_read_and_write():
    gbps = compute.measure_copy_bandwidth(CPU, 4 * 2**20, FAST)
    assert 0.05 < gbps < 1e4


def test_cpu_adamw_throughput_uses_the_given_threads_and_restores_them():
    before = torch.get_num_threads()
    rate, impl = compute.measure_cpu_adamw(200_000, threads=1, steps=2)
    assert impl in ("fused", "foreach")
    assert 1e5 < rate < 1e11
    assert torch.get_num_threads() == before


def test_cpu_adamw_refuses_nonsense_sizes():
    with pytest.raises(ValueError, match="num_params 4 and threads 1"):
        compute.measure_cpu_adamw(4, threads=1)


def test_launch_overhead_is_microseconds_not_milliseconds():
    sec = compute.measure_launch_overhead(CPU, calls=200, repeats=3)
    assert 0 < sec < 1e-3


def test_host_copy_and_memory_need_cuda():
    with pytest.raises(ValueError, match="host copies need a CUDA device"):
        compute.measure_host_copy(CPU, 2**20, FAST)
    with pytest.raises(ValueError, match="memory measurement needs a CUDA device"):
        compute.measure_memory(CPU)


def test_host_cores_is_positive():
    assert compute.host_cores() >= 1


@pytest.mark.gpu
def test_gpu_gemm_reaches_a_sane_fraction_of_the_datasheet_peak():
    from costmodel.hardware import load_profile
    from launcher.gputools.profile_assemble import base_profile_for_gpu
    dev = torch.device("cuda")
    props = torch.cuda.get_device_properties(dev)
    peak = load_profile(base_profile_for_gpu(props.name, props.total_memory)).bf16_tflops
    compute.warm_up_gpu(dev, 0.5)
    (row,) = compute.measure_gemm([GemmShape(8192, 8192, 8192)], dev, TimingConfig())
    tflops = 2 * 8192**3 / row["seconds"] / 1e12
    assert 0.4 * peak < tflops <= 1.05 * peak


@pytest.mark.gpu
def test_gpu_host_copy_and_memory():
    dev = torch.device("cuda")
    h2d, d2h = compute.measure_host_copy(dev, 64 * 2**20, TimingConfig(repeats=3))
    assert 1 < h2d < 1000 and 1 < d2h < 1000
    mem, ctx = compute.measure_memory(dev)
    total = torch.cuda.get_device_properties(dev).total_memory / 2**30
    assert 0.1 < ctx < 5 and 0.9 * total < mem < total  # a CUDA context costs a few hundred MiB


@pytest.mark.gpu
def test_gpu_fp8_gemm_where_supported():
    dev = torch.device("cuda")
    ok, why = compute.fp8_supported(dev)
    if not ok:
        pytest.skip(why)
    rows = compute.measure_fp8_gemm([GemmShape(4096, 4096, 4096)], dev, TimingConfig(repeats=3))
    assert rows and rows[0]["seconds"] > 0


@pytest.mark.gpu
def test_gpu_attention_uses_a_fused_kernel_at_long_sequences():
    dev = torch.device("cuda")
    rows = compute.measure_attention([AttentionShape(1, 32, 8, 16384, 128)], dev, TimingConfig(repeats=3))
    flops = AttentionShape(1, 32, 8, 16384, 128).flops
    assert rows and flops / rows[0]["seconds"] / 1e12 > 50  # the math fallback would be far slower or OOM


@pytest.mark.gpu
def test_gpu_gemm_slows_down_beside_host_copies_but_not_absurdly():
    from launcher.gputools.profile_comm import measure_h2d_overlap
    slow = measure_h2d_overlap(torch.device("cuda"), TimingConfig(repeats=3), nbytes=64 * 2**20, repeats=2)
    assert -0.05 < slow < 0.5
