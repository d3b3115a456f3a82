"""`predict`: what one plan costs on one cluster — step time, peak memory per GPU, and why."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .flops import mfu
from .hardware import GiB, HardwareProfile, profile_for
from .kernels import kernel_inputs, plan_kernels
from .memory import PHASE_TERMS, RUNTIME, ArchOptions
from .pipeline import bubble_time, in_flight, step_time
from .plan import Plan, check_plan, load_plan, vocab_matrices
from .specs import ClusterSpec, ModelSpec, load_cluster, load_model
from .stage import evaluate, hardware_inputs, knob_inputs, model_inputs

MEMORY_TERMS = tuple(dict.fromkeys(n for terms in PHASE_TERMS.values() for n in terms))
PHASES = tuple(PHASE_TERMS)
TIME_TERMS = ("compute_fwd", "compute_bwd", "head", "tp_comm", "cp_comm", "pp_comm", "ep_comm", "fsdp_fwd", "fsdp_bwd",
              "offload_activations", "fsdp_step", "optimizer")


@dataclass
class Prediction:
    """The cost of one plan. Times in seconds, memory in bytes per GPU (the worst rank)."""

    feasible: bool
    step_time_s: float
    peak_memory_bytes: float
    tokens_per_s: float
    tokens_per_s_per_gpu: float
    mfu: float
    memory_capacity_bytes: float
    memory_breakdown: dict[str, float]
    time_breakdown: dict[str, float]
    peak_phase: str
    peak_rank: int
    host_memory_bytes: float
    reasons: list[str] = field(default_factory=list)
    stages: list[dict] = field(default_factory=list)
    ranks: list[dict] = field(default_factory=list)
    """Per pipeline rank: ``rank``, ``peak_phase``, ``peak_memory_bytes`` and the ``memory_breakdown`` at that
    rank's own peak (the worst rank's is ``memory_breakdown``)."""
    fp8_probe_s: float = 0.0
    """Seconds of one float8 loss-sensitivity probe on the slowest pipeline rank, when the plan draws its float8
    set (fp8_temperature > 0; else 0). Not in ``step_time_s``: the trainer probes every
    ``costmodel.fp8.probe_every`` steps, at most 1 % of the time."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _phase_memory(out: dict, chunks: list[int], phase: str) -> dict[str, float]:
    """The terms a rank (its virtual-stage ``chunks``) holds at ``phase``'s peak, by name; they sum to it."""
    return {name: float(sum(out[key][c] for c in chunks)) for name, key in PHASE_TERMS[phase].items()}


def plan_wide_knobs(p) -> dict:
    """The knob_inputs arguments that a plan's plan-wide keys set. ``p`` is a Plan, or any object whose attributes
    hold arrays of those keys' values over candidates (the tuner's cases, planner.stages; a key it lacks takes the
    Plan's default): the one mapping from plan-wide keys to the formulas' flags (the float8 recipe goes through
    model_inputs, the kernel choices through costmodel.kernels.kernel_inputs)."""
    get = lambda key: np.asarray(getattr(p, key) if hasattr(p, key) else _PLAN_DEFAULTS[key])  # noqa: E731
    return dict(zero=get("zero"), sequence_parallel=get("sequence_parallel"),
                selective=(get("recompute") == "selective").astype(float), compile=get("compile").astype(float),
                reduce_every=(get("grad_reduce") == "every").astype(float),
                vocab_parallel=get("vocab_parallel").astype(float),
                foreach=(get("optimizer_impl") == "foreach").astype(float),
                pp_reshard=get("pp_reshard_after_forward").astype(float),
                imbalance=float(getattr(p, "moe_imbalance", None) or 0.0),   # None: the runtime default (0 here)
                cp_allgather=(get("cp_rotate") == "allgather").astype(float))


_PLAN_DEFAULTS = {f.name: f.default for f in dataclasses.fields(Plan) if f.default is not dataclasses.MISSING}


