"""When the tuner returns no plan: whether the time limit or the memory is why, what binds, which of the user's
pins to relax, and the smallest change of GPUs, batch, sequence or GPU kind that makes a plan fit — each change
checked by running the tuner on it."""
from __future__ import annotations

import dataclasses
import time
import warnings

from costmodel import ClusterSpec, ModelSpec, SpecError, parse_plan
from costmodel.hardware import GiB, HardwareProfile, load_profile
from costmodel.plan import even_split
from costmodel.prediction import Prediction, predict

from .space import SearchSpace, expert_degrees, layouts, micro_batches, probe_problem

GPU_KINDS = ("l4", "a100-40g", "a100-80g", "h100-sxm", "h200", "b200")
"""Shipped datasheet profiles a job may move to (tried in order of memory, those larger than the cluster's)."""
CHECK_S = 5.0
"""Time limit of one tuner run that checks a change."""
BUDGET_S = 30.0
"""Time the diagnosis may take in all."""
RELAXABLE = ("tp", "pp", "dp", "cp", "ep", "micro_batch_size", "zero", "recompute", "compile", "grad_reduce", "sequence_parallel",
             "offload", "schedules", "virtual_stages", "max_micro_batch_size", "cross_node_tp")
"""Search-space fields a user pins and the diagnosis may suggest relaxing (float8 never saves memory)."""


def _one(values: tuple, prefer: tuple):
    for p in prefer:
        if p in values:
            return p
    return values[0]


def least_memory_plan(model: ModelSpec, cluster: ClusterSpec, gbs: int, seq: int, space: SearchSpace,
                      prof: HardwareProfile) -> tuple[Prediction, dict] | None:
    """The plan of the space (pins respected) with the least GPU memory: over every legal layout at its smallest
    micro-batch and largest expert-parallel degree, the most sharding, checkpointing of every block, state offload
    of every block, compile and sequence parallelism where allowed, per-stage counts as lists (legal for any
    split)."""
    best = None
    for t, c, p, d in layouts(model, cluster, space, seq):
        splits = micro_batches(model, cluster, gbs, seq, t, p, d, space, cp=c)
        eps = expert_degrees(model, d, space)
        if not splits or not eps:
            continue
        mbs, M = splits[0]
        sched = "1F1B" if p == 1 or "1F1B" in space.schedules else \
            "GPipe" if "GPipe" in space.schedules else "Interleaved1F1B"
        v = 1 if sched != "Interleaved1F1B" else min(space.virtual_stages)
        layers = even_split(model.num_hidden_layers, p * v)
        rec = _one(space.recompute, ("full", "selective", "none"))
        zero = _one(tuple(2 if z == 1 else z for z in space.zero), (3, 2, 0))
        data = dict(global_batch_size=gbs, micro_batch_size=mbs, seq_len=seq, dp=d, tp=t, pp=p, cp=c, ep=eps[-1],
                    zero=zero, pp_reshard_after_forward=p > 1 and zero == 3,
                    recompute=rec, recompute_layers=list(layers) if rec != "none" else None,
                    offload_activation_layers=list(layers) if rec == "none" and space.offload else 0,
                    offload_state_layers=list(layers) if space.offload else 0,
                    compile=_one(space.compile, (True, False)),
                    sequence_parallel=_one(space.sequence_parallel, (True, False)),
                    grad_reduce=_one(space.grad_reduce, ("every", "last")) if p == 1 and M > 1 else "last",
                    pp_schedule=sched, virtual_stages=v, layers_per_stage=list(layers) if p * v > 1 else None)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                pred = predict(model, cluster, parse_plan(data, "<least-memory plan>"), profile=prof)
        except SpecError:
            continue
        key = (pred.peak_memory_bytes, pred.host_memory_bytes)
        if best is None or key < best[2]:
            best = (pred, data, key)
    return (best[0], best[1]) if best else None


def _describe(d: dict) -> str:
    ckpt = {"none": "no checkpointing", "full": "full checkpointing", "selective": "selective checkpointing"}
    off = ", state offloaded" if d.get("offload_state_layers") else ""
    off += ", activations offloaded" if d.get("offload_activation_layers") else ""
    cp = f" · cp {d['cp']}" if d.get("cp", 1) > 1 else ""
    ep = f" (ep {d['ep']})" if d.get("ep", 1) > 1 else ""
    return (f"tp {d['tp']}{cp} · pp {d['pp']} · dp {d['dp']}{ep}, micro-batch {d['micro_batch_size']}, zero {d['zero']}, "
            f"{ckpt[d['recompute']]}{off}")


