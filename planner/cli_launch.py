"""`loadmaster launch`: torchrun on this node or many, an sbatch script, or a dry run (launcher/launch/request.py).

Its options are generated from LaunchRequest's fields, the same ones ``python -m launcher.launch`` takes."""
from __future__ import annotations

import inspect

import typer
import typer.core
from typer.core import TyperCommand

from .cli import USER_ERROR, err_console, flag_parameters, flag_values, guarded

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
    from launcher.launch.request import LaunchRequest  # no torch import: `loadmaster --help` stays fast

    def launch_cmd(ctx: typer.Context, **flags) -> None:
        """Launch a plan with torchrun (one node, many nodes, or SLURM) into a run directory, or resume one.

        Flags after `--` go to the trainer (python -m launcher.runtime.train), e.g. `-- --optimizer sgd --lr 0.1`.
        A plan with a cluster runs on that many GPUs of its kind; a plan without one (a tiny model) runs as CPU
        processes on gloo.

        Exit codes: {codes}
        """
        from launcher.launch.request import run_launch
        code = run_launch(LaunchRequest(**flag_values(flags), train_args=list(ctx.args)))
        if code:
            raise typer.Exit(code)

    from launcher.launch.report import EXIT_CODES
    launch_cmd.__doc__ = launch_cmd.__doc__.replace("{codes}", "; ".join(f"{k} {v}" for k, v in EXIT_CODES.items()))
    # the options are LaunchRequest's fields (costmodel/flags.py), the same ones python -m launcher.launch takes
    params = [inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context),
              *flag_parameters(LaunchRequest)]
    launch_cmd.__signature__ = inspect.Signature(params)
    launch_cmd.__annotations__ = {x.name: x.annotation for x in params}
    app.command("launch", cls=_OneLineUsageErrors, context_settings={"allow_extra_args": True})(guarded(launch_cmd))
