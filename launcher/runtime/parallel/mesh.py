"""The device mesh ("pp", "dp", "tp"), tp innermost, and the sub-meshes each technique uses.

With expert parallelism dp is itself two dimensions, ("efsdp", "ep"), flattened back into "dp" (TorchTitan's
folding): an EP group is ``ep`` consecutive data-parallel ranks, and "efsdp" joins the dp / ep ranks that hold the
same experts (their FSDP group)."""
from __future__ import annotations

from dataclasses import dataclass

import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from costmodel import Plan

# One world mesh per (device type, shape) and process group: a benchmark that sweeps many plans in one process
# group reuses the communicators instead of creating (and leaking) new ones per plan.
_MESH_CACHE: dict[tuple, DeviceMesh] = {}


@dataclass(kw_only=True)
class Meshes:
    """The world mesh and the groups of one plan."""

    world: DeviceMesh
    """("pp", "dp", "tp"); with zero 0 ("pp", "dp", "dp_shard", "tp") where dp_shard has size 1."""
    pp: int
    """Pipeline degree."""
    dp: int
    """Data-parallel degree."""
    tp: int
    """Tensor-parallel degree."""
    hsdp: bool
    """True for zero 0: FSDP2 replicates over "dp" and shards over the size-1 "dp_shard"."""
    ep: int = 1
    """Expert-parallel degree (1: no "ep" and "efsdp" dimensions)."""

    @property
    def pp_mesh(self) -> DeviceMesh:
        return self.world["pp"]

    @property
    def dp_mesh(self) -> DeviceMesh:
        return self.world["dp"]

    @property
    def tp_mesh(self) -> DeviceMesh:
        return self.world["tp"]

    @property
    def fsdp_mesh(self) -> DeviceMesh:
        """The mesh ``fully_shard`` gets: 1-D "dp", or 2-D ("dp", "dp_shard") HSDP for zero 0."""
        return self.world["dp", "dp_shard"] if self.hsdp else self.world["dp"]

    @property
    def ep_mesh(self) -> DeviceMesh | None:
        """The expert-parallel dimension (experts are sharded over it); None without expert parallelism."""
        return self.world["ep"] if self.ep > 1 else None

    @property
    def expert_fsdp_mesh(self) -> DeviceMesh | None:
        """The mesh ``fully_shard`` gets for the routed experts: "efsdp" (with "dp_shard" for zero 0)."""
        if self.ep == 1:
            return None
        return self.world["efsdp", "dp_shard"] if self.hsdp else self.world["efsdp"]

    @property
    def pp_rank(self) -> int:
        return self.world.get_local_rank("pp")

    @property
    def dp_rank(self) -> int:
        return self.world.get_local_rank("dp")

    @property
    def tp_rank(self) -> int:
        return self.world.get_local_rank("tp")


def build_meshes(plan: Plan, device_type: str) -> Meshes:
    """The mesh for ``plan`` on the current process group (cached per shape); tp varies fastest over ranks,
    so a tensor-parallel group is consecutive ranks (one node when tp <= GPUs per node)."""
    world_size = dist.get_world_size()
    if plan.world_size != world_size:
        raise ValueError(f"plan needs dp × tp × pp = {plan.world_size} ranks but WORLD_SIZE is {world_size}; "
                         f"launch {plan.world_size} processes or change the plan")
    hsdp = plan.zero == 0
    dp_dims = ((plan.dp // plan.ep, plan.ep), ("efsdp", "ep")) if plan.ep > 1 else ((plan.dp,), ("dp",))
    shard = ((1,), ("dp_shard",)) if hsdp else ((), ())
    shape = (plan.pp, *dp_dims[0], *shard[0], plan.tp)
    names = ("pp", *dp_dims[1], *shard[1], "tp")
    key = (device_type, shape, names, id(dist.group.WORLD))
    if key not in _MESH_CACHE:
        mesh = init_device_mesh(device_type, shape, mesh_dim_names=names)
        if plan.ep > 1:
            mesh["efsdp", "ep"]._flatten("dp")
        _MESH_CACHE[key] = mesh
    return Meshes(world=_MESH_CACHE[key], pp=plan.pp, dp=plan.dp, tp=plan.tp, hsdp=hsdp, ep=plan.ep)


def clear_mesh_cache() -> None:
    """Forget cached meshes (call before destroying the process group)."""
    _MESH_CACHE.clear()
