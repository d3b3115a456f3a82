"""Least-squares fits shared by `loadmaster profile` (launcher.gputools.profile) and `loadmaster calibrate`.

Two models, both stated in costmodel.hardware:
- an efficiency curve ``eff(x) = max_eff / (1 + (half_x / x) ** exponent)`` (GEMM, float8 GEMM, attention);
- the alpha-beta time of a collective ``t = steps * latency_s + algo_factor * bytes / bandwidth`` with NCCL's
  bus bandwidth convention (algo_factor 2(n-1)/n for all-reduce, (n-1)/n for all-gather / reduce-scatter)
  and the cost model's latency per ring step (costmodel.timing.ring_s: n-1 steps, 2(n-1) for all-reduce).

Both fits minimise *relative* error: the cost model turns an efficiency into a time, so a 5 % miss on a small
GEMM matters as much as a 5 % miss on a large one. numpy alone is enough; scipy, when installed, polishes
the curve fit (it is optional on GPU nodes).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from .comm import bus_factor
from .hardware import Curve

# Search box of the curve fit. half_x may lie below the smallest size measured (a curve already saturated
# there), so the box reaches three decades past the data on both sides.
_HALF_X_DECADES = 3.0
_EXPONENT_BOUNDS = (0.1, 8.0)


def _as_positive_array(values: Sequence[float], what: str) -> np.ndarray:
    arr = np.asarray(values, dtype=float).reshape(-1)
    bad = ~np.isfinite(arr) | (arr <= 0)
    if bad.any():
        raise ValueError(f"{what} {arr[bad][0]!r} is not a positive finite number; "
                         f"drop failed measurements (zero or NaN times) before fitting")
    return arr


def _curve_log_residuals(log_x: np.ndarray, log_eff: np.ndarray, log_max: np.ndarray,
                         log_half: np.ndarray, exponent: np.ndarray) -> np.ndarray:
    """log(model) - log(measured), broadcast over parameter grids (the last axis runs over the points)."""
    # log(1 + (h/x)^p) = logaddexp(0, p (log h - log x)): no overflow for any h/x.
    soft = np.logaddexp(0.0, exponent[..., None] * (log_half[..., None] - log_x))
    return log_max[..., None] - soft - log_eff


def _best_on_grid(log_x, log_eff, w, log_half_grid, exp_grid):
    """For every (half_x, exponent) on the grid the best max_eff is closed-form; return the best triple."""
    lh, p = np.meshgrid(log_half_grid, exp_grid, indexing="ij")
    soft = np.logaddexp(0.0, p[..., None] * (lh[..., None] - log_x))
    # Weighted mean of log(eff) + soft gives log(max_eff); clip at 0 because max_eff <= 1.
    log_max = np.minimum((w * (log_eff + soft)).sum(-1) / w.sum(), 0.0)
    sse = (w * (log_max[..., None] - soft - log_eff) ** 2).sum(-1)
    i, j = np.unravel_index(np.argmin(sse), sse.shape)
    return float(log_max[i, j]), float(lh[i, j]), float(p[i, j])


def fit_curve(xs: Sequence[float], effs: Sequence[float], *, weights: Sequence[float] | None = None,
              keep_points: bool = True) -> Curve:
    """Fit ``eff(x) = max_eff / (1 + (half_x / x) ** exponent)`` to measured (size, efficiency) pairs.

    Minimises the weighted squared error of log(eff) (relative error) with max_eff in (0, 1] and positive
    half_x and exponent: a coarse-to-fine grid over (log half_x, exponent) with max_eff solved in closed
    form at each node (robust, numpy only), then scipy's bounded least squares from there when available.
    Raises ValueError for fewer than 3 distinct sizes, non-positive values, or efficiencies above 1.
    """
    x = _as_positive_array(xs, "size")
    e = _as_positive_array(effs, "efficiency")
    if x.shape != e.shape:
        raise ValueError(f"fit_curve got {x.size} sizes but {e.size} efficiencies; pass one efficiency per size")
    n_distinct = np.unique(x).size
    if n_distinct < 3:
        raise ValueError(f"fit_curve needs points at 3 or more distinct sizes to fit 3 parameters, got "
                         f"{x.size} point(s) at {n_distinct} size(s); measure more sizes")
    if e.max() > 1.0:
        k = int(np.argmax(e))
        raise ValueError(f"efficiency {e[k]:.3f} > 1 at size {x[k]:.4g}: the peak the efficiencies are "
                         f"relative to is below what was measured; normalise by the right peak")
    w = np.ones_like(x) if weights is None else _as_positive_array(weights, "weight")
    if w.shape != x.shape:
        raise ValueError(f"fit_curve got {w.size} weights for {x.size} points; pass one weight per point")
    log_x, log_e = np.log(x), np.log(e)

    lo_h = log_x.min() - _HALF_X_DECADES * math.log(10)
    hi_h = log_x.max() + _HALF_X_DECADES * math.log(10)
    lo_p, hi_p = (math.log(b) for b in _EXPONENT_BOUNDS)
    h_grid = np.linspace(lo_h, hi_h, 121)
    p_grid = np.linspace(lo_p, hi_p, 61)
    log_max, log_half, exponent = _best_on_grid(log_x, log_e, w, h_grid, np.exp(p_grid))
    # Refine twice around the best node (a grid of the same size over a box ~1/10 as wide).
    dh, dp = (hi_h - lo_h) / 12, (hi_p - lo_p) / 12
    for _ in range(2):
        lp = math.log(exponent)
        h_grid = np.linspace(max(lo_h, log_half - dh), min(hi_h, log_half + dh), 61)
        p_grid = np.linspace(max(lo_p, lp - dp), min(hi_p, lp + dp), 61)
        log_max, log_half, exponent = _best_on_grid(log_x, log_e, w, h_grid, np.exp(p_grid))
        dh, dp = dh / 10, dp / 10

    log_max, log_half, exponent = _polish_with_scipy(log_x, log_e, w, (log_max, log_half, exponent),
                                                     (lo_h, hi_h))
    points = [[float(a), float(b)] for a, b in sorted(zip(x.tolist(), e.tolist()))] if keep_points else []
    return Curve(max_eff=float(min(1.0, math.exp(log_max))), half_x=float(math.exp(log_half)),
                 exponent=float(exponent), points=points)


def _polish_with_scipy(log_x, log_e, w, start, half_bounds):
    """Bounded Levenberg-Marquardt-style polish; returns ``start`` unchanged without scipy or on failure."""
    try:
        from scipy.optimize import least_squares
    except ImportError:
        return start
    sw = np.sqrt(w)

    def residuals(theta):
        lm, lh, p = theta
        return sw * _curve_log_residuals(log_x, log_e, np.asarray(lm), np.asarray(lh), np.asarray(p))

    lo = [-50.0, half_bounds[0], _EXPONENT_BOUNDS[0]]
    hi = [0.0, half_bounds[1], _EXPONENT_BOUNDS[1]]
    x0 = np.clip(np.asarray(start, dtype=float), np.asarray(lo) + 1e-12, np.asarray(hi) - 1e-12)
    try:
        res = least_squares(residuals, x0, bounds=(lo, hi), method="trf")
    except (ValueError, np.linalg.LinAlgError):
        return start
    if not res.success or (res.fun ** 2).sum() > (residuals(np.asarray(start)) ** 2).sum():
        return start
    return tuple(float(v) for v in res.x)


def curve_errors(curve: Curve, xs: Sequence[float], effs: Sequence[float]) -> tuple[float, float]:
    """Median and max |relative error| of a curve against measured points (for reports)."""
    x = np.asarray(xs, dtype=float)
    e = np.asarray(effs, dtype=float)
    rel = np.abs(curve(x) / e - 1.0)
    return float(np.median(rel)), float(rel.max())


def ring_steps(op: str, world_size: int) -> float:
    """Latency steps of one call (costmodel.timing.ring_s): n-1 for a ring all-gather or reduce-scatter,
    2(n-1) for an all-reduce (both in turn), 1 for a point-to-point exchange."""
    bus_factor(op, world_size)  # validates op and world_size
    n = world_size
    return {"all_reduce": 2.0 * (n - 1), "all_gather": n - 1.0, "reduce_scatter": n - 1.0, "all_to_all": n - 1.0,
            "send_recv": 1.0}[op]


def _per_point(value: float | Sequence[float], shape: tuple[int, ...], what: str) -> np.ndarray:
    arr = _as_positive_array(np.atleast_1d(value), what)
    return np.broadcast_to(arr, shape) if arr.size == 1 else arr


def fit_alpha_beta(nbytes: Sequence[float], seconds: Sequence[float],
                   algo_factor: float | Sequence[float] = 1.0,
                   latency_steps: float | Sequence[float] = 1.0) -> tuple[float, float]:
    """Fit ``t = latency_steps * latency_s + algo_factor * bytes / (bandwidth_gbps * 1e9)``;
    returns (latency_s, bandwidth_gbps).

    Weighted by 1/t (relative error), so 64 KiB messages (latency-bound) and 1 GiB messages (bandwidth-bound)
    both shape the fit. ``algo_factor`` and ``latency_steps`` are one number or one per point (to fit several
    collectives together). A negative latency is clamped to 0 and the bandwidth refit alone.
    """
    b = _as_positive_array(nbytes, "message size")
    t = _as_positive_array(seconds, "time")
    f = _per_point(algo_factor, b.shape, "algo_factor")
    steps = _per_point(latency_steps, b.shape, "latency_steps")
    if not (b.shape == t.shape == f.shape == steps.shape):
        raise ValueError(f"fit_alpha_beta got {b.size} sizes, {t.size} times, {f.size} factors and {steps.size} "
                         "latency steps; pass one time (and factor) per message size")
    if np.unique(b * f).size < 2:
        raise ValueError(f"fit_alpha_beta needs 2 or more distinct message sizes, got {b.size} point(s) at "
                         f"{np.unique(b * f).size} size(s); measure more sizes")
    # Rows scaled by 1/t: minimise sum(((steps alpha + inv_bw f b) - t) / t)^2.
    a = np.stack([steps / t, f * b / t], axis=1)
    (alpha, inv_bw), *_ = np.linalg.lstsq(a, np.ones_like(t), rcond=None)
    if alpha < 0:
        alpha = 0.0
        col = f * b / t
        inv_bw = float(col.sum() / (col ** 2).sum())
    if inv_bw <= 0:
        raise ValueError("collective time does not grow with message size (fitted bandwidth is not positive); "
                         "measure sizes up to at least 64 MiB so bandwidth dominates")
    return float(alpha), float(1.0 / inv_bw / 1e9)
