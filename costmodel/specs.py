"""What is trained (ModelSpec), on what (ClusterSpec) and how much (JobSpec): loaded and validated here."""
from __future__ import annotations

import dataclasses
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .errors import SpecError, build_dataclass, read_yaml, require

REPO_ROOT = Path(os.environ.get("LOADMASTER_HOME", Path(__file__).resolve().parent.parent))
RECIPES = REPO_ROOT / "recipes"
PROFILES = REPO_ROOT / "profiles"

# Keys of a Hugging Face config.json that do not change what a dense decoder costs to train.
_HF_IGNORED = {
    "architectures", "attention_bias", "attention_dropout", "bos_token_id", "eos_token_id", "pad_token_id",
    "hidden_act", "initializer_range", "mlp_bias", "pretraining_tp", "rope_scaling", "torch_dtype", "dtype",
    "transformers_version", "use_cache", "use_sliding_window", "sliding_window", "max_window_layers",
    "bias", "residual_dropout", "embedding_dropout", "_name_or_path", "layer_types", "use_mrope",
    "tokenizer_class", "auto_map", "quantization_config", "generation_config", "output_attentions",
    "output_hidden_states", "return_dict", "is_decoder", "task_specific_params", "finetuning_task",
    "nope_layer_interval", "no_rope_layer_interval",   # read into no_rope_layers (_nope_from_interval)
}
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
    no_rope_layers: list[int] | None = None
    """Per block, 1 if it applies RoPE and 0 if it does not (the Llama 4 / SmolLM3 config key); None: all do."""

    def __post_init__(self) -> None:
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

    def params_per_block(self) -> int:
        """Weights of one block (attention, MLP and two norm vectors)."""
        h, dh = self.hidden_size, int(self.head_dim)
        attn = h * dh * (self.num_attention_heads + 2 * self.kv_heads) + self.num_attention_heads * dh * h
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
            "hidden_act", f"{m.hidden_act!r} is not supported", "use silu (SwiGLU) or gelu")
    require(m.rms_norm_eps > 0, source, "rms_norm_eps", f"is {m.rms_norm_eps}", "it must be positive")
    require(m.rope_theta > 0, source, "rope_theta", f"is {m.rope_theta}", "it must be positive")
    if m.no_rope_layers is not None:
        require(len(m.no_rope_layers) >= m.num_hidden_layers and set(m.no_rope_layers) <= {0, 1}, source,
                "no_rope_layers", f"{m.no_rope_layers} is not one 0/1 entry per block",
                f"give {m.num_hidden_layers} entries, 1 for a block with RoPE, 0 for one without")


def _nope_from_interval(data: dict) -> dict:
    """``no_rope_layers`` from a NoPE interval when a config gives only that: Llama 4 leaves the list empty and
    skips RoPE in every ``nope_layer_interval``-th block (transformers' Llama4TextConfig; SmolLM3 writes the list
    out and its ``no_rope_layer_interval`` too)."""
    every = data.get("nope_layer_interval") or data.get("no_rope_layer_interval")
    if not every or "num_hidden_layers" not in data:
        return {}
    return {"no_rope_layers": [int((i + 1) % int(every) != 0) for i in range(int(data["num_hidden_layers"]))]}


def load_model(ref: str | Path | ModelSpec) -> ModelSpec:
    """A ModelSpec from a spec object, a YAML path, a Hugging Face config.json, or a recipe name."""
    if isinstance(ref, ModelSpec):
        return ref
    path = resolve(ref, "models")
    data = read_yaml(path)
    is_hf = path.suffix == ".json" or "architectures" in data or "transformers_version" in data
    if is_hf:
        bad = sorted(_HF_UNSUPPORTED & data.keys())
        require(not bad, path, bad[0] if bad else "", "is a mixture-of-experts or latent-attention key",
                "loadmaster models dense decoders (Llama family) only")
        nope = {"no_rope_layers": data["no_rope_layers"]} if data.get("no_rope_layers") else _nope_from_interval(data)
        data = {k: v for k, v in data.items() if k not in _HF_IGNORED or k == "hidden_act"}
        data.pop("no_rope_layers", None)
        data.update(nope)
        known = {f.name for f in dataclasses.fields(ModelSpec)}
        extra = sorted(k for k in data if k not in known)
        if extra:
            warnings.warn(f"{path}: ignoring config.json keys {', '.join(extra)}", stacklevel=2)
            data = {k: v for k, v in data.items() if k in known}
        if data.get("head_dim") is None:
            data.pop("head_dim", None)
    if "name" not in data:
        data["name"] = path.stem if path.stem != "config" else path.parent.name
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
        raise SpecError(path, "gpu", f"{spec.gpu!r}: {e.problem}", e.fix or "use a name in profiles/") from None
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


def resolve(ref: str | Path, kind: str) -> Path:
    """A path as given if it exists, else the shipped recipe (or profile) of that name."""
    p = Path(ref)
    if _probe(p.exists):
        return p
    root = PROFILES if kind == "profiles" else RECIPES / kind
    name = str(ref)
    for cand in (root / f"{name}.yaml", root / name):
        if _probe(cand.is_file):
            return cand
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
