"""Host-memory offload: saved activations of some blocks (save_on_cpu) and the state of others (FSDP2)."""
from __future__ import annotations

import torch
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import ActivationWrapper

from launcher.runtime.model import Transformer


def _storage_key(t: torch.Tensor) -> int:
    """Identity of the storage behind ``t`` (a view shares it). The StorageImpl's address, not the data pointer:
    under FakeTensorMode (loadmaster verify) every data pointer is 0, which made every tensor look like a
    parameter and nothing was offloaded in the trace."""
    local = getattr(t, "_local_tensor", t)  # a DTensor's shard
    return local.untyped_storage()._cdata


class SaveOnCpuWrapper(ActivationWrapper):
    """Runs the wrapped block with ``torch.autograd.graph.save_on_cpu``'s hooks: every activation autograd
    saves for backward is copied to host memory in forward and back to the device in backward. The block's
    own parameters (and views of them, such as a Linear's transposed weight) are left where they are: FSDP2
    holds them for backward anyway, and copying each weight to the host and back per micro-batch would move
    more bytes than the activations of a small micro-batch. ``offloaded_bytes`` counts what was copied.
    Subclassing ActivationWrapper keeps the wrapper out of state-dict keys (``_checkpoint_wrapped_module`` is
    stripped)."""

    def __init__(self, module: torch.nn.Module, *, pin_memory: bool) -> None:
        super().__init__(module)
        self.pin_memory = pin_memory
        self.offloaded_bytes = 0

    def forward(self, *args, **kwargs):
        # FSDP2 swaps unsharded parameters in before this forward runs, so the keys are taken per call
        params = {_storage_key(p) for p in self._checkpoint_wrapped_module.parameters()}
        to_cpu = torch.autograd.graph.save_on_cpu(pin_memory=self.pin_memory)

        def pack(t: torch.Tensor):
            if _storage_key(t) in params:
                return None, t
            self.offloaded_bytes += t.numel() * t.element_size()
            return to_cpu.pack_hook(t), None

        def unpack(packed):
            on_cpu, kept = packed
            return kept if on_cpu is None else to_cpu.unpack_hook(on_cpu)

        with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
            return self._checkpoint_wrapped_module(*args, **kwargs)


def apply_offload(model: Transformer, *, first_block: int, num_activation_blocks: int,
                  num_state_blocks: int, pin_memory: bool) -> set[str]:
    """Offload activations and optimizer-side state of some blocks of one stage; returns the block keys whose
    state ``apply_fsdp`` must shard with ``CPUOffloadPolicy``.

    - Activations: blocks at stage positions [first_block, first_block + num_activation_blocks) — the blocks
      right after the checkpointed ones (``first_block`` = recompute_layers of the stage) — are wrapped so
      their saved activations live in (pinned, on GPU) host memory between forward and backward.
    - State: the first ``num_state_blocks`` blocks keep their fp32 sharded parameters, gradients and (since
      the optimizer follows the parameters' device) AdamW state on the host; FSDP2 copies parameters to the
      device for all-gather and gradients back after reduce-scatter, and their optimizer step runs on the CPU.
    ``pin_memory`` must be False without an accelerator (pinning needs one).
    """
    names = list(model.layers.keys())
    if first_block + num_activation_blocks > len(names):
        raise ValueError(f"activation offload of blocks [{first_block}, {first_block + num_activation_blocks}) "
                         f"does not fit a stage of {len(names)} blocks; lower offload_activation_layers")
    for name in names[first_block:first_block + num_activation_blocks]:
        model.layers[name] = SaveOnCpuWrapper(model.layers[name], pin_memory=pin_memory)
    return set(names[:num_state_blocks])
