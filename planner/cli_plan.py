"""`loadmaster plan` and `loadmaster explain`."""
from __future__ import annotations

from pathlib import Path

import typer
from rich import box
from rich.measure import Measurement
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from costmodel import load_cluster, load_job, load_model, load_plan
from costmodel.prediction import predict
from costmodel.hardware import GiB

from .cli import check_choice, check_flags, console, guarded, print_json
from .cli_predict import fmt_bytes, fmt_s, prediction_tables
from .explain import alternatives, binding_constraint, cost_of, cp_note, differences, float8_effect, runner_up_lines
from .space import SearchSpace
from .tuner import Candidate, TuneResult, check_limits, tune


def _short(v) -> str:
    """A per-stage knob for a table cell: one number, or the stages' values joined by '/'."""
    if isinstance(v, list):
        return "/".join(map(str, v)) if len(set(v)) > 1 else _short(v[0])
    return "-" if not v else str(v)


def _knobs(c: Candidate) -> list[str]:
    p = c.plan
    rec = "-" if p.recompute == "none" else \
        f"{p.recompute[:3]} {'all' if p.recompute_layers is None else _short(p.recompute_layers)}"
    ep = f"(ep{p.ep})" if p.ep > 1 else ""
    layout = f"{p.tp}·{p.cp}·{p.pp}{'×2' if p.virtual_stages == 2 else ''}·{p.dp}{ep}"
    return [layout, str(p.micro_batch_size), str(p.zero), rec,
            f"{_short(p.offload_activation_layers)}/{_short(p.offload_state_layers)}", _short(p.fp8_layers),
            "y" if p.compile else "n", p.grad_reduce]


KNOB_COLUMNS = ("#", "layout", "mbs", "zero", "ckpt", "offl", "fp8", "cmp", "sync")
RESULT_COLUMNS = ("#", "step", "tok/s/GPU", "MFU", "peak", "free")
LEGEND = ("layout tp·cp·pp·dp (×2: two virtual stages; (epN): expert parallel); mbs micro-batch; ckpt "
          "checkpointed blocks per stage; offl offloaded blocks, activations/state; fp8 float8 blocks; cmp "
          "torch.compile; sync gradient reduce; peak and free GPU memory per GPU")


def _rows(result: TuneResult) -> list[dict[str, str]]:
    rows = []
    for i, c in enumerate(result.top):
        pr = c.prediction
        knobs = dict(zip(KNOB_COLUMNS, [str(i + 1), *_knobs(c)]))
        rows.append({**knobs, "step": fmt_s(pr.step_time_s), "tok/s/GPU": f"{pr.tokens_per_s_per_gpu:,.0f}",
                     "MFU": f"{pr.mfu:.0%}", "peak": f"{pr.peak_memory_bytes / GiB:.1f}G",
                     "free": f"{(pr.memory_capacity_bytes - pr.peak_memory_bytes) / GiB:.1f}G"})
    return rows


_LISTS = ("ckpt", "offl", "fp8")  # per-stage lists: the only cells that may wrap (folded, never cut)


def _table(title: str, columns: tuple[str, ...], rows: list[dict[str, str]]) -> Table:
    table = Table(title=title, box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False)
    for c in columns:
        longest = max([len(c), *(len(r[c]) for r in rows)])
        table.add_column(c, justify="left" if c in _LISTS else "right", overflow="fold", no_wrap=c not in _LISTS,
                         min_width=min(longest, 12) if c in _LISTS else longest)
    for r in rows:
        table.add_row(*(r[c] for c in columns))
    return table


def top_tables(result: TuneResult, width: int) -> list[Table]:
    """The top plans as one table, or — when that is wider than ``width`` — a table of knobs and a table of
    predictions, joined by the plan number: every column and every value is shown whole at any width (a long
    per-stage list wraps inside its cell)."""
    rows = _rows(result)
    title = f"top {len(result.top)} plans"
    one = _table(title, KNOB_COLUMNS + RESULT_COLUMNS[1:], rows)
    natural = Measurement.get(console, console.options.update(max_width=10_000), one).maximum
    if natural <= width:
        return [one]
    return [_table(f"{title}: knobs", KNOB_COLUMNS, rows), _table(f"{title}: predicted", RESULT_COLUMNS, rows)]


