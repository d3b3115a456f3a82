"""The training loop, callable in-process: ``run(cfg) -> summary`` inside an initialised process group.

``run`` builds a fresh model and meshes for ``cfg.plan``, resumes from the run directory's newest complete
checkpoint, trains to ``cfg.steps``, measures every step, saves checkpoints, honours SIGTERM at step
boundaries, tears everything down and frees memory — so a benchmark can call it for many plans in a row.
"""
from __future__ import annotations

import contextlib
import gc
import json
import os
import time
import warnings
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from launcher.runtime.checkpoint import Checkpointer
from launcher.runtime.config import TrainConfig, validate
from launcher.runtime.data import local_batch, make_source, samples_consumed
from launcher.runtime.faults import Preemption, inject_fault
from launcher.runtime.kernels import LossFn, build_loss, effective_kernels, logits_loss, set_block_kernels
from launcher.runtime.kernels import cross_entropy_fp32  # noqa: F401  (launcher.gputools.verify imports it here)
from launcher.runtime.metrics import (MetricsWriter, StepTimer, detect_cluster, max_memory_over_ranks, peak_tflops,
                                     predict_for, step_line, step_record, summarize)
from launcher.runtime.model import Transformer, build_model
from launcher.runtime.moe import set_aux_loss_scale
from launcher.runtime.optim import build_optimizer, build_scheduler, clip_grad_norm_
from launcher.runtime.parallel import Fp8Schedule, Meshes, PartOptions, build_meshes, parallelize_part
from launcher.runtime.parallel.cp import apply_cp
from launcher.runtime.parallel.fp8_schedule import default_probe_every
from launcher.runtime.parallel.pipeline import build_schedule, pipeline_step, split_pipeline

_DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}


def local_device() -> torch.device:
    """cuda:LOCAL_RANK when a GPU is present (and made current), else the CPU."""
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
        return device
    return torch.device("cpu")


def init_distributed(timeout_s: float) -> torch.device:
    """Join the process group torchrun describes (or a 1-rank one without torchrun); returns this rank's device.

    On GPU the group has both backends: NCCL for device tensors, gloo for host tensors (offloaded state's
    gradient norms, DCP's object exchange)."""
    device = local_device()
    timeout = timedelta(seconds=timeout_s)
    # Sub-groups (device mesh dimensions) are created later with timeout=None, which means the library default
    # (10-30 min), not the world group's: make our timeout the default so every collective honours it.
    import torch.distributed.distributed_c10d as c10d
    for name in ("default_pg_timeout", "default_pg_nccl_timeout"):
        if isinstance(getattr(c10d, name, None), timedelta):
            setattr(c10d, name, timeout)
    if not dist.is_initialized():
        backend = "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"
        if "RANK" in os.environ:
            dist.init_process_group(backend=backend, timeout=timeout, **_restart_safe_store(timeout))
        else:
            dist.init_process_group(backend=backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout)
    return device


def _restart_safe_store(timeout: timedelta) -> dict:
    """Under torchrun's shared rendezvous store, a prefix per restart attempt (else env:// as usual).

    torchrun (c10d rendezvous) lets workers of every restart attempt use one TCPStore without a per-attempt
    prefix, so a restarted group can read the previous attempt's keys — gloo then dials dead ranks' addresses
    (connection refused, or a hang). A fresh prefix per TORCHELASTIC_RESTART_COUNT isolates the attempts.
    """
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return {}
    world, rank = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world, is_master=False,
                          timeout=timeout)
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return {"store": dist.PrefixStore(f"loadmaster/attempt_{attempt}", store), "rank": rank, "world_size": world}


def close_distributed() -> None:
    """Barrier, then destroy the group (gloo can abort at exit otherwise)."""
    from launcher.runtime.parallel.mesh import clear_mesh_cache
    if dist.is_initialized():
        clear_mesh_cache()
        dist.barrier()
        dist.destroy_process_group()


