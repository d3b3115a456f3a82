"""The sympy symbols the cost formulas are written in: model shape, plan knobs, hardware constants.

Every symbol is also an argument of the lambdified evaluator, so a caller passes numpy arrays (one entry per
candidate) or scalars for any of them. Flags are 0/1 numbers so one expression covers every choice.
"""
from __future__ import annotations

import sympy as sp


def _syms(names: str, **assumptions) -> tuple[sp.Symbol, ...]:
    return sp.symbols(names, **assumptions)


class M:
    """Model shape (per model, scalars)."""
    h, F, a, g, dh, V = _syms("h F a g dh V", positive=True)
    gated = sp.Symbol("gated", nonnegative=True)              # 1: SwiGLU (3 matrices), 0: plain GeLU MLP
    # float8 eligibility of each Linear under torchao's size filter (1 = converted)
    e_q, e_kv, e_o, e_up, e_down = _syms("e_q e_kv e_o e_up e_down", nonnegative=True)
    rf = sp.Symbol("rf", nonnegative=True)                    # share of the blocks that apply RoPE (no_rope_layers)
    row = sp.Symbol("row", nonnegative=True)                  # 1: float8 rowwise recipe, 0: tensorwise (with the
                                                              # eligibility above, it comes from the plan's recipe)
    # mixture of experts (0 for a dense model): routed experts, experts per token, one expert's MLP width, the
    # shared experts' MLP width together
    E, topk, Fe, Fs = _syms("E topk Fe Fs", nonnegative=True)


class K:
    """Plan knobs of one pipeline stage (arrays over candidates)."""
    b, s, t, d = _syms("b s t d", positive=True)             # micro-batch, sequence, tp, dp
    c = sp.Symbol("c", positive=True)                         # context-parallel degree (cp)
    cag = sp.Symbol("cag", nonnegative=True)                  # cp brings K/V by all-gather (1) or a ring of sends (0)
    sp_ = sp.Symbol("sp", nonnegative=True)                   # sequence parallel on (tp > 1)
    ds = sp.Symbol("ds", positive=True)                       # divisor of fp32 states: dp·cp if zero >= 1 else 1
    z3 = sp.Symbol("z3", nonnegative=True)                    # reshard bf16 params after forward (zero 3)
    z0 = sp.Symbol("z0", nonnegative=True)                    # replicated (zero 0): all-reduce, not reduce-scatter
    keep = sp.Symbol("keep", nonnegative=True)                # params stay unsharded across micro-batches (pp > 1)
    nosync = sp.Symbol("nosync", nonnegative=True)            # grads accumulate unsharded in fp32 until the last
                                                              # micro-batch (pp > 1, or grad_reduce: last, M > 1)
    acc = sp.Symbol("acc", nonnegative=True)                  # earlier micro-batches' grads exist at the peak
    l = sp.Symbol("l", positive=True)                         # blocks in the stage
    r = sp.Symbol("r", nonnegative=True)                      # checkpointed blocks
    sel = sp.Symbol("sel", nonnegative=True)                  # 1: selective checkpointing, 0: full
    oa = sp.Symbol("oa", nonnegative=True)                    # blocks with activations offloaded to CPU
    os_ = sp.Symbol("os", nonnegative=True)                   # blocks with params/grads/optimizer on CPU
    f = sp.Symbol("f", nonnegative=True)                      # blocks in float8
    k = sp.Symbol("k", nonnegative=True)                      # torch.compile on
    m = sp.Symbol("m", positive=True)                         # micro-batches in flight at the peak
    M = sp.Symbol("M", positive=True)                         # micro-batches per step
    first, last = _syms("first last", nonnegative=True)       # stage holds the embedding / the loss
    nV = sp.Symbol("nV", nonnegative=True)                    # vocab x hidden matrices held (0, 1 or 2)
    pp = sp.Symbol("pp", positive=True)                       # pipeline degree (1: no sends)
    vp = sp.Symbol("vp", nonnegative=True)                    # embedding, output and loss sharded over TP (1)
    fe = sp.Symbol("fe", nonnegative=True)                    # foreach AdamW (1) instead of fused (0)
    lm = sp.Symbol("lm", nonnegative=True)                    # MoE blocks among the stage's l blocks
    e = sp.Symbol("e", positive=True)                         # expert-parallel degree (folded from d)
    dse = sp.Symbol("dse", positive=True)                     # divisor of expert fp32 states: d/e if zero >= 1 else 1
    imb = sp.Symbol("imb", nonnegative=True)                  # plan's moe_imbalance (0: the runtime default)
    fl = sp.Symbol("fl", nonnegative=True)                    # fused linear cross-entropy (loss_impl liger_fused)
    nch = sp.Symbol("nch", positive=True)                     # token chunks of the loss (1 unless fused)


