"""The forward process and the v / ε / x parametrizations (SPEC §1; Salimans & Ho 2022).

    z_t = α x + σ ε,          v = α ε − σ x
    from v̂:  x̂ = α z − σ v̂,   ε̂ = σ z + α v̂
    from ε̂:  x̂ = (z − σ ε̂) / α
    from x̂:  ε̂ = (z − α x̂) / σ

`logsnr` has shape [B]; data has shape [B, T, H, W, C] (or any [B, ...]).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from sid2video.diffusion.schedules import alpha_sigma

Array = jax.Array
MEAN_TYPES = ("v", "eps", "x")


def per_example(a: Array, like: Array) -> Array:
    """Reshape a per-example array [B] to broadcast against `like` [B, ...]."""
    a = jnp.asarray(a)
    return a.reshape(a.shape + (1,) * (like.ndim - a.ndim))


def _coefficients(logsnr: Array, like: Array) -> tuple[Array, Array]:
    alpha, sigma = alpha_sigma(logsnr)
    return per_example(alpha, like), per_example(sigma, like)


def diffuse(x: Array, eps: Array, logsnr: Array) -> Array:
    """z_t = α x + σ ε."""
    alpha, sigma = _coefficients(logsnr, x)
    return alpha * x + sigma * eps


def v_target(x: Array, eps: Array, logsnr: Array) -> Array:
    """v = α ε − σ x."""
    alpha, sigma = _coefficients(logsnr, x)
    return alpha * eps - sigma * x


def x_from_v(z: Array, v: Array, logsnr: Array) -> Array:
    alpha, sigma = _coefficients(logsnr, z)
    return alpha * z - sigma * v


def eps_from_v(z: Array, v: Array, logsnr: Array) -> Array:
    alpha, sigma = _coefficients(logsnr, z)
    return sigma * z + alpha * v


def x_from_eps(z: Array, eps: Array, logsnr: Array) -> Array:
    alpha, sigma = _coefficients(logsnr, z)
    return (z - sigma * eps) / alpha


def eps_from_x(z: Array, x: Array, logsnr: Array) -> Array:
    alpha, sigma = _coefficients(logsnr, z)
    return (z - alpha * x) / sigma


def predictions(output: Array, z: Array, logsnr: Array, mean_type: str = "v") -> tuple[Array, Array]:
    """Turn the network's raw output into (x̂, ε̂) for the given parametrization."""
    if mean_type == "v":
        return x_from_v(z, output, logsnr), eps_from_v(z, output, logsnr)
    if mean_type == "eps":
        return x_from_eps(z, output, logsnr), output
    if mean_type == "x":
        return output, eps_from_x(z, output, logsnr)
    raise ValueError(f"mean_type={mean_type!r} is not one of {MEAN_TYPES}")
