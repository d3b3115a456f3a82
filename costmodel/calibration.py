"""`loadmaster calibrate`: refit a few efficiency and overlap constants of a hardware profile to measured runs.

Each run's step time is predicted with ``costmodel.predict`` under a profile whose chosen constants are
replaced; ``scipy.optimize.least_squares`` minimises the relative errors ``predicted / measured - 1`` within
bounds. Only constants the runs can identify are fitted: a pivoted QR of the error's sensitivity to each constant
(at the starting profile) drops those no run depends on and those indistinguishable from another already kept;
they stay unchanged, with the reason. Overfitting is guarded by the bounds, by refusing more constants than
runs, and by reporting the leave-one-out error (each run predicted by a fit made without it).

Peak memory has no fitted constant in the symbolic model (it depends on the plan alone); the allocator's
``fragmentation`` (reserved / allocated - 1 at the peak) is refit in closed form when the runs recorded their
peak reserved memory, since it decides which plans are called out of memory.
"""
from __future__ import annotations

import dataclasses
import datetime
import statistics
import warnings
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from .hardware import HardwareProfile
from .prediction import predict
from .runs import MeasuredRun
from .stage import hardware_inputs


@dataclass(frozen=True)
class Knob:
    """One refittable constant: where it lives in the profile and the box it is fitted in."""

    name: str
    """Name on the command line and in reports (the profile path, or the `constants` key)."""
    symbol: str
    """Its input of the cost formulas (costmodel.stage.hardware_inputs), which also gives its current value."""
    path: tuple[str, ...]
    """Where it is stored: a top-level field, a nested (section, field), or ("constants", key)."""
    lo: float
    """Lower bound of the fit."""
    hi: float
    """Upper bound of the fit."""
    step: float
    """The smallest change worth telling apart (identifiability is judged per such step)."""

    def get(self, prof: HardwareProfile) -> float:
        if len(self.path) == 2 and self.path[0] != "constants":  # the stored value, before in_training scaling
            return float(getattr(getattr(prof, self.path[0]), self.path[1]))
        return float(hardware_inputs(prof)[self.symbol])

    def set(self, prof: HardwareProfile, value: float) -> HardwareProfile:
        if len(self.path) == 1:
            return dataclasses.replace(prof, **{self.path[0]: value})
        section, key = self.path
        if section == "constants":
            return prof.with_constants("refit by loadmaster calibrate", **{key: value})
        return dataclasses.replace(prof, **{section: dataclasses.replace(getattr(prof, section), **{key: value})})


KNOBS = {k.name: k for k in (
    Knob(name="gemm.max_eff", symbol="ge_max", path=("gemm", "max_eff"), lo=0.05, hi=1.0, step=0.05),
    Knob(name="fp8_gemm.max_eff", symbol="f8_max", path=("fp8_gemm", "max_eff"), lo=0.05, hi=1.0, step=0.05),
    Knob(name="attention.max_eff", symbol="at_max", path=("attention", "max_eff"), lo=0.05, hi=1.0, step=0.05),
    Knob(name="elementwise_efficiency", symbol="ew_eff", path=("constants", "elementwise_efficiency"),
         lo=0.05, hi=1.0, step=0.05),
    Knob(name="comm_compute_slowdown", symbol="slow_comm", path=("constants", "comm_compute_slowdown"),
         lo=0.0, hi=1.0, step=0.05),
    Knob(name="comm_efficiency", symbol="comm_eff", path=("constants", "comm_efficiency"), lo=0.05, hi=1.0,
         step=0.05),
    Knob(name="h2d_compute_slowdown", symbol="slow_h2d", path=("constants", "h2d_compute_slowdown"),
         lo=0.0, hi=1.0, step=0.05),
    Knob(name="fsdp_hook_s", symbol="hook", path=("constants", "fsdp_hook_s"), lo=0.0, hi=1e-3, step=10e-6),
    Knob(name="kernel_launch_s", symbol="launch", path=("constants", "kernel_launch_s"), lo=0.0, hi=1e-4, step=1e-6),
)}
DEFAULT_KNOBS = tuple(KNOBS)
# Run-to-run noise of measured step times (~1 %): a constant is identified when one step of it, beyond what the
# constants kept before it can absorb, moves the runs' predicted step times by at least this much
# (root-sum-square of the relative changes over the runs).
NOISE = 0.01


