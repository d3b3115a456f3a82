"""`loadmaster launch` without training: the torchrun commands, environment, run directory, sbatch script,
dry runs and user errors. (Real torchrun runs are in test_launch_runs.py.)"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch.distributed.run as torchrun
import yaml
from trainer_harness import BASE_PLAN, TINY

from costmodel import SpecError, load_model, load_plan
from launcher.launch.commands import launch_env, torchrun_argv
from launcher.launch.request import LaunchRequest, job_exit_code, resolve_launch
from launcher.launch.rundir import write_run_dir

# llama3-70b on 64 nodes × 8 H100: tp 8 inside a node, FSDP over the 64 nodes (predicted to fit)
PLAN_512 = dict(global_batch_size=128, micro_batch_size=1, seq_len=4096, dp=64, tp=8, pp=1, zero=3,
                recompute="full", model="llama3-70b")


def write_tiny(tmp_path, **plan_changes) -> tuple[str, str]:
    """A tiny model and a plan for it (dp=2 unless changed); returns (plan path, model path)."""
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump({k: v for k, v in TINY.__dict__.items() if v is not None}))
    (tmp_path / "plan.yaml").write_text(yaml.safe_dump({**BASE_PLAN, "dp": 2, **plan_changes}))
    return str(tmp_path / "plan.yaml"), str(tmp_path / "tiny.yaml")


def write_plan_512(tmp_path) -> str:
    (tmp_path / "plan512.yaml").write_text(yaml.safe_dump(PLAN_512))
    return str(tmp_path / "plan512.yaml")


def test_single_node_command_is_valid_torchrun_with_restarts_logs_and_run_dir_paths(tmp_path):
    plan, model = write_tiny(tmp_path)
    launch = resolve_launch(LaunchRequest(target=plan, model=model, out=str(tmp_path / "run"), steps=7,
                                          max_restarts=2, checkpoint_every=3, train_args=["--lr", "0.1"]),
                            cuda_devices=0)
    argv = torchrun_argv(launch, node_rank=0)
    assert argv[0] == "torchrun"
    args = torchrun.parse_args(argv[1:])  # torchrun's own parser accepts it, and reads what we meant
    run = (tmp_path / "run").resolve()
    assert (args.nnodes, args.nproc_per_node, args.rdzv_backend, args.rdzv_endpoint) == ("1", "2", "c10d",
                                                                                         "localhost:0")
    assert (args.max_restarts, args.tee, args.log_dir) == (2, "3", f"{run}/logs/node0")
    assert args.module and args.training_script == "launcher.runtime.train"
    train = args.training_script_args
    assert train[:8] == ["--plan", f"{run}/plan.yaml", "--model", f"{run}/model.yaml", "--out", str(run),
                         "--steps", "7"]
    assert train[8:] == ["--checkpoint-every", "3", "--lr", "0.1"]


def test_cpu_launch_takes_its_process_count_from_the_plan_and_overrides(tmp_path):
    plan, model = write_tiny(tmp_path, dp=4)
    assert resolve_launch(LaunchRequest(target=plan, model=model), cuda_devices=0).nproc_per_node == 4
    two_nodes = resolve_launch(LaunchRequest(target=plan, model=model, nnodes=2, out="r",
                                             rdzv_endpoint="127.0.0.1:1"), cuda_devices=0)
    assert (two_nodes.nnodes, two_nodes.nproc_per_node) == (2, 2)
    with pytest.raises(SpecError, match=r"4 × 1 × 1 × 1 = 4 but 1 node\(s\) × 3 processes = 3"):
        resolve_launch(LaunchRequest(target=plan, model=model, nproc_per_node=3), cuda_devices=0)


def test_multi_node_command_names_the_node_endpoint_and_id(tmp_path):
    plan, model = write_tiny(tmp_path, dp=4)
    launch = resolve_launch(LaunchRequest(target=plan, model=model, out=str(tmp_path / "r"), nnodes=2, node_rank=1,
                                          rdzv_endpoint="head:29400", rdzv_id="job7", join_timeout_s=20),
                            cuda_devices=0)
    args = torchrun.parse_args(torchrun_argv(launch, node_rank=1)[1:])
    assert (args.nnodes, args.nproc_per_node, args.node_rank, args.rdzv_endpoint, args.rdzv_id) == \
        ("2", "2", 1, "head:29400", "job7")
    assert args.rdzv_conf == "join_timeout=20" and args.log_dir.endswith("/r/logs/node1")


def test_environment_on_cpu_and_on_gpus(tmp_path):
    plan, model = write_tiny(tmp_path)
    cpu = launch_env(resolve_launch(LaunchRequest(target=plan, model=model), cuda_devices=0), cpu_count=16)
    assert cpu["OMP_NUM_THREADS"] == "8" and not any(k.startswith(("NCCL", "TORCH_NCCL")) for k in cpu)
    gpu = launch_env(resolve_launch(LaunchRequest(target=plan, model=model), cuda_devices=2), cpu_count=3)
    assert gpu["PYTORCH_ALLOC_CONF"] == "expandable_segments:True"
    assert gpu["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "3" and gpu["OMP_NUM_THREADS"] == "1"


def test_run_directory_alone_rebuilds_the_same_command(tmp_path):
    plan, model = write_tiny(tmp_path)
    req = LaunchRequest(target=plan, model=model, out=str(tmp_path / "run"), steps=5, checkpoint_every=2,
                        max_restarts=1, train_args=["--optimizer", "sgd"])
    first = resolve_launch(req, cuda_devices=0)
    argv = torchrun_argv(first, node_rank=0)
    write_run_dir(first, command=argv, env={}, prediction=None)
    run = tmp_path / "run"
    assert load_plan(run / "plan.yaml") == load_plan(plan)
    assert load_model(run / "model.yaml") == load_model(model)
    assert json.loads((run / "launch.json").read_text())["command"] == argv
    os.remove(plan)  # the run directory is all a resume needs
    again = resolve_launch(LaunchRequest(target=str(run)), cuda_devices=0)
    assert torchrun_argv(again, node_rank=0) == argv
    longer = torchrun_argv(resolve_launch(LaunchRequest(target=str(run), steps=9), cuda_devices=0), node_rank=0)
    at = argv.index("--steps")
    assert longer == argv[:at + 1] + ["9"] + argv[at + 2:]


def test_a_run_directory_refuses_another_plan(tmp_path):
    plan, model = write_tiny(tmp_path)
    launch = resolve_launch(LaunchRequest(target=plan, model=model, out=str(tmp_path / "run")), cuda_devices=0)
    write_run_dir(launch, command=[], env={}, prediction=None)
    other, _ = write_tiny(tmp_path, micro_batch_size=1)
    with pytest.raises(SpecError, match="holds another run"):
        relaunch = resolve_launch(LaunchRequest(target=other, model=model, out=str(tmp_path / "run")),
                                  cuda_devices=0)
        write_run_dir(relaunch, command=[], env={}, prediction=None)


@pytest.mark.parametrize("codes, expected", [([75, -15], 75), ([-9, 3], 3), ([75, 2], 2), ([-9], 137), ([1], 1),
                                             ([0], 1)])
def test_job_exit_code_forwards_the_trainers(codes, expected):
    assert job_exit_code(codes) == expected


def test_dry_run_on_64_nodes_prints_node_0_and_node_63(run_cli, tmp_path):
    plan = write_plan_512(tmp_path)
    out = tmp_path / "run"
    code, stdout, stderr = run_cli("launch", plan, "--cluster", "64x8xh100", "--out", out, "--dry-run")
    assert code == 0, stderr
    lines = [x.strip() for x in stdout.splitlines()]
    cmds = [x for x in lines if x.startswith("torchrun ")]
    assert len(cmds) == 2 and "# node 0" in lines and "# node 63" in lines
    for rank, cmd in zip((0, 63), cmds):
        args = torchrun.parse_args(cmd.split()[1:])
        assert (args.nnodes, args.nproc_per_node, args.node_rank, args.rdzv_backend) == ("64", "8", rank, "c10d")
        assert args.log_dir.endswith(f"run/logs/node{rank}")
    assert "62 more differ only in --node-rank" in stdout
    assert "64 × 1 × 8 × 1 = 512 = 64 node(s) × 8 GPUs" in stdout and "(fits)" in stdout
    assert "export PYTORCH_ALLOC_CONF=expandable_segments:True" in lines
    assert not out.exists()  # a dry run starts and writes nothing


def test_dry_run_json_lists_the_shown_nodes(run_cli, tmp_path):
    code, stdout, stderr = run_cli("launch", write_plan_512(tmp_path), "--cluster", "64x8xh100", "--dry-run",
                                   "--json", "--out", tmp_path / "run")
    d = json.loads(stdout)
    assert code == 0 and [c["node_rank"] for c in d["commands"]] == [0, 63] and d["nodes_omitted"] == 62
    assert d["world_size"] == 512 and d["env"]["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "3"


FAKE_SRUN = """\
#!/bin/bash
# fake srun: runs the task's `bash -c CMD` once per node id given in FAKE_NODE_IDS
while [ "$1" != bash ]; do echo "srun-flag $1" >> "$FAKE_LOG"; shift; done
shift 2
for id in $FAKE_NODE_IDS; do SLURM_NODEID=$id bash -c "$1"; done
"""
FAKE_TORCHRUN = """\
#!/bin/bash
echo "torchrun $*" >> "$FAKE_LOG"
touch "$FAKE_RUN/preempted"
exit 1
"""


def test_sbatch_script_content_syntax_and_per_node_expansion(run_cli, tmp_path):
    script, run = tmp_path / "job.sbatch", tmp_path / "run"
    code, stdout, stderr = run_cli("launch", write_plan_512(tmp_path), "--cluster", "64x8xh100", "--out", run,
                                   "--slurm", script, "--max-restarts", "2")
    assert code == 0 and "sbatch" in stdout, stderr
    text = script.read_text()
    for line in ("#SBATCH --nodes=64", "#SBATCH --ntasks-per-node=1", "#SBATCH --gpus-per-node=8",
                 'head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)',
                 "export PYTORCH_ALLOC_CONF=expandable_segments:True"):
        assert line in text.splitlines(), line
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    assert {"plan.yaml", "model.yaml", "cluster.yaml", "launch.json"} <= {p.name for p in run.iterdir()}
    # run it with fake scontrol/srun/torchrun: each node's torchrun line gets its own node id and the head node
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in (("srun", FAKE_SRUN), ("torchrun", FAKE_TORCHRUN),
                       ("scontrol", "#!/bin/bash\nprintf 'gpu-a17\\ngpu-a18\\n'\n")):
        (bin_dir / name).write_text(body)
        (bin_dir / name).chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", FAKE_LOG=str(tmp_path / "log"),
               FAKE_RUN=str(run), FAKE_NODE_IDS="0 63", SLURM_JOB_NODELIST="gpu-a[17-80]", SLURM_JOB_ID="4242",
               SLURM_CPUS_ON_NODE="96")
    res = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 75, res.stderr  # torchrun failed but the run saved: preempted, resubmit
    log = (tmp_path / "log").read_text().splitlines()
    assert "srun-flag --ntasks-per-node=1" in log and "srun-flag --cpus-per-task=96" in log
    cmds = [x for x in log if x.startswith("torchrun ")]
    for node, cmd in zip((0, 63), cmds):
        args = torchrun.parse_args(cmd.split()[1:])
        assert (args.node_rank, args.rdzv_endpoint, args.rdzv_id, args.max_restarts) == \
            (node, "gpu-a17:29500", "4242", 2)
        assert args.log_dir.endswith(f"run/logs/node{node}") and args.training_script == "launcher.runtime.train"


def one_line_error(code: int, stderr: str, *needles: str) -> None:
    lines = [x for x in stderr.splitlines() if x.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error:"), (code, stderr)
    assert all(n in lines[0] for n in needles), lines[0]


def test_plan_for_another_world_size_than_the_cluster(run_cli, tmp_path):
    plan = write_plan_512(tmp_path)
    one_line_error(*run_cli("launch", plan, "--cluster", "8xh100", "--dry-run")[::2],
                   "plan512.yaml", "= 512 but cluster 8xh100 has 8 GPUs")


def test_missing_run_directory(run_cli, tmp_path):
    one_line_error(*run_cli("launch", tmp_path / "nope")[::2], "nope", "no such plan file or run directory")
    (tmp_path / "empty").mkdir()
    one_line_error(*run_cli("launch", tmp_path / "empty")[::2], "launch.json", "not a run directory")


@pytest.mark.parametrize("flags, needles", [
    (["--nnodes", "2"], ["--rdzv-endpoint", "2 nodes need"]),
    (["--nnodes", "2", "--node-rank", "2", "--rdzv-endpoint", "h:1"], ["--node-rank", "is 2 with 2 node(s)"]),
    (["--rdzv-endpoint", "nohost"], ["'nohost' is not HOST:PORT"]),
    (["--max-restarts", "-1"], ["--max-restarts", "is -1"]),
    (["--nproc-per-node", "3"], ["1 node(s) × 3 processes = 3"]),
    (["--data", "nope.bin"], ["nope.bin", "no such file"]),
    (["--bogus"], ["No such option: --bogus"]),
    (["--steps", "many"], ["'--steps'"]),
    (["--", "--steps", "3"], ["--steps", "pass it to launch itself"]),
    (["--", "--lr", "fast"], ["trainer flags", "invalid float value: 'fast'"]),
])
def test_bad_flags_are_one_line_errors(run_cli, tmp_path, flags, needles):
    plan, model = write_tiny(tmp_path)
    one_line_error(*run_cli("launch", plan, "--model", model, "--out", tmp_path / "run", *flags)[::2], *needles)
    assert not (tmp_path / "run").exists()


def test_a_run_directory_fixes_its_model(run_cli, tmp_path):
    plan, model = write_tiny(tmp_path)
    launch = resolve_launch(LaunchRequest(target=plan, model=model, out=str(tmp_path / "run")), cuda_devices=0)
    write_run_dir(launch, command=[], env={}, prediction=None)
    one_line_error(*run_cli("launch", tmp_path / "run", "--model", model)[::2], "--model", "fixed by the run")


NO_TYPER = """
import sys
for name in ("typer", "pulp", "highspy", "rich"):
    sys.modules[name] = None  # GPU nodes may lack them: importing one now fails
