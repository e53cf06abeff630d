"""logSNR schedules against closed forms, the papers' printed formulas and autodiff (SPEC §2)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sid2video.diffusion import schedules

T = jnp.linspace(0.0, 1.0, 101)
T_INTERIOR = jnp.linspace(0.02, 0.98, 49)

ALL = {
    "cosine": schedules.get("cosine", logsnr_min=-15.0, logsnr_max=15.0),
    "cosine_sid2_bounds": schedules.get("cosine", logsnr_min=-10.0, logsnr_max=10.0),
    "shifted": schedules.get("cosine_shifted", image_d=128, noise_d=64),
    "interpolated": schedules.get("cosine_interpolated", image_d=512, noise_d_low=32, noise_d_high=512),
}


def test_cosine_is_alpha_cos_sigma_sin():
    # The defining property of the cosine schedule: α_t = cos(u), σ_t = sin(u) on u ∈ [t_min, t_max].
    s = ALL["cosine"]
    t_min, t_max = math.atan(math.exp(-7.5)), math.atan(math.exp(7.5))
    u = t_min + np.asarray(T, np.float64) * (t_max - t_min)
    alpha, sigma = schedules.alpha_sigma(s(T))
    np.testing.assert_allclose(alpha, np.cos(u), atol=2e-6)
    np.testing.assert_allclose(sigma, np.sin(u), atol=2e-6)


@pytest.mark.parametrize("lo,hi", [(-15.0, 15.0), (-10.0, 10.0), (-20.0, 5.0), (-30.0, 30.0)])
def test_cosine_endpoints_are_the_bounds(lo, hi):
    s = schedules.get("cosine", logsnr_min=lo, logsnr_max=hi)
    assert s.logsnr_max == pytest.approx(hi, abs=1e-4)
    assert s.logsnr_min == pytest.approx(lo, abs=1e-4)


def test_shifted_matches_printed_128_shift_64():
    # simple diffusion §3.1: logSNR^{128}_{shift 64}(t) = −2 log tan(πt/2) + 2 log(64/128).
    # With wide bounds the bounded schedule is the unbounded one up to O(e^{-λmax/2}).
    s = schedules.get("cosine_shifted", image_d=128, noise_d=64, logsnr_min=-40.0, logsnr_max=40.0)
    t = np.asarray(T_INTERIOR, np.float64)
    printed = -2.0 * np.log(np.tan(np.pi * t / 2.0)) + 2.0 * np.log(64.0 / 128.0)
    np.testing.assert_allclose(s(T_INTERIOR), printed, atol=2e-4)
    assert float(ALL["shifted"](0.5)) == pytest.approx(-2.0 * math.log(2.0), abs=1e-5)


def test_each_doubling_of_resolution_lowers_logsnr_by_2_log_2():
    a = schedules.get("cosine_shifted", image_d=128, noise_d=64)
    b = schedules.get("cosine_shifted", image_d=256, noise_d=64)
    np.testing.assert_allclose(b(T) - a(T), -2.0 * math.log(2.0), atol=1e-5)
    # The bounds move with the shift.
    assert b.logsnr_max == pytest.approx(15.0 - 2.0 * math.log(4.0), abs=1e-4)
    assert b.logsnr_min == pytest.approx(-15.0 - 2.0 * math.log(4.0), abs=1e-4)


def test_interpolated_runs_from_high_to_low_shift():
    s = ALL["interpolated"]
    high = schedules.get("cosine_shifted", image_d=512, noise_d=512)
    low = schedules.get("cosine_shifted", image_d=512, noise_d=32)
    # t = 0: the high (no-shift) schedule, i.e. the plain cosine; t = 1: shifted to 32.
    assert float(s(0.0)) == pytest.approx(float(high(0.0)), abs=1e-4)
    assert float(s(0.0)) == pytest.approx(15.0, abs=1e-4)
    assert float(s(1.0)) == pytest.approx(float(low(1.0)), abs=1e-4)
    assert float(s(1.0)) == pytest.approx(-15.0 + 2.0 * math.log(32 / 512), abs=1e-4)
    # In between it is the t-weighted mix, per simple diffusion's appendix code.
    t = np.asarray(T, np.float64)
    np.testing.assert_allclose(s(T), t * low(T) + (1 - t) * high(T), atol=1e-4)
    same = schedules.get("cosine_interpolated", image_d=128, noise_d_low=64, noise_d_high=64)
    np.testing.assert_allclose(same(T), ALL["shifted"](T), atol=1e-5)


@pytest.mark.parametrize("name", sorted(ALL))
def test_decreasing_and_derivative_matches_jvp(name):
    s = ALL[name]
    lam = np.asarray(s(T))
    assert np.all(np.diff(lam) < 0)
    closed = s.dlogsnr_dt(T_INTERIOR)
    auto = schedules.jvp_dlogsnr_dt(s, T_INTERIOR)
    np.testing.assert_allclose(closed, auto, rtol=2e-4)
    assert np.all(np.asarray(closed) < 0)
    # And against a float64 central difference of the same curve.
    t = np.asarray(T_INTERIOR, np.float64)
    h = 1e-3
    with jax.enable_x64(True):
        fd = (np.asarray(s(jnp.asarray(t + h))) - np.asarray(s(jnp.asarray(t - h)))) / (2 * h)
    np.testing.assert_allclose(closed, fd, rtol=1e-3)


def test_alpha_sigma_variance_preserving():
    lam = jnp.linspace(-30.0, 30.0, 1001)
    alpha, sigma = schedules.alpha_sigma(lam)
    np.testing.assert_allclose(alpha**2 + sigma**2, 1.0, atol=1e-6)
    np.testing.assert_allclose(jnp.log(alpha**2) - jnp.log(sigma**2), lam, atol=1e-3, rtol=1e-5)


def test_schedule_is_jittable_and_hashable():
    s = ALL["interpolated"]
    f = jax.jit(lambda sch, t: sch(t), static_argnums=0)
    np.testing.assert_allclose(f(s, T), s(T), atol=1e-6)
    assert hash(s) == hash(schedules.get("cosine_interpolated", image_d=512, noise_d_low=32, noise_d_high=512))


def test_from_config_and_errors():
    s = schedules.from_config({"name": "cosine_shifted", "image_d": 128, "noise_d": 64})
    assert s == ALL["shifted"]
    with pytest.raises(ValueError, match="unknown schedule 'linear'"):
        schedules.get("linear")
    with pytest.raises(ValueError, match="needs noise_d"):
        schedules.get("cosine_shifted", image_d=128)
    with pytest.raises(ValueError, match="noise_d=-64"):
        schedules.get("cosine_shifted", image_d=128, noise_d=-64)
    with pytest.raises(ValueError, match="unexpected argument"):
        schedules.get("cosine", image_d=128)
    with pytest.raises(ValueError, match="logsnr_min=5.0 must be below"):
        schedules.get("cosine", logsnr_min=5.0, logsnr_max=-5.0)
    with pytest.raises(ValueError, match="'name'"):
        schedules.from_config({"image_d": 1})