def _fits_with(model, cluster, gbs, seq, space, deadline: float) -> tuple[object, bool] | None:
    """Run the tuner on a changed job: (its best candidate or None, whether it finished)."""
    from .tuner import tune
    left = deadline - time.perf_counter()
    if left <= 0.05:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = tune(model, cluster, gbs, seq, space, top_k=1, time_limit_s=min(CHECK_S, left), diagnose=False)
    except (SpecError, ValueError):
        return None
    return res.best, not res.timed_out


def _plan_words(c) -> str:
    p = c.plan
    cp = f" · cp {p.cp}" if p.cp > 1 else ""
    return f"tp {p.tp}{cp} · pp {p.pp} · dp {p.dp}, {c.step_time_s:.3g} s per step"


def _bigger_clusters(cluster: ClusterSpec, limit: int = 64) -> list[ClusterSpec]:
    out, c = [], cluster
    while c.num_gpus < cluster.num_gpus * limit:
        if c.nodes == 1 and c.gpus_per_node < 8:
            c = dataclasses.replace(c, gpus_per_node=c.gpus_per_node * 2, name="")
        else:
            c = dataclasses.replace(c, nodes=c.nodes * 2, name="")
        out.append(c)
    return out


def diagnose(model: ModelSpec, cluster: ClusterSpec, gbs: int, seq: int, space: SearchSpace, prof: HardwareProfile,
             no_layout: bool = False, timed_out: bool = False, searched: tuple[int, int] = (0, 0),
             time_limit_s: float | None = None, budget_s: float = BUDGET_S) -> list[str]:
    """Sentences: why no plan came back, and what would make one fit."""
    if no_layout:
        return _no_layout(model, cluster, gbs, seq, space)
    if timed_out:
        return [f"time limit reached before any plan: {searched[0]} of {searched[1]} layouts searched in "
                f"{time_limit_s:g} s; plans may still fit — raise --time-limit"]
    deadline = time.perf_counter() + budget_s
    lines = []
    found = least_memory_plan(model, cluster, gbs, seq, space, prof)
    if found is None:
        return ["no plan fits: no legal plan of the space could be costed for this model and cluster"]
    pred, data = found
    gpu_ok = prof.fits(pred.peak_memory_bytes)
    host_ok = pred.host_memory_bytes <= prof.host_budget_bytes
    mem = pred.memory_breakdown
    top = max(mem, key=mem.get)
    if not gpu_ok:
        lines.append(f"no plan fits: even the least-memory plan ({_describe(data)}) needs "
                     f"{prof.needed_bytes(pred.peak_memory_bytes) / GiB:.1f} GiB per GPU of {prof.memory_gib:.1f}; the "
                     f"largest term is {top.replace('_', ' ')} ({mem[top] / GiB:.1f} GiB)")
    elif not host_ok:
        lines.append(f"no plan fits: the GPUs fit only with offload, and the least-memory plan ({_describe(data)}) "
                     f"needs {pred.host_memory_bytes / GiB:.0f} GiB of host memory per node, over the "
                     f"{prof.host_budget_bytes / GiB:.0f} GiB offload may use "
                     f"({prof.const('host_memory_usable_fraction'):.0%} of {prof.host_memory_gib:.0f} GiB): "
                     "host memory binds")
    else:
        lines.append(f"no plan fits the search, yet the least-memory plan ({_describe(data)}) fits at "
                     f"{pred.step_time_s:.3g} s per step; please report this")
    lines += _relaxed_pins(model, cluster, gbs, seq, space, deadline)
    lines += _changes(model, cluster, gbs, seq, space, prof, deadline)
    return lines


def _relaxed_pins(model, cluster, gbs, seq, space, deadline) -> list[str]:
    default = SearchSpace()
    out = []
    for key in RELAXABLE:
        value = getattr(space, key)
        if value == getattr(default, key):
            continue
        got = _fits_with(model, cluster, gbs, seq, dataclasses.replace(space, **{key: getattr(default, key)}),
                         deadline)
        if got and got[0] is not None:
            out.append(f"relaxing the pin {key}={_show(value)} fits: {_plan_words(got[0])}")
        elif got and not got[1]:
            out.append(f"relaxing the pin {key}={_show(value)}: not settled within the diagnosis' time")
    return out