def stage_inputs(model: ModelSpec, cluster: ClusterSpec, plan: Plan, prof: HardwareProfile) -> dict:
    """Numeric inputs of every pipeline stage of a plan (arrays over stages, first stage first)."""
    L, S, pp, v = model.num_hidden_layers, plan.num_stages, plan.pp, plan.virtual_stages
    Mb = plan.num_microbatches
    idx = np.arange(S)
    rank = idx % pp
    first, last = (idx == 0).astype(float), (idx == S - 1).astype(float)
    nV = vocab_matrices(first, last, S, model.tie_word_embeddings)
    layers = plan.stage_layers(L)
    starts = np.cumsum([0] + layers[:-1])
    kernels = kernel_inputs(plan_kernels(plan), model=model, tokens=plan.micro_batch_size * plan.seq_len // plan.cp)
    knobs = knob_inputs(
        b=plan.micro_batch_size, s=plan.seq_len, t=plan.tp, d=plan.dp, pp=pp, **plan_wide_knobs(plan),
        l=plan.stage_layers(L), r=plan.per_stage("recompute_layers", L),
        oa=plan.per_stage("offload_activation_layers", L), os=plan.per_stage("offload_state_layers", L),
        f=plan.per_stage("fp8_layers", L), m=in_flight(plan.pp_schedule, pp, rank, Mb, v), M=Mb, first=first,
        last=last, nV=nV, lm=[model.moe_layers_in(int(a), n) for a, n in zip(starts, layers)], ep=plan.ep,
        cp=plan.cp, fused_loss=kernels.pop("fl"), loss_chunks=kernels.pop("nch"))
    return {**model_inputs(model, plan.fp8_recipe), **hardware_inputs(prof), **kernels, **knobs}


def predict(model: ModelSpec | str | Path, cluster: ClusterSpec | str | Path, plan: Plan | str | Path | dict,
            profile: HardwareProfile | None = None, opts: ArchOptions = RUNTIME, comm: bool = True) -> Prediction:
    """Cost ``plan`` for ``model`` on ``cluster``; specs may be objects, paths or recipe names.

    ``opts`` describes the runtime's implementation (loadmaster's trainer by default; costmodel.memory.ENGINES
    for replaying other engines' published runs). ``comm=False`` prices every collective at zero time: the
    compute each rank does alone, which `loadmaster rehearse` measures."""
    model, cluster, plan = load_model(model), load_cluster(cluster), load_plan(plan)
    check_plan(plan, model, cluster)
    prof = profile or profile_for(cluster)
    S, pp, v = plan.num_stages, plan.pp, plan.virtual_stages
    inputs = stage_inputs(model, cluster, plan, prof)
    if opts.fused_kernels:
        inputs["k"] = np.ones_like(inputs["k"])
    out = evaluate(None, inputs, prof, cluster.gpus_per_node, opts, comm)
    out = {k: np.broadcast_to(np.asarray(val, dtype=float), (S,)) for k, val in out.items()}
    # a pipeline rank hosts stages rank, rank + pp, ... (virtual stages)
    by_rank = lambda x: np.asarray(x).reshape(v, pp).sum(axis=0)  # noqa: E731
    t_mb, delta, peak = by_rank(out["t_mb"]), by_rank(out["delta"]), by_rank(out["peak"])
    Mb = plan.num_microbatches
    step = float(step_time(t_mb, delta, Mb, v))
    worst = int(np.argmax(peak))
    ranks = []
    for r in range(pp):
        chunks = [r + j * pp for j in range(v)]
        ph = max(PHASES, key=lambda ph: sum(out[ph][c] for c in chunks))
        ranks.append({"rank": r, "peak_phase": ph, "peak_memory_bytes": float(peak[r]),
                      "memory_breakdown": _phase_memory(out, chunks, ph)})
    phase, mem = ranks[worst]["peak_phase"], ranks[worst]["memory_breakdown"]
    capacity = prof.memory_bytes
    need = prof.needed_bytes(float(peak[worst]))
    host_need = float(by_rank(out["host_bytes"]).max()) * cluster.gpus_per_node
    reasons = []
    if need > capacity:
        top = max(mem, key=mem.get)
        reasons.append(
            f"peak memory {need / GiB:.1f} GiB (allocated {peak[worst] / GiB:.1f} GiB + allocator "
            f"{prof.fragmentation:.0%} + context {prof.context_gib:.1f} GiB) exceeds the {capacity / GiB:.1f} GiB "
            f"of a {prof.name} on pipeline rank {worst} at its {phase.removeprefix('peak_')} peak; the largest "
            f"term is {top} ({mem[top] / GiB:.1f} GiB)")
    if host_need > prof.host_budget_bytes:
        reasons.append(f"offloaded state and activations need {host_need / GiB:.0f} GiB of host memory per node, "
                       f"over the {prof.host_budget_bytes / GiB:.0f} GiB offload may use "
                       f"({prof.const('host_memory_usable_fraction'):.0%} of {prof.host_memory_gib:.0f} GiB)")
    tokens_s = plan.tokens_per_step / step
    world = plan.world_size
    b = int(np.argmax(t_mb))
    bneck = [b + j * pp for j in range(v)]
    times = {k: float(sum(out[k][c] for c in bneck)) * (1 if k in ("fsdp_step", "optimizer") else Mb)
             for k in TIME_TERMS}
    times["pipeline_bubble"] = float(bubble_time(t_mb, Mb, v))
    layers = plan.stage_layers(model.num_hidden_layers)
    stages = [{"stage": i, "layers": layers[i],
               "peak_memory_bytes": float(out["peak"][i]), "t_microbatch_s": float(out["t_mb"][i]),
               "delta_s": float(out["delta"][i]), "host_memory_bytes": float(out["host_bytes"][i])} for i in range(S)]
    probe = float(by_rank(out["fp8_probe"]).max()) if plan.fp8_temperature > 0 else 0.0
    return Prediction(
        feasible=not reasons, step_time_s=step, peak_memory_bytes=float(peak[worst]),
        tokens_per_s=tokens_s, tokens_per_s_per_gpu=tokens_s / world,
        mfu=mfu(model, plan.seq_len, tokens_s / world, prof.bf16_tflops),
        memory_capacity_bytes=capacity, memory_breakdown=mem, time_breakdown=times, peak_phase=phase,
        peak_rank=worst, host_memory_bytes=host_need, reasons=reasons, stages=stages,
        ranks=ranks, fp8_probe_s=probe)
