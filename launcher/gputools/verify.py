"""`loadmaster verify`: peak memory per pipeline rank from PyTorch's own FSDP2 memory tracker, beside the
symbolic prediction.

The plan's real model (launcher.runtime.model, parallelised by the same ``parallelize_part`` the trainer uses) is built
on the meta device under a fake process group (one rank per pipeline stage; data- and tensor-parallel ranks
are symmetric), materialised inside ``FakeTensorMode`` — tensors have shapes, dtypes and storages but no memory
and no kernels run — and one training step (every micro-batch, gradient clipping, the optimizer step) is
replayed under ``torch.distributed._tools.fsdp2_mem_tracker.FSDPMemTracker``. The optimizer state is created
before the traced step, as in every step after the first.

A pipeline schedule exchanges real values, which fake tensors cannot carry, so a pipeline stage is traced as
its own module: the schedule's order of forwards and backwards (1F1B: ``pp - stage`` forwards in flight; GPipe:
all), the receive buffers ``PipelineStage`` allocates per micro-batch, the forward outputs it keeps until their
backward, and the once-per-step gradient reduction it triggers after the last backward.

Only a CUDA build of torch gives the right numbers: CPU kernels (SDPA in particular) save different tensors
for backward. ``allow_cpu=True`` traces on the CPU anyway; tests use it to exercise this code on CPU-only CI.
"""
from __future__ import annotations

import dataclasses
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from costmodel import ClusterSpec, ModelSpec, Plan, check_plan, load_cluster, load_model, load_plan
from launcher.gputools.replay import fake_process_group, replay_pipeline_rank, replay_step, run_isolated

NEEDS_CUDA = ("verify needs a CUDA build of torch (this is torch {version}, a CPU-only build): CPU kernels save "
              "different tensors for backward, so a CPU trace would report wrong peaks; run verify where a "
              "CUDA build is installed (a GPU node; it uses no GPU memory and runs no kernels)")


# Traces run at once (each a forked process holding a fake model; on a GPU node each also opens a CUDA context).
_MAX_CHILDREN = 4


class VerifyUnavailable(ValueError):
    """This torch build cannot give faithful numbers (a user-facing, one-line error)."""


@dataclass
class StageTrace:
    """The traced peak of one pipeline rank and the symbolic prediction for the same stage (bytes)."""

    stage: int
    """Pipeline stage (= pipeline rank; interleaved plans are not traced)."""
    rank: int
    """Global rank traced (data- and tensor-parallel rank 0 of the stage)."""
    peak_bytes: float
    """Largest memory the tracker saw allocated on the device during the step."""
    predicted_bytes: float
    """costmodel's peak allocated memory of the stage."""
    breakdown: dict[str, float] = field(default_factory=dict)
    """Tracker categories at the peak (sharded/unsharded params, grads, activations, temporaries, ...)."""

    @property
    def error(self) -> float:
        """Relative error of the prediction against the trace."""
        return self.predicted_bytes / self.peak_bytes - 1 if self.peak_bytes else float("nan")


@dataclass
class VerifyResult:
    """Traced vs predicted peak memory of one plan."""

    stages: list[StageTrace]
    device: str
    seconds: float
    notes: list[str] = field(default_factory=list)

    @property
    def peak_bytes(self) -> float:
        return max(s.peak_bytes for s in self.stages)

    @property
    def predicted_bytes(self) -> float:
        return max(s.predicted_bytes for s in self.stages)

    def to_dict(self) -> dict:
        return {"peak_memory_bytes": self.peak_bytes, "predicted_peak_memory_bytes": self.predicted_bytes,
                "error": self.predicted_bytes / self.peak_bytes - 1, "device": self.device,
                "seconds": self.seconds, "notes": self.notes,
                "stages": [dict(dataclasses.asdict(s), error=s.error) for s in self.stages]}


def cuda_build() -> bool:
    """Whether this torch was built with CUDA (or ROCm); no GPU needs to be present."""
    return torch.version.cuda is not None or getattr(torch.version, "hip", None) is not None


