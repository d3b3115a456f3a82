"""From raw measurements to a HardwareProfile: efficiencies, fitted curves and links, the rest from a base profile.

No device code here: the profiler fills a ``Measurements`` and this module does the arithmetic, so the whole
assembly is tested on CPU with fabricated measurements.
"""
from __future__ import annotations

import dataclasses
import statistics
from dataclasses import dataclass, field

from costmodel.fit import bus_factor, curve_errors, fit_alpha_beta, fit_curve, ring_steps
from costmodel.comm import Tier
from costmodel.hardware import Curve, HardwareProfile, profile_name_for_gpu



@dataclass(kw_only=True)
class Measurements:
    """What one profiling run measured. None (or empty) means "not measured": the base profile's value stays."""

    gpu_name: str = ""
    """torch.cuda.get_device_name(), e.g. 'NVIDIA H200'."""
    torch_version: str = ""
    """torch.__version__ on the GPU node."""
    date: str = ""
    """ISO date of the run."""
    command: str = ""
    """Command line that produced the profile (goes into `source`)."""
    world_size: int = 1
    """GPUs measured together (collectives need 2 or more)."""
    gemm: list[dict] = field(default_factory=list)
    """bf16 GEMMs: dicts with m, n, k and seconds per call."""
    fp8_gemm: list[dict] = field(default_factory=list)
    """float8 (e4m3 tensorwise) GEMMs, same keys; empty where float8 is unsupported."""
    fp8_rowwise_gemm: list[dict] = field(default_factory=list)
    """float8 GEMMs with rowwise scales, on a subset of the fp8_gemm shapes; empty where not measured."""
    fp8_note: str = ""
    """Why float8 was not measured, if it was not."""
    attention: list[dict] = field(default_factory=list)
    """Causal SDPA fwd+bwd: dicts with batch, heads, kv_heads, seq, head_dim, seconds."""
    hbm_gbps: float | None = None
    """Device copy bandwidth, read + write, GB/s."""
    h2d_gbps: float | None = None
    """Pinned host-to-device bandwidth, GB/s."""
    d2h_gbps: float | None = None
    """Pinned device-to-host bandwidth, GB/s."""
    cpu_adam_params_per_s: float | None = None
    """CPU AdamW parameters per second with one GPU's share of the host cores."""
    cpu_adam_threads: int | None = None
    """Threads the CPU AdamW measurement used."""
    kernel_launch_s: float | None = None
    """Host seconds per tiny eager kernel launch."""
    memory_gib: float | None = None
    """Device memory PyTorch can allocate, GiB."""
    context_gib: float | None = None
    """Device memory used outside the allocator after initialisation, GiB."""
    collectives: dict[str, list[list[float]]] = field(default_factory=dict)
    """{op: [[bytes, seconds], ...]} on the world group (ranks merged with max)."""
    comm_compute_slowdown: float | None = None
    """GEMM slowdown beside an all-gather (fraction)."""
    comm_efficiency: float | None = None
    """All-gather bandwidth with a GEMM beside / alone."""
    h2d_compute_slowdown: float | None = None
    """GEMM slowdown beside a pinned host-to-device copy (fraction)."""
    comm_overlap_note: str = ""
    """How comm_compute_slowdown was measured when not beside a real collective (one-GPU emulation)."""


# Fields merged over ranks: the slowest GPU paces a lock-step job, so throughputs take the min, costs the max.
_MIN_FIELDS = ("hbm_gbps", "h2d_gbps", "d2h_gbps", "cpu_adam_params_per_s", "memory_gib", "comm_efficiency")
_MAX_FIELDS = ("kernel_launch_s", "context_gib", "comm_compute_slowdown", "h2d_compute_slowdown")


def merge_ranks(per_rank: list[Measurements]) -> Measurements:
    """One Measurements from every rank's: rank 0's curves, the worst rank's scalars, max collective times."""
    if not per_rank:
        raise ValueError("merge_ranks got no measurements; every rank must report")
    out = dataclasses.replace(per_rank[0])
    for name in _MIN_FIELDS + _MAX_FIELDS:
        vals = [getattr(m, name) for m in per_rank if getattr(m, name) is not None]
        if vals:
            setattr(out, name, min(vals) if name in _MIN_FIELDS else max(vals))
    out.collectives = {}
    for op, rows in per_rank[0].collectives.items():
        merged = []
        for i, (nbytes, sec) in enumerate(rows):
            merged.append([nbytes, max(m.collectives[op][i][1] for m in per_rank)])
        out.collectives[op] = merged
    return out