@dataclass
class RunFit:
    """One measured run: step time measured and predicted before, after and leave-one-out (seconds)."""

    name: str
    measured_s: float
    before_s: float
    after_s: float
    loo_s: float | None
    measured_bytes: float | None
    predicted_bytes: float

    @property
    def errors(self) -> dict[str, float | None]:
        e = lambda x: None if x is None else x / self.measured_s - 1  # noqa: E731
        mem = self.predicted_bytes / self.measured_bytes - 1 if self.measured_bytes else None
        return {"before": e(self.before_s), "after": e(self.after_s), "loo": e(self.loo_s), "memory": mem}


@dataclass
class Calibration:
    """What `calibrate` did: the new profile, each constant's old and new value, and the errors per run."""

    profile: HardwareProfile
    base: HardwareProfile
    fitted: dict[str, tuple[float, float, float | None]]
    """Refit constants: (before, after, standard error of after or None)."""
    unchanged: dict[str, str]
    """Constants left as they were, and why."""
    runs: list[RunFit]
    oom_runs: list[dict] = field(default_factory=list)
    """Out-of-memory runs: name, and whether the calibrated profile calls them (predicts they do not fit)."""
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for kind in ("before", "after", "loo", "memory"):
            errs = [abs(r.errors[kind]) for r in self.runs if r.errors[kind] is not None]
            out[f"{kind}_median_abs_err"] = statistics.median(errs) if errs else None
            out[f"{kind}_max_abs_err"] = max(errs) if errs else None
        return out

    def to_dict(self) -> dict:
        return {"profile": self.profile.name, "base": self.base.name, "summary": self.summary(),
                "fitted": {k: {"before": b, "after": a, "stderr": se} for k, (b, a, se) in self.fitted.items()},
                "unchanged": self.unchanged,
                "runs": [dict(dataclasses.asdict(r), errors=r.errors) for r in self.runs],
                "oom_runs": self.oom_runs, "notes": self.notes}


def predicted_step_times(runs: Sequence[MeasuredRun], prof: HardwareProfile) -> np.ndarray:
    """costmodel.predict's step time of every run under ``prof`` (with each run's cluster link overrides)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # plan warnings (zero 1, float8 without compile) were shown at load
        return np.array([predict(r.model, r.cluster, r.plan, profile=prof.with_cluster(r.cluster)).step_time_s
                         for r in runs])


def _with(base: HardwareProfile, knobs: Sequence[Knob], values: Sequence[float]) -> HardwareProfile:
    prof = base
    for k, v in zip(knobs, values):
        prof = k.set(prof, float(v))
    return prof


def _boxes(base: HardwareProfile, knobs: Sequence[Knob]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lower, upper, starting value) of each knob; a box is widened to hold the profile's current value."""
    start = np.array([k.get(base) for k in knobs])
    lo = np.minimum([k.lo for k in knobs], start)
    hi = np.maximum([k.hi for k in knobs], start)
    return lo, hi, start


def _residuals_fn(runs: Sequence[MeasuredRun], base: HardwareProfile, knobs: Sequence[Knob], lo, hi
                  ) -> Callable[[np.ndarray], np.ndarray]:
    """Relative step-time errors as a function of the knobs scaled to [0, 1] within their boxes."""
    measured = np.array([r.step_time_s for r in runs])

    def residuals(u: np.ndarray) -> np.ndarray:
        prof = _with(base, knobs, lo + u * (hi - lo))
        return predicted_step_times(runs, prof) / measured - 1.0
    return residuals


