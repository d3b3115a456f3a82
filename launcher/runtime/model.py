"""A Llama-family decoder built from a ModelSpec, exactly the ops the cost model counts.

Block: ``h = x + attention(attention_norm(x)); out = h + feed_forward(ffn_norm(h))``. Attention has separate
wq/wk/wv/wo projections (biases only where the spec asks: Qwen2's q/k/v, Llama's attention_bias), real-valued
rotate-half RoPE (cos/sin buffers; no complex numbers, so DTensor, torch.compile and float8 all see plain real
tensors; Llama-3.1 frequency scaling applied to them; skipped in the blocks ``no_rope_layers`` marks) and GQA
through SDPA's ``enable_gqa``. RoPE, the RMSNorms, SwiGLU and the loss run the kernels the plan chose
(launcher.runtime.kernels; ``set_block_kernels`` sets them, the defaults are PyTorch's).

The model is built on the meta device; ``init_weights`` materialises it after sharding. Initial values are a
function of (seed, parameter FQN, global position) only, so every plan — and the unsharded single-process
reference — starts from the same weights without any rank holding a full parameter.
"""
from __future__ import annotations

import math
import zlib

import torch
import torch.nn.functional as F
from torch import nn

from costmodel import ModelSpec
from launcher.runtime.moe import MoE
from launcher.runtime import kernels

# Wrappers (activation checkpointing, torch.compile) insert these into FQNs; checkpoints and init strip them.
_WRAPPER_PREFIXES = ("_checkpoint_wrapped_module.", "_orig_mod.")
# Rows generated per random chunk are sized so a chunk holds about this many values (bounded temp memory).
_INIT_CHUNK_NUMEL = 1 << 22


def clean_fqn(name: str) -> str:
    """A parameter name without the prefixes activation-checkpoint and compile wrappers add."""
    for p in _WRAPPER_PREFIXES:
        name = name.replace(p, "")
    return name