def base_profile_for_gpu(gpu_name: str, total_memory_bytes: float) -> str:
    """The shipped datasheet profile for a device name (what unmeasured fields are taken from)."""
    name = profile_name_for_gpu(gpu_name, total_memory_bytes)
    if name is not None:
        return name
    raise ValueError(f"no datasheet profile for GPU {gpu_name!r}; pass --base with the closest profile in "
                     "profiles/ (its peaks normalise the efficiencies)")


def gemm_points(rows: list[dict], peak_tflops: float) -> tuple[list[float], list[float]]:
    """(FLOPs = 2mnk, efficiency = achieved / peak) for GEMM rows."""
    xs = [2.0 * r["m"] * r["n"] * r["k"] for r in rows]
    return xs, [x / r["seconds"] / 1e12 / peak_tflops for x, r in zip(xs, rows)]


def attention_points(rows: list[dict], peak_tflops: float) -> tuple[list[float], list[float]]:
    """(FLOPs per call, efficiency) for SDPA rows; FLOPs as in profile_shapes.AttentionShape.flops
    (3.5 x the causal-halved forward 2·b·a·s²·dh), the convention the cost model's attention term uses."""
    xs = [3.5 * 2.0 * r["batch"] * r["heads"] * r["seq"] ** 2 * r["head_dim"] for r in rows]
    return xs, [x / r["seconds"] / 1e12 / peak_tflops for x, r in zip(xs, rows)]


def _sig(x: float, digits: int = 4) -> float:
    """``x`` to significant digits (decimal places would zero a CPU test's 1e-5 efficiencies)."""
    return float(f"{x:.{digits}g}")


def _round_curve(c: Curve) -> Curve:
    return Curve(max_eff=_sig(c.max_eff), half_x=_sig(c.half_x), exponent=_sig(c.exponent, 3),
                 points=[[_sig(x, 5), _sig(e)] for x, e in c.points])


def _fit_or_keep(rows: list[dict], peak: float, points_fn, base: Curve, notes: list[str], what: str) -> Curve:
    if not rows:
        return base
    xs, effs = points_fn(rows, peak)
    try:
        return _round_curve(fit_curve(xs, effs))
    except ValueError as e:
        notes.append(f"{what} kept from base ({e})")
        return base


def _raised_peak(rows: list[dict], peak: float, points_fn, what: str, notes: list[str]) -> float:
    """The datasheet peak, or the best measured throughput where that beats it (a wrong or unknown base)."""
    if not rows:
        return peak
    xs, effs = points_fn(rows, peak)
    best = max(effs) * peak
    if best > peak:
        notes.append(f"{what} raised from {peak:g} to measured {best:.1f} TFLOP/s")
        return _sig(best, 5)
    return peak


def collective_fits(table: dict[str, list[list[float]]], world_size: int) -> dict[str, dict]:
    """Per-op alpha-beta fits plus the raw table, for the profile's `constants.collectives`.

    ``latency_s`` is per ring step as in `Link` (one call costs ``steps`` of them), ``bandwidth_gbps`` is
    NCCL's bus bandwidth, ``table`` the measured [bytes, seconds per call] rows.
    """
    out = {}
    for op, rows in table.items():
        nbytes, secs = [r[0] for r in rows], [r[1] for r in rows]
        steps = ring_steps(op, world_size)
        entry: dict = {"steps": steps, "table": [[int(b), _sig(s, 5)] for b, s in rows]}
        try:
            lat, bw = fit_alpha_beta(nbytes, secs, bus_factor(op, world_size), steps)
            entry.update(latency_s=_sig(lat), bandwidth_gbps=_sig(bw))
        except ValueError as e:  # keep the measured table even when it does not fit the model
            entry["fit_error"] = " ".join(str(e).split())
        out[op] = {k: entry[k] for k in ("latency_s", "steps", "bandwidth_gbps", "fit_error", "table") if k in entry}
    return out


def measured_tier(table: dict[str, list[list[float]]], world_size: int, base: Tier, how: str) -> Tier:
    """The base tier with this run's curves (bus bandwidth per size, nccl-tests' convention) for its group size;
    point-to-point sends are not a curve of their own (costmodel.comm derives them from all-gather)."""
    curves = {op: dict(by_n) for op, by_n in base.curves.items()}
    for op, rows in table.items():
        if op == "send_recv":
            continue
        curves.setdefault(op, {})[world_size] = [[int(b), _sig(bus_factor(op, world_size) * b / s / 1e9)]
                                                 for b, s in rows]
    return Tier(source=f"{how} on {world_size} GPUs; other group sizes: {base.source}", curves=curves,
                members_per_node=base.members_per_node, scale=base.scale)


