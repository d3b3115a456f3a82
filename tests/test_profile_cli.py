"""`loadmaster profile` and `python -m launcher.gputools.profile`: the command they start, and the no-GPU error."""
import subprocess
import sys

import pytest
import torch

import planner.cli_profile as cli_profile
from planner.cli_profile import NO_GPU, profile_command

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without a GPU")


def test_cli_without_a_gpu_prints_one_line_and_exits_2(run_cli, monkeypatch):
    monkeypatch.setattr(cli_profile, "cuda_devices", lambda: 0)
    code, out, err = run_cli("profile", "--quick", "-o", "x.yaml")
    assert code == 2
    assert err.strip() == f"error: {NO_GPU}"


def test_cli_refuses_more_gpus_than_visible(run_cli, monkeypatch):
    monkeypatch.setattr(cli_profile, "cuda_devices", lambda: 2)
    code, out, err = run_cli("profile", "--gpus", "4")
    assert code == 2
    assert "--gpus 4 but only 2 CUDA device(s) are visible; pass --gpus 2 or fewer" in " ".join(err.split())


def test_cli_passes_the_profiler_exit_code_through(run_cli, monkeypatch):
    started = []

    class Done:
        returncode = 3
    monkeypatch.setattr(cli_profile, "cuda_devices", lambda: 1)
    monkeypatch.setattr(cli_profile.subprocess, "run", lambda cmd: started.append(cmd) or Done())
    code, out, err = run_cli("profile", "-o", "p.yaml", "--base", "h100-sxm")
    assert code == 3
    assert started == [[sys.executable, "-m", "launcher.gputools.profile", "-o", "p.yaml", "--base", "h100-sxm"]]


def test_one_gpu_runs_the_profiler_alone():
    cmd = profile_command(gpus=1, output="profiles/mine.yaml", quick=True, base=None, name="mine", as_json=False)
    assert cmd == [sys.executable, "-m", "launcher.gputools.profile", "-o", "profiles/mine.yaml", "--quick", "--name",
                   "mine"]


def test_several_gpus_run_under_torchrun_on_one_node():
    cmd = profile_command(gpus=2, output=None, quick=False, base="h200", name=None, as_json=True)
    assert cmd == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                   "-m", "launcher.gputools.profile", "--base", "h200", "--json"]


def test_zero_gpus_is_refused():
    with pytest.raises(ValueError, match="--gpus 0 must be at least 1"):
        profile_command(gpus=0, output=None, quick=False, base=None, name=None, as_json=False)


@no_cuda
def test_module_without_a_gpu_prints_one_line_and_exits_2(tmp_path):
    res = subprocess.run([sys.executable, "-m", "launcher.gputools.profile", "--quick", "-o", str(tmp_path / "p.yaml")],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert res.stderr.strip() == NO_GPU
    assert not (tmp_path / "p.yaml").exists()


@no_cuda
def test_torchrun_passes_every_profiler_flag_through(tmp_path):
    cmd = profile_command(gpus=2, output=str(tmp_path / "p.yaml"), quick=True, base="h200", name="n",
                          as_json=True)
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert "unrecognized arguments" not in res.stderr and "error: argument" not in res.stderr
    # A rank that parsed its flags reaches the GPU check; torchrun may stop the other rank as soon as the
    # first exits, so only one line is guaranteed.
    assert res.stderr.count(NO_GPU) >= 1


def test_the_profiler_imports_nothing_gpu_nodes_lack():
    code = ("import sys, launcher.gputools.profile; bad = [m for m in ('typer', 'rich', 'pulp', 'highspy', 'planner') "
            "if m in sys.modules]; print(','.join(bad))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == ""
