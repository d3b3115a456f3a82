"""Every key of the plan schema, and how the tuner searches it (or why it does not): the one registry of knobs.

Each Plan key has exactly one entry (tests/test_planner.py checks it, so a key added to costmodel.plan.Plan
fails until it is registered here). The scope says where the key lives in the search:

- ``layout``: an outer loop over (tp, cp, pp, dp), the expert-parallel degree and the micro-batch split
  (planner.space); check_plan judges each layout through a probe plan.
- ``schedule``: an outer loop over the pipeline schedule and its virtual stages: they change the micro-batches in
  flight and the step-time formula (costmodel.pipeline), so each is solved on its own.
- ``case``: one value for the whole plan. Every combination of the case knobs (a *case*) is a column of the
  per-stage table: all are costed in one vectorised call, and the stages of a pipeline are then chosen per case.
  A new plan-wide key (``vocab_parallel``, a kernel choice) is one more ``Knob(scope="case", values=...)`` here,
  plus its cost in costmodel (``costmodel.prediction.plan_wide_knobs`` maps plan keys to cost-model inputs, and
  ``costmodel.kernels.kernel_inputs`` the kernel choices; the tuner builds each case's inputs through them).
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
    # in a pipeline zero 3 without pp_reshard_after_forward runs as 2 (parse_plan warns); with it, 3 is its own
    # plan (_pp_reshard pairs them)
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


def _pp_reshard(space: "SearchSpace", g: "Layout", case: dict) -> tuple:
    return (g.pp > 1 and case.get("zero") == 3,)


def _cp_rotate(space: "SearchSpace", g: "Layout", case: dict) -> tuple:
    return tuple(space.cp_rotate) if g.cp > 1 else ("allgather",)


def _kernel(key: str):
    """Values of a kernel choice: all the space offers for the loss; for a choice inside a block (RoPE, RMSNorm,
    SwiGLU) only under eager blocks, since compiled blocks fuse those ops whatever the plan names (the cost model
    prices them alike, costmodel.kernels), so one value is enough there."""
    def values(space: "SearchSpace", g: "Layout", case: dict) -> tuple:
        offered = tuple(getattr(space, key))
        return offered if key == "loss_impl" or not case.get("compile") else offered[:1]
    return values


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
    Knob("cp", "layout", "1, and for long sequences (or ones that do not fit one GPU's share without it) every power "
         "of two dividing the GPUs that leaves a rank cp_min_tokens or more (planner.space.cp_degrees)"),
    Knob("ep", "layout", "every divisor of both the routed experts and dp, up to max_ep (dense models: 1)"),
    Knob("zero", "case", "0, 2 and 3 (1 runs as 2; in pipelines 3 re-shards after forward), and at dp 1 zero 0 "
         "equals zero 2. One level for the whole plan: the trainer applies one FSDP2 mesh and reshard policy to every "
         "stage (launcher.runtime.parallel.fsdp), so a per-stage level would need the trainer first",
         _zero),
    Knob("recompute", "case", "full or selective for the whole plan (none is the count 0 of either); the trainer "
         "applies one mode to every stage (launcher.runtime.parallel.ac), so a per-stage mode would "
         "need the trainer first", _recompute),
    Knob("compile", "case", "on and off", lambda s, g, c: tuple(s.compile)),
    Knob("grad_reduce", "case", "last and every with more than one micro-batch, where check_plan accepts them "
         "(pipelines reduce once per step)", _grad_reduce),
    Knob("sequence_parallel", "case", "on and off with tp > 1", _sequence_parallel),
    Knob("fp8_recipe", "case", "tensorwise and rowwise wherever float8 is allowed", _fp8_recipe),
    Knob("cp_rotate", "case", "allgather and alltoall where cp > 1", _cp_rotate),
    Knob("rope_impl", "case", "SearchSpace.rope_impl under eager blocks, the first of them under compile",
         _kernel("rope_impl")),
    Knob("norm_impl", "case", "SearchSpace.norm_impl under eager blocks, the first of them under compile",
         _kernel("norm_impl")),
    Knob("swiglu_impl", "case", "SearchSpace.swiglu_impl under eager blocks, the first of them under compile",
         _kernel("swiglu_impl")),
    Knob("loss_impl", "case", "every SearchSpace.loss_impl check_plan accepts (liger_fused needs tp 1 or the "
         "vocabulary replicated)", _kernel("loss_impl")),
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
    Knob("fp8_temperature", "fixed", "SearchSpace.fp8_temperature with a rotating set (the loss-aware draw costs "
         "the probe the cost model prices, within 1 % of the step by launcher.runtime's probe period)"),
    Knob("moe_imbalance", "fixed", "the runtime's measured default: the router's balance is the data's, not a knob"),
    Knob("vocab_parallel", "fixed", "on (the loss sharded over tp, never slower or larger); off is for engines "
         "without loss parallelism, set by hand or by an export"),
    Knob("optimizer_impl", "fixed", "fused AdamW, the fastest the trainer has; foreach and for-loop exist to match "
         "other engines"),
    Knob("pp_reshard_after_forward", "case", "on exactly with zero 3 in a pipeline (zero 3 without it runs as "
         "zero 2 there, so that pair would cost a case twice)", _pp_reshard),
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