def identifiable(runs: Sequence[MeasuredRun], base: HardwareProfile, knobs: Sequence[Knob]
                 ) -> tuple[list[Knob], list[Knob], dict[str, str]]:
    """(knobs that move the predictions, most first; those of them the runs determine, most telling first; a
    reason for each knob left out).

    The sensitivity of every run's relative error to one ``step`` of each knob (central differences at the
    starting profile) must reach NOISE (root-sum-square over the runs); the sensitivities of the knobs that do
    go through a pivoted QR, whose k-th diagonal is what the k-th knob changes that the knobs before it cannot,
    and must reach NOISE too."""
    from scipy.linalg import qr
    lo, hi, start = _boxes(base, knobs)
    span = np.where(hi > lo, hi - lo, 1.0)
    f = _residuals_fn(runs, base, knobs, lo, hi)
    u0 = (start - lo) / span
    jac = np.empty((len(runs), len(knobs)))
    for j, k in enumerate(knobs):
        h = 0.5 * k.step / span[j]
        up, down = u0.copy(), u0.copy()
        up[j], down[j] = min(u0[j] + h, 1.0), max(u0[j] - h, 0.0)
        jac[:, j] = (f(up) - f(down)) / (up[j] - down[j]) * (k.step / span[j])
    effect = np.linalg.norm(jac, axis=0)
    reasons = {}
    for k, e in zip(knobs, effect):
        if e < 1e-9:
            reasons[k.name] = "no run's predicted step time depends on it at the current values"
        elif e < NOISE:
            reasons[k.name] = (f"a change of {k.step:g} moves the runs' predicted step times by {e:.2%} "
                               f"(root-sum-square), below run-to-run noise ({NOISE:.0%})")
    live = sorted((j for j, k in enumerate(knobs) if k.name not in reasons), key=lambda j: -effect[j])
    keep: list[Knob] = []
    if live:
        _, r, perm = qr(jac[:, live], mode="economic", pivoting=True)
        diag = np.abs(np.diag(r))
        for i, p in enumerate(perm):
            k = knobs[live[p]]
            if i < len(diag) and diag[i] >= NOISE:
                keep.append(k)
            else:
                reasons[k.name] = (f"what it changes, {', '.join(x.name for x in keep)} already explain "
                                   "(add runs that vary it on its own)")
    return [knobs[j] for j in live], keep, reasons


