"""What is trained (ModelSpec), on what (ClusterSpec) and how much (JobSpec): loaded and validated here."""
from __future__ import annotations

import dataclasses
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .errors import SpecError, build_dataclass, read_yaml, require, short

REPO_ROOT = Path(os.environ.get("LOADMASTER_HOME", Path(__file__).resolve().parent.parent))
RECIPES = REPO_ROOT / "recipes"
PROFILES = REPO_ROOT / "profiles"

# Keys of a Hugging Face config.json that describe the checkpoint or inference, never the training math:
# dropped without a word.
_HF_METADATA = {
    "architectures", "bos_token_id", "eos_token_id", "pad_token_id", "torch_dtype", "dtype",
    "transformers_version", "use_cache", "_name_or_path", "tokenizer_class", "auto_map", "generation_config",
    "output_attentions", "output_hidden_states", "return_dict", "is_decoder", "task_specific_params",
    "finetuning_task", "initializer_range",
}
# Qwen2-family config.json files have no key for their q/k/v biases: the architecture implies them.
_QKV_BIAS_TYPES = {"qwen2", "qwen2_moe"}
# Hugging Face MoE keys read under another name (Mixtral, DeepSeek) -> the ModelSpec field they fill.
_HF_RENAMED = {"num_local_experts": "num_experts", "n_routed_experts": "num_experts",
               "n_shared_experts": "num_shared_experts", "aux_loss_alpha": "router_aux_loss_coef"}
# MoE and latent-attention keys that change nothing loadmaster costs or trains, each with why.
_HF_MOE_IGNORED = {
    "output_router_logits": "inference output switch", "router_jitter_noise": "routing noise (0 in the configs)",
    "seq_aux": "DeepSeek's per-sequence balance loss is trained as the batch-level one",
    "n_group": "group-limited routing (see topk_method)", "topk_group": "group-limited routing (see topk_method)",
    "ep_size": "DeepSeek's inference expert-parallel size", "moe_layer_freq": "read as decoder_sparse_step",
    "qk_nope_head_dim": "latent attention (see kv_lora_rank)", "qk_rope_head_dim": "latent attention",
    "v_head_dim": "latent attention", "kv_lora_rank": "latent attention", "q_lora_rank": "latent attention",
    "num_nextn_predict_layers": "multi-token prediction module (not trained here)",
}
_GATED_ACTS = {"silu", "swiglu", "swish"}