def _candidate_json(c: Candidate, best: Candidate, num_layers: int) -> dict:
    d = c.prediction.to_dict()
    d.pop("stages")
    return {"plan": c.plan.to_dict(), "prediction": d, "solver_gap": c.gap, "solver": c.status,
            "differs_from_best": differences(best.plan, c.plan, num_layers),
            "cost_vs_best": cost_of(best.prediction, c.prediction) if c is not best else "",
            "equivalent": [p.to_dict() for p in c.equivalent]}


def register(app: typer.Typer) -> None:
    @app.command("plan")
    @guarded
    def plan_cmd(
        model: str = typer.Argument(None, help="Model recipe name, YAML or config.json path, Hugging Face "
                                    "snapshot folder or hub id (default: the job's model).", show_default=False),
        cluster: str = typer.Option(None, "--cluster", "-c", help="Cluster recipe name or path (default: the "
                                    "job's cluster).", show_default=False),
        global_batch_size: int = typer.Option(None, "--global-batch-size", "-b", help="Sequences per step."),
        seq_len: int = typer.Option(None, "--seq-len", "-s", help="Tokens per sequence."),
        job: str = typer.Option(None, "--job", help="Job recipe name or file: global_batch_size and seq_len, "
                                "and model and cluster when it names them (flags and MODEL win)."),
        top_k: int = typer.Option(5, "--top-k", "-k", help="Plans to list (at least 1)."),
        time_limit: float = typer.Option(60.0, "--time-limit", help="Seconds the search may take (> 0)."),
        gap: float = typer.Option(0.01, "--gap", help="Relative gap in [0, 1) within which the best plan is "
                                  "proven optimal: layouts and cases whose bound is within it are not searched."),
        out: Path = typer.Option(None, "--output", "-o", help="Write the chosen plan YAML here."),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
        tp: int = typer.Option(None, "--tp", help="Pin the tensor-parallel degree."),
        pp: int = typer.Option(None, "--pp", help="Pin the pipeline degree."),
        dp: int = typer.Option(None, "--dp", help="Pin the data-parallel degree."),
        cp: int = typer.Option(None, "--cp", help="Pin the context-parallel degree (1: off)."),
        ep: int = typer.Option(None, "--ep", help="Pin the expert-parallel degree (mixture-of-experts models)."),
        micro_batch_size: int = typer.Option(None, "--micro-batch-size", "--mbs", help="Pin the micro-batch."),
        zero: int = typer.Option(None, "--zero", help="Pin the ZeRO level (0, 2, 3)."),
        recompute: str = typer.Option(None, "--recompute", help="Pin checkpointing: none, full, selective."),
        compile_: bool = typer.Option(None, "--compile/--no-compile", help="Pin torch.compile on or off."),
        no_offload: bool = typer.Option(False, "--no-offload", help="Never offload to the CPU."),
        fp8_budget: str = typer.Option("off", "--fp8-budget", help="Share of block-steps allowed in float8: a "
                                       "number in [0, 1], off, or auto (the share measured to keep the loss)."),
        fp8_rotation_steps: int = typer.Option(100, "--fp8-rotation-steps", help="Rotate a partial float8 set every N steps."),
        fp8_temperature: float = typer.Option(1.0, "--fp8-temperature", help="Draw a rotating float8 set "
                                              "loss-aware at this temperature (0: sliding window)."),
        schedule: str = typer.Option(None, "--schedule", help="Pin the pipeline schedule."),
        virtual_stages: int = typer.Option(None, "--virtual-stages",
                                           help="Pin the chunks per rank of Interleaved1F1B."),
        sequence_parallel: bool = typer.Option(None, "--sequence-parallel/--no-sequence-parallel",
                                               help="Pin sequence parallelism on or off (tp > 1)."),
        fp8_recipe: str = typer.Option(None, "--fp8-recipe", help="Pin the float8 recipe: tensorwise or rowwise."),
        cross_node_tp: bool = typer.Option(False, "--cross-node-tp", help="Allow TP groups across nodes."),
        verify: bool = typer.Option(False, "--verify", help="Re-rank the top plans by traced memory "
                                    "(`loadmaster verify`; needs a CUDA build of torch)."),
        rehearse: bool = typer.Option(False, "--rehearse", help="Re-rank the top plans by a rehearsed step: one "
                                      "rank of each run on this GPU with no-op collectives (`loadmaster rehearse`)."),
    ) -> None:
        """Search the plan space for the fastest plan that fits, and explain the choice."""
        if job:
            j = load_job(job)
            global_batch_size = global_batch_size or j.global_batch_size
            seq_len = seq_len or j.seq_len
            model, cluster = model or j.model, cluster or j.cluster
        if model is None or cluster is None:
            raise ValueError(f"give MODEL and --cluster{' (the job names neither)' if job else ''}, or --job FILE "
                             "that names them")
        if global_batch_size is None or seq_len is None:
            raise ValueError("give --global-batch-size and --seq-len (or --job FILE)")
        check_flags(("--top-k", top_k, 1), ("--time-limit", time_limit, 0.01), ("--gap", gap, 0.0), high={"--gap": 1.0})
        check_limits(top_k, time_limit, gap)
        check_flags(("--global-batch-size", global_batch_size, 1), ("--seq-len", seq_len, 1), ("--tp", tp, 1),
                    ("--pp", pp, 1), ("--dp", dp, 1), ("--cp", cp, 1), ("--ep", ep, 1),
                    ("--micro-batch-size", micro_batch_size, 1),
                    ("--virtual-stages", virtual_stages, 2), ("--fp8-rotation-steps", fp8_rotation_steps, 0),
                    ("--fp8-temperature", fp8_temperature, 0.0))
        check_choice("--zero", zero, (0, 1, 2, 3))
        check_choice("--recompute", recompute, ("none", "full", "selective"))
        check_choice("--schedule", schedule, ("1F1B", "Interleaved1F1B", "GPipe"))
        check_choice("--fp8-recipe", fp8_recipe, ("tensorwise", "rowwise"))
        pins = {k: (v,) for k, v in (("virtual_stages", virtual_stages), ("sequence_parallel", sequence_parallel),
                                     ("fp8_recipes", fp8_recipe)) if v is not None}
        space = SearchSpace(
            **pins, tp=tp, pp=pp, dp=dp, cp=cp, ep=ep, micro_batch_size=micro_batch_size,
            zero=(zero,) if zero is not None else SearchSpace.zero,
            recompute=(recompute,) if recompute else SearchSpace.recompute,
            compile=(compile_,) if compile_ is not None else SearchSpace.compile,
            offload=not no_offload, fp8_budget=fp8_budget, fp8_rotation_steps=fp8_rotation_steps,
            fp8_temperature=fp8_temperature,
            schedules=(schedule,) if schedule else SearchSpace.schedules, cross_node_tp=cross_node_tp)
        load_model(model), load_cluster(cluster)  # a bad file fails here, before the search
        if as_json:
            result = tune(model, cluster, global_batch_size, seq_len, space, top_k=top_k,
                          time_limit_s=time_limit, gap=gap)
        else:
            with Progress(TextColumn("searching"), BarColumn(), TextColumn("{task.completed}/{task.total} layouts"),
                          TextColumn("{task.description}"), TimeElapsedColumn(), console=console,
                          transient=True) as bar:
                task = bar.add_task("", total=None)
                result = tune(model, cluster, global_batch_size, seq_len, space, top_k=top_k,
                              time_limit_s=time_limit, gap=gap,
                              progress=lambda done, total, msg: bar.update(task, completed=done + 1, total=total,
                                                                           description=msg))
        if verify:
            from .cli_verify import rerank_verified
            result = rerank_verified(result, model, cluster, show=not as_json)
        if rehearse:
            from .cli_rehearse import rerank_rehearsed
            result = rerank_rehearsed(result, model, cluster)
        if out is not None and result.best is not None:
            out.write_text(result.best.plan.to_yaml())
        L = load_model(model).num_hidden_layers
        if as_json:
            best = result.best
            print_json({"best": _candidate_json(best, best, L) if best else None,
                        "float8": float8_effect(load_model(model), load_cluster(cluster), best.plan,
                                                best.prediction) if best else None,
                        "top": [_candidate_json(c, best, L) for c in result.top], "seconds": result.seconds,
                        "layouts": result.groups, "layouts_searched": result.groups_searched,
                        "layouts_ruled_out": result.groups_pruned, "timed_out": result.timed_out,
                        "bound_s": result.bound_s, "gap": result.gap if best else None,
                        "summary": result.summary(), "diagnosis": result.diagnosis})
        else:
            _print_result(result, model, cluster, out, L)
        if result.best is None:
            raise typer.Exit(1)

    @app.command("explain")
    @guarded
    def explain_cmd(
        model: str = typer.Argument(..., help="Model recipe name or path."),
        cluster: str = typer.Option(..., "--cluster", "-c", help="Cluster recipe name or path."),
        plan: str = typer.Option(..., "--plan", "-p", help="Plan YAML."),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    ) -> None:
        """Memory and time breakdown of a plan, what binds, and why the one-knob alternatives lose."""
        m, c, p = load_model(model), load_cluster(cluster), load_plan(plan)
        pred = predict(m, c, p)
        alts = alternatives(m, c, p, pred)
        if as_json:
            d = pred.to_dict()
            d.pop("stages")
            print_json({"prediction": d, "binding": binding_constraint(pred), "float8": float8_effect(m, c, p, pred),
                        "context_parallel": cp_note(p, pred, alts),
                        "alternatives": [{"change": a.change, "step_time_s": a.prediction.step_time_s,
                                          "feasible": a.prediction.feasible, "reason": a.reason} for a in alts]})
            return
        for t in prediction_tables(pred, f"{m.name} on {c.name}"):
            console.print(t)
        console.print(f"[bold]binding:[/] {binding_constraint(pred)}")
        if (note := float8_effect(m, c, p, pred)) is not None:
            console.print(f"[bold]float8:[/] {note}")
        note = cp_note(p, pred, alts)
        if note:
            console.print(f"[bold]context parallel:[/] {note}")
        table = Table(title="one-knob alternatives")
        for col in ("change", "step", "peak mem", "verdict"):
            table.add_column(col)
        for a in alts:
            table.add_row(a.change, fmt_s(a.prediction.step_time_s), fmt_bytes(a.prediction.peak_memory_bytes),
                          a.reason)
        console.print(table)


