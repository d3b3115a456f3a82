"""`loadmaster rehearse`: one rank of any plan trained on the local GPU with every collective a no-op of the right
shape, so a rank of a 2,048-GPU plan runs on one GPU, beside the cost model's numbers for that rank.

A rank runs the trainer's own modules (launcher.runtime.trainer.build_parts: pipeline split, float8, TP, AC,
offload, compile, FSDP2) under PyTorch's fake process-group backend (launcher.gputools.replay); a pipeline rank
runs its stages in its schedule's order. What it measures is what the rank computes alone: its step time with
communication excluded, and its real peak memory. The cost model prices the same rank with every collective at
zero time (``predict(..., comm=False)``); the rehearsed step time of the plan is the measured compute plus the
communication and bubble the model adds on top of its own compute-only step.

When the plan's GPU is not the local one, the rank's time is scaled by the ratio of the two profiles'
compute-only predictions and the report says so; memory is the same bytes on any GPU.
"""
from __future__ import annotations

import dataclasses
import statistics
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from costmodel import GiB, ClusterSpec, ModelSpec, Plan, SpecError, check_plan, load_cluster, load_model, load_plan
from costmodel.hardware import HardwareProfile, profile_for, profile_name_for_gpu

CPU_LIMIT_BYTES = 4 * GiB
"""On a machine without a GPU, only ranks predicted to need less than this run (tiny models in tests)."""


@dataclass(kw_only=True)
class RehearseRequest:
    """What `loadmaster rehearse` runs."""

    model: str = field(metadata={"positional": True, "metavar": "MODEL"})
    """Model recipe name, YAML or config.json."""
    cluster: str = field(metadata={"aliases": ("-c",), "metavar": "CLUSTER"})
    """The cluster the plan is for (recipe name or path)."""
    plan: str = field(metadata={"aliases": ("-p",), "metavar": "PLAN"})
    """The plan (a YAML file or a shipped plan name)."""
    rank: int | None = field(default=None, metadata={"metavar": "R"})
    """The global rank to rehearse; default: every distinct rank role (--roles)."""
    roles: bool = False
    """Rehearse every distinct rank role: first, last and the most loaded middle pipeline rank, and each rank
    whose stages hold different knobs (the default when --rank is not given)."""
    steps: int = 5
    """Timed optimizer steps per rank (their median is reported)."""
    warmup_steps: int = 2
    """Untimed steps first (compilation, allocator, optimizer state)."""
    as_json: bool = field(default=False, metadata={"name": "--json"})
    """Print one JSON object instead of the table."""


@dataclass
class RankRehearsal:
    """One rank: measured alone beside the cost model (seconds, bytes)."""

    rank: int
    pp_rank: int
    stages: list[int]
    step_time_s: float
    """Measured median step time of the rank with no-op collectives (its compute)."""
    peak_memory_bytes: float
    """Measured peak allocated memory of the rank."""
    predicted_compute_s: float
    """The cost model's step time of this rank with every collective at zero time."""
    predicted_peak_bytes: float
    """The cost model's peak allocated memory of this rank."""
    rehearsed_step_s: float
    """The plan's step time: measured compute (scaled to the plan's GPU) plus the modelled communication."""
    scale: float = 1.0
    """Plan GPU over local GPU compute time (1 when they are the same)."""
    step_times_s: list[float] = field(default_factory=list)

    @property
    def time_error(self) -> float:
        return self.predicted_compute_s / (self.step_time_s * self.scale) - 1

    @property
    def memory_error(self) -> float:
        return self.predicted_peak_bytes / self.peak_memory_bytes - 1

    def to_dict(self) -> dict:
        return dict(dataclasses.asdict(self), time_error=self.time_error, memory_error=self.memory_error)


@dataclass
class Rehearsal:
    """Every rehearsed rank of one plan."""

    ranks: list[RankRehearsal]
    device: str
    predicted_step_s: float
    """The cost model's step time of the whole plan (with communication)."""
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"device": self.device, "predicted_step_s": self.predicted_step_s, "notes": self.notes,
                "ranks": [r.to_dict() for r in self.ranks]}