def fit(runs: Sequence[MeasuredRun], base: HardwareProfile, knobs: Sequence[Knob],
        start: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Least-squares values of ``knobs`` (in their units) for ``runs``, starting at ``start`` or the profile, and
    their standard errors (None with no more runs than knobs) from the Jacobian at the solution."""
    from scipy.optimize import least_squares
    lo, hi, current = _boxes(base, knobs)
    x0 = current if start is None else start
    span = np.where(hi > lo, hi - lo, 1.0)
    u0 = np.clip((x0 - lo) / span, 0.0, 1.0)
    res = least_squares(_residuals_fn(runs, base, knobs, lo, hi), u0, bounds=(0.0, 1.0), method="trf",
                        x_scale=1.0, xtol=1e-10, ftol=1e-12, gtol=1e-12, max_nfev=200 * (len(knobs) + 1))
    se = None
    dof = len(runs) - len(knobs)
    if dof > 0:
        jtj = res.jac.T @ res.jac
        if np.linalg.matrix_rank(jtj) == len(knobs):
            se = np.sqrt(np.diag(np.linalg.inv(jtj)) * 2 * res.cost / dof) * span
    return lo + res.x * span, se


def refit_fragmentation(runs: Sequence[MeasuredRun]) -> float | None:
    """reserved ≈ (1 + f) · allocated over the runs that recorded both, least squares on relative error; None
    without such runs."""
    pairs = [(r.peak_memory_bytes, r.peak_reserved_bytes) for r in runs
             if r.peak_memory_bytes and r.peak_reserved_bytes and not r.oom]
    if not pairs:
        return None
    w = np.array([a / res for a, res in pairs])
    return float(min(max(w.sum() / (w * w).sum() - 1.0, 0.0), 1.0))


def calibrate(runs: Sequence[MeasuredRun], base: HardwareProfile, *, knobs: Sequence[str] = DEFAULT_KNOBS,
              name: str | None = None, sources: Sequence[str] = (),
              progress: Callable[[int, int], None] | None = None) -> Calibration:
    """Refit the identifiable ``knobs`` of ``base`` to the measured step times of ``runs`` (and the allocator
    fragmentation to their reserved memory). ValueError when the runs cannot support the fit.
    ``progress(done, total)`` is called after each of the fits (the full one, then one per left-out run)."""
    report = progress or (lambda done, total: None)
    unknown = [k for k in knobs if k not in KNOBS]
    if unknown:
        raise ValueError(f"unknown constant {unknown[0]!r}; calibrate can refit {', '.join(KNOBS)}")
    if not runs:
        raise ValueError("no measured runs to calibrate on; give run directories, summary.json or bench .jsonl "
                         "files of finished runs")
    gpus = sorted({r.cluster.gpu for r in runs})
    if len(gpus) > 1:
        raise ValueError(f"the runs used different GPUs ({', '.join(gpus)}); calibrate one GPU type at a time")
    timed = [r for r in runs if not r.oom]
    if not timed:
        raise ValueError("every run ran out of memory: none has a step time to fit; add finished runs")
    chosen = [KNOBS[k] for k in knobs]
    live, keep, reasons = identifiable(timed, base, chosen)
    if len(timed) < len(live):
        raise ValueError(f"{len(timed)} timed run(s) cannot determine {len(live)} constants "
                         f"({', '.join(k.name for k in live)}): add runs, or fit at most {len(timed)} with "
                         f"--params {','.join(k.name for k in live[:len(timed)])}")
    before = predicted_step_times(timed, base)
    n_fits = 1 + (len(timed) if keep and len(timed) - 1 >= len(keep) else 0)
    values, stderr = fit(timed, base, keep) if keep else (np.array([]), None)
    report(1, n_fits)
    prof = _with(base, keep, values)
    notes = []
    frag = refit_fragmentation(runs)
    if frag is not None:
        notes.append(f"fragmentation {base.fragmentation:.3f} -> {frag:.3f} (reserved / allocated of "
                     f"{sum(1 for r in runs if r.peak_reserved_bytes and not r.oom)} runs)")
        prof = prof.with_constants("refit by loadmaster calibrate from the runs' reserved memory", fragmentation=round(frag, 4))
    after = predicted_step_times(timed, prof)
    loo: list[float | None] = [None] * len(timed)
    if keep and len(timed) - 1 >= len(keep):
        for i in range(len(timed)):
            rest = timed[:i] + timed[i + 1:]
            loo[i] = float(predicted_step_times([timed[i]], _with(base, keep, fit(rest, base, keep, values)[0]))[0])
            report(i + 2, n_fits)
    elif keep:
        notes.append(f"no leave-one-out error: {len(timed)} runs leave too few to refit {len(keep)} constants")
    mem = [_predicted_peak(r, prof) for r in timed]
    fits = [RunFit(name=r.name, measured_s=r.step_time_s, before_s=float(b), after_s=float(a), loo_s=lo,
                   measured_bytes=r.peak_memory_bytes, predicted_bytes=m)
            for r, b, a, lo, m in zip(timed, before, after, loo, mem)]
    ooms = [{"name": r.name, "called": not _feasible(r, prof)} for r in runs if r.oom]
    fitted = {k.name: (k.get(base), k.get(prof), None if stderr is None else float(stderr[j]))
              for j, k in enumerate(keep)}
    prof = dataclasses.replace(prof, name=name or base.name, source=_source(base, runs, fitted, sources))
    return Calibration(profile=prof, base=base, fitted=fitted,
                       unchanged={k: v for k, v in reasons.items() if k in knobs}, runs=fits, oom_runs=ooms,
                       notes=notes)


def _predicted_peak(run: MeasuredRun, prof: HardwareProfile) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return predict(run.model, run.cluster, run.plan, profile=prof.with_cluster(run.cluster)).peak_memory_bytes


def _feasible(run: MeasuredRun, prof: HardwareProfile) -> bool:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return predict(run.model, run.cluster, run.plan, profile=prof.with_cluster(run.cluster)).feasible


def _source(base: HardwareProfile, runs: Sequence[MeasuredRun], fitted: dict, sources: Sequence[str]) -> str:
    names = [r.name for r in runs]
    shown = ", ".join(names[:12]) + (f", … ({len(names) - 12} more)" if len(names) > 12 else "")
    files = f" in {', '.join(sources)}" if sources else ""
    refit = ", ".join(fitted) or "nothing"
    return (f"calibrated {datetime.date.today().isoformat()} by loadmaster calibrate from {len(runs)} measured "
            f"runs ({shown}){files}; refit {refit}; other constants from profile {base.name} "
            f"(source: {base.source[:300]})")


