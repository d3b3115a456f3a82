"""Export a plan to TorchTitan 0.3.0: a Python config module and the torchrun line that runs it.

Why 0.3.0 (TORCHTITAN): it is the release on the package index, the one CI installs and parses every export
with (tests/test_export.py), and the config format TorchTitan keeps (0.2.x read TOML job files, gone since).
It needs torch 2.13; GPU nodes still on torch 2.11 run TorchTitan 0.2.2, whose TOML schema this export does
not write (the export says so in its warnings).

TorchTitan 0.3.0 replaced TOML job files with Python config functions: ``torchtitan.train`` takes
``--module M --config F``, imports ``M`` (a fully qualified module path works, so a file on PYTHONPATH does)
and calls ``F()`` for a ``Trainer.Config``; ``--section.key value`` flags override fields afterwards. The
module written here starts from TorchTitan's own recipe for the model (``config_registry.llama3_8b`` ...)
and sets what the plan decides: parallel degrees, batch, sequence length, activation checkpointing,
compile, CPU offload and the float8 converter with ``filter_fqns`` for the blocks that stay in bf16.
"""
from __future__ import annotations

from pathlib import Path

from costmodel.errors import SpecError
from costmodel.plan import Plan
from costmodel.specs import ClusterSpec, ModelSpec

from launcher.export.common import ExportResult, StageView, common_warnings, per_stage_text, stage_view, torchrun_line