@dataclass(kw_only=True, frozen=True)
class ModelSpec:
    """A dense decoder-only transformer, named with Hugging Face config.json keys."""

    hidden_size: int
    """Model width h."""
    intermediate_size: int
    """MLP width (per projection for a gated MLP)."""
    num_hidden_layers: int
    """Transformer blocks L."""
    num_attention_heads: int
    """Query heads a."""
    vocab_size: int
    """Vocabulary V (embedding rows and logits columns)."""
    num_key_value_heads: int | None = None
    """Key/value heads (GQA); default: num_attention_heads."""
    head_dim: int | None = None
    """Per-head width; default: hidden_size // num_attention_heads."""
    tie_word_embeddings: bool = False
    """Whether the output projection shares the embedding's weight."""
    hidden_act: str = "silu"
    """silu (SwiGLU, Llama) or gelu (plain 2-matrix MLP, GPT-3 style)."""
    name: str = ""
    """Display name."""
    model_type: str = "llama"
    """Family tag (informational)."""
    max_position_embeddings: int | None = None
    """Longest sequence the model was trained on (a warning past it, not an error)."""
    rms_norm_eps: float = 1e-5
    """RMSNorm epsilon (runtime only)."""
    rope_theta: float = 10000.0
    """RoPE base (runtime only)."""
    # ---- mixture of experts (Hugging Face names; config.json aliases in _HF_RENAMED) ----
    num_experts: int = 0
    """Routed experts of each MoE block (num_local_experts in Mixtral, n_routed_experts in DeepSeek); 0 = dense."""
    num_experts_per_tok: int = 0
    """Routed experts each token goes to (top-k)."""
    moe_intermediate_size: int | None = None
    """Width of one expert's gated MLP; default intermediate_size (Mixtral's experts are full-width)."""
    num_shared_experts: int = 0
    """Experts every token goes through besides the routed ones (DeepSeek's n_shared_experts)."""
    shared_expert_intermediate_size: int | None = None
    """Width of the shared experts together; default num_shared_experts × moe_intermediate_size."""
    first_k_dense_replace: int = 0
    """The first this many blocks keep a dense MLP of intermediate_size (DeepSeek)."""
    decoder_sparse_step: int = 1
    """Block i is a MoE block when (i + 1) is a multiple of this (Qwen-MoE; DeepSeek's moe_layer_freq 1)."""
    mlp_only_layers: tuple[int, ...] = ()
    """Blocks that keep a dense MLP whatever the step (Qwen-MoE)."""
    norm_topk_prob: bool = True
    """Renormalise the top-k routing weights to sum to one (Mixtral always does)."""
    router_aux_loss_coef: float = 0.001
    """Load-balancing loss coefficient (Switch Transformer form); 0.001 is transformers' default for Mixtral and
    Qwen-MoE configs that leave it out; DeepSeek's aux_loss_alpha."""
    scoring_func: Literal["softmax", "sigmoid"] = "softmax"
    """Router scores: softmax over experts (Mixtral, Qwen) or per-expert sigmoid (DeepSeek-V3)."""
    topk_method: Literal["greedy", "noaux_tc", "group_limited_greedy"] = "greedy"
    """Expert choice: plain top-k, or DeepSeek's bias-corrected / group-limited top-k (trained as plain top-k,
    with a warning)."""
    routed_scaling_factor: float = 1.0
    """Multiplier of the routed experts' weights (DeepSeek-V3: 2.5)."""
    no_rope_layers: list[int] | None = None
    """Per block, 1 if it applies RoPE and 0 if it does not (the Llama 4 / SmolLM3 config key); None: all do."""
    rope_scaling: dict | None = dataclasses.field(default=None, hash=False)
    """RoPE frequency scaling as config.json writes it, e.g. Llama-3.1's ``{rope_type: llama3, factor: 8.0,
    low_freq_factor: 1.0, high_freq_factor: 4.0, original_max_position_embeddings: 8192}`` (runtime only; the
    trainer runs llama3 scaling and refuses other types)."""
    attention_bias: bool = False
    """Biases on the query, key, value and output projections (Hugging Face Llama's ``attention_bias``)."""
    qkv_bias: bool = False
    """Biases on the query, key and value projections only (Qwen2; set from model_type qwen2 in a config.json)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "mlp_only_layers", tuple(self.mlp_only_layers))
        if self.num_key_value_heads is None:
            object.__setattr__(self, "num_key_value_heads", self.num_attention_heads)
        if self.head_dim is None and self.num_attention_heads > 0:
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)

    @property
    def gated_mlp(self) -> bool:
        return self.hidden_act in _GATED_ACTS

    def uses_rope(self, layer: int) -> bool:
        """Whether block ``layer`` applies RoPE (``no_rope_layers``)."""
        return self.no_rope_layers is None or bool(self.no_rope_layers[layer])

    @property
    def rope_share(self) -> float:
        """Share of the blocks that apply RoPE."""
        L = self.num_hidden_layers
        return sum(self.uses_rope(i) for i in range(L)) / L

    @property
    def kv_heads(self) -> int:
        return int(self.num_key_value_heads)  # set in __post_init__

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def expert_width(self) -> int:
        """One routed expert's MLP width."""
        return self.moe_intermediate_size or self.intermediate_size

    @property
    def shared_width(self) -> int:
        """The shared experts' MLP width together (0 without shared experts)."""
        if self.shared_expert_intermediate_size is not None:
            return self.shared_expert_intermediate_size
        return self.num_shared_experts * self.expert_width

    def is_moe_layer(self, i: int) -> bool:
        """Whether block ``i`` (0-based) has experts instead of a dense MLP (Hugging Face's rule)."""
        return (self.is_moe and i >= self.first_k_dense_replace and i not in self.mlp_only_layers
                and (i + 1) % self.decoder_sparse_step == 0)

    def moe_layers_in(self, start: int, count: int) -> int:
        """MoE blocks among blocks ``start .. start + count - 1`` (a pipeline stage's), counted without a loop."""
        if not self.is_moe:
            return 0
        lo, hi, k = max(start, self.first_k_dense_replace), start + count, self.decoder_sparse_step
        sparse = max(0, hi // k - lo // k)   # i in [lo, hi) with (i + 1) % k == 0
        return sparse - sum(1 for i in set(self.mlp_only_layers) if lo <= i < hi and (i + 1) % k == 0)

    def attention_params(self) -> int:
        """Weights of one attention block: q/k/v/o projections and their biases."""
        h, dh = self.hidden_size, int(self.head_dim)
        attn = h * dh * (self.num_attention_heads + 2 * self.kv_heads) + self.num_attention_heads * dh * h
        if self.qkv_bias or self.attention_bias:
            attn += dh * (self.num_attention_heads + 2 * self.kv_heads)
        if self.attention_bias:
            attn += h
        return attn

    def params_per_block(self, layer: int | None = None, active: bool = False) -> int:
        """Weights of block ``layer`` (attention, MLP or router + experts, two norm vectors); ``active``: only
        those one token uses (top-k of the routed experts). ``layer`` None: a dense block."""
        h, mats = self.hidden_size, (3 if self.gated_mlp else 2)
        if layer is None or not self.is_moe_layer(layer):
            mlp = mats * h * self.intermediate_size
        else:
            routed = self.num_experts_per_tok if active else self.num_experts
            mlp = h * self.num_experts + mats * h * (routed * self.expert_width + self.shared_width)
        return self.attention_params() + mlp + 2 * h

    @property
    def rope_type(self) -> str | None:
        """The RoPE scaling type (``rope_type``, or ``type`` in older config.json files); None without scaling."""
        if not self.rope_scaling:
            return None
        return str(self.rope_scaling.get("rope_type", self.rope_scaling.get("type", "")))

    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size

    def num_params(self) -> int:
        """All weights, counting a tied embedding once."""
        head = 0 if self.tie_word_embeddings else self.embedding_params()
        return self.block_params() + self.embedding_params() + head + self.hidden_size

    def block_params(self, active: bool = False) -> int:
        """Weights of all blocks (``active``: those one token uses)."""
        L, n_moe = self.num_hidden_layers, self.moe_layers_in(0, self.num_hidden_layers)
        first_moe = next((i for i in range(L) if self.is_moe_layer(i)), None) if n_moe else None
        moe = self.params_per_block(first_moe, active) if n_moe else 0
        return (L - n_moe) * self.params_per_block() + n_moe * moe


def _validate_model(m: ModelSpec, source: str | Path) -> None:
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size",
                "num_key_value_heads", "head_dim"):
        v = getattr(m, key)
        require(v >= 1, source, key, f"is {v}", "it must be a positive integer")
        require(v <= 10**7, source, key, f"is {v}, beyond any trainable model", "check the value")
    require(m.num_attention_heads % m.kv_heads == 0, source, "num_key_value_heads",
            f"{m.kv_heads} does not divide num_attention_heads {m.num_attention_heads}",
            "GQA needs query heads to be a multiple of key/value heads")
    require(m.hidden_act in _GATED_ACTS | {"gelu", "gelu_new", "gelu_pytorch_tanh", "relu"}, source,
            "hidden_act", f"{short(m.hidden_act)} is not supported", "use silu (SwiGLU) or gelu")
    require(m.rms_norm_eps > 0, source, "rms_norm_eps", f"is {m.rms_norm_eps}", "it must be positive")
    require(m.rope_theta > 0, source, "rope_theta", f"is {m.rope_theta}", "it must be positive")
    if m.no_rope_layers is not None:
        require(len(m.no_rope_layers) >= m.num_hidden_layers and set(m.no_rope_layers) <= {0, 1}, source,
                "no_rope_layers", f"{m.no_rope_layers} is not one 0/1 entry per block",
                f"give {m.num_hidden_layers} entries, 1 for a block with RoPE, 0 for one without")
    _validate_moe(m, source)
    if m.rope_scaling:
        require(m.rope_type in ROPE_SCALING_KEYS, source, "rope_scaling",
                f"has rope_type {short(m.rope_type)}", f"use one of {', '.join(ROPE_SCALING_KEYS)} or drop it")
        for key in ROPE_SCALING_KEYS[m.rope_type]:
            v = m.rope_scaling.get(key)
            require(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < 1e9, source,
                    f"rope_scaling.{key}", f"is {short(v)}", "it must be a positive number")


