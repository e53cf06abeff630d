"""Samplers against known answers (SPEC §4).

* The exact denoiser E[x | z_t] of a diagonal Gaussian mixture, in closed form, drives every
  sampler; 256 steps must reproduce the mixture's moments, mode weights and per-mode spread.
* For standard normal data E[x | z] = α z is linear, so DDIM and aDDIM trajectories have closed
  forms (computed here in float64 with NumPy), and DDPM with γ = 1 keeps N(0, I) exactly at every
  step while γ < 1 shrinks it by an amount computed here in closed form.
* DDIM converges (first order) to the probability-flow ODE dz/dλ = ½ α (x̂ − α z), solved
  independently with scipy's DOP853.
* Guidance with toy predictors, frame conditioning, determinism, sharding, config validation.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from scipy.integrate import solve_ivp

from sid2video.diffusion import samplers, schedules

SCHEDULE = schedules.get("cosine")  # λ ∈ [−15, 15]

# A 2-D mixture living well inside [−1, 1] (so static clipping is harmless).
PI = np.array([0.5, 0.3, 0.2])
MU = np.array([[-0.5, -0.4], [0.5, 0.0], [0.0, 0.55]])
STD = np.array([[0.10, 0.15], [0.12, 0.08], [0.10, 0.10]])
N_MIX = 8192


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def mixture_denoiser(z, logsnr):
    """E[x | z] for x ~ Σ π_k N(μ_k, diag s_k²), z = α x + σ ε; any [B, ...] with 2 values per example."""
    batch = z.shape[0]
    zf = z.reshape(batch, 1, -1)  # [B, 1, D]
    a2 = jax.nn.sigmoid(logsnr)[:, None, None]
    s2 = jax.nn.sigmoid(-logsnr)[:, None, None]
    a = jnp.sqrt(a2)
    var = a2 * STD**2 + s2  # marginal variance of z given component k
    logp = jnp.log(PI) - 0.5 * jnp.sum(jnp.log(2 * jnp.pi * var) + (zf - a * MU) ** 2 / var, -1)
    resp = jax.nn.softmax(logp, axis=-1)[..., None]  # p(k | z)
    x_k = MU + a * STD**2 / var * (zf - a * MU)  # E[x | z, k]
    return jnp.sum(resp * x_k, axis=1).reshape(z.shape)


def mixture_denoiser_np(z, logsnr):
    """The same posterior mean in float64 NumPy for one example z [D]."""
    a2 = sigmoid(logsnr)
    a = np.sqrt(a2)
    var = a2 * STD**2 + (1 - a2)
    logp = np.log(PI) - 0.5 * np.sum(np.log(2 * np.pi * var) + (z[None] - a * MU) ** 2 / var, -1)
    resp = np.exp(logp - logp.max())
    resp /= resp.sum()
    return np.sum(resp[:, None] * (MU + a * STD**2 / var * (z[None] - a * MU)), axis=0)


def gaussian_denoiser(z, logsnr):
    """E[x | z] = α z for x ~ N(0, I)."""
    return jnp.sqrt(jax.nn.sigmoid(logsnr)).reshape((-1,) + (1,) * (z.ndim - 1)) * z


def grid_logsnr(num_steps):
    """λ(i/N) for i = N..0, as the sampler evaluates it (float32 times)."""
    return [float(SCHEDULE(np.float32(np.float32(i) / num_steps))) for i in range(num_steps, -1, -1)]


# ----------------------------------------------------------------------------------------------
# Mixture: moments, mode weights, per-mode spread. Samples have image shape [B, T=1, 1, 1, 2].

MIX_SHAPE = (N_MIX, 1, 1, 1, 2)
MIX_CASES = {"ddpm_0.3": ("ddpm", 0.3), "ddpm_1.0": ("ddpm", 1.0), "ddim": ("ddim", 0.3), "addim": ("addim", 0.3)}


@pytest.fixture(scope="module")
def mixture_fns():
    """One compiled 256-step sampler per method; DDPM's γ is a traced argument."""
    return {
        method: jax.jit(lambda key, gamma, method=method: samplers.sample(
            mixture_denoiser, key, MIX_SHAPE, schedule=SCHEDULE, num_steps=256, method=method,
            logvar_interp=gamma, clip=True))
        for method in samplers.METHODS
    }


