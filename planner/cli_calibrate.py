"""`loadmaster calibrate`: refit a profile's efficiency and overlap constants to measured runs."""
from __future__ import annotations

import warnings
from pathlib import Path

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from costmodel import load_profile
from costmodel.hardware import resolve_measured
from costmodel.calibration import DEFAULT_KNOBS, Calibration, calibrate
from costmodel.runs import read_runs
from costmodel.hardware import GiB

from .cli import console, err_console, guarded, print_json
from .cli_predict import fmt_s



def _pct(x: float | None) -> str:
    return "" if x is None else f"{x:+.1%}"


def _value(x: float) -> str:
    return f"{x:.3g}" if abs(x) < 1e-3 and x else f"{x:.4f}"


def constants_table(cal: Calibration) -> Table:
    table = Table(title=f"constants of {cal.base.name} refit to the runs")
    for col in ("constant", "before", "after", "± std err", "change"):
        table.add_column(col, justify="right" if col != "constant" else "left")
    for k, (b, a, se) in cal.fitted.items():
        table.add_row(k, _value(b), _value(a), "" if se is None else _value(se), _pct(a / b - 1) if b else "")
    return table


def runs_table(cal: Calibration) -> Table:
    table = Table(title="per run: step time measured and error of the prediction before / after / leave-one-out; "
                        "peak allocated memory")
    for col in ("run", "step", "before", "after", "LOO", "peak", "error"):
        table.add_column(col, justify="right" if col != "run" else "left")
    for r in cal.runs:
        e = r.errors
        table.add_row(r.name, fmt_s(r.measured_s), _pct(e["before"]), _pct(e["after"]), _pct(e["loo"]),
                      f"{r.measured_bytes / GiB:.2f} GiB" if r.measured_bytes else "-", _pct(e["memory"]))
    return table


def summary_lines(cal: Calibration) -> list[str]:
    s = cal.summary()
    unchanged = [f"unchanged {k}: {why}" for k, why in cal.unchanged.items()]
    pct = lambda k: "n/a" if s[k] is None else f"{s[k]:.1%}"  # noqa: E731
    lines = [f"step time |error|: before median {pct('before_median_abs_err')} max {pct('before_max_abs_err')}; "
             f"after median {pct('after_median_abs_err')} max {pct('after_max_abs_err')}; leave-one-out median "
             f"{pct('loo_median_abs_err')} max {pct('loo_max_abs_err')}",
             f"peak memory |error| (no fitted constant): median {pct('memory_median_abs_err')} max "
             f"{pct('memory_max_abs_err')}"]
    if cal.oom_runs:
        called = sum(o["called"] for o in cal.oom_runs)
        missed = [o["name"] for o in cal.oom_runs if not o["called"]]
        lines.append(f"out-of-memory runs called: {called} of {len(cal.oom_runs)}"
                     + (f" (missed: {', '.join(missed)})" if missed else ""))
    return unchanged + lines + cal.notes


def register(app: typer.Typer) -> None:
    @app.command("calibrate")
    @guarded
    def calibrate_cmd(
        runs: list[str] = typer.Argument(None, help="Run directories, summary.json / metrics.jsonl files or "
                                         "launcher.runtime.bench .jsonl files."),
        profile: str = typer.Option(None, "--profile", "-p", help="Profile to start from (default: the runs' "
                                    "cluster profile, measured if present)."),
        output: Path = typer.Option(None, "--output", "-o", help="Write the calibrated profile YAML here."),
        params: str = typer.Option(",".join(DEFAULT_KNOBS), "--params",
                                   help="Comma-separated constants to refit (those the runs cannot identify stay)."),
        cluster: str = typer.Option(None, "--cluster", "-c", help="Cluster of every run (overrides what they "
                                    "recorded; for runs whose cluster was detected on several nodes)."),
        name: str = typer.Option(None, "--name", help="Profile name (default: the output file's stem)."),
        force: bool = typer.Option(False, "--force", help="Write the profile even when it predicts the runs' "
                                   "step times worse than the profile it started from."),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    ) -> None:
        """Refit a few efficiency and overlap constants of a hardware profile to measured runs by least squares,
        with the error before and after and the leave-one-out error."""
        if not runs:
            raise ValueError("give at least one run: a run directory, summary.json, metrics.jsonl or a "
                             "launcher.runtime.bench .jsonl file")
        measured, skipped = read_runs(runs, cluster=cluster)
        if not measured:
            raise ValueError(f"no measured run in {', '.join(runs)} ({len(skipped)} recorded errors only)")
        gpu = measured[0].cluster.gpu
        base = load_profile(profile or resolve_measured(gpu) or gpu)  # without any cluster's link overrides
        if profile and not base.name.startswith(Path(gpu).stem):
            warnings.warn(f"the runs ran on {gpu} GPUs but --profile {profile} is named {base.name}; the refit "
                          "constants describe the runs' GPU")
        knobs = [k.strip() for k in params.split(",") if k.strip()]
        with Progress(TextColumn("refitting"), BarColumn(), TextColumn("{task.completed}/{task.total} fits"),
                      TimeElapsedColumn(), console=err_console, transient=True, disable=as_json) as bar:
            task = bar.add_task("", total=None)
            cal = calibrate(measured, base, knobs=knobs, name=name or (output.stem if output else None),
                            sources=[str(r) for r in runs],
                            progress=lambda done, total: bar.update(task, completed=done, total=total))
        cal.notes.extend(f"skipped {s}" for s in skipped)
        s = cal.summary()
        worse = (s["after_median_abs_err"] or 0) > (s["before_median_abs_err"] or 0)
        if output is not None and worse and not force:
            raise ValueError(f"{output}: not written: the refit profile predicts the runs worse than {base.name} "
                             f"(median |step time error| {s['before_median_abs_err']:.1%} -> "
                             f"{s['after_median_abs_err']:.1%}); add runs, fit fewer --params, or pass --force")
        if output is not None:
            output.write_text(cal.profile.to_yaml())
        if as_json:
            print_json(dict(cal.to_dict(), output=str(output) if output else None))
            return
        console.print(constants_table(cal))
        console.print(runs_table(cal))
        for line in summary_lines(cal):
            console.print(line, highlight=False)
        if output is not None:
            console.print(f"calibrated profile written to [bold]{output}[/]; use it with `gpu: {output}` in a "
                          f"cluster file, or name it profiles/<gpu>-measured.yaml to make it the default")
        else:
            console.print("[dim]nothing written (give -o FILE to write the calibrated profile)[/]")
