"""Weighted diffusion losses (SiD2 §1.1, §2.1, B.1, B.2; simple diffusion §3.2; VDM++; SPEC §3).

The general loss is

    L = E_{t ~ U(0,1)} [ −½ dλ/dt · w̃(λ_t) · ‖ε − ε̂‖² ]

with the squared error averaged over the non-batch dimensions (only over the predicted frames of a
video, see `masked_mean`). Because ‖ε − ε̂‖² = e^λ ‖x − x̂‖², the same loss in x-space carries the
weight e^λ · (ε-space weight). Every weighting below is written as the log of its ε-space weight,
so both forms are computed without overflow.

    sigmoid        w̃ = sigmoid(b − λ)                  x-space: e^b sigmoid(λ − b)   (SiD2 eq. 4)
    elbo           w̃ = 1                                                              (VDM)
    edm            w̃ = N(λ; 2.4, 2.4²) (e^{−λ} + 0.5²) / 0.5²                         (VDM++)
    edm_monotonic  edm held at its maximum for all λ below its arg-max
    eps_mse        ‖ε − ε̂‖², t uniform, no −½ dλ/dt factor                            (Ho et al.)
    v_mse          ‖v − v̂‖² = (1 + e^{−λ}) ‖ε − ε̂‖², no −½ dλ/dt factor               (simple diffusion)

Besides the plain mean squared error (`kind='mse'`), two multi-resolution variants are provided:
the power loss (`kind='power'`, Haar sub-bands with their own sigmoid weights) and the multiscale
ε-loss (`kind='multiscale'`, average-pooled ε errors, simple diffusion §3.2).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from sid2video.diffusion import parametrization as param
from sid2video.diffusion.schedules import Schedule

Array = jax.Array

WEIGHTINGS = ("sigmoid", "eps_mse", "v_mse", "elbo", "edm", "edm_monotonic")
KINDS = ("mse", "power", "multiscale")
SPACES = ("x", "eps")

# EDM's training distribution in λ = −2 log σ: log σ ~ N(−1.2, 1.2²)  =>  λ ~ N(2.4, 2.4²).
EDM_MEAN = 2.4
EDM_STD = 2.4
EDM_SIGMA_DATA = 0.5


def _edm_log_weight_np(lam: np.ndarray) -> np.ndarray:
    c = EDM_SIGMA_DATA**2
    log_normal = -0.5 * ((lam - EDM_MEAN) / EDM_STD) ** 2 - math.log(EDM_STD * math.sqrt(2 * math.pi))
    return log_normal + np.logaddexp(-lam, math.log(c)) - math.log(c)


def _edm_argmax() -> float:
    """The λ where the edm weight peaks: the root of d/dλ log w̃ = −(λ − μ)/s² − e^{−λ}/(e^{−λ} + c).

    The derivative is positive far below the peak and negative far above it and has a single root
    (the weight is unimodal), so bisection finds it.
    """
    c = EDM_SIGMA_DATA**2

    def slope(lam: float) -> float:
        return -(lam - EDM_MEAN) / EDM_STD**2 - 1.0 / (1.0 + c * math.exp(lam))

    lo, hi = -50.0, 50.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if slope(mid) > 0 else (lo, mid)
    return 0.5 * (lo + hi)


EDM_ARGMAX = _edm_argmax()


def _edm_log_weight(logsnr: Array) -> Array:
    c = EDM_SIGMA_DATA**2
    log_normal = jax.scipy.stats.norm.logpdf(logsnr, EDM_MEAN, EDM_STD)
    return log_normal + jnp.logaddexp(-logsnr, math.log(c)) - math.log(c)


def log_weight(weighting: str, logsnr: Array, dlogsnr_dt: Array, bias: Array | float = 0.0) -> Array:
    """log of the ε-space weight multiplying mean ‖ε − ε̂‖², per example.

    For the weightings of the general form this is log(−½ dλ/dt) + log w̃(λ).
    """
    logsnr = jnp.asarray(logsnr, jnp.float32)
    if weighting == "eps_mse":
        return jnp.zeros_like(logsnr)
    if weighting == "v_mse":
        return jax.nn.softplus(-logsnr)  # log(1 + e^{−λ}) = log(1 / α²)
    # dλ/dt < 0 for a decreasing schedule, so −½ dλ/dt > 0.
    log_jacobian = jnp.log(-0.5 * jnp.asarray(dlogsnr_dt, jnp.float32))
    if weighting == "sigmoid":
        return log_jacobian + jax.nn.log_sigmoid(bias - logsnr)
    if weighting == "elbo":
        return log_jacobian
    if weighting == "edm":
        return log_jacobian + _edm_log_weight(logsnr)
    if weighting == "edm_monotonic":
        return log_jacobian + _edm_log_weight(jnp.maximum(logsnr, EDM_ARGMAX))
    raise ValueError(f"unknown weighting {weighting!r}; choose one of {', '.join(WEIGHTINGS)}")


def eps_weight(weighting: str, logsnr: Array, dlogsnr_dt: Array, bias: Array | float = 0.0) -> Array:
    """Weight on mean ‖ε − ε̂‖² (per example)."""
    return jnp.exp(log_weight(weighting, logsnr, dlogsnr_dt, bias))


def x_weight(weighting: str, logsnr: Array, dlogsnr_dt: Array, bias: Array | float = 0.0) -> Array:
    """Weight on mean ‖x − x̂‖² (per example): e^λ times the ε-space weight."""
    return jnp.exp(jnp.asarray(logsnr, jnp.float32) + log_weight(weighting, logsnr, dlogsnr_dt, bias))


def time_shifted_bias(step: Array | int, bias_start: float, bias_end: float, bias_steps: int) -> Array:
    """b_step = b_start + (b_end − b_start) · min(step / t_b, 1)  (SiD2 C.2)."""
    if bias_steps <= 0:
        return jnp.asarray(bias_end, jnp.float32)
    frac = jnp.minimum(jnp.asarray(step, jnp.float32) / bias_steps, 1.0)
    return bias_start + (bias_end - bias_start) * frac


# ----------------------------------------------------------------------------- reductions


def _frame_mask(mask: Array | None, like: Array) -> Array:
    """A [B, T] frame mask (1 = the frame counts in the loss) broadcast to `like` [B, T, H, W, C]."""
    if mask is None:
        return jnp.ones(like.shape[:2] + (1,) * (like.ndim - 2), like.dtype)
    mask = jnp.asarray(mask, like.dtype)
    if mask.shape != like.shape[:2]:
        raise ValueError(f"loss mask has shape {mask.shape}; expected [B, T] = {like.shape[:2]}")
    return mask.reshape(mask.shape + (1,) * (like.ndim - 2))


def masked_mean(values: Array, mask: Array | None = None) -> Array:
    """Mean of `values` [B, T, H, W, C] over all non-batch dims of the frames where mask [B, T] is 1."""
    m = _frame_mask(mask, values)
    count = jnp.sum(jnp.broadcast_to(m, values.shape), axis=tuple(range(1, values.ndim)))
    total = jnp.sum(values * m, axis=tuple(range(1, values.ndim)))
    return total / jnp.maximum(count, 1.0)


def haar_level(x: Array) -> tuple[Array, Array, Array, Array]:
    """One orthonormal 2D Haar step on the spatial axes of [..., H, W, C] (SiD2 B.2).

    Rows first: s = (a + b)/√2, d = (a − b)/√2 along H gives (L, H); then the same along W on each,
    giving (LL, LH, HL, HH). Energy is preserved: the four bands hold ‖x‖² between them.
    """
    h, w = x.shape[-3], x.shape[-2]
    if h % 2 or w % 2:
        raise ValueError(f"the Haar transform needs even spatial sizes, got H={h}, W={w}")
    a, b = x[..., 0::2, :, :], x[..., 1::2, :, :]
    low, high = (a + b) / math.sqrt(2.0), (a - b) / math.sqrt(2.0)

    def cols(y: Array) -> tuple[Array, Array]:
        c, d = y[..., :, 0::2, :], y[..., :, 1::2, :]
        return (c + d) / math.sqrt(2.0), (c - d) / math.sqrt(2.0)

    ll, lh = cols(low)
    hl, hh = cols(high)
    return ll, lh, hl, hh


def haar_subbands(x: Array, levels: int) -> list[tuple[Array, int]]:
    """Apply `haar_level` `levels` times to the low band; return (band, number of low passes l(s)).

    Each step splits the current LL band into LL (two more low passes), LH and HL (one more),
    HH (none more). With levels = 0 the single band is x itself with l = 0.
    """
    bands: list[tuple[Array, int]] = []
    low, low_passes = x, 0
    for _ in range(levels):
        ll, lh, hl, hh = haar_level(low)
        bands += [(lh, low_passes + 1), (hl, low_passes + 1), (hh, low_passes)]
        low, low_passes = ll, low_passes + 2
    bands.append((low, low_passes))
    return bands


def power_loss(
    x: Array,
    x_hat: Array,
    logsnr: Array,
    dlogsnr_dt: Array,
    *,
    bias: Array | float,
    levels: int,
    mask: Array | None = None,
) -> Array:
    """Power loss (SiD2 B.2), per example.

    The Haar transform is applied `levels` times to I = x̂ − x; sub-band s with l(s) low passes gets
    the sigmoid weight with its logSNR raised by l(s)·log 2 (averaging raises the SNR):

        w_s = −½ dλ/dt · e^b · sigmoid(λ + l(s) log 2 − b),      L = Σ_s w_s ‖s‖² / N

    with N the number of elements that count (the masked mean's denominator). The constant
    factor ½ e^b makes `levels = 0` exactly the x-space sigmoid loss; SiD2's printed weight
    omits it, which only rescales the loss by a constant.
    """
    m = _frame_mask(mask, x)
    err = (x_hat - x) * m
    count = jnp.sum(jnp.broadcast_to(m, x.shape), axis=tuple(range(1, x.ndim)))
    jac = -0.5 * jnp.asarray(dlogsnr_dt, jnp.float32)
    total = jnp.zeros(x.shape[:1], jnp.float32)
    for band, low_passes in haar_subbands(err, levels):
        w = jac * jnp.exp(bias) * jax.nn.sigmoid(logsnr + low_passes * math.log(2.0) - bias)
        total = total + w * jnp.sum(jnp.square(band), axis=tuple(range(1, band.ndim)))
    return total / jnp.maximum(count, 1.0)


def average_pool(x: Array, size: int) -> Array:
    """Average-pool the spatial axes of [B, T, H, W, C] down to size × size."""
    h, w = x.shape[-3], x.shape[-2]
    if h % size or w % size:
        raise ValueError(f"cannot average-pool {h}x{w} to {size}x{size}: sizes must divide")
    fh, fw = h // size, w // size
    x = x.reshape(x.shape[:-3] + (size, fh, size, fw, x.shape[-1]))
    return x.mean(axis=(-4, -2))


def multiscale_resolutions(height: int, width: int, base: int) -> list[int]:
    """{base, 2·base, …, d} for d = the side of a square input (simple diffusion §3.2)."""
    if height != width:
        raise ValueError(f"the multiscale loss needs square frames, got {height}x{width}")
    if base > height:
        return [height]
    sizes, s = [], base
    while s < height:
        sizes.append(s)
        s *= 2
    if s != height:
        raise ValueError(f"multiscale base {base} times a power of 2 must reach the size {height}")
    return sizes + [height]


def multiscale_mse(eps: Array, eps_hat: Array, *, base: int, mask: Array | None = None) -> Array:
    """Σ_{s ∈ {base, 2·base, …, d}} (1/s) · mean ‖D_s[ε] − D_s[ε̂]‖²  (simple diffusion §3.2)."""
    diff = eps_hat - eps  # pooling is linear: D[ε̂] − D[ε] = D[ε̂ − ε]
    total = jnp.zeros(eps.shape[:1], jnp.float32)
    for s in multiscale_resolutions(eps.shape[-3], eps.shape[-2], base):
        total = total + masked_mean(jnp.square(average_pool(diff, s)), mask) / s
    return total


# ----------------------------------------------------------------------------- the training loss


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """What `diffusion_loss` computes; built from `config.loss` by `LossConfig.from_config`."""

    weighting: str = "sigmoid"
    bias: float = 0.0
    mean_type: str = "v"
    kind: str = "mse"
    space: str = "x"  # where the mse is computed; both are the same loss (tested)
    power_levels: int = 0
    multiscale_base: int = 32
    # time-shifted bias (SiD2 C.2): from bias_start to `bias` over bias_steps; 0 steps = off.
    bias_start: float = 0.0
    bias_steps: int = 0

    def __post_init__(self):
        def check(key, value, allowed):
            if value not in allowed:
                raise ValueError(f"loss.{key}={value!r} is not allowed; choose one of {', '.join(allowed)}")

        check("weighting", self.weighting, WEIGHTINGS)
        check("mean_type", self.mean_type, param.MEAN_TYPES)
        check("kind", self.kind, KINDS)
        check("space", self.space, SPACES)
        if self.kind == "power" and self.weighting != "sigmoid":
            raise ValueError(
                f"loss.kind='power' uses its own per-band sigmoid weights; set loss.weighting='sigmoid' "
                f"(got {self.weighting!r})"
            )
        if not (isinstance(self.power_levels, int) and self.power_levels >= 0):
            raise ValueError(f"loss.power_levels={self.power_levels!r} must be an integer >= 0")
        if not (isinstance(self.multiscale_base, int) and self.multiscale_base >= 1):
            raise ValueError(f"loss.multiscale_base={self.multiscale_base!r} must be an integer >= 1")
        if not (isinstance(self.bias_steps, int) and self.bias_steps >= 0):
            raise ValueError(f"loss.bias_steps={self.bias_steps!r} must be an integer >= 0")
        for key in ("bias", "bias_start"):
            if not math.isfinite(float(getattr(self, key))):
                raise ValueError(f"loss.{key}={getattr(self, key)!r} must be a finite number")

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> "LossConfig":
        """Pick the loss keys out of `config.loss`; unknown keys are an error, not ignored."""
        cfg = dict(cfg)
        # Conditioning dropout rates live beside the loss settings but are applied by the trainer.
        for key in ("class_drop_rate", "cond_drop_rate"):
            cfg.pop(key, None)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(cfg) - names)
        if unknown:
            raise ValueError(f"unknown loss config key(s) {unknown}; known: {', '.join(sorted(names))}")
        return cls(**cfg)

    def bias_at(self, step: Array | int) -> Array:
        if self.bias_steps == 0:
            return jnp.asarray(self.bias, jnp.float32)
        return time_shifted_bias(step, self.bias_start, self.bias, self.bias_steps)


def per_example_loss(
    cfg: LossConfig,
    x: Array,
    eps: Array,
    x_hat: Array,
    eps_hat: Array,
    logsnr: Array,
    dlogsnr_dt: Array,
    *,
    bias: Array | float | None = None,
    mask: Array | None = None,
) -> Array:
    """The weighted loss of each example [B], given targets and predictions."""
    bias = cfg.bias if bias is None else bias
    if cfg.kind == "power":
        return power_loss(x, x_hat, logsnr, dlogsnr_dt, bias=bias, levels=cfg.power_levels, mask=mask)
    if cfg.kind == "multiscale":
        err = multiscale_mse(eps, eps_hat, base=cfg.multiscale_base, mask=mask)
        return eps_weight(cfg.weighting, logsnr, dlogsnr_dt, bias) * err
    if cfg.space == "x":
        err = masked_mean(jnp.square(x_hat - x), mask)
        return x_weight(cfg.weighting, logsnr, dlogsnr_dt, bias) * err
    err = masked_mean(jnp.square(eps_hat - eps), mask)
    return eps_weight(cfg.weighting, logsnr, dlogsnr_dt, bias) * err


def diffusion_loss(
    model_fn: Callable[[Array, Array], Array],
    x: Array,
    rng: Array,
    *,
    schedule: Schedule,
    cfg: LossConfig,
    mask: Array | None = None,
    clean: Array | None = None,
    step: Array | int = 0,
) -> tuple[Array, dict[str, Array]]:
    """The training loss of a batch: mean over examples of `per_example_loss`.

    model_fn(z, logsnr) returns the network output for the configured `mean_type`; the caller
    closes over everything else the network needs (labels, conditioning frames, dropout rngs).
    `mask` [B, T] marks the frames the loss covers (1 = predicted frame). `clean` [B, T] marks the
    frames that enter z_t clean instead of noised (1 = conditioning frame), as the samplers hold
    them: the network sees the same inputs in training and in sampling.
    """
    t_rng, eps_rng = jax.random.split(rng)
    t = jax.random.uniform(t_rng, x.shape[:1], jnp.float32)
    eps = jax.random.normal(eps_rng, x.shape, jnp.float32)
    logsnr = schedule(t)
    dlogsnr_dt = schedule.dlogsnr_dt(t)
    z = param.diffuse(x, eps, logsnr)
    if clean is not None:
        keep = jnp.asarray(clean).reshape(clean.shape + (1,) * (x.ndim - clean.ndim)) > 0
        z = jnp.where(keep, x, z)
    out = model_fn(z, logsnr).astype(jnp.float32)
    x_hat, eps_hat = param.predictions(out, z, logsnr, cfg.mean_type)
    losses = per_example_loss(
        cfg, x, eps, x_hat, eps_hat, logsnr, dlogsnr_dt, bias=cfg.bias_at(step), mask=mask
    )
    metrics = {"loss": jnp.mean(losses), "x_mse": jnp.mean(masked_mean(jnp.square(x_hat - x), mask))}
    return metrics["loss"], metrics


# ----------------------------------------------------------------------------- conditioning dropout


def drop_labels(rng: Array, labels: Array, rate: float, null_label: int) -> Array:
    """Replace each example's class label by the null class with probability `rate` (guidance)."""
    drop = jax.random.uniform(rng, labels.shape) < rate
    return jnp.where(drop, jnp.asarray(null_label, labels.dtype), labels)


def drop_condition(rng: Array, cond_mask: Array, rate: float) -> Array:
    """Drop all conditioning frames of an example with probability `rate`: its mask row becomes 0.

    cond_mask is [B, T] (1 = conditioning frame). A dropped example is trained unconditionally,
    which makes classifier-free guidance on the conditioning frames possible.
    """
    drop = jax.random.uniform(rng, cond_mask.shape[:1]) < rate
    return jnp.where(drop[:, None], jnp.zeros_like(cond_mask), cond_mask)