def _plain(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if isinstance(t, DTensor) else t


@dataclass(kw_only=True)
class Session:
    """Everything built for one plan on this rank."""

    cfg: TrainConfig
    device: torch.device
    meshes: Meshes
    parts: list[Transformer]
    stages: list[int]
    schedule: object | None
    optimizers: list[torch.optim.Optimizer]
    schedulers: list[torch.optim.lr_scheduler.LambdaLR]
    fp8: Fp8Schedule | None = None
    source: object = None
    kernels: dict[str, str] = field(default_factory=dict)
    """The kernel choices that run (the plan's, after launcher.runtime.kernels' fallbacks)."""
    loss: LossFn | None = None
    """One micro-batch's loss: loss(model, tokens, labels)."""

    @property
    def has_first(self) -> bool:
        return 0 in self.stages

    @property
    def has_last(self) -> bool:
        return self.cfg.plan.num_stages - 1 in self.stages

    def loss_context(self):
        if self.cfg.plan.tp > 1 and self.cfg.plan.vocab_parallel:
            from torch.distributed.tensor.parallel import loss_parallel
            return loss_parallel()
        return contextlib.nullcontext()

    def parameters(self) -> list[torch.Tensor]:
        return [p for part in self.parts for p in part.parameters()]


def materialize(part: Transformer, device: torch.device, offload_blocks: set[str], seed: int) -> None:
    """Allocate the (sharded) parameters on their devices — offloaded blocks on the CPU — and initialise them."""
    for name, module in part.named_modules():
        segments = name.split(".")
        on_cpu = len(segments) >= 2 and segments[0] == "layers" and segments[1] in offload_blocks
        module.to_empty(device=torch.device("cpu") if on_cpu else device, recurse=False)
    part.init_weights(seed=seed, buffer_device=device)


def build_parts(cfg: TrainConfig, device: torch.device
                ) -> tuple[Meshes, list[tuple[int, Transformer]], "Fp8Schedule | None", dict[str, str]]:
    """This rank's stage modules, parallelised and materialised: the meshes, [(stage, module)], the float8
    schedule and the kernels that run (the trainer's build, and `loadmaster rehearse`, which runs them under fake
    collectives)."""
    plan, spec = cfg.plan, cfg.model
    torch.manual_seed(cfg.seed)
    meshes = build_meshes(plan, device.type)
    cuda = device.type == "cuda"
    param_dtype = _DTYPES[cfg.param_dtype] if cfg.param_dtype else (torch.bfloat16 if cuda else torch.float32)
    options = PartOptions(param_dtype=param_dtype, reduce_dtype=_DTYPES[cfg.reduce_dtype], pin_memory=cuda,
                          compile_backend=cfg.compile_backend,
                          fp8_emulate=(not cuda) if cfg.fp8_emulate is None else cfg.fp8_emulate,
                          fp8_skip_small=cfg.fp8_skip_small)
    whole = build_model(spec, plan.seq_len)
    kernels = effective_kernels(plan, device.type)
    set_block_kernels(whole, kernels)
    if plan.pp > 1 or plan.virtual_stages > 1:
        parts = split_pipeline(whole, layers_per_stage=plan.stage_layers(spec.num_hidden_layers),
                               pp_rank=meshes.pp_rank, pp=plan.pp, virtual_stages=plan.virtual_stages)
    else:
        parts = [(0, whole)]
    for stage, part in parts:
        _, offload_blocks = parallelize_part(part, stage=stage, plan=plan, meshes=meshes, options=options)
        # balance losses get the micro-batch weight the loss gets (a pipeline schedule scales gradients itself)
        set_aux_loss_scale(part, 1.0 / plan.num_microbatches if plan.pp == 1 else 1.0)
        materialize(part, device, offload_blocks, cfg.seed)
    # every rank holds the schedule when any stage runs float8: its sensitivity probe is collective
    fp8 = Fp8Schedule.from_parts(parts, plan=plan, num_layers=spec.num_hidden_layers, seed=cfg.seed) \
        if any(plan.per_stage("fp8_layers", spec.num_hidden_layers)) else None
    return meshes, parts, fp8, kernels


def build(cfg: TrainConfig, device: torch.device) -> Session:
    """Meta model → pipeline split → per-part parallelisation → materialisation → optimizers and schedule."""
    plan, spec = cfg.plan, cfg.model
    meshes, parts, fp8, kernels = build_parts(cfg, device)
    modules = [part for _, part in parts]
    schedule = None
    if plan.pp > 1:
        schedule = build_schedule(parts, pp_mesh=meshes.pp_mesh, device=device, schedule=plan.pp_schedule,
                                  n_microbatches=plan.num_microbatches,
                                  loss_fn=logits_loss(kernels["loss_impl"], backend=cfg.compile_backend))
    optimizers = [build_optimizer(m, kind=cfg.optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                  impl=plan.optimizer_impl) for m in modules]
    schedulers = [build_scheduler(o, warmup_steps=cfg.warmup, total_steps=cfg.steps, min_ratio=cfg.min_lr_ratio)
                  for o in optimizers]
    source = make_source(data=cfg.data, dtype=cfg.token_dtype, vocab_size=spec.vocab_size, seq_len=plan.seq_len,
                         seed=cfg.seed)
    return Session(cfg=cfg, device=device, meshes=meshes, parts=modules, stages=[s for s, _ in parts],
                   schedule=schedule, optimizers=optimizers, schedulers=schedulers, fp8=fp8,
                   source=source, kernels=kernels,
                   loss=build_loss(kernels["loss_impl"], backend=cfg.compile_backend))


def forward_backward(s: Session, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor | None:
    """All micro-batches of one step on this rank; the mean loss (None on ranks without the last stage).

    Without pipelining, gradients are accumulated over micro-batches (each micro-batch's loss is divided by their
    number, so gradients are those of the mean). ``grad_reduce: last`` keeps FSDP2's gradient sync off until the
    last micro-batch (unsharded fp32 gradients accumulate locally); ``every`` reduce-scatters after each one into
    the sharded gradients (more communication, no unsharded buffer)."""
    plan = s.cfg.plan
    if s.schedule is not None:
        with s.loss_context():
            losses = pipeline_step(s.schedule, tokens=tokens, labels=labels, has_first=s.has_first,
                                   has_last=s.has_last)
        return torch.stack([_plain(x).detach().float() for x in losses]).mean() if s.has_last else None
    model, n, mbs = s.parts[0], plan.num_microbatches, plan.micro_batch_size
    total = torch.zeros((), device=s.device)
    for m in range(n):
        model.set_requires_gradient_sync(m == n - 1 or plan.grad_reduce == "every")
        rows = slice(m * mbs, (m + 1) * mbs)
        with s.loss_context():
            loss = s.loss(model, tokens[rows], labels[rows])   # the logits are freed inside (kernels.build_loss)
            (loss / n).backward()
        total += _plain(loss.detach()).float()
    return total / n


def train_step(s: Session, step: int, batch: tuple[torch.Tensor, torch.Tensor]
               ) -> tuple[torch.Tensor | None, torch.Tensor]:
    """One optimizer step (0-based ``step``) on this rank's (tokens, labels): (this rank's mean loss or None,
    global gradient norm)."""
    if s.fp8 is not None:
        s.fp8.set_step(step)
    for opt in s.optimizers:
        opt.zero_grad(set_to_none=True)
    tokens, labels = batch
    plan = s.cfg.plan
    with apply_cp(s.parts, s.meshes.cp_mesh if plan.cp > 1 else None, tokens=tokens, labels=labels,
                  rotate=plan.cp_rotate):
        loss = forward_backward(s, tokens, labels)
    if s.fp8 is not None:   # the float8 sensitivity probe reads this step's gradients before clipping
        s.fp8.after_backward(step, s.device)
    pp_group = s.meshes.pp_mesh.get_group() if s.meshes.pp > 1 else None
    grad_norm = clip_grad_norm_(s.parameters(), s.cfg.max_grad_norm, device=s.device, pp_group=pp_group)
    for opt in s.optimizers:
        opt.step()
    for sched in s.schedulers:
        sched.step()
    return loss, grad_norm


def _global_loss_and_stop(s: Session, loss: torch.Tensor | None, stop: bool) -> tuple[float, bool]:
    """Mean loss over the global batch on every rank, and whether any rank asked to stop (one all-reduce). Each
    context-parallel rank's loss is the mean over its equal share of the tokens, so the global mean averages them."""
    counts = s.cfg.plan.dp * s.cfg.plan.cp
    contrib = loss / counts if (loss is not None and s.meshes.tp_rank == 0) else torch.zeros((), device=s.device)
    t = torch.stack([contrib.to(s.device, torch.float64), torch.tensor(float(stop), device=s.device,
                                                                         dtype=torch.float64)])
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t[0]), bool(t[1] > 0)


def _save(ckpt: Checkpointer, s: Session, done: int) -> Path:
    train_state = {"step": done, "data_position": samples_consumed(s.cfg.plan, done), "seed": s.cfg.seed,
                   "data": s.cfg.data, "total_steps": s.cfg.steps}
    if s.fp8 is not None:
        train_state["fp8"] = s.fp8.state_dict()
    return ckpt.save(done, parts=s.parts, optimizers=s.optimizers, schedulers=s.schedulers,
                     train_state=train_state)


def _check_resume(cfg: TrainConfig, train: dict, path: Path) -> None:
    """Warn where the resumed run differs from the saved one in a way that changes the result."""
    if train.get("data_position") != samples_consumed(cfg.plan, int(train["step"])):
        warnings.warn(f"{path}: global batch size changed since the save (data position "
                      f"{train.get('data_position')} ≠ step × global_batch_size); continuing at the step count")
    for key, now in (("total_steps", cfg.steps), ("seed", cfg.seed), ("data", cfg.data)):
        if key in train and train[key] != now:
            warnings.warn(f"{path}: saved with {key}={train[key]!r}, resuming with {now!r} (LR schedule or data "
                          "differ from an uninterrupted run)")


def run(cfg: TrainConfig) -> dict:
    """Train ``cfg.plan`` inside the current process group; returns the summary (rank 0 writes the files).

    Raises SpecError/ValueError for user errors before any collective (on every rank alike). The summary has
    ``preempted: True`` when SIGTERM stopped the run (a checkpoint was saved and RUN/preempted written)."""
    world = dist.get_world_size()
    validate(cfg, world)
    device = local_device()
    writer = MetricsWriter(cfg.out, tensorboard=cfg.tensorboard)
    ckpt = Checkpointer(cfg.out, keep=cfg.keep_checkpoints) if cfg.out else None
    s = build(cfg, device)
    cluster = detect_cluster(device, cfg.cluster)
    peak = peak_tflops(cluster)
    if s.fp8 is not None:
        s.fp8.probe_every = cfg.fp8_probe_every if cfg.fp8_probe_every is not None else \
            default_probe_every(cfg.plan, cfg.model, cluster)
    start, resumed_from = 0, None
    if ckpt and cfg.resume:
        found = ckpt.find_resume()
        if found is not None:
            train = ckpt.load(found, parts=s.parts, optimizers=s.optimizers, schedulers=s.schedulers)
            start, resumed_from = int(train["step"]), str(found)
            if s.fp8 is not None:
                s.fp8.load_state_dict(train.get("fp8"), keep_probe_every=cfg.fp8_probe_every is not None)
            _check_resume(cfg, train, found)
    writer.start(start)
    rank0 = dist.get_rank() == 0
    predicted = predict_for(cfg.model, cluster, cfg.plan)[0] if rank0 and cfg.log_every else None
    if cfg.out and rank0:
        Path(cfg.out, "preempted").unlink(missing_ok=True)
    preemption = Preemption().install()
    timer, records, done, preempted = StepTimer(device), [], start, False
    gc_was_enabled = gc.isenabled()
    if cfg.gc_every_steps:   # as TorchTitan: no automatic collection pauses inside steps, a young one now and then
        gc.disable()
    try:
        for step in range(start, cfg.steps):
            if cfg.gc_every_steps and step > start and step % cfg.gc_every_steps == 0:
                gc.collect(1)
            inject_fault(step)
            batch = local_batch(s.source, cfg.plan, step=step, dp_rank=s.meshes.dp_rank, device=device)
            lr = s.schedulers[0].get_last_lr()[0]
            timer.start()
            loss, grad_norm = train_step(s, step, batch)
            elapsed = timer.stop()
            done = step + 1
            global_loss, stop = _global_loss_and_stop(s, loss, preemption.requested)
            alloc, reserved = max_memory_over_ranks(device)
            record = step_record(step=done, time_s=elapsed, loss=global_loss, grad_norm=float(grad_norm), lr=lr,
                                 model=cfg.model, plan=cfg.plan, peak_tflops_=peak, peak_alloc=alloc,
                                 peak_reserved=reserved,
                                 fp8=s.fp8.metrics(step) if s.fp8 is not None else None)
            records.append(record)
            writer.step(record)
            if rank0 and cfg.log_every and (done % cfg.log_every == 0 or done == cfg.steps):
                print(step_line(record, total_steps=cfg.steps, predicted=predicted), flush=True)
            if stop:
                preempted = True
                break
            if ckpt and cfg.checkpoint_every and done % cfg.checkpoint_every == 0:
                _save(ckpt, s, done)
        if ckpt and (preempted or (cfg.checkpoint_at_end and done > start)):
            _save(ckpt, s, done)
        if preempted and cfg.out and dist.get_rank() == 0:
            Path(cfg.out, "preempted").write_text(json.dumps({"step": done, "time": time.time()}) + "\n")
    finally:
        preemption.uninstall()
        if gc_was_enabled:
            gc.enable()
        compiled = cfg.plan.compile or s.kernels["loss_impl"] == "compiled"
        kernels = s.kernels
        del s
        release_memory(compiled)
    extra = {"losses": [r["loss"] for r in records], "grad_norms": [r["grad_norm"] for r in records],
             "start_step": start, "steps_done": done, "data_position": samples_consumed(cfg.plan, done),
             "resumed_from": resumed_from, "preempted": preempted, "oom": False, "kernels": kernels}
    # the prediction beside the measurement prices the kernels that ran (a liger choice may have fallen back)
    summary = summarize(records, timing_warmup_steps=cfg.timing_warmup_steps, model=cfg.model,
                        plan=cfg.plan.replace(**kernels),
                        cluster=cluster, extra=extra)
    writer.summary(summary)
    return summary


def release_memory(compiled: bool = False) -> None:
    """Free what a finished (or failed) plan left: Python garbage, the CUDA cache, compiled graphs."""
    gc.collect()
    if compiled:
        torch._dynamo.reset()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
