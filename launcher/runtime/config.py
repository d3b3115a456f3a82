"""TrainConfig: everything one training run needs besides the process group, and its validation."""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from typing import Literal

from costmodel import ModelSpec, Plan, SpecError, check_plan
from costmodel.plan import world_formula


@dataclass(kw_only=True)
class TrainConfig:
    """One run of one plan. Built by ``launcher.runtime.train`` from flags or directly by a benchmark driver.

    Every field but ``plan``, ``model`` and ``plan_source`` is a trainer flag (costmodel/flags.py): its docstring
    is the flag's help."""

    plan: Plan = field(metadata={"flag": False})
    """The plan to execute (costmodel.Plan); the trainer's ``--plan`` is its YAML file."""
    model: ModelSpec = field(metadata={"flag": False})
    """The model to build; the trainer's ``--model`` is its recipe name or path."""
    steps: int = 10
    """Optimizer steps to reach (a resumed run continues up to this total)."""
    seed: int = 0
    """Seed of the weights and of the synthetic data."""
    lr: float = 3e-4
    """Peak learning rate."""
    min_lr_ratio: float = 0.1
    """Cosine decay floor, as a fraction of ``lr``."""
    warmup_steps: int | None = None
    """Linear LR warm-up steps; None = steps // 10."""
    weight_decay: float = 0.1
    """AdamW decoupled weight decay (SGD: none)."""
    max_grad_norm: float = 1.0
    """Gradient clipping threshold (global L2 norm over all ranks and stages); 0 disables clipping."""
    optimizer: Literal["adamw", "sgd"] = "adamw"
    """adamw, or plain sgd (no momentum) for exactness checks: Adam would hide a constant gradient-scale error."""
    data: str | None = field(default=None, metadata={"metavar": "PATH"})
    """Flat binary token file (memory-mapped); None = synthetic tokens."""
    data_dtype: Literal["uint16", "uint32"] | None = None
    """Token width in ``data``; None = uint16 when vocab_size < 65536, else uint32."""
    out: str | None = field(default=None, metadata={"metavar": "DIR"})
    """Run directory (metrics.jsonl, summary.json, checkpoints/); None writes nothing."""
    checkpoint_every: int = 0
    """Save a checkpoint every this many steps (0: only at the end); needs ``out``."""
    checkpoint_at_end: bool = True
    """Save a checkpoint after the last step (needs ``out``)."""
    keep_checkpoints: int = 2
    """Complete checkpoints kept (older ones are deleted)."""
    resume: bool = True
    """Resume from the newest complete checkpoint in ``out``/checkpoints."""
    collective_timeout_s: float = 600.0
    """Process-group timeout: a collective that does not finish by then fails the run instead of hanging."""
    cluster: str | None = None
    """Cluster recipe/path for the prediction beside the measurements; None = derived from the GPUs found."""
    param_dtype: Literal["bfloat16", "float32"] | None = None
    """Compute dtype of parameters (FSDP2 mixed precision); None = bfloat16 on GPU, float32 on CPU."""
    reduce_dtype: Literal["float32", "bfloat16"] = "float32"
    """Gradient reduction dtype."""
    compile_backend: str = field(default="inductor", metadata={"metavar": "BACKEND"})
    """torch.compile backend when the plan compiles (aot_eager in CPU tests keeps them fast)."""
    fp8_emulate: bool | None = None
    """torchao float8 emulation; None = emulate exactly when no CUDA GPU is present."""
    fp8_skip_small: bool = True
    """Leave Linears torchao's size filter would skip in bf16 (False only for tiny test models)."""
    fp8_probe_every: int | None = None
    """Measure each block's loss sensitivity to float8 every this many steps (0: never); None = only when the plan
    draws its float8 set (fp8_temperature > 0), as often as costs 1 % of the predicted step time (once per rotation
    period without a GPU profile)."""
    gc_every_steps: int = 50
    """Python's automatic garbage collection is off during training and a young-generation collection runs every
    this many steps (TorchTitan's training.gc_freq default): no collection pause lands inside a step; 0 leaves
    Python's automatic collection on."""
    timing_warmup_steps: int = 2
    """Steps excluded from the summary's medians (compilation, allocator warm-up)."""
    log_every: int = 1
    """Print a step line (loss, tokens/s, MFU, memory, predicted step time) every this many steps; 0: none."""
    tensorboard: bool = True
    """Write TensorBoard event files to ``out``/tensorboard (needs the optional tensorboard package)."""
    plan_source: str | None = field(default=None, metadata={"flag": False})
    """Where the plan came from, for error messages; None = the plan's own ``source``."""

    @property
    def warmup(self) -> int:
        return self.steps // 10 if self.warmup_steps is None else self.warmup_steps

    @property
    def token_dtype(self) -> str:
        return self.data_dtype or ("uint16" if self.model.vocab_size < 65536 else "uint32")


