"""Why a plan is what it is: the binding constraint, and what each one-knob change would cost."""
from __future__ import annotations

import warnings
from dataclasses import dataclass

from costmodel import ClusterSpec, ModelSpec, Plan, SpecError, parse_plan
from costmodel.hardware import HardwareProfile, profile_for
from costmodel.prediction import Prediction, predict
from costmodel.fp8 import probe_every
from costmodel.hardware import GiB


@dataclass
class Alternative:
    """A plan one knob away from the explained one, and what that change does."""

    change: str
    plan: Plan
    prediction: Prediction
    delta_s: float
    reason: str


def binding_constraint(pred: Prediction) -> str:
    """One sentence: whether memory or time binds, and by which term."""
    use = pred.peak_memory_bytes / pred.memory_capacity_bytes
    mem_top = max(pred.memory_breakdown, key=pred.memory_breakdown.get)
    t = {k: v for k, v in pred.time_breakdown.items() if v > 0}
    t_top = max(t, key=t.get)
    if not pred.feasible:
        return pred.reasons[0]
    if use > 0.9:
        return (f"memory binds: the peak uses {use:.0%} of the GPU ({pred.peak_memory_bytes / GiB:.1f} GiB), "
                f"mostly {mem_top.replace('_', ' ')} ({pred.memory_breakdown[mem_top] / GiB:.1f} GiB)")
    return (f"time binds: {t_top.replace('_', ' ')} is {t[t_top] / pred.step_time_s:.0%} of the step; memory "
            f"peaks at {use:.0%} of the GPU")


BF16 = dict(fp8_layers=0, fp8_rotation_steps=0, fp8_temperature=0.0)
"""The plan keys that turn float8 off."""


def float8_effect(model: ModelSpec, cluster: ClusterSpec, plan: Plan, pred: Prediction,
                  profile: HardwareProfile | None = None) -> str | None:
    """One sentence on float8 in ``plan``: the share of blocks it quantizes and how the set moves, the step time
    against the same plan in bf16, and the sensitivity probes' cost; None when no block runs in float8."""
    L = model.num_hidden_layers
    share = plan.fp8_share(L)
    if share == 0:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bf16 = predict(model, cluster, plan.replace(**BF16), profile=profile or profile_for(cluster))
    if not plan.fp8_rotation_steps:
        how = "a fixed set"
    elif plan.fp8_temperature == 0:
        how = f"a sliding window moved every {plan.fp8_rotation_steps} steps"
    else:
        how = (f"drawn every {plan.fp8_rotation_steps} steps, loss-aware at temperature {plan.fp8_temperature:g}")
    gain = bf16.step_time_s / pred.step_time_s - 1
    text = (f"{sum(plan.per_stage('fp8_layers', L))} of {L} blocks run in float8 ({share:.0%} of block-steps, "
            f"{how}), making the step {abs(gain):.1%} {'faster' if gain >= 0 else 'slower'} than in bf16 "
            f"({bf16.step_time_s:.4f} s → {pred.step_time_s:.4f} s)")
    if pred.fp8_probe_s:
        k = probe_every(pred.fp8_probe_s, pred.step_time_s)
        text += f"; its sensitivity probe takes {pred.fp8_probe_s * 1e3:.1f} ms every {k} steps (≤ 1 %)"
    return text