_MOE_KEYS = ("num_experts_per_tok", "moe_intermediate_size", "num_shared_experts", "shared_expert_intermediate_size",
             "first_k_dense_replace", "mlp_only_layers")


def _validate_moe(m: ModelSpec, source: str | Path) -> None:
    """The mixture-of-experts fields: consistent with each other, or absent from a dense model."""
    if not m.is_moe:
        require(m.num_experts == 0, source, "num_experts", f"is {m.num_experts}", "use 0 (dense) or more experts")
        given = [k for k in _MOE_KEYS if getattr(m, k) not in (0, None, ())]
        require(not given, source, given[0] if given else "", "is a mixture-of-experts key on a dense model "
                "(num_experts is 0)", "set num_experts (num_local_experts, n_routed_experts) or drop the key")
        return
    require(1 <= m.num_experts_per_tok <= m.num_experts, source, "num_experts_per_tok",
            f"is {m.num_experts_per_tok} with {m.num_experts} experts", f"use 1 to {m.num_experts}")
    for key in ("moe_intermediate_size", "shared_expert_intermediate_size"):
        v = getattr(m, key)
        require(v is None or 1 <= v <= 10**7, source, key, f"is {v}", "it must be a positive integer")
    for key, lo in (("num_shared_experts", 0), ("first_k_dense_replace", 0), ("decoder_sparse_step", 1)):
        v = getattr(m, key)
        require(lo <= v <= m.num_hidden_layers + 1000 * (key == "num_shared_experts"), source, key, f"is {v}",
                f"use {lo} or more")
    bad = [i for i in m.mlp_only_layers if not 0 <= i < m.num_hidden_layers]
    require(not bad, source, "mlp_only_layers", f"{bad} are not blocks of {m.num_hidden_layers}",
            f"use indices 0 to {m.num_hidden_layers - 1}")
    require(any(m.is_moe_layer(i) for i in range(m.num_hidden_layers)), source, "first_k_dense_replace",
            "leaves no block with experts", "lower first_k_dense_replace / decoder_sparse_step or set num_experts: 0")
    require(m.hidden_act in _GATED_ACTS, source, "hidden_act", f"{m.hidden_act!r} with experts",
            "the trainer's experts are SwiGLU MLPs: use silu")
    require(m.router_aux_loss_coef >= 0, source, "router_aux_loss_coef", f"is {m.router_aux_loss_coef}",
            "use 0 (no balance loss) or a positive coefficient")
    require(m.routed_scaling_factor > 0, source, "routed_scaling_factor", f"is {m.routed_scaling_factor}",
            "it must be positive")