def rowwise_slowdown(tensorwise: list[dict], rowwise: list[dict]) -> float | None:
    """Median time ratio rowwise / tensorwise float8 GEMM over the shapes measured both ways (None if none)."""
    t = {(r["m"], r["n"], r["k"]): r["seconds"] for r in tensorwise}
    ratios = [r["seconds"] / t[(r["m"], r["n"], r["k"])] for r in rowwise if (r["m"], r["n"], r["k"]) in t]
    return float(statistics.median(ratios)) if ratios else None


def assemble_profile(m: Measurements, base: HardwareProfile, *, name: str) -> HardwareProfile:
    """The base profile with every measured field replaced and ``source`` saying what was measured how."""
    notes: list[str] = []
    # Only GEMMs can show the bf16 peak is wrong; attention above it means its FLOPs convention over-counts
    # for this kernel, and its fit then fails and keeps the base curve (with a note).
    bf16_peak = _raised_peak(m.gemm, base.bf16_tflops, gemm_points, "bf16_tflops", notes)
    fp8_peak = _raised_peak(m.fp8_gemm, base.fp8_tflops, gemm_points, "fp8_tflops", notes)
    gemm = _fit_or_keep(m.gemm, bf16_peak, gemm_points, base.gemm, notes, "gemm")
    fp8 = _fit_or_keep(m.fp8_gemm, fp8_peak, gemm_points, base.fp8_gemm, notes, "fp8_gemm")
    attn = _fit_or_keep(m.attention, bf16_peak, attention_points, base.attention, notes, "attention")
    if m.fp8_note:
        notes.append(f"fp8_gemm kept from base ({m.fp8_note})")

    records = dict(base.records)
    intra = base.intra_node
    how = f"measured {m.date} {m.gpu_name} torch {m.torch_version}: {m.command}"
    if m.collectives and m.world_size >= 2:
        records["collectives"] = {"world_size": m.world_size, **collective_fits(m.collectives, m.world_size)}
        intra = measured_tier(m.collectives, m.world_size, base.intra_node, how)
    if m.h2d_gbps is not None and m.d2h_gbps is not None:
        records["host_copy"] = {"h2d_gbps": _sig(m.h2d_gbps), "d2h_gbps": _sig(m.d2h_gbps)}
    if m.cpu_adam_threads is not None:
        records["cpu_adam_threads"] = m.cpu_adam_threads
    # each measured constant is credited to this run; the rest keep the base profile's value and source
    measured = {"fp8_rowwise_gemm_slowdown": rowwise_slowdown(m.fp8_gemm, m.fp8_rowwise_gemm),
                "comm_compute_slowdown": _clamp(m.comm_compute_slowdown, 0.0, 1.0),
                "comm_efficiency": _clamp(m.comm_efficiency, 1e-3, 1.0),
                "h2d_compute_slowdown": _clamp(m.h2d_compute_slowdown, 0.0, 1.0),
                "kernel_launch_s": m.kernel_launch_s, "context_gib": m.context_gib}
    measured = {k: _sig(v) for k, v in measured.items() if v is not None}
    # Offload moves both ways each step; the slower direction bounds it.
    host_link = min(m.h2d_gbps, m.d2h_gbps) if m.h2d_gbps and m.d2h_gbps else (m.h2d_gbps or m.d2h_gbps)

    source = (f"measured {m.date} {m.gpu_name} torch {m.torch_version} ({m.command}) on {m.world_size} GPU(s); "
              f"fields not measured from profile {base.name}")
    if notes:
        source += "; " + "; ".join(notes)
    comm_how = f"{how} ({m.comm_overlap_note})" if m.comm_overlap_note else how
    emulated = {k: measured.pop(k) for k in ("comm_compute_slowdown",) if k in measured and m.comm_overlap_note}
    prof = dataclasses.replace(
        base, name=name, source=source, memory_gib=_pick(m.memory_gib, base.memory_gib),
        bf16_tflops=bf16_peak, fp8_tflops=fp8_peak,
        hbm_gbps=_pick(m.hbm_gbps, base.hbm_gbps), host_link_gbps=_pick(host_link, base.host_link_gbps),
        cpu_adam_params_per_s=_pick(m.cpu_adam_params_per_s, base.cpu_adam_params_per_s),
        intra_node=intra, gemm=gemm, fp8_gemm=fp8, attention=attn, records=records)
    prof = prof.with_constants(how, **measured) if measured else prof
    return prof.with_constants(comm_how, **emulated) if emulated else prof


