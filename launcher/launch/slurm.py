"""The sbatch script of a launch: one task per node runs torchrun; the c10d rendezvous is on the first node.

SLURM fills in what differs per node at run time (``$SLURM_NODEID``, the head node from
``scontrol show hostnames``, ``$SLURM_JOB_ID`` as the rendezvous id), so one script serves every node.
Preemption or the time limit (``--signal=TERM@120``) reaches torchrun, which forwards SIGTERM to the ranks:
they save a checkpoint and the job exits 75; submitting the same script again resumes the run directory.
"""
from __future__ import annotations

import re
import shlex
from pathlib import Path

from launcher.runtime.faults import EXIT_PREEMPTED
from launcher.launch.commands import DEFAULT_PORT, torchrun_argv
from launcher.launch.request import Launch

REPO_DIR = Path(__file__).resolve().parent.parent
# Seconds before the time limit at which SLURM sends SIGTERM, leaving time for the preemption checkpoint.
SIGNAL_BEFORE_LIMIT_S = 120


def _word(arg: str) -> str:
    """One shell word: quoted literally, except that ``${VAR}`` references expand (inside double quotes)."""
    if "${" not in arg:
        return shlex.quote(arg)
    return '"' + re.sub(r'(["\\`])', r"\\\1", arg) + '"'


def sbatch_script(launch: Launch, env: dict[str, str], *, port: int = DEFAULT_PORT,
                  repo_dir: Path = REPO_DIR) -> str:
    """A bash script for ``sbatch``: #SBATCH header, environment, ``srun`` of torchrun on every node."""
    rd = launch.run_dir.resolve()
    gpus = launch.nproc_per_node
    argv = torchrun_argv(launch, node_rank="${SLURM_NODEID}", rdzv_endpoint=f"${{LOADMASTER_HEAD_NODE}}:{port}",
                         rdzv_id="${SLURM_JOB_ID}")
    per_node = "exec " + " ".join(_word(a) for a in argv)  # evaluated by each task: its own $SLURM_NODEID
    exports = [f"export {k}={shlex.quote(v)}" for k, v in env.items() if k != "OMP_NUM_THREADS"]
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", launch.rdzv_id)
    q = shlex.quote
    return "\n".join([
        "#!/bin/bash",
        f"# loadmaster launch of {launch.plan.source} ({launch.model.name}) on {launch.nnodes} nodes x {gpus} "
        f"GPUs; run directory {rd}",
        f"# Submit it with sbatch; submit it again to resume after preemption or time-out (exit {EXIT_PREEMPTED}).",
        f"#SBATCH --job-name=loadmaster-{name}",
        f"#SBATCH --nodes={launch.nnodes}",
        "#SBATCH --ntasks-per-node=1",
        f"#SBATCH --gpus-per-node={gpus}",
        "#SBATCH --exclusive",
        f"#SBATCH --output={rd}/slurm-%j.out",
        f"#SBATCH --signal=TERM@{SIGNAL_BEFORE_LIMIT_S}",
        "set -uo pipefail",
        f"cd {q(str(repo_dir))}",
        'head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)',
        'export LOADMASTER_HEAD_NODE="$head_node"',
        *exports,
        # the node's cores shared by its ranks
        f"export OMP_NUM_THREADS=$(( SLURM_CPUS_ON_NODE / {gpus} > 0 ? SLURM_CPUS_ON_NODE / {gpus} : 1 ))",
        # bash defers a trapped signal until srun returns, so the preemption check below still runs
        "trap 'echo \"loadmaster: SIGTERM: the ranks are saving a checkpoint\"' TERM",
        "start=$(date +%s)",
        f'srun --nodes={launch.nnodes} --ntasks-per-node=1 --cpus-per-task="$SLURM_CPUS_ON_NODE" '
        f"--kill-on-bad-exit=1 bash -c {q(per_node)}",
        "status=$?",
        f"marker={q(str(rd / 'preempted'))}",
        f'if [ -f "$marker" ] && [ "$(stat -c %Y "$marker")" -ge "$start" ]; then exit {EXIT_PREEMPTED}; fi',
        'exit "$status"',
        "",
    ])
