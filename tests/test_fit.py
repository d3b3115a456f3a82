"""costmodel.fit: the curve and alpha-beta fits recover known parameters from noisy synthetic data."""
import math

import numpy as np
import pytest

from costmodel.fit import bus_factor, curve_errors, fit_alpha_beta, fit_curve, ring_steps
from costmodel.hardware import Curve


def _noisy_curve(rng, true: Curve, xs, rel_noise):
    return true(np.asarray(xs)) * (1.0 + rel_noise * rng.standard_normal(len(xs)))


@pytest.mark.parametrize("max_eff,half_x,exponent", [(0.79, 1.85e10, 1.02), (0.55, 5e9, 1.6), (0.95, 3e11, 0.7)])
def test_fit_curve_recovers_known_parameters_under_noise(max_eff, half_x, exponent):
    rng = np.random.default_rng(0)
    true = Curve(max_eff=max_eff, half_x=half_x, exponent=exponent)
    xs = np.geomspace(half_x / 30, half_x * 300, 40)
    fit = fit_curve(xs, _noisy_curve(rng, true, xs, 0.02))
    assert fit.max_eff == pytest.approx(max_eff, rel=0.05)
    assert fit.half_x == pytest.approx(half_x, rel=0.25)
    assert fit.exponent == pytest.approx(exponent, rel=0.15)


def test_fit_curve_is_exact_on_noise_free_data():
    true = Curve(max_eff=0.7, half_x=2e10, exponent=1.3)
    xs = np.geomspace(1e9, 1e13, 12)
    fit = fit_curve(xs, true(xs))
    med, worst = curve_errors(fit, xs, true(xs))
    assert worst < 1e-3


def test_fit_curve_without_scipy_uses_the_numpy_grid(monkeypatch):
    import builtins
    real_import = builtins.__import__

    def no_scipy(name, *args, **kwargs):
        if name.startswith("scipy"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_scipy)
    rng = np.random.default_rng(1)
    true = Curve(max_eff=0.8, half_x=1e10, exponent=1.0)
    xs = np.geomspace(3e8, 3e12, 30)
    fit = fit_curve(xs, _noisy_curve(rng, true, xs, 0.02))
    assert fit.max_eff == pytest.approx(0.8, rel=0.05)
    assert fit.half_x == pytest.approx(1e10, rel=0.3)


def test_fit_curve_keeps_sorted_points_and_bounds_max_eff():
    xs = [4e9, 1e9, 1.6e10, 6.4e10]
    effs = [0.5, 0.2, 0.8, 0.99]
    fit = fit_curve(xs, effs)
    assert [p[0] for p in fit.points] == sorted(xs)
    assert 0 < fit.max_eff <= 1.0 and fit.half_x > 0 and fit.exponent > 0


def test_fit_curve_flat_data_gives_flat_curve():
    xs = np.geomspace(1e9, 1e12, 8)
    fit = fit_curve(xs, np.full(8, 0.6))
    assert np.allclose(fit(xs), 0.6, rtol=0.01)


def test_fit_curve_refuses_one_point():
    with pytest.raises(ValueError, match="3 or more distinct sizes"):
        fit_curve([1e9], [0.5])


def test_fit_curve_refuses_points_all_at_one_size():
    with pytest.raises(ValueError, match="at 1 size"):
        fit_curve([1e9] * 5, [0.5, 0.52, 0.49, 0.5, 0.51])


def test_fit_curve_refuses_efficiency_above_one():
    with pytest.raises(ValueError, match="efficiency 1.200 > 1"):
        fit_curve([1e9, 1e10, 1e11], [0.5, 0.9, 1.2])


@pytest.mark.parametrize("bad", [0.0, -0.1, float("nan")])
def test_fit_curve_refuses_non_positive_efficiency(bad):
    with pytest.raises(ValueError, match="not a positive finite number"):
        fit_curve([1e9, 1e10, 1e11], [0.5, bad, 0.7])


def test_fit_curve_refuses_mismatched_lengths():
    with pytest.raises(ValueError, match="3 sizes but 2 efficiencies"):
        fit_curve([1e9, 1e10, 1e11], [0.5, 0.6])


