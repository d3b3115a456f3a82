"""Context parallelism: each sequence cut over the cp ranks, attention through PyTorch's ring attention.

Unlike the other techniques CP changes no module: it is a context around each step's forward and backward
(``torch.distributed.tensor.experimental.context_parallel``, as TorchTitan's train context). On entry it shards the
step's tokens, labels and every stage's RoPE tables along the sequence with causal load balancing — the sequence
cut into 2·cp chunks, rank i keeping chunks i and 2·cp-1-i, so every rank does the same attention work — and
routes ``F.scaled_dot_product_attention`` to the ring: local queries against the K/V blocks of every cp rank, brought
by one all-gather per block ("allgather") or a ring of sends ("alltoall"), the partial results merged by their
log-sum-exp. Everything else in a block is per token and runs on the local shard unchanged. The loss is each rank's
mean over its tokens; FSDP averages gradients over dp × cp, which gives the gradient of the global mean. Nothing
is unsharded (``context_parallel_unshard`` would all-gather a sequence): training needs no whole-sequence output.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Literal

import torch
from torch.distributed.device_mesh import DeviceMesh

from launcher.runtime.model import Transformer

NEEDS_CUDA = ("PyTorch's context_parallel runs only on CUDA (torch {version}'s CPU attention op, "
              "_scaled_dot_product_flash_attention_for_cpu, has no context-parallel sharding rule)")
NEEDS_CUDA_FIX = "run the plan on GPUs or use cp: 1"


def cp_unavailable() -> str | None:
    """Why this machine cannot run context parallelism (None if it can): PyTorch's ring needs CUDA."""
    if torch.cuda.is_available():
        return None
    return NEEDS_CUDA.format(version=torch.__version__)


def cp_buffers(parts: list[Transformer], tokens: torch.Tensor, labels: torch.Tensor
               ) -> tuple[list[torch.Tensor], list[int]]:
    """The tensors CP must shard along the sequence, and their sequence dimensions: tokens and labels (b, s), and
    each stage's RoPE cos/sin tables (s, head_dim), which must follow the tokens' reordering."""
    tables = [t for part in parts for t in (part.rope_cos, part.rope_sin)]
    return [tokens, labels, *tables], [1, 1] + [0] * len(tables)


@contextlib.contextmanager
def apply_cp(parts: list[Transformer], cp_mesh: DeviceMesh | None, *, tokens: torch.Tensor, labels: torch.Tensor,
             rotate: Literal["allgather", "alltoall"] = "allgather") -> Iterator[None]:
    """The context one step's forward and backward run in: ``tokens`` and ``labels`` (this data-parallel rank's
    rows, every micro-batch) are sharded in place and stay sharded; the RoPE tables are restored on exit.

    Attention is pinned to the cuDNN and flash backends: both take grouped K/V heads (``enable_gqa``) and have
    context-parallel rules; the memory-efficient one refuses GQA and the math one does not run on DTensors.
    A no-op without context parallelism."""
    if cp_mesh is None or cp_mesh.size() == 1:
        yield
        return
    if cp_mesh.device_type != "cuda":
        raise ValueError(f"cp {cp_mesh.size()}: {NEEDS_CUDA.format(version=torch.__version__)}; {NEEDS_CUDA_FIX}")
    from torch.distributed.tensor.experimental import context_parallel
    from torch.distributed.tensor.experimental._attention import _cp_options, set_rotate_method
    from torch.nn.attention import SDPBackend, sdpa_kernel

    set_rotate_method(rotate)
    _cp_options.enable_load_balance = True    # the head-tail split the cost model prices (costmodel.plan.Plan.cp)
    buffers, dims = cp_buffers(parts, tokens, labels)
    with sdpa_kernel([SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION]), \
            context_parallel(cp_mesh, buffers=buffers, buffer_seq_dims=dims, no_restore_buffers={tokens, labels}):
        yield
