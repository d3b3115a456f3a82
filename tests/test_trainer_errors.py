"""User errors and faults as a user meets them: real processes of ``python -m launcher.runtime.train``.

User errors (wrong world size, tp not dividing the heads, missing data file) must print one line on every rank
and exit 2 before any collective, so no rank waits for another; a hung rank must turn into a timeout error."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest
import yaml
from trainer_harness import BASE_PLAN, TINY

TIMEOUT_S = 90


def write_inputs(tmp_path, **plan_changes):
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump({k: v for k, v in TINY.__dict__.items() if v is not None}))
    (tmp_path / "plan.yaml").write_text(yaml.safe_dump({**BASE_PLAN, **plan_changes}))
    return ["--plan", str(tmp_path / "plan.yaml"), "--model", str(tmp_path / "tiny.yaml")]


def env(**extra) -> dict:
    e = {k: v for k, v in os.environ.items() if not k.startswith(("LOADMASTER_FAULT", "TORCHELASTIC"))}
    e.update(OMP_NUM_THREADS="1", **extra)
    return e


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_ranks(world: int, args: list[str], cwd) -> list[subprocess.CompletedProcess]:
    """``world`` trainer processes with torchrun's environment (env:// rendezvous on a free port)."""
    port = free_port()
    procs = [subprocess.Popen([sys.executable, "-m", "launcher.runtime.train", *args], cwd=cwd, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env=env(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE=str(world),
                                      LOCAL_WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)))
             for r in range(world)]
    out = []
    try:
        for p in procs:
            stdout, stderr = p.communicate(timeout=TIMEOUT_S)
            out.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return out


def assert_one_line_error(results, *needles: str) -> None:
    for rank, r in enumerate(results):
        lines = [x for x in r.stderr.splitlines() if x.strip()]
        assert r.returncode == 2, (rank, r.returncode, r.stderr)
        assert len(lines) == 1 and lines[0].startswith("error: "), (rank, r.stderr)
        assert all(n in lines[0] for n in needles), (rank, lines[0])


def test_plan_for_another_world_size(tmp_path):
    args = write_inputs(tmp_path, dp=4)
    assert_one_line_error(launch_ranks(2, args, tmp_path), "dp × cp × tp × pp = 4 × 1 × 1 × 1 = 4", "WORLD_SIZE is 2",
                          "plan.yaml")


def test_tp_that_does_not_divide_the_heads(tmp_path):
    args = write_inputs(tmp_path, tp=3)
    assert_one_line_error(launch_ranks(3, args, tmp_path), "tp: 3 does not divide num_attention_heads 4",
                          "use tp in")


def test_missing_data_file(tmp_path):
    args = write_inputs(tmp_path, dp=2) + ["--data", str(tmp_path / "nope.bin")]
    assert_one_line_error(launch_ranks(2, args, tmp_path), "nope.bin", "no such file")


def test_sigterm_exits_75_on_every_rank_after_saving(tmp_path):
    args = write_inputs(tmp_path, dp=2) + ["--steps", "6", "--out", str(tmp_path / "run"), "--optimizer", "sgd"]
    port = free_port()
    procs = [subprocess.Popen([sys.executable, "-m", "launcher.runtime.train", *args], cwd=tmp_path, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env=env(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                                      LOADMASTER_FAULT="sigterm:0:2"))
             for r in range(2)]
    codes = [p.wait(timeout=TIMEOUT_S) for p in procs]
    assert codes == [75, 75], [p.stderr.read() for p in procs]
    assert (tmp_path / "run" / "preempted").is_file()
    assert (tmp_path / "run" / "checkpoints" / "step-00000003" / "loadmaster.json").is_file()


def torchrun(args: list[str], cwd, nproc: int, *extra: str, **env_extra) -> tuple[subprocess.CompletedProcess, float]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--rdzv-backend",
           "c10d", "--rdzv-endpoint", "localhost:0", "--log-dir", str(cwd / "logs"), "--redirects", "3", *extra,
           "-m", "launcher.runtime.train", *args]
    t0 = time.monotonic()
    res = subprocess.run(cmd, cwd=cwd, text=True, capture_output=True, env=env(**env_extra), timeout=TIMEOUT_S)
    return res, time.monotonic() - t0


def rank_logs(cwd, rank: int, attempt: int = 0) -> str:
    (path,) = cwd.glob(f"logs/*/attempt_{attempt}/{rank}/stderr.log")
    return path.read_text()


def test_user_error_under_torchrun_is_one_line_per_rank(tmp_path):
    res, wall_s = torchrun(write_inputs(tmp_path, dp=4), tmp_path, 2)
    assert res.returncode != 0 and "exitcode  : 2" in res.stderr and wall_s < 60
    printed = 0
    for rank in range(2):  # torchrun kills the other ranks once one exits: a rank may die before printing
        lines = [x for x in rank_logs(tmp_path, rank).splitlines() if x.strip()]
        assert lines == [] or (len(lines) == 1 and "WORLD_SIZE is 2" in lines[0]), lines
        printed += len(lines)
    assert printed >= 1


def test_hung_rank_becomes_a_timeout_error(tmp_path):
    args = write_inputs(tmp_path, dp=2) + ["--steps", "5", "--collective-timeout-s", "4"]
    res, wall_s = torchrun(args, tmp_path, 2, LOADMASTER_FAULT="hang:1:2")
    assert res.returncode != 0 and wall_s < 60
    log = rank_logs(tmp_path, 0)
    assert "did not complete within --collective-timeout-s 4 s" in log and "Traceback" not in log, log
    assert "exitcode  : 3" in res.stderr


@pytest.mark.parametrize("fault", ["kill:1:3"])
def test_restart_after_a_killed_rank_loses_and_repeats_no_step(tmp_path, fault):
    from trainer_harness import assert_close, config, plan_of, run_plan, spawn
    args = write_inputs(tmp_path, dp=2) + ["--steps", "6", "--optimizer", "sgd", "--lr", "0.5", "--seed", "1234",
                                           "--warmup-steps", "0", "--checkpoint-every", "2",
                                           "--out", str(tmp_path / "run")]
    res, _ = torchrun(args, tmp_path, 2, "--max-restarts", "1", LOADMASTER_FAULT=fault)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = yaml.safe_load((tmp_path / "run" / "summary.json").read_text())
    expected = spawn(run_plan, 2, config(plan_of(dp=2), steps=6, max_grad_norm=1.0))[0]
    assert summary["start_step"] == 2 and summary["steps_done"] == 6  # resumed from the step-2 checkpoint
    assert summary["data_position"] == expected["data_position"]
    assert_close(summary["losses"], expected["losses"][2:], rtol=1e-6, what="after restart")