SIZES = np.array([2.0 ** k for k in range(16, 31)])  # 64 KiB ... 1 GiB


@pytest.mark.parametrize("latency_s,bw_gbps,factor", [(2e-5, 360.0, 1.0), (8e-6, 45.0, 1.5), (5e-5, 150.0, 0.5)])
def test_fit_alpha_beta_recovers_latency_and_bandwidth(latency_s, bw_gbps, factor):
    rng = np.random.default_rng(2)
    t = latency_s + factor * SIZES / (bw_gbps * 1e9)
    t = t * (1 + 0.03 * rng.standard_normal(t.size))
    alpha, beta = fit_alpha_beta(SIZES, t, factor)
    assert alpha == pytest.approx(latency_s, rel=0.15)
    assert beta == pytest.approx(bw_gbps, rel=0.05)


def test_fit_alpha_beta_fits_several_collectives_with_per_point_factors():
    n = 4
    ops = ["all_reduce", "all_gather", "reduce_scatter"]
    f = np.concatenate([np.full(SIZES.size, bus_factor(op, n)) for op in ops])
    b = np.tile(SIZES, len(ops))
    t = 1.5e-5 + f * b / 300e9
    alpha, beta = fit_alpha_beta(b, t, f)
    assert alpha == pytest.approx(1.5e-5, rel=1e-6)
    assert beta == pytest.approx(300.0, rel=1e-6)


def test_fit_alpha_beta_counts_latency_per_ring_step():
    n = 8
    ops = ["all_reduce", "all_gather", "send_recv"]
    f = np.concatenate([np.full(SIZES.size, bus_factor(op, n)) for op in ops])
    steps = np.concatenate([np.full(SIZES.size, ring_steps(op, n)) for op in ops])
    b = np.tile(SIZES, len(ops))
    t = steps * 4e-6 + f * b / 250e9
    alpha, beta = fit_alpha_beta(b, t, f, steps)
    assert alpha == pytest.approx(4e-6, rel=1e-6)
    assert beta == pytest.approx(250.0, rel=1e-6)


def test_ring_steps_follow_the_cost_model():
    assert [ring_steps(op, 4) for op in ("all_reduce", "all_gather", "reduce_scatter", "send_recv")] == [6, 3, 3, 1]
    with pytest.raises(ValueError, match="unknown collective"):
        ring_steps("broadcast", 4)


def test_fit_alpha_beta_clamps_negative_latency_to_zero():
    b = SIZES[4:]  # 1 MiB and up
    t = b / 100e9 - 2e-7  # a pure-bandwidth line slightly below the origin: unconstrained alpha < 0
    alpha, beta = fit_alpha_beta(b, t)
    assert alpha == 0.0
    assert beta == pytest.approx(100.0, rel=0.03)


def test_fit_alpha_beta_refuses_a_single_size():
    with pytest.raises(ValueError, match="2 or more distinct message sizes"):
        fit_alpha_beta([2 ** 20] * 3, [1e-5, 1.1e-5, 0.9e-5])


def test_fit_alpha_beta_refuses_time_that_shrinks_with_size():
    with pytest.raises(ValueError, match="does not grow with message size"):
        fit_alpha_beta(SIZES[:5], np.linspace(1e-3, 1e-4, 5))


def test_bus_factor_follows_nccl_conventions():
    assert bus_factor("all_reduce", 8) == pytest.approx(2 * 7 / 8)
    assert bus_factor("all_gather", 2) == pytest.approx(0.5)
    assert bus_factor("send_recv", 2) == 1.0
    with pytest.raises(ValueError, match="unknown collective 'broadcast'"):
        bus_factor("broadcast", 2)


def test_curve_errors_reports_median_and_max():
    c = Curve(max_eff=0.5, half_x=1.0, exponent=1.0)
    xs = [1e6, 1e6, 1e6]
    med, worst = curve_errors(c, xs, [0.5, 0.55, 0.25])
    assert med == pytest.approx(abs(0.5 / 0.55 - 1), rel=1e-3)
    assert worst == pytest.approx(1.0, rel=1e-3)
    assert math.isfinite(med)
