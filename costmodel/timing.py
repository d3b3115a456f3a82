"""Time of one pipeline stage per micro-batch, and its once-per-step extras, as sympy expressions (seconds).

Compute is GEMM FLOPs over the profile's peak times its size-dependent efficiency, attention likewise,
and memory-bound ops as bytes over HBM bandwidth; a block cannot run faster than the host launches its
kernels. Communication is an alpha-beta ring model per link tier; what FSDP2 overlaps with compute is
counted only where it is longer than that compute (exposed), with the compute slowed while it overlaps.
"""
from __future__ import annotations

import sympy as sp

from .memory import BF16, FP32, RUNTIME, ArchOptions, block_expert_params_local, block_params_local, block_state_params, \
    expert_params_local, fsdp_ranks, imbalance, kv_bytes, moe_share, routed_tokens, seq_share, stage_activation_bytes, \
    tokens, vocab_params_local, vocab_share
from .symbols import H, K, M, R, pos, smax, smin


def efficiency(x: sp.Expr, mx: sp.Symbol, half: sp.Symbol, ex: sp.Symbol) -> sp.Expr:
    """Saturating efficiency curve of a profile (costmodel.hardware.Curve)."""
    return mx / (1 + (half / x) ** ex)


def gemm_s(flops: sp.Expr, fp8: sp.Expr = 0) -> sp.Expr:
    """One GEMM: bf16 (fp8 = 0) or float8 (fp8 = 1) FLOPs over peak × efficiency at that size; rowwise scaling
    runs another, slower kernel (the profile's measured ratio)."""
    bf16 = flops / (H.peak * efficiency(flops, H.ge_max, H.ge_half, H.ge_exp))
    f8 = flops / (H.peak8 * efficiency(flops, H.f8_max, H.f8_half, H.f8_exp)) * (1 + M.row * (H.row_slow - 1))
    return (1 - fp8) * bf16 + fp8 * f8


def block_linears() -> list[tuple[str, sp.Expr, sp.Expr, sp.Symbol]]:
    """(name, K = input features, N = output features, float8-eligible) of each Linear, per TP rank."""
    t = K.t
    out = [("wq", M.h, M.a * M.dh / t, M.e_q), ("wk", M.h, M.g * M.dh / t, M.e_kv),
           ("wv", M.h, M.g * M.dh / t, M.e_kv), ("wo", M.a * M.dh / t, M.h, M.e_o),
           ("w1", M.h, M.F / t, M.e_up), ("w2", M.F / t, M.h, M.e_down)]
    out.append(("w3", M.h, M.F / t, M.e_up * M.gated))
    return out


def _mlp_weight(name: str) -> sp.Expr:
    """How much of a block Linear the mean block has: w3 only when gated; the MLP's only in dense blocks."""
    gate = M.gated if name == "w3" else 1
    return gate * (1 - moe_share()) if name in ("w1", "w2", "w3") else gate


def moe_gemm_s() -> sp.Expr:
    """Forward GEMMs of a MoE block's FFN, bf16: the router, the shared experts, and the routed experts as grouped
    GEMMs — at the dense curve's efficiency for one expert's GEMM (the tokens one local expert gets) times the
    profile's grouped-GEMM ratio. Routed copies grow per expert with ep (each EP rank gathers its experts' tokens
    from ep ranks), which is where expert parallelism pays besides memory."""
    T, Ti = tokens(), routed_tokens()

    def dense(flops):   # a dense model has no router or shared experts: 0 FLOPs, 0 s
        return flops / (H.peak * efficiency(smax(flops, 1), H.ge_max, H.ge_half, H.ge_exp))
    per_matrix = 2 * Ti * M.h * M.Fe
    per_expert = smax(per_matrix * K.e / smax(M.E, 1), 1)
    grouped = (2 + M.gated) * per_matrix / (H.peak * efficiency(per_expert, H.ge_max, H.ge_half, H.ge_exp) * H.gg_eff)
    return dense(2 * T * M.h * M.E) + (2 + M.gated) * dense(2 * T * M.h * M.Fs) + grouped


