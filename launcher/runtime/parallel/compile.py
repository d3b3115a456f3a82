"""torch.compile per transformer block (after AC and offload wrappers, before FSDP)."""
from __future__ import annotations

from launcher.runtime.model import Transformer
from launcher.runtime.moe import moe_blocks
from launcher.runtime.parallel.offload import SaveOnCpuWrapper


def apply_compile(model: Transformer, *, backend: str = "inductor") -> None:
    """Compile each block of ``model.layers`` in place (``nn.Module.compile``: no ``_orig_mod`` in FQNs).

    Per-block compilation (TorchTitan's choice) keeps compile time bounded by one block's graph — identical
    blocks share it — and leaves FSDP2's per-block hooks outside the graph. ``fullgraph=True`` surfaces any
    graph break as an error, except for activation-offload blocks, whose saved-tensor hooks dynamo may not
    trace. Embedding, final norm and output stay eager.
    """
    for block in model.layers.values():
        # a MoE block reads its token counts on the host (data-dependent shapes): graph breaks there
        full = not isinstance(block, SaveOnCpuWrapper) and not moe_blocks(block)
        block.compile(backend=backend, fullgraph=full)
