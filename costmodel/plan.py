"""The plan: the one schema the planner writes, `predict` costs and the trainer executes."""
from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml

from .errors import SpecError, build_dataclass, read_yaml, require
from .specs import ClusterSpec, ModelSpec, resolve

PerStage = int | list[int] | None
PER_STAGE_KEYS = ("recompute_layers", "offload_activation_layers", "offload_state_layers", "fp8_layers")
"""The plan keys that give a block count per pipeline stage (an int for every stage, or a list)."""
KERNEL_KEYS = ("rope_impl", "loss_impl", "norm_impl", "swiglu_impl")
"""The plan keys that choose kernels (costmodel.kernels prices each choice; launcher.runtime.kernels runs it)."""
LEGACY_KERNELS = {"rope_impl": "eager_transposed", "loss_impl": "eager", "norm_impl": "eager", "swiglu_impl": "eager"}
"""What the trainer ran before the plan chose kernels: run records without a ``kernels`` field are priced as this."""


def even_split(num_layers: int, num_stages: int) -> list[int]:
    """Blocks per stage as even as possible, the earlier stages taking the remainder."""
    return [num_layers // num_stages + (1 if i < num_layers % num_stages else 0) for i in range(num_stages)]


def vocab_matrices(first, last, num_stages: int, tied: bool):
    """Vocabulary × hidden matrices a stage holds: the embedding on the first stage, the output projection on
    the last, one shared matrix when a single stage ties them (tied embeddings never span stages: check_plan).
    ``first`` and ``last`` may be 0/1 arrays over stages or candidates."""
    if num_stages == 1:
        return 1.0 if tied else 2.0
    return first + last


@dataclass(kw_only=True, frozen=True)
class Plan:
    """How one training job is parallelised and which memory techniques each pipeline stage uses.

    ``zero`` levels, as executed with FSDP2 (launcher.runtime.parallel.fsdp.apply_fsdp):
    0 replicates parameters, gradients and optimizer state (FSDP2 on a (dp, 1) HSDP mesh: DDP-like
    all-reduce); 1 is executed as 2, because FSDP2 cannot shard the optimizer state alone (a warning says
    so); 2 shards fp32 parameters, gradients and AdamW state and keeps the bf16 parameters unsharded from
    forward to backward (``reshard_after_forward=False``); 3 also re-shards them after forward.
    """

    global_batch_size: int
    """Sequences per optimizer step."""
    micro_batch_size: int
    """Sequences per micro-batch per data-parallel rank."""
    seq_len: int
    """Tokens per sequence."""
    dp: int
    """Data-parallel (FSDP) degree."""
    tp: int
    """Tensor-parallel degree (Megatron-style column/row split with DTensor)."""
    pp: int
    """Pipeline-parallel degree (ranks in the pipeline)."""
    ep: int = 1
    """Expert-parallel degree, folded from dp (as TorchTitan does): each group of ``ep`` consecutive data-parallel
    ranks splits a MoE block's routed experts among its members and exchanges tokens with all-to-all; expert
    weights are FSDP-sharded over the remaining dp / ep ranks, other weights over all dp ranks. 1 = no EP."""
    moe_imbalance: float | None = None
    """Routed tokens on the busiest expert-parallel rank over the mean (>= 1), for the cost model: the trainer is
    dropless, every rank waits for the busiest one in the all-to-all. None = the runtime constant
    ``expert_load_imbalance`` (profiles/runtime/loadmaster.yaml)."""
    cp: int = 1
    """Context-parallel degree: each sequence is cut over cp ranks, which exchange keys and values so that every
    query still attends to its whole causal prefix (PyTorch's ``context_parallel``, ring attention with causal load
    balancing: the sequence cut into 2·cp chunks, rank i holding chunks i and 2·cp-1-i). FSDP shards parameters,
    gradients and optimizer state over dp × cp; the device mesh is (pp, dp, cp, tp), tp innermost. Composes with
    tp (each cp share is split again over tp under sequence parallelism), pp (stages pass cp shares), zero 2/3,
    checkpointing, offload, compile and float8; zero 0 is refused (nothing to replicate over cp ranks that share
    parameters); CUDA only (the trainer says so on a CPU)."""
    cp_rotate: Literal["allgather", "alltoall"] = "allgather"
    """How context parallelism brings each rank the other ranks' keys and values, per block and pass: allgather
    (one all-gather, PyTorch's and TorchTitan's default) or alltoall (a ring of cp - 1 sends to the next rank, each
    overlapped with one chunk's attention, as Megatron-LM's p2p). Backward returns the K/V gradients by a ring
    either way."""
    zero: Literal[0, 1, 2, 3]
    """Sharding level, see the class docstring."""
    recompute: Literal["none", "full", "selective"]
    """Activation checkpointing: none, full (save block input only) or selective (save matmul and
    attention outputs, recompute elementwise ops)."""
    recompute_layers: PerStage = None
    """Checkpointed blocks per stage (the first N of each stage): int, list per stage, or null = all."""
    offload_activation_layers: PerStage = 0
    """First N blocks of a stage (after the checkpointed ones) keep saved activations in pinned CPU memory."""
    offload_state_layers: PerStage = 0
    """First N blocks of a stage keep params, grads and optimizer state on CPU (FSDP2 CPUOffloadPolicy);
    their optimizer step runs on the CPU."""
    fp8_layers: PerStage = 0
    """Blocks per stage whose Linear layers run in float8 (torchao; needs compile to pay)."""
    fp8_rotation_steps: int = 0
    """>0: the set of float8 blocks rotates every this many steps (DPQuant-style); 0: fixed set."""
    fp8_temperature: float = 0.0
    """How a rotating float8 set is chosen each period: 0 = the deterministic sliding window (the set shifts by
    fp8_layers blocks); > 0 = sampled, loss-aware: each block of a stage is drawn with weight
    sensitivity^(-1/T), its loss sensitivity to float8 as the trainer measures it (launcher/runtime/parallel/
    fp8_schedule.py). At 1 a block twice as sensitive is drawn half as often; larger T tends to uniform sampling;
    every block keeps a nonzero chance. Needs fp8_rotation_steps > 0."""
    fp8_recipe: Literal["tensorwise", "rowwise"] = "tensorwise"
    """torchao float8 scaling recipe."""
    layers_per_stage: list[int] | None = None
    """Blocks of each pipeline stage (pp * virtual_stages entries); null = as even as possible."""
    pp_schedule: Literal["1F1B", "Interleaved1F1B", "GPipe"] = "1F1B"
    """Pipeline schedule (torch.distributed.pipelining names)."""
    virtual_stages: int = 1
    """Stages per pipeline rank (2 or more only with Interleaved1F1B)."""
    sequence_parallel: bool = True
    """With tp > 1: shard norms and residuals along the sequence (Korthikanti's sequence parallelism)."""
    vocab_parallel: bool = True
    """With tp > 1: shard the embedding, the output projection and the loss over the vocabulary (TorchTitan's
    loss parallel, Megatron's vocab-parallel embedding); false replicates them on every TP rank."""
    optimizer_impl: Literal["fused", "foreach"] = "fused"
    """AdamW implementation: fused (one kernel per parameter group) or foreach (several passes, with a
    temporary copy of the local fp32 parameters during the step)."""
    rope_impl: Literal["eager", "eager_transposed", "liger"] = "eager"
    """RoPE kernels of eager (not compiled) blocks: eager (rotate-half on the sequence-major q and k, no transposes,
    a written-out backward), eager_transposed (the trainer's first RoPE on (batch, heads, seq, dim) views: what runs
    recorded without a ``kernels`` field ran), liger (liger-kernel's fused Triton kernel, in place)."""
    loss_impl: Literal["eager", "compiled", "liger_fused"] = "eager"
    """Cross-entropy: eager (fp32 copy of the logits, fp32 log-softmax saved), compiled (torch.compile of the loss:
    the upcast fused into its reductions, no fp32 copy), liger_fused (liger-kernel's fused linear cross-entropy:
    the output projection and the loss in token chunks, the logits never materialised; tp 1, pp 1)."""
    norm_impl: Literal["eager", "liger"] = "eager"
    """RMSNorm kernels of eager blocks: PyTorch's fused RMSNorm, or liger-kernel's."""
    swiglu_impl: Literal["eager", "liger"] = "eager"
    """SwiGLU activation of eager blocks: PyTorch's SiLU and multiply, or liger-kernel's fused SiLU-multiply
    (saves one MLP-wide tensor less; gated MLPs only)."""
    pp_reshard_after_forward: bool = False
    """With pp > 1 and zero 3: re-shard bf16 parameters after every micro-batch's forward (all-gathered again for
    each forward and backward) instead of keeping them unsharded across the step's micro-batches."""
    compile: bool = False
    """torch.compile each transformer block (after AC, before FSDP)."""
    grad_reduce: Literal["last", "every"] = "last"
    """Gradient accumulation: "last" turns FSDP2's gradient sync off until the last micro-batch (fp32
    unsharded gradients are kept meanwhile: 4 B per parameter of the stage); "every" reduce-scatters after
    each micro-batch (more communication, no unsharded buffer). Pipelines reduce once per step ("last")."""
    model: str | None = None
    """Model recipe name or path this plan was made for (launch uses it when --model is not given)."""
    cluster: str | None = None
    """Cluster recipe name or path this plan was made for."""
    source: str = dataclasses.field(default="<plan>", init=False, compare=False, repr=False)
    """Where the plan was read from (error messages name it); not a plan key."""

    # ---- derived quantities -------------------------------------------------------------------
    @property
    def world_size(self) -> int:
        """GPUs the plan runs on: dp × cp × tp × pp."""
        return self.dp * self.cp * self.tp * self.pp

    @property
    def num_stages(self) -> int:
        return self.pp * self.virtual_stages

    @property
    def num_microbatches(self) -> int:
        """Micro-batches per data-parallel rank per optimizer step."""
        return self.global_batch_size // (self.micro_batch_size * self.dp)

    @property
    def tokens_per_step(self) -> int:
        return self.global_batch_size * self.seq_len

    def stage_layers(self, num_layers: int) -> list[int]:
        """Blocks per stage, the given split or the even one (earlier stages take the remainder)."""
        if self.layers_per_stage is not None:
            return list(self.layers_per_stage)
        return even_split(num_layers, self.num_stages)

    def per_stage(self, key: str, num_layers: int) -> list[int]:
        """A per-stage knob as one int per stage; recompute_layers=null means all blocks (if recompute)."""
        layers = self.stage_layers(num_layers)
        v = getattr(self, key)
        if key == "recompute_layers":
            if self.recompute == "none":
                return [0] * len(layers)
            if v is None:
                return list(layers)
        if isinstance(v, list):
            return list(v)
        return [min(int(v or 0), n) for n in layers]

    def fp8_share(self, num_layers: int) -> float:
        """Share of block-steps in float8: the float8 blocks of every stage over all blocks (a rotating set keeps
        its count, so this holds at every step). The quantity a float8 budget bounds (``parse_fp8_budget``)."""
        return sum(self.per_stage("fp8_layers", num_layers)) / num_layers

    def replace(self, **changes) -> "Plan":
        new = dataclasses.replace(self, **changes)
        object.__setattr__(new, "source", self.source)
        return new

    def to_dict(self) -> dict:
        out = {}
        for f in dataclasses.fields(self):
            if not f.init:
                continue
            v = getattr(self, f.name)
            required = f.default is dataclasses.MISSING
            if required or v != f.default:
                out[f.name] = v
        return out

    def to_yaml(self) -> str:
        """The plan's YAML, per-stage lists on one line each (``[19, 21, 21, 19]``), not one item a line."""
        return yaml.dump(self.to_dict(), Dumper=_FlowListDumper, sort_keys=False)


class _FlowListDumper(yaml.SafeDumper):
    """SafeDumper writing lists of numbers in flow style; everything else as safe_dump does."""


_FlowListDumper.add_representer(list, lambda dumper, data: dumper.represent_sequence(
    "tag:yaml.org,2002:seq", data, flow_style=all(isinstance(x, (int, float)) for x in data)))


def world_formula(plan: Plan) -> str:
    """The plan's world size spelled out for messages: "dp × cp × tp × pp = 4 × 2 × 1 × 1 = 8"."""
    return (f"dp × cp × tp × pp = {plan.dp} × {plan.cp} × {plan.tp} × {plan.pp} = {plan.world_size}")


def tp_choices(model: ModelSpec) -> list[int]:
    """Tensor-parallel degrees that divide every sharded width of the model (at most the first 12)."""
    n = math.gcd(math.gcd(model.num_attention_heads, model.kv_heads),
                 math.gcd(model.intermediate_size, model.vocab_size))
    return [d for d in range(1, n + 1) if n % d == 0][:12]


def parse_plan(data: dict, source: str | Path = "<plan>") -> Plan:
    """A Plan from a dict, with every check that needs no model or cluster."""
    plan = build_dataclass(Plan, data, source, what="plan")
    object.__setattr__(plan, "source", str(source))
    for key in ("global_batch_size", "micro_batch_size", "seq_len", "dp", "tp", "pp", "cp", "ep", "virtual_stages"):
        v = getattr(plan, key)
        require(v >= 1, source, key, f"is {v}", "it must be a positive integer")
        require(v <= 10**9, source, key, f"is {v}, beyond any cluster or batch", "check the value")
    require(plan.dp % plan.ep == 0, source, "ep", f"{plan.ep} does not divide dp {plan.dp} (expert parallelism is "
            "folded from the data-parallel ranks)", f"use ep in {[e for e in range(1, plan.dp + 1) if plan.dp % e == 0][:12]}")
    require(plan.moe_imbalance is None or 1.0 <= plan.moe_imbalance <= 64.0, source, "moe_imbalance",
            f"is {plan.moe_imbalance}", "use the busiest rank's routed tokens over the mean: 1 (balanced) or more")
    require(plan.fp8_rotation_steps >= 0, source, "fp8_rotation_steps", f"is {plan.fp8_rotation_steps}",
            "use 0 (fixed set) or a positive step count")
    require(plan.fp8_temperature >= 0, source, "fp8_temperature", f"is {plan.fp8_temperature}",
            "use 0 (sliding window) or a positive temperature (1: drawn in inverse proportion to sensitivity)")
    require(not plan.fp8_temperature or plan.fp8_rotation_steps > 0, source, "fp8_temperature",
            f"is {plan.fp8_temperature} with fp8_rotation_steps 0 (a fixed float8 set is never drawn)",
            "set fp8_rotation_steps (the period between draws) or fp8_temperature: 0")
    fp8 = plan.fp8_layers if isinstance(plan.fp8_layers, list) else [plan.fp8_layers or 0]
    require(not plan.fp8_rotation_steps or any(fp8), source, "fp8_rotation_steps",
            f"is {plan.fp8_rotation_steps} with fp8_layers 0", "set fp8_layers or drop fp8_rotation_steps")
    if plan.cp > 1:
        # context_parallel balances causal attention by cutting the sequence into 2·cp chunks (without equal
        # chunks PyTorch silently turns the balancing off, which the cost model does not describe)
        fits = [c for c in (2, 4, 8, 16, 32, 64) if plan.seq_len % (2 * c) == 0]
        require(plan.seq_len % (2 * plan.cp) == 0, source, "cp",
                f"{plan.cp} does not cut seq_len {plan.seq_len} into 2 × cp = {2 * plan.cp} equal chunks (causal "
                "load balancing gives each context-parallel rank two of them)",
                f"use cp in {fits}" if fits else f"use a seq_len that is a multiple of {2 * plan.cp}")
        require(plan.zero != 0, source, "zero", f"0 (replicated) with cp {plan.cp}: the trainer shards parameters "
                "over dp × cp (FSDP2, as TorchTitan)", "use zero: 2 or 3 with cp > 1")
    per_mb = plan.micro_batch_size * plan.dp
    require(plan.global_batch_size % per_mb == 0, source, "global_batch_size",
            f"{plan.global_batch_size} is not a multiple of micro_batch_size × dp = {per_mb}",
            f"use a multiple of {per_mb} or change micro_batch_size/dp")
    if plan.pp_schedule == "Interleaved1F1B":
        require(plan.virtual_stages >= 2 and plan.pp >= 2, source, "virtual_stages",
                f"Interleaved1F1B needs pp ≥ 2 and virtual_stages ≥ 2 (got pp={plan.pp}, "
                f"virtual_stages={plan.virtual_stages})", "set virtual_stages: 2 or use pp_schedule: 1F1B")
        # torch.distributed.pipelining's ScheduleInterleaved1F1B runs the micro-batches in rounds of about pp
        rounds = max(1, plan.num_microbatches // plan.pp)
        require(plan.num_microbatches % rounds == 0, source, "micro_batch_size",
                f"Interleaved1F1B splits its {plan.num_microbatches} micro-batches into {rounds} rounds "
                f"(micro-batches // pp), which must divide them", "make the micro-batch count a multiple of pp")
    else:
        require(plan.virtual_stages == 1, source, "virtual_stages",
                f"is {plan.virtual_stages} with {plan.pp_schedule}", "use pp_schedule: Interleaved1F1B")
    require(plan.pp == 1 or plan.grad_reduce == "last", source, "grad_reduce",
            "torch.distributed.pipelining reduces gradients once per step", "use grad_reduce: last with pp > 1")
    if plan.pp > 1:
        require(plan.num_microbatches >= plan.pp, source, "micro_batch_size",
                f"{plan.num_microbatches} micro-batches per step cannot fill {plan.pp} pipeline stages",
                f"make global_batch_size / (micro_batch_size × dp) at least {plan.pp}")
    if plan.layers_per_stage is not None:
        require(len(plan.layers_per_stage) == plan.num_stages, source, "layers_per_stage",
                f"has {len(plan.layers_per_stage)} entries for {plan.num_stages} stages",
                "give one entry per stage (pp × virtual_stages)")
        require(all(n >= 1 for n in plan.layers_per_stage), source, "layers_per_stage",
                f"{plan.layers_per_stage} has an empty stage", "every stage needs at least one block")
    for key in PER_STAGE_KEYS:
        v = getattr(plan, key)
        vals = v if isinstance(v, list) else [v] if v is not None else []
        require(all(x >= 0 for x in vals), source, key, f"{v} is negative", "use 0 or more blocks")
        if isinstance(v, list):
            require(len(v) == plan.num_stages, source, key, f"has {len(v)} entries for {plan.num_stages} stages",
                    "give one int per stage or a single int")
    if plan.zero == 3 and plan.pp > 1 and not plan.pp_reshard_after_forward:
        warnings.warn(f"{source}: zero 3 with pp > 1 runs as zero 2: pipeline stages keep their parameters "
                      "unsharded across micro-batches (as TorchTitan does; pp_reshard_after_forward: true re-shards "
                      "them)", stacklevel=2)
    if plan.zero == 1:
        warnings.warn(f"{source}: zero 1 runs as zero 2: FSDP2 cannot shard optimizer state alone",
                      stacklevel=2)
    if plan.fp8_layers and not plan.compile:
        warnings.warn(f"{source}: float8 without compile is slower than bf16 on H100/H200; set compile: true",
                      stacklevel=2)
    return plan


def parse_fp8_budget(value: float | str | None, source: str | Path = "<flags>") -> float:
    """The float8 quality budget a user gives the tuner, as the largest share of block-steps in float8
    (``Plan.fp8_share``): a number in [0, 1], ``off`` (0: no float8) or ``auto`` (the share whose loss stayed
    within a fraction of a percent of bf16 in loadmaster's measurements: profiles/runtime/loadmaster.yaml,
    ``quality.fp8_auto_budget``). None means off."""
    if value is None:
        return 0.0
    text = str(value).strip().lower()
    if text == "off":
        return 0.0
    if text == "auto":
        from .constants import quality_constants
        return quality_constants()["fp8_auto_budget"].value
    try:
        share = float(text)
    except ValueError:
        share = math.nan
    require(0.0 <= share <= 1.0, source, "fp8_budget", f"is {value!r}",
            "give the share of block-steps allowed in float8 as a number in [0, 1], or off, or auto")
    return share


def load_plan(ref: str | Path | Plan | dict) -> Plan:
    """A Plan from an object, a dict, a YAML path or a shipped plan name (recipes/plans)."""
    if isinstance(ref, Plan):
        return ref
    if isinstance(ref, dict):
        return parse_plan(ref)
    path = resolve(ref, "plans")
    return parse_plan(read_yaml(path), path)


def ep_choices(model: ModelSpec, dp: int) -> list[int]:
    """Expert-parallel degrees that divide both the routed experts and dp (1 for a dense model)."""
    n = math.gcd(model.num_experts, dp) if model.is_moe else 1
    return [e for e in range(1, n + 1) if n % e == 0]


def _check_moe(plan: Plan, model: ModelSpec, source: str | Path) -> None:
    """The expert-parallel rules (check_plan's part for mixture-of-experts models and MoE plan keys)."""
    name = model.name or "the model"
    if not model.is_moe:
        for key, off in (("ep", 1), ("moe_imbalance", None)):
            require(getattr(plan, key) == off, source, key, f"is {getattr(plan, key)} but {name} is dense (no "
                    "experts)", f"drop {key} or use a mixture-of-experts model")
        return
    require(model.num_experts % plan.ep == 0, source, "ep",
            f"{plan.ep} does not divide the {model.num_experts} experts of {name}",
            f"use ep in {ep_choices(model, plan.dp)}")
    # the trainer's experts are not tensor-parallel (launcher.runtime.moe): attention could be, experts would run
    # whole on every TP rank; refuse rather than plan a waste the cost model would have to invent
    require(plan.tp == 1, source, "tp", f"is {plan.tp} with mixture-of-experts {name}: the trainer shards experts "
            "over ep, not tp", "use tp: 1 with ep (and pp for depth)")


def check_plan(plan: Plan, model: ModelSpec, cluster: ClusterSpec | None = None,
               source: str | Path | None = None) -> None:
    """Every rule a plan must follow to run this model on this cluster (the trainer, the launcher, the exporters
    and the tuner all call this one function); SpecError naming the key and the fix. The rules that need no
    model or cluster are in ``parse_plan``."""
    source = source or plan.source
    L = model.num_hidden_layers
    _check_moe(plan, model, source)
    for heads_key in ("num_attention_heads", "num_key_value_heads"):
        heads = getattr(model, heads_key)
        require(heads % plan.tp == 0, source, "tp",
                f"{plan.tp} does not divide {heads_key} {heads} of {model.name}",
                f"use tp in {tp_choices(model)}")
    require(model.intermediate_size % plan.tp == 0, source, "tp",
            f"{plan.tp} does not divide intermediate_size {model.intermediate_size}",
            f"use tp in {tp_choices(model)}")
    # the embedding and the output projection are sharded over the vocabulary (launcher apply_tp)
    require(not plan.vocab_parallel or model.vocab_size % plan.tp == 0, source, "tp",
            f"{plan.tp} does not divide vocab_size {model.vocab_size} (the embedding and output projection are "
            "sharded over the vocabulary)", f"use tp in {tp_choices(model)}, pad the vocabulary or set "
            "vocab_parallel: false")
    require(int(model.head_dim) % 2 == 0, source, "head_dim", f"{model.name}'s head_dim {model.head_dim} is odd",
            "RoPE rotates pairs of features: the trainer needs an even head_dim")
    require(not (model.tie_word_embeddings and plan.num_stages > 1), source, "pp",
            f"{model.name or 'the model'} ties its output projection to its embedding, which {plan.num_stages} "
            "pipeline stages would separate", "use pp: 1 for a model with tie_word_embeddings")
    if cluster is not None:
        require(plan.world_size == cluster.num_gpus, source, "dp",
                f"{world_formula(plan)} but cluster {cluster.name or ''} has {cluster.num_gpus} GPUs",
                f"make dp × cp × tp × pp = {cluster.num_gpus}")
    if plan.tp > 1 and plan.sequence_parallel:
        # each context-parallel rank's share of the sequence is split again over the tensor-parallel ranks
        local = f"seq_len / cp = {plan.seq_len // plan.cp}" if plan.cp > 1 else f"seq_len {plan.seq_len}"
        require(plan.seq_len % (plan.cp * plan.tp) == 0, source, "seq_len",
                f"{local} is not a multiple of tp {plan.tp} (sequence parallel)",
                "use a multiple of cp × tp or sequence_parallel: false")
    require(plan.num_stages <= L, source, "pp", f"{plan.num_stages} stages for {L} blocks",
            "use at most one stage per block")
    layers = plan.stage_layers(L)
    require(sum(layers) == L, source, "layers_per_stage", f"{layers} sums to {sum(layers)}, not {L} blocks",
            f"make the entries sum to {L}")
    for key in PER_STAGE_KEYS:
        v = getattr(plan, key)
        if isinstance(v, list):
            for i, (x, n) in enumerate(zip(v, layers)):
                require(x <= n, source, key, f"stage {i} asks for {x} of its {n} blocks",
                        f"use at most {n}")
        elif isinstance(v, int):
            require(v <= max(layers), source, key, f"{v} is more than the {max(layers)} blocks of a stage",
                    f"use at most {max(layers)}")
    rec, off = plan.per_stage("recompute_layers", L), plan.per_stage("offload_activation_layers", L)
    for i, (r, o, n) in enumerate(zip(rec, off, layers)):
        require(r + o <= n, source, "offload_activation_layers",
                f"stage {i}: {r} checkpointed + {o} offloaded blocks exceed its {n} blocks",
                "activation offload applies to blocks after the checkpointed ones; lower one of the two")
    if plan.recompute == "none" and plan.recompute_layers not in (None, 0):
        raise SpecError(source, "recompute_layers", f"is {plan.recompute_layers} with recompute: none",
                        "set recompute: full or selective, or drop recompute_layers")
    _check_kernels(plan, model, source)
    if model.max_position_embeddings and plan.seq_len > model.max_position_embeddings:
        warnings.warn(f"{source}: seq_len {plan.seq_len} exceeds {model.name}'s max_position_embeddings "
                      f"{model.max_position_embeddings}", stacklevel=2)


def _check_kernels(plan: Plan, model: ModelSpec, source) -> None:
    """The kernel choices a plan can run (launcher.runtime.kernels)."""
    if plan.loss_impl == "liger_fused":
        require(plan.pp == 1 and plan.tp == 1, source, "loss_impl",
                f"liger_fused needs tp 1 and pp 1 (got tp {plan.tp}, pp {plan.pp}): it multiplies the hidden states "
                "by the whole output projection inside the model, and a pipeline computes its loss outside the "
                "last stage", "use loss_impl: compiled or eager")
    if plan.loss_impl == "compiled":
        require(plan.tp == 1 or not plan.vocab_parallel, source, "loss_impl",
                f"compiled with tp {plan.tp} and vocab_parallel: the compiled loss does not take vocabulary-sharded "
                "logits", "use loss_impl: eager, or vocab_parallel: false")
    eager_blocks = not plan.compile
    checkpointed = plan.recompute == "selective" and plan.recompute_layers != 0
    require(not (plan.rope_impl == "liger" and eager_blocks and checkpointed), source, "rope_impl",
            "liger rotates q and k in place, which would overwrite the matmul outputs selective checkpointing "
            "saves", "use rope_impl: eager, recompute: full, or compile: true")
    require(not (plan.norm_impl == "liger" and eager_blocks and plan.tp > 1 and plan.sequence_parallel), source,
            "norm_impl", f"liger with tp {plan.tp} and sequence parallelism: its kernel takes plain tensors, the "
            "sequence-parallel norms see sharded DTensors", "use norm_impl: eager or sequence_parallel: false")
    require(plan.swiglu_impl == "eager" or model.gated_mlp, source, "swiglu_impl",
            f"liger needs a gated (SwiGLU) MLP; {model.name or 'the model'} has hidden_act {model.hidden_act}",
            "use swiglu_impl: eager")