from launcher.launch.request import main
args = sys.argv[1:]
print("exit", main([*args, "--dry-run"]), flush=True)
print("exit", main([*args, "--nnodes", "2", "--dry-run"]), flush=True)
"""


def test_launch_entry_works_without_typer_pulp_or_rich(tmp_path):
    plan = write_plan_512(tmp_path)
    res = subprocess.run([sys.executable, "-c", NO_TYPER, plan, "--cluster", "64x8xh100", "--out",
                          str(tmp_path / "run")], capture_output=True, text=True, timeout=60)
    assert [x for x in res.stdout.splitlines() if x.startswith("exit")] == ["exit 0", "exit 2"], res.stderr
    assert sum(x.strip().startswith("torchrun --nnodes 64") for x in res.stdout.splitlines()) == 2
    one_line_error(2, res.stderr, "--nnodes", "is 2 but cluster 64x8xh100 has 64")


def test_a_gpu_plan_is_refused_where_its_gpus_are_not(tmp_path):
    plan, model = write_tiny(tmp_path, dp=8, global_batch_size=16, cluster="8xh100")
    req = lambda **kw: LaunchRequest(target=plan, model=model, **kw)  # noqa: E731
    with pytest.raises(SpecError, match=r"needs 8 GPUs on this node \(8xh100: 1 node\(s\) × 8 h100-sxm\); 0 are "
                                        r"visible; use --dry-run or --slurm FILE"):
        resolve_launch(req(), cuda_devices=0)
    with pytest.raises(SpecError, match="needs 8 GPUs on this node .*; 4 are visible"):
        resolve_launch(req(), cuda_devices=4, gpu_kind="h100-sxm")
    with pytest.raises(SpecError, match="made for h100-sxm GPUs .* but this node has h200; re-plan"):
        resolve_launch(req(), cuda_devices=8, gpu_kind="h200")
    assert resolve_launch(req(), cuda_devices=8, gpu_kind="h100-sxm").nproc_per_node == 8
    assert resolve_launch(req(dry_run=True), cuda_devices=0, dry_run=True).gpu  # a dry run prepares it anywhere
    plan96, _ = write_tiny(tmp_path, dp=8, global_batch_size=16, cluster="8xh100-96g")  # a variant runs on its base GPU
    assert resolve_launch(LaunchRequest(target=plan96, model=model), cuda_devices=8, gpu_kind="h100-sxm")


def test_launch_of_a_gpu_plan_without_gpus_exits_2_with_one_line(run_cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli("launch", "llama3-8b-fsdp")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "the plan needs 8 GPUs on this node" in err and "0 are visible" in err
    assert not (tmp_path / "runs").exists()  # refused before anything was written
