"""Export a plan to Megatron-LM: the argument list of ``pretrain_gpt.py`` (model shape, parallelism, batch,
recompute, distributed optimizer or Megatron-FSDP, float8 and optimizer offload).

Flag names and types follow ``megatron/training/arguments.py`` as shipped in the megatron-core 0.19.2 wheel
(MEGATRON_CORE; tests/test_export.py runs that release's own ``parse_args`` and ``validate_args`` on every
export): first/last pipeline stage layers, Megatron-FSDP sharding strategies, ``--first-last-layers-bf16``,
optimizer CPU offload, ``--use-rope-scaling``. Model keys Megatron cannot express are warnings.
"""
from __future__ import annotations

import shlex
from pathlib import Path

from costmodel.plan import Plan
from costmodel.specs import ClusterSpec, ModelSpec

from launcher.export.common import (ExportResult, StageView, common_warnings, offloaded_param_fraction, per_stage_text,
                            stage_view, torchrun_line)

ARGS_FILE = "megatron_args.sh"
MEGATRON_CORE = "0.19.2"
"""The megatron-core release whose megatron/training/arguments.py the flags are checked against."""
# Megatron's --use-rope-scaling applies Llama-3.1 scaling with these fixed values; only the factor is a flag
# (megatron/core/models/common/embeddings/rotary_pos_embedding.py, megatron-core 0.19.2).
_MEGATRON_LLAMA3_ROPE = {"low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}


def _rope_args(model: ModelSpec, warnings: list[str]) -> list:
    theta = model.rope_theta
    if float(theta) != int(theta):  # Megatron parses --rotary-base as an int
        warnings.append(f"rope_theta {theta:g}: Megatron's --rotary-base is an integer; exported as {round(theta)}")
    a: list = ["--rotary-base", round(theta)]
    if not model.rope_scaling:
        return a
    rs = model.rope_scaling
    fixed = {k: rs.get(k) for k in _MEGATRON_LLAMA3_ROPE}
    if model.rope_type == "llama3" and all(float(v) == _MEGATRON_LLAMA3_ROPE[k] for k, v in fixed.items()):
        return a + ["--use-rope-scaling", "--rope-scaling-factor", f"{float(rs['factor']):g}"]
    if model.rope_type == "llama3":
        warnings.append(f"rope_scaling {fixed}: Megatron's --use-rope-scaling fixes low_freq_factor 1, "
                        f"high_freq_factor 4 and original_max_position_embeddings 8192; exported with factor "
                        f"{float(rs['factor']):g} and those (different long-context RoPE)")
        return a + ["--use-rope-scaling", "--rope-scaling-factor", f"{float(rs['factor']):g}"]
    warnings.append(f"rope_scaling type {model.rope_type}: not exported (Megatron's GPT RoPE scales llama3-style "
                    f"or by --rotary-seq-len-interpolation-factor); plain RoPE instead")
    return a


def model_args(model: ModelSpec, seq_len: int, warnings: list[str] | None = None) -> list[str]:
    """Shape flags of a Llama-family (or GPT) decoder; what Megatron cannot express is added to ``warnings``."""
    warnings = [] if warnings is None else warnings
    a = ["--num-layers", model.num_hidden_layers, "--hidden-size", model.hidden_size,
         "--ffn-hidden-size", model.intermediate_size, "--num-attention-heads", model.num_attention_heads]
    if model.kv_heads != model.num_attention_heads:
        a += ["--group-query-attention", "--num-query-groups", model.kv_heads]
    if model.head_dim != model.hidden_size // model.num_attention_heads:
        a += ["--kv-channels", model.head_dim]
    a += ["--seq-length", seq_len, "--max-position-embeddings", max(seq_len, model.max_position_embeddings or 0),
          "--vocab-size", model.vocab_size, "--position-embedding-type", "rope", *_rope_args(model, warnings),
          "--normalization", "RMSNorm", "--norm-epsilon", f"{model.rms_norm_eps:g}",
          "--disable-bias-linear", "--attention-dropout", 0, "--hidden-dropout", 0]
    if model.qkv_bias or model.attention_bias:
        a.append("--add-qkv-bias")
    if model.attention_bias:
        warnings.append("attention_bias: Megatron biases q/k/v (--add-qkv-bias) but its output-projection bias comes "
                        "only with every other linear's (--add-bias-linear); exported without it")
    if model.gated_mlp:
        a.append("--swiglu")
    if not model.tie_word_embeddings:
        a.append("--untie-embeddings-and-output-weights")
    return a + moe_args(model)


def moe_layer_freq(model: ModelSpec) -> str | None:
    """Megatron's --moe-layer-freq for the model's dense/MoE pattern (None: every block has experts)."""
    L = model.num_hidden_layers
    pattern = [int(model.is_moe_layer(i)) for i in range(L)]
    if all(pattern):
        return None
    dense = pattern.index(1)
    if pattern == [0] * dense + [1] * (L - dense):
        return f"([0]*{dense}+[1]*{L - dense})"
    return "[" + ",".join(map(str, pattern)) + "]"


def moe_args(model: ModelSpec) -> list:
    """Mixture-of-experts shape flags (Megatron-core MoE: grouped GEMM, all-to-all dispatcher, dropless)."""
    if not model.is_moe:
        return []
    a = ["--num-experts", model.num_experts, "--moe-router-topk", model.num_experts_per_tok,
         "--moe-ffn-hidden-size", model.expert_width, "--moe-grouped-gemm", "--moe-token-dispatcher-type", "alltoall",
         "--moe-router-load-balancing-type", "aux_loss", "--moe-aux-loss-coeff", f"{model.router_aux_loss_coef:g}"]
    freq = moe_layer_freq(model)
    if freq:
        a += ["--moe-layer-freq", freq]
    if model.shared_width:
        a += ["--moe-shared-expert-intermediate-size", model.shared_width]
    if model.scoring_func == "sigmoid":
        a += ["--moe-router-score-function", "sigmoid"]
    elif not model.norm_topk_prob:   # Megatron's default softmax over the top-k equals renormalised top-k
        a.append("--moe-router-pre-softmax")
    if model.routed_scaling_factor != 1.0:
        a += ["--moe-router-topk-scaling-factor", f"{model.routed_scaling_factor:g}"]
    return a


def _pipeline_args(plan: Plan, view: StageView, warnings: list[str]) -> list[str]:
    if plan.pp == 1:
        return []
    a = ["--pipeline-model-parallel-size", plan.pp]
    layers = view.layers
    even = len(set(layers)) == 1
    if plan.virtual_stages > 1:
        if not even:
            warnings.append(f"layers_per_stage {per_stage_text(layers)}: Megatron's interleaved schedule needs "
                            f"the same blocks in every virtual stage; exported as an even split")
        a += ["--num-layers-per-virtual-pipeline-stage", sum(layers) // len(layers)]
        return a
    if plan.pp_schedule == "GPipe":
        warnings.append("pp_schedule GPipe: Megatron-LM runs 1F1B (no GPipe schedule); less activation memory "
                        "than planned")
    middle = layers[1:-1]
    if not even:
        if len(set(middle)) > 1:
            warnings.append(f"layers_per_stage {per_stage_text(layers)}: Megatron sets the first and last stage "
                            f"only and splits the middle evenly; the middle stages get "
                            f"{sum(middle)} blocks evenly")
        a += ["--decoder-first-pipeline-num-layers", layers[0], "--decoder-last-pipeline-num-layers", layers[-1]]
    return a


def _recompute_args(plan: Plan, view: StageView, warnings: list[str]) -> list[str]:
    if plan.recompute == "none":
        return []
    n = view.recompute
    if plan.recompute == "selective":
        warnings.append("recompute selective: Megatron's selective recompute covers core attention only; "
                        "loadmaster also recomputes norms and activations (more memory than predicted)")
        if n != view.layers:
            warnings.append(f"recompute_layers {per_stage_text(n)}: Megatron applies selective recompute to "
                            f"every block")
        return ["--recompute-granularity", "selective"]
    if len(set(n)) > 1:
        warnings.append(f"recompute_layers {per_stage_text(n)}: Megatron checkpoints the same number of blocks in "
                        f"every stage; exported as the largest, {max(n)}")
    # "block" checkpoints the first N blocks of each pipeline stage: exactly loadmaster's convention.
    return ["--recompute-granularity", "full", "--recompute-method", "block", "--recompute-num-layers", max(n)]


def _sharding_args(plan: Plan, warnings: list[str]) -> list[str]:
    if plan.zero == 0:
        return []
    if plan.zero == 1 or plan.pp > 1:
        if plan.zero > 1:
            warnings.append(f"zero {plan.zero} with pp {plan.pp}: exported as Megatron's distributed optimizer "
                            f"(optimizer state and fp32 master weights sharded, gradients not)")
        return ["--use-distributed-optimizer"]
    strategy = "optim_grads" if plan.zero == 2 else "optim_grads_params"
    return ["--use-megatron-fsdp", "--data-parallel-sharding-strategy", strategy, "--use-distributed-optimizer",
            "--no-gradient-accumulation-fusion", "--ckpt-format", "fsdp_dtensor"]


def _fp8_args(plan: Plan, model: ModelSpec, view: StageView, warnings: list[str]) -> list[str]:
    blocks = view.fp8_blocks()
    if not blocks:
        return []
    L = model.num_hidden_layers
    if plan.fp8_recipe == "rowwise":
        warnings.append("fp8_recipe rowwise: Megatron-LM has tensorwise, delayed, mxfp8 and blockwise recipes; "
                        "exported as tensorwise")
    a = ["--fp8-format", "hybrid", "--fp8-recipe", "tensorwise"]
    if len(blocks) == L:
        return a
    if blocks != list(range(len(blocks))):
        warnings.append(f"fp8_layers {per_stage_text(view.fp8)}: Megatron keeps only leading and trailing blocks "
                        f"in bf16; exported as float8 blocks 0-{len(blocks) - 1} and the last {L - len(blocks)} "
                        f"in bf16")
    return a + ["--first-last-layers-bf16", "--num-layers-at-start-in-bf16", 0,
                "--num-layers-at-end-in-bf16", L - len(blocks)]


def megatron_args(plan: Plan, model: ModelSpec, warnings: list[str]) -> list[str]:
    """Every flag the plan decides, as strings in order (model, parallelism, batch, memory, precision)."""
    view = stage_view(plan, model)
    warnings += common_warnings(plan, view, "Megatron-LM")
    a: list = model_args(model, plan.seq_len, warnings)
    a += ["--tensor-model-parallel-size", plan.tp]
    if model.is_moe:   # Megatron too carves the expert-parallel group out of the data-parallel ranks
        a += ["--expert-model-parallel-size", plan.ep, "--expert-tensor-parallel-size", 1]
    if plan.tp > 1 and plan.sequence_parallel:
        a.append("--sequence-parallel")
    if plan.cp > 1:
        # Transformer Engine's ring is "p2p" (Megatron's default), its all-gather variant "all_gather"; both split
        # the sequence into 2·cp load-balanced chunks as PyTorch's does. The data-parallel size is derived.
        a += ["--context-parallel-size", plan.cp, "--cp-comm-type",
              "all_gather" if plan.cp_rotate == "allgather" else "p2p"]
    a += _pipeline_args(plan, view, warnings)
    a += ["--micro-batch-size", plan.micro_batch_size, "--global-batch-size", plan.global_batch_size,
          "--bf16", "--clip-grad", "1.0"]
    a += _recompute_args(plan, view, warnings)
    a += _sharding_args(plan, warnings)
    if any(view.offload_state):
        frac = offloaded_param_fraction(view, model)
        warnings.append(f"offload_state_layers {per_stage_text(view.offload_state)}: Megatron offloads the "
                        f"optimizer step (fp32 master weights and Adam state) of a share of the parameters, not "
                        f"whole blocks; exported as --optimizer-offload-fraction {frac:.3f}, bf16 weights and "
                        f"gradients stay on the GPU")
        if "--use-distributed-optimizer" not in a:
            a.append("--use-distributed-optimizer")
        a += ["--optimizer-cpu-offload", "--optimizer-offload-fraction", f"{frac:.3f}",
              "--use-precision-aware-optimizer", "--overlap-cpu-optimizer-d2h-h2d"]
    if any(view.offload_activation):
        warnings.append(f"offload_activation_layers {per_stage_text(view.offload_activation)}: not exported "
                        f"(Megatron's activation offload is a Transformer Engine option outside this mapping); "
                        f"more GPU memory than planned")
    a += _fp8_args(plan, model, view, warnings)
    if plan.compile:
        warnings.append("compile: Megatron-LM does not torch.compile blocks (it uses fused Transformer Engine "
                        "kernels); dropped")
    if plan.grad_reduce == "every" and plan.num_microbatches > 1:
        warnings.append("grad_reduce every: Megatron reduces gradients once per step (after the last "
                        "micro-batch)")
    return [str(x) for x in a]


def export_megatron(plan: Plan, model: ModelSpec, cluster: ClusterSpec | None = None) -> ExportResult:
    """The plan as a bash array of pretrain_gpt.py arguments plus the torchrun line."""
    warnings: list[str] = []
    args = megatron_args(plan, model, warnings)
    pairs, i = [], 0
    while i < len(args):  # one flag (and its values) per line
        j = i + 1
        while j < len(args) and not args[j].startswith("--"):
            j += 1
        pairs.append(" ".join(shlex.quote(x) for x in args[i:j]))
        i = j
    notes = "\n".join(f"#   {w}" for w in warnings) or "#   none"
    text = (f"# Megatron-LM arguments written by `loadmaster export` from {Path(plan.source).name} for "
            f"{model.name}.\n# Plan knobs Megatron-LM cannot express as planned:\n{notes}\n"
            "MEGATRON_ARGS=(\n" + "".join(f"  {p}\n" for p in pairs) + ")\n")
    run = torchrun_line(plan.world_size, cluster, "<MEGATRON_LM>/pretrain_gpt.py")
    if plan.tp > 1 and "--use-megatron-fsdp" not in args:
        # validate_args demands it for TP on Hopper and older GPUs (communication kernels queued in issue order)
        run = f"CUDA_DEVICE_MAX_CONNECTIONS=1 {run}"
    command = (f'source "$(dirname "$0")/{ARGS_FILE}" && {run} "${{MEGATRON_ARGS[@]}}" '
               "--tokenizer-type HuggingFaceTokenizer --tokenizer-model <TOKENIZER> --data-path <DATA> "
               "--train-iters <STEPS> --lr <LR>")
    return ExportResult(target="megatron", files={ARGS_FILE: text}, command=command, warnings=warnings)
