"""What a launch runs: the torchrun command of each node, the trainer's flags, the environment, and the dry
run's description of them. Pure functions of a checked ``Launch`` (launcher/launch/request.py)."""
from __future__ import annotations

import shlex
from typing import TYPE_CHECKING

from costmodel import GiB
from costmodel.plan import world_formula

if TYPE_CHECKING:
    from launcher.launch.request import Launch

DEFAULT_PORT = 29500
# Dry runs list every node up to this many, else the first and the last (the others differ only in rank).
SHOW_ALL_NODES = 4
# Seconds torchrun waits, after forwarding SIGTERM to the ranks, before SIGKILL: the preemption checkpoint
# of a large model takes longer than torchrun's default 30 s.
SHUTDOWN_TIMEOUT_S = 300


def train_flags(launch: Launch) -> list[str]:
    """launcher.runtime.train's flags: everything from the run directory, then the user's extra trainer flags."""
    rd = launch.run_dir.resolve()
    flags = ["--plan", str(rd / "plan.yaml"), "--model", str(rd / "model.yaml"), "--out", str(rd),
             "--steps", str(launch.steps)]
    if launch.data:
        flags += ["--data", launch.data]
    if launch.checkpoint_every:
        flags += ["--checkpoint-every", str(launch.checkpoint_every)]
    if launch.cluster is not None:
        flags += ["--cluster", str(rd / "cluster.yaml")]
    return flags + launch.train_args


def torchrun_argv(launch: Launch, *, node_rank: int | str, rdzv_endpoint: str | None = None,
                  rdzv_id: str | None = None, console: bool = True) -> list[str]:
    """The torchrun command of one node (node_rank/endpoint/id may be shell variables, as in the sbatch script).

    Every rank's stdout and stderr go to the run directory's logs, and also to the console unless ``console``
    is off (``--json`` keeps stdout for its one object)."""
    endpoint = rdzv_endpoint or launch.rdzv_endpoint
    if endpoint is None:
        endpoint = "localhost:0" if launch.nnodes == 1 else f"HEAD_NODE:{DEFAULT_PORT}"
    argv = ["torchrun", "--nnodes", str(launch.nnodes), "--nproc-per-node", str(launch.nproc_per_node)]
    if launch.nnodes > 1:  # informational under c10d (it assigns ranks), but names the node in logs
        argv += ["--node-rank", str(node_rank)]
    argv += ["--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--rdzv-id", rdzv_id or launch.rdzv_id]
    if launch.join_timeout_s:
        argv += ["--rdzv-conf", f"join_timeout={launch.join_timeout_s}"]
    argv += ["--max-restarts", str(launch.max_restarts),
             "--log-dir", f"{launch.run_dir.resolve() / 'logs'}/node{node_rank}",
             "--tee" if console else "--redirects", "3", "-m", "launcher.runtime.train", *train_flags(launch)]
    return argv


def launch_env(launch: Launch, *, cpu_count: int) -> dict[str, str]:
    """The variables a good launch sets for every rank (on top of the inherited environment)."""
    env = {
        # torchrun would set 1 (and warn); share the node's cores between its ranks instead
        "OMP_NUM_THREADS": str(max(1, cpu_count // launch.nproc_per_node)),
        "TORCH_ELASTIC_SHUTDOWN_TIMEOUT": str(SHUTDOWN_TIMEOUT_S),
        "TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE": "[rank${rank}]:",  # global rank on every teed line
    }
    if launch.gpu:
        env.update({
            "PYTORCH_ALLOC_CONF": "expandable_segments:True",  # segments grow in place: less fragmentation OOM
            # a failed or timed-out NCCL collective ends the rank, so torchrun restarts the group, never hangs
            "TORCH_NCCL_ASYNC_ERROR_HANDLING": "3",
            # flight recorder: on a collective timeout every rank dumps its last collectives (which one hung)
            # (TORCH_FR_* are the names since torch 2.11; the TORCH_NCCL_* ones warn as deprecated)
            "TORCH_FR_BUFFER_SIZE": "20000",
            "TORCH_NCCL_DUMP_ON_TIMEOUT": "1",
            "TORCH_FR_DUMP_TEMP_FILE": str(launch.run_dir.resolve() / "comm_trace" / "rank_"),
            "NCCL_DEBUG": "WARN",
        })
    return env


def shown_nodes(nnodes: int) -> list[int]:
    return list(range(nnodes)) if nnodes <= SHOW_ALL_NODES else [0, nnodes - 1]


def describe(launch: Launch, env: dict[str, str], prediction) -> dict:
    """What a dry run prints (and --json emits): checks, environment, the torchrun line of each shown node."""
    p = launch.plan
    where = f"{launch.nnodes} node(s) × {launch.nproc_per_node} {'GPUs' if launch.gpu else 'CPU processes'}"
    checks = [f"world size: {world_formula(p)} = {where}"]
    if prediction is None:
        checks.append("memory: not predicted (no cluster: pass --cluster)")
    else:
        checks.append(f"memory: predicted peak {prediction.peak_memory_bytes / GiB:.1f} GiB of "
                      f"{prediction.memory_capacity_bytes / GiB:.1f} GiB per GPU "
                      f"({'fits' if prediction.feasible else 'DOES NOT FIT'}); predicted step "
                      f"{prediction.step_time_s:.3f} s, MFU {prediction.mfu:.1%}")
    if launch.nnodes > 1 and launch.rdzv_endpoint is None:
        checks.append(f"rendezvous: HEAD_NODE:{DEFAULT_PORT} below is a placeholder; pass --rdzv-endpoint HOST:PORT "
                      "(the same on every node) or use --slurm FILE")
    commands = [{"node_rank": r, "argv": torchrun_argv(launch, node_rank=r)} for r in shown_nodes(launch.nnodes)]
    for c in commands:
        c["line"] = shlex.join(c["argv"])
    return {"run_dir": str(launch.run_dir), "resume": launch.from_run_dir, "model": launch.model.name,
            "cluster": launch.cluster.name if launch.cluster else None, "plan": p.to_dict(),
            "world_size": p.world_size, "nnodes": launch.nnodes, "nproc_per_node": launch.nproc_per_node,
            "checks": checks, "env": env, "commands": commands,
            "nodes_omitted": launch.nnodes - len(commands), "settings": launch.settings()}


def format_description(d: dict) -> str:
    lines = [f"run directory: {d['run_dir']}{' (resume)' if d['resume'] else ''}",
             f"model {d['model']}, cluster {d['cluster'] or '-'}"]
    lines += [f"check: {c}" for c in d["checks"]]
    lines.append("environment (every node):")
    lines += [f"  export {k}={shlex.quote(v)}" for k, v in d["env"].items()]
    more = f" ({d['nodes_omitted']} more differ only in --node-rank and --log-dir)" if d["nodes_omitted"] else ""
    lines.append(f"commands, {d['nnodes']} node(s){more}:")
    for c in d["commands"]:
        lines += [f"  # node {c['node_rank']}", f"  {c['line']}"]
    return "\n".join(lines)