def block_gemm_s(fp8: sp.Expr) -> sp.Expr:
    """Forward GEMMs of one (mean) block (backward is twice this: input and weight gradients); a MoE block's FFN
    stays bf16 in a float8 block (launcher.runtime.parallel.fp8 converts attention and dense MLPs only)."""
    T = tokens()
    total = moe_share() * moe_gemm_s()
    for name, Kd, Nd, elig in block_linears():
        total += _mlp_weight(name) * gemm_s(2 * T * Kd * Nd, fp8 * elig)
    return total


def fp8_cast_s() -> sp.Expr:
    """Dynamic scaling of one float8 block per micro-batch, forward + backward. torchao casts every GEMM operand
    afresh: the input and the weight in forward, the output gradient and the weight for the input gradient, the
    output gradient and the input again (column-major) for the weight gradient — each tensor twice. Compiled,
    inductor fuses the amax into the kernel that produces the bf16 tensor (the step anatomy's
    ``triton_..._fused_rms_norm__scaled_mm__..._amax_clamp`` kernels) and the cast reads it once more and writes
    float8 (r2 w1 = 3 B per cast). Eager runs abs (r2 w2),
    max (r2), an fp32 upcast (r2 w4), the scale multiply (r4 w4), clamp (r4 w4) and the cast (r4 w1) as separate
    kernels, 33 B, plus a transposing copy (r1 w1) of one of the two casts for the column-major operand: 68 B per
    element over the two casts."""
    T = tokens()
    total = 0
    for name, Kd, Nd, elig in block_linears():
        total += _mlp_weight(name) * elig * (T * Kd + Kd * Nd + T * Nd)
    return (R.cast_comp * K.k + R.cast_eager * (1 - K.k)) * total / (H.hbm * H.ew_eff)


def fp8_probe_s() -> sp.Expr:
    """One loss-sensitivity probe of a stage's float8 blocks (launcher/runtime/parallel/fp8_schedule.py): eager
    passes over each converted weight's local fp32 shard and its gradient (R.probe bytes per element) and their
    launches (about 12 kernels per Linear). The trainer runs it every costmodel.fp8.probe_every steps, which keeps it
    under 1 % of the step, so it is reported beside the step time, not in it."""
    elements, linears = 0, 0
    for name, Kd, Nd, elig in block_linears():
        weight = M.gated if name == "w3" else 1
        elements += weight * elig * Kd * Nd
        linears += weight * elig
    return K.l * (R.probe * elements / K.ds / (H.hbm * H.ew_eff) + 12 * linears * H.launch)


def attention_flops_fwd() -> sp.Expr:
    """Causal attention forward per rank: QK^T and PV, 4·b·s²·a·dh halved by the mask. Under context parallelism a
    rank's queries (its tokens()) attend to the whole sequence and causal load balancing (chunks i and 2·cp-1-i)
    gives every cp rank the same 1/cp of the work."""
    return 2 * tokens() * K.s * M.a * M.dh / K.t


def attention_s(opts: ArchOptions = RUNTIME) -> tuple[sp.Expr, sp.Expr]:
    """(forward, backward) seconds of the attention core.

    Flash: one fused kernel, backward 2.5× the forward FLOPs (it recomputes the scores); under context parallelism
    cp kernels of 1/cp of the rank's work each (one per ring step), so the efficiency curve is read at that size.
    Materialized (Megatron 2022): two batched GEMMs over the full s×s scores (no causal saving) each way, plus the
    scale/mask/softmax (4 B per score) and dropout (5 B) passes over HBM; backward twice that."""
    if opts.attention == "flash":
        total_flops = 3.5 * attention_flops_fwd()
        total = total_flops / (H.peak * efficiency(total_flops / K.c, H.at_max, H.at_half, H.at_exp))
        return total / 3.5, total * 2.5 / 3.5
    per_bmm = 2 * tokens() * K.s * M.a * M.dh / K.t
    scores = tokens() * M.a * K.s / K.t
    ew = (4 + 5 * int(opts.dropout)) * scores / (H.hbm * H.ew_eff)
    fwd = 2 * gemm_s(per_bmm) + ew
    return fwd, 2 * fwd