def _neighbours(plan: Plan, model: ModelSpec) -> list[tuple[str, dict]]:
    L = model.num_hidden_layers
    out = []
    for t in (plan.tp * 2, plan.tp // 2):
        if t >= 1 and (plan.dp * plan.tp) % t == 0:
            d = plan.dp * plan.tp // t
            out.append((f"tp={t}, dp={d}", dict(tp=t, dp=d)))
    for p in (plan.pp * 2, plan.pp // 2):
        if p >= 1 and (plan.dp * plan.pp) % p == 0:
            d = plan.dp * plan.pp // p
            out.append((f"pp={p}, dp={d}", dict(pp=p, dp=d, layers_per_stage=None, pp_schedule="1F1B",
                                                   virtual_stages=1, grad_reduce="last" if p > 1 else plan.grad_reduce)))
    for e in (plan.ep * 2, plan.ep // 2):   # expert parallelism (check_plan drops degrees the experts forbid)
        if model.is_moe and e >= 1 and plan.dp % e == 0:
            out.append((f"ep={e}", dict(ep=e)))
    # context parallelism traded against data or tensor parallelism (the same GPUs): the batch stays whole, so
    # fewer data-parallel ranks take more micro-batches each
    for c in (plan.cp * 2, plan.cp // 2):
        if c < 1:
            continue
        d = plan.dp * plan.cp // c
        if (plan.dp * plan.cp) % c == 0 and plan.global_batch_size % (plan.micro_batch_size * d) == 0:
            out.append((f"cp={c}, dp={d}", dict(cp=c, dp=d, zero=plan.zero or 2)))
        if (plan.tp * plan.cp) % c == 0:
            t = plan.tp * plan.cp // c
            out.append((f"cp={c}, tp={t}", dict(cp=c, tp=t, zero=plan.zero or 2)))
    for mbs in (plan.micro_batch_size * 2, plan.micro_batch_size // 2):
        if mbs >= 1:
            out.append((f"micro-batch {mbs}", dict(micro_batch_size=mbs)))
    for z in (0, 2, 3):
        if z != plan.zero:
            out.append((f"zero {z}", dict(zero=z)))
    for rec in ("none", "full", "selective"):
        if rec != plan.recompute:
            out.append((f"recompute {rec}", dict(recompute=rec, recompute_layers=None)))
    out.append(("compile " + ("off" if plan.compile else "on"),
                dict(compile=not plan.compile, fp8_layers=0 if plan.compile else plan.fp8_layers)))
    if any(plan.per_stage("fp8_layers", L)):
        out.append(("float8 off", dict(BF16)))
    if plan.pp == 1:
        other = "every" if plan.grad_reduce == "last" else "last"
        out.append((f"grad_reduce {other}", dict(grad_reduce=other)))
    if any(plan.per_stage("offload_state_layers", L)) or any(plan.per_stage("offload_activation_layers", L)):
        out.append(("no offload", dict(offload_state_layers=0, offload_activation_layers=0)))
    return out


def alternatives(model: ModelSpec, cluster: ClusterSpec, plan: Plan, pred: Prediction,
                 profile: HardwareProfile | None = None) -> list[Alternative]:
    """Every legal one-knob change of ``plan``, costed, with the term that moved most."""
    prof = profile or profile_for(cluster)
    out = []
    for label, change in _neighbours(plan, model):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                alt = parse_plan(plan.replace(**change).to_dict(), plan.source)
                ap = predict(model, cluster, alt, profile=prof)
        except (SpecError, ValueError):
            continue
        delta = ap.step_time_s - pred.step_time_s
        if not ap.feasible:
            grew = {k: ap.memory_breakdown.get(k, 0) - pred.memory_breakdown.get(k, 0) for k in ap.memory_breakdown}
            k = max(grew, key=grew.get)
            reason = f"does not fit ({k.replace('_', ' ')} {grew[k] / GiB:+.1f} GiB)"
        else:
            moved = {k: ap.time_breakdown.get(k, 0) - pred.time_breakdown.get(k, 0) for k in ap.time_breakdown}
            k = max(moved, key=lambda x: abs(moved[x]))
            reason = (f"{delta / pred.step_time_s:+.1%} step time, mostly {k.replace('_', ' ')} "
                      f"({moved[k]:+.3f} s)")
        out.append(Alternative(label, alt, ap, delta, reason))
    return sorted(out, key=lambda a: (not a.prediction.feasible, a.delta_s))


def cp_note(plan: Plan, pred: Prediction, alts: list[Alternative]) -> str | None:
    """Why the plan has the context parallelism it has, from its one-knob cp alternatives; None for a plan
    without cp whose sequence is short enough that none was tried."""
    changed = [a for a in alts if a.plan.cp != plan.cp]
    if plan.cp == 1 and not changed:
        return None
    share = pred.time_breakdown.get("cp_comm", 0.0) / pred.step_time_s
    head = (f"context parallel {plan.cp}: each GPU holds {plan.seq_len // plan.cp} of every {plan.seq_len}-token "
            f"sequence and exchanges keys/values ({share:.1%} of the step exposed)" if plan.cp > 1 else
            "no context parallelism")
    return head + ("; " + "; ".join(f"{a.change} {a.reason}" for a in changed) if changed else "")


def _count(plan: Plan, key: str, L: int) -> str:
    vals = plan.per_stage(key, L)
    return str(vals[0]) if len(set(vals)) == 1 else "/".join(map(str, vals))


def differences(ref: Plan, other: Plan, num_layers: int) -> list[str]:
    """The knobs in which ``other`` differs from ``ref``, each as ``key ref→other`` (per-stage counts joined by
    '/'), in plan-key order."""
    out = []
    layout = lambda p: (f"tp{p.tp}" + (f"·cp{p.cp}" if p.cp > 1 else "") + f"·pp{p.pp}"  # noqa: E731
                        + (f"×{p.virtual_stages}" if p.virtual_stages > 1 else "") + f"·dp{p.dp}"
                        + (f"(ep{p.ep})" if p.ep > 1 else ""))
    if layout(ref) != layout(other):
        out.append(f"layout {layout(ref)}→{layout(other)}")
    for key, label in (("micro_batch_size", "micro-batch"), ("zero", "zero"), ("recompute", "checkpointing"),
                       ("compile", "compile"), ("grad_reduce", "grad reduce"), ("sequence_parallel", "seq. parallel"),
                       ("fp8_recipe", "float8 recipe"), ("pp_schedule", "schedule"), ("cp_rotate", "cp exchange"),
                       ("rope_impl", "RoPE"), ("norm_impl", "RMSNorm"), ("swiglu_impl", "SwiGLU"),
                       ("loss_impl", "loss"), ("pp_reshard_after_forward", "re-shard after forward")):
        a, b = getattr(ref, key), getattr(other, key)
        if a != b and not (key == "fp8_recipe" and not (any(ref.per_stage("fp8_layers", num_layers))
                                                        and any(other.per_stage("fp8_layers", num_layers)))):
            out.append(f"{label} {a}→{b}")
    same_split = ref.num_stages == other.num_stages
    if same_split and ref.stage_layers(num_layers) != other.stage_layers(num_layers):
        out.append(f"split {'/'.join(map(str, ref.stage_layers(num_layers)))}"
                   f"→{'/'.join(map(str, other.stage_layers(num_layers)))}")
    for key, label in (("recompute_layers", "checkpointed"), ("offload_activation_layers", "act. offloaded"),
                       ("offload_state_layers", "state offloaded"), ("fp8_layers", "float8")):
        a, b = _count(ref, key, num_layers), _count(other, key, num_layers)
        if a != b:
            out.append(f"{label} {a}→{b}")
    return out


def cost_of(ref: Prediction, other: Prediction) -> str:
    """What a runner-up costs against the best: step time and peak memory, relative and absolute."""
    dt = other.step_time_s / ref.step_time_s - 1
    dm = (other.peak_memory_bytes - ref.peak_memory_bytes) / GiB
    return f"{dt:+.1%} step time, {dm:+.1f} GiB peak"


def runner_up_lines(result, num_layers: int) -> list[str]:
    """Per row of a tuner result's top plans (``result.top``: candidates with ``plan``, ``prediction`` and
    ``equivalent``): the knobs that differ from #1 and what that costs, and the equivalent plans merged into it."""
    out = []
    if not result.top:
        return out
    best = result.top[0]
    for i, c in enumerate(result.top):
        same = f" (≡ {len(c.equivalent)} more plan{'s' if len(c.equivalent) > 1 else ''} with the same time and " \
               "memory)" if c.equivalent else ""
        if i == 0:
            if same:
                out.append(f"#1{same}")
            continue
        diff = "; ".join(differences(best.plan, c.plan, num_layers)) or "the same knobs"
        out.append(f"#{i + 1}: {diff} — {cost_of(best.prediction, c.prediction)}{same}")
    return out
