"""Figures of what-if results: memory per pipeline rank, step-time breakdown, TP×PP heatmap, Pareto front,
throughput along one swept degree.

Each function returns a matplotlib ``Figure`` built without pyplot, so it works under any backend (Agg in
scripts and CI) and leaves no global figure state behind: a notebook cell ending with it shows it as a PNG;
``fig.savefig(path)`` writes it.
"""
from __future__ import annotations

import io
import math
from typing import Iterable, Sequence

import numpy as np
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from costmodel.prediction import MEMORY_TERMS

from .api import GiB, Evaluation, PlanResult, Sweep, cluster_label, model_label, pareto

# step-time terms grouped as a reader thinks of them: compute, exposed communication by kind, the rest
TIME_GROUPS: dict[str, tuple[str, ...]] = {
    "compute": ("compute_fwd", "compute_bwd", "head"),
    "TP comm (exposed)": ("tp_comm",),
    "PP comm (exposed)": ("pp_comm",),
    "EP all-to-all (exposed)": ("ep_comm",),
    "FSDP comm (exposed)": ("fsdp_fwd", "fsdp_bwd", "fsdp_step"),
    "activation offload": ("offload_activations",),
    "optimizer": ("optimizer",),
    "pipeline bubble": ("pipeline_bubble",),
}
_TIME_COLORS = ("#4c72b0", "#dd8452", "#c44e52", "#da8bc3", "#8172b3", "#937860", "#55a868", "#b0b0b0")
INFEASIBLE_MARK = "✗"
_PHASE = {"peak_forward": "fwd", "peak_loss": "loss", "peak_backward": "bwd", "peak_optimizer": "opt"}


class WhatIfFigure(Figure):
    """A matplotlib Figure that shows itself as a PNG in Jupyter even where pyplot was never imported (an
    Agg-only figure has no display hook of its own)."""

    def _repr_png_(self) -> bytes:
        buf = io.BytesIO()
        self.savefig(buf, format="png", bbox_inches="tight")
        return buf.getvalue()


def _evaluations(source: Evaluation | Sweep | PlanResult | Iterable[Evaluation]) -> list[Evaluation]:
    if isinstance(source, Evaluation):
        return [source]
    if isinstance(source, PlanResult):
        return list(source.top)
    return list(source)


def _term_colors() -> dict[str, tuple]:
    from matplotlib import colormaps
    cmap = colormaps["tab20"]
    return {t: cmap(i / max(1, len(MEMORY_TERMS) - 1)) for i, t in enumerate(MEMORY_TERMS)}


def memory_breakdown(ev: Evaluation, *, title: str | None = None) -> Figure:
    """Stacked bar per pipeline rank: what the rank holds at its own peak (GiB), and the allocation budget."""
    if ev.prediction is None:
        raise ValueError(f"no prediction to plot: {ev.reason}")
    ranks = ev.prediction.ranks
    terms = [t for t in MEMORY_TERMS if any(r["memory_breakdown"].get(t, 0.0) > 0 for r in ranks)]
    colors = _term_colors()
    fig = WhatIfFigure(figsize=(max(5.0, 1.1 * len(ranks) + 3.5), 4.2), layout="constrained")
    ax = fig.add_subplot()
    x = np.arange(len(ranks))
    bottom = np.zeros(len(ranks))
    for t in terms:
        vals = np.array([r["memory_breakdown"].get(t, 0.0) for r in ranks]) / GiB
        ax.bar(x, vals, bottom=bottom, width=0.7, color=colors[t], label=t.replace("_", " "))
        bottom += vals
    for xi, total in zip(x, bottom):
        ax.annotate(f"{total:.0f}", (xi, total), ha="center", va="bottom", fontsize=8)
    ax.axhline(ev.memory_budget_bytes / GiB, color="crimson", ls="--", lw=1.2,
               label=f"budget {ev.memory_budget_bytes / GiB:.0f} GiB")
    ax.set_xticks(x, [f"{r['rank']}\n{_PHASE[r['peak_phase']]}" for r in ranks])
    ax.set_xlabel("pipeline rank (phase of its peak)")
    ax.set_ylabel("GiB per GPU")
    ax.set_ylim(0, max(bottom.max(), ev.memory_budget_bytes / GiB) * 1.12)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    ax.set_title(title or f"memory at the peak: {model_label(ev.model)} on {ev.label}", fontsize=10)
    return fig