def moe_elementwise_bytes(compiled: bool) -> sp.Expr:
    """HBM bytes of a MoE block's memory-bound forward ops in place of the MLP activation: the activation over
    the routed copies and the shared experts, the router's score ops (per token and expert) and the token
    permutation (dispatch gather, score multiply, combine; per routed copy element)."""
    T = tokens()
    act, gate, router, permute = (R.act_comp, R.gate_comp, R.router_comp, R.permute_comp) if compiled else \
        (R.act_eager, R.gate_eager, R.router_eager, R.permute_eager)
    return (act + gate * M.gated) * (routed_tokens() * M.Fe + T * M.Fs) + router * T * M.E \
        + permute * T * M.topk * M.h


def cp_attention_s(opts: ArchOptions = RUNTIME) -> dict[str, sp.Expr]:
    """Context parallelism's additions to one block's attention, as the trainer runs it (PyTorch's ring attention,
    torch 2.13): ``merge_fwd``/``merge_bwd`` the memory-bound merging of the ring steps' partial results (fp32
    outputs in forward over cp - 1 steps; fp32 q and K/V gradients in backward over cp steps; bytes per element are
    runtime constants), ``comm_fwd``/``comm_bwd`` the exchange attention does not hide. Each ring step computes 1/cp
    of the rank's attention; a transfer overlaps the step after the one that issues it and is exposed only where
    longer, slowing compute while it runs (as FSDP's). Forward: all-gather (cag = 1) sends a block's K/V once, issued
    before the first step; the ring sends it cp - 1 times, one per step. Backward gathers (or rings) K/V again and
    returns the K/V gradients (fp32: twice the bf16 bytes) by a ring of cp sends, the last one waited on at the end."""
    on = smin(K.c - 1, 1)
    att_f, att_b = attention_s(opts)
    step_f, step_b = att_f / K.c, att_b / K.c
    kv, q_el, kv_el = kv_bytes(), tokens() * M.a * M.dh / K.t, 2 * tokens() * M.g * M.dh / K.t
    ew = H.hbm * H.ew_eff
    gather = coll_s(K.c * kv, K.c, H.bw_cp)              # nccl-tests size: the gathered output, cp blocks
    send, dsend = kv / H.bw_cp_p2p, 2 * kv / H.bw_cp_p2p

    def hidden(comm: sp.Expr, comp: sp.Expr) -> sp.Expr:
        return pos(comm - comp) + H.slow_comm * smin(comm, comp)
    ring_f = (K.c - 1) * hidden(send, step_f)
    ring_b = (K.c - 1) * hidden(send + dsend, step_b) + dsend
    gathered_b = hidden(gather, step_b) + (K.c - 1) * hidden(dsend, step_b) + dsend
    return {
        "merge_fwd": on * (K.c - 1) * (R.cp_fq * q_el + R.cp_fkv * kv_el) / ew,
        "merge_bwd": on * K.c * (R.cp_bq * q_el + R.cp_bkv * kv_el) / ew,
        "comm_fwd": on * (K.cag * hidden(gather, step_f) + (1 - K.cag) * ring_f),
        "comm_bwd": on * (K.cag * gathered_b + (1 - K.cag) * ring_b),
    }