def validate(cfg: TrainConfig, world_size: int) -> None:
    """Every user error that can be found without a collective: SpecError/ValueError naming value and fix.

    Runs identically on every rank before the first collective, so a bad plan fails everywhere at once.
    """
    plan = cfg.plan
    src = cfg.plan_source or getattr(plan, "source", "<plan>")
    if plan.world_size != world_size:
        raise SpecError(src, "dp", f"{world_formula(plan)} but WORLD_SIZE is {world_size}",
                        f"launch {plan.world_size} processes or make dp × cp × tp × pp = {world_size}")
    check_plan(plan, cfg.model, None, src)   # every rule of the plan itself lives there
    if cfg.model.rope_scaling and cfg.model.rope_type != "llama3":
        raise SpecError(cfg.model.name or "<model>", "rope_scaling", f"rope_type {cfg.model.rope_type} is not "
                        "implemented by the trainer (it runs llama3 scaling)", "drop rope_scaling or use llama3")
    if plan.cp > 1:
        from launcher.runtime.parallel import cp
        why = cp.cp_unavailable()
        if why:
            raise SpecError(src, "cp", f"{plan.cp} on a machine without a GPU: {why}", cp.NEEDS_CUDA_FIX)
    if plan.fp8_layers and importlib.util.find_spec("torchao") is None:
        raise SpecError(src, "fp8_layers", "needs torchao, which is not installed",
                        "pip install torchao (0.18 matches torch 2.11) or set fp8_layers: 0")
    if plan.fp8_layers and not cfg.fp8_emulate:
        _check_float8_gpu(src)
    for name, value, low in (("steps", cfg.steps, 1), ("checkpoint_every", cfg.checkpoint_every, 0),
                             ("fp8_probe_every", cfg.fp8_probe_every or 0, 0),
                             ("gc_every_steps", cfg.gc_every_steps, 0),
                             ("log_every", cfg.log_every, 0), ("timing_warmup_steps", cfg.timing_warmup_steps, 0),
                             ("keep_checkpoints", cfg.keep_checkpoints, 1), ("warmup_steps", cfg.warmup, 0)):
        if value < low:
            raise SpecError("<flags>", name, f"is {value}", f"use {low} or more")
    if cfg.collective_timeout_s <= 0:
        raise SpecError("<flags>", "collective_timeout_s", f"is {cfg.collective_timeout_s}", "use seconds > 0")
    if cfg.lr <= 0:
        raise SpecError("<flags>", "lr", f"is {cfg.lr}", "use a positive learning rate")
    if cfg.checkpoint_every and cfg.out is None:
        raise SpecError("<flags>", "checkpoint_every", "needs a run directory", "pass --out RUN_DIR")
    if cfg.data is not None:
        from launcher.runtime.data import TokenFile
        TokenFile(cfg.data, dtype=cfg.token_dtype, vocab_size=cfg.model.vocab_size,
                  seq_len=plan.seq_len).validate()


def _check_float8_gpu(src: str) -> None:
    """float8 matmuls (torch._scaled_mm) need compute capability 8.9 (Ada, Hopper) or newer. Checked here, on the
    device that runs, not from the plan's cluster: the GPU found is the fact (on a CPU there is nothing to check:
    emulation is the default there)."""
    import torch
    if not torch.cuda.is_available():
        return
    cap = torch.cuda.get_device_capability()
    if tuple(cap) < (8, 9):
        raise SpecError(src, "fp8_layers", f"float8 needs a GPU of compute capability 8.9 or newer (H100, H200, L4, "
                        f"B200); this {torch.cuda.get_device_name()} is {cap[0]}.{cap[1]}",
                        "set fp8_layers: 0 on this GPU (or plan with --fp8-budget off)")


def world_size_from_env() -> int:
    """WORLD_SIZE as torchrun sets it (1 when run as a plain process)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise SpecError("<env>", "WORLD_SIZE", f"is {os.environ['WORLD_SIZE']!r}", "unset it or launch with torchrun")