def time_breakdown(source: Evaluation | Sweep | PlanResult | Iterable[Evaluation], *,
                   labels: Sequence[str] | None = None, title: str | None = None) -> Figure:
    """One horizontal stacked bar per plan: compute, exposed communication by kind, offload, optimizer and
    pipeline bubble of the bottleneck rank, in seconds per step. Plans that do not fit are hatched."""
    evs = [e for e in _evaluations(source) if e.prediction is not None]
    if not evs:
        raise ValueError("no evaluation with a prediction to plot")
    labels = list(labels) if labels is not None else [e.label for e in evs]
    if len(labels) != len(evs):
        raise ValueError(f"{len(labels)} labels for {len(evs)} plans with a prediction")
    fig = WhatIfFigure(figsize=(9.0, 1.0 + 0.55 * len(evs)), layout="constrained")
    ax = fig.add_subplot()
    y = np.arange(len(evs))[::-1]
    left = np.zeros(len(evs))
    for (group, keys), color in zip(TIME_GROUPS.items(), _TIME_COLORS):
        vals = np.array([sum(e.prediction.time_breakdown.get(k, 0.0) for k in keys) for e in evs])
        if not vals.any():
            continue
        bars = ax.barh(y, vals, left=left, height=0.6, color=color, label=group)
        for bar, e in zip(bars, evs):
            if not e.feasible:
                bar.set_hatch("//")
        left += vals
    for yi, e in zip(y, evs):
        note = "" if e.feasible else "  (does not fit)"
        ax.annotate(f" {e.step_time_s:.2f} s{note}", (e.step_time_s, yi), va="center", fontsize=8)
    ax.set_yticks(y, labels, fontsize=8)
    ax.set_xlabel("seconds per optimizer step (bottleneck rank)")
    ax.set_xlim(0, left.max() * 1.25)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    ax.set_title(title or "where a step's time goes", fontsize=10)
    return fig


def _short_reason(ev: Evaluation) -> str:
    return "OOM" if ev.prediction is not None else "n/a"


def _tp_pp(e: Evaluation) -> tuple[int, int] | None:
    t = e.point.get("tp", e.plan.tp if e.plan is not None else None)
    p = e.point.get("pp", e.plan.pp if e.plan is not None else None)
    return None if t is None or p is None else (int(t), int(p))


def tp_pp_heatmap(sweep: Sweep | Iterable[Evaluation], *, title: str | None = None) -> Figure:
    """Tokens/s per GPU over tensor × pipeline degree; per cell the best feasible point of the sweep.

    A cell with no feasible point is grey and marked ✗ with why: ``OOM`` (every point there runs out of
    memory) or ``n/a`` (the layout cannot run: heads, GPUs or batch do not divide)."""
    evs = [e for e in _evaluations(sweep) if _tp_pp(e) is not None]
    key = _tp_pp
    tps = sorted({key(e)[0] for e in evs})
    pps = sorted({key(e)[1] for e in evs})
    if not tps or not pps:
        raise ValueError("the sweep has no points with tp and pp")
    value = np.full((len(pps), len(tps)), np.nan)
    why = {}
    for e in evs:
        t, p = key(e)
        i, j = pps.index(p), tps.index(t)
        if e.feasible:
            value[i, j] = np.nanmax([value[i, j], e.tokens_per_s_per_gpu])
        elif why.get((i, j)) != "OOM":
            why[(i, j)] = _short_reason(e)
    fig = WhatIfFigure(figsize=(1.3 * len(tps) + 2.8, 0.75 * len(pps) + 1.6), layout="constrained")
    ax = fig.add_subplot()
    finite = value[np.isfinite(value)]
    norm = Normalize(finite.min(), finite.max()) if finite.size else Normalize(0, 1)
    from matplotlib import colormaps
    cmap = colormaps["viridis"].with_extremes(bad="#d9d9d9")
    im = ax.imshow(np.ma.masked_invalid(value), cmap=cmap, norm=norm, aspect="auto", origin="lower")
    for i in range(len(pps)):
        for j in range(len(tps)):
            v = value[i, j]
            if np.isfinite(v):
                dark = norm(v) < 0.55
                ax.text(j, i, f"{v:,.0f}", ha="center", va="center", fontsize=9,
                        color="white" if dark else "black")
            else:
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="xx", ec="#9a9a9a", lw=0))
                ax.text(j, i, f"{INFEASIBLE_MARK} {why.get((i, j), 'n/a')}", ha="center", va="center",
                        fontsize=9, color="#a00000")
    ax.set_xticks(range(len(tps)), [str(t) for t in tps])
    ax.set_yticks(range(len(pps)), [str(p) for p in pps])
    ax.set_xlabel("tensor parallel (tp)")
    ax.set_ylabel("pipeline parallel (pp)")
    fig.colorbar(im, ax=ax, label="tokens/s per GPU")
    clusters = sorted({cluster_label(e.cluster) for e in evs})
    ax.set_title(title or f"tokens/s per GPU, {', '.join(clusters)} (dp fills the rest)", fontsize=10)
    return fig