@pytest.fixture(scope="module")
def mixture_samples(mixture_fns):
    out = {}
    for name, (method, gamma) in MIX_CASES.items():
        x = mixture_fns[method](jax.random.key(11), jnp.float32(gamma))
        assert x.shape == MIX_SHAPE and x.dtype == jnp.float32  # T = 1 works
        out[name] = np.asarray(x).reshape(N_MIX, 2).astype(np.float64)
    return out


def mixture_moments():
    mean = PI @ MU
    second = PI @ (STD**2 + MU**2)
    return mean, second - mean**2


@pytest.mark.parametrize("name", list(MIX_CASES))
def test_mixture_moments(mixture_samples, name):
    x = mixture_samples[name]
    mean, var = mixture_moments()
    n = len(x)
    # Standard errors of the sample mean and variance from the mixture's central moments:
    # E[(X − m)^4] = Σ π_k (δ⁴ + 6 δ² s² + 3 s⁴), δ = μ_k − m.
    delta = MU - mean
    fourth = PI @ (delta**4 + 6 * delta**2 * STD**2 + 3 * STD**4)
    se_mean = np.sqrt(var / n)
    se_var = np.sqrt((fourth - var**2) / n)
    np.testing.assert_array_less(np.abs(x.mean(0) - mean), 5 * se_mean)
    np.testing.assert_array_less(np.abs(x.var(0) - var), 5 * se_var + 2e-3)


@pytest.mark.parametrize("name", list(MIX_CASES))
def test_mixture_modes(mixture_samples, name):
    x = mixture_samples[name]
    # Assign each sample to its most likely component.
    logp = np.log(PI) - 0.5 * np.sum(np.log(STD**2)[None] + (x[:, None] - MU[None]) ** 2 / STD[None] ** 2, -1)
    k = logp.argmax(1)
    frac = np.bincount(k, minlength=3) / len(x)
    np.testing.assert_array_less(np.abs(frac - PI), 5 * np.sqrt(PI * (1 - PI) / len(x)))
    for c in range(3):
        spread = x[k == c].std(0)
        # relative standard error of a std estimate is about 1/sqrt(2 n_k) (< 2.6 % here)
        np.testing.assert_allclose(spread, STD[c], rtol=0.1)


def test_mixture_samples_are_distinct_and_in_range(mixture_samples):
    for x in mixture_samples.values():
        assert np.all(np.abs(x) <= 1.0)
        assert len(np.unique(x[:, 0])) > 0.99 * len(x)  # no collapse


def test_same_key_same_samples(mixture_fns, mixture_samples):
    again = np.asarray(mixture_fns["ddpm"](jax.random.key(11), jnp.float32(0.3))).reshape(N_MIX, 2)
    np.testing.assert_array_equal(again, mixture_samples["ddpm_0.3"])
    other = np.asarray(mixture_fns["ddpm"](jax.random.key(12), jnp.float32(0.3))).reshape(N_MIX, 2)
    assert np.mean(other == mixture_samples["ddpm_0.3"]) < 0.01


# ----------------------------------------------------------------------------------------------
# Standard normal data: exact answers.


