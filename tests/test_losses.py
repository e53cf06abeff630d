"""Loss weightings, power and multiscale losses, masks and conditioning dropout (SPEC §3)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from sid2video.diffusion import losses as L
from sid2video.diffusion import parametrization as P
from sid2video.diffusion import schedules

SCHEDULE = schedules.get("cosine_interpolated", image_d=64, noise_d_low=8, noise_d_high=64)
SHAPE = (8, 4, 16, 16, 3)


@pytest.fixture(scope="module")
def batch():
    kx, ke, kt, kp = jax.random.split(jax.random.PRNGKey(1), 4)
    x = jax.random.uniform(kx, SHAPE, minval=-1, maxval=1)
    eps = jax.random.normal(ke, SHAPE)
    t = jax.random.uniform(kt, SHAPE[:1], minval=0.05, maxval=0.95)
    logsnr, dlogsnr = SCHEDULE(t), SCHEDULE.dlogsnr_dt(t)
    z = P.diffuse(x, eps, logsnr)
    # An imperfect prediction: the true v plus noise.
    v_hat = P.v_target(x, eps, logsnr) + 0.3 * jax.random.normal(kp, SHAPE)
    x_hat, eps_hat = P.predictions(v_hat, z, logsnr, "v")
    return dict(x=x, eps=eps, logsnr=logsnr, dlogsnr=dlogsnr, z=z, v_hat=v_hat, x_hat=x_hat, eps_hat=eps_hat)


def _np(a):
    return np.asarray(a, np.float64)


@pytest.mark.parametrize("bias", [-3.0, 0.0, 1.0])
def test_weights_against_closed_forms(batch, bias):
    lam, dl = _np(batch["logsnr"]), _np(batch["dlogsnr"])
    jac = -0.5 * dl
    sig = lambda a: 1.0 / (1.0 + np.exp(-a))  # noqa: E731
    expected_eps = {
        "sigmoid": jac * sig(bias - lam),
        "elbo": jac,
        "eps_mse": np.ones_like(lam),
        "v_mse": 1.0 + np.exp(-lam),
        "edm": jac * stats.norm.pdf(lam, 2.4, 2.4) * (np.exp(-lam) + 0.25) / 0.25,
    }
    for name, want in expected_eps.items():
        got = L.eps_weight(name, batch["logsnr"], batch["dlogsnr"], bias)
        np.testing.assert_allclose(got, want, rtol=2e-5, err_msg=name)
        got_x = L.x_weight(name, batch["logsnr"], batch["dlogsnr"], bias)
        np.testing.assert_allclose(got_x, np.exp(lam) * want, rtol=2e-5, err_msg=name)
    # SiD2 eq. 4 / B.1: in x-space the sigmoid weight is e^b sigmoid(λ − b) (times −½ dλ/dt).
    np.testing.assert_allclose(
        L.x_weight("sigmoid", batch["logsnr"], batch["dlogsnr"], bias), jac * np.exp(bias) * sig(lam - bias), rtol=2e-5
    )


@pytest.mark.parametrize("weighting", L.WEIGHTINGS)
def test_x_space_and_eps_space_losses_agree(batch, weighting):
    b = batch
    cfg_x = L.LossConfig(weighting=weighting, bias=-1.0, space="x")
    cfg_e = L.LossConfig(weighting=weighting, bias=-1.0, space="eps")
    args = (b["x"], b["eps"], b["x_hat"], b["eps_hat"], b["logsnr"], b["dlogsnr"])
    lx = L.per_example_loss(cfg_x, *args)
    le = L.per_example_loss(cfg_e, *args)
    np.testing.assert_allclose(lx, le, rtol=2e-4)


def test_plain_mse_weightings_are_the_plain_losses(batch):
    b = batch
    args = (b["x"], b["eps"], b["x_hat"], b["eps_hat"], b["logsnr"], b["dlogsnr"])
    eps_loss = L.per_example_loss(L.LossConfig(weighting="eps_mse", space="eps"), *args)
    np.testing.assert_allclose(eps_loss, jnp.mean((b["eps"] - b["eps_hat"]) ** 2, axis=(1, 2, 3, 4)), rtol=1e-5)
    v_loss = L.per_example_loss(L.LossConfig(weighting="v_mse", space="eps"), *args)
    v = P.v_target(b["x"], b["eps"], b["logsnr"])
    np.testing.assert_allclose(v_loss, jnp.mean((v - b["v_hat"]) ** 2, axis=(1, 2, 3, 4)), rtol=1e-4)


def test_edm_monotonic_is_edm_held_at_its_maximum():
    lam = jnp.linspace(-20.0, 20.0, 40001)
    ones = -2.0 * jnp.ones_like(lam)  # −½ dλ/dt = 1
    mono = np.asarray(L.eps_weight("edm_monotonic", lam, ones))
    edm = np.asarray(L.eps_weight("edm", lam, ones))
    assert np.all(np.diff(mono) <= 1e-6 * mono[:-1])  # non-increasing in λ (to float32 rounding)
    above = np.asarray(lam) >= L.EDM_ARGMAX
    np.testing.assert_allclose(mono[above], edm[above], rtol=1e-6)
    np.testing.assert_allclose(mono[~above], edm.max(), rtol=1e-4)
    # The arg-max found by bisection is the grid arg-max of an independent float64 evaluation.
    grid = np.linspace(-20, 20, 400001)
    w = stats.norm.pdf(grid, 2.4, 2.4) * (np.exp(-grid) + 0.25)
    assert L.EDM_ARGMAX == pytest.approx(grid[np.argmax(w)], abs=2e-4)


def test_haar_is_orthonormal():
    x = jax.random.normal(jax.random.PRNGKey(2), (2, 3, 16, 8, 2))
    energy = float(jnp.sum(x**2))
    for levels in range(4):
        bands = L.haar_subbands(x, levels)
        assert sum(float(jnp.sum(b**2)) for b, _ in bands) == pytest.approx(energy, rel=1e-5)
        assert sum(b.size for b, _ in bands) == x.size
    # Orthonormal: inner products are preserved too (polarisation of the energy identity).
    y = jax.random.normal(jax.random.PRNGKey(3), x.shape)
    dot = sum(float(jnp.sum(a * b)) for (a, _), (b, _) in zip(L.haar_subbands(x, 2), L.haar_subbands(y, 2)))
    assert dot == pytest.approx(float(jnp.sum(x * y)), rel=1e-4, abs=1e-3)


def test_haar_bands_of_known_images():
    const = jnp.full((1, 1, 8, 8, 1), 3.0)
    ll, lh, hl, hh = L.haar_level(const)
    np.testing.assert_allclose(ll, 6.0, atol=1e-6)  # (c + c)/√2 along rows then columns = 2c
    for band in (lh, hl, hh):
        np.testing.assert_allclose(band, 0.0, atol=1e-6)
    checker = jnp.asarray((-1.0) ** np.add.outer(np.arange(8), np.arange(8)))[None, None, :, :, None]
    ll, lh, hl, hh = L.haar_level(checker)
    np.testing.assert_allclose(hh, 2.0, atol=1e-6)
    for band in (ll, lh, hl):
        np.testing.assert_allclose(band, 0.0, atol=1e-6)
    # Low-pass counts: each level adds two to LL, one to LH/HL, none to HH.
    counts = [l for _, l in L.haar_subbands(const, 2)]
    assert counts == [1, 1, 0, 3, 3, 2, 4]


def test_power_loss_zero_levels_is_the_sigmoid_loss(batch):
    b = batch
    for bias in (-3.0, 0.0):
        power = L.power_loss(b["x"], b["x_hat"], b["logsnr"], b["dlogsnr"], bias=bias, levels=0)
        sig = L.per_example_loss(
            L.LossConfig(weighting="sigmoid", bias=bias),
            b["x"], b["eps"], b["x_hat"], b["eps_hat"], b["logsnr"], b["dlogsnr"],
        )
        np.testing.assert_allclose(power, sig, rtol=1e-5)


def test_power_loss_weights_low_bands_by_their_low_passes(batch):
    # A constant error puts all its energy in the final LL band, which has 2·levels low passes.
    b = batch
    c, bias, levels = 0.2, -1.0, 2
    x = jnp.zeros(SHAPE)
    power = L.power_loss(x, x + c, b["logsnr"], b["dlogsnr"], bias=bias, levels=levels)
    lam, jac = _np(b["logsnr"]), -0.5 * _np(b["dlogsnr"])
    want = jac * math.exp(bias) / (1 + np.exp(-(lam + 2 * levels * math.log(2) - bias))) * c**2
    np.testing.assert_allclose(power, want, rtol=1e-5)


def test_multiscale_closed_forms():
    x = jnp.zeros((2, 1, 16, 16, 1))
    c = 0.5
    # Constant error survives every pooling: Σ_s c²/s over s ∈ {4, 8, 16}.
    np.testing.assert_allclose(L.multiscale_mse(x, x + c, base=4), c**2 * (1 / 4 + 1 / 8 + 1 / 16), rtol=1e-6)
    # A checkerboard error averages to zero at every coarser scale: only the full-resolution term.
    checker = c * jnp.asarray((-1.0) ** np.add.outer(np.arange(16), np.arange(16)))[None, None, :, :, None]
    np.testing.assert_allclose(L.multiscale_mse(x, x + checker, base=4), c**2 / 16, rtol=1e-6)
    assert L.multiscale_resolutions(16, 16, 32) == [16]
    with pytest.raises(ValueError, match="square"):
        L.multiscale_resolutions(16, 8, 4)
    with pytest.raises(ValueError, match="base 3"):
        L.multiscale_resolutions(16, 16, 3)


@pytest.mark.parametrize("kind", L.KINDS)
def test_masked_frames_contribute_nothing(batch, kind):
    b = batch
    mask = jnp.asarray([[0, 0, 1, 1]] * SHAPE[0], jnp.float32)
    cfg = L.LossConfig(kind=kind, power_levels=1, multiscale_base=4)
    base = L.per_example_loss(cfg, b["x"], b["eps"], b["x_hat"], b["eps_hat"], b["logsnr"], b["dlogsnr"], mask=mask)
    # Corrupt the predictions of the conditioning (masked-out) frames only.
    junk = jnp.zeros(SHAPE).at[:, :2].set(100.0)
    changed = L.per_example_loss(
        cfg, b["x"], b["eps"], b["x_hat"] + junk, b["eps_hat"] + junk, b["logsnr"], b["dlogsnr"], mask=mask
    )
    np.testing.assert_allclose(changed, base, rtol=1e-6)
    # And the loss equals the same loss computed on the target frames alone.
    sub = {k: (v[:, 2:] if getattr(v, "ndim", 0) == 5 else v) for k, v in b.items()}
    alone = L.per_example_loss(cfg, sub["x"], sub["eps"], sub["x_hat"], sub["eps_hat"], b["logsnr"], b["dlogsnr"])
    np.testing.assert_allclose(base, alone, rtol=1e-5)
    # Corrupting a target frame does change it.
    moved = L.per_example_loss(
        cfg, b["x"], b["eps"], b["x_hat"] + junk[:, ::-1], b["eps_hat"] + junk[:, ::-1],
        b["logsnr"], b["dlogsnr"], mask=mask,
    )
    assert np.all(np.asarray(moved) > 2 * np.asarray(base))


def test_time_shifted_bias():
    f = lambda s: float(L.time_shifted_bias(s, -8.0, -3.0, 100_000))  # noqa: E731
    assert f(0) == -8.0
    assert f(50_000) == pytest.approx(-5.5)
    assert f(100_000) == -3.0
    assert f(400_000) == -3.0
    cfg = L.LossConfig(bias=-3.0, bias_start=-8.0, bias_steps=100_000)
    assert float(cfg.bias_at(25_000)) == pytest.approx(-6.75)
    assert float(L.LossConfig(bias=-3.0).bias_at(10)) == -3.0


def test_diffusion_loss_end_to_end():
    x = jax.random.uniform(jax.random.PRNGKey(4), SHAPE, minval=-1, maxval=1)
    rng = jax.random.PRNGKey(5)
    cfg = L.LossConfig(weighting="sigmoid", bias=0.0, mean_type="v")

    def oracle(z, logsnr):  # the exact v for this x: v = (α z − x)/σ
        from sid2video.diffusion.schedules import alpha_sigma

        a, s = alpha_sigma(logsnr)
        return (P.per_example(a, z) * z - x) / P.per_example(s, z)

    loss, _ = jax.jit(lambda r: L.diffusion_loss(oracle, x, r, schedule=SCHEDULE, cfg=cfg))(rng)
    assert float(loss) < 1e-8

    class Recording:  # the schedule, remembering the times it was asked for
        def __init__(self):
            self.t = None

        def __call__(self, t):
            self.t = t
            return SCHEDULE(t)

        def dlogsnr_dt(self, t):
            return SCHEDULE.dlogsnr_dt(t)

    def zero_x(z, logsnr):  # predicts x̂ = 0
        return jnp.zeros_like(z)

    rec = Recording()
    loss, metrics = L.diffusion_loss(zero_x, x, rng, schedule=rec, cfg=L.LossConfig(mean_type="x", bias=-2.0))
    lam, dl = _np(SCHEDULE(rec.t)), _np(SCHEDULE.dlogsnr_dt(rec.t))
    # sigmoid weight in x-space, −½ dλ/dt e^b sigmoid(λ − b), times mean(x²) per example.
    w = -0.5 * dl * math.exp(-2.0) / (1 + np.exp(-(lam + 2.0)))
    want = np.mean(w * np.mean(_np(x) ** 2, axis=(1, 2, 3, 4)))
    assert float(loss) == pytest.approx(want, rel=1e-5)
    assert float(metrics["x_mse"]) == pytest.approx(float(jnp.mean(x**2)), rel=1e-5)
    assert 0.0 <= float(jnp.min(rec.t)) and float(jnp.max(rec.t)) <= 1.0


def test_conditioning_frames_enter_clean():
    """With `clean`, the network sees x itself at the marked frames and the noised x elsewhere,
    as the samplers hold the conditioning frames; without it every frame is noised."""
    x = jax.random.uniform(jax.random.PRNGKey(6), SHAPE, minval=-1, maxval=1)
    clean = jnp.zeros(SHAPE[:2]).at[0, :2].set(1.0).at[1, 1].set(1.0)
    seen = {}

    def record(z, logsnr):
        seen["z"], seen["logsnr"] = z, logsnr
        return jnp.zeros_like(z)

    rng = jax.random.PRNGKey(7)
    L.diffusion_loss(record, x, rng, schedule=SCHEDULE, cfg=L.LossConfig(), clean=clean)
    z_clean = _np(seen["z"])
    L.diffusion_loss(record, x, rng, schedule=SCHEDULE, cfg=L.LossConfig())
    z_noised = _np(seen["z"])
    keep = _np(clean).astype(bool)
    np.testing.assert_array_equal(z_clean[keep], _np(x)[keep])
    np.testing.assert_array_equal(z_clean[~keep], z_noised[~keep])
    assert np.abs(z_noised[keep] - _np(x)[keep]).max() > 1e-2  # the default noises them


def test_conditioning_dropout():
    labels = jnp.arange(20_000) % 7
    rng = jax.random.PRNGKey(6)
    np.testing.assert_array_equal(L.drop_labels(rng, labels, 0.0, 7), labels)
    np.testing.assert_array_equal(L.drop_labels(rng, labels, 1.0, 7), 7)
    dropped = np.asarray(L.drop_labels(rng, labels, 0.1, 7)) == 7
    assert 0.09 < dropped.mean() < 0.11
    kept = ~dropped
    np.testing.assert_array_equal(np.asarray(L.drop_labels(rng, labels, 0.1, 7))[kept], np.asarray(labels)[kept])
    mask = jnp.tile(jnp.asarray([1, 1, 0, 0], jnp.float32), (20_000, 1))
    out = np.asarray(L.drop_condition(rng, mask, 0.1))
    rows = out.sum(axis=1)
    assert set(np.unique(rows)) == {0.0, 2.0}  # whole examples drop, never single frames
    assert 0.09 < np.mean(rows == 0) < 0.11


def test_loss_config_validation():
    with pytest.raises(ValueError, match="loss.weighting='huber'"):
        L.LossConfig(weighting="huber")
    with pytest.raises(ValueError, match="loss.mean_type='y'"):
        L.LossConfig(mean_type="y")
    with pytest.raises(ValueError, match="loss.kind='power' uses its own"):
        L.LossConfig(kind="power", weighting="edm")
    with pytest.raises(ValueError, match="loss.power_levels=-1"):
        L.LossConfig(power_levels=-1)
    with pytest.raises(ValueError, match="unknown loss config key"):
        L.LossConfig.from_config({"weighting": "sigmoid", "biass": 1.0})
    cfg = L.LossConfig.from_config({"weighting": "sigmoid", "bias": -3.0, "class_drop_rate": 0.1})
    assert cfg.bias == -3.0
    with pytest.raises(ValueError, match="loss mask has shape"):
        L.masked_mean(jnp.zeros(SHAPE), jnp.ones((SHAPE[0], 3)))
