"""Lower bounds on the step time, valid over a whole (layout, schedule, case): every split and every per-stage
knob, memory ignored or counted.

They rest on the memory-blind least time per micro-batch ``T0(n)`` of a rank role with ``n`` blocks
(planner.stages.RoleTable.t0): every candidate with ``n`` blocks is at least that slow, and ``T0`` never falls as
blocks are added, so a few sampled block counts bound all counts between them. Over a split
``n_1 + … + n_pp = L`` the sum ``Σ T0(n_i)`` is bounded by Lagrangian relaxation of the block budget:
``Σ_i min_n (T0_i(n) − ρ·n) + ρ·L`` for any ``ρ ≥ 0`` (weak duality; the best of a few ρ is taken), and the
step time ``a·max T + b·ΣT + Dmax ≥ (a / pp + b)·ΣT`` (the maximum is at least the mean; ``Dmax ≥ 0``).
"""
from __future__ import annotations

import numpy as np


def block_grid(n_min: int, n_max: int) -> np.ndarray:
    """Block counts at which to take ``T0``: all of them (it is costed at five and extended along its line,
    planner.stages.RoleTable.t0). Sampling fewer would be valid through ``step_floor`` but loses the multiplier times
    the widest gap between samples, which made the bound useless in practice."""
    return np.arange(n_min, n_max + 1)


def step_floor(grid: np.ndarray, t0: np.ndarray, rho: np.ndarray) -> np.ndarray:
    """``min over n in [grid_0, grid_-1] of (T0(n) − ρ·n)`` for each case (rows of ``t0``) and each ρ, using that
    ``T0(n) ≥ T0(grid_k)`` for ``grid_k ≤ n < grid_{k+1}``: shape (cases, len(rho))."""
    hi = np.concatenate([grid[1:] - 1, grid[-1:]]).astype(float)     # the largest n each sample stands for
    return np.min(t0[:, None, :] - rho[None, :, None] * hi[None, None, :], axis=2)


def rho_candidates(grids: dict, t0s: dict) -> np.ndarray:
    """Multipliers to try: 0 and the slopes of every role's T0 between neighbouring samples."""
    out = [np.zeros(1)]
    for role, grid in grids.items():
        if len(grid) > 1:
            slope = np.diff(t0s[role], axis=1) / np.diff(grid)[None, :]
            out.append(slope[np.isfinite(slope)].ravel())
    rho = np.unique(np.concatenate(out))
    return rho[rho >= 0]


def sum_bound(counts: dict[str, int], grids: dict, t0s: dict, rho: np.ndarray, blocks) -> np.ndarray:
    """Lower bound of ``Σ_i T0_role(i)(n_i)`` over ranks (``counts`` ranks per role) whose blocks sum to ``blocks``
    (a scalar, or an array: one bound per value), per case: shape (cases,) or (cases, len(blocks))."""
    total = None
    for role, c in counts.items():
        if c == 0:
            continue
        part = c * step_floor(grids[role], t0s[role], rho)
        total = part if total is None else total + part
    if total is None:
        nc = next(iter(t0s.values())).shape[0]
        total = np.zeros((nc, len(rho)))
    blocks = np.asarray(blocks, dtype=float)
    vals = total[:, :, None] + rho[None, :, None] * np.atleast_1d(blocks)[None, None, :]
    best = vals.max(axis=1)
    return best[:, 0] if blocks.ndim == 0 else best


def position_bound(coef: np.ndarray, dweight: np.ndarray, t_by_pos: list[np.ndarray], d_by_pos: list[np.ndarray],
                   ns: np.ndarray, blocks: int, rho: np.ndarray) -> np.ndarray:
    """Lower bound of ``Σ_i coef_i·T_i(n_i) + dweight_i·D_i(n_i)`` over splits ``Σ n_i = blocks`` (n_i in ``ns``), per
    case: Lagrangian relaxation of the block budget, the best of the multipliers ``rho``. ``t_by_pos[i]`` and
    ``d_by_pos[i]`` are (cases, len(ns)) floors of each position."""
    total = None
    for c, w, t, d in zip(coef, dweight, t_by_pos, d_by_pos):
        val = c * t + (w * d if w else 0.0)                                     # (cases, n)
        part = np.min(val[:, None, :] - rho[None, :, None] * ns[None, None, :], axis=2)   # (cases, rho)
        total = part if total is None else total + part
    return (total + rho[None, :] * blocks).max(axis=1)
