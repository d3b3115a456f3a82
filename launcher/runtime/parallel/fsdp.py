"""FSDP2 ``fully_shard`` per transformer block and on the root, with the plan's zero level."""
from __future__ import annotations

import warnings

import torch
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard
from torch.distributed.tensor import Shard

from launcher.runtime.model import Transformer
from launcher.runtime.moe import moe_blocks


def reshard_after_forward_for(zero: int) -> bool:
    """zero 3 re-shards bf16 parameters after forward; zero 0/1/2 keep them until backward."""
    if zero not in (0, 1, 2, 3):
        raise ValueError(f"zero {zero} is not a level; use 0, 1, 2 or 3")
    if zero == 1:
        warnings.warn("zero 1 runs as zero 2: FSDP2 cannot shard the optimizer state alone", stacklevel=2)
    return zero == 3


def apply_fsdp(model: Transformer, mesh: DeviceMesh, *, zero: int, param_dtype: torch.dtype,
               reduce_dtype: torch.dtype, offload_blocks: set[str] = frozenset(), pin_memory: bool = False,
               pipelined: bool = False, last_stage: bool = True, expert_mesh: DeviceMesh | None = None,
               dp: int = 1) -> None:
    """``fully_shard`` every block of ``model.layers``, then the root (embedding, final norm, output).

    Zero levels (the Plan docstring): 3 → ``reshard_after_forward=True`` (parameters all-gathered again in
    backward); 2 and 1 → ``False`` (bf16 parameters stay unsharded from forward to backward; gradients and
    fp32 parameters/AdamW state sharded); 0 → ``mesh`` is the 2-D (replicate=dp, shard=1) HSDP mesh, so every
    rank holds everything and gradients are all-reduced (DDP-like); resharding is moot.
    ``param_dtype``/``reduce_dtype``: compute copies and gradient reduction (bf16/fp32 on GPU; fp32/fp32 in CPU
    tests); the sharded master parameters stay fp32. Blocks named in ``offload_blocks`` get
    ``CPUOffloadPolicy(pin_memory)``. With zero 3 the last block of the last stage is not re-sharded: backward
    starts with it at once (TorchTitan does the same). ``pipelined`` (pp > 1): zero 3 runs as zero 2, as in
    TorchTitan and the cost model — re-sharding would all-gather every stage's parameters again for each
    micro-batch the schedule interleaves.

    ``expert_mesh`` (expert parallelism): each MoE block's routed experts, already sharded over "ep", become an FSDP
    unit of their own over the dp / ep ranks that hold the same experts, sharded along dim 1 (a rank may hold fewer
    experts than that group has ranks). Their gradients are summed over that group and divided by the whole ``dp``
    (dp × cp with context parallelism, whose ranks each see a share of the tokens):
    each EP rank's expert gradient already sums the contributions of the ``ep`` ranks whose tokens it served, so
    the default average over dp / ep ranks would be ``ep`` times too large (TorchTitan sets the same factor).
    """
    reshard = reshard_after_forward_for(zero) and not pipelined
    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype)
    names = list(model.layers.keys())
    for i, name in enumerate(names):
        offload: OffloadPolicy = CPUOffloadPolicy(pin_memory=pin_memory) if name in offload_blocks \
            else OffloadPolicy()
        block_reshard = reshard and not (last_stage and i == len(names) - 1)
        for moe in moe_blocks(model.layers[name]) if expert_mesh is not None else []:
            fully_shard(moe.experts, mesh=expert_mesh, reshard_after_forward=block_reshard, mp_policy=mp,
                        offload_policy=offload, shard_placement_fn=lambda _: Shard(1))
            moe.experts.set_gradient_divide_factor(float(dp))
            # gloo has no pre-scaled sum (PREMUL_SUM): sum, then divide. Not where the shard group is one rank:
            # torch 2.13 then divides by the factor while copying and again after a forced sum
            moe.experts.set_force_sum_reduction_for_comms(expert_mesh.size(expert_mesh.ndim - 1) > 1)
        fully_shard(model.layers[name], mesh=mesh, reshard_after_forward=block_reshard, mp_policy=mp,
                    offload_policy=offload)
    fully_shard(model, mesh=mesh, reshard_after_forward=reshard, mp_policy=mp)
