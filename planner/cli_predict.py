"""`loadmaster predict`: the cost of one plan, as a rich table or JSON."""
from __future__ import annotations

import typer
from rich.table import Table

from costmodel.prediction import Prediction, predict
from costmodel.hardware import GiB

from .cli import console, guarded, print_json



def fmt_bytes(x: float) -> str:
    return f"{x / GiB:,.2f} GiB"


def fmt_s(x: float) -> str:
    return f"{x * 1e3:,.1f} ms" if x < 1 else f"{x:,.3f} s"


def prediction_tables(pred: Prediction, title: str) -> list[Table]:
    """Summary, memory breakdown and time breakdown of a prediction."""
    summary = Table(title=title, show_header=False)
    summary.add_column(style="bold")
    summary.add_column(justify="right")
    status = "[green]fits[/]" if pred.feasible else "[red]does not fit[/]"
    for k, v in (("feasible", status), ("step time", fmt_s(pred.step_time_s)),
                 ("tokens/s", f"{pred.tokens_per_s:,.0f}"), ("tokens/s/GPU", f"{pred.tokens_per_s_per_gpu:,.0f}"),
                 ("MFU", f"{pred.mfu:.1%}"),
                 ("peak memory", f"{fmt_bytes(pred.peak_memory_bytes)} of {fmt_bytes(pred.memory_capacity_bytes)}"),
                 ("peak at", f"pipeline rank {pred.peak_rank}, {pred.peak_phase.removeprefix('peak_')}")):
        summary.add_row(k, v)
    mem = Table(title="memory at the peak (per GPU)")
    mem.add_column("term")
    mem.add_column("size", justify="right")
    mem.add_column("share", justify="right")
    total = sum(pred.memory_breakdown.values()) or 1.0
    for k, v in sorted(pred.memory_breakdown.items(), key=lambda kv: -kv[1]):
        if v > 0:
            mem.add_row(k.replace("_", " "), fmt_bytes(v), f"{v / total:.0%}")
    tim = Table(title="time per step (bottleneck rank)")
    tim.add_column("term")
    tim.add_column("time", justify="right")
    tim.add_column("share", justify="right")
    for k, v in sorted(pred.time_breakdown.items(), key=lambda kv: -kv[1]):
        if v > 0:
            tim.add_row(k.replace("_", " "), fmt_s(v), f"{v / pred.step_time_s:.0%}")
    return [summary, mem, tim]


def register(app: typer.Typer) -> None:
    @app.command("predict")
    @guarded
    def predict_cmd(
        model: str = typer.Argument(..., help="Model recipe name or path (YAML or config.json)."),
        cluster: str = typer.Option(..., "--cluster", "-c", help="Cluster recipe name or path."),
        plan: str = typer.Option(..., "--plan", "-p", help="Plan YAML."),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    ) -> None:
        """Predict step time, peak memory per GPU and throughput of a plan."""
        pred = predict(model, cluster, plan)
        if as_json:
            d = pred.to_dict()
            d.pop("stages")
            print_json(d)
            return
        for t in prediction_tables(pred, f"{model} on {cluster}"):
            console.print(t)
        for r in pred.reasons:
            console.print(f"[red]✗[/] {r}")
