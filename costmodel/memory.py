"""Per-GPU memory of one pipeline stage, as sympy expressions in the plan's knobs (bytes).

Semantics follow the trainer (launcher/): bf16 compute, fp32 master weights, AdamW state and gradient
reduction (FSDP2 MixedPrecisionPolicy), FSDP2 `fully_shard` per block and on the root, the fp32 logits of the
cross-entropy, SDPA (flash/cuDNN) attention. Each formula is written once and named for what it measures.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import sympy as sp

from .symbols import K, M, R, pos, smax, smin

BF16, FP32 = 2, 4


@dataclass(frozen=True)
class ArchOptions:
    """Implementation facts that change what a block saves; defaults describe loadmaster's trainer."""

    attention: Literal["flash", "materialized"] = "flash"
    """flash: SDPA saves its output and logsumexp; materialized: the s×s softmax is saved (Megatron 2022)."""
    dropout: bool = False
    """Dropout after attention and MLP (and on the attention probabilities when materialized)."""
    norm_stats: bool = True
    """Count the fp32 per-token statistics RMSNorm saves (Korthikanti's accounting leaves them out)."""
    sp_saves_sharded: bool = False
    """Under sequence parallelism, the all-gathered input of QKV/MLP is saved sharded and re-gathered in
    backward (Megatron-LM); DTensor saves the gathered tensor (False)."""
    selective: Literal["matmuls", "every_other_matmul", "attention_core"] = "matmuls"
    """What selective checkpointing keeps: every matmul and attention output, recomputing elementwise ops
    (the trainer); the attention output and every second matmul output, recomputing the other matmuls
    (TorchTitan's per-op policy); or everything but the attention core, which is recomputed (Korthikanti's)."""
    pipeline_recv_buffers: bool = True
    """Pipeline stages keep one input and one gradient receive buffer per micro-batch across steps
    (torch.distributed.pipelining); Megatron-LM allocates them per transfer (False)."""
    fused_column_modules: bool = False
    """Tensor parallel: q, k, v form one column-parallel module and so do the MLP's up and gate projections
    (Megatron-LM), so backward all-reduces once per sub-layer without sequence parallelism; the trainer's
    separate wq, wk, wv, w1, w3 modules all-reduce once each (False)."""
    tp_backward_overlap: bool = False
    """Tensor parallel: backward's collectives run beside the block's gradient GEMMs (Megatron-LM's asynchronous
    input-gradient all-reduce / reduce-scatter); the trainer's DTensor modules issue them in line (False)."""
    fused_kernels: bool = False
    """The engine fuses norms, activations, RoPE and float8 casts into few kernels whether or not torch.compile
    runs (Transformer Engine): cost them as a compiled block."""
    fsdp2_copies: bool = True
    """FSDP2 copies each gathered block out of the all-gather buffer and adds every micro-batch's gradients
    into fp32 accumulators on the compute stream; Megatron-LM's contiguous buffers and fused gradient
    accumulation do neither (False)."""


RUNTIME = ArchOptions()
MEGATRON = ArchOptions(attention="materialized", dropout=True, norm_stats=False, sp_saves_sharded=True,
                       selective="attention_core", pipeline_recv_buffers=False, fsdp2_copies=False,
                       fused_column_modules=True, tp_backward_overlap=True)
"""Megatron-LM as Korthikanti et al. 2022 ran it: LayerNorm (statistics not counted), materialised softmax with
dropout, sequence parallelism saving the gathered QKV/MLP inputs sharded, selective = recompute the attention core,
receive buffers allocated per transfer, gradients accumulated in the weight-gradient GEMM (no FSDP2 copies)."""
ENGINES = {
    "loadmaster": RUNTIME,
    "torchtitan": ArchOptions(selective="every_other_matmul"),
    "megatron": MEGATRON,
    # NeMo and Megatron-Bridge run Megatron-core with Transformer Engine's flash attention and no dropout
    "nemo": ArchOptions(selective="attention_core", pipeline_recv_buffers=False, fsdp2_copies=False,
                        sp_saves_sharded=True, fused_column_modules=True, tp_backward_overlap=True,
                        fused_kernels=True),
}
"""Each engine's implementation facts, for replaying its published runs (benchmarks/fidelity.py)."""


def tokens() -> sp.Expr:
    """Tokens of one micro-batch on a rank: context parallelism gives each of its cp ranks 1/cp of every sequence
    (every per-token tensor, activations and logits alike, shrinks with it)."""
    return K.b * K.s / K.c