class H:
    """Hardware constants: rates in FLOP/s and bytes/s, times in s (arrays where links differ per candidate)."""
    peak, peak8, hbm, host, cpu_adam = _syms("peak peak8 hbm host cpu_adam", positive=True)
    ge_max, ge_half, ge_exp = _syms("ge_max ge_half ge_exp", positive=True)
    f8_max, f8_half, f8_exp = _syms("f8_max f8_half f8_exp", positive=True)
    at_max, at_half, at_exp = _syms("at_max at_half at_exp", positive=True)
    # effective bus bandwidth (B/s) of each collective at its own message size and group, from the profile's
    # measured curves (costmodel.comm): TP all-gather (all-reduce without sequence parallelism) and
    # reduce-scatter; FSDP's per-block all-gather and gradient reduce-scatter (all-reduce under zero 0); the
    # root's; pipeline sends; and the time of a tiny all-reduce over the data-parallel group (gradient norm)
    bw_tp, bw_tp_rs, bw_ag, bw_rs, bw_rag, bw_rrs, bw_pp = _syms("bw_tp bw_tp_rs bw_ag bw_rs bw_rag bw_rrs bw_pp",
                                                                 positive=True)
    # context parallelism: the all-gather of a block's K/V over the cp ranks (stride tp) and the send of a K/V
    # block (or of its gradient) to the next cp rank
    bw_cp, bw_cp_p2p = _syms("bw_cp bw_cp_p2p", positive=True)
    t_tiny = sp.Symbol("t_tiny", nonnegative=True)
    # expert parallelism: all-to-all over the EP group (dispatch and combine) and the experts' FSDP all-gather and
    # reduce-scatter over the dp / ep ranks holding the same experts; the token-count exchange's latency
    bw_a2a, bw_eag, bw_ers = _syms("bw_a2a bw_eag bw_ers", positive=True)
    t_a2a_tiny = sp.Symbol("t_a2a_tiny", nonnegative=True)
    gg_eff = sp.Symbol("gg_eff", positive=True)               # grouped GEMM / dense GEMM throughput (per expert size)
    slow_comm, comm_eff, slow_h2d = _syms("slow_comm comm_eff slow_h2d", nonnegative=True)
    launch = sp.Symbol("launch", nonnegative=True)            # host seconds per eager kernel
    hook = sp.Symbol("hook", nonnegative=True)                # host seconds of FSDP2 hooks per block per pass
    ew_eff = sp.Symbol("ew_eff", positive=True)               # elementwise kernels' share of copy bandwidth
    row_slow = sp.Symbol("row_slow", positive=True)           # rowwise / tensorwise float8 GEMM time (measured)


