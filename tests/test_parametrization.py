"""v / ε / x parametrizations: round trips and consistency (SPEC §1)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sid2video.diffusion import parametrization as P
from sid2video.diffusion.schedules import alpha_sigma

SHAPE = (6, 3, 4, 4, 2)


@pytest.fixture(scope="module")
def batch():
    kx, ke = jax.random.split(jax.random.PRNGKey(0))
    x = jax.random.uniform(kx, SHAPE, minval=-1, maxval=1)
    eps = jax.random.normal(ke, SHAPE)
    logsnr = jnp.linspace(-6.0, 6.0, SHAPE[0])
    return x, eps, logsnr, P.diffuse(x, eps, logsnr)


def test_diffuse_is_alpha_x_plus_sigma_eps(batch):
    x, eps, logsnr, z = batch
    alpha, sigma = alpha_sigma(logsnr)
    for i in range(SHAPE[0]):
        np.testing.assert_allclose(z[i], alpha[i] * x[i] + sigma[i] * eps[i], atol=1e-6)


def test_round_trips(batch):
    x, eps, logsnr, z = batch
    v = P.v_target(x, eps, logsnr)
    np.testing.assert_allclose(P.x_from_v(z, v, logsnr), x, atol=1e-5)
    np.testing.assert_allclose(P.eps_from_v(z, v, logsnr), eps, atol=1e-5)
    np.testing.assert_allclose(P.x_from_eps(z, eps, logsnr), x, atol=1e-4)
    np.testing.assert_allclose(P.eps_from_x(z, x, logsnr), eps, atol=1e-4)
    # v is the rotation of (ε, x): ‖v‖² + ‖z‖² = ‖x‖² + ‖ε‖² per element.
    np.testing.assert_allclose(v**2 + z**2, x**2 + eps**2, atol=1e-5)


@pytest.mark.parametrize("mean_type", ["v", "eps", "x"])
def test_predictions_from_exact_outputs(batch, mean_type):
    x, eps, logsnr, z = batch
    out = {"v": P.v_target(x, eps, logsnr), "eps": eps, "x": x}[mean_type]
    x_hat, eps_hat = P.predictions(out, z, logsnr, mean_type)
    np.testing.assert_allclose(x_hat, x, atol=1e-4)
    np.testing.assert_allclose(eps_hat, eps, atol=1e-4)


def test_unknown_mean_type(batch):
    x, eps, logsnr, z = batch
    with pytest.raises(ValueError, match="mean_type='y'"):
        P.predictions(x, z, logsnr, "y")