def fsdp_ranks() -> sp.Expr:
    """Ranks FSDP shards over and reduces gradients across: dp × cp (the cp ranks hold the same parameters and
    each computes gradients on its share of the same sequences, as in TorchTitan)."""
    return K.d * K.c


def kv_bytes() -> sp.Expr:
    """One block's local keys and values on a rank (bf16, after RoPE): the block a context-parallel rank sends."""
    return 2 * BF16 * tokens() * M.g * M.dh / K.t


def cp_buffer_bytes(phase: Literal["forward", "backward"]) -> sp.Expr:
    """Transient buffers of one block's context-parallel attention (torch 2.13 ``_templated_ring_attention``), 0
    without cp. K/V blocks held: all-gather keeps the gathered cp blocks and the concatenated local one; the ring the
    one in use, the one arriving and the one being sent. Forward merges the partial outputs in fp32 (the running
    output and ~3 temporaries of its size); backward keeps fp32 gradients of q and of K/V, the K/V gradients' fp32
    send and receive buffers, and one step's bf16 gradients."""
    on = smin(K.c - 1, 1)
    held = K.cag * (K.c + 1) + (1 - K.cag) * 3
    q = tokens() * M.a * M.dh / K.t
    if phase == "forward":
        return on * (held * kv_bytes() + 4 * FP32 * q)
    return on * (held * kv_bytes() + (FP32 + BF16) * q + (3 * 2 + 1) * kv_bytes())


def seq_share() -> sp.Expr:
    """Share of a hidden-size activation a rank holds: 1/t inside the sequence-parallel region."""
    return 1 - K.sp_ + K.sp_ / K.t


def moe_share() -> sp.Expr:
    """Share of the stage's blocks that are mixture-of-experts blocks (0 for a dense model). Per-block terms below
    are the stage's mean block, so a stage mixing dense and MoE blocks (DeepSeek's first) sums exactly."""
    return K.lm / K.l


def imbalance() -> sp.Expr:
    """Routed tokens on this rank over the mean: the plan's moe_imbalance (else the runtime default) when experts
    are spread over ep > 1 ranks; 1 with every expert local."""
    imb = K.imb + R.imb * (1 - smin(K.imb, 1))
    return 1 + smin(K.e - 1, 1) * (imb - 1)


def routed_tokens() -> sp.Expr:
    """Token copies this rank's experts process per micro-batch of a MoE block: b·s·top-k on average, times the
    imbalance (the all-to-all gives each EP rank the copies routed to its experts)."""
    return tokens() * M.topk * imbalance()


def expert_params_local() -> sp.Expr:
    """Routed-expert weights of one MoE block on this rank (its E / ep experts' gated MLPs)."""
    return (2 + M.gated) * M.h * M.Fe * M.E / K.e


def attention_params_local() -> sp.Expr:
    return (M.h * M.dh * (M.a + 2 * M.g) + M.a * M.dh * M.h) / K.t


def dense_mlp_params_local() -> sp.Expr:
    return (2 + M.gated) * M.h * M.F / K.t


def block_params_local() -> sp.Expr:
    """Weights of one (mean) block held per rank: attention and the MLP sharded over TP (norm vectors are
    replicated); a MoE block's router, shared experts and this EP rank's routed experts instead of the MLP."""
    moe = M.h * M.E + (2 + M.gated) * M.h * M.Fs + expert_params_local()
    mu = moe_share()
    return attention_params_local() + (1 - mu) * dense_mlp_params_local() + mu * moe + 2 * M.h


def block_expert_params_local() -> sp.Expr:
    """The routed-expert part of block_params_local (FSDP-sharded over dp / ep ranks, not dp)."""
    return moe_share() * expert_params_local()


def block_state_params() -> sp.Expr:
    """Parameters of one (mean) block whose fp32 master weight, gradient and AdamW state this rank holds: the
    non-expert weights over ``ds`` ranks (dp, or 1 under zero 0), the routed experts over ``dse`` (dp / ep, or 1):
    with zero >= 1 both come to 1/dp of the block, whatever ep."""
    experts = block_expert_params_local()
    return (block_params_local() - experts) / K.ds + experts / K.dse


def vocab_share() -> sp.Expr:
    """Share of the vocabulary a TP rank holds: 1/t when the embedding, output and loss are sharded over TP
    (vocab_parallel), all of it when they are replicated."""
    return K.vp / K.t + 1 - K.vp


def vocab_params_local() -> sp.Expr:
    """Embedding / output projection weights on this stage, plus the final norm."""
    return K.nV * M.V * M.h * vocab_share() + K.last * M.h