MODULE = "loadmaster_torchtitan"
FUNCTION = "loadmaster_plan"
TORCHTITAN = "0.3.0"
"""The TorchTitan release the config module is written for (and checked against)."""
# What TorchTitan 0.3.0's llama3 flavors build (torchtitan/models/llama3/__init__.py): RoPE theta 500000 with
# Llama-3.1 scaling at ComplexRoPE.Config's defaults, and RMSNorm.Config's eps.
_FLAVOR_ROPE = {"theta": 500000.0, "scaling": "llama", "scaling_factor": 8.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
_TT_NORM_EPS = 1e-5

# TorchTitan's llama3 flavors (torchtitan/models/llama3/__init__.py, 0.3.0): shape -> (flavor, recipe fn).
# Shape: hidden, blocks, heads, kv heads, FFN width, vocab, tied embeddings.
FLAVORS: dict[tuple, tuple[str, str]] = {
    (2048, 16, 32, 8, 8192, 128256, True): ("1B", ""),  # no recipe of its own: the 8B recipe's settings
    (3072, 28, 24, 8, 8192, 128256, True): ("3B", ""),
    (4096, 32, 32, 8, 14336, 128256, False): ("8B", "llama3_8b"),
    (8192, 80, 64, 8, 28672, 128256, False): ("70B", "llama3_70b"),
    (16384, 126, 128, 8, 53248, 128256, False): ("405B", "llama3_405b"),
}


# TorchTitan's mixture-of-experts flavors (0.3.x: torchtitan/models/qwen3, torchtitan/models/deepseek_v3): shape ->
# (model package, flavor, recipe fn). Shape: hidden, blocks, heads, routed experts, top-k, expert width.
MOE_FLAVORS: dict[tuple, tuple[str, str, str]] = {
    (2048, 48, 32, 128, 8, 768): ("qwen3", "30B-A3B", "qwen3_30b_a3b"),
    (7168, 61, 128, 256, 8, 2048): ("deepseek_v3", "671B", "deepseek_v3_671b"),
}


def _moe_shape(m: ModelSpec) -> tuple:
    return (m.hidden_size, m.num_hidden_layers, m.num_attention_heads, m.num_experts, m.num_experts_per_tok,
            m.expert_width)


def _moe_model_code(model: ModelSpec, warnings: list[str]) -> tuple[str, str, str]:
    """(source of ``_model_spec``, recipe fn, model package) of a TorchTitan MoE flavor; SpecError for a shape
    TorchTitan has no model of (it builds MoE models only from its own flavors)."""
    match = MOE_FLAVORS.get(_moe_shape(model))
    if match is None:
        known = ", ".join(f"{pkg} {flavor}" for pkg, flavor, _ in MOE_FLAVORS.values())
        raise SpecError(model.name or "<model>", "num_experts", f"TorchTitan 0.3 has no mixture-of-experts model of "
                        f"{model.name or 'this'}'s shape (its MoE flavors: {known})",
                        "export with --to megatron, or add the model to TorchTitan")
    package, flavor, recipe = match
    if package == "deepseek_v3":
        warnings.append(f"{model.name}: TorchTitan's DeepSeek-V3 671B trains multi-head latent attention, YaRN RoPE "
                        "scaling and its aux-loss-free balancing; the plan was costed with the recipe's GQA stand-in (more attention "
                        "weights, smaller saved keys/values)")
    # TorchTitan's MoE flavors fix their own norm eps (DeepSeek-V3 1e-5 against the checkpoint's 1e-6): set ours
    eps = model.rms_norm_eps
    code = (f"def _model_spec(converters):\n"
            f"    spec = model_registry({flavor!r}, converters=converters or None)\n"
            f"    for layer in spec.model.layers:\n"
            f"        layer.attention_norm.eps = layer.ffn_norm.eps = {eps!r}\n"
            f"    spec.model.norm.eps = {eps!r}\n"
            f"    return spec\n")
    return code, recipe, package


def _shape(m: ModelSpec) -> tuple:
    return (m.hidden_size, m.num_hidden_layers, m.num_attention_heads, m.kv_heads, m.intermediate_size,
            m.vocab_size, m.tie_word_embeddings)


def _rope(model: ModelSpec, warnings: list[str]) -> dict:
    """The ComplexRoPE.Config fields (besides dim and max_seq_len) that reproduce the model's RoPE."""
    rope: dict = {"theta": float(model.rope_theta), "scaling": "none"}
    if model.rope_type == "llama3":
        rs = model.rope_scaling or {}
        rope.update(scaling="llama", scaling_factor=float(rs["factor"]),
                    low_freq_factor=float(rs["low_freq_factor"]), high_freq_factor=float(rs["high_freq_factor"]),
                    original_max_position_embeddings=int(rs["original_max_position_embeddings"]))
    elif model.rope_scaling:
        warnings.append(f"rope_scaling type {model.rope_type}: TorchTitan's llama3 RoPE scales llama3-style or "
                        f"yarn with other parameters; exported without scaling")
    return rope


def _fixups(model: ModelSpec, rope: dict, flavor: bool, max_seq: int, warnings: list[str], root: str) -> str:
    """Lines of ``_model_spec`` that set what the builders fix differently: RoPE and norm eps (``root``: the
    expression of the Llama3Model.Config in the generated code)."""
    lines = []
    if not flavor or any(_FLAVOR_ROPE.get(k) != v for k, v in rope.items()):
        args = ", ".join(f"{k}={v!r}" for k, v in rope.items())
        lines.append(f"        layer.attention.rope = ComplexRoPE.Config(dim=layer.attention.rope.dim, "
                     f"max_seq_len={max_seq}, {args})")
    if model.rms_norm_eps != _TT_NORM_EPS:
        lines.append(f"        layer.attention_norm.eps = layer.ffn_norm.eps = {model.rms_norm_eps!r}")
    if model.qkv_bias or model.attention_bias:
        warnings.append(f"{'attention_bias' if model.attention_bias else 'qkv_bias'}: TorchTitan's llama3 "
                        f"attention has no biases; the exported model drops them")
    if not lines:
        return ""
    why = "    # the model's RoPE and norm eps, where TorchTitan's builder sets others\n"
    tail = f"    {root}.norm.eps = {model.rms_norm_eps!r}\n" if model.rms_norm_eps != _TT_NORM_EPS else ""
    return why + f"    for layer in {root}.layers:\n" + "".join(f"{ln}\n" for ln in lines) + tail


def _model_code(model: ModelSpec, seq_len: int, warnings: list[str]) -> tuple[str, str, bool]:
    """Source of ``_model_spec(converters)``; returns (code, recipe function, whether the recipe's
    hf_assets_path is another model's)."""
    match = FLAVORS.get(_shape(model))
    rope = _rope(model, warnings)
    max_seq = max(seq_len, model.max_position_embeddings or 0)
    if match is not None:
        flavor, recipe = match
        fix = _fixups(model, rope, True, max_seq, warnings, "spec.model")
        code = (f"def _model_spec(converters):\n"
                f"    spec = model_registry({flavor!r}, converters=converters or None)\n{fix}    return spec\n")
        return code, recipe or "llama3_8b", not recipe
    if not model.gated_mlp:
        warnings.append(f"hidden_act {model.hidden_act}: TorchTitan's llama3 model has a SwiGLU MLP; the export "
                        f"builds {model.name} with SwiGLU of width {model.intermediate_size} (3 matrices, not 2)")
    if model.head_dim != model.hidden_size // model.num_attention_heads:
        warnings.append(f"head_dim {model.head_dim}: TorchTitan's llama3 attention uses hidden_size / heads = "
                        f"{model.hidden_size // model.num_attention_heads}")
    emb_init = "_EMBEDDING_SKIP_INIT" if model.tie_word_embeddings else "_EMBEDDING_INIT"
    fix = _fixups(model, rope, False, max_seq, warnings, "config")
    code = f'''\
def _model_config() -> Llama3Model.Config:
    # {model.name} is not one of TorchTitan's llama3 flavors: built the way those flavors are built.
    dim, vocab = {model.hidden_size}, {model.vocab_size}
    return Llama3Model.Config(
        dim=dim,
        vocab_size=vocab,
        enable_weight_tying={model.tie_word_embeddings},
        tok_embeddings=Embedding.Config(num_embeddings=vocab, embedding_dim=dim, param_init={emb_init}),
        norm=RMSNorm.Config(normalized_shape=dim, param_init=_NORM_INIT),
        lm_head=Linear.Config(in_features=dim, out_features=vocab, param_init=_output_linear_init(dim)),
        layers=_build_llama3_layers(
            n_layers={model.num_hidden_layers},
            dim=dim,
            n_heads={model.num_attention_heads},
            n_kv_heads={model.kv_heads},
            hidden_dim={model.intermediate_size},
            rope=ComplexRoPE.Config(dim=dim // {model.num_attention_heads}, max_seq_len={max_seq}),
            attn_backend="flex",
        ),
    )


def _model_spec(converters):
    config = _model_config()
{fix}    if converters:
        validate_converter_order(converters)
        for c in converters:
            config = c.build().convert(config)
    return ModelSpec(name="llama3", flavor={model.name!r}, model=config, parallelize_fn=parallelize_llama,
                     pipelining_fn=pipeline_llm, post_optimizer_build_fn=None,
                     state_dict_adapter=Llama3StateDictAdapter)
'''
    warnings.append(f"model {model.name} is not a TorchTitan llama3 flavor (1B/3B/8B/70B/405B): the config builds "
                    f"it with torchtitan.models.llama3's private layer builder; set hf_assets_path to its tokenizer")
    return code, "llama3_8b", True


_CUSTOM_IMPORTS = """\
from torchtitan.components.loss import ChunkedLossWrapper, CrossEntropyLoss
from torchtitan.distributed.pipeline_parallel import pipeline_llm
from torchtitan.models.common import Embedding, Linear, RMSNorm
from torchtitan.models.common.config_utils import decoder_vocab_size
from torchtitan.models.llama3 import (  # private builders: the flavors use them the same way
    Llama3Model, _EMBEDDING_INIT, _EMBEDDING_SKIP_INIT, _NORM_INIT, _build_llama3_layers, _output_linear_init,
    parallelize_llama)
from torchtitan.models.llama3.state_dict_adapter import Llama3StateDictAdapter
from torchtitan.models.utils import validate_converter_order
from torchtitan.protocols.model_spec import ModelSpec
"""


def _stage_fqns(view: StageView) -> list[list[str]]:
    """Module names of each pipeline stage (TorchTitan's module_fqns_per_model_part)."""
    parts = []
    for i, (start, n) in enumerate(zip(view.first_block, view.layers)):
        names = [f"layers.{b}" for b in range(start, start + n)]
        if i == 0:
            names.insert(0, "tok_embeddings")
        if i == len(view.layers) - 1:
            names += ["norm", "lm_head"]
        parts.append(names)
    return parts


def _knob_warnings(plan: Plan, model: ModelSpec, view: StageView) -> list[str]:
    out = common_warnings(plan, view, "TorchTitan")
    L = model.num_hidden_layers
    if plan.recompute != "none" and view.recompute != view.layers:
        out.append(f"recompute_layers {per_stage_text(view.recompute)} of {per_stage_text(view.layers)} blocks: "
                   f"TorchTitan checkpoints every block; exported as {plan.recompute} AC on all {L} (less memory, "
                   f"more recompute than planned)")
    if plan.recompute == "selective":
        out.append("recompute selective: TorchTitan's SelectiveAC also recomputes every second matmul (loadmaster "
                   "saves every matmul output): less memory, more recompute than predicted")
    if any(view.offload_activation):
        out.append(f"offload_activation_layers {per_stage_text(view.offload_activation)}: TorchTitan has no "
                   f"activation offload; dropped (more GPU memory than planned)")
    n_state = sum(view.offload_state)
    if 0 < n_state < L:
        out.append(f"offload_state_layers {per_stage_text(view.offload_state)}: TorchTitan offloads all or "
                   f"nothing; exported as training.enable_cpu_offload for all {L} blocks (slower than planned)")
    if plan.zero == 1:
        out.append("zero 1: TorchTitan's FSDP shards parameters too; exported as zero 2 "
                   "(fsdp_reshard_after_forward='never')")
    if plan.grad_reduce == "last" and plan.pp == 1 and plan.num_microbatches > 1 and plan.dp > 1 and plan.zero:
        out.append(f"grad_reduce last: TorchTitan reduce-scatters gradients after each of the "
                   f"{plan.num_microbatches} micro-batches (grad_reduce: every)")
    if any(view.fp8) and plan.fp8_recipe == "tensorwise":
        out.append("fp8_recipe tensorwise: TorchTitan 0.3's Float8LinearConverter offers rowwise only; "
                   "exported as rowwise")
    if plan.cp > 1 and plan.cp_rotate != "allgather":
        out.append(f"cp_rotate {plan.cp_rotate}: TorchTitan 0.3 has no rotate setting (torch's default, allgather); "
                   f"exported as allgather")
    if plan.tp > 1 and not plan.vocab_parallel:
        out.append("vocab_parallel false: TorchTitan 0.3 always shards the output layer and its loss over TP "
                   "(no setting); exported vocab-parallel (less memory, a different TP exchange than planned)")
    return out


def export_torchtitan(plan: Plan, model: ModelSpec, cluster: ClusterSpec | None = None) -> ExportResult:
    """The plan as a TorchTitan 0.3.0 config module plus its torchrun line (a mixture-of-experts model: one of
    TorchTitan's MoE flavors, with ``expert_parallel_degree``)."""
    view = stage_view(plan, model)
    warnings = _knob_warnings(plan, model, view)
    if model.is_moe:
        model_code, recipe, package = _moe_model_code(model, warnings)
        own_assets, custom = False, False
    else:
        model_code, recipe, own_assets = _model_code(model, plan.seq_len, warnings)
        custom, package = _shape(model) not in FLAVORS, "llama3"
    if plan.pp > 1:
        local_batch = plan.micro_batch_size * plan.num_microbatches  # one step's micro-batches, split by PP
    else:
        local_batch = plan.micro_batch_size  # TorchTitan accumulates global / (local × dp) micro-batches
    shard, replicate = (1, plan.dp) if plan.zero == 0 else (plan.dp, 1)
    # TorchTitan's "default" re-shards after forward except under pipelining, as loadmaster's trainer
    reshard = ("always" if plan.pp_reshard_after_forward and plan.pp > 1 else "default") if plan.zero == 3 \
        else "never"
    parallelism = [f"data_parallel_shard_degree={shard}", f"data_parallel_replicate_degree={replicate}",
                   f"fsdp_reshard_after_forward={reshard!r}", f"tensor_parallel_degree={plan.tp}",
                   f"enable_sequence_parallel={plan.sequence_parallel}", f"pipeline_parallel_degree={plan.pp}"]
    if model.is_moe:   # TorchTitan folds EP from the data-parallel shards too
        parallelism += [f"expert_parallel_degree={plan.ep}"]
    if plan.cp > 1:   # TorchTitan shards parameters over data_parallel_shard × cp, as the trainer does
        parallelism += [f"context_parallel_degree={plan.cp}"]
    if plan.pp > 1:
        parallelism += [f"pipeline_parallel_schedule={plan.pp_schedule!r}",
                        f"pipeline_parallel_microbatch_size={plan.micro_batch_size}",
                        f"module_fqns_per_model_part={_stage_fqns(view)!r}"]
    ac = {"none": "None", "full": "FullAC.Config()", "selective": "SelectiveAC.Config()"}[plan.recompute]
    fp8_blocks = set(view.fp8_blocks())
    if fp8_blocks:
        # filter_fqns entries match by substring: "layers.3." names block 3 only, not block 30.
        skipped = ["lm_head"] + [f"layers.{b}." for b in range(model.num_hidden_layers) if b not in fp8_blocks]
        converters = (f"[Float8LinearConverter.Config(recipe_name='rowwise', filter_fqns={skipped!r}, "
                      f"model_compile_enabled={plan.compile})]")
    else:
        converters = "[]"
    run = torchrun_line(plan.world_size, cluster,
                        f"-m torchtitan.train --module {MODULE} --config {FUNCTION}")
    command = f"PYTHONPATH=\"$(dirname \"$0\"):$PYTHONPATH\" {run}"
    loss = ("    config.loss = ChunkedLossWrapper.Config(\n"
            "        loss_fn=CrossEntropyLoss.Config(global_vocab_size=decoder_vocab_size(config.model_spec)))\n"
            if custom else "")
    if own_assets:
        loss += f"    config.hf_assets_path = './assets/hf/{model.name}'\n"
    lines = "\n".join(f"#   {w}" for w in warnings) or "#   none"
    text = f'''\
"""TorchTitan {TORCHTITAN} config (it needs torch 2.13) written by `loadmaster export` from
{Path(plan.source).name} for {model.name}.

Run it with this folder on PYTHONPATH (launch.sh does):
  {run}
Flags after it override fields, e.g. --training.steps 100.
"""
# Plan knobs TorchTitan cannot express as planned:
{lines}
from torchtitan.components.quantization import Float8LinearConverter
from torchtitan.config import CompileConfig, ParallelismConfig, TrainingConfig
from torchtitan.distributed.activation_checkpoint import FullAC, SelectiveAC
from torchtitan.models.common import ComplexRoPE
from torchtitan.models.{package} import config_registry, model_registry
from torchtitan.trainer import Trainer
{_CUSTOM_IMPORTS if custom else ""}

{model_code}

def {FUNCTION}() -> Trainer.Config:
    config = config_registry.{recipe}()
    config.model_spec = _model_spec({converters})
{loss}    config.training = TrainingConfig(
        local_batch_size={local_batch},
        global_batch_size={plan.global_batch_size},
        seq_len={plan.seq_len},
        steps=config.training.steps,
        enable_cpu_offload={bool(sum(view.offload_state))},
        disable_cuda_graphs={plan.pp > 1},  # TorchTitan 0.3 captures no CUDA graph under PP
    )
    config.parallelism = ParallelismConfig(
{"".join(f"        {p},{chr(10)}" for p in parallelism)}    )
    config.activation_checkpoint = {ac}
    config.compile = CompileConfig(enable={plan.compile}, components=["model", "loss"])
    return config
'''
    return ExportResult(target="torchtitan", files={f"{MODULE}.py": text}, command=command, warnings=warnings)
