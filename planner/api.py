"""The notebook API: what-if questions as plain functions — cost a plan, tune one, sweep a grid of plans.

Every function takes spec objects, paths or shipped recipe names, and returns dataclasses whose
``to_frame()`` gives a pandas table (pandas is imported only then). Nothing here prints or touches the CLI.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Sequence

from costmodel import GiB, ClusterSpec, ModelSpec, Plan, SpecError, check_plan, load_cluster, load_model, parse_plan
from costmodel.hardware import HardwareProfile, profile_for
from costmodel.plan import PER_STAGE_KEYS, load_plan
from costmodel.prediction import Prediction
from costmodel.prediction import predict as _cost
from costmodel.specs import portable_ref, resolve

from .space import SearchSpace

if TYPE_CHECKING:
    import pandas as pd

ModelRef = ModelSpec | str | Path
ClusterRef = ClusterSpec | str | Path
PlanRef = Plan | dict | str | Path
PLAN_KEYS = tuple(f.name for f in dataclasses.fields(Plan) if f.init and f.name not in ("model", "cluster"))
"""Plan keys a sweep may vary or ``predict`` may override."""
SPACE_KEYS = tuple(f.name for f in dataclasses.fields(SearchSpace))
"""Search-space pins ``plan`` accepts."""
_TABLE_KEYS = ("global_batch_size", "micro_batch_size", "seq_len", "dp", "cp", "tp", "pp", "ep", "zero", "recompute",
               *PER_STAGE_KEYS, "compile", "pp_schedule")


def model_label(m: ModelSpec) -> str:
    return m.name or f"{m.num_hidden_layers}L-{m.hidden_size}h"


def cluster_label(c: ClusterSpec) -> str:
    return c.name or f"{c.nodes}x{c.gpus_per_node}x{c.gpu}"


@dataclass
class Evaluation:
    """One plan costed on one cluster.

    ``prediction`` is None when the plan cannot run there at all (``reason`` says why, e.g. tp does not
    divide the heads); a plan that runs out of memory has a prediction with ``feasible`` False and its
    reason. Numbers read from a missing prediction are NaN."""

    model: ModelSpec
    """The model costed."""
    cluster: ClusterSpec
    """The cluster costed."""
    plan: Plan | None
    """The plan, or None when its keys do not even form a valid plan."""
    prediction: Prediction | None
    """What the plan costs, or None (see ``reason``)."""
    reason: str = ""
    """Why the plan is infeasible; empty when it fits."""
    notes: list[str] = field(default_factory=list)
    """Warnings raised while building and costing the plan (e.g. zero 3 with pp > 1 runs as zero 2)."""
    point: dict[str, Any] = field(default_factory=dict)
    """The swept values of this point (empty outside a sweep)."""
    memory_budget_bytes: float = math.nan
    """Bytes a rank may allocate: the GPU's memory less the CUDA context and the allocator's fragmentation."""

    @property
    def feasible(self) -> bool:
        return self.prediction is not None and self.prediction.feasible

    def _get(self, key: str) -> float:
        return math.nan if self.prediction is None else float(getattr(self.prediction, key))

    @property
    def step_time_s(self) -> float:
        return self._get("step_time_s")

    @property
    def peak_memory_bytes(self) -> float:
        return self._get("peak_memory_bytes")

    @property
    def tokens_per_s_per_gpu(self) -> float:
        return self._get("tokens_per_s_per_gpu")

    @property
    def mfu(self) -> float:
        return self._get("mfu")

    @property
    def layout(self) -> str:
        """The parallel layout, e.g. ``tp2·pp8·dp4`` (``pp4×2`` for two interleaved chunks per rank, ``dp8(ep4)``
        with expert parallelism folded from dp, ``cp4·`` before tp with context parallelism)."""
        if self.plan is None:
            return "?"
        p = self.plan
        chunks = f"×{p.virtual_stages}" if p.virtual_stages > 1 else ""
        ep = f"(ep{p.ep})" if p.ep > 1 else ""
        cp = f"cp{p.cp}·" if p.cp > 1 else ""
        return f"{cp}tp{p.tp}·pp{p.pp}{chunks}·dp{p.dp}{ep}"

    @property
    def label(self) -> str:
        """Cluster and layout, e.g. ``8x8xh100 tp2·pp8·dp4``."""
        return f"{cluster_label(self.cluster)} {self.layout}"

    def row(self) -> dict[str, Any]:
        """One flat table row: names, swept values, the main plan keys, the prediction, the reason."""
        out: dict[str, Any] = {"model": model_label(self.model), "cluster": cluster_label(self.cluster),
                               "gpus": self.cluster.num_gpus, **self.point}
        for k in _TABLE_KEYS:
            if k not in out:
                out[k] = getattr(self.plan, k) if self.plan is not None else None
        out.update(feasible=self.feasible, step_time_s=self.step_time_s,
                   tokens_per_s=self._get("tokens_per_s"), tokens_per_s_per_gpu=self.tokens_per_s_per_gpu,
                   mfu=self.mfu, peak_memory_gib=self.peak_memory_bytes / GiB,
                   budget_gib=self.memory_budget_bytes / GiB, reason=self.reason, notes="; ".join(self.notes))
        return out

    def to_frame(self) -> "pd.DataFrame":
        """This evaluation as a one-row table (the columns of a sweep's table)."""
        return _frame([self.row()])

    def breakdown(self) -> "pd.DataFrame":
        """Memory (GiB, worst rank at its peak) and step time (s, bottleneck rank) by term, largest first."""
        if self.prediction is None:
            raise ValueError(f"no prediction to break down: {self.reason}")
        rows = [("memory", k, v / GiB, "GiB") for k, v in self.prediction.memory_breakdown.items()]
        rows += [("time", k, v, "s") for k, v in self.prediction.time_breakdown.items()]
        pd = _pandas()
        df = pd.DataFrame(rows, columns=["kind", "term", "value", "unit"])
        return df.sort_values(["kind", "value"], ascending=[True, False], ignore_index=True)


@dataclass
class Sweep:
    """Every point of a sweep, infeasible ones included, in the order of the cartesian product."""

    axes: dict[str, list]
    """The swept keys and their values (``model`` and ``cluster`` when given as lists)."""
    rows: list[Evaluation]
    """One evaluation per point."""

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[Evaluation]:
        return iter(self.rows)

    def feasible(self) -> list[Evaluation]:
        return [e for e in self.rows if e.feasible]

    def to_frame(self) -> "pd.DataFrame":
        return _frame([e.row() for e in self.rows])


@dataclass
class PlanResult:
    """What the tuner found: the best plan and its runners-up, or why nothing fits."""

    best: Evaluation | None
    """The fastest plan that fits, or None."""
    top: list[Evaluation]
    """The best plans, fastest first."""
    diagnosis: list[str]
    """Why nothing fits (empty when something does)."""
    seconds: float
    """Wall time of the search."""
    layouts: int
    """(tp, pp, dp, micro-batch) layouts in the space."""
    layouts_searched: int
    """Layouts the bounds did not prune."""
    bound_s: float = 0.0
    """A lower bound on the step time of every plan of the space (planner.tuner)."""
    gap: float = math.nan
    """The best plan's relative distance to ``bound_s`` (NaN without a plan)."""
    timed_out: bool = False
    """The time limit stopped the search before it was complete."""
    summary: str = ""
    """One line: what was searched, the time limit if it cut the search, and the gap to the bound."""
    runner_ups: list[str] = field(default_factory=list)
    """Per runner-up: the knobs that differ from the best plan and what that costs (planner.explain)."""

    def to_frame(self) -> "pd.DataFrame":
        """One row per plan of ``top`` with its rank (1 = best)."""
        return _frame([{"rank": i + 1, **e.row()} for i, e in enumerate(self.top)])


def _pandas():
    try:
        import pandas
    except ImportError as e:  # pragma: no cover - pandas is in the notebook and test extras
        raise ImportError("to_frame needs pandas: pip install pandas (in a loadmaster checkout: pip install -e '.[notebook]')") from e
    return pandas


_INT_COLUMNS = ("gpus", "global_batch_size", "micro_batch_size", "seq_len", "dp", "tp", "pp", "ep", "zero", "rank")


def _frame(rows: list[dict]) -> "pd.DataFrame":
    df = _pandas().DataFrame(rows)
    for col in _INT_COLUMNS:  # points without a plan leave holes: keep the rest integers, not floats
        if col in df and df[col].isna().any():
            df[col] = df[col].astype("Int64")
    return df


def _load_plan(ref: PlanRef) -> Plan:
    if isinstance(ref, (Plan, dict)):
        return load_plan(ref)
    return load_plan(resolve(ref, "plans"))


def _ref_name(ref: Any, kind: str) -> str | None:
    return portable_ref(ref, kind) if isinstance(ref, (str, Path)) else None


def _as_values(key: str, values: Any) -> list:
    if isinstance(values, (str, bytes, dict)) or not isinstance(values, Iterable):
        return [values]
    out = list(values)
    if not out:
        raise ValueError(f"sweep axis {key!r} has no values; give at least one")
    return out


def _check_keys(keys: Iterable[str], valid: Sequence[str], what: str) -> None:
    bad = [k for k in keys if k not in valid]
    if bad:
        raise ValueError(f"{what} {', '.join(map(repr, bad))} {'is' if len(bad) == 1 else 'are'} not "
                         f"{'a plan key' if valid is PLAN_KEYS else 'a search-space pin'}; valid keys: "
                         f"{', '.join(valid)}")


def _evaluate(model: ModelSpec, cluster: ClusterSpec, prof: HardwareProfile, data: dict, *, strict: bool,
              point: dict | None = None) -> Evaluation:
    """Build the plan from ``data`` and cost it; with ``strict`` a SpecError propagates, else it is the reason."""
    ev = Evaluation(model, cluster, None, None, point=dict(point or {}), memory_budget_bytes=prof.usable_memory_bytes)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ev.plan = parse_plan(data, "<plan>")
            check_plan(ev.plan, model, cluster)
            ev.prediction = _cost(model, cluster, ev.plan, profile=prof)
        except SpecError as e:
            if strict:
                raise
            ev.reason = f"{e.key}: {e.problem}" + (f"; {e.fix}" if e.fix else "")
    ev.notes = list(dict.fromkeys(str(w.message).removeprefix("<plan>: ") for w in caught))
    if ev.prediction is not None and not ev.prediction.feasible:
        ev.reason = "; ".join(ev.prediction.reasons)
    return ev


def _fit_point(data: dict, changes: dict, model: ModelSpec, cluster: ClusterSpec, fit_dp: bool) -> list[str]:
    """Adapt the base plan's derived keys to one point; returns notes on what was adapted."""
    notes = []
    tp, pp, cp, v = data.get("tp"), data.get("pp"), data.get("cp", 1), data.get("virtual_stages", 1)
    if not all(isinstance(x, int) and x >= 1 for x in (tp, pp, cp, v)):
        return notes   # a malformed value: parse_plan names it as the point's reason
    if fit_dp and "dp" not in changes and cluster.num_gpus % (tp * pp * cp) == 0:
        data["dp"] = cluster.num_gpus // (tp * pp * cp)
    lps = data.get("layers_per_stage")
    if isinstance(lps, list) and "layers_per_stage" not in changes:
        if len(lps) != pp * v or sum(lps) != model.num_hidden_layers:
            data["layers_per_stage"] = None
            notes.append("the base plan's layers_per_stage does not fit this point; stages split evenly")
    return notes


def predict(model: ModelRef, cluster: ClusterRef, plan: PlanRef, **changes: Any) -> Evaluation:
    """Cost ``plan`` (an object, dict, path or shipped plan name) for ``model`` on ``cluster``.

    Keyword arguments override plan keys (``predict(m, c, p, seq_len=8192)``); overriding tp, pp or cp
    without dp sets dp to GPUs / (tp × pp × cp). A plan that cannot run on the cluster raises SpecError naming
    the key and the fix; one that runs out of memory returns an Evaluation with ``feasible`` False and
    the reason."""
    _check_keys(changes, PLAN_KEYS, "predict override")
    m, c = load_model(model), load_cluster(cluster)
    data = {**_load_plan(plan).to_dict(), **changes}
    notes = _fit_point(data, changes, m, c, fit_dp=bool({"tp", "pp", "cp"} & set(changes)))
    ev = _evaluate(m, c, profile_for(c), data, strict=True)
    ev.notes = notes + ev.notes
    return ev


def _space(space: SearchSpace | None, pins: dict[str, Any]) -> SearchSpace:
    _check_keys(pins, SPACE_KEYS, "plan pin")
    space = space or SearchSpace()
    fixed = {}
    for k, v in pins.items():
        if isinstance(getattr(space, k), tuple):   # zero, recompute, compile, schedules: one value or several
            v = tuple(v) if isinstance(v, (list, tuple, set)) else (v,)
        fixed[k] = v
    return dataclasses.replace(space, **fixed)


def plan(model: ModelRef, cluster: ClusterRef, *, global_batch_size: int, seq_len: int, top_k: int = 5,
         time_limit_s: float = 30.0, gap: float = 0.01, space: SearchSpace | None = None,
         **pins: Any) -> PlanResult:
    """Search for the fastest plan that fits (planner.tuner.tune).

    ``pins`` are SearchSpace fields: ``tp``, ``pp``, ``dp``, ``cp``, ``ep``, ``micro_batch_size`` fix a degree;
    ``zero``, ``recompute``, ``compile``, ``schedules``, ``sequence_parallel``, ``virtual_stages``... take one value
    or a list of allowed ones; ``offload=False`` forbids CPU offload; ``fp8_budget`` is the largest share of
    block-steps in float8 (a number in [0, 1], ``"off"`` or ``"auto"``; 1.0 allows float8 in every block).
    ``top_k`` < 1, a ``time_limit_s`` that is not a positive number and a ``gap`` outside [0, 1) raise
    ValueError."""
    from .explain import runner_up_lines
    from .tuner import check_limits, tune  # the MILP solver stack loads only when a search is asked for

    check_limits(top_k, time_limit_s, gap)

    sp = _space(space, pins)
    m, c = load_model(model), load_cluster(cluster)
    prof = profile_for(c)
    # recipe names travel into the tuned plan's model/cluster keys, so `loadmaster launch` finds them
    m_ref = _ref_name(model, "models") if not isinstance(model, ModelSpec) else None
    c_ref = _ref_name(cluster, "clusters") if not isinstance(cluster, ClusterSpec) else None
    with warnings.catch_warnings():   # the candidates' warnings; each plan's own are in its notes below
        warnings.simplefilter("ignore")
        res = tune(m_ref or m, c_ref or c, global_batch_size, seq_len, sp, top_k=top_k,
                   time_limit_s=time_limit_s, gap=gap, profile=prof)
    top = []
    for cand in res.top:
        ev = _evaluate(m, c, prof, cand.plan.to_dict(), strict=True)
        assert math.isclose(ev.step_time_s, cand.step_time_s, rel_tol=1e-9), (ev.step_time_s, cand.step_time_s)
        top.append(ev)
    return PlanResult(best=top[0] if top else None, top=top, diagnosis=list(res.diagnosis), seconds=res.seconds,
                      layouts=res.groups, layouts_searched=res.groups_searched, bound_s=res.bound_s, gap=res.gap,
                      timed_out=res.timed_out, summary=res.summary(),
                      runner_ups=runner_up_lines(res, m.num_hidden_layers))


def _as_list(ref: Any, load) -> list:
    refs = list(ref) if isinstance(ref, (list, tuple)) else [ref]
    if not refs:
        raise ValueError("give at least one model and one cluster")
    return [(r, load(r)) for r in refs]


def sweep(model: ModelRef | Sequence[ModelRef], cluster: ClusterRef | Sequence[ClusterRef], base_plan: PlanRef,
          *, fit_dp: bool = True, **axes: Any) -> Sweep:
    """Cost every point of the cartesian product of ``axes`` (plan keys with lists of values, e.g.
    ``seq_len=[2048, 4096], tp=[1, 2, 4, 8], cp=[1, 2, 4]``) and of ``model`` and ``cluster`` when they are lists.

    Each point starts from ``base_plan``. With ``fit_dp`` (default) and dp not swept, dp becomes
    GPUs / (tp × pp × cp) so the plan fills each cluster; a base ``layers_per_stage`` that does not fit a
    point falls back to the even split. Points that cannot run, or do not fit in memory, are kept with
    their reason. An axis that is not a plan key raises ValueError naming it and the valid keys."""
    _check_keys(axes, PLAN_KEYS, "sweep axis")
    values = {k: _as_values(k, v) for k, v in axes.items()}
    models, clusters = _as_list(model, load_model), _as_list(cluster, load_cluster)
    base = _load_plan(base_plan).to_dict()
    shown = {}
    if isinstance(model, (list, tuple)):
        shown["model"] = [model_label(m) for _, m in models]
    if isinstance(cluster, (list, tuple)):
        shown["cluster"] = [cluster_label(c) for _, c in clusters]
    profiles = {id(c): profile_for(c) for _, c in clusters}
    rows = []
    for (m_ref, m), (c_ref, c), combo in itertools.product(models, clusters, itertools.product(*values.values())):
        changes = dict(zip(values, combo))
        # the plan names what it was costed for (None for spec objects, which have no file to point at)
        data = {**base, **changes, "model": _ref_name(m_ref, "models"), "cluster": _ref_name(c_ref, "clusters")}
        notes = _fit_point(data, changes, m, c, fit_dp)
        ev = _evaluate(m, c, profiles[id(c)], data, strict=False, point=changes)
        ev.notes = notes + ev.notes
        rows.append(ev)
    return Sweep(axes={**shown, **values}, rows=rows)


def pareto(evaluations: Iterable[Evaluation]) -> list[Evaluation]:
    """The feasible evaluations no other feasible one beats in both step time and peak memory, by memory."""
    pts = sorted((e for e in evaluations if e.feasible), key=lambda e: (e.peak_memory_bytes, e.step_time_s))
    front, best_t = [], math.inf
    for e in pts:
        if e.step_time_s < best_t:
            front.append(e)
            best_t = e.step_time_s
    return front
