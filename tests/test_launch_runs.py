"""`loadmaster launch` with real torchrun processes (CPU, gloo): two nodes on this machine, a killed rank with
restarts, SIGTERM preemption and resuming a run directory alone. SGD in fp32, so losses compare exactly with
forked in-process runs of the same plan (trainer_harness)."""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest
import yaml
from test_trainer_errors import free_port
from trainer_harness import BASE_PLAN, TINY, assert_close, config, plan_of, run_plan, spawn

STEPS = 6
TIMEOUT_S = 120
# launcher.runtime.train flags matching trainer_harness.config(..., max_grad_norm=1.0): SGD, LR 0.5, no warm-up, seed
TRAIN = ["--", "--optimizer", "sgd", "--lr", "0.5", "--warmup-steps", "0", "--seed", "1234"]


def inputs(tmp_path, **plan_changes) -> list[str]:
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump({k: v for k, v in TINY.__dict__.items() if v is not None}))
    (tmp_path / "plan.yaml").write_text(yaml.safe_dump({**BASE_PLAN, **plan_changes}))
    return [str(tmp_path / "plan.yaml"), "--model", str(tmp_path / "tiny.yaml")]


def env(**extra) -> dict:
    e = {k: v for k, v in os.environ.items() if not k.startswith(("LOADMASTER_FAULT", "TORCHELASTIC"))}
    return {**e, **extra}


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "planner.cli", "launch", *map(str, args)]


def launch(*args: str, cwd, **env_extra) -> subprocess.CompletedProcess:
    return subprocess.run(cli(*args), cwd=cwd, text=True, capture_output=True, env=env(**env_extra),
                          timeout=TIMEOUT_S)


def summary(run_dir) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


@pytest.fixture(scope="module")
def uninterrupted():
    """The same plan and settings run without interruption: forked gloo ranks, the in-process trainer."""
    return spawn(run_plan, 2, config(plan_of(dp=2), steps=STEPS, max_grad_norm=1.0))[0]


def test_two_nodes_train_like_one_node_of_four_ranks(tmp_path):
    args = inputs(tmp_path, dp=2, tp=2)
    port, run = free_port(), tmp_path / "run"
    node = lambda r, *flags: subprocess.Popen(  # noqa: E731
        cli(*args, "--out", run, "--steps", 3, "--nnodes", 2, "--node-rank", r, "--rdzv-endpoint",
            f"127.0.0.1:{port}", "--rdzv-id", "two-nodes", "--join-timeout-s", 30, *flags, *TRAIN),
        cwd=tmp_path, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env())
    nodes = [node(0), node(1, "--json")]
    try:
        outs = [p.communicate(timeout=TIMEOUT_S) for p in nodes]
    finally:
        for p in nodes:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in nodes] == [0, 0], [o[1][-2000:] for o in outs]
    one_node = spawn(run_plan, 4, config(plan_of(dp=2, tp=2), steps=3, max_grad_norm=1.0))[0]
    got = summary(run)  # written by global rank 0, on whichever node c10d put it
    assert got["world_size"] == 4 and got["steps_done"] == 3
    assert_close(got["losses"], one_node["losses"], rtol=1e-6, what="two nodes vs one")
    for n in (0, 1):  # each node teed its two local ranks' output into the run directory
        assert len(list(run.glob(f"logs/node{n}/*/attempt_0/[01]/stderr.log"))) == 2
    as_json = json.loads(outs[1][0])  # --json: stdout is one object (the ranks' output only in the logs)
    assert as_json["exit_code"] == 0 and as_json["summary"]["losses"] == got["losses"]


def test_killed_rank_restarts_and_resumes_without_losing_a_step(tmp_path, uninterrupted):
    rank, step = random.randrange(2), random.randrange(1, STEPS)
    fault = f"kill:{rank}:{step}"
    run = tmp_path / "run"
    res = launch(*inputs(tmp_path, dp=2), "--out", run, "--steps", STEPS, "--checkpoint-every", 2,
                 "--max-restarts", 1, *TRAIN, cwd=tmp_path, LOADMASTER_FAULT=fault)
    assert res.returncode == 0, (fault, res.stderr[-3000:])
    got = summary(run)
    assert list(run.glob("logs/node0/*/attempt_1")), f"{fault}: no restart"
    assert got["start_step"] == step // 2 * 2, fault  # resumed from the last checkpoint before the kill
    assert (got["steps_done"], got["data_position"]) == (STEPS, uninterrupted["data_position"]), fault
    assert_close(got["losses"], uninterrupted["losses"][got["start_step"]:], rtol=1e-6, what=fault)
    assert got["final_loss"] == pytest.approx(uninterrupted["final_loss"], rel=1e-6)