def llama3_scaled(inv_freq: torch.Tensor, *, factor: float, low_freq_factor: float, high_freq_factor: float,
                  original_max_position_embeddings: float, **_) -> torch.Tensor:
    """Llama-3.1 RoPE frequency scaling (Meta's reference): wavelengths longer than the original context /
    low_freq_factor are divided by ``factor``, those shorter than context / high_freq_factor are kept, and the
    band between is interpolated smoothly."""
    wavelen = 2 * math.pi / inv_freq
    low_wavelen = original_max_position_embeddings / low_freq_factor
    high_wavelen = original_max_position_embeddings / high_freq_factor
    smooth = (original_max_position_embeddings / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    blended = (1 - smooth) * inv_freq / factor + smooth * inv_freq
    out = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    return torch.where((wavelen <= low_wavelen) & (wavelen >= high_wavelen), blended, out)


def rope_tables(head_dim: int, seq_len: int, theta: float, scaling: dict | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables (seq_len, head_dim) for rotate-half RoPE, in fp32 (``scaling``: a llama3
    rope_scaling dict; launcher.runtime.config refuses other types before anything is built)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    if scaling:
        inv_freq = llama3_scaled(inv_freq, **scaling)
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float64), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos().float(), angles.sin().float()


class RMSNorm(nn.RMSNorm):
    """nn.RMSNorm whose kernel is a plan choice (norm_impl)."""

    impl = "eager"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return kernels.rms_norm(self.impl, x, self.weight, self.eps)


class Attention(nn.Module):
    rope_impl = "eager"

    def __init__(self, spec: ModelSpec, use_rope: bool = True) -> None:
        super().__init__()
        h, dh = spec.hidden_size, int(spec.head_dim)
        self.head_dim, self.use_rope = dh, use_rope
        qkv_bias = spec.qkv_bias or spec.attention_bias
        self.wq = nn.Linear(h, spec.num_attention_heads * dh, bias=qkv_bias)
        self.wk = nn.Linear(h, spec.kv_heads * dh, bias=qkv_bias)
        self.wv = nn.Linear(h, spec.kv_heads * dh, bias=qkv_bias)
        self.wo = nn.Linear(spec.num_attention_heads * dh, h, bias=spec.attention_bias)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        # -1 heads: under tensor parallelism each rank holds heads / tp of them; RoPE on the sequence-major
        # projections, SDPA on (b, heads, s, dh) views of them
        q = self.wq(x).view(b, s, -1, self.head_dim)
        k = self.wk(x).view(b, s, -1, self.head_dim)
        v = self.wv(x).view(b, s, -1, self.head_dim)
        if self.use_rope:
            q, k = kernels.apply_rope(self.rope_impl, q, k, cos, sin)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        return self.wo(out.transpose(1, 2).reshape(b, s, -1))


class FeedForward(nn.Module):
    def __init__(self, spec: ModelSpec, width: int | None = None) -> None:
        super().__init__()
        self.gated = spec.gated_mlp
        width = width or spec.intermediate_size
        self.w1 = nn.Linear(spec.hidden_size, width, bias=False)
        self.w2 = nn.Linear(width, spec.hidden_size, bias=False)
        self.w3 = nn.Linear(spec.hidden_size, width, bias=False) if self.gated else None

    swiglu_impl = "eager"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.w3 is not None:
            return self.w2(kernels.swiglu(self.swiglu_impl, self.w1(x), self.w3(x)))
        return self.w2(F.gelu(self.w1(x)))


class TransformerBlock(nn.Module):
    def __init__(self, spec: ModelSpec, layer_id: int) -> None:
        super().__init__()
        self.layer_id = layer_id
        self.attention_norm = RMSNorm(spec.hidden_size, eps=spec.rms_norm_eps)
        self.attention = Attention(spec, use_rope=spec.uses_rope(layer_id))
        self.ffn_norm = RMSNorm(spec.hidden_size, eps=spec.rms_norm_eps)
        # a mixture-of-experts block replaces the MLP (launcher.runtime.moe); the spec says which blocks
        self.feed_forward = MoE(spec) if spec.is_moe_layer(layer_id) else FeedForward(spec)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        h = x + self.attention(self.attention_norm(x), cos, sin)
        return h + self.feed_forward(self.ffn_norm(h))


class Transformer(nn.Module):
    """The whole decoder, or one pipeline stage of it (missing parts are None; FQNs stay global)."""

    rope_impl = "eager"
    loss_impl = "eager"

    def __init__(self, spec: ModelSpec, max_seq_len: int) -> None:
        super().__init__()
        self.spec, self.max_seq_len = spec, max_seq_len
        self.tok_embeddings: nn.Embedding | None = nn.Embedding(spec.vocab_size, spec.hidden_size)
        # keyed by global layer index so pipeline stages keep checkpoint FQNs stable
        self.layers = nn.ModuleDict({str(i): TransformerBlock(spec, i) for i in range(spec.num_hidden_layers)})
        self.norm: RMSNorm | None = RMSNorm(spec.hidden_size, eps=spec.rms_norm_eps)
        self.output: nn.Linear | None = nn.Linear(spec.hidden_size, spec.vocab_size, bias=False)
        if spec.tie_word_embeddings:
            self.output.weight = self.tok_embeddings.weight
        cos, sin = rope_tables(int(spec.head_dim), max_seq_len, spec.rope_theta, spec.rope_scaling)
        # not persistent: derived from the spec, so checkpoints do not depend on seq_len
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def forward(self, tokens: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Token ids (b, s) → logits (b, s, V); a middle pipeline stage maps hidden states to hidden states. With
        ``labels`` (loss_impl liger_fused), the mean cross-entropy of the fused linear cross-entropy, computed here
        inside the root's forward, where FSDP2 has the output projection unsharded."""
        h = self.tok_embeddings(tokens) if self.tok_embeddings is not None else tokens
        cos, sin = kernels.rope_tables(self.rope_impl, self.rope_cos, self.rope_sin, h.dtype)
        for layer in self.layers.values():
            h = layer(h, cos, sin)
        if self.norm is not None:
            h = self.norm(h)
        if self.output is None:
            return h
        if labels is not None:
            return kernels.fused_linear_cross_entropy(h, self.output.weight, labels)
        return self.output(h)

    def init_weights(self, *, seed: int, buffer_device: torch.device | None = None) -> None:
        """Fill every (possibly sharded) parameter in place, re-tie a tied output, recompute the RoPE buffers.

        Normal(0, std) with std 0.02 for input projections and tied embeddings, 0.02/sqrt(2L) for the
        projections that write into the residual stream (wo, w2), 1.0 for an untied embedding and
        hidden^-0.5 for the untied output (as TorchTitan); norms start at one, biases at zero.
        """
        spec = self.spec
        if spec.tie_word_embeddings and self.tok_embeddings is not None and self.output is not None:
            self.output.weight = self.tok_embeddings.weight  # to_empty made them two tensors again
        depth_std = 0.02 / math.sqrt(2 * spec.num_hidden_layers)
        for name, param in self.named_parameters():
            fqn = clean_fqn(name)
            parts = fqn.split(".")
            leaf = parts[-2] if parts[-1] == "weight" and len(parts) > 1 else parts[-1]  # experts' w1/w2/w3
            if param.dim() == 1:
                with torch.no_grad():
                    _local(param).fill_(0.0 if fqn.endswith(".bias") else 1.0)
                continue
            if fqn.startswith("tok_embeddings"):
                std = 0.02 if spec.tie_word_embeddings else 1.0
            elif fqn.startswith("output"):
                std = spec.hidden_size ** -0.5
            elif leaf in ("wo", "w2"):
                std = depth_std
            else:
                std = 0.02
            fill_normal_(param, fqn=fqn, std=std, seed=seed)
        cos, sin = rope_tables(int(spec.head_dim), self.max_seq_len, spec.rope_theta, spec.rope_scaling)
        device = buffer_device or self.rope_cos.device
        self.rope_cos = cos.to(device)
        self.rope_sin = sin.to(device)


def build_model(spec: ModelSpec, seq_len: int) -> Transformer:
    """The full model on the meta device (no memory); parallelise it, then materialise and init_weights."""
    with torch.device("meta"):
        return Transformer(spec, seq_len)


def _local(param: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor
    return param.to_local() if isinstance(param, DTensor) else param


def local_box(param: torch.Tensor) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(global offset, local shape) of the part of ``param`` this rank holds."""
    from torch.distributed.tensor import DTensor
    if not isinstance(param, DTensor):
        return (0,) * param.dim(), tuple(param.shape)
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset
    shape, offset = compute_local_shape_and_global_offset(param.shape, param.device_mesh, param.placements)
    return tuple(offset), tuple(shape)


def _chunk_seed(seed: int, fqn: str, chunk: int) -> int:
    return (seed * 1_000_003 + zlib.crc32(fqn.encode()) * 65_537 + chunk) % (1 << 62)


@torch.no_grad()
def fill_normal_(param: torch.Tensor, *, fqn: str, std: float, seed: int) -> None:
    """Normal(0, std) values that depend on (seed, fqn, global index) only, written into the local shard.

    The global tensor is cut into fixed row chunks (a function of its shape alone), each drawn from a
    generator seeded by (seed, fqn, chunk); a rank draws just the chunks its rows overlap.
    """
    local = _local(param)
    if local.numel() == 0:
        return
    offset, shape = local_box(param)
    assert tuple(local.shape) == shape, (fqn, local.shape, shape)
    gshape = tuple(param.shape)
    row_numel = math.prod(gshape[1:])
    chunk_rows = max(1, _INIT_CHUNK_NUMEL // row_numel)
    r0, r1 = offset[0], offset[0] + shape[0]
    gen = torch.Generator(device=local.device)
    for k in range(r0 // chunk_rows, (r1 - 1) // chunk_rows + 1):
        c0 = k * chunk_rows
        n = min(chunk_rows, gshape[0] - c0)
        gen.manual_seed(_chunk_seed(seed, fqn, k))
        block = torch.randn((n, *gshape[1:]), generator=gen, device=local.device, dtype=torch.float32)
        lo, hi = max(r0, c0), min(r1, c0 + n)
        piece = block[lo - c0:hi - c0]
        for d in range(1, len(gshape)):
            piece = piece.narrow(d, offset[d], shape[d])
        local[lo - r0:hi - r0].copy_(piece * std)
