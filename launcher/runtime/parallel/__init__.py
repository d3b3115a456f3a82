"""Parallelism and memory techniques, one function each, composed in TorchTitan's order.

PP splits first (``split_pipeline``); then every stage module goes through ``parallelize_part``:
float8 conversion → TP → EP → AC → activation offload → compile → FSDP (with state offload, over dp × cp). Context
parallelism changes no module: ``apply_cp`` is the context each step's forward and backward run in. The order matters:
float8 swaps Linear modules before TP shards their weights; AC and offload wrap whole (TP-sharded) blocks;
compile traces the wrapped block; FSDP goes last so its hooks stay outside compiled graphs.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from costmodel import Plan
from launcher.runtime.model import Transformer
from launcher.runtime.parallel.ac import apply_ac
from launcher.runtime.parallel.compile import apply_compile
from launcher.runtime.parallel.cp import apply_cp
from launcher.runtime.parallel.ep import apply_ep
from launcher.runtime.parallel.fp8 import apply_fp8
from launcher.runtime.parallel.fp8_schedule import Fp8Schedule
from launcher.runtime.parallel.fsdp import apply_fsdp
from launcher.runtime.parallel.mesh import Meshes, build_meshes
from launcher.runtime.parallel.offload import apply_offload
from launcher.runtime.parallel.pipeline import build_schedule, split_pipeline
from launcher.runtime.parallel.tp import apply_tp

__all__ = ["apply_ac", "apply_compile", "apply_cp", "apply_ep", "apply_fp8", "apply_fsdp", "apply_offload",
           "apply_tp", "split_pipeline", "build_schedule", "build_meshes", "Meshes", "Fp8Schedule", "PartOptions",
           "parallelize_part"]


@dataclass(kw_only=True)
class PartOptions:
    """Runtime choices the plan does not make (they depend on the machine, not on the cost)."""

    param_dtype: torch.dtype
    """FSDP2 compute dtype of parameters."""
    reduce_dtype: torch.dtype
    """FSDP2 gradient-reduction dtype."""
    pin_memory: bool
    """Pin host buffers of offloaded activations and state (needs an accelerator)."""
    compile_backend: str = "inductor"
    """torch.compile backend."""
    fp8_emulate: bool = False
    """torchao float8 emulation (no CUDA GPU)."""
    fp8_skip_small: bool = True
    """Apply torchao's size filter."""


def parallelize_part(part: Transformer, *, stage: int, plan: Plan, meshes: Meshes,
                     options: PartOptions) -> tuple[list[list[torch.nn.Module]], set[str]]:
    """Apply every technique the plan asks for to one stage module (the whole model when pp = 1), in place,
    on the meta device. Returns the float8 Linears of each converted block (apply_fp8; ``Fp8Schedule.from_parts``
    finds them in the parts) and the keys of the blocks whose state is offloaded (materialise those on the CPU)."""
    L = part.spec.num_hidden_layers
    recompute = plan.per_stage("recompute_layers", L)[stage]
    offload_act = plan.per_stage("offload_activation_layers", L)[stage]
    offload_state = plan.per_stage("offload_state_layers", L)[stage]
    fp8_blocks = plan.per_stage("fp8_layers", L)[stage]
    groups = []
    if fp8_blocks > 0:
        groups = apply_fp8(part, num_blocks=fp8_blocks, recipe=plan.fp8_recipe, emulate=options.fp8_emulate,
                           rotating=plan.fp8_rotation_steps > 0, skip_small=options.fp8_skip_small)
    apply_tp(part, meshes.tp_mesh, sequence_parallel=plan.sequence_parallel, vocab_parallel=plan.vocab_parallel)
    apply_ep(part, meshes.ep_mesh)
    apply_ac(part, mode=plan.recompute, num_blocks=recompute)
    offload_blocks = apply_offload(part, first_block=recompute, num_activation_blocks=offload_act,
                                           num_state_blocks=offload_state, pin_memory=options.pin_memory)
    if plan.compile:
        apply_compile(part, backend=options.compile_backend)
    apply_fsdp(part, meshes.fsdp_mesh, zero=plan.zero, param_dtype=options.param_dtype,
               reduce_dtype=options.reduce_dtype, offload_blocks=offload_blocks,
               pin_memory=options.pin_memory, pipelined=plan.pp > 1 and not plan.pp_reshard_after_forward,
               last_stage=stage == plan.num_stages - 1, expert_mesh=meshes.expert_fsdp_mesh,
               dp=plan.dp * plan.cp)   # expert gradients are averaged over every token shard: dp × cp
    return groups, offload_blocks