def _hf_router_type(data: dict, path: Path) -> None:
    """One line for a router the trainer does not implement (its key named), before the type check words it."""
    for key, known in (("scoring_func", ("softmax", "sigmoid")),
                       ("topk_method", ("greedy", "noaux_tc", "group_limited_greedy"))):
        if key in data and data[key] not in known:
            raise SpecError(path, key, f"router type {data[key]!r} is not supported",
                            f"use one of {', '.join(known)} (token-choice top-k routing)")


def _renamed(data: dict) -> dict:
    """Mixtral's and DeepSeek's names of MoE keys as the ModelSpec fields (YAML recipes may use them too)."""
    out = {k: v for k, v in data.items() if k not in _HF_RENAMED}
    for key, field in _HF_RENAMED.items():
        if data.get(key) is not None:
            out.setdefault(field, data[key])
    return out


def _hf_moe(data: dict, path: Path) -> dict:
    """A config.json's mixture-of-experts and latent-attention keys as ModelSpec fields, with a warning for what
    is trained or costed differently."""
    _hf_router_type(data, path)
    freq = data.get("moe_layer_freq", 1)
    require(freq == 1, path, "moe_layer_freq", f"is {freq}", "give the pattern as decoder_sparse_step instead")
    if data.get("kv_lora_rank") or data.get("q_lora_rank"):
        dh = data.get("v_head_dim") or data.get("head_dim")
        if dh:
            data["head_dim"] = dh
        warnings.warn(f"{path}: multi-head latent attention (kv_lora_rank) is costed and trained as multi-head "
                      f"attention with {data.get('num_key_value_heads')} key/value heads of head_dim {dh}; its "
                      "low-rank projections are not modelled (the deepseek-v3 recipe uses GQA of matching size)",
                      stacklevel=3)
    if data.get("topk_method", "greedy") != "greedy":
        warnings.warn(f"{path}: topk_method {data['topk_method']!r} is trained as plain top-k over the router "
                      "scores (no expert bias update, no group limit)", stacklevel=3)
    if data.get("num_nextn_predict_layers"):
        warnings.warn(f"{path}: the multi-token-prediction module (num_nextn_predict_layers) is not trained or "
                      "costed", stacklevel=3)
    for key in _HF_MOE_IGNORED:
        data.pop(key, None)
    if data.get("num_experts") is None:   # dense configs of MoE families (e.g. Qwen2) spell it null
        data.pop("num_experts", None)
    for key in ("moe_intermediate_size", "shared_expert_intermediate_size", "mlp_only_layers"):
        if data.get(key) is None:
            data.pop(key, None)
    return data