def elementwise_bytes_fwd(opts: ArchOptions = RUNTIME) -> sp.Expr:
    """HBM bytes of one block's memory-bound forward ops (norms, residual adds, RoPE, the MLP activation), eager
    or compiled; bytes per element are runtime constants (profiles/runtime/loadmaster.yaml), those of eager blocks
    by the plan's kernel choices (costmodel.kernels)."""
    T, q, mu = tokens(), seq_share(), moe_share()
    width = (1 - mu) * T * M.F / K.t
    qk = M.rf * T * (M.a + M.g) * M.dh / K.t             # q and k elements of the blocks that apply RoPE
    eager = R.normres_eager * T * M.h * q + R.rope_eager * qk \
        + (R.act_eager + R.gate_eager * M.gated) * width + mu * moe_elementwise_bytes(compiled=False)
    fused = R.normres_comp * T * M.h * q + R.rope_comp * qk \
        + (R.act_comp + R.gate_comp * M.gated) * width + mu * moe_elementwise_bytes(compiled=True)
    dropout = 2 * 5 * T * M.h * q * int(opts.dropout)   # mask + scale after attention and MLP
    return (1 - K.k) * eager + K.k * fused + dropout


def kernels_per_block_fwd() -> sp.Expr:
    """Kernels one (mean) block launches in forward (eager: by the kernel choices; compiled; TP adds its
    collectives, a MoE block its router, permutation and experts)."""
    moe = (1 - K.k) * R.kern_moe_eager + K.k * R.kern_moe_comp
    eager = R.kern_eager + R.kern_rope * M.rf + R.kern_norm + R.kern_act
    return (1 - K.k) * eager + K.k * R.kern_comp + R.kern_tp * smin(K.t - 1, 1) + moe_share() * moe


def coll_s(nbytes: sp.Expr, n: sp.Expr, bw: sp.Symbol, factor: sp.Expr = 1) -> sp.Expr:
    """A collective over n ranks in nccl-tests' terms: factor·(n-1)/n·size over the bus bandwidth ``bw`` at that
    size (costmodel.comm: factor 2 for all-reduce, 1 for all-gather and reduce-scatter); 0 for n = 1."""
    return factor * (n - 1) / n * nbytes / bw


def message_bytes() -> dict[str, sp.Expr]:
    """The size of each collective the trainer issues (nccl-tests' size), for the curve lookup."""
    Pb, Pv, Pe = block_params_local(), vocab_params_local(), block_expert_params_local()
    return {"msg_tp": BF16 * tokens() * M.h, "msg_ag": BF16 * (Pb - Pe), "msg_rs": FP32 * (Pb - Pe),
            "msg_root_ag": BF16 * Pv, "msg_root_rs": FP32 * Pv, "msg_pp": BF16 * tokens() * M.h * seq_share(),
            # one MoE block's routed experts (FSDP over dp / ep), and one dispatch's routed copies (all-to-all)
            "msg_eag": BF16 * expert_params_local(), "msg_ers": FP32 * expert_params_local(),
            "msg_a2a": BF16 * tokens() * M.topk * M.h * imbalance(),
            "msg_cp": kv_bytes()}