def _clamp(v: float | None, lo: float, hi: float | None) -> float | None:
    if v is None:
        return None
    return max(lo, v if hi is None else min(hi, v))


def _pick(measured: float | None, base: float) -> float:
    """The measured value to 4 significant digits, or the base's where nothing was measured."""
    return base if measured is None else _sig(measured)


def summary_lines(prof: HardwareProfile, m: Measurements, base: HardwareProfile) -> list[str]:
    """The short table the profiler prints: key numbers measured vs the base profile, and the fits."""
    def row(label: str, value: str, ref: str = "") -> str:
        return f"{label:<36}{value:>22}  {ref}"

    lines = [f"profile {prof.name}: {m.gpu_name}, torch {m.torch_version}, {m.world_size} GPU(s)",
             row("quantity", "measured", f"base ({base.name})")]
    sq = [r for r in m.gemm if r["m"] == r["n"] == r["k"]]
    for r in sorted(sq, key=lambda r: r["m"]):
        tf = 2.0 * r["m"] ** 3 / r["seconds"] / 1e12
        lines.append(row(f"bf16 GEMM {r['m']}^3 TFLOP/s", f"{tf:.1f}", f"peak {base.bf16_tflops:g}"))
    for label, v, ref, fmt in (("HBM copy GB/s (read+write)", m.hbm_gbps, base.hbm_gbps, ".0f"),
                               ("pinned H2D GB/s", m.h2d_gbps, base.host_link_gbps, ".1f"),
                               ("pinned D2H GB/s", m.d2h_gbps, base.host_link_gbps, ".1f"),
                               ("CPU AdamW params/s", m.cpu_adam_params_per_s, base.cpu_adam_params_per_s, ".3g"),
                               ("kernel launch us", None if m.kernel_launch_s is None else m.kernel_launch_s * 1e6,
                                base.kernel_launch_s * 1e6, ".2f"),
                               ("memory GiB (allocatable)", m.memory_gib, base.memory_gib, ".2f"),
                               ("context GiB (outside allocator)", m.context_gib, base.context_gib, ".2f")):
        lines.append(row(label, "-" if v is None else format(v, fmt), format(ref, fmt)))
    for key, rows, peak, pts in (("gemm", m.gemm, prof.bf16_tflops, gemm_points),
                                 ("fp8_gemm", m.fp8_gemm, prof.fp8_tflops, gemm_points),
                                 ("attention", m.attention, prof.bf16_tflops, attention_points)):
        c, b = getattr(prof, key), getattr(base, key)
        err = ""
        if rows:
            med, worst = curve_errors(c, *pts(rows, peak))
            err = f"{len(rows)} pts, |err| median {med:.1%} max {worst:.1%}"
        lines.append(row(f"{key} max_eff/half_x/exp", f"{c.max_eff:.3f}/{c.half_x:.3g}/{c.exponent:.2f}",
                         f"{b.max_eff:.3f}/{b.half_x:.3g}/{b.exponent:.2f}  {err}"))
    fits = prof.records.get("collectives", {}) if m.collectives else {}
    for op, fit in fits.items():
        if isinstance(fit, dict) and "latency_s" in fit:  # skip world_size and failed fits
            lines.append(row(f"{op} alpha us/call / busbw GB/s",
                             f"{fit['latency_s'] * fit['steps'] * 1e6:.1f} / {fit['bandwidth_gbps']:.1f}"))
    for op in ("all_gather", "reduce_scatter", "all_reduce"):
        if op in m.collectives and m.world_size >= 2:
            secs = prof.intra_node.time_s(op, m.world_size, [256 * 2**20])[0]
            ref = base.intra_node.time_s(op, m.world_size, [256 * 2**20])[0]
            f = bus_factor(op, m.world_size) * 256 * 2**20 / 1e9
            lines.append(row(f"{op} busbw GB/s at 256 MiB", f"{f / secs:.1f}", f"{f / ref:.1f}"))
    ov = ("comm_compute_slowdown", "comm_efficiency", "h2d_compute_slowdown")
    lines.append(row("overlap comm_slow/comm_eff/h2d_slow", "/".join(f"{prof.const(k):.3f}" for k in ov),
                     "/".join(f"{base.const(k):.3f}" for k in ov)))
    return lines