def _nope_from_interval(data: dict) -> dict:
    """``no_rope_layers`` from a NoPE interval when a config gives only that: Llama 4 leaves the list empty and
    skips RoPE in every ``nope_layer_interval``-th block (transformers' Llama4TextConfig; SmolLM3 writes the list
    out and its ``no_rope_layer_interval`` too)."""
    every = data.get("nope_layer_interval") or data.get("no_rope_layer_interval")
    if not every or "num_hidden_layers" not in data:
        return {}
    return {"no_rope_layers": [int((i + 1) % int(every) != 0) for i in range(int(data["num_hidden_layers"]))]}

# Keys each RoPE scaling type needs (Hugging Face transformers' rope_config_validation names).
ROPE_SCALING_KEYS = {"llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
                     "linear": ("factor",), "dynamic": ("factor",), "yarn": ("factor",)}


def _from_hf_config(data: dict, path: Path) -> dict:
    """The ModelSpec keys of a Hugging Face config.json; every key that is neither one nor pure metadata is
    listed once in a warning (dropout, sliding windows, MLP biases ... are not modelled)."""
    known = {f.name for f in dataclasses.fields(ModelSpec)}
    ignored = sorted(k for k in data if k not in known and k not in _HF_METADATA)
    if ignored:
        shown = ", ".join(f"{k}={short(data[k], 24)}" for k in ignored)
        warnings.warn(f"{path}: ignoring config.json keys {shown} (not modelled by loadmaster)", stacklevel=3)
    out = {k: v for k, v in data.items() if k in known}
    if out.get("head_dim") is None:
        out.pop("head_dim", None)
    if data.get("model_type") in _QKV_BIAS_TYPES:
        out.setdefault("qkv_bias", True)
    if out.get("rope_scaling") is None:
        out.pop("rope_scaling", None)
    return out