def _print_result(result: TuneResult, model: str, cluster: str, out: Path | None, num_layers: int) -> None:
    if result.best is None:
        head = "time limit reached before any plan." if result.timed_out else "no plan fits."
        console.print(f"[bold red]{head}[/] {result.summary()}")
        for line in result.diagnosis:
            console.print(f"  • {line}")
        return
    for table in top_tables(result, console.width):
        console.print(table)
    console.print(f"[dim]{LEGEND}[/]", highlight=False)
    for line in runner_up_lines(result, num_layers):
        console.print(f"  {line}", highlight=False)
    console.print(result.summary())
    best = result.best
    console.print(f"[bold]binding:[/] {binding_constraint(best.prediction)}")
    if (note := float8_effect(load_model(model), load_cluster(cluster), best.plan, best.prediction)) is not None:
        console.print(f"[bold]float8:[/] {note}")
    if best.plan.cp > 1 or best.plan.seq_len >= SearchSpace.cp_min_seq_len:
        m, cl = load_model(model), load_cluster(cluster)
        note = cp_note(best.plan, best.prediction, alternatives(m, cl, best.plan, best.prediction))
        if note:
            console.print(f"[bold]context parallel:[/] {note}")
    if out is not None:
        console.print(f"plan written to [bold]{out}[/] (it names its model and cluster); run it with "
                      f"`loadmaster launch {out}`")
    else:
        console.print("[dim]# chosen plan (write it with -o plan.yaml)[/]")
        console.print(best.plan.to_yaml(), highlight=False)
