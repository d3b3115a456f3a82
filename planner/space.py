"""The search space of the tuner: the user's pins, and the layouts, micro-batch splits and schedules that
costmodel.check_plan accepts (asked through probe plans: no plan rule is restated here)."""
from __future__ import annotations

import itertools
import math
import numbers
import warnings
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from costmodel import Plan, SpecError, check_plan, parse_fp8_budget, parse_plan
from costmodel.kernels import choices as kernel_choices_of
from costmodel.plan import KERNEL_KEYS, ep_choices
from costmodel.specs import ClusterSpec, ModelSpec

ZERO_LEVELS = (0, 2, 3)  # zero 1 runs as 2 under FSDP2 (costmodel.plan.Plan), so the tuner never offers it


@dataclass(kw_only=True, frozen=True)
class SearchSpace:
    """What the tuner may choose. ``None`` leaves a degree free; a value pins it. Tuple fields list the allowed
    values (one value pins the knob). planner.knobs says how each plan key is searched.

    Zero level and checkpointing mode are one value per plan, not per stage: the trainer applies one FSDP2 mesh
    and reshard policy and one checkpointing mode to every stage (launcher.runtime.parallel), so a per-stage level
    or mode needs the plan schema and the trainer to accept lists first. Per stage the tuner chooses every block
    count: checkpointed, activation-offloaded, state-offloaded and float8 blocks."""

    tp: int | None = None
    """Pinned tensor-parallel degree."""
    pp: int | None = None
    """Pinned pipeline degree."""
    dp: int | None = None
    """Pinned data-parallel degree."""
    ep: int | None = None
    """Pinned expert-parallel degree (mixture-of-experts models; dense models always use 1)."""
    max_ep: int = 64
    """Largest expert-parallel degree considered: beyond 8 nodes of all-to-all the search grows for plans the cost
    model rarely favours (pin ``ep`` to go further)."""
    cp: int | None = None
    """Pinned context-parallel degree (1 turns context parallelism off)."""
    cp_min_seq_len: int = 32768
    """Context parallelism is searched for sequences at least this long, or for shorter ones whose leanest cp = 1
    plan does not fit (``cp_degrees``); below it attention is a small share of the work and splitting it gains
    little over tensor or data parallelism, so the tuner saves the time."""
    cp_min_tokens: int = 4096
    """Smallest share of a sequence a context-parallel rank may hold: each ring step's attention kernel works on
    chunks of half of it, and shorter ones leave the GPU idle."""
    micro_batch_size: int | None = None
    """Pinned micro-batch size."""
    zero: tuple[int, ...] = ZERO_LEVELS
    """ZeRO levels to consider."""
    recompute: tuple[str, ...] = ("none", "full", "selective")
    """Checkpointing modes to consider. Without "none" every stage checkpoints at least one block."""
    compile: tuple[bool, ...] = (False, True)
    """torch.compile off/on."""
    grad_reduce: tuple[str, ...] = ("last", "every")
    """Gradient reduction under accumulation without a pipeline (Plan.grad_reduce)."""
    sequence_parallel: tuple[bool, ...] = (True, False)
    """Sequence parallelism with tp > 1 (a bool pins it)."""
    offload: bool = True
    """Consider offloading activations and state to the CPU."""
    fp8_budget: float = 0.0
    """Quality budget: the largest share of block-steps that may run in float8 (Plan.fp8_share), in [0, 1];
    "off" (0) and "auto" are accepted too (costmodel.parse_fp8_budget). 0 = no float8: it changes numerics."""
    fp8_recipes: tuple[str, ...] = ("tensorwise", "rowwise")
    """torchao float8 recipes to consider where float8 is allowed."""
    fp8_needs_compile: bool = True
    """Allow float8 only in compiled plans (eager float8 was slower than bf16 in every measured case)."""
    fp8_rotation_steps: int = 100
    """When only part of a stage runs in float8, rotate the float8 set every this many steps (DPQuant)."""
    fp8_temperature: float = 1.0
    """How such a rotating set is chosen (Plan.fp8_temperature): > 0 drawn loss-aware, 0 the sliding window."""
    schedules: tuple[str, ...] = ("1F1B", "Interleaved1F1B")
    """Pipeline schedules to consider. GPipe is tried only when 1F1B is not allowed (planner.knobs)."""
    virtual_stages: tuple[int, ...] = (2, 3, 4)
    """Chunks per rank to consider under Interleaved1F1B."""
    cross_node_tp: bool = False
    """Allow a tensor-parallel group to span nodes."""
    max_micro_batch_size: int = 64
    """Largest micro-batch considered."""
    cp_rotate: tuple[str, ...] = ("allgather", "alltoall")
    """How context-parallel ranks exchange keys and values (Plan.cp_rotate), where cp > 1."""
    rope_impl: tuple[str, ...] = ("eager",)
    """RoPE kernels to consider (Plan.rope_impl; "liger" needs liger-kernel on the GPU nodes)."""
    loss_impl: tuple[str, ...] = ("eager", "compiled")
    """Loss kernels to consider (Plan.loss_impl; "liger_fused" needs liger-kernel on the GPU nodes)."""
    norm_impl: tuple[str, ...] = ("eager",)
    """RMSNorm kernels to consider (Plan.norm_impl)."""
    swiglu_impl: tuple[str, ...] = ("eager",)
    """SwiGLU kernels to consider (Plan.swiglu_impl)."""

    def __post_init__(self) -> None:
        if isinstance(self.sequence_parallel, bool):
            object.__setattr__(self, "sequence_parallel", (self.sequence_parallel,))
        object.__setattr__(self, "fp8_budget", parse_fp8_budget(self.fp8_budget, "search space"))
        for key in ("tp", "pp", "dp", "ep", "cp", "micro_batch_size"):   # one value pins a degree: never a tuple
            value = getattr(self, key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1):
                raise ValueError(f"{key} {value!r}: pin it with one whole number of at least 1 (e.g. {key}=2), or "
                                 f"leave it None for the tuner to choose")
        checks = [("recompute", {"none", "full", "selective"}), ("zero", {0, 1, 2, 3}),
                  ("schedules", {"1F1B", "Interleaved1F1B", "GPipe"}), ("grad_reduce", {"last", "every"}),
                  ("fp8_recipes", {"tensorwise", "rowwise"}), ("compile", {False, True}),
                  ("sequence_parallel", {False, True}), ("cp_rotate", {"allgather", "alltoall"})]
        for key, allowed in checks:
            values = getattr(self, key)
            bad = set(values) - allowed
            if bad or not values:
                raise ValueError(f"{key} {sorted(map(str, bad)) or 'is empty'}: use one or more of "
                                 f"{', '.join(map(str, sorted(allowed, key=str)))}")
        if not self.virtual_stages or any(v < 2 for v in self.virtual_stages):
            raise ValueError(f"virtual_stages {self.virtual_stages}: use chunk counts of at least 2")
        for key in KERNEL_KEYS:
            allowed, given = kernel_choices_of(key), getattr(self, key)
            if not given or set(given) - set(allowed):
                raise ValueError(f"{key} {given} must be a non-empty selection of {', '.join(allowed)}")

    @classmethod
    def with_liger(cls, **changes) -> "SearchSpace":
        """The space with liger-kernel's choices added to the default ones (for GPU nodes that have it)."""
        return cls(rope_impl=("eager", "liger"), loss_impl=("eager", "compiled", "liger_fused"),
                   norm_impl=("eager", "liger"), swiglu_impl=("eager", "liger"), **changes)

    @property
    def max_fp8_fraction(self) -> float:
        """The share of each stage's blocks the tuner may put in float8: the budget itself, since stages within it
        keep the model within it. (A constraint on the sum over stages would let a bottleneck stage take more.)"""
        return self.fp8_budget

    def fp8_schedule_keys(self, partial: bool) -> dict:
        """Plan keys of the float8 schedule: a set covering only part of some stage rotates every
        ``fp8_rotation_steps`` and is drawn at ``fp8_temperature``; a full or empty set stays fixed."""
        if not partial or self.fp8_rotation_steps <= 0:
            return {"fp8_rotation_steps": 0, "fp8_temperature": 0.0}
        return {"fp8_rotation_steps": self.fp8_rotation_steps, "fp8_temperature": self.fp8_temperature}