class R:
    """Runtime constants of loadmaster's trainer (costmodel.constants.RUNTIME; profiles/runtime/loadmaster.yaml)."""
    kern_eager, kern_comp, kern_tp = _syms("kern_eager kern_comp kern_tp", nonnegative=True)
    normres_eager, normres_comp = _syms("normres_eager normres_comp", nonnegative=True)
    rope_eager, rope_comp = _syms("rope_eager rope_comp", nonnegative=True)
    act_eager, act_comp, gate_eager, gate_comp = _syms("act_eager act_comp gate_eager gate_comp", nonnegative=True)
    loss_fwd, loss_bwd, loss_traffic = _syms("loss_fwd loss_bwd loss_traffic", nonnegative=True)
    cast_eager, cast_comp = _syms("cast_eager cast_comp", nonnegative=True)
    tp_redo = sp.Symbol("tp_redo", nonnegative=True)
    opt_bytes, opt_kern_block, opt_kern_fixed = _syms("opt_bytes opt_kern_block opt_kern_fixed", nonnegative=True)
    opt_fe_bytes, opt_fe_temp = _syms("opt_fe_bytes opt_fe_temp", nonnegative=True)
    probe = sp.Symbol("probe_bytes", nonnegative=True)
    router_eager, router_comp = _syms("router_eager router_comp", nonnegative=True)
    permute_eager, permute_comp = _syms("permute_eager permute_comp", nonnegative=True)
    kern_moe_eager, kern_moe_comp, moe_sync = _syms("kern_moe_eager kern_moe_comp moe_sync", nonnegative=True)
    imb = sp.Symbol("imb_default", positive=True)
    moe_idx, moe_pad = _syms("moe_idx moe_pad", nonnegative=True)
    # inputs that depend on the plan's kernel choices (costmodel.kernels.KERNEL_CONSTANTS says which constant feeds
    # each): RoPE, norm and SwiGLU kernels per eager block, the SwiGLU's saved tensors, the loss's kept logits and
    # the fused linear cross-entropy's chunk buffer, input and weight gradients and accumulation traffic
    kern_rope, kern_norm, kern_act, gate_saved = _syms("kern_rope kern_norm kern_act gate_saved", nonnegative=True)
    loss_keep = sp.Symbol("loss_keep", nonnegative=True)
    flce_chunk, flce_tok, flce_voc_f, flce_voc_b, flce_acc = _syms(
        "flce_chunk flce_tok flce_voc_f flce_voc_b flce_acc", nonnegative=True)
    cp_fq, cp_fkv, cp_bq, cp_bkv = _syms("cp_fq cp_fkv cp_bq cp_bkv", nonnegative=True)


RUNTIME_SYMBOLS = {  # constant name (costmodel.constants.RUNTIME) -> its symbol in the formulas, for the constants
    # that do not depend on a kernel choice (those that do: costmodel.kernels.KERNEL_CONSTANTS)
    "kernels_per_block_eager": R.kern_eager, "kernels_per_block_compiled": R.kern_comp,
    "kernels_per_block_tp_extra": R.kern_tp,
    "norm_residual_bytes_compiled": R.normres_comp,
    "rope_bytes_compiled": R.rope_comp, "mlp_act_bytes_eager": R.act_eager, "mlp_act_bytes_compiled": R.act_comp,
    "mlp_gate_bytes_compiled": R.gate_comp,
    "flce_chunk_bytes_per_logit": R.flce_chunk, "flce_token_bytes": R.flce_tok,
    "flce_vocab_forward_bytes": R.flce_voc_f, "flce_vocab_backward_bytes": R.flce_voc_b,
    "flce_accumulate_bytes": R.flce_acc, "fp8_cast_bytes_eager": R.cast_eager,
    "fp8_cast_bytes_compiled": R.cast_comp, "tp_selective_redo_share": R.tp_redo,
    "optimizer_bytes_per_param": R.opt_bytes, "optimizer_kernels_per_block": R.opt_kern_block,
    "optimizer_foreach_bytes_per_param": R.opt_fe_bytes, "optimizer_foreach_temp_bytes_per_param": R.opt_fe_temp,
    "optimizer_kernels_fixed": R.opt_kern_fixed, "fp8_probe_bytes_per_param": R.probe,
    "moe_router_bytes_per_score_eager": R.router_eager, "moe_router_bytes_per_score_compiled": R.router_comp,
    "moe_permute_bytes_eager": R.permute_eager, "moe_permute_bytes_compiled": R.permute_comp,
    "moe_kernels_per_block_eager": R.kern_moe_eager, "moe_kernels_per_block_compiled": R.kern_moe_comp,
    "moe_sync_exposed_kernels": R.moe_sync, "expert_load_imbalance": R.imb,
    "moe_index_bytes_per_copy": R.moe_idx, "moe_pad_rows_per_expert": R.moe_pad,
    "cp_forward_bytes_per_q_element": R.cp_fq, "cp_forward_bytes_per_kv_element": R.cp_fkv,
    "cp_backward_bytes_per_q_element": R.cp_bq, "cp_backward_bytes_per_kv_element": R.cp_bkv,
}


smax = sp.Function("smax")  # elementwise maximum (numpy.maximum); a Function keeps sympy from simplifying it
smin = sp.Function("smin")


def pos(x: sp.Expr) -> sp.Expr:
    """max(x, 0)."""
    return smax(x, 0)
