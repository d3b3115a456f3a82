"""`loadmaster export`: a plan as a TorchTitan, Megatron-LM or DeepSpeed configuration."""
from __future__ import annotations

import sys
from pathlib import Path

import typer

from costmodel import check_plan, load_cluster, load_model, load_plan
from launcher.export.common import TARGETS, export_plan

from .cli import console, err_console, guarded, print_json


def register(app: typer.Typer) -> None:
    @app.command("export")
    @guarded
    def export_cmd(
        plan: str = typer.Argument(..., help="Plan YAML."),
        to: str = typer.Option(..., "--to", "-t", help=f"Target engine: {', '.join(TARGETS)}."),
        out: Path = typer.Option(None, "--output", "-o", help="Write the files and launch.sh into this folder."),
        model: str = typer.Option(None, "--model", "-m", help="Model recipe or path (default: the plan's)."),
        cluster: str = typer.Option(None, "--cluster", "-c", help="Cluster recipe or path (default: the plan's)."),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON object (files, command, warnings)."),
    ) -> None:
        """Write a plan as another engine's config; knobs the engine cannot express are listed as warnings."""
        if to not in TARGETS:
            raise ValueError(f"--to {to!r} is not an export target; use one of {', '.join(TARGETS)}")
        p = load_plan(plan)
        model = model or p.model
        if model is None:
            raise ValueError(f"{plan}: the plan names no model; give --model NAME_OR_PATH")
        m = load_model(model)
        c = load_cluster(cluster or p.cluster) if (cluster or p.cluster) else None
        check_plan(p, m, c)
        result = export_plan(p, m, c, to)
        written = result.write(out) if out is not None else []
        if as_json:
            print_json({**result.to_dict(), "written": [str(w) for w in written]})
            return
        for w in result.warnings:
            err_console.print(f"[yellow]warning:[/] {w}", highlight=False, soft_wrap=True)
        if out is None:  # plain stdout: rich would wrap the file text
            for name, text in result.files.items():
                sys.stdout.write(f"# ---- {name}\n{text}")
        else:
            console.print(f"wrote {', '.join(str(w) for w in written)}", highlight=False, soft_wrap=True)
        sys.stdout.write(f"# ---- launch\n{result.command}\n")
