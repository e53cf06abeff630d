"""logSNR noise schedules (simple diffusion App. A, SiD2 B.1; SPEC §2).

A schedule maps diffusion time t in [0, 1] to the log signal-to-noise ratio
λ(t) = log(α_t² / σ_t²), decreasing from λ(0) (nearly clean) to λ(1) (nearly pure noise).
The process is variance preserving: α² = sigmoid(λ), σ² = sigmoid(−λ).

    cosine               λ(t) = −2 log tan(t_min + t (t_max − t_min)),
                         t_min = atan(exp(−λ_max / 2)), t_max = atan(exp(−λ_min / 2))
    cosine_shifted       λ(t) = λ_cos(t) + 2 log(noise_d / image_d)          (simple diffusion eq. 5)
    cosine_interpolated  λ(t) = t λ_shift(t; noise_d_low) + (1 − t) λ_shift(t; noise_d_high)

The shift multiplies the SNR by (noise_d / image_d)²: every doubling of resolution moves λ by
−2 log 2. The bounds of a shifted schedule move with the shift, so `logsnr_min`/`logsnr_max` of a
schedule object are its actual range, not the base cosine's.

Every schedule also gives dλ/dt in closed form (needed by the weighted losses); the tests check it
against `jax.jvp`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import jax
import jax.numpy as jnp

Array = jax.Array


def alpha_sigma(logsnr: Array) -> tuple[Array, Array]:
    """α = sqrt(sigmoid(λ)), σ = sqrt(sigmoid(−λ)); α² + σ² = 1."""
    logsnr = jnp.asarray(logsnr)
    return jnp.sqrt(jax.nn.sigmoid(logsnr)), jnp.sqrt(jax.nn.sigmoid(-logsnr))


def _cosine_bounds(logsnr_min: float, logsnr_max: float) -> tuple[float, float]:
    t_min = math.atan(math.exp(-0.5 * logsnr_max))
    t_max = math.atan(math.exp(-0.5 * logsnr_min))
    return t_min, t_max


def _cosine(t: Array, logsnr_min: float, logsnr_max: float) -> Array:
    # λ = −2 log tan(u), u = t_min + t Δ. Near u = π/2 float32 cannot resolve π/2 − u, so that half
    # uses the complementary angle w = π/2 − u = s_min + (1 − t) Δ, s_min = atan(exp(λ_min / 2)),
    # and tan(u) = 1 / tan(w): both ends then reach their bounds to float32 precision.
    t_min, t_max = _cosine_bounds(logsnr_min, logsnr_max)
    delta = t_max - t_min
    s_min = math.atan(math.exp(0.5 * logsnr_min))
    u = t_min + t * delta
    w = s_min + (1.0 - t) * delta
    first_half = u <= math.pi / 4
    return jnp.where(
        first_half,
        -2.0 * jnp.log(jnp.tan(jnp.where(first_half, u, math.pi / 4))),
        2.0 * jnp.log(jnp.tan(jnp.where(first_half, math.pi / 4, w))),
    )


def _cosine_dt(t: Array, logsnr_min: float, logsnr_max: float) -> Array:
    # d/dt [−2 log tan(u)] with u = t_min + t Δ:  −2 Δ / (sin u cos u) = −4 Δ / sin(2u),
    # and sin(2u) = sin(2w) for the complementary angle, which is the accurate one near π/2.
    t_min, t_max = _cosine_bounds(logsnr_min, logsnr_max)
    delta = t_max - t_min
    s_min = math.atan(math.exp(0.5 * logsnr_min))
    angle = jnp.minimum(t_min + t * delta, s_min + (1.0 - t) * delta)
    return -4.0 * delta / jnp.sin(2.0 * angle)


def _shift(image_d: float, noise_d: float) -> float:
    return 2.0 * math.log(noise_d / image_d)


@dataclasses.dataclass(frozen=True)
class Schedule:
    """A logSNR schedule: `schedule(t) -> λ`, `schedule.dlogsnr_dt(t) -> dλ/dt`.

    Build one with `get(name, **kwargs)`. Instances are hashable, so they can be static
    arguments of jitted functions.
    """

    name: str
    logsnr_min_base: float = -15.0
    logsnr_max_base: float = 15.0
    image_d: float = 1.0
    noise_d: float = 1.0
    noise_d_low: float = 1.0
    noise_d_high: float = 1.0

    def __call__(self, t: Array) -> Array:
        t = jnp.asarray(t, dtype=jnp.result_type(t, jnp.float32))
        base = _cosine(t, self.logsnr_min_base, self.logsnr_max_base)
        if self.name == "cosine":
            return base
        if self.name == "cosine_shifted":
            return base + _shift(self.image_d, self.noise_d)
        # cosine_interpolated
        low = base + _shift(self.image_d, self.noise_d_low)
        high = base + _shift(self.image_d, self.noise_d_high)
        return t * low + (1.0 - t) * high

    def dlogsnr_dt(self, t: Array) -> Array:
        """dλ/dt in closed form (negative: λ decreases with t)."""
        t = jnp.asarray(t, dtype=jnp.result_type(t, jnp.float32))
        base_dt = _cosine_dt(t, self.logsnr_min_base, self.logsnr_max_base)
        if self.name in ("cosine", "cosine_shifted"):
            return base_dt
        # d/dt [t λ_low + (1 − t) λ_high] = (λ_low − λ_high) + λ_cos'(t), as the shifts are constants.
        return base_dt + (
            _shift(self.image_d, self.noise_d_low) - _shift(self.image_d, self.noise_d_high)
        )

    @property
    def logsnr_max(self) -> float:
        """λ(0): the highest logSNR the schedule reaches (bounds move with the shift)."""
        return float(self(jnp.float32(0.0)))

    @property
    def logsnr_min(self) -> float:
        """λ(1): the lowest logSNR the schedule reaches."""
        return float(self(jnp.float32(1.0)))


_ARGS: dict[str, tuple[str, ...]] = {
    "cosine": ("logsnr_min", "logsnr_max"),
    "cosine_shifted": ("image_d", "noise_d", "logsnr_min", "logsnr_max"),
    "cosine_interpolated": ("image_d", "noise_d_low", "noise_d_high", "logsnr_min", "logsnr_max"),
}
NAMES = tuple(_ARGS)


def get(name: str, **kwargs: float) -> Schedule:
    """Build a schedule by name.

    get("cosine", logsnr_min=-15.0, logsnr_max=15.0)
    get("cosine_shifted", image_d=128, noise_d=64)
    get("cosine_interpolated", image_d=512, noise_d_low=32, noise_d_high=512)

    `logsnr_min`/`logsnr_max` bound the base cosine schedule (default ±15, simple diffusion;
    SiD2's code uses ±10); the shift then moves the whole curve.
    """
    if name not in _ARGS:
        raise ValueError(f"unknown schedule {name!r}; choose one of {', '.join(NAMES)}")
    allowed = _ARGS[name]
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise ValueError(
            f"schedule {name!r} got unexpected argument(s) {unknown}; it takes {', '.join(allowed)}"
        )
    required = [a for a in allowed if not a.startswith("logsnr_")]
    missing = [a for a in required if a not in kwargs]
    if missing:
        raise ValueError(f"schedule {name!r} needs {', '.join(missing)}")
    for key in required:
        value = kwargs[key]
        if not (isinstance(value, (int, float)) and value > 0):
            raise ValueError(f"schedule {name!r}: {key}={value!r} must be a positive number")
    lo = float(kwargs.get("logsnr_min", -15.0))
    hi = float(kwargs.get("logsnr_max", 15.0))
    if not lo < hi:
        raise ValueError(f"schedule {name!r}: logsnr_min={lo} must be below logsnr_max={hi}")
    fields = {k: float(v) for k, v in kwargs.items() if not k.startswith("logsnr_")}
    return Schedule(name=name, logsnr_min_base=lo, logsnr_max_base=hi, **fields)


def from_config(cfg) -> Schedule:
    """Build a schedule from a config dict / ConfigDict with a `name` key and its arguments."""
    cfg = dict(cfg)
    name = cfg.pop("name", None)
    if name is None:
        raise ValueError("schedule config needs a 'name' key; choose one of " + ", ".join(NAMES))
    return get(name, **cfg)


def jvp_dlogsnr_dt(schedule: Callable[[Array], Array], t: Array) -> Array:
    """dλ/dt by forward-mode autodiff (SiD2 B.1); the closed forms are checked against this."""
    t = jnp.asarray(t, jnp.float32)
    return jax.jvp(schedule, (t,), (jnp.ones_like(t),))[1]