def verify(model: ModelSpec | str | Path, cluster: ClusterSpec | str | Path, plan: Plan | str | Path | dict, *,
           allow_cpu: bool = False) -> VerifyResult:
    """Trace one training step of ``plan`` per pipeline rank and compare with ``costmodel.predict``.

    Raises VerifyUnavailable on a CPU-only torch build (unless ``allow_cpu``, for tests), ValueError for plans it
    cannot trace (interleaved pipelines) and SpecError for bad specs."""
    from costmodel.prediction import predict
    if not cuda_build() and not allow_cpu:
        raise VerifyUnavailable(NEEDS_CUDA.format(version=torch.__version__))
    spec, cl, plan = load_model(model), load_cluster(cluster), load_plan(plan)
    check_plan(plan, spec, cl)
    if plan.cp > 1:
        raise ValueError(f"verify traces no context-parallel plan (cp {plan.cp}): PyTorch's ring attention needs "
                         "real CUDA kernels, which FakeTensorMode does not run; rehearse a cp rank on one GPU instead "
                         "(python -m benchmarks.gpu.cp_roles)")
    if plan.virtual_stages > 1:
        raise ValueError(f"verify traces one stage per pipeline rank; {plan.pp_schedule} with virtual_stages "
                         f"{plan.virtual_stages} holds several; verify the plan with pp_schedule: 1F1B instead")
    if dist.is_initialized():
        raise ValueError("verify needs a process of its own (a process group is already initialised); "
                         "run `loadmaster verify` outside the trainer")
    notes = []
    traced = plan
    if plan.compile:
        traced = plan.replace(compile=False)
        notes.append("compile: traced eager (compiled blocks save less); the prediction beside it is for the "
                     "eager plan too")
    device = torch.device("cuda", 0) if cuda_build() and not allow_cpu else torch.device("cpu")
    if device.type == "cpu":
        notes.append("traced on the CPU: CPU kernels save other tensors than CUDA ones (test use only)")
        if any(plan.per_stage("offload_state_layers", spec.num_hidden_layers)):
            notes.append("offloaded state counts towards the CPU trace (same device)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the plan's own warnings were shown when it was loaded
        pred = predict(spec, cl, traced)
    t0 = time.perf_counter()
    ranks = [stage * plan.dp * plan.cp * plan.tp for stage in range(plan.pp)]   # mesh (pp, dp, cp, tp), tp innermost
    _preload()  # imported once here, not again in every forked child
    try:
        traces = run_isolated(trace_rank, [(spec, traced, r, device) for r in ranks], start_method="fork",
                              width=max(1, min(len(ranks), os.cpu_count() or 1, _MAX_CHILDREN)))
    except (ValueError, RuntimeError) as e:
        raise type(e)(f"verify: {e}") from None
    stages = [StageTrace(stage=i, rank=r, peak_bytes=peak, breakdown=breakdown,
                         predicted_bytes=pred.stages[i]["peak_memory_bytes"])
              for i, (r, (peak, breakdown)) in enumerate(zip(ranks, traces))]
    return VerifyResult(stages=stages, device=str(device), seconds=time.perf_counter() - t0, notes=notes)


def _preload() -> None:
    import torch._subclasses.fake_tensor  # noqa: F401
    import torch.distributed._tools.fsdp2_mem_tracker  # noqa: F401
    import torch.testing._internal.distributed.fake_pg  # noqa: F401

    import launcher.runtime.optim  # noqa: F401
    import launcher.runtime.parallel  # noqa: F401
    import launcher.runtime.trainer  # noqa: F401


def trace_rank(spec: ModelSpec, plan: Plan, rank: int, device: torch.device) -> tuple[float, dict[str, float]]:
    """(peak bytes on ``device``, tracker categories at the peak) of one training step on global ``rank``."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed._tools.fsdp2_mem_tracker import FSDPMemTracker

    from launcher.runtime.optim import build_optimizer, clip_grad_norm_
    with fake_process_group(rank, plan.world_size), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stage, part, meshes, offloaded = _build_part(spec, plan, device)
        # the meta model is not fake: let FakeTensorMode take it in (to_empty turns it into fake tensors)
        with FakeTensorMode(allow_non_fake_inputs=True):
            _materialize(part, device, offloaded)
            optimizer = build_optimizer(part, kind="adamw", lr=1e-4, weight_decay=0.1)
            _create_optimizer_state(optimizer)
            M, b, s = plan.num_microbatches, plan.micro_batch_size, plan.seq_len
            tokens = torch.randint(0, spec.vocab_size, (M * b, s), device=device)
            labels = torch.randint(0, spec.vocab_size, (M * b, s), device=device)
            tracker = FSDPMemTracker(part, optimizer)
            tracker.track_inputs((tokens, labels))
            with tracker:
                if plan.pp > 1:
                    replay_pipeline_rank([(stage, part)], plan, meshes.pp_rank, tokens, labels, device,
                                         torch.bfloat16, tracker)
                else:
                    replay_step(part, plan, tokens, labels, tracker)
                pp_group = meshes.pp_mesh.get_group() if plan.pp > 1 else None
                clip_grad_norm_(list(part.parameters()), 1.0, device=device, pp_group=pp_group)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            snapshot = tracker.get_tracker_snapshot("peak")
    on_device = [v for d, v in snapshot.items() if torch.device(d).type == device.type]
    peak = float(sum(v["Total"] for v in on_device))
    breakdown: dict[str, float] = {}
    for v in on_device:
        for k, x in v.items():
            if k != "Total":
                name = getattr(k, "value", str(k))
                breakdown[name] = breakdown.get(name, 0.0) + float(x)
    return peak, breakdown


def _build_part(spec: ModelSpec, plan: Plan, device: torch.device):
    """This rank's stage module on the meta device, parallelised exactly as the trainer does."""
    from launcher.runtime.model import build_model
    from launcher.runtime.parallel import PartOptions, build_meshes, parallelize_part
    from launcher.runtime.parallel.pipeline import split_pipeline
    meshes = build_meshes(plan, device.type)
    options = PartOptions(param_dtype=torch.bfloat16, reduce_dtype=torch.float32, pin_memory=False,
                          fp8_emulate=device.type != "cuda", fp8_skip_small=True)
    whole = build_model(spec, plan.seq_len)
    if plan.pp > 1:
        [(stage, part)] = split_pipeline(whole, layers_per_stage=plan.stage_layers(spec.num_hidden_layers),
                                         pp_rank=meshes.pp_rank, pp=plan.pp, virtual_stages=1)
    else:
        stage, part = 0, whole
    _, offloaded = parallelize_part(part, stage=stage, plan=plan, meshes=meshes, options=options)
    return stage, part, meshes, offloaded


def _materialize(part, device: torch.device, offloaded: set[str]) -> None:
    """Fake storage for every parameter and buffer: offloaded blocks on the CPU, the rest on ``device``."""
    for name, module in part.named_modules():
        seg = name.split(".")
        on_cpu = len(seg) >= 2 and seg[0] == "layers" and seg[1] in offloaded
        module.to_empty(device=torch.device("cpu") if on_cpu else device, recurse=False)
    if part.spec.tie_word_embeddings and part.tok_embeddings is not None and part.output is not None:
        part.output.weight = part.tok_embeddings.weight  # to_empty untied them (as Transformer.init_weights)


@torch.no_grad()
def _create_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """One step on zero gradients: AdamW's state exists from then on, as in every step after the first."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            p.grad = torch.zeros_like(p)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
