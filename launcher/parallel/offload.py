"""Host-memory offload: saved activations of some blocks (save_on_cpu) and the state of others (FSDP2)."""
from __future__ import annotations

import torch
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import ActivationWrapper

from launcher.model import Transformer


class SaveOnCpuWrapper(ActivationWrapper):
    """Runs the wrapped block under ``torch.autograd.graph.save_on_cpu``: every tensor autograd saves for
    backward is copied to host memory in forward and back to the device in backward. Subclassing
    ActivationWrapper keeps the wrapper out of state-dict keys (``_checkpoint_wrapped_module`` is stripped)."""

    def __init__(self, module: torch.nn.Module, *, pin_memory: bool) -> None:
        super().__init__(module)
        self.pin_memory = pin_memory

    def forward(self, *args, **kwargs):
        with torch.autograd.graph.save_on_cpu(pin_memory=self.pin_memory):
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
