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
# HF keys that mean "not a dense decoder": refused rather than silently costed wrong.
_HF_UNSUPPORTED = {"num_local_experts", "num_experts", "n_routed_experts", "moe_intermediate_size",
                   "num_experts_per_tok", "kv_lora_rank", "q_lora_rank"}
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
    rope_scaling: dict | None = dataclasses.field(default=None, hash=False)
    """RoPE frequency scaling as config.json writes it, e.g. Llama-3.1's ``{rope_type: llama3, factor: 8.0,
    low_freq_factor: 1.0, high_freq_factor: 4.0, original_max_position_embeddings: 8192}`` (runtime only; the
    trainer runs llama3 scaling and refuses other types)."""
    attention_bias: bool = False
    """Biases on the query, key, value and output projections (Hugging Face Llama's ``attention_bias``)."""
    qkv_bias: bool = False
    """Biases on the query, key and value projections only (Qwen2; set from model_type qwen2 in a config.json)."""

    def __post_init__(self) -> None:
        if self.num_key_value_heads is None:
            object.__setattr__(self, "num_key_value_heads", self.num_attention_heads)
        if self.head_dim is None and self.num_attention_heads > 0:
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)

    @property
    def gated_mlp(self) -> bool:
        return self.hidden_act in _GATED_ACTS

    @property
    def kv_heads(self) -> int:
        return int(self.num_key_value_heads)  # set in __post_init__

    @property
    def rope_type(self) -> str | None:
        """The RoPE scaling type (``rope_type``, or ``type`` in older config.json files); None without scaling."""
        if not self.rope_scaling:
            return None
        return str(self.rope_scaling.get("rope_type", self.rope_scaling.get("type", "")))

    def params_per_block(self) -> int:
        """Weights of one block (attention, MLP, their biases and two norm vectors)."""
        h, dh = self.hidden_size, int(self.head_dim)
        attn = h * dh * (self.num_attention_heads + 2 * self.kv_heads) + self.num_attention_heads * dh * h
        if self.qkv_bias or self.attention_bias:
            attn += dh * (self.num_attention_heads + 2 * self.kv_heads)
        if self.attention_bias:
            attn += h
        mlp = (3 if self.gated_mlp else 2) * h * self.intermediate_size
        return attn + mlp + 2 * h

    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size

    def num_params(self) -> int:
        """All weights, counting a tied embedding once."""
        head = 0 if self.tie_word_embeddings else self.embedding_params()
        return self.num_hidden_layers * self.params_per_block() + self.embedding_params() + head \
            + self.hidden_size


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
    if m.rope_scaling:
        require(m.rope_type in ROPE_SCALING_KEYS, source, "rope_scaling",
                f"has rope_type {short(m.rope_type)}", f"use one of {', '.join(ROPE_SCALING_KEYS)} or drop it")
        for key in ROPE_SCALING_KEYS[m.rope_type]:
            v = m.rope_scaling.get(key)
            require(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < 1e9, source,
                    f"rope_scaling.{key}", f"is {short(v)}", "it must be a positive number")


# Keys each RoPE scaling type needs (Hugging Face transformers' rope_config_validation names).
ROPE_SCALING_KEYS = {"llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
                     "linear": ("factor",), "dynamic": ("factor",), "yarn": ("factor",)}


def _from_hf_config(data: dict, path: Path) -> dict:
    """The ModelSpec keys of a Hugging Face config.json; every key that is neither one nor pure metadata is
    listed once in a warning (dropout, sliding windows, MLP biases ... are not modelled)."""
    bad = sorted(_HF_UNSUPPORTED & data.keys())
    require(not bad, path, bad[0] if bad else "", "is a mixture-of-experts or latent-attention key",
            "loadmaster models dense decoders (Llama family) only")
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
    if is_hf:
        data = _from_hf_config(data, path)
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


def _probe(test) -> bool:
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
    if not _probe(p.exists):
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
    if kind == "models" and _probe(p.is_dir) and _probe((p / "config.json").is_file):
        return p / "config.json"
    if _probe(p.exists):
        return p
    root = PROFILES if kind == "profiles" else RECIPES / kind
    name = str(ref)
    for cand in (root / f"{name}.yaml", root / name):
        if _probe(cand.is_file):
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
