"""The FLOPs convention every MFU figure of loadmaster uses (trainer, predict, plan, benchmarks).

Model FLOPs per token = 6 × (matmul weights of the blocks and of the output projection that one token uses: of a
                            mixture-of-experts block the router, the shared experts and its top-k routed experts)
                      + 6 × L × s × a × head_dim   (attention scores and values: 12·L·s·a·dh halved,
                                                    because a causal mask does half the work).
The embedding lookup is not a matmul and counts nothing; recomputation never counts (it is not model work).
"""
from __future__ import annotations

from .specs import ModelSpec


def matmul_params(model: ModelSpec) -> int:
    """Weights that take part in a matmul per token: all blocks' active projections and the output projection."""
    norms = 2 * model.hidden_size * model.num_hidden_layers  # norm vectors are elementwise
    return model.block_params(active=True) - norms + model.vocab_size * model.hidden_size


def model_flops_per_token(model: ModelSpec, seq_len: int) -> float:
    """Training FLOPs (forward + backward) per token under the convention above."""
    attn = 6 * model.num_hidden_layers * seq_len * model.num_attention_heads * int(model.head_dim)
    return 6.0 * matmul_params(model) + attn


def mfu(model: ModelSpec, seq_len: int, tokens_per_s_per_gpu: float, peak_tflops: float) -> float:
    """Model FLOPs utilisation against a dense bf16 peak (TFLOP/s)."""
    return model_flops_per_token(model, seq_len) * tokens_per_s_per_gpu / (peak_tflops * 1e12)
