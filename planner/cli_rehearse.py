"""`loadmaster rehearse` and `plan --rehearse`: one rank of a plan trained on the local GPU with no-op collectives
(launcher.gputools.rehearse), beside the cost model's numbers for that rank."""
from __future__ import annotations

import inspect
import warnings

import typer

from costmodel import load_cluster, load_model

from .cli import console, flag_parameters, flag_values, guarded, print_json


def rerank_rehearsed(result, model: str, cluster: str):
    """The tuner's top plans re-ranked by their rehearsed step time (and dropped where a rank does not fit the
    local GPU or cannot run); on a machine without a GPU a warning says so and ``result`` comes back unchanged."""
    import torch

    from launcher.gputools.rehearse import rehearse
    if not torch.cuda.is_available():
        warnings.warn("--rehearse skipped: it runs a rank of each plan on a CUDA GPU and this machine has none")
        return result
    m, c = load_model(model), load_cluster(cluster)
    timed = []
    for cand in result.top:
        try:
            res = rehearse(m, c, cand.plan, steps=3, warmup_steps=1)
        except ValueError as e:
            warnings.warn(f"--rehearse: a plan was dropped: {' '.join(str(e).split())[:200]}")
            continue
        timed.append((max(r.rehearsed_step_s for r in res.ranks), cand))
    timed.sort(key=lambda x: x[0])
    result.top = [cand for _, cand in timed]
    result.best = result.top[0] if result.top else None
    return result


def register(app: typer.Typer) -> None:
    from launcher.gputools.rehearse import RehearseRequest

    def rehearse_cmd(**flags) -> None:
        """Run one rank of a plan on this machine's GPU with every collective a no-op of the right shape, so a
        rank of a plan for thousands of GPUs runs on one: its measured compute time and peak memory beside the
        cost model's for that rank, and the plan's step time with the modelled communication added."""
        from launcher.gputools.rehearse import rehearse, table
        req = RehearseRequest(**flag_values(flags))
        if req.rank is not None and req.roles:
            raise ValueError("--rank and --roles exclude each other; give one")
        result = rehearse(req.model, req.cluster, _plan_ref(req.plan), ranks=None if req.rank is None
                          else [req.rank], steps=req.steps, warmup_steps=req.warmup_steps)
        if req.as_json:
            print_json(result.to_dict())
            return
        for line in table(result):
            console.print(line, highlight=False)

    params = flag_parameters(RehearseRequest)
    rehearse_cmd.__signature__ = inspect.Signature(params)
    rehearse_cmd.__annotations__ = {p.name: p.annotation for p in params}
    app.command("rehearse")(guarded(rehearse_cmd))


def _plan_ref(ref: str):
    from costmodel.specs import resolve
    return resolve(ref, "plans")