def saved_activation_terms(opts: ArchOptions = RUNTIME) -> dict[str, sp.Expr]:
    """Bytes one eager, non-checkpointed block saves for backward, per micro-batch, by tensor.

    Korthikanti et al. 2022 (arXiv 2205.05198) §4 counts the same tensors for a GPT block; with
    ``ArchOptions(attention="materialized", dropout=True, norm_stats=False, sp_saves_sharded=True)``, a plain
    GeLU MLP of 4h and a = g heads of h/a, the sum is their Table 2 (see tests/test_korthikanti.py).
    """
    T, q, t = tokens(), seq_share(), K.t
    gathered = q if opts.sp_saves_sharded else 1
    terms = {
        "norm_inputs": 2 * BF16 * T * M.h * q,               # RMSNorm inputs (attention_norm, ffn_norm)
        "proj_inputs": 2 * BF16 * T * M.h * gathered,        # norm outputs = inputs of wq/wk/wv and w1(/w3)
        "qkv": BF16 * T * (M.a + 2 * M.g) * M.dh / t,        # q, k (after RoPE), v saved by attention
        "attn_out": BF16 * T * M.a * M.dh / t,               # attention output = input of wo
        # act input + w2 input, and for a gated MLP what its SwiGLU saves besides (SiLU out and w3 out with
        # PyTorch's kernels, w3 out with liger's: R.gate_saved, costmodel.kernels); MoE blocks save their own
        "mlp_hidden": (1 - moe_share()) * (2 + R.gate_saved * M.gated) * BF16 * T * M.F / t,
        "moe": moe_share() * moe_saved_bytes(compiled=False),
    }
    if opts.norm_stats:
        terms["norm_stats"] = 2 * FP32 * T * q               # per-token rstd of both norms
    if opts.attention == "flash":
        terms["softmax_lse"] = FP32 * T * M.a / t
    else:
        # softmax output (2 B), and with dropout its mask (1 B) and dropped output (2 B), per score
        terms["softmax"] = (5 if opts.dropout else 2) * M.a * K.s * T / t
    if opts.dropout:
        terms["dropout_masks"] = 2 * T * M.h * q              # 1-byte masks after attention and MLP
    return terms


def moe_saved_bytes(compiled: bool) -> sp.Expr:
    """What a MoE block saves instead of the dense MLP's hidden activations (launcher.runtime.moe): the fp32 router
    scores (softmax/sigmoid output) and the top-k indices and weights; the grouped GEMMs' input (the routed copies
    this rank received) and hidden activations; the routed outputs back at their tokens (for the weights' gradient);
    the shared experts' hidden activations. Compiled, the activation's inputs are saved and SiLU recomputed, as for
    the dense MLP. Indices and top-k weights: R.moe_idx bytes per routed copy."""
    T, rows = tokens(), routed_tokens() + R.moe_pad * M.E / K.e   # grouped GEMM rows: padded per local expert
    hidden = (1 + M.gated) if compiled else (2 + 2 * M.gated)
    return (FP32 * T * M.E + R.moe_idx * T * M.topk + BF16 * rows * M.h + hidden * BF16 * (rows * M.Fe + T * M.Fs)
            + BF16 * T * M.topk * M.h)


def activation_bytes_per_block(opts: ArchOptions = RUNTIME) -> sp.Expr:
    """Eager block, no checkpointing (Korthikanti's sbh(34 + 5as/h) when configured like the paper)."""
    return sp.Add(*saved_activation_terms(opts).values())


def compiled_activation_bytes_per_block() -> sp.Expr:
    """A torch.compile'd block: the partitioner recomputes norms, RoPE and the MLP activation in backward and
    saves their inputs instead; it cannot recompute across a collective, so the sequence-parallel all-gathers
    stay saved."""
    T, q, t = tokens(), seq_share(), K.t
    return (2 * BF16 * T * M.h * q + 2 * FP32 * T * q + 2 * BF16 * T * M.h * K.sp_
            + BF16 * T * (M.a + 2 * M.g) * M.dh / t + BF16 * T * M.a * M.dh / t + FP32 * T * M.a / t
            + (1 - moe_share()) * (1 + M.gated) * BF16 * T * M.F / t + moe_share() * moe_saved_bytes(compiled=True))


def full_checkpoint_bytes_per_block() -> sp.Expr:
    """Full recomputation keeps only the block input (Korthikanti's 2sbh)."""
    return BF16 * tokens() * M.h * seq_share()