def test_ddpm_variance_convention_on_standard_normal():
    """γ = 1 (large variance) is exact for N(0, I) data at any step count; γ < 1 shrinks the
    variance by an amount that follows from the Gaussian recursion. 2 steps make it visible."""
    n, steps = 20000, 2
    run = jax.jit(lambda gamma: samplers.sample(
        gaussian_denoiser, jax.random.key(5), (n, 1, 1, 1, 4), schedule=SCHEDULE, num_steps=steps,
        method="ddpm", logvar_interp=gamma, clip=False))
    lam = grid_logsnr(steps)
    for gamma in (0.0, 0.3, 1.0):
        v = 1.0
        for lt, ls in zip(lam[:-1], lam[1:]):
            r = np.exp(lt - ls)
            a_t, a_s = np.sqrt(sigmoid(lt)), np.sqrt(sigmoid(ls))
            gain = r * a_s / a_t + (1 - r) * a_s * a_t  # μ = gain · z_t since x̂ = α_t z_t
            logvar = gamma * np.log((1 - r) * sigmoid(-lt)) + (1 - gamma) * np.log((1 - r) * sigmoid(-ls))
            v = gain**2 * v + np.exp(logvar)
        expected = sigmoid(lam[-1]) * v  # x̂ = α_0 z_0
        got = float(np.var(np.asarray(run(jnp.float32(gamma)))))
        assert abs(got - expected) < 5 * expected * np.sqrt(2 / (4 * n)), (gamma, got, expected)
        if gamma == 1.0:
            assert abs(expected - 1.0) < 1e-5
        else:
            assert expected < 0.35  # the test tells the conventions apart


def closed_form_linear(z_init, num_steps, method, target=None, clip=True):
    """DDIM / aDDIM trajectories for x̂ = clip(α z) in float64. target: [B, T], 1 = sampled."""
    z = np.asarray(z_init, np.float64)
    if target is None:
        target = np.ones(z.shape[:2])
    tmask = np.broadcast_to(np.asarray(target, np.float64).reshape(target.shape + (1,) * (z.ndim - 2)), z.shape)
    lam = grid_logsnr(num_steps)
    axes = tuple(range(1, z.ndim))
    lim = 1.0 if clip else np.inf
    for lt, ls in zip(lam[:-1], lam[1:]):
        a_t, s_t = np.sqrt(sigmoid(lt)), np.sqrt(sigmoid(-lt))
        a_s, s_s = np.sqrt(sigmoid(ls)), np.sqrt(sigmoid(-ls))
        x_hat = np.clip(a_t * z, -lim, lim)
        eps = (z - a_t * x_hat) / s_t
        if method == "ddim":
            coef = np.full(z.shape[0], s_s)
        else:
            z_var = (a_s - a_t * s_s / s_t) ** 2 * 0.1 / (2 + np.exp(lt))
            coef = np.sqrt(s_s**2 + tmask.sum(axes) / np.sum(eps**2 * tmask, axes) * z_var)
        z = np.where(tmask > 0, a_s * x_hat + coef.reshape((-1,) + (1,) * (z.ndim - 1)) * eps, z)
    return np.clip(np.sqrt(sigmoid(lam[-1])) * z, -lim, lim)


# ----------------------------------------------------------------------------------------------
# DDIM against the probability-flow ODE.


def test_ddim_converges_to_probability_flow_ode():
    z0 = np.asarray(jax.random.normal(jax.random.key(3), (5, 2)), np.float64)
    lo, hi = grid_logsnr(1)  # λ(1), λ(0)

    def rhs(lam, z):  # dz/dλ = ½ α (x̂ − α z)
        a = np.sqrt(sigmoid(lam))
        return 0.5 * a * (mixture_denoiser_np(z, lam) - a * z)

    ref = []
    for z in z0:
        sol = solve_ivp(rhs, (lo, hi), z, method="DOP853", rtol=1e-10, atol=1e-12)
        assert sol.success
        ref.append(mixture_denoiser_np(sol.y[:, -1], hi))
    ref = np.array(ref)

    errors = {}
    outs = {}
    for steps in (128, 256):
        x = jax.jit(lambda zi, steps=steps: samplers.sample(
            mixture_denoiser, jax.random.key(0), (5, 1, 1, 1, 2), schedule=SCHEDULE, num_steps=steps,
            method="ddim", clip=False, z_init=zi))(jnp.asarray(z0.reshape(5, 1, 1, 1, 2), jnp.float32))
        outs[steps] = np.asarray(x, np.float64).reshape(5, 2)
        errors[steps] = np.abs(outs[steps] - ref).max()
    assert errors[256] < 8e-3
    # first order: halving the step size halves the error ...
    assert 1.6 < errors[128] / errors[256] < 2.4, errors
    # ... so Richardson extrapolation lands much closer to the ODE solution
    assert np.abs(2 * outs[256] - outs[128] - ref).max() < errors[256] / 4