# Test-only instrumentation, loaded by every rank through PYTHONPATH: each step sleeps first, so a SIGTERM sent
# after the first step surely arrives while the run is still going (the trainer itself is unchanged).
SLOW_STEPS = """
import os
if os.environ.get("RANK") is not None and os.environ.get("LOADMASTER_TEST_STEP_SLEEP_S"):
    import time
    import launcher.runtime.trainer as trainer
    _train_step = trainer.train_step
    def train_step(*args, **kwargs):
        time.sleep(float(os.environ["LOADMASTER_TEST_STEP_SLEEP_S"]))
        return _train_step(*args, **kwargs)
    trainer.train_step = train_step
"""


@pytest.fixture(scope="module")
def preempted(tmp_path_factory):
    """A launch stopped by SIGTERM to the launcher (what SLURM sends) after its first step."""
    root = tmp_path_factory.mktemp("preempt")
    (root / "hooks").mkdir()
    (root / "hooks" / "sitecustomize.py").write_text(SLOW_STEPS)
    run = root / "run"
    proc = subprocess.Popen(cli(*inputs(root, dp=2), "--out", run, "--steps", STEPS, *TRAIN), cwd=root, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env(PYTHONPATH=str(root / "hooks"), LOADMASTER_TEST_STEP_SLEEP_S="0.3"))
    metrics, deadline = run / "metrics.jsonl", time.monotonic() + TIMEOUT_S
    try:
        while not (metrics.is_file() and metrics.read_text().strip()):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
    return root, run, proc.returncode, out + err


def test_sigterm_to_the_launcher_saves_a_checkpoint_and_exits_75(preempted):
    _, run, code, output = preempted
    assert code == 75, output[-3000:]
    got = summary(run)
    done = got["steps_done"]
    assert got["preempted"] and 1 <= done < STEPS and (run / "preempted").is_file()
    assert [p.name for p in (run / "checkpoints").iterdir()] == [f"step-{done:08d}"]


def test_the_run_directory_alone_resumes_past_a_torn_checkpoint_to_the_uninterrupted_result(
        preempted, uninterrupted, tmp_path, run_cli):
    root, saved, _, _ = preempted
    run = tmp_path / "moved-run"
    shutil.copytree(saved, run)
    for name in ("plan.yaml", "tiny.yaml"):
        (root / name).unlink(missing_ok=True)  # only the run directory is left
    done = summary(run)["steps_done"]
    ckpts = run / "checkpoints"
    torn = ckpts / f"step-{STEPS - 1:08d}"  # newer than the good one, one shard half-written
    shutil.copytree(ckpts / f"step-{done:08d}", torn)
    shard = next(torn.glob("*.distcp"))
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    res = launch(run, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"skipping torn checkpoint {torn}" in res.stdout + res.stderr
    got = summary(run)
    assert (got["start_step"], got["steps_done"], got["data_position"]) == \
        (done, STEPS, uninterrupted["data_position"])
    assert_close(got["losses"], uninterrupted["losses"][done:], rtol=1e-6, what="resumed")
    assert not (run / "preempted").exists()
    code, _, err = run_cli("launch", run)  # finished: nothing to start
    assert code == 0 and f"{STEPS} of {STEPS} steps already trained" in err


def test_a_killed_rank_is_reported_and_the_resumed_run_records_each_step_once(tmp_path):
    """SIGKILL of rank 1 at step 6 of 6 (checkpoints every 2): exit 137 with the rank, the signal, the last
    checkpoint and the resume command; `launch RUN_DIR` then trains steps 5-6 again, and metrics.jsonl (and
    TensorBoard) hold every step exactly once."""
    run = tmp_path / "run"
    first = launch(*inputs(tmp_path, dp=2), "--out", run, "--steps", STEPS, "--checkpoint-every", 2, *TRAIN,
                   cwd=tmp_path, LOADMASTER_FAULT="kill:1:5")
    assert first.returncode == 137, first.stderr[-3000:]
    report = first.stderr[first.stderr.index("error: training failed"):]
    assert "rank 1 (node 0, local rank 1) was killed by SIGKILL" in report.splitlines()[1]
    assert f"{run / 'checkpoints' / 'step-00000004'} (step 4 of {STEPS})" in report
    assert f"resume with: loadmaster launch {run}" in report
    assert "Traceback" not in first.stderr and "ResourceWarning" not in first.stderr
    steps = lambda: [json.loads(ln)["step"] for ln in (run / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    assert steps() == [1, 2, 3, 4, 5]  # step 5 finished after the last checkpoint: it will run again
    assert "[rank0]:step 1/6  loss" in first.stdout  # the console's step lines

    second = launch(run, cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert steps() == list(range(1, STEPS + 1))
    assert "[rank0]:step 6/6" in second.stdout and "steps 4 → 6" in second.stdout  # the summary table
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError:
        pytest.skip("tensorboard not installed (it is in the test extra)")
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert sorted(e.step for e in events.Scalars("train/loss")) == list(range(1, STEPS + 1))
