"""The search space of the tuner: the user's pins, and the layouts, micro-batch splits and schedules that
costmodel.check_plan accepts (asked through probe plans: no plan rule is restated here)."""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

from costmodel import SpecError, check_plan, parse_plan
from costmodel.specs import ClusterSpec, ModelSpec

ZERO_LEVELS = (0, 2, 3)  # zero 1 runs as 2 under FSDP2 (costmodel.plan.Plan), so the tuner never offers it


@dataclass(kw_only=True, frozen=True)
class SearchSpace:
    """What the tuner may choose. ``None`` leaves a degree free; a value pins it. Tuple fields list the allowed
    values (one value pins the knob). planner.knobs says how each plan key is searched.

    Zero level and checkpointing mode are one value per plan, not per stage: the trainer applies one FSDP2 mesh
    and reshard policy and one checkpointing mode to every stage (launcher.parallel.parallelize_part), so a
    per-stage level or mode needs the plan schema and the trainer to accept lists first. Per stage the tuner
    chooses every block count: checkpointed, activation-offloaded, state-offloaded and float8 blocks."""

    tp: int | None = None
    """Pinned tensor-parallel degree."""
    pp: int | None = None
    """Pinned pipeline degree."""
    dp: int | None = None
    """Pinned data-parallel degree."""
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
    max_fp8_fraction: float = 0.0
    """Largest share of a stage's blocks that may run in float8 (0 = off; float8 changes numerics)."""
    fp8_recipes: tuple[str, ...] = ("tensorwise", "rowwise")
    """torchao float8 recipes to consider where float8 is allowed."""
    fp8_needs_compile: bool = True
    """Allow float8 only in compiled plans (eager float8 was slower than bf16 in every measured case)."""
    fp8_rotation_steps: int = 100
    """When only part of a stage runs in float8, rotate the float8 set every this many steps (DPQuant)."""
    schedules: tuple[str, ...] = ("1F1B", "Interleaved1F1B")
    """Pipeline schedules to consider. GPipe is tried only when 1F1B is not allowed (planner.knobs)."""
    virtual_stages: tuple[int, ...] = (2, 3, 4)
    """Chunks per rank to consider under Interleaved1F1B."""
    cross_node_tp: bool = False
    """Allow a tensor-parallel group to span nodes."""
    max_micro_batch_size: int = 64
    """Largest micro-batch considered."""

    def __post_init__(self) -> None:
        if isinstance(self.sequence_parallel, bool):
            object.__setattr__(self, "sequence_parallel", (self.sequence_parallel,))
        if not 0.0 <= self.max_fp8_fraction <= 1.0:
            raise ValueError(f"max_fp8_fraction {self.max_fp8_fraction} must be between 0 and 1")
        checks = [("recompute", {"none", "full", "selective"}), ("zero", {0, 1, 2, 3}),
                  ("schedules", {"1F1B", "Interleaved1F1B", "GPipe"}), ("grad_reduce", {"last", "every"}),
                  ("fp8_recipes", {"tensorwise", "rowwise"}), ("compile", {False, True}),
                  ("sequence_parallel", {False, True})]
        for key, allowed in checks:
            values = getattr(self, key)
            bad = set(values) - allowed
            if bad or not values:
                raise ValueError(f"{key} {sorted(map(str, bad)) or 'is empty'}: use one or more of "
                                 f"{', '.join(map(str, sorted(allowed, key=str)))}")
        if not self.virtual_stages or any(v < 2 for v in self.virtual_stages):
            raise ValueError(f"virtual_stages {self.virtual_stages}: use chunk counts of at least 2")


@dataclass(frozen=True)
class Layout:
    """One parallel layout and micro-batch split: every stage of a plan shares these."""

    tp: int
    pp: int
    dp: int
    mbs: int
    M: int


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
                   dp: int) -> str | None:
    """Why no plan of this (tp, pp, dp) layout can run; None if some can (with its most permissive case)."""
    return probe_problem(model, cluster, global_batch_size=dp * pp, micro_batch_size=1, seq_len=seq_len, dp=dp,
                         tp=tp, pp=pp, zero=2, recompute="none", sequence_parallel=min(space.sequence_parallel))


def layouts(model: ModelSpec, cluster: ClusterSpec, space: SearchSpace, seq_len: int,
            rejected: dict | None = None) -> list[tuple[int, int, int]]:
    """Every (tp, pp, dp) with tp·pp·dp = GPUs that the pins and the search policy allow and check_plan accepts;
    ``rejected`` (if given) collects the layouts check_plan refuses, with its reason."""
    N = cluster.num_gpus
    out = []
    for t in divisors(N):
        if (t > cluster.gpus_per_node and not space.cross_node_tp) or (space.tp is not None and t != space.tp):
            continue
        for p in divisors(N // t):
            d = N // (t * p)
            if (space.pp is not None and p != space.pp) or (space.dp is not None and d != space.dp):
                continue
            why = layout_problem(model, cluster, space, seq_len, t, p, d)
            if why is None:
                out.append((t, p, d))
            elif rejected is not None:
                rejected[(t, p, d)] = why
    return out


def micro_batches(model: ModelSpec, cluster: ClusterSpec, global_batch: int, seq_len: int, tp: int, pp: int,
                  dp: int, space: SearchSpace) -> list[tuple[int, int]]:
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
                         dp=dp, tp=tp, pp=pp, zero=2, recompute="none",
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
                             seq_len=seq_len, dp=g.dp, tp=g.tp, pp=g.pp, zero=2, recompute="none",
                             sequence_parallel=min(space.sequence_parallel), pp_schedule="Interleaved1F1B",
                             virtual_stages=v) is None:
                out.append(Schedule("Interleaved1F1B", v))
    return out
