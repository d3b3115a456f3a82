"""loadmaster's planner: search space, tuner, explain, CLI, and the notebook API.

In a notebook::

    import planner
    ev = planner.predict("llama3-70b", "8x8xh100", "my-plan.yaml")
    best = planner.plan("llama3-70b", "8x8xh200", global_batch_size=512, seq_len=4096).best
    table = planner.sweep("llama3-70b", "8x8xh100", best.plan, tp=[1, 2, 4, 8], pp=[1, 2, 4, 8]).to_frame()
    planner.plots.tp_pp_heatmap(...)

The API (planner.api) and the plots (planner.plots) load on first use, so ``import planner`` stays light.
"""
from __future__ import annotations

import importlib

_API = ("predict", "plan", "sweep", "pareto", "Evaluation", "Sweep", "PlanResult", "PLAN_KEYS", "SPACE_KEYS")
__all__ = [*_API, "api", "plots"]


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(".api", __name__), name)
    if name in ("api", "plots"):
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'planner' has no attribute {name!r}")