def pareto_front(source: Sweep | PlanResult | Iterable[Evaluation], *, title: str | None = None) -> Figure:
    """Step time against peak memory of every evaluated plan; the Pareto front (no plan both faster and
    smaller) joined by a line, plans that do not fit greyed, each cluster's memory budget dashed."""
    evs = [e for e in _evaluations(source) if e.prediction is not None]
    if not evs:
        raise ValueError("no evaluation with a prediction to plot")
    fig = WhatIfFigure(figsize=(7.0, 4.4), layout="constrained")
    ax = fig.add_subplot()
    ok = [e for e in evs if e.feasible]
    bad = [e for e in evs if not e.feasible]
    if bad:
        ax.scatter([e.peak_memory_bytes / GiB for e in bad], [e.step_time_s for e in bad], marker="x",
                   color="#9a9a9a", label=f"does not fit ({len(bad)})")
    if ok:
        ax.scatter([e.peak_memory_bytes / GiB for e in ok], [e.step_time_s for e in ok], color="#4c72b0",
                   alpha=0.7, label=f"fits ({len(ok)})")
    front = pareto(evs)
    if front:
        ax.step([e.peak_memory_bytes / GiB for e in front], [e.step_time_s for e in front], where="post",
                color="crimson", lw=1.5, marker="o", label=f"Pareto front ({len(front)})")
    budgets = sorted({round(e.memory_budget_bytes / GiB, 1) for e in evs if math.isfinite(e.memory_budget_bytes)})
    for b in budgets:
        ax.axvline(b, color="crimson", ls="--", lw=0.8, alpha=0.6)
        ax.annotate(f"budget {b:.0f} GiB", (b, 0.98), xycoords=("data", "axes fraction"), rotation=90,
                    xytext=(-3, 0), textcoords="offset points", ha="right", va="top", fontsize=8,
                    color="crimson")
    ax.set_xlabel("peak memory per GPU (GiB)")
    ax.set_ylabel("step time (s)")
    ax.legend(fontsize=8)
    ax.set_title(title or "step time vs memory of the evaluated plans", fontsize=10)
    return fig


def degree_lines(sweep: Sweep | Iterable[Evaluation], x: str, series: str | None = None, *,
                 title: str | None = None) -> Figure:
    """Tokens/s per GPU against one swept plan key ``x`` (e.g. ``ep``), one line per value of ``series`` (e.g.
    ``cp``) if given; points that do not fit are drawn hollow at the axis floor with the reason's first words."""
    evs = [e for e in _evaluations(sweep) if e.plan is not None]
    fig = WhatIfFigure(figsize=(7.0, 4.2))
    ax = fig.add_subplot()
    groups: dict = {}
    for e in evs:
        groups.setdefault(getattr(e.plan, series) if series else None, []).append(e)
    for key, pts in sorted(groups.items(), key=lambda kv: (kv[0] is None, kv[0])):
        pts = sorted(pts, key=lambda e: getattr(e.plan, x))
        xs = [getattr(e.plan, x) for e in pts]
        ys = [e.tokens_per_s_per_gpu if e.feasible else math.nan for e in pts]
        label = f"{series}={key}" if series else None
        line, = ax.plot(xs, ys, marker="o", label=label)
        for e, xv in zip(pts, xs):
            if not e.feasible:
                ax.plot([xv], [0], marker="o", mfc="none", color=line.get_color())
                ax.annotate(_short_reason(e), (xv, 0), textcoords="offset points", xytext=(0, 6), fontsize=7,
                            rotation=90, color=line.get_color())
    ax.set_xscale("log", base=2)
    xs_all = sorted({getattr(e.plan, x) for e in evs})
    ax.set_xticks(xs_all, [str(v) for v in xs_all])
    ax.set_xlabel(x)
    ax.set_ylabel("tokens/s per GPU")
    ax.set_ylim(bottom=0)
    if series:
        ax.legend()
    first = evs[0] if evs else None
    ax.set_title(title or (f"{model_label(first.model)} on {cluster_label(first.cluster)}" if first else ""))
    fig.tight_layout()
    return fig