def selective_checkpoint_bytes_per_block(opts: ArchOptions = RUNTIME) -> sp.Expr:
    """Selective recomputation keeps the block input and every matmul and attention output.

    The row-parallel outputs (wo, w2) are saved before their reduction, so at full hidden size. Korthikanti's
    variant keeps everything but the attention core (their sbh·34/t under sequence parallelism)."""
    if opts.selective == "attention_core":
        terms = saved_activation_terms(opts)
        return sp.Add(*(v for k, v in terms.items() if k not in ("softmax", "softmax_lse")))
    T, t, mu = tokens(), K.t, moe_share()
    # a MoE block's matmuls: the router logits, the grouped GEMMs (gate/up and down) and the shared experts'
    rows = routed_tokens() + R.moe_pad * M.E / K.e
    moe_mm = M.E + (1 + M.gated) * (rows * M.Fe / T + M.Fs) + rows * M.h / T
    matmul_outputs = BF16 * T * (M.a + 2 * M.g) * M.dh / t + (1 - mu) * (1 + M.gated) * BF16 * T * M.F / t \
        + 2 * BF16 * T * M.h + mu * BF16 * T * moe_mm
    share = sp.Rational(1, 2) if opts.selective == "every_other_matmul" else 1
    return (full_checkpoint_bytes_per_block() + BF16 * T * M.a * M.dh / t + FP32 * T * M.a / t
            + share * matmul_outputs)


def stage_activation_bytes(opts: ArchOptions = RUNTIME) -> dict[str, sp.Expr]:
    """Saved activations of one micro-batch on the GPU, and those held on the host, for the whole stage."""
    plain = (1 - K.k) * activation_bytes_per_block(opts) + K.k * compiled_activation_bytes_per_block()
    ckpt = (1 - K.sel) * full_checkpoint_bytes_per_block() + K.sel * selective_checkpoint_bytes_per_block(opts)
    T, q = tokens(), seq_share()
    head = K.last * (BF16 * T * M.h * q + FP32 * T * q + BF16 * T * M.h)  # final norm input/stats, its output
    return {
        "block_plain": plain,
        "gpu": K.r * ckpt + (K.l - K.r - K.oa) * plain + head,
        "host": K.oa * plain,
    }


def logits_bytes(phase: Literal["forward", "backward"]) -> sp.Expr:
    """The cross-entropy's working set on the last stage, by the plan's loss kernel (costmodel.kernels): per logit
    (eager: bf16 logits + fp32 copy + log-softmax output in forward, log-softmax output + its gradient + the
    input gradient in backward); the fused linear cross-entropy (``K.fl``) instead holds one chunk's logits, the
    hidden states' gradient and the output projection's gradient (fp32 accumulator in forward)."""
    per_logit = R.loss_fwd if phase == "forward" else R.loss_bwd
    vocab = R.flce_voc_f if phase == "forward" else R.flce_voc_b
    T, vs = tokens(), vocab_share()
    fused = K.fl * (R.flce_chunk * T * M.V * vs / K.nch + R.flce_tok * T * M.h + vocab * M.V * M.h * vs)
    return K.last * (per_logit * T * M.V * vs + fused)


_STATIC = {k: k for k in ("master_params", "optimizer_state", "pipeline_buffers")}
_IN_STEP = {k: k for k in ("grad_accumulators", "activations", "retained_logits")}
PHASE_TERMS = {
    # forward: the blocks' saved activations, the loss's forward working set, a float8 block's weight copies
    "peak_forward": {**_STATIC, **_IN_STEP, "unsharded_params": "unsharded_params", "logits": "logits_forward",
                     "fp8_weight_copies": "fp8_weight_copies", "cp_buffers": "cp_buffers_forward"},
    # the loss's backward (last stage): the output projection's gradient is not made yet, and under zero 3 the
    # root's parameters are re-gathered only when backward reaches it (one block, the last, is still unsharded)
    "peak_loss": {**_STATIC, **_IN_STEP, "unsharded_params": "unsharded_params_at_loss",
                  "logits": "logits_backward"},
    # the blocks' backward: the root's gradients live, one block's gradient buffers and a recomputed block
    "peak_backward": {**_STATIC, **_IN_STEP, "unsharded_params": "unsharded_params", "root_grads": "root_grads",
                      "grad_buffers": "grad_buffers", "recompute_buffer": "recompute_buffer",
                      "cp_buffers": "cp_buffers_backward"},
    "peak_optimizer": {**_STATIC, "gradients": "gradients", "optimizer_temporaries": "optimizer_temporaries"},
}
"""What is alive at each phase's peak of a step: breakdown name -> memory term (the one list predict reads)."""
IN_STEP_PHASES = ("peak_forward", "peak_loss", "peak_backward")
"""The phases whose activations grow with the micro-batches in flight (the optimizer's does not)."""