def load_model(ref: str | Path | ModelSpec) -> ModelSpec:
    """A ModelSpec from a spec object, a YAML path, a Hugging Face config.json, or a recipe name."""
    if isinstance(ref, ModelSpec):
        return ref
    path = resolve(ref, "models")
    data = read_yaml(path)
    is_hf = path.suffix == ".json" or "architectures" in data or "transformers_version" in data
    data = _renamed(data)
    if is_hf:
        data = _hf_moe(data, path)
        nope = {"no_rope_layers": data["no_rope_layers"]} if data.get("no_rope_layers") else _nope_from_interval(data)
        for key in ("nope_layer_interval", "no_rope_layer_interval", "no_rope_layers"):
            data.pop(key, None)
        data = _from_hf_config(data, path)
        data.update(nope)
    if "name" not in data:
        data["name"] = _default_name(path)
    spec = build_dataclass(ModelSpec, data, path, what="model")
    _validate_model(spec, path)
    return spec


@dataclass(kw_only=True, frozen=True)
class ClusterSpec:
    """GPUs the job runs on: identical nodes of identical GPUs."""

    nodes: int
    """Number of nodes."""
    gpus_per_node: int
    """GPUs in each node (the tensor-parallel group stays inside one node unless asked)."""
    gpu: str
    """Hardware profile: a name in profiles/ (h100-sxm, h200, ...) or a path to a profile YAML."""
    name: str = ""
    """Display name."""
    intra_node_bandwidth_gbps: float | None = None
    """Override of the profile's per-GPU intra-node bus bandwidth, GB/s."""
    inter_node_bandwidth_gbps: float | None = None
    """Override of the profile's per-GPU inter-node bandwidth, GB/s (e.g. 50 for 400 Gb/s per GPU)."""
    host_memory_gib: float | None = None
    """CPU memory per node for offloaded state and activations; default: the profile's."""

    @property
    def num_gpus(self) -> int:
        return self.nodes * self.gpus_per_node


def load_cluster(ref: str | Path | ClusterSpec) -> ClusterSpec:
    """A ClusterSpec from a spec object, a YAML path or a recipe name (``8xh100``)."""
    if isinstance(ref, ClusterSpec):
        return ref
    path = resolve(ref, "clusters")
    data = read_yaml(path)
    data.setdefault("name", path.stem)
    spec = build_dataclass(ClusterSpec, data, path, what="cluster")
    for key in ("nodes", "gpus_per_node"):
        v = getattr(spec, key)
        require(1 <= v <= 1_000_000, path, key, f"is {v}", "it must be between 1 and 1,000,000")
    require(spec.num_gpus <= 1_000_000, path, "nodes", f"{spec.num_gpus} GPUs in all",
            "loadmaster plans up to 1,000,000 GPUs")
    for key in ("intra_node_bandwidth_gbps", "inter_node_bandwidth_gbps", "host_memory_gib"):
        v = getattr(spec, key)
        require(v is None or v > 0, path, key, f"is {v}", "it must be positive")
    from .hardware import load_profile  # a wrong gpu name is a cluster error, found now
    try:
        load_profile(spec.gpu)
    except SpecError as e:
        raise SpecError(path, "gpu", f"{short(spec.gpu)}: {e.problem}", e.fix or "use a name in profiles/") from None
    return spec


@dataclass(kw_only=True, frozen=True)
class JobSpec:
    """What one optimizer step processes."""

    global_batch_size: int
    """Sequences per optimizer step."""
    seq_len: int
    """Tokens per sequence."""
    model: str | None = None
    """Optional model recipe name or path."""
    cluster: str | None = None
    """Optional cluster recipe name or path."""


