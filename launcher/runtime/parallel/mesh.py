"""The device mesh ("pp", "dp", "cp", "tp"), tp innermost, and the sub-meshes each technique uses.

With expert parallelism dp is itself two dimensions, ("efsdp", "ep"), flattened back into "dp" (TorchTitan's
folding): an EP group is ``ep`` consecutive data-parallel ranks, and "efsdp" joins the dp / ep ranks that hold the
same experts (their FSDP group). Context-parallel ranks hold the same parameters too, so FSDP shards over dp × cp
("dp_cp") and the experts over (dp / ep) × cp ("efsdp_cp"). With both, the order is ("pp", "efsdp", "cp", "ep",
"tp"): EP's all-to-all keeps its consecutive ranks and every group DTensor combines stays in mesh order (a cp group
is then cp ranks ep·tp apart).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from costmodel import Plan
from costmodel.plan import world_formula

# One world mesh (with its FSDP meshes) per (device type, shape) and process group: a benchmark that sweeps many
# plans in one process group reuses the communicators instead of creating (and leaking) new ones per plan.
_MESH_CACHE: dict[tuple, tuple[DeviceMesh, DeviceMesh, DeviceMesh | None]] = {}


@dataclass(kw_only=True)
class Meshes:
    """The world mesh and the groups of one plan."""

    world: DeviceMesh
    """("pp", "dp", "cp", "tp"), or ("pp", "efsdp", "cp", "ep", "tp") with expert parallelism ("dp" is then
    ("efsdp", "ep") flattened); zero 0 adds a size-1 "dp_shard" before "tp" (plans refuse zero 0 with cp > 1)."""
    fsdp: DeviceMesh
    """The mesh ``fully_shard`` gets: "dp"; "dp_cp" (dp and cp flattened) with context parallelism, whose ranks
    hold the same parameters; 2-D ("dp", "dp_shard") HSDP for zero 0."""
    expert_fsdp: DeviceMesh | None = None
    """The routed experts' FSDP mesh: "efsdp", "efsdp_cp" with context parallelism, ("efsdp", "dp_shard") for zero
    0; None without expert parallelism."""
    pp: int
    """Pipeline degree."""
    dp: int
    """Data-parallel degree."""
    cp: int = 1
    """Context-parallel degree."""
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
    def cp_mesh(self) -> DeviceMesh:
        """The ranks that share each sequence (stride tp): PyTorch's ``context_parallel`` runs over it."""
        return self.world["cp"]

    @property
    def tp_mesh(self) -> DeviceMesh:
        return self.world["tp"]

    @property
    def fsdp_mesh(self) -> DeviceMesh:
        return self.fsdp

    @property
    def ep_mesh(self) -> DeviceMesh | None:
        """The expert-parallel dimension (experts are sharded over it); None without expert parallelism."""
        return self.world["ep"] if self.ep > 1 else None

    @property
    def expert_fsdp_mesh(self) -> DeviceMesh | None:
        return self.expert_fsdp

    @property
    def pp_rank(self) -> int:
        return self.world.get_local_rank("pp")

    @property
    def dp_rank(self) -> int:
        return self.world.get_local_rank("dp")

    @property
    def cp_rank(self) -> int:
        return self.world.get_local_rank("cp")

    @property
    def tp_rank(self) -> int:
        return self.world.get_local_rank("tp")


def build_meshes(plan: Plan, device_type: str) -> Meshes:
    """The mesh for ``plan`` on the current process group (cached per shape); tp varies fastest over ranks,
    so a tensor-parallel group is consecutive ranks (one node when tp <= GPUs per node), a context-parallel group
    cp ranks tp apart (ep·tp with expert parallelism), and FSDP's group the dp × cp ranks tp apart."""
    world_size = dist.get_world_size()
    if plan.world_size != world_size:
        raise ValueError(f"plan needs {world_formula(plan)} ranks but WORLD_SIZE is {world_size}; "
                         f"launch {plan.world_size} processes or change the plan")
    hsdp = plan.zero == 0
    if plan.ep > 1:
        data = (("efsdp", plan.dp // plan.ep), ("cp", plan.cp), ("ep", plan.ep))
    else:
        data = (("dp", plan.dp), ("cp", plan.cp))
    dims = (("pp", plan.pp), *data, *((("dp_shard", 1),) if hsdp else ()), ("tp", plan.tp))
    shape, names = tuple(n for _, n in dims), tuple(name for name, _ in dims)
    key = (device_type, shape, names, id(dist.group.WORLD))
    if key not in _MESH_CACHE:
        world = init_device_mesh(device_type, shape, mesh_dim_names=names)
        with warnings.catch_warnings():   # with cp > 1, cp lies between efsdp and ep: torch warns, and copes
            warnings.simplefilter("ignore")
            if plan.ep > 1:
                world["efsdp", "ep"]._flatten("dp")
            if hsdp:
                fsdp = world["dp", "dp_shard"]
            elif plan.cp > 1:   # TorchTitan's dp_shard_cp
                fsdp = world[tuple(name for name, _ in data)]._flatten("dp_cp")
            else:
                fsdp = world["dp"]
            experts = None
            if plan.ep > 1:
                experts = world["efsdp", "dp_shard"] if hsdp else \
                    world["efsdp", "cp"]._flatten("efsdp_cp") if plan.cp > 1 else world["efsdp"]
        _MESH_CACHE[key] = (world, fsdp, experts)
    world, fsdp, experts = _MESH_CACHE[key]
    return Meshes(world=world, fsdp=fsdp, expert_fsdp=experts, pp=plan.pp, dp=plan.dp, cp=plan.cp, tp=plan.tp,
                  hsdp=hsdp, ep=plan.ep)


def clear_mesh_cache() -> None:
    """Forget cached meshes (call before destroying the process group)."""
    _MESH_CACHE.clear()