def stage_time_terms(opts: ArchOptions = RUNTIME) -> dict[str, sp.Expr]:
    """Seconds of a stage: steady per-micro-batch terms, once-per-step extras, and their breakdown."""
    T, q = tokens(), seq_share()
    Pb, Pv = block_params_local(), vocab_params_local()
    acts = stage_activation_bytes(opts)
    nf = K.f                                  # float8 blocks
    nb = K.l - nf                             # bf16 blocks
    ew = elementwise_bytes_fwd(opts) / (H.hbm * H.ew_eff)
    att_f, att_b = attention_s(opts)
    g_bf16, g_fp8 = block_gemm_s(0), block_gemm_s(1)
    x = {}
    # ---- compute of the blocks (per micro-batch) ----
    cpx = cp_attention_s(opts)
    fwd_gpu = nb * g_bf16 + nf * g_fp8 + K.l * (att_f + ew + cpx["merge_fwd"])
    bwd_gpu = 2 * (nb * g_bf16 + nf * g_fp8) + K.l * (att_b + 2 * ew + cpx["merge_bwd"])
    selective_redo = {"matmuls": ew, "attention_core": att_f + cpx["merge_fwd"],
                      "every_other_matmul": ew + (nb * g_bf16 + nf * g_fp8) / (2 * K.l)}[opts.selective]
    cast = fp8_cast_s()
    fp8_cast = nf * cast
    # a recomputed float8 block redoes its forward in float8, casts included (float8 blocks spread evenly)
    g_redo = (nb * g_bf16 + nf * (g_fp8 + cast / 3)) / K.l
    recompute = K.r * ((1 - K.sel) * (g_redo + att_f + ew + cpx["merge_fwd"]) + K.sel * selective_redo)
    # host side: kernel launches and FSDP2 hooks; a block is never faster than the host feeds it
    host_f = K.l * (kernels_per_block_fwd() * H.launch + H.hook)
    host_b = K.l * (2 * kernels_per_block_fwd() * H.launch + H.hook) + K.r * kernels_per_block_fwd() * H.launch
    # with ep > 1 each MoE block's forward waits on the host for its token counts (all_to_all_single takes Python
    # split sizes): the GPU idles while the kernels after the sync are launched (recomputed forwards again)
    stall = smin(K.e - 1, 1) * R.moe_sync * H.launch
    x["compute_fwd"] = smax(fwd_gpu + fp8_cast / 3, host_f) + K.lm * stall
    x["compute_bwd"] = smax(bwd_gpu + recompute + 2 * fp8_cast / 3, host_b) + K.r * moe_share() * stall
    # ---- embedding, output projection and loss: the head GEMM forward + its two backward GEMMs, the loss's
    # memory-bound kernels, the final RMSNorm (read + write 2 B, forward and backward); on the first stage the
    # embedding's gather (read + write 2 B per element, both passes) and its gradient's fp32 scatter-add ----
    # The fused linear cross-entropy (K.fl) runs the three head GEMMs per token chunk (K.nch of them) and adds each
    # chunk's weight gradient into an fp32 accumulator (R.flce_acc bytes per vocab x hidden element, each chunk).
    vs = vocab_share()
    head_gemm = K.nch * gemm_s(2 * T * M.h * M.V * vs / K.nch)
    x["head"] = K.last * (3 * head_gemm + R.loss_traffic * T * M.V * vs / (H.hbm * H.ew_eff)
                          + K.fl * K.nch * R.flce_acc * M.V * M.h * vs / (H.hbm * H.ew_eff)
                          + 8 * T * M.h * q / (H.hbm * H.ew_eff)) \
        + K.first * (8 * T * M.h + 4 * M.V * M.h * vs) / (H.hbm * H.ew_eff)
    # ---- tensor parallel, exposed, as the trainer issues it (launcher apply_tp). Per block, sequence parallel:
    # an all-gather before attention and before the MLP and a reduce-scatter after each, in forward and again in
    # backward. Without it: an all-reduce after wo and after w2 in forward; in backward one after each column
    # module, wq, wk, wv, w1 and w3 (five; Megatron fuses them into two). The embedding (row-wise over the vocabulary) reduces its output in
    # forward and the output projection gathers its input (reduce in backward); replicated (vocab_parallel
    # off) they only gather the sequence: the embedding's gradient in backward, the head's input in forward ----
    act = message_bytes()["msg_tp"]
    ag_t, rs_t, ar_t = coll_s(act, K.t, H.bw_tp), coll_s(act, K.t, H.bw_tp_rs), coll_s(act, K.t, H.bw_tp, 2)
    tp_fwd = K.sp_ * (2 * ag_t + 2 * rs_t) + (1 - K.sp_) * 2 * ar_t
    column_modules = 2 if opts.fused_column_modules else 4 + M.gated
    tp_bwd = K.sp_ * (2 * ag_t + 2 * rs_t) + (1 - K.sp_) * column_modules * ar_t
    vocab_tp = K.vp * (K.sp_ * (ag_t + rs_t) + (1 - K.sp_) * ar_t) + (1 - K.vp) * K.sp_ * ag_t
    if opts.tp_backward_overlap:   # hidden behind each block's gradient GEMMs, which they slow
        g_bwd = 2 * (nb * g_bf16 + nf * g_fp8) / K.l
        tp_bwd = pos(tp_bwd - g_bwd) + H.slow_comm * smin(tp_bwd, g_bwd)
    recomputed = K.r * (1 - K.sel) + R.tp_redo * K.r * K.sel            # forward passes redone in backward
    x["tp_comm"] = K.l * (tp_fwd + tp_bwd) + recomputed * tp_fwd + (K.first + K.last) * vocab_tp
    # ---- context parallel: the K/V exchange attention does not hide, in forward and backward, and again where
    # backward recomputes a block's attention (full checkpointing; Korthikanti's selective recomputes it too) ----
    redo_attention = K.r * (1 - K.sel) + (K.r * K.sel if opts.selective == "attention_core" else 0)
    x["cp_comm_fwd"] = K.l * cpx["comm_fwd"]
    x["cp_comm_bwd"] = K.l * cpx["comm_bwd"] + redo_attention * cpx["comm_fwd"]
    x["cp_comm"] = x["cp_comm_fwd"] + x["cp_comm_bwd"]
    # ---- pipeline: receive the activation in forward and its gradient in backward ----
    x["pp_comm"] = 2 * smin(K.pp - 1, 1) * message_bytes()["msg_pp"] / H.bw_pp
    # ---- expert parallelism, exposed, as the trainer issues it (launcher.runtime.moe): per MoE block a dispatch
    # and a combine all-to-all of the routed copies in forward and again in backward, the dispatch preceded by a
    # small all-to-all of the token counts; a checkpointed block redoes its forward's (neither is saved) ----
    a2a = coll_s(message_bytes()["msg_a2a"], K.e, H.bw_a2a)
    ep_fwd = K.lm * (2 * a2a + H.t_a2a_tiny)
    x["ep_comm"] = ep_fwd + K.lm * 2 * a2a + K.r * moe_share() * (2 * a2a + H.t_a2a_tiny)
    # ---- activation offload: saved tensors copied to and from pinned host memory on the compute stream ----
    x["offload_activations"] = 2 * acts["host"] / H.host
    # ---- FSDP2: all-gather bf16 params per block, reduce-scatter (all-reduce for zero 0) fp32 grads ----
    h2d = FP32 * block_state_params() / H.host        # an offloaded block's fp32 shard, each way
    # a MoE block's routed experts are gathered and reduced over the dp × cp / ep ranks that hold the same experts
    Pe = block_expert_params_local()
    ag = coll_s(BF16 * (Pb - Pe), fsdp_ranks(), H.bw_ag * H.comm_eff) \
        + coll_s(BF16 * Pe, fsdp_ranks() / K.e, H.bw_eag * H.comm_eff)
    rs = coll_s(FP32 * (Pb - Pe), fsdp_ranks(), H.bw_rs * H.comm_eff, factor=1 + K.z0) \
        + coll_s(FP32 * Pe, fsdp_ranks() / K.e, H.bw_ers * H.comm_eff, factor=1 + K.z0)
    blk_f = x["compute_fwd"] / K.l
    blk_b = x["compute_bwd"] / K.l
    nos = K.l - K.os_

    def exposed(comm: sp.Expr, h2d_off: sp.Expr, comp: sp.Expr) -> sp.Expr:
        """Comm (plus, for blocks with offloaded state, their host copies ``h2d_off``) hidden behind each block's
        compute except where longer; compute slowed while a collective or a host copy runs beside it (the
        profile's two overlap factors)."""
        def one(c, h):
            return pos(c + h - comp) + H.slow_comm * smin(c, comp) + H.slow_h2d * smin(h, comp)
        return nos * one(comm, 0) + K.os_ * one(comm, h2d_off)

    ag_each = 1 - K.keep                                         # all-gather every micro-batch (not PP)
    # on the compute stream: FSDP2 copies each gathered block out of the all-gather buffer into its parameters
    # (bf16 read + write) and, while gradient sync is off, adds each micro-batch's bf16 gradients into the
    # unsharded fp32 accumulators (read 2 + 4, write 4 bytes per parameter)
    copy_out = int(opts.fsdp2_copies) * 2 * BF16 * Pb / (H.hbm * H.ew_eff)
    accumulate = int(opts.fsdp2_copies) * (BF16 + 2 * FP32) * Pb / (H.hbm * H.ew_eff)
    x["fsdp_fwd"] = ag_each * (exposed(ag, h2d, blk_f) + ag + K.l * copy_out)  # first gather not hidden
    # gradients are reduced after every micro-batch unless sync is off (then on the last one only)
    each = 1 - K.nosync
    x["fsdp_bwd"] = ag_each * (exposed(K.z3 * ag + each * rs, (K.z3 + each) * h2d, blk_b) + each * rs
                               + K.l * K.z3 * copy_out) + K.nosync * K.l * accumulate
    # once per step: the last micro-batch's reduce-scatters (after all of backward when pipelined), the
    # pipelined stage's all-gathers of its first micro-batch, and the root's vocab params
    rs_last = (1 - K.keep) * K.nosync * (exposed(K.z3 * ag + rs, (K.z3 + 1) * h2d, blk_b)
                                         - exposed(K.z3 * ag, K.z3 * h2d, blk_b) + rs) \
        + K.keep * (nos * rs + K.os_ * (rs + h2d))
    root = coll_s(BF16 * Pv, fsdp_ranks(), H.bw_rag) * (2 - K.keep) \
        + coll_s(FP32 * Pv, fsdp_ranks(), H.bw_rrs, factor=1 + K.z0)
    x["fsdp_step"] = rs_last + K.keep * (exposed(ag, h2d, blk_f) + ag + K.l * copy_out) + root
    # ---- optimizer: fused AdamW + clipping over the local fp32 parameters; offloaded blocks on the CPU ----
    S_gpu = (K.l - K.os_) * block_state_params() + Pv / K.ds
    opt_bytes = (1 - K.fe) * R.opt_bytes + K.fe * R.opt_fe_bytes
    gpu_opt = opt_bytes * S_gpu / (H.hbm * H.ew_eff) + (R.opt_kern_block * K.l + R.opt_kern_fixed) * H.launch
    cpu_opt = K.os_ * block_state_params() / H.cpu_adam
    # the gradient norm's all-reduces; with cp the loss is a mean over the cp ranks' shares: one more tiny one
    x["optimizer"] = smax(gpu_opt, cpu_opt) + (2 + smin(K.c - 1, 1)) * H.t_tiny
    x["t_fwd"] = x["compute_fwd"] + x["fsdp_fwd"] + x["tp_comm"] / 2 + x["pp_comm"] / 2 \
        + x["offload_activations"] / 2 + x["head"] / 3 + ep_fwd + x["cp_comm_fwd"]
    x["t_bwd"] = x["compute_bwd"] + x["fsdp_bwd"] + x["tp_comm"] / 2 + x["pp_comm"] / 2 \
        + x["offload_activations"] / 2 + 2 * x["head"] / 3 + x["ep_comm"] - ep_fwd + x["cp_comm_bwd"]
    x["t_mb"] = x["t_fwd"] + x["t_bwd"]
    x["fp8_probe"] = fp8_probe_s()
    x.update(message_bytes())
    x["delta"] = x["fsdp_step"] + x["optimizer"]
    return x