def load_job(ref: str | Path | JobSpec) -> JobSpec:
    if isinstance(ref, JobSpec):
        return ref
    path = resolve(ref, "jobs")
    spec = build_dataclass(JobSpec, read_yaml(path), path, what="job")
    require(spec.global_batch_size >= 1, path, "global_batch_size", f"is {spec.global_batch_size}",
            "it must be a positive integer")
    require(spec.seq_len >= 1, path, "seq_len", f"is {spec.seq_len}", "it must be a positive integer")
    return spec


def shipped(kind: str) -> list[str]:
    """Names of the shipped recipes of one kind (models, clusters, jobs) or profiles."""
    root = PROFILES if kind == "profiles" else RECIPES / kind
    return sorted(p.stem for p in root.glob("*.yaml"))


def probe(test) -> bool:
    """``test()`` (exists/is_file), False where the OS refuses the name itself (too long, NUL byte)."""
    try:
        return test()
    except (OSError, ValueError):
        return False


def _default_name(path: Path) -> str:
    """A model's display name: the file's stem, its folder's for a config.json, the repository's for a file
    in the Hugging Face cache (.../models--ORG--NAME/snapshots/REVISION/config.json)."""
    if path.stem != "config":
        return path.stem
    if path.parent.parent.name == "snapshots":
        return path.parent.parent.parent.name.split("--")[-1]
    return path.parent.name


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def _hub_config(repo_id: str) -> Path:
    """config.json of a Hugging Face hub model, from the local cache or the hub (huggingface_hub)."""
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise SpecError(repo_id, "<file>", "is not a file or shipped model; as a Hugging Face hub id it needs "
                        "huggingface_hub", "pip install huggingface_hub, or give the path of its config.json") from None
    try:
        return Path(hf_hub_download(repo_id=repo_id, filename="config.json"))
    except Exception as e:  # offline, gated, unknown repository: all one answer for the user
        raise SpecError(repo_id, "<file>", f"is not a file or shipped model, and its config.json is neither in the "
                        f"Hugging Face cache nor reachable on the hub ({type(e).__name__})",
                        "download config.json where the hub is reachable and give its path (gated models need "
                        "`huggingface-cli login`)") from None


def portable_ref(ref: str | Path, kind: str) -> str:
    """A reference to a spec file that works from any directory: the shipped name for a shipped recipe, the
    absolute path for any other file, else ``ref`` itself (a shipped name or a hub id)."""
    p = Path(ref)
    if not probe(p.exists):
        return str(ref)
    full = p.resolve()
    root = (PROFILES if kind == "profiles" else RECIPES / kind).resolve()
    if full.parent == root and full.suffix == ".yaml":
        return full.stem
    return str(full)


def resolve(ref: str | Path, kind: str) -> Path:
    """A path as given if it exists (for a model, a folder holding config.json: a Hugging Face snapshot),
    else the shipped recipe (or profile) of that name, else (models) a Hugging Face hub id."""
    p = Path(ref)
    if kind == "models" and probe(p.is_dir) and probe((p / "config.json").is_file):
        return p / "config.json"
    if probe(p.exists):
        return p
    root = PROFILES if kind == "profiles" else RECIPES / kind
    name = str(ref)
    for cand in (root / f"{name}.yaml", root / name):
        if probe(cand.is_file):
            return cand
    if kind == "models" and _HUB_ID.fullmatch(name) and not name.endswith((".yaml", ".yml", ".json")):
        return _hub_config(name)
    names = shipped(kind)
    import difflib
    close = difflib.get_close_matches(name, names, n=3)
    hint = f"did you mean {', '.join(close)}?" if close else f"shipped: {', '.join(names)}"
    raise SpecError(name, "<file>", f"is neither a file nor a shipped {kind[:-1] if kind != 'profiles' else 'profile'}",
                    hint)


def as_dict(spec: Any) -> dict:
    """A spec as the plain dict its YAML file holds (defaults left out where they equal the field default)."""
    out = {}
    for f in dataclasses.fields(spec):
        v = getattr(spec, f.name)
        if f.default is not dataclasses.MISSING and v == f.default:
            continue
        out[f.name] = v
    return out
