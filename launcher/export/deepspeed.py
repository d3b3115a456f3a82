"""Export a plan to DeepSpeed: ``ds_config.json`` (batch, ZeRO stage, CPU offload, bf16, clipping, AutoTP).

DeepSpeed takes pipeline stages and activation checkpointing in the training script, not in the config
(``PipelineModule(num_stages=...)``, ``deepspeed.checkpointing``); the warnings say what to set there.
Keys follow DeepSpeed's config schema (``deepspeed.runtime.config.DeepSpeedConfig``, 0.16 and later for
``tensor_parallel.autotp_size``).
"""
from __future__ import annotations

from costmodel.plan import Plan
from costmodel.specs import ClusterSpec, ModelSpec

from launcher.export.common import (ExportResult, common_warnings, dumps_json, offloaded_param_fraction, per_stage_text,
                            stage_view)

CONFIG_FILE = "ds_config.json"


def ds_config(plan: Plan, model: ModelSpec, warnings: list[str]) -> dict:
    """The DeepSpeed config dict of a plan; appends what it cannot express to ``warnings``."""
    view = stage_view(plan, model)
    warnings += common_warnings(plan, view, "DeepSpeed")
    stage = plan.zero
    if plan.pp > 1 and stage > 1:
        warnings.append(f"zero {plan.zero} with pp {plan.pp}: DeepSpeed's pipeline engine supports ZeRO 0-1; "
                        f"exported as stage 1 (gradients and parameters not sharded)")
        stage = 1
    if plan.tp > 1 and stage == 3:
        warnings.append(f"zero 3 with tp {plan.tp}: DeepSpeed AutoTP training supports ZeRO 0-2; exported as "
                        f"stage 2 (parameters not sharded)")
        stage = 2
    zero: dict = {"stage": stage}
    if stage >= 2:
        zero["overlap_comm"] = True
    if plan.zero == 3 and stage == 3:
        zero["reduce_scatter"] = True
    n_state, L = sum(view.offload_state), model.num_hidden_layers
    if n_state:
        frac = offloaded_param_fraction(view, model)
        if stage == 0:
            warnings.append("offload_state_layers with zero 0: DeepSpeed offloads only under ZeRO 1-3; dropped")
        else:
            opt = {"device": "cpu", "pin_memory": True}
            if stage == 3 and n_state < L:
                opt["ratio"] = round(frac, 3)  # share of the optimizer step run by CPU Adam
            elif n_state < L:
                warnings.append(f"offload_state_layers {per_stage_text(view.offload_state)}: DeepSpeed offloads "
                                f"a share of the optimizer only under ZeRO 3; exported as the whole optimizer on "
                                f"the CPU")
            zero["offload_optimizer"] = opt
            if stage == 3:
                zero["offload_param"] = {"device": "cpu", "pin_memory": True}
                if n_state < L:
                    warnings.append(f"offload_state_layers {per_stage_text(view.offload_state)}: DeepSpeed "
                                    f"offloads all parameters or none; exported with offload_param for all")
    config: dict = {
        "train_batch_size": plan.global_batch_size,
        "train_micro_batch_size_per_gpu": plan.micro_batch_size,
        "gradient_accumulation_steps": plan.num_microbatches,
        "gradient_clipping": 1.0,
        "bf16": {"enabled": True},
        "zero_optimization": zero,
    }
    if plan.cp > 1:
        _cp_fallback(plan, model, config, warnings)
    if plan.tp > 1:
        config["tensor_parallel"] = {"autotp_size": plan.tp}
        if plan.sequence_parallel:
            warnings.append("sequence_parallel: DeepSpeed AutoTP has no sequence parallelism; norms and residuals "
                            "stay replicated (more activation memory)")
    if plan.pp > 1:
        warnings.append(f"pp {plan.pp}: set in the training script, PipelineModule(layers, num_stages={plan.pp}, "
                        f"partition_method='uniform'), schedule 1F1B"
                        + (f"; layers_per_stage {per_stage_text(view.layers)} needs a custom partition"
                           if len(set(view.layers)) > 1 else ""))
        if plan.pp_schedule != "1F1B":
            warnings.append(f"pp_schedule {plan.pp_schedule}: DeepSpeed's pipeline engine runs 1F1B only")
    if plan.recompute != "none":
        warnings.append(f"recompute {plan.recompute} on {per_stage_text(view.recompute)} blocks per stage: "
                        "activation checkpointing is set in the training script (e.g. "
                        "model.gradient_checkpointing_enable()), not in ds_config"
                        + ("; DeepSpeed/HF checkpoint whole blocks (full)" if plan.recompute == "selective"
                           else ""))
    if any(view.offload_activation):
        warnings.append(f"offload_activation_layers {per_stage_text(view.offload_activation)}: not exported "
                        f"(DeepSpeed's cpu_checkpointing offloads checkpointed inputs only); more GPU memory than "
                        f"planned")
    if any(view.fp8):
        warnings.append(f"fp8_layers {per_stage_text(view.fp8)}: DeepSpeed has no float8 training setting; "
                        f"use Transformer Engine or torchao in the model code")
    if plan.compile:
        warnings.append("compile: call engine.compile() in the training script (no ds_config key)")
    if model.is_moe:
        warnings.append(f"ep {plan.ep}: DeepSpeed sets expert parallelism in the model code, not in ds_config: "
                        f"deepspeed.moe.layer.MoE(hidden_size={model.hidden_size}, num_experts={model.num_experts}, "
                        f"ep_size={plan.ep}, k={model.num_experts_per_tok}) per MoE block, with "
                        "deepspeed.moe.utils.split_params_into_different_moe_groups_for_optimizer for the optimizer")
    if plan.grad_reduce == "every" and plan.num_microbatches > 1 and stage < 2:
        warnings.append("grad_reduce every: DeepSpeed ZeRO 0-1 reduce gradients at the accumulation boundary")
    return config