def pipeline_rank_of(plan: Plan, rank: int) -> int:
    """The pipeline rank of a global rank: the mesh is ("pp", "dp", "cp", "tp") with pp outermost."""
    return rank // (plan.world_size // plan.pp)


def roles(plan: Plan, model: ModelSpec, per_rank_peak: list[float]) -> list[int]:
    """Global ranks standing for every distinct role: data- and tensor-parallel ranks of a pipeline rank do the
    same work, so a role is a pipeline rank; the first and the last, the most loaded one between them, and the
    first rank of each distinct combination of per-stage knobs. Context-parallel ranks do the same work too, in
    kernels of other shapes (causal load balancing: cp rank 0 runs each ring step as half its queries against two
    K/V chunks, the last cp rank as all its queries against one), so with cp > 1 each role is rehearsed on both."""
    L, S = model.num_hidden_layers, plan.num_stages
    knobs = [plan.stage_layers(L)] + [plan.per_stage(k, L) for k in
                                      ("recompute_layers", "offload_activation_layers", "offload_state_layers",
                                       "fp8_layers")]
    signature = {}
    for r in range(plan.pp):
        sig = tuple(tuple(k[r + j * plan.pp] for j in range(plan.virtual_stages)) for k in knobs)
        signature.setdefault(sig, r)
    picks = {0, plan.pp - 1, *signature.values()}
    if plan.pp > 2:
        picks.add(max(range(1, plan.pp - 1), key=lambda r: per_rank_peak[r]))
    per_pp = plan.world_size // plan.pp
    assert S == plan.pp * plan.virtual_stages
    cp_ends = {0, (plan.cp - 1) * plan.tp}     # mesh (pp, dp, cp, tp): cp ranks are tp apart
    return sorted(r * per_pp + c for r in picks for c in cp_ends)


