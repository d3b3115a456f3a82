"""Pipeline parallelism: cut the meta model into stage modules, then wrap them in a pipelining schedule."""
from __future__ import annotations

import copy
import inspect
from typing import Callable

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe, ScheduleInterleaved1F1B

from launcher.runtime.model import Transformer

SCHEDULES = {"1F1B": Schedule1F1B, "GPipe": ScheduleGPipe, "Interleaved1F1B": ScheduleInterleaved1F1B}


def stage_ids(pp_rank: int, pp: int, virtual_stages: int) -> list[int]:
    """Stages held by ``pp_rank``: rank r holds r, r + pp, r + 2·pp, ... (the layout interleaving expects)."""
    return [pp_rank + v * pp for v in range(virtual_stages)]


def split_pipeline(model: Transformer, *, layers_per_stage: list[int], pp_rank: int, pp: int,
                   virtual_stages: int) -> list[tuple[int, Transformer]]:
    """This rank's stage modules, cut from the meta ``model``: [(stage index, module)].

    Stage s keeps blocks [sum(layers_per_stage[:s]), ... + layers_per_stage[s]) under their global keys (FQNs
    stay those of the whole model, so one checkpoint serves any split), the embedding only if s is the first
    stage and the final norm and output only if s is the last (uneven splits are allowed). Call on the meta
    device: copies are free. Each module is then parallelised on its own (TP → AC → compile → FSDP).
    """
    num_stages = pp * virtual_stages
    assert len(layers_per_stage) == num_stages and sum(layers_per_stage) == len(model.layers), layers_per_stage
    assert not (model.spec.tie_word_embeddings and num_stages > 1), "check_plan refuses tied embeddings over stages"
    parts = []
    for s in stage_ids(pp_rank, pp, virtual_stages):
        start = sum(layers_per_stage[:s])
        keep = {str(i) for i in range(start, start + layers_per_stage[s])}
        part = copy.deepcopy(model)
        for key in list(part.layers.keys()):
            if key not in keep:
                del part.layers[key]
        if s > 0:
            part.tok_embeddings = None
        if s < num_stages - 1:
            part.norm = None
            part.output = None
        parts.append((s, part))
    return parts


def _supported_kwargs(fn: Callable, **kwargs) -> dict:
    params = inspect.signature(fn).parameters
    return {k: v for k, v in kwargs.items() if k in params}


def build_schedule(parts: list[tuple[int, nn.Module]], *, pp_mesh: DeviceMesh, device: torch.device,
                   schedule: str, n_microbatches: int, loss_fn: Callable):
    """``PipelineStage`` per materialised, parallelised stage module and the plan's schedule over them.

    Each micro-batch's loss is ``loss_fn`` (a mean over its tokens); ``scale_grads`` (the default) divides the
    accumulated gradients by ``n_microbatches``, so gradients are those of the mean over all micro-batches, as
    without pipelining. Gradient sync is left to the stages (they turn FSDP2's off until the last backward).
    """
    num_stages = pp_mesh.size() * len(parts)
    group = pp_mesh.get_group()
    stages = [PipelineStage(module, s, num_stages, device, group=group) for s, module in parts]
    cls = SCHEDULES[schedule]
    common = _supported_kwargs(cls.__init__, n_microbatches=n_microbatches, loss_fn=loss_fn, scale_grads=True)
    if cls is ScheduleInterleaved1F1B:
        return cls(stages, **common)
    assert len(stages) == 1, "single-stage schedules hold one stage per rank"
    return cls(stages[0], **common)


def pipeline_step(schedule, *, tokens: torch.Tensor, labels: torch.Tensor, has_first: bool,
                  has_last: bool) -> list[torch.Tensor]:
    """One pass over all micro-batches (forward and backward); per-micro-batch losses on the last stage."""
    losses: list[torch.Tensor] = []
    kwargs = _supported_kwargs(schedule.step, return_outputs=False)  # keep no logits alive (newer torch)
    args = (tokens,) if has_first else ()
    schedule.step(*args, target=labels if has_last else None, losses=losses if has_last else None, **kwargs)
    return losses
