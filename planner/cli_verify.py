"""`loadmaster verify` and `plan --verify`: peak memory per rank from PyTorch's FSDP2 memory tracker under
FakeTensorMode (launcher.gputools.verify), beside the symbolic prediction."""
from __future__ import annotations

import dataclasses
import warnings

import typer
from rich.table import Table

from costmodel import load_cluster, load_model, profile_for
from costmodel.hardware import GiB

from .cli import console, guarded, print_json
from .cli_predict import fmt_bytes



def result_table(res, title: str) -> Table:
    table = Table(title=title)
    for col in ("stage", "rank", "traced peak", "predicted", "error"):
        table.add_column(col, justify="right")
    for s in res.stages:
        table.add_row(str(s.stage), str(s.rank), fmt_bytes(s.peak_bytes), fmt_bytes(s.predicted_bytes),
                      f"{s.error:+.1%}")
    return table


def breakdown_table(stage) -> Table:
    table = Table(title=f"tracker categories at the peak of stage {stage.stage}")
    table.add_column("category")
    table.add_column("size", justify="right")
    for k, v in sorted(stage.breakdown.items(), key=lambda kv: -kv[1]):
        if v > 0:
            table.add_row(k, fmt_bytes(v))
    return table


def rerank_verified(result, model: str, cluster: str, *, show: bool = True):
    """The tuner's top plans re-ranked by traced memory: plans whose traced peak (plus the profile's allocator
    and context overheads) does not fit move behind those that do; step-time order is kept otherwise. A plan
    verify cannot trace keeps its predicted verdict. Where verify is unavailable (a CPU-only torch build) a
    warning says so and ``result`` comes back unchanged."""
    import torch

    from launcher.gputools.verify import NEEDS_CUDA, cuda_build, verify
    if not cuda_build():
        warnings.warn("--verify skipped: " + NEEDS_CUDA.format(version=torch.__version__))
        return result
    m, c = load_model(model), load_cluster(cluster)
    prof = profile_for(c)
    checked = []
    for cand in result.top:
        try:
            res = verify(m, c, cand.plan)
        except (ValueError, RuntimeError) as e:  # a plan it cannot trace keeps its predicted verdict
            checked.append((False, cand, " ".join(str(e).split())[:200]))
            continue
        need = prof.needed_bytes(res.peak_bytes)
        checked.append((need > prof.memory_bytes, cand, res))
    checked.sort(key=lambda x: (x[0], x[1].step_time_s))
    fitting = [cand for over, cand, _ in checked if not over]
    new = dataclasses.replace(result, top=[cand for _, cand, _ in checked], best=fitting[0] if fitting else None)
    if not fitting:
        new.diagnosis = list(result.diagnosis) + [
            f"none of the top {len(checked)} plans fits in {prof.memory_gib:.1f} GiB by traced memory"]
    if show:
        console.print(_rerank_table(checked))
    return new


def _rerank_table(checked) -> Table:
    table = Table(title="top plans re-ranked by traced memory (FSDPMemTracker)")
    for col in ("#", "layout tp·cp·pp·dp", "step", "predicted peak", "traced peak", "fits"):
        table.add_column(col, justify="right")
    for i, (over, cand, res) in enumerate(checked, start=1):
        p = cand.plan
        traced = fmt_bytes(res.peak_bytes) if not isinstance(res, str) else f"not traced: {res}"
        table.add_row(str(i), f"{p.tp}·{p.cp}·{p.pp}·{p.dp}", f"{cand.step_time_s:.3f} s",
                      fmt_bytes(cand.prediction.peak_memory_bytes), traced, "[red]no[/]" if over else "yes")
    return table


def register(app: typer.Typer) -> None:
    @app.command("verify")
    @guarded
    def verify_cmd(
        model: str = typer.Argument(..., help="Model recipe name or path (YAML or config.json)."),
        cluster: str = typer.Option(..., "--cluster", "-c", help="Cluster recipe name or path."),
        plan: str = typer.Option(..., "--plan", "-p", help="Plan YAML."),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    ) -> None:
        """Trace one training step per pipeline rank with PyTorch's FSDP2 memory tracker (needs a CUDA build
        of torch, no GPU memory) and compare its peak memory with the prediction."""
        from launcher.gputools.verify import verify
        res = verify(model, cluster, plan)
        if as_json:
            print_json(res.to_dict())
            return
        console.print(result_table(res, f"{model} on {cluster}: traced vs predicted peak memory per GPU"))
        worst = max(res.stages, key=lambda s: s.peak_bytes)
        console.print(breakdown_table(worst))
        for note in res.notes:
            console.print(f"[dim]note: {note}[/]")
        console.print(f"traced in {res.seconds:.1f} s on {res.device} (fake tensors: no memory used)")