def phase_peak(terms: dict, phase: str):
    """A phase's peak: the sum of the terms alive then (sympy expressions or numbers)."""
    return sum(terms[key] for key in PHASE_TERMS[phase].values())


def memory_terms(opts: ArchOptions = RUNTIME) -> dict[str, sp.Expr]:
    """Every memory term of a stage (bytes per GPU) and the peak over the phases of a step."""
    Pb, Pv, Sb = block_params_local(), vocab_params_local(), block_state_params()
    S_gpu = (K.l - K.os_) * Sb + Pv / K.ds               # this rank's share of the fp32 state kept on the GPU
    P_all = K.l * Pb + Pv
    acts = stage_activation_bytes(opts)
    kept_logits = K.last * R.loss_keep * tokens() * M.V * vocab_share()  # what one micro-batch's loss keeps for
    # its backward (eager: the fp32 log-softmax output)
    reshard = K.z3 * (1 - K.keep)                         # bf16 parameters re-sharded after each forward
    t = {
        "master_params": FP32 * S_gpu,
        "optimizer_state": 2 * FP32 * S_gpu,              # AdamW exp_avg + exp_avg_sq
        "gradients": FP32 * S_gpu,                        # sharded fp32 grads, end of backward to step
        "optimizer_temporaries": K.fe * R.opt_fe_temp * S_gpu,   # foreach AdamW's buffers in the step
        # zero 3 keeps the block being computed and the prefetched one; otherwise all blocks between forward
        # and backward (zero 2/0) or across micro-batches (pipeline stages skip the reshard)
        "unsharded_params": BF16 * Pb * (2 * reshard + (1 - reshard) * K.l) + BF16 * Pv,
        "unsharded_params_at_loss": BF16 * Pb * (reshard + (1 - reshard) * K.l) + (1 - reshard) * BF16 * Pv,
        # grads of earlier micro-batches: unsharded fp32 while sync is off, else the sharded fp32 grads
        "grad_accumulators": FP32 * (P_all * K.nosync + S_gpu * (1 - K.nosync)) * K.acc,
        "activations": K.m * acts["gpu"],
        "logits_forward": logits_bytes("forward"),
        "logits_backward": logits_bytes("backward"),
        # what the loss of each other micro-batch in flight on the last stage keeps until its backward: all of
        # them under GPipe, none under 1F1B or without a pipeline (m = 1)
        "retained_logits": (K.m - 1) * kept_logits,
        # one block's param grads in bf16 + the fp32 reduce-scatter input while it is in flight
        "grad_buffers": (BF16 + FP32) * Pb,
        # the root's (embedding, output) bf16 grads: made at the start of backward, reduced at its end
        "root_grads": BF16 * Pv,
        # a fully checkpointed last block is recomputed whole before its backward
        "recompute_buffer": pos(K.r - K.l + 1) * (1 - K.sel) * acts["block_plain"],
        # float8 casts each converted Linear's weight per use; one block's fp8 copies (1 B) live at a time
        # (routed and shared experts stay bf16: launcher.runtime.parallel.fp8 converts attention and dense MLPs)
        "fp8_weight_copies": smin(K.f, 1) * (attention_params_local() + (1 - moe_share()) * dense_mlp_params_local()),
        # torch.distributed.pipelining keeps a receive buffer per micro-batch for the stage input (all but the
        # first stage) and for the output gradient (all but the last), allocated once and kept across steps
        "pipeline_buffers": int(opts.pipeline_recv_buffers) * (2 - K.first - K.last) * K.M * BF16 * tokens()
                            * M.h * seq_share(),
        # one block's context-parallel exchange and merge buffers while its attention runs
        "cp_buffers_forward": cp_buffer_bytes("forward"),
        "cp_buffers_backward": cp_buffer_bytes("backward"),
        "host_state": 16 * K.os_ * Sb,                     # fp32 params, grads, AdamW state on the CPU
        "host_activations": K.m * acts["host"],
    }
    for phase in PHASE_TERMS:
        t[phase] = phase_peak(t, phase)
    t["peak"] = smax(smax(smax(t["peak_forward"], t["peak_loss"]), t["peak_backward"]), t["peak_optimizer"])
    t["host_bytes"] = t["host_state"] + t["host_activations"]
    # the parts the tuner needs to find, per candidate, how many micro-batches in flight still fit
    t["act_per_microbatch"] = acts["gpu"] + kept_logits
    t["host_act_per_microbatch"] = acts["host"]
    t["accumulator_bytes"] = FP32 * (P_all * K.nosync + S_gpu * (1 - K.nosync))
    return t