@dataclass(frozen=True)
class Layout:
    """One parallel layout and micro-batch split: every stage of a plan shares these."""

    tp: int
    pp: int
    dp: int
    mbs: int
    M: int
    cp: int = 1
    ep: int = 1


class Degrees(NamedTuple):
    """The parallel degrees of a layout: tp × cp × pp × dp = GPUs."""

    tp: int
    cp: int
    pp: int
    dp: int


@dataclass(frozen=True)
class Schedule:
    """A pipeline schedule and its chunks per rank (``v`` = 1 except under Interleaved1F1B)."""

    name: str
    v: int = 1


def divisors(n: int) -> list[int]:
    small = [d for d in range(1, int(math.isqrt(n)) + 1) if n % d == 0]
    return sorted(set(small + [n // d for d in small]))


def probe_problem(model: ModelSpec, cluster: ClusterSpec, **keys) -> str | None:
    """Why a plan with these keys (and defaults for the rest) cannot run, as parse_plan/check_plan word it; None if
    it can. The tuner asks every rule it needs this way."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")   # warnings are for plans, not for probes
            check_plan(parse_plan(keys, "probe"), model, cluster, "layout")
    except SpecError as e:
        return f"{e.key}: {e.problem}"
    return None


def layout_problem(model: ModelSpec, cluster: ClusterSpec, space: SearchSpace, seq_len: int, tp: int, pp: int,
                   dp: int, cp: int = 1) -> str | None:
    """Why no plan of this (tp, cp, pp, dp) layout can run; None if some can (with its most permissive case; pp
    micro-batches fill the pipeline, the batch itself is checked per split by ``micro_batches``)."""
    return probe_problem(model, cluster, global_batch_size=dp * pp, micro_batch_size=1, seq_len=seq_len, dp=dp,
                         tp=tp, pp=pp, cp=cp, zero=2, recompute="none", sequence_parallel=min(space.sequence_parallel))


def cp_degrees(model: ModelSpec, cluster: ClusterSpec, space: SearchSpace, seq_len: int) -> list[int]:
    """Context-parallel degrees the tuner searches: the pinned one, else 1 and, for a sequence that needs it (at
    least ``cp_min_seq_len`` tokens, or one whose leanest cp = 1 plan does not fit), every power of two that
    leaves each rank ``cp_min_tokens`` or more. Which degree pays is the cost model's call; this only keeps the
    search to the cases where it can."""
    if space.cp is not None:
        return [space.cp]
    if seq_len < space.cp_min_seq_len and lean_plan_fits(model, cluster, space, seq_len):
        return [1]
    out, c = [1], 2
    while c <= cluster.num_gpus and seq_len // c >= space.cp_min_tokens:
        if cluster.num_gpus % c == 0:
            out.append(c)
        c *= 2
    return out


def lean_plan_fits(model: ModelSpec, cluster: ClusterSpec, space: SearchSpace, seq_len: int) -> bool:
    """Whether one sequence fits without context parallelism: micro-batch 1, full checkpointing, zero 3, the
    widest tensor parallelism within a node and one pipeline stage per GPU left (as deep as the blocks allow)."""
    from costmodel.prediction import predict
    N, G, L = cluster.num_gpus, cluster.gpus_per_node, model.num_hidden_layers
    for t in sorted((t for t in divisors(N) if t <= G), reverse=True):
        p = max((p for p in divisors(N // t) if p <= L), default=1)
        d = N // (t * p)
        if layout_problem(model, cluster, space, seq_len, t, p, d) is not None:
            continue
        plan = dict(global_batch_size=d * p, micro_batch_size=1, seq_len=seq_len, dp=d, tp=t, pp=p,
                    zero=2 if p > 1 else 3, recompute="full", sequence_parallel=min(space.sequence_parallel))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return predict(model, cluster, parse_plan(plan, "probe")).feasible
    return False


def layouts(model: ModelSpec, cluster: ClusterSpec, space: SearchSpace, seq_len: int,
            rejected: dict | None = None) -> list[Degrees]:
    """Every (tp, cp, pp, dp) with tp·cp·pp·dp = GPUs that the pins and the search policy allow and the plan
    rules accept; ``rejected`` (if given) collects the layouts they refuse, with the reason."""
    N = cluster.num_gpus
    out = []
    cps = cp_degrees(model, cluster, space, seq_len)
    for t in divisors(N):
        if (t > cluster.gpus_per_node and not space.cross_node_tp) or (space.tp is not None and t != space.tp):
            continue
        for c in (c for c in cps if (N // t) % c == 0):
            for p in divisors(N // (t * c)):
                d = N // (t * c * p)
                if (space.pp is not None and p != space.pp) or (space.dp is not None and d != space.dp):
                    continue
                why = layout_problem(model, cluster, space, seq_len, t, p, d, c)
                if why is None:
                    out.append(Degrees(t, c, p, d))
                elif rejected is not None:
                    rejected[Degrees(t, c, p, d)] = why
    return out


def micro_batches(model: ModelSpec, cluster: ClusterSpec, global_batch: int, seq_len: int, tp: int, pp: int,
                  dp: int, space: SearchSpace, cp: int = 1) -> list[tuple[int, int]]:
    """(micro-batch size, micro-batches per step) that split the global batch exactly and that check_plan accepts
    (a pipeline needs at least pp micro-batches)."""
    if global_batch % dp:
        return []
    per_rank = global_batch // dp
    out = []
    for mbs in divisors(per_rank):
        if mbs > space.max_micro_batch_size or (space.micro_batch_size is not None and mbs != space.micro_batch_size):
            continue
        if probe_problem(model, cluster, global_batch_size=global_batch, micro_batch_size=mbs, seq_len=seq_len,
                         dp=dp, tp=tp, pp=pp, cp=cp, zero=2, recompute="none",
                         sequence_parallel=min(space.sequence_parallel)) is None:
            out.append((mbs, per_rank // mbs))
    return out


def schedules(model: ModelSpec, cluster: ClusterSpec, space: SearchSpace, global_batch: int, seq_len: int,
              g: Layout) -> list[Schedule]:
    """The schedules to search for a layout: one for pp = 1; 1F1B (GPipe only without 1F1B, planner.knobs) and
    every interleaved chunk count check_plan accepts for a pipeline."""
    if g.pp == 1:
        return [Schedule("1F1B")]
    out = []
    if "1F1B" in space.schedules:
        out.append(Schedule("1F1B"))
    elif "GPipe" in space.schedules:
        out.append(Schedule("GPipe"))
    if "Interleaved1F1B" in space.schedules:
        for v in sorted(set(space.virtual_stages)):
            if probe_problem(model, cluster, global_batch_size=global_batch, micro_batch_size=g.mbs,
                             seq_len=seq_len, dp=g.dp, tp=g.tp, pp=g.pp, cp=g.cp, ep=g.ep, zero=2,
                             recompute="none",
                             sequence_parallel=min(space.sequence_parallel), pp_schedule="Interleaved1F1B",
                             virtual_stages=v) is None:
                out.append(Schedule("Interleaved1F1B", v))
    return out


def expert_degrees(model: ModelSpec, dp: int, space: SearchSpace) -> list[int]:
    """Expert-parallel degrees the tuner tries with ``dp`` data-parallel ranks: those check_plan allows (divisors
    of both the routed experts and dp; [1] for a dense model), at most ``max_ep`` unless pinned."""
    legal = ep_choices(model, dp)
    if space.ep is not None:
        return [space.ep] if space.ep in legal else []
    return [e for e in legal if e <= space.max_ep]


def moe_layers_of_role(model: ModelSpec, role: str, layers: np.ndarray, pp: int) -> np.ndarray:
    """MoE blocks of a stage of each block count in ``layers`` for a stage role (costmodel.prediction counts them
    from the actual split): the first stage's blocks start at 0, the last's end at L, a middle stage is taken in
    the middle of the model (exact when the middle stages' blocks are all alike, ``middle_exact``; otherwise the
    plan is costed again, exactly, before it is kept)."""
    L = model.num_hidden_layers
    start = {"only": lambda n: 0, "first": lambda n: 0, "last": lambda n: L - n,
             "middle": lambda n: (L - n) // 2}[role]
    counts = {int(n): model.moe_layers_in(start(int(n)), int(n)) for n in np.unique(layers)}
    return np.array([counts[int(n)] for n in np.asarray(layers).reshape(-1)], dtype=float).reshape(np.shape(layers))


def uniform_blocks(model: ModelSpec) -> bool:
    """Whether every block is of one kind (dense, or all mixture-of-experts): then a stage's MoE blocks are known
    from its block count alone, whatever its place in the model."""
    n = model.moe_layers_in(0, model.num_hidden_layers)
    return n in (0, model.num_hidden_layers)


def kernel_combinations(space: SearchSpace, model: ModelSpec, plan: Plan) -> list[dict[str, str]]:
    """The kernel choices of ``space`` that ``plan``'s case can run (costmodel.check_plan decides), as
    {plan key: choice} dicts. In-block choices (RoPE, norm, SwiGLU) count only for eager blocks: under compile only
    the first choice of each is kept, since compiled blocks price and run the same whatever they say."""
    keys = list(KERNEL_KEYS)
    values = [getattr(space, k)[:1] if plan.compile and k != "loss_impl" else getattr(space, k) for k in keys]
    out = []
    for combo in itertools.product(*values):
        choice = dict(zip(keys, combo))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                check_plan(plan.replace(**choice), model, None, "kernels")
        except SpecError:
            continue
        out.append(choice)
    return out


def best_kernels(model: ModelSpec, cluster: ClusterSpec, plan: Plan, space: SearchSpace, profile=None
                 ) -> tuple[Plan, object]:
    """``plan`` with the fastest of its kernel combinations that fits (and its prediction): the kernel choice for
    a plan the tuner made without them. It cannot find what a kernel's memory would buy elsewhere (a larger
    micro-batch, fewer checkpointed blocks): the tuner has to search kernels with the other knobs for that."""
    from costmodel.prediction import predict
    best = None
    for choice in kernel_combinations(space, model, plan):
        candidate = plan.replace(**choice)
        pred = predict(model, cluster, candidate, profile=profile)
        if pred.feasible and (best is None or pred.step_time_s < best[1].step_time_s):
            best = (candidate, pred)
    if best is None:
        return plan, predict(model, cluster, plan, profile=profile)
    return best
