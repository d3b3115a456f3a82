"""The mixture-of-experts FFN of a block: token-choice top-k router, routed experts run as one grouped GEMM per
projection, optional shared experts, and the load-balancing loss — exactly what costmodel prices as a MoE block.

``MoE.forward``: score every token (softmax or sigmoid, fp32), keep its top-k experts (weights renormalised when
``norm_topk_prob``, times ``routed_scaling_factor``), sort the token copies by expert, run the experts, weight each
copy's output by its score and add the copies back at their tokens, plus the shared experts' output. With expert
parallelism (``apply_ep`` gives the block an EP process group) the sorted copies go to the rank that holds their
expert in one ``all_to_all_single`` and come back in another (dispatch and combine), after a small all-to-all of
the token counts; the experts' weights are DTensors sharded over the EP mesh dimension and used as local tensors.

Expert GEMMs: ``torch._grouped_mm`` for bf16 on CUDA (each expert's rows padded to a multiple of 8, the kernel's
alignment), a plain loop of matmuls elsewhere (CPU tests; the same arithmetic).
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from costmodel import ModelSpec

_ALIGN_ROWS = 8  # torch._grouped_mm needs 16-byte aligned groups: 8 bf16 rows (TorchTitan pads the same way)


def _local(t: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor
    return t.to_local() if isinstance(t, DTensor) else t


class GroupedExperts(nn.Module):
    """``num_experts`` SwiGLU MLPs of width ``width`` stacked along dim 0 (w1, w3: (E, F, h); w2: (E, h, F)), so
    expert parallelism shards dim 0 and checkpoints keep one tensor per projection whatever the EP degree."""

    def __init__(self, hidden: int, width: int, num_experts: int) -> None:
        super().__init__()
        self.w1 = nn.Parameter(torch.empty(num_experts, width, hidden))
        self.w2 = nn.Parameter(torch.empty(num_experts, hidden, width))
        self.w3 = nn.Parameter(torch.empty(num_experts, width, hidden))

    def forward(self, x: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """``x``: token copies sorted by local expert, ``counts[j]`` of them for local expert j."""
        w1, w2, w3 = _local(self.w1), _local(self.w2), _local(self.w3)
        if x.is_cuda and x.dtype == torch.bfloat16 and hasattr(torch, "_grouped_mm"):
            return _grouped(x, w1, w2, w3, counts)
        outs = []
        for j, xs in enumerate(x.split(counts.tolist())):
            outs.append((F.silu(xs @ w1[j].t()) * (xs @ w3[j].t())) @ w2[j].t())
        return torch.cat(outs) if outs else x.new_zeros(0, w2.shape[1])


def _grouped(x: torch.Tensor, w1, w2, w3, counts: torch.Tensor) -> torch.Tensor:
    """Three grouped GEMMs over experts; rows padded per expert without a host sync (static upper bound)."""
    padded = (counts + _ALIGN_ROWS - 1) // _ALIGN_ROWS * _ALIGN_ROWS
    ends = torch.cumsum(padded, 0)
    starts = ends - padded
    expert = torch.repeat_interleave(torch.arange(len(counts), device=x.device), counts, output_size=x.shape[0])
    first = torch.cumsum(counts, 0) - counts
    dest = starts[expert] + torch.arange(x.shape[0], device=x.device) - first[expert]
    rows = x.shape[0] + _ALIGN_ROWS * len(counts)
    xp = x.new_zeros(rows, x.shape[1]).index_copy(0, dest, x)
    offs = ends.to(torch.int32)
    h = F.silu(torch._grouped_mm(xp, w1.transpose(-2, -1), offs=offs)) \
        * torch._grouped_mm(xp, w3.transpose(-2, -1), offs=offs)
    return torch._grouped_mm(h, w2.transpose(-2, -1), offs=offs).index_select(0, dest)


def expert_counts(idx: torch.Tensor, num_experts: int) -> torch.Tensor:
    """Token copies per expert (int64). A histogram, not bincount: its size does not depend on the data, so the
    block traces under FakeTensorMode (loadmaster verify) where no host sync is needed (ep = 1 on CUDA)."""
    return torch.histc(idx.flatten().float(), bins=num_experts, min=0, max=num_experts).long()


class _AllToAll(torch.autograd.Function):
    """``all_to_all_single`` of rows with explicit split sizes; its backward sends the gradients back."""

    @staticmethod
    def forward(ctx, x, out_splits: list[int], in_splits: list[int], group):
        ctx.splits, ctx.group = (out_splits, in_splits), group
        return _exchange(x, out_splits, in_splits, group)

    @staticmethod
    def backward(ctx, grad):
        out_splits, in_splits = ctx.splits
        return _exchange(grad.contiguous(), in_splits, out_splits, ctx.group), None, None, None


def _fake(group) -> bool:
    return dist.get_backend(group) == "fake"


def _exchange(x: torch.Tensor, out_splits: list[int], in_splits: list[int], group) -> torch.Tensor:
    # the fake backend (rehearsals) leaves the output untouched: zeros keep its values finite
    alloc = x.new_zeros if _fake(group) else x.new_empty
    out = alloc(sum(out_splits), *x.shape[1:])
    dist.all_to_all_single(out, x.contiguous(), out_splits, in_splits, group=group)
    return out


class _AuxLoss(torch.autograd.Function):
    """Identity on the block output whose backward also gives the load-balancing loss its gradient (its weight in
    the step's loss): pipeline stages and checkpointed blocks need no loss plumbing."""

    @staticmethod
    def forward(ctx, out, aux, scale: float):
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, grad):
        return grad, grad.new_full((), ctx.scale, dtype=torch.float32), None


