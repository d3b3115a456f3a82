"""The plan's kernel choices in the trainer: RoPE, the loss, RMSNorm and SwiGLU (Plan.rope_impl, loss_impl,
norm_impl, swiglu_impl; costmodel.kernels prices each from profiles/runtime/loadmaster.yaml).

liger-kernel (0.8.5) is an optional dependency: its Triton kernels need a CUDA GPU. Where it cannot run, a liger
choice falls back to the plain PyTorch kernel with one warning, and ``effective_kernels`` says what ran — run
records carry that, so the cost model prices what ran. Compiled blocks (plan.compile) fuse RoPE, the norms and
SwiGLU themselves: the in-block choices apply to eager blocks only (a warning says so).

The RoPE of every choice is rotate-half with the same pairs (feature i with i + dh/2), so all give the same model:
- ``eager``: on the sequence-major (b, s, heads, dh) projections, before SDPA's transposed views, as
  ``x·cos + roll(x, dh/2)·sin_signed`` (sin_signed = [-sin, sin] halves) with the backward written out (the same
  three kernels on the gradient) — no transposes, no neg/cat copies, no per-block table casts;
- ``eager_transposed``: the trainer's first RoPE, kept for comparisons and to price runs that ran it;
- ``liger``: liger-kernel's fused kernel, in place on q and k.
"""
from __future__ import annotations

import functools
import importlib.util
import warnings
from typing import Callable

import torch
import torch.nn.functional as F

from costmodel import Plan
from costmodel.plan import KERNEL_KEYS

IN_BLOCK = ("rope_impl", "norm_impl", "swiglu_impl")
"""Choices inside the transformer blocks (torch.compile replaces them in compiled blocks)."""
LIGER = {"rope_impl": "liger", "norm_impl": "liger", "swiglu_impl": "liger", "loss_impl": "liger_fused"}
"""The liger-kernel choice of each key; its fallback is the key's "eager" choice."""


@functools.lru_cache(maxsize=4)
def liger_problem(device_type: str) -> str | None:
    """Why liger-kernel cannot run on this device type (None: it can)."""
    if device_type != "cuda":
        return f"liger-kernel's Triton kernels need a CUDA GPU (this run is on {device_type})"
    if importlib.util.find_spec("liger_kernel") is None:
        return "liger-kernel is not installed (pip install liger-kernel==0.8.5)"
    try:
        import liger_kernel.transformers.functional  # noqa: F401  (imports triton)
    except Exception as e:  # noqa: BLE001 - any import failure means the plain kernels
        return f"liger-kernel does not import ({type(e).__name__}: {e})"
    return None


def effective_kernels(plan: Plan, device_type: str) -> dict[str, str]:
    """The kernels the trainer runs for ``plan`` on this device: the plan's choices, less the liger ones that
    cannot run here (a warning each) and the in-block ones compiled blocks replace (a warning)."""
    out = {k: getattr(plan, k) for k in KERNEL_KEYS}
    if plan.compile:
        for key in IN_BLOCK:
            if out[key] == "liger":
                warnings.warn(f"{key} liger does not apply: compile fuses every block's kernels with inductor",
                              stacklevel=2)
                out[key] = "eager"
    problem = liger_problem(device_type)
    if problem:
        for key, liger in LIGER.items():
            if out[key] == liger:
                warnings.warn(f"{key} {liger}: {problem}; using {key} eager", stacklevel=2)
                out[key] = "eager"
    return out