def rehearse(model: ModelSpec | str | Path, cluster: ClusterSpec | str | Path, plan: Plan | str | Path | dict, *,
             ranks: list[int] | None = None, steps: int = 5, warmup_steps: int = 2,
             cp_attention: Literal["context_parallel", "ring"] = "context_parallel") -> Rehearsal:
    """Rehearse ``ranks`` (default: every role) of ``plan`` on this machine's first GPU (or CPU for tiny ranks).

    A context-parallel rank runs the trainer's ``context_parallel`` (CUDA only); ``cp_attention="ring"`` runs
    PyTorch's ring functions directly instead (launcher.gputools.cp_ring: the same kernels and buffers without the
    DTensor dispatch; on CPU too). SpecError/ValueError (one line) for bad ranks, a rank the local GPU cannot
    hold, or a big rank on a CPU."""
    from costmodel.prediction import predict
    spec, cl, plan = load_model(model), load_cluster(cluster), load_plan(plan)
    check_plan(plan, spec, cl)
    if steps < 1 or warmup_steps < 0:
        raise ValueError(f"steps {steps} and warmup_steps {warmup_steps}: use steps >= 1 and warmup_steps >= 0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # the plan's own warnings were shown when it was loaded
        target = profile_for(cl)
        full = predict(spec, cl, plan, profile=target)
        alone = predict(spec, cl, plan, profile=target, comm=False)
    peaks = [r["peak_memory_bytes"] for r in alone.ranks]
    chosen = ranks if ranks is not None else roles(plan, spec, peaks)
    for r in chosen:
        if not 0 <= r < plan.world_size:
            raise SpecError("--rank", "rank", f"{r} is not a rank of this plan's {plan.world_size} GPUs",
                            f"use 0 to {plan.world_size - 1}, or --roles")
    device, local = _local_device(cl)
    if plan.cp > 1 and device.type == "cpu" and cp_attention == "context_parallel":
        from launcher.runtime.parallel.cp import NEEDS_CUDA
        raise SpecError(plan.source, "cp", f"{plan.cp} on a machine without a GPU: "
                        f"{NEEDS_CUDA.format(version=torch.__version__)}", "rehearse on a GPU node")
    notes, scale_by_pp = [], [1.0] * plan.pp
    if plan.cp > 1 and cp_attention == "ring":
        notes.append("context parallel rehearsed with PyTorch's ring functions called directly "
                     "(launcher.gputools.cp_ring), not through context_parallel's DTensor dispatch")
    local_alone = alone
    if local is not None and local.name != target.name:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            local_alone = predict(spec, dataclasses.replace(cl, gpu=local.name), plan, profile=local, comm=False)
        scale_by_pp = [_rank_compute(alone, plan, p) / _rank_compute(local_alone, plan, p) for p in range(plan.pp)]
        notes.append(f"rehearsed on {local.name}, the plan is for {target.name}: each rank's measured time is "
                     f"scaled by the two profiles' compute-only predictions (x{min(scale_by_pp):.3f}-"
                     f"{max(scale_by_pp):.3f}); memory is the same bytes")
    for r in chosen:
        p = pipeline_rank_of(plan, r)
        need = local_alone.ranks[p]["peak_memory_bytes"]
        if device.type == "cpu" and need > CPU_LIMIT_BYTES:
            raise SpecError("--rank", "rank", f"{r} needs about {need / GiB:.1f} GiB and this machine has no CUDA "
                            "GPU", "rehearse on a GPU node (on CPU only ranks under "
                            f"{CPU_LIMIT_BYTES / GiB:.0f} GiB run)")
        if local is not None and not local.fits(need):
            raise SpecError("--rank", "rank", f"{r} needs {local.needed_bytes(need) / GiB:.1f} GiB with the "
                            f"allocator's overhead; this {local.name} holds {local.memory_gib:.0f} GiB",
                            "rehearse on a GPU with more memory, or rehearse a plan with more sharding")
    from launcher.gputools.replay import run_isolated
    measured = run_isolated(rehearse_rank, [(spec, plan, r, device.type, steps, warmup_steps, cp_attention)
                                            for r in chosen],
                            start_method="spawn" if device.type == "cuda" else "fork", width=1)
    out = []
    for r, (times, peak) in zip(chosen, measured):
        p = pipeline_rank_of(plan, r)
        compute = _rank_compute(alone, plan, p)
        median = statistics.median(times)
        out.append(RankRehearsal(
            rank=r, pp_rank=p, stages=[p + j * plan.pp for j in range(plan.virtual_stages)], step_time_s=median,
            peak_memory_bytes=peak, predicted_compute_s=compute,
            predicted_peak_bytes=alone.ranks[p]["peak_memory_bytes"],
            rehearsed_step_s=full.step_time_s - alone.step_time_s + median * scale_by_pp[p],
            scale=scale_by_pp[p], step_times_s=times))
    return Rehearsal(ranks=out, device=str(device) if local is None else f"{device} ({local.name})",
                     predicted_step_s=full.step_time_s, notes=notes)


def _rank_compute(pred, plan: Plan, pp_rank: int) -> float:
    """A pipeline rank's own step in a prediction: its chunks' micro-batches and once-per-step extras (no
    bubble: the bubble is time the rank waits for others)."""
    chunks = [pp_rank + j * plan.pp for j in range(plan.virtual_stages)]
    return float(sum(plan.num_microbatches * pred.stages[c]["t_microbatch_s"] + pred.stages[c]["delta_s"]
                     for c in chunks))


def _local_device(cluster: ClusterSpec) -> tuple[torch.device, HardwareProfile | None]:
    """The device a rehearsal runs on and its profile (None on CPU)."""
    if not torch.cuda.is_available():
        return torch.device("cpu"), None
    props = torch.cuda.get_device_properties(0)
    name = profile_name_for_gpu(props.name, props.total_memory)
    if name is None:
        raise SpecError("<gpu>", "device", f"{props.name!r} has no shipped profile",
                        "profile it first (loadmaster profile) or rehearse on a known GPU")
    return torch.device("cuda", 0), profile_for(dataclasses.replace(cluster, gpu=name))


def rehearse_rank(spec: ModelSpec, plan: Plan, rank: int, device_type: str, steps: int, warmup_steps: int,
                  cp_attention: str = "context_parallel") -> tuple[list[float], float]:
    """(step times, peak allocated bytes) of global ``rank`` trained alone under fake collectives (a child
    process of its own: launcher.gputools.replay.run_isolated)."""
    from launcher.gputools.replay import fake_process_group, replay_pipeline_rank, replay_step
    from launcher.runtime.config import TrainConfig
    from launcher.runtime.kernels import build_loss, logits_loss
    from launcher.runtime.optim import build_optimizer, clip_grad_norm_
    if cp_attention == "ring":
        from launcher.gputools.cp_ring import ring_cp as apply_cp
    else:
        from launcher.runtime.parallel.cp import apply_cp
    from launcher.runtime.trainer import build_parts
    device = torch.device(device_type, 0) if device_type == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    cfg = TrainConfig(plan=plan, model=spec, steps=warmup_steps + steps, fp8_skip_small=device.type == "cuda")
    with fake_process_group(rank, plan.world_size), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        meshes, parts, fp8, kernels = build_parts(cfg, device)
        loss_fn = build_loss(kernels["loss_impl"], backend=cfg.compile_backend)
        on_logits = logits_loss(kernels["loss_impl"], backend=cfg.compile_backend)
        optimizers = [build_optimizer(m, kind="adamw", lr=1e-4, weight_decay=0.1, impl=plan.optimizer_impl)
                      for _, m in parts]
        M, b = plan.num_microbatches, plan.micro_batch_size
        gen = torch.Generator(device="cpu").manual_seed(rank)
        tokens = torch.randint(0, spec.vocab_size, (M * b, plan.seq_len), generator=gen).to(device)
        labels = torch.randint(0, spec.vocab_size, (M * b, plan.seq_len), generator=gen).to(device)
        act_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        pp_group = meshes.pp_mesh.get_group() if plan.pp > 1 else None
        params = [p for _, m in parts for p in m.parameters()]
        times = []
        for step in range(warmup_steps + steps):
            if fp8 is not None:   # the float8 set of this step, as the trainer's (its probe is not timed)
                fp8.set_step(step)
            # context parallelism shards the step's tokens and labels in place, as the trainer's fresh batch
            step_tokens, step_labels = (tokens.clone(), labels.clone()) if plan.cp > 1 else (tokens, labels)
            _sync(device)
            if step == warmup_steps and device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            t0 = time.perf_counter()
            for opt in optimizers:
                opt.zero_grad(set_to_none=True)
            with apply_cp([m for _, m in parts], meshes.cp_mesh if plan.cp > 1 else None, tokens=step_tokens,
                          labels=step_labels, rotate=plan.cp_rotate):
                if plan.pp > 1:
                    replay_pipeline_rank(parts, plan, meshes.pp_rank, step_tokens, step_labels, device, act_dtype,
                                         logits_loss=on_logits)
                else:
                    replay_step(parts[0][1], plan, step_tokens, step_labels, loss_fn=loss_fn)
            clip_grad_norm_(params, 1.0, device=device, pp_group=pp_group)
            for opt in optimizers:
                opt.step()
            _sync(device)
            if step >= warmup_steps:
                times.append(time.perf_counter() - t0)
        peak = float(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else float("nan")
    return times, peak


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def table(result: Rehearsal) -> list[str]:
    """The rehearsal beside the cost model, one line per rank."""
    lines = [f"{'rank':>6} {'pp':>3} {'stages':>8} {'compute meas':>13} {'model':>9} {'err':>7} "
             f"{'peak meas':>10} {'model':>9} {'err':>7} {'rehearsed step':>15}"]
    for r in result.ranks:
        mem = "-" if np.isnan(r.peak_memory_bytes) else f"{r.peak_memory_bytes / GiB:.2f}G"
        merr = "-" if np.isnan(r.peak_memory_bytes) else f"{r.memory_error:+.1%}"
        lines.append(f"{r.rank:>6} {r.pp_rank:>3} {','.join(map(str, r.stages)):>8} "
                     f"{r.step_time_s * r.scale:>12.3f}s {r.predicted_compute_s:>8.3f}s {r.time_error:>+7.1%} "
                     f"{mem:>10} {r.predicted_peak_bytes / GiB:>8.2f}G {merr:>7} {r.rehearsed_step_s:>14.3f}s")
    lines.append(f"predicted step time of the plan: {result.predicted_step_s:.3f} s on {result.device}")
    return lines + [f"note: {n}" for n in result.notes]