class MoE(nn.Module):
    """Router + routed experts (+ shared experts) of one block, for ``spec``'s mixture-of-experts fields."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        from launcher.runtime.model import FeedForward
        self.num_experts, self.top_k = spec.num_experts, spec.num_experts_per_tok
        self.scoring, self.norm_topk, self.scale = spec.scoring_func, spec.norm_topk_prob, spec.routed_scaling_factor
        self.aux_coef = spec.router_aux_loss_coef
        self.router = nn.Linear(spec.hidden_size, spec.num_experts, bias=False)
        self.experts = GroupedExperts(spec.hidden_size, spec.expert_width, spec.num_experts)
        self.shared = FeedForward(spec, width=spec.shared_width) if spec.shared_width else None
        self.ep_group: dist.ProcessGroup | None = None
        """Expert-parallel group (apply_ep); None: every expert is local."""
        self.aux_scale = 1.0
        """Weight of this block's balance loss in the backward (1 / micro-batches without pipelining)."""

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(top-k weights (T, k) fp32, expert ids (T, k), balance loss) of tokens ``x`` (T, h)."""
        logits = self.router(x).float()
        scores = torch.sigmoid(logits) if self.scoring == "sigmoid" else logits.softmax(dim=-1)
        top, idx = scores.topk(self.top_k, dim=-1)
        if self.norm_topk:
            top = top / top.sum(dim=-1, keepdim=True)
        # Switch Transformer's balance loss: E · Σ_e (share of copies routed to e) · (mean score of e)
        probs = scores / scores.sum(dim=-1, keepdim=True)
        share = expert_counts(idx, self.num_experts).float() / idx.numel()
        aux = self.aux_coef * self.num_experts * (share * probs.mean(dim=0)).sum()
        return top * self.scale, idx, aux

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        weights, idx, aux = self.route(x)
        order = idx.flatten().argsort(stable=True)
        token = order // self.top_k
        counts = expert_counts(idx, self.num_experts)
        routed = x.index_select(0, token)
        if self.ep_group is None:
            out = self.experts(routed, counts)
        else:
            out = self._expert_parallel(routed, counts)
        y = torch.zeros_like(x).index_add_(0, token, out * weights.flatten()[order, None].to(out.dtype))
        if self.shared is not None:
            y = y + self.shared(x)
        if self.training and self.aux_coef > 0 and torch.is_grad_enabled():
            y = _AuxLoss.apply(y, aux, self.aux_scale)
        return y.view(shape)

    def _expert_parallel(self, routed: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """Dispatch the expert-sorted copies to their experts' ranks, run the local experts, send the outputs back.

        Rank p of the EP group holds experts [p·E_loc, (p+1)·E_loc). A rank receives its experts' copies grouped by
        sender, then local expert; they are regrouped by local expert for the grouped GEMMs and back afterwards."""
        group, ep = self.ep_group, dist.get_world_size(self.ep_group)
        local = self.num_experts // ep
        # counts from every sender for my experts; the fake backend sends nothing back: assume symmetric routing
        received = counts.clone()
        dist.all_to_all_single(received, counts, group=group)
        grid = received.view(ep, local)                       # [sender, local expert]
        send = counts.view(ep, local).sum(dim=1).tolist()     # host sync: split sizes are Python ints
        recv = grid.sum(dim=1).tolist()
        got = _AllToAll.apply(routed, recv, send, group)
        seg = torch.repeat_interleave(torch.arange(ep * local, device=got.device), grid.flatten(),
                                      output_size=got.shape[0])
        by_expert = ((seg % local) * ep + seg // local).argsort(stable=True)
        out = self.experts(got.index_select(0, by_expert), grid.sum(dim=0))
        out = torch.empty_like(out).index_copy(0, by_expert, out)
        return _AllToAll.apply(out, send, recv, group)


def moe_blocks(model: nn.Module) -> list[MoE]:
    """The MoE modules of a model or stage."""
    return [m for m in model.modules() if isinstance(m, MoE)]


def set_aux_loss_scale(model: nn.Module, scale: float) -> None:
    """Weight of every block's balance loss in the backward: 1 / micro-batches when each micro-batch's loss is
    divided by their number (no pipelining), 1 when the pipeline schedule scales the gradients itself."""
    for m in moe_blocks(model):
        m.aux_scale = scale
