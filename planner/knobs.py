"""Every key of the plan schema, and how the tuner searches it (or why it does not): the one registry of knobs.

Each Plan key has exactly one entry (tests/test_planner.py checks it, so a key added to costmodel.plan.Plan
fails until it is registered here). The scope says where the key lives in the search:

- ``layout``: an outer loop over (tp, pp, dp) and the micro-batch split (planner.space); check_plan judges each
  layout through a probe plan.
- ``schedule``: an outer loop over the pipeline schedule and its virtual stages: they change the micro-batches in
  flight and the step-time formula (costmodel.pipeline), so each is solved on its own.
- ``case``: one value for the whole plan. Every combination of the case knobs (a *case*) is a column of the
  per-stage table: all are costed in one vectorised call, and the stages of a pipeline are then chosen per case.
  A new plan-wide key (``vocab_parallel``, a kernel choice) is one more ``Knob(scope="case", values=...)`` here,
  plus its cost in costmodel (``costmodel.prediction.stage_inputs`` maps plan keys to cost-model inputs; the
  tuner builds its inputs through it from a probe plan of each case).
- ``stage``: a block count per pipeline stage, every integer value (planner.stages says how).
- ``fixed``: not searched; ``doc`` says why.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from .space import Layout, SearchSpace


@dataclass(frozen=True)
class Knob:
    key: str
    """The Plan key."""
    scope: str
    """layout | schedule | case | stage | fixed (module docstring)."""
    doc: str
    """How the tuner searches it, or why not."""
    values: Callable[["SearchSpace", "Layout", dict], tuple] | None = None
    """Case knobs: the values to try in a layout, given the case knobs registered before it (``dict``). A knob
    that cannot matter returns one value, so no case is costed twice."""


def _zero(space: "SearchSpace", g: "Layout", case: dict) -> tuple:
    levels = {2 if z == 1 else z for z in space.zero}          # zero 1 runs as 2 under FSDP2 (Plan docstring)
    if g.pp > 1 and 3 in levels:                                 # and zero 3 as 2 in a pipeline (parse_plan warns)
        levels = (levels - {3}) | {2}
    if g.dp == 1 and 0 in levels and levels - {0, 3}:            # nothing to shard: zero 0 costs what zero 2 does
        levels = levels - {0}
    return tuple(sorted(levels))


def _recompute(space: "SearchSpace", g: "Layout", case: dict) -> tuple:
    modes = tuple(m for m in space.recompute if m != "none")   # "none" is the count 0 of either mode
    return modes or ("none",)


def _grad_reduce(space: "SearchSpace", g: "Layout", case: dict) -> tuple:
    # one micro-batch: nothing accumulates, both settings are the same plan (check_plan refuses "every" in pipelines)
    return tuple(space.grad_reduce) if g.M > 1 else ("last",)


def _sequence_parallel(space: "SearchSpace", g: "Layout", case: dict) -> tuple:
    return tuple(space.sequence_parallel) if g.tp > 1 else (space.sequence_parallel[0],)


def _fp8_recipe(space: "SearchSpace", g: "Layout", case: dict) -> tuple:
    return tuple(space.fp8_recipes) if fp8_allowed(space, case) else ("tensorwise",)


def fp8_allowed(space: "SearchSpace", case: dict) -> bool:
    """Whether a case may run blocks in float8: the user's share allows it and, unless the space says otherwise,
    the blocks are compiled (../shared/DESIGN.md: eager float8 was slower than bf16 in every measured case)."""
    return space.max_fp8_fraction > 0 and (bool(case.get("compile")) or not space.fp8_needs_compile)


KNOBS: tuple[Knob, ...] = (
    Knob("global_batch_size", "fixed", "the job's: given by the user"),
    Knob("seq_len", "fixed", "the job's: given by the user"),
    Knob("dp", "layout", "every divisor of the GPU count that check_plan accepts with tp and pp"),
    Knob("tp", "layout", "every divisor of the GPU count within a node (across nodes with cross_node_tp)"),
    Knob("pp", "layout", "every divisor of the GPU count that check_plan accepts (tied embeddings, stages ≤ blocks)"),
    Knob("micro_batch_size", "layout", "every divisor of the per-rank batch (up to max_micro_batch_size)"),
    Knob("zero", "case", "0, 2 and 3 (1 runs as 2); pipelines run 3 as 2, and at dp 1 zero 0 equals zero 2. One "
         "level for the whole plan: the trainer applies one FSDP2 mesh and reshard policy to every stage "
         "(launcher.parallel.parallelize_part, apply_fsdp), so a per-stage level would need the trainer first",
         _zero),
    Knob("recompute", "case", "full or selective for the whole plan (none is the count 0 of either); the trainer "
         "applies one mode to every stage (launcher.parallel.parallelize_part → apply_ac), so a per-stage mode would "
         "need the trainer first", _recompute),
    Knob("compile", "case", "on and off", lambda s, g, c: tuple(s.compile)),
    Knob("grad_reduce", "case", "last and every with more than one micro-batch, where check_plan accepts them "
         "(pipelines reduce once per step)", _grad_reduce),
    Knob("sequence_parallel", "case", "on and off with tp > 1", _sequence_parallel),
    Knob("fp8_recipe", "case", "tensorwise and rowwise wherever float8 is allowed", _fp8_recipe),
    Knob("recompute_layers", "stage", "every count 0..blocks of the stage"),
    Knob("offload_activation_layers", "stage", "every count 0..blocks - checkpointed: the least that fits (time "
         "grows and memory falls with each offloaded block, planner.stages)"),
    Knob("offload_state_layers", "stage", "every count 0..blocks of the stage"),
    Knob("fp8_layers", "stage", "every count 0..max_fp8_fraction × blocks: 0 and the largest are the only "
         "candidates, since each float8 block changes time by the same sign (planner.stages)"),
    Knob("layers_per_stage", "stage", "every split the memory and the bound leave open (planner.tuner widens the "
         "range of block counts from the even split until the bound closes it)"),
    Knob("pp_schedule", "schedule", "1F1B and Interleaved1F1B; GPipe only when 1F1B is not allowed: it has 1F1B's "
         "step time (costmodel.pipeline.step_time) with every micro-batch in flight (in_flight), so it never wins"),
    Knob("virtual_stages", "schedule", "2, 3 and 4 chunks per rank under Interleaved1F1B (SearchSpace.virtual_stages); "
         "a rank's blocks and per-stage counts are spread as evenly as possible over its chunks"),
    Knob("fp8_rotation_steps", "fixed", "SearchSpace.fp8_rotation_steps wherever a stage runs only part of its blocks "
         "in float8 (the cost model does not price rotation)"),
    Knob("model", "fixed", "the recipe the plan was made for"),
    Knob("cluster", "fixed", "the recipe the plan was made for"),
)
BY_KEY = {k.key: k for k in KNOBS}
CASE_KNOBS = tuple(k for k in KNOBS if k.scope == "case")


def cases(space: "SearchSpace", g: "Layout") -> list[dict[str, Any]]:
    """Every combination of the case knobs in layout ``g`` (each knob's values may depend on earlier ones)."""
    out: list[dict[str, Any]] = [{}]
    for knob in CASE_KNOBS:
        out = [{**c, knob.key: v} for c in out for v in knob.values(space, g, c)]
    return out


def plan_keys() -> tuple[str, ...]:
    from costmodel import Plan
    return tuple(f.name for f in dataclasses.fields(Plan) if f.init)


