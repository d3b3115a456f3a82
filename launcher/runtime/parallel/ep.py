"""Expert parallelism: each MoE block's routed experts sharded over the "ep" mesh dimension, tokens exchanged with
all-to-all (launcher.runtime.moe). FSDP then shards the experts over "efsdp" (apply_fsdp's ``expert_mesh``)."""
from __future__ import annotations

from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import Shard, distribute_tensor

from launcher.runtime.moe import moe_blocks


def apply_ep(model: nn.Module, ep_mesh: DeviceMesh | None) -> None:
    """Shard every MoE block's routed experts along dim 0 (the expert index) over ``ep_mesh``, in place on the meta
    model, and give the block the EP process group for its dispatch and combine all-to-alls.

    EP rank p holds experts [p·E/ep, (p+1)·E/ep) as a DTensor ``Shard(0)``, so checkpoints keep the global
    (E, ...) tensors and load under any ep. Nothing happens without expert parallelism (``ep_mesh`` None): the
    experts stay plain parameters of the block's FSDP unit. Router, shared experts and attention are untouched.
    """
    if ep_mesh is None or ep_mesh.size() == 1:
        return
    group = ep_mesh.get_group()
    for moe in moe_blocks(model):
        experts = moe.experts
        for name, param in list(experts.named_parameters(recurse=False)):
            experts.register_parameter(name, nn.Parameter(distribute_tensor(param, ep_mesh, [Shard(0)])))
        moe.ep_group = group
