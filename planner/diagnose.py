"""When nothing fits: what binds, and the smallest change that would fit."""
from __future__ import annotations

import dataclasses

from costmodel import ClusterSpec, ModelSpec, SpecError, parse_plan
from costmodel.hardware import HardwareProfile
from costmodel.prediction import Prediction, predict
from costmodel.hardware import GiB

from .space import SearchSpace, expert_degrees, layouts, micro_batches



def _frugal(model: ModelSpec, cluster: ClusterSpec, gbs: int, seq: int, space: SearchSpace,
            prof: HardwareProfile, offload: bool) -> tuple[Prediction, dict] | None:
    """The least-memory plan of the space: zero 3, full checkpointing, micro-batch 1, offload if allowed, the
    largest expert-parallel degree allowed, over every legal layout."""
    best = None
    for t, c, p, d in layouts(model, cluster, space, seq):
        mbs = micro_batches(gbs, d, p, space)
        if not mbs:
            continue
        n = model.num_hidden_layers
        eps = expert_degrees(model, d, space)
        if not eps:
            continue
        plan = dict(global_batch_size=gbs, micro_batch_size=mbs[0][0], seq_len=seq, dp=d, tp=t, pp=p, cp=c,
                    ep=eps[-1],
                    zero=(2 if p > 1 else 3) if 3 in space.zero else max(space.zero),
                    grad_reduce="every" if p == 1 else "last",
                    recompute="full" if "full" in space.recompute else space.recompute[0],
                    offload_state_layers=n if offload else 0, sequence_parallel=space.sequence_parallel)
        try:
            pred = predict(model, cluster, parse_plan(plan), profile=prof)
        except SpecError:
            continue
        if best is None or pred.peak_memory_bytes < best[0].peak_memory_bytes:
            best = (pred, plan)
    return best


def diagnose(model: ModelSpec, cluster: ClusterSpec, gbs: int, seq: int, space: SearchSpace,
             prof: HardwareProfile, no_layout: bool = False) -> list[str]:
    """Sentences: why no plan fits, and which single change would make one fit."""
    if no_layout:
        rejected: dict = {}
        lays = layouts(model, cluster, space, seq, rejected)
        if not lays:
            why = sorted(set(rejected.values()))
            return [f"no (tp, cp, pp, dp) with tp·cp·pp·dp = {cluster.num_gpus} GPUs satisfies the pins and the "
                    f"plan rules ({'; '.join(why[:3]) or 'the pins exclude every layout'}); unpin tp/cp/pp/dp or "
                    "change the GPU count"]
        ok_dp = sorted({lay.dp for lay in lays})
        return [f"global batch {gbs} does not split into whole micro-batches for any data-parallel degree "
                f"{ok_dp} (pipelines also need at least pp micro-batches); use a multiple of "
                f"{min(ok_dp)} sequences ≥ {min(ok_dp) * min(lay.pp for lay in lays)}"]
    found = _frugal(model, cluster, gbs, seq, space, prof, space.offload)
    if found is None:
        return ["no legal plan could be costed for this model and cluster"]
    pred, plan = found
    mem = pred.memory_breakdown
    top = max(mem, key=mem.get)
    ep = f", ep={plan['ep']}" if plan["ep"] > 1 else ""
    cp = f", cp={plan['cp']}" if plan["cp"] > 1 else ""
    lines = [f"even the least-memory plan (tp={plan['tp']}{cp}, pp={plan['pp']}, dp={plan['dp']}{ep}, micro-batch "
             f"{plan['micro_batch_size']}, zero 3, full checkpointing"
             f"{', state offloaded' if space.offload else ''}) needs {pred.peak_memory_bytes / GiB:.1f} GiB per "
             f"GPU of {prof.memory_gib:.1f}; the largest term is {top.replace('_', ' ')} "
             f"({mem[top] / GiB:.1f} GiB)"]
    if not space.offload:
        off = _frugal(model, cluster, gbs, seq, space, prof, offload=True)
        if off and off[0].feasible:
            lines.append("allowing offload (drop --no-offload) would fit")
    for factor in (2, 4, 8, 16, 32, 64):
        bigger = dataclasses.replace(cluster, nodes=cluster.nodes * factor)
        found_b = _frugal(model, bigger, gbs, seq, space, prof, space.offload)
        if found_b and found_b[0].feasible:
            lines.append(f"{factor}× the GPUs ({bigger.nodes} nodes × {bigger.gpus_per_node}) would fit")
            break
    s = seq
    while s > 128:
        s //= 2
        found_s = _frugal(model, cluster, gbs, s, space, prof, space.offload)
        if found_s and found_s[0].feasible:
            lines.append(f"a sequence length of {s} would fit")
            break
    if len(lines) == 1:
        lines.append("neither more GPUs (up to 64×) nor shorter sequences fit: this model needs a GPU with more "
                     "memory")
    return lines