def test_a_chain_started_midway_continues_the_full_chain():
    """`start_step=k` with the state after k steps as `z_init` gives exactly what the run from t = 1
    gives: the first k DDPM steps are replayed here with `ddpm_step` and the sampler's key scheme
    (split, then fold in the step index). At k = N only the final x̂ (clipped) is left."""
    n, shape, rng = 8, (5, 1, 1, 1, 2), jax.random.key(3)
    z0 = jax.random.normal(jax.random.key(4), shape)
    run = jax.jit(lambda zi, k: samplers.sample(mixture_denoiser, rng, shape, schedule=SCHEDULE, num_steps=n,
                                                method="ddpm", z_init=zi, start_step=k), static_argnums=1)
    full = np.asarray(run(z0, 0))
    _, step_key = jax.random.split(rng)
    lam = lambda t: jnp.full((shape[0],), SCHEDULE(jnp.asarray(t, jnp.float32)))
    z = z0
    for k in range(n + 1):
        np.testing.assert_allclose(np.asarray(run(z, k)), full, rtol=1e-5, atol=1e-5)
        if k == n:
            np.testing.assert_allclose(full, np.clip(np.asarray(mixture_denoiser(z, lam(0.0))), -1, 1), atol=1e-6)
            break
        lt, ls = lam((n - k) / n), lam((n - k - 1) / n)
        x_hat = jnp.clip(mixture_denoiser(z, lt), -1.0, 1.0)
        z = samplers.ddpm_step(z, x_hat, lt, ls, jax.random.normal(jax.random.fold_in(step_key, k), shape), 0.3)
    # a numpy integer counts as a step number too
    np.testing.assert_allclose(np.asarray(samplers.sample(mixture_denoiser, rng, shape, schedule=SCHEDULE, num_steps=n,
                                                          z_init=z, start_step=np.int64(n))), full, atol=1e-6)
    # the chain moves: a start one step later from the initial state is another sample
    assert np.abs(np.asarray(run(z0, 1)) - full).max() > 1e-3
    with pytest.raises(ValueError, match="needs z_init"):
        samplers.sample(mixture_denoiser, rng, shape, schedule=SCHEDULE, num_steps=n, start_step=2)
    with pytest.raises(ValueError, match="start_step=True"):
        samplers.sample(mixture_denoiser, rng, shape, schedule=SCHEDULE, num_steps=n, z_init=z0, start_step=True)
    with pytest.raises(ValueError, match="start_step=9"):
        samplers.sample(mixture_denoiser, rng, shape, schedule=SCHEDULE, num_steps=n, z_init=z0, start_step=9)


# ----------------------------------------------------------------------------------------------
# Guidance.


def toy_cond(z, logsnr):
    return 0.3 + 0.1 * z + 0.01 * logsnr.reshape(-1, 1, 1, 1, 1)


def toy_uncond(z, logsnr):
    return -0.2 + 0.05 * z


LOGSNRS = jnp.array([-5.0, 0.0, 2.5, 5.0, 7.0])


