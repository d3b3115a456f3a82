"""`loadmaster launch`: torchrun on this node or many, an sbatch script, or a dry run (launcher/launch/request.py)."""
from __future__ import annotations

import typer
import typer.core
from typer.core import TyperCommand

from .cli import USER_ERROR, err_console, guarded

# typer >= 0.2x vendors click as typer._click; older releases use click itself
_click = getattr(typer.core, "_click", None) or getattr(typer.core, "click")


class _OneLineUsageErrors(TyperCommand):
    """Bad flags are user errors like any other: one line on stderr and exit code 2, not a usage panel."""

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except _click.exceptions.UsageError as e:
            err_console.print(f"[bold red]error:[/] launch: {' '.join(e.format_message().split())}",
                              highlight=False, soft_wrap=True, markup=True)
            raise typer.Exit(USER_ERROR) from None


def register(app: typer.Typer) -> None:
    @app.command("launch", cls=_OneLineUsageErrors, context_settings={"allow_extra_args": True})
    @guarded
    def launch_cmd(
        ctx: typer.Context,
        target: str = typer.Argument(..., metavar="PLAN_OR_RUN_DIR",
                                     help="Plan YAML (or shipped plan name), or a run directory to resume."),
        model: str = typer.Option(None, "--model", "-m", help="Model recipe or path (default: the plan's)."),
        cluster: str = typer.Option(None, "--cluster", "-c",
                                    help="Cluster recipe or path (default: the plan's, else the GPUs here)."),
        steps: int = typer.Option(None, "--steps", help="Optimizer steps to reach (default 10)."),
        data: str = typer.Option(None, "--data", help="Flat binary token file (default: synthetic tokens)."),
        out: str = typer.Option(None, "--out", "-o", help="Run directory (default runs/<plan>-<time>)."),
        dry_run: bool = typer.Option(False, "--dry-run", help="Print the checks, environment and commands only."),
        nnodes: int = typer.Option(None, "--nnodes", help="Nodes (default: the cluster's, else 1)."),
        node_rank: int = typer.Option(0, "--node-rank", help="This node's number (names its logs)."),
        nproc_per_node: int = typer.Option(None, "--nproc-per-node",
                                           help="Processes per node (default: GPUs per node; CPU: world/nodes)."),
        rdzv_endpoint: str = typer.Option(None, "--rdzv-endpoint", help="HOST:PORT of the c10d rendezvous."),
        rdzv_id: str = typer.Option(None, "--rdzv-id", help="Rendezvous id (default: the run directory's name)."),
        join_timeout_s: int = typer.Option(None, "--join-timeout-s", help="Seconds to wait for all nodes."),
        slurm: str = typer.Option(None, "--slurm", help="Write an sbatch script here instead of running."),
        max_restarts: int = typer.Option(None, "--max-restarts", help="Group restarts after a rank fails (0)."),
        checkpoint_every: int = typer.Option(None, "--checkpoint-every", help="Checkpoint every K steps."),
        ignore_prediction: bool = typer.Option(False, "--ignore-prediction",
                                               help="Launch even if the plan is predicted not to fit."),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    ) -> None:
        """Launch a plan with torchrun (one node, many nodes, or SLURM) into a run directory, or resume one.

        Flags after `--` go to the trainer (python -m launcher.runtime.train), e.g. `-- --optimizer sgd --lr 0.1`.
        Exit codes: 0 done, 2 user error, 3 collective or rendezvous timeout, 75 preempted (resume with
        `loadmaster launch RUN_DIR`).
        """
        from launcher.launch.request import LaunchRequest, run_launch
        req = LaunchRequest(target=target, model=model, cluster=cluster, steps=steps, data=data, out=out,
                            nnodes=nnodes, node_rank=node_rank, nproc_per_node=nproc_per_node,
                            rdzv_endpoint=rdzv_endpoint, rdzv_id=rdzv_id, join_timeout_s=join_timeout_s,
                            max_restarts=max_restarts, checkpoint_every=checkpoint_every, train_args=list(ctx.args),
                            ignore_prediction=ignore_prediction)
        code = run_launch(req, dry_run=dry_run, slurm=slurm, as_json=as_json)
        if code:
            raise typer.Exit(code)