# ---------------------------------------------------------------------------------------------------- RoPE
def rope_tables(impl: str, cos: torch.Tensor, sin: torch.Tensor,
                dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The (cos, sin) a block's RoPE takes, made once per model forward from the fp32 (max_seq, dh) buffers (a block
    cuts them to its sequence: under sequence parallelism the model's input holds a shard of it): eager:
    (max_seq, 1, dh) in the compute dtype, sin with its first half negated; liger: (max_seq, dh) in the compute
    dtype; eager_transposed: the fp32 buffers (each block casts them, as the first RoPE did)."""
    if impl == "eager_transposed":
        return cos, sin
    if impl == "liger":
        return cos.to(dtype), sin.to(dtype)
    half = sin.shape[-1] // 2
    signed = torch.cat([-sin[:, :half], sin[:, half:]], dim=-1)
    return cos.to(dtype).unsqueeze(1), signed.to(dtype).unsqueeze(1)


class RotateHalf(torch.autograd.Function):
    """Rotate-half RoPE of a sequence-major x (b, s, heads, dh): x·cos + roll(x, dh/2)·sin_signed.

    Its backward is the rotation by the opposite angle, g·cos - roll(g, dh/2)·sin_signed (roll by dh/2 is its own
    inverse), three kernels like the forward; autograd of the forward would add a roll of the gradient and an add."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, cos: torch.Tensor, sin_signed: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(cos, sin_signed)
        return torch.addcmul(x * cos, torch.roll(x, x.shape[-1] // 2, -1), sin_signed)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        cos, sin_signed = ctx.saved_tensors
        return torch.addcmul(g * cos, torch.roll(g, g.shape[-1] // 2, -1), sin_signed, value=-1), None, None


def rope_transposed(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """The trainer's first RoPE: rotate-half on x of shape (b, heads, s, dh) with (s, dh) tables."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


def apply_rope(impl: str, q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor,
               sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """RoPE on sequence-major q and k (b, s, heads, dh) with the tables ``rope_tables`` made; same layout back."""
    cos, sin = cos[:q.shape[1]], sin[:q.shape[1]]   # views: the first s positions
    if impl == "eager":
        return RotateHalf.apply(q, cos, sin), RotateHalf.apply(k, cos, sin)
    if impl == "liger":
        from liger_kernel.transformers.functional import liger_rope
        q, k = liger_rope(q.transpose(1, 2), k.transpose(1, 2), cos, sin)   # it takes (b, heads, s, dh) views
        return q.transpose(1, 2), k.transpose(1, 2)
    cos, sin = cos.to(q.dtype), sin.to(q.dtype)
    q = rope_transposed(q.transpose(1, 2), cos, sin)
    k = rope_transposed(k.transpose(1, 2), cos, sin)
    return q.transpose(1, 2), k.transpose(1, 2)


# ------------------------------------------------------------------------------------------- norm, SwiGLU
def rms_norm(impl: str, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm: PyTorch's, or liger-kernel's computed in fp32 like it ("gemma" casting, offset 0, not in place)."""
    if impl == "liger":
        from liger_kernel.transformers.functional import liger_rms_norm
        return liger_rms_norm(x, weight, eps, offset=0.0, casting_mode="gemma", in_place=False)
    return F.rms_norm(x, (x.shape[-1],), weight, eps)


def swiglu(impl: str, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """silu(gate)·up: PyTorch's two kernels, or liger-kernel's fused one (it saves gate and up, not silu(gate))."""
    if impl == "liger":
        from liger_kernel.transformers.functional import liger_swiglu
        return liger_swiglu(gate, up)
    return F.silu(gate) * up


def set_block_kernels(model: torch.nn.Module, kernels: dict[str, str]) -> None:
    """Give every attention, norm and MLP module of ``model`` (whole or one pipeline stage, before any wrapping)
    the kernel choices it runs with, and the model its RoPE tables' and loss's."""
    from launcher.runtime.model import Attention, FeedForward, RMSNorm, Transformer
    for module in model.modules():
        if isinstance(module, Attention):
            module.rope_impl = kernels["rope_impl"]
        elif isinstance(module, RMSNorm):
            module.impl = kernels["norm_impl"]
        elif isinstance(module, FeedForward):
            module.swiglu_impl = kernels["swiglu_impl"]
        elif isinstance(module, Transformer):
            module.rope_impl, module.loss_impl = kernels["rope_impl"], kernels["loss_impl"]


# ------------------------------------------------------------------------------------------------- loss
def cross_entropy_fp32(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy on fp32 logits (the bf16 logits can be freed once this returns)."""
    return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(0, 1))


def fused_linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """liger-kernel's fused linear cross-entropy: ``cross_entropy_fp32(hidden @ weight.T, labels)`` computed in
    token chunks, gradients made in forward, the logits never materialised; the output projection's gradient
    accumulates in fp32 (one rounding to bf16, as the unfused GEMM)."""
    from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy
    return liger_fused_linear_cross_entropy(hidden.flatten(0, 1), weight, labels.flatten(0, 1),
                                            accum_dtype=torch.float32)


LossFn = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def logits_loss(impl: str, *, backend: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The loss on logits (a pipeline's last stage; the unfused choices): eager, or torch.compile'd with
    ``backend`` (TorchTitan's compile.components = ["loss"]: inductor fuses the upcast into the reductions)."""
    if impl == "compiled":
        return torch.compile(cross_entropy_fp32, backend=backend)
    return cross_entropy_fp32


def build_loss(impl: str, *, backend: str) -> LossFn:
    """``loss(model, tokens, labels)`` for one micro-batch. The fused choice passes the labels into the model, so
    the loss runs inside the root module's forward, where FSDP2 has the output projection unsharded."""
    if impl == "liger_fused":
        return lambda model, tokens, labels: model(tokens, labels=labels)
    on_logits = logits_loss(impl, backend=backend)
    return lambda model, tokens, labels: on_logits(model(tokens), labels)