def test_guided_inside_and_outside_interval():
    z = jax.random.normal(jax.random.key(0), (5, 1, 2, 2, 1))
    xc, xu = np.asarray(toy_cond(z, LOGSNRS)), np.asarray(toy_uncond(z, LOGSNRS))
    w = 1.5
    full = samplers.guided(toy_cond, toy_uncond, w)(z, LOGSNRS)
    np.testing.assert_allclose(np.asarray(full), (1 + w) * xc - w * xu, rtol=1e-6, atol=1e-6)
    part = np.asarray(samplers.guided(toy_cond, toy_uncond, w, (0.0, 5.0))(z, LOGSNRS))
    inside = np.array([False, False, True, False, False])  # open interval: 0 and 5 are outside
    np.testing.assert_allclose(part[inside], ((1 + w) * xc - w * xu)[inside], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(part[~inside], xc[~inside])


def test_guidance_zero_is_unguided():
    z = jax.random.normal(jax.random.key(0), (5, 1, 2, 2, 1))
    xc = np.asarray(toy_cond(z, LOGSNRS))
    for interval in (None, (0.0, 5.0)):
        np.testing.assert_array_equal(np.asarray(samplers.guided(toy_cond, toy_uncond, 0.0, interval)(z, LOGSNRS)), xc)
        both = lambda z2, l2: jnp.concatenate([toy_cond(z2[:5], l2[:5]), toy_uncond(z2[5:], l2[5:])])
        np.testing.assert_array_equal(np.asarray(samplers.guided_batched(both, 0.0, interval)(z, LOGSNRS)), xc)


def test_unconditional_model_skipped_outside_interval():
    """No example inside the interval: the unconditional network is not evaluated at all."""
    nan_uncond = lambda z, l: jnp.full_like(z, jnp.nan)
    z = jax.random.normal(jax.random.key(0), (3, 1, 2, 2, 1))
    logsnr = jnp.array([-4.0, -3.0, 6.0])
    x = jax.jit(samplers.guided(toy_cond, nan_uncond, 2.0, (-1.0, 5.0)))(z, logsnr)
    np.testing.assert_allclose(np.asarray(x), np.asarray(toy_cond(z, logsnr)), rtol=1e-6, atol=1e-7)


def test_guided_batched_matches_two_calls():
    calls = []

    def both(z2, l2):
        calls.append(z2.shape)
        half = z2.shape[0] // 2
        np.testing.assert_array_equal(np.asarray(z2[:half]), np.asarray(z2[half:]))
        return jnp.concatenate([toy_cond(z2[:half], l2[:half]), toy_uncond(z2[half:], l2[half:])])

    z = jax.random.normal(jax.random.key(1), (5, 1, 2, 2, 1))
    for interval in (None, (0.0, 5.0)):
        calls.clear()
        a = samplers.guided_batched(both, 1.0, interval)(z, LOGSNRS)
        b = samplers.guided(toy_cond, toy_uncond, 1.0, interval)(z, LOGSNRS)
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
        assert calls == [(10, 1, 2, 2, 1)]  # one network call on the doubled batch
    # with predict_cond given, steps outside the interval use it alone
    nan_both = lambda z2, l2: jnp.full_like(z2, jnp.nan)
    logsnr = jnp.array([-4.0, -3.0, 6.0, 9.0, 9.0])
    x = samplers.guided_batched(nan_both, 1.0, (0.0, 5.0), predict_cond=toy_cond)(z, logsnr)
    np.testing.assert_array_equal(np.asarray(x), np.asarray(toy_cond(z, logsnr)))


@pytest.fixture(scope="module")
def guided_fns():
    """The 256-step DDIM mixture sampler, guided against a toy unconditional model; w is traced."""
    uncond = lambda z, l: jnp.zeros_like(z)
    return {
        interval: jax.jit(lambda key, w, interval=interval: samplers.sample(
            samplers.guided(mixture_denoiser, uncond, w, interval), key, MIX_SHAPE,
            schedule=SCHEDULE, num_steps=256, method="ddim"))
        for interval in [(-3.0, 5.0), (100.0, 200.0)]
    }


def test_guided_sampling_respects_interval(guided_fns, mixture_samples):
    key = jax.random.key(11)
    plain = mixture_samples["ddim"]  # unguided, same key
    inside, outside = guided_fns[(-3.0, 5.0)], guided_fns[(100.0, 200.0)]
    run = lambda fn, w: np.asarray(fn(key, jnp.float32(w)), np.float64).reshape(N_MIX, 2)
    np.testing.assert_allclose(run(outside, 2.0), plain, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(run(inside, 0.0), plain, rtol=1e-5, atol=1e-6)
    # guiding away from x̂_u = 0 pushes samples outwards
    guided = run(inside, 2.0)
    assert np.mean(np.abs(guided)) > np.mean(np.abs(plain)) + 0.01


# ----------------------------------------------------------------------------------------------
# Frame conditioning.

COND_SHAPE = (2, 4, 2, 2, 3)
COND_MASK = np.array([[1, 0, 0, 0], [1, 1, 0, 1]], np.int32)
COND_STEPS = 6


@pytest.fixture(scope="module")
def cond_fns():
    """x̂ = α z plus a huge penalty whenever z differs from `cond` at a conditioning position, so a
    sampler that shows the network anything but the clean frames leaves the closed form."""

    def make(method):
        def run(key, z_init, cond, cond_mask):
            m = (cond_mask != 0)[:, :, None, None, None]

            def predict(z, logsnr):
                penalty = 1e3 * jnp.sum(jnp.where(m, jnp.abs(z - cond), 0.0), axis=(1, 2, 3, 4), keepdims=True)
                return gaussian_denoiser(z, logsnr) + penalty

            return samplers.sample(predict, key, COND_SHAPE, schedule=SCHEDULE, num_steps=COND_STEPS,
                                   method=method, cond=cond, cond_mask=cond_mask, z_init=z_init)
        return jax.jit(run)

    return {method: make(method) for method in samplers.METHODS}


Z_INIT = jax.random.normal(jax.random.key(8), COND_SHAPE)


@pytest.mark.parametrize("method", ["ddim", "addim"])
def test_unconditional_closed_form(cond_fns, method):
    """No conditioning frame (mask all 0): the whole trajectory follows the closed form."""
    zero = np.zeros(COND_SHAPE[:2], np.int32)
    x = cond_fns[method](jax.random.key(0), Z_INIT, jnp.zeros(COND_SHAPE), zero)
    np.testing.assert_allclose(np.asarray(x), closed_form_linear(Z_INIT, COND_STEPS, method), rtol=1e-4, atol=2e-5)


def test_addim_differs_from_ddim():
    a = closed_form_linear(Z_INIT, COND_STEPS, "addim")
    b = closed_form_linear(Z_INIT, COND_STEPS, "ddim")
    assert np.abs(a - b).max() > 1e-2  # the closed-form check above really distinguishes them


@pytest.mark.parametrize("method", samplers.METHODS)
def test_conditioning_frames_returned_exactly(cond_fns, method):
    # Values outside [−1, 1] too: conditioning frames come back as given, never clipped.
    cond = 1.7 * jax.random.normal(jax.random.key(9), COND_SHAPE)
    x = np.asarray(cond_fns[method](jax.random.key(3), Z_INIT, cond, COND_MASK))
    m = COND_MASK.astype(bool)
    np.testing.assert_array_equal(x[m], np.asarray(cond)[m])  # bit-identical
    assert np.all(np.abs(x[~m]) <= 1.0)  # sampled, clipped target frames
    if method != "ddpm":
        # Target frames follow the closed form restricted to them (aDDIM: d and ‖ε̂‖² over
        # target frames only), which needs every call to have seen the clean frames.
        expected = closed_form_linear(Z_INIT, COND_STEPS, method, target=1 - COND_MASK)
        np.testing.assert_allclose(x[~m], expected[~m], rtol=1e-4, atol=2e-5)
    else:
        assert np.abs(x[~m] - np.asarray(Z_INIT)[~m]).min() > 0


def test_conditioning_argument_errors():
    cond = jnp.zeros(COND_SHAPE)
    with pytest.raises(ValueError, match="cond_mask"):
        samplers.sample(gaussian_denoiser, jax.random.key(0), COND_SHAPE, schedule=SCHEDULE, num_steps=2,
                        cond=cond)
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        samplers.sample(gaussian_denoiser, jax.random.key(0), COND_SHAPE, schedule=SCHEDULE, num_steps=2,
                        cond=cond, cond_mask=np.ones((2, 3)))


# ----------------------------------------------------------------------------------------------
# One jitted loop; sharding.


def test_one_loop_and_trace_count_independent_of_steps():
    for steps in (3, 50):
        traced = []

        def predict(z, logsnr):
            traced.append(logsnr.shape)
            return jnp.tanh(z)

        jaxpr = jax.make_jaxpr(lambda k: samplers.sample(predict, k, (2, 1, 2, 2, 1), schedule=SCHEDULE,
                                                         num_steps=steps, method="ddpm"))(jax.random.key(0))
        assert traced == [(2,), (2,)]  # the loop body and the final prediction
        assert sum(e.primitive.name in ("scan", "while") for e in jaxpr.jaxpr.eqns) == 1


SHARD_SCRIPT = textwrap.dedent("""
    import os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    os.environ["JAX_PLATFORMS"] = "cpu"
    import sys
    import jax, jax.numpy as jnp, numpy as np
    jax.config.update("jax_compilation_cache_dir", sys.argv[1])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from sid2video.diffusion import samplers, schedules
    sch = schedules.get("cosine")
    mesh = Mesh(np.array(jax.devices()), ("data",))
    batch = NamedSharding(mesh, P("data"))
    shape = (4, 3, 2, 2, 1)
    cond = jnp.linspace(-1, 1, 48).reshape(shape)
    mask = jnp.array([[1, 0, 0]] * 4)
    predict = lambda z, l: jnp.tanh(z) * jnp.sqrt(jax.nn.sigmoid(l)).reshape(-1, 1, 1, 1, 1)
    for method in ("ddpm",):  # random draws in the loop, frame masks
        f = lambda key, c, m: samplers.sample(predict, key, shape, schedule=sch, num_steps=6,
                                              method=method, cond=c, cond_mask=m)
        ref = jax.jit(f)(jax.random.key(0), cond, mask)
        g = jax.jit(f, in_shardings=(None, batch, batch), out_shardings=batch)
        out = g(jax.random.key(0), jax.device_put(cond, batch), jax.device_put(mask, batch))
        assert len(jax.devices()) == 2 and out.sharding == batch
        np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=1e-5, atol=1e-6)
    print("OK")
""")


def test_sharded_batch_matches_unsharded():
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    cache = str(pathlib.Path(__file__).resolve().parents[1] / ".jax_cache")
    res = subprocess.run([sys.executable, "-c", SHARD_SCRIPT, cache], capture_output=True, text=True, env=env,
                         timeout=120)
    assert res.returncode == 0 and "OK" in res.stdout, res.stderr[-3000:]


# ----------------------------------------------------------------------------------------------
# Config.


def sampler_config(**overrides):
    cfg = ml_collections.ConfigDict(dict(method="addim", num_steps=4, logvar_interp=0.3, clip=True,
                                         guidance=0.0, guidance_interval=None))
    for k, v in overrides.items():
        cfg[k] = v
    return cfg


def test_from_config_samples_like_sample(mixture_samples):
    sampler = samplers.from_config(sampler_config(method="ddim", num_steps=256), SCHEDULE)
    x = jax.jit(lambda k: sampler(sampler.predictor(mixture_denoiser), k, MIX_SHAPE))(jax.random.key(11))
    np.testing.assert_allclose(np.asarray(x).reshape(N_MIX, 2), mixture_samples["ddim"], rtol=1e-6, atol=1e-7)
    assert sampler.num_evaluations == 257


def test_from_config_guidance_paths_agree():
    cfg = ml_collections.ConfigDict(dict(method="ddim", num_steps=4, logvar_interp=0.3, clip=True,
                                         guidance=1.0, guidance_interval=(0.0, 5.0)))
    sampler = samplers.from_config(cfg, SCHEDULE)
    assert sampler.guidance_interval == (0.0, 5.0)
    uncond = lambda z, l: 0.5 * jnp.tanh(z)
    both = lambda z2, l2: jnp.concatenate([mixture_denoiser(z2[:3], l2[:3]), uncond(z2[3:], l2[3:])])
    shape = (3, 1, 1, 1, 2)
    key = jax.random.key(2)
    a = jax.jit(lambda k: sampler(sampler.predictor(mixture_denoiser, uncond), k, shape))(key)
    b = jax.jit(lambda k: sampler(sampler.predictor(mixture_denoiser, predict_both=both), k, shape))(key)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="guidance=1.0"):
        sampler.predictor(mixture_denoiser)


@pytest.mark.parametrize("overrides, pattern", [
    (dict(method="euler"), r"config\.sampler\.method='euler'.*ddpm, ddim, addim"),
    (dict(num_steps=0), r"config\.sampler\.num_steps=0 .*>= 1"),
    (dict(num_steps=2.5), r"config\.sampler\.num_steps=2\.5"),
    (dict(method="ddpm", logvar_interp=1.5), r"config\.sampler\.logvar_interp=1\.5 .*\[0, 1\]"),
    (dict(guidance=-1.0), r"config\.sampler\.guidance=-1\.0 .*>= 0"),
    (dict(guidance_interval=(5.0, 0.0)), r"config\.sampler\.guidance_interval=\(5\.0, 0\.0\) .*lo < hi"),
    (dict(guidance_interval=(1.0,)), r"config\.sampler\.guidance_interval=.*\(lo, hi\)"),
    (dict(clip="static"), r"config\.sampler\.clip='static'"),
    (dict(steps=3), r"unknown key.*steps"),
])
def test_config_validation(overrides, pattern):
    cfg = sampler_config()
    if "steps" in overrides:
        cfg.steps = 3
    else:
        cfg = ml_collections.ConfigDict({**cfg.to_dict(), **overrides})
    with pytest.raises(ValueError, match=pattern):
        samplers.from_config(cfg, SCHEDULE)


def test_config_accepts_valid_variants():
    # logvar_interp only matters for ddpm; guidance without an interval guides every step.
    s = samplers.from_config(sampler_config(method="ddim", logvar_interp=3.0), SCHEDULE)
    assert s.method == "ddim"
    s = samplers.from_config(sampler_config(method="ddpm", guidance=1.0), SCHEDULE)
    assert s.guidance == 1.0 and s.guidance_interval is None
    hash(s)  # usable as a static jit argument


def test_sample_argument_errors():
    with pytest.raises(ValueError, match="method='heun'"):
        samplers.sample(gaussian_denoiser, jax.random.key(0), (1, 1, 1, 1, 1), schedule=SCHEDULE,
                        num_steps=2, method="heun")
    with pytest.raises(ValueError, match="num_steps=0"):
        samplers.sample(gaussian_denoiser, jax.random.key(0), (1, 1, 1, 1, 1), schedule=SCHEDULE, num_steps=0)
    with pytest.raises(ValueError, match="logvar_interp=-0.1"):
        samplers.sample(gaussian_denoiser, jax.random.key(0), (1, 1, 1, 1, 1), schedule=SCHEDULE,
                        num_steps=2, logvar_interp=-0.1)