def _show(v) -> str:
    if isinstance(v, tuple):
        return ",".join(map(str, v))
    return str(v)


def _changes(model, cluster, gbs, seq, space, prof, deadline) -> list[str]:
    """The smallest change of each kind that fits, found by running the tuner (GPUs, batch, sequence, GPU kind)."""
    out = []
    for c in _bigger_clusters(cluster):
        got = _fits_with(model, c, gbs, seq, space, deadline)
        if got and got[0] is not None:
            out.append(f"{c.num_gpus} GPUs ({c.nodes} × {c.gpus_per_node} {cluster.gpu}) would fit: "
                       f"{_plan_words(got[0])}")
            break
    for g in _nearby(gbs, low=1):
        got = _fits_with(model, cluster, g, seq, space, deadline)
        if got and got[0] is not None:
            out.append(f"a global batch of {g} sequences would fit: {_plan_words(got[0])}")
            break
    s = seq
    while s > 128:
        s //= 2
        got = _fits_with(model, cluster, gbs, s, space, deadline)
        if got and got[0] is not None:
            out.append(f"a sequence length of {s} would fit: {_plan_words(got[0])}")
            break
    for kind in _bigger_gpus(prof):
        c = dataclasses.replace(cluster, gpu=kind, name="")
        got = _fits_with(model, c, gbs, seq, space, deadline)
        if got and got[0] is not None:
            out.append(f"the same {cluster.num_gpus} GPUs as {kind} ({load_profile(kind).memory_gib:.0f} GiB) would "
                       f"fit: {_plan_words(got[0])}")
            break
    if not out:
        out.append("no change tried fits (up to 64× the GPUs, the batch halved or doubled twice, sequences down to "
                   "128, every larger GPU kind)" + (" within the diagnosis' time" if time.perf_counter() > deadline
                                                    else ""))
    return out


def _nearby(gbs: int, low: int) -> list[int]:
    out = []
    for k in (2, 4):
        if gbs // k >= low and gbs % k == 0:
            out.append(gbs // k)
        out.append(gbs * k)
    return out


def _bigger_gpus(prof: HardwareProfile) -> list[str]:
    kinds = []
    for k in GPU_KINDS:
        try:
            p = load_profile(k)
        except (SpecError, FileNotFoundError):
            continue
        if p.memory_gib > prof.memory_gib:
            kinds.append((p.memory_gib, k))
    return [k for _, k in sorted(kinds)]


def _no_layout(model, cluster, gbs, seq, space) -> list[str]:
    rejected: dict = {}
    lays = layouts(model, cluster, space, seq, rejected)
    if not lays:
        why = sorted(set(rejected.values()))
        pins = [k for k in ("tp", "cp", "pp", "dp") if getattr(space, k) is not None]
        hint = f"unpin {'/'.join(pins)} or change the GPU count" if pins else "change the GPU count"
        return [f"no (tp, cp, pp, dp) with tp·cp·pp·dp = {cluster.num_gpus} GPUs satisfies the pins and the plan "
                f"rules ({'; '.join(why[:3]) or 'the pins exclude every layout'}); {hint}"]
    if not any(expert_degrees(model, lay.dp, space) for lay in lays):
        return [f"no data-parallel degree {sorted({lay.dp for lay in lays})} admits the pinned expert-parallel "
                f"degree {space.ep}: it must divide both dp and the {model.num_experts} routed experts; unpin ep"]
    dps = sorted({lay.dp for lay in lays})
    for t, c, p, d in lays:
        if gbs % d == 0:      # the batch splits; the micro-batch rules refused it: say which
            why = probe_problem(model, cluster, global_batch_size=gbs, micro_batch_size=space.micro_batch_size or 1,
                                seq_len=seq, dp=d, tp=t, pp=p, cp=c, zero=2, recompute="none")
            if why:
                return [f"global batch {gbs} has no micro-batch split that the plan rules accept for any layout "
                        f"(e.g. tp {t} · pp {p} · dp {d}: {why})"]
    return [f"global batch {gbs} does not split into whole micro-batches for any data-parallel degree {dps} "
            f"(pipelines also need at least pp micro-batches); use a multiple of {min(dps)} sequences "
            f"≥ {min(dps) * min(lay.pp for lay in lays)}"]