def _cp_fallback(plan: Plan, model: ModelSpec, config: dict, warnings: list[str]) -> None:
    """DeepSpeed has no ring attention: its cp ranks become data-parallel ranks of whole sequences, the batch
    re-split so that the config stays consistent (DeepSpeed checks batch = micro × accumulation × dp)."""
    ranks = plan.dp * plan.cp
    note = (f"cp {plan.cp}: DeepSpeed has no ring-attention context parallelism; its Ulysses sequence parallelism "
            f"(sequence_parallel_size, with deepspeed.sequence.layer.DistributedAttention in the model code) also "
            f"splits the sequence but swaps it for attention heads by all-to-all (the {model.kv_heads} K/V heads "
            f"must divide by the degree) and costs differently, so it is not exported: DeepSpeed runs {ranks} "
            f"data-parallel ranks of whole sequences")
    per_step = plan.micro_batch_size * ranks
    if plan.global_batch_size % per_step == 0:
        config["gradient_accumulation_steps"] = plan.global_batch_size // per_step
        note += (f", {config['gradient_accumulation_steps']} micro-batch(es) of {plan.micro_batch_size} each "
                 f"(about {plan.cp}× the activation memory per GPU planned)")
    else:
        config["train_micro_batch_size_per_gpu"] = 1
        config["gradient_accumulation_steps"] = max(1, plan.global_batch_size // ranks)
        config["train_batch_size"] = config["gradient_accumulation_steps"] * ranks
        note += (f"; global batch {plan.global_batch_size} does not split over them, exported as "
                 f"{config['train_batch_size']} sequences per step")
    warnings.append(note)


def export_deepspeed(plan: Plan, model: ModelSpec, cluster: ClusterSpec | None = None) -> ExportResult:
    """The plan as ds_config.json plus a deepspeed launcher line."""
    warnings: list[str] = []
    config = ds_config(plan, model, warnings)
    if cluster is not None and cluster.nodes > 1:
        launch = f"deepspeed --hostfile <HOSTFILE> --num_nodes {cluster.nodes} --num_gpus {cluster.gpus_per_node}"
    else:
        launch = f"deepspeed --num_gpus {plan.world_size if cluster is None else cluster.gpus_per_node}"
    command = f'{launch} <TRAIN_SCRIPT> --deepspeed --deepspeed_config "$(dirname "$0")/{CONFIG_FILE}"'
    return ExportResult(target="deepspeed", files={CONFIG_FILE: dumps_json(config)}, command=command,
                        warnings=warnings)
