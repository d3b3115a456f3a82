"""launcher.gputools.profile.run end to end on a CPU device with a tiny configuration: measure, assemble, write,
summarise."""
import pytest
import torch
import yaml

from costmodel.hardware import load_profile, parse_profile
from launcher.gputools.profile import ProfileConfig, parse_args, run
from launcher.gputools.profile_timing import TimingConfig

TINY = ProfileConfig(timing=TimingConfig(repeats=2, sample_s=0.001, warmup_s=0.0, warmup_calls=1, max_inner=4),
                     warmup_gpu_s=0.0, models=("llama3.2-1b",), gemm_tokens=(16,), tp_degrees=(4, 8),
                     square_sizes=(64, 128), num_gemm_shapes=3, num_fp8_shapes=0,  # CPU float8 is slow emulation
                     attention_seq_lens=(64, 128), attention_head_dims=(64,), attention_tokens=128,
                     num_attention_shapes=3, hbm_copy_bytes=2**20, adam_params=2**16)


def test_run_writes_a_profile_that_loads_and_prints_the_summary(tmp_path, capsys):
    out = tmp_path / "cpu-test.yaml"
    argv = ["-o", str(out), "--base", "h200", "--name", "cpu-test"]
    run(parse_args(argv), argv, torch.device("cpu"), 0, 1, TINY)
    prof = load_profile(str(out))
    base = load_profile("h200")
    assert prof.name == "cpu-test"
    assert prof.source.startswith("measured ") and "cpu torch " in prof.source
    assert f"python -m launcher.gputools.profile {' '.join(argv)}" in prof.source
    assert prof.gemm != base.gemm and len(prof.gemm.points) == 5  # 3 model shapes + 2 squares
    assert prof.attention != base.attention and len(prof.attention.points) == 3
    assert prof.fp8_gemm == base.fp8_gemm and "num_fp8_shapes is 0" in prof.source
    assert prof.hbm_gbps != base.hbm_gbps and prof.kernel_launch_s != base.kernel_launch_s
    # CUDA-only measurements are absent on CPU: their fields stay the base's
    overlap = ("comm_compute_slowdown", "comm_efficiency", "h2d_compute_slowdown")
    assert (prof.memory_gib, prof.host_link_gbps) == (base.memory_gib, base.host_link_gbps)
    assert [prof.constants[k] for k in overlap] == [base.constants[k] for k in overlap]
    assert parse_profile(yaml.safe_load(out.read_text()), out) == prof
    printed = capsys.readouterr().out
    assert "bf16 GEMM 128^3 TFLOP/s" in printed and "HBM copy GB/s" in printed


def test_run_refuses_a_missing_output_folder_before_measuring(tmp_path):
    argv = ["-o", str(tmp_path / "nope" / "p.yaml"), "--base", "h200"]
    with pytest.raises(ValueError, match="output folder .*nope does not exist"):
        run(parse_args(argv), argv, torch.device("cpu"), 0, 1, TINY)


def test_run_needs_a_base_for_an_unknown_device(tmp_path):
    argv = ["-o", str(tmp_path / "p.yaml")]
    with pytest.raises(ValueError, match="no datasheet profile for GPU 'cpu'; pass --base"):
        run(parse_args(argv), argv, torch.device("cpu"), 0, 1, TINY)


def test_quick_preset_measures_less_than_full():
    q, f = ProfileConfig.quick(), ProfileConfig.full()
    assert q.num_gemm_shapes < 700 and f.num_gemm_shapes is None
    assert q.timing.repeats < f.timing.repeats and len(q.comm_sizes) < len(f.comm_sizes)
    assert min(f.comm_sizes) == 64 * 2**10 and max(f.comm_sizes) == 2**30
