"""PyTorch's ring attention called directly on local tensors: the same kernels, collectives and buffers as
``context_parallel``, without its DTensor dispatch.

``launcher.runtime.parallel.cp.apply_cp`` (the trainer's context parallelism) routes SDPA through DTensor to torch's
``_templated_ring_attention`` and its backward. That dispatch has sharding rules only for CUDA attention ops, so it
cannot run on CPU (checked on torch 2.13). The ring functions themselves take any attention op and a process
group: on CPU with gloo they match a single-process attention (both rotate methods, grouped K/V heads), and under
the fake backend their collectives run with the right buffer sizes. ``ring_cp`` is a drop-in for ``apply_cp``
built on them, for two uses:

- tests: the trainer's context-parallel path (buffers sharded with causal load balancing, RoPE tables, FSDP over
  dp × cp, the loss averaged over cp) checked on CPU against a single-process reference;
- rehearsal fallback: if ``context_parallel`` fails under the fake backend on a GPU, a cp rank is rehearsed with
  this instead — its local shard, attention over the full K/V length the ring brings, the exchange's buffers
  allocated, only the communication itself a no-op.

It uses torch-private functions (``torch.distributed.tensor.experimental._context_parallel``, torch 2.13): keep it
out of the trainer's own path.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.device_mesh import DeviceMesh

from launcher.runtime.model import Transformer
from launcher.runtime.parallel.cp import cp_buffers

aten = torch.ops.aten


class _Ring(torch.autograd.Function):
    """Causal ring attention of local (load-balanced) q, k, v over ``group``; saves what SDPA saves (q, k, v, the
    merged output and its log-sum-exp) and runs the ring's backward."""

    @staticmethod
    def forward(ctx, q, k, v, group, scale):
        from torch.distributed.tensor.experimental._attention import _templated_ring_attention
        cpu = q.device.type == "cpu"
        op = aten._scaled_dot_product_flash_attention_for_cpu if cpu else aten._scaled_dot_product_flash_attention
        out, lse, *rest = _templated_ring_attention(group, 2, op, q, k, v, is_causal=True, dropout_p=0.0,
                                                    scale=scale)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.group, ctx.scale, ctx.rest = group, scale, rest
        return out

    @staticmethod
    def backward(ctx, grad_out):
        from torch.distributed.tensor.experimental._context_parallel._attention import \
            _templated_ring_attention_backward
        q, k, v, out, lse = ctx.saved_tensors
        if q.device.type == "cpu":
            op, extra = aten._scaled_dot_product_flash_attention_for_cpu_backward.default, {}
        else:   # what torch's own CP handler passes the flash backward: the forward's bookkeeping outputs
            cum_q, cum_k, max_q, max_k, seed, offset = ctx.rest[:6]
            op = aten._scaled_dot_product_flash_attention_backward.default
            extra = dict(cum_seq_q=cum_q, cum_seq_k=cum_k, max_q=max_q, max_k=max_k, philox_seed=seed,
                         philox_offset=offset)
        dq, dk, dv, *_ = _templated_ring_attention_backward(ctx.group, 2, op, grad_out.contiguous(), "grad_out", q, k,
                                                            v, out, lse, True, dropout_p=0.0, scale=ctx.scale, **extra)
        return dq, dk, dv, None, None


def ring_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, group: dist.ProcessGroup,
                   scale: float | None = None) -> torch.Tensor:
    """Causal attention of this cp rank's queries over the whole sequence (q: (b, heads, s/cp, d); k, v may have
    fewer heads)."""
    return _Ring.apply(q, k.contiguous(), v.contiguous(), group, scale)


@contextlib.contextmanager
def ring_cp(parts: list[Transformer], cp_mesh: DeviceMesh | None, *, tokens: torch.Tensor, labels: torch.Tensor,
            rotate: Literal["allgather", "alltoall"] = "allgather") -> Iterator[None]:
    """``apply_cp`` with the ring called directly: the buffers sharded exactly as ``context_parallel`` shards them
    (torch's head-tail load balancer), ``F.scaled_dot_product_attention`` replaced by ``ring_attention`` on the cp
    group; tokens and labels stay sharded, the RoPE tables are restored on exit."""
    if cp_mesh is None or cp_mesh.size() == 1:
        yield
        return
    from torch.distributed.tensor.experimental._attention import _cp_options, set_rotate_method
    from torch.distributed.tensor.experimental._context_parallel._attention import _context_parallel_buffers
    from torch.distributed.tensor.experimental._context_parallel._load_balancer import _HeadTailLoadBalancer

    set_rotate_method(rotate)
    _cp_options.enable_load_balance = True
    buffers, dims = cp_buffers(parts, tokens, labels)
    saved = [b.clone() for b in buffers[2:]]
    balancer = _HeadTailLoadBalancer(tokens.shape[1], cp_mesh.size(), tokens.device)
    for buf, shard in zip(buffers, _context_parallel_buffers(cp_mesh, buffers, dims, balancer)):
        shard = shard.clone()
        buf.resize_(shard.shape)
        buf.copy_(shard)
    group, sdpa = cp_mesh.get_group(), F.scaled_dot_product_attention

    def attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        if attn_mask is not None or dropout_p or not is_causal:
            raise ValueError("the ring attention stand-in runs causal attention without mask or dropout only")
        return ring_attention(q, k, v, group, scale)
    F.scaled_dot_product_attention = attention
    try:
        yield
    finally:
        F.scaled_dot_product_attention = sdpa
        with torch.no_grad():
            for buf, orig in zip(buffers[2:], saved):
                buf.resize_(orig.shape)
                buf.copy_(orig)
