"""Samplers: DDPM, DDIM and aDDIM steps, classifier-free guidance with intervals, the sampling loop
(SPEC §4; SiD2 §1.1, B.4, B.6; simple diffusion App. A; Multistep Consistency Models Alg. 3).

A step goes from time t to s < t on the logSNR schedule, with r = exp(λ_t − λ_s) < 1 and the
(clipped) mean prediction x̂ = E[x | z_t]:

    ddpm    μ = r (α_s/α_t) z_t + (1 − r) α_s x̂
            log var = γ log((1 − r) σ_t²) + (1 − γ) log((1 − r) σ_s²)      γ = logvar_interp
            z_s = μ + exp(½ log var) n,  n ~ N(0, I)
            (γ multiplies the LARGE variance; γ = 0 is the posterior q(z_s | z_t, x̂) variance)
    ddim    ε̂ = (z_t − α_t x̂)/σ_t,  z_s = α_s x̂ + σ_s ε̂
    addim   x_var = 0.1 / (2 + e^{λ_t}),  z_var = (α_s − α_t σ_s/σ_t)² x_var,
            z_s = α_s x̂ + sqrt(σ_s² + (d/‖ε̂‖²) z_var) ε̂
            (d: number of sampled dimensions of one example, ‖ε̂‖² summed over them)

The time grid is t_i = i/N, i = 0..N. The loop takes N steps t_N = 1 → t_{N−1} → … → t_0 = 0 and
then returns the mean prediction x̂(z_0, λ(0)) (simple diffusion's `lowest_idx = 0`), so one
sample costs N + 1 network evaluations. λ(0) = schedule.logsnr_max is finite for every schedule
here (a bounded cosine), so the last step and the final prediction are well defined. With
`clip=True` x̂ is clipped to [−1, 1] (SiD2 `clip_x='static'`) at every step and at the end.

Frame-conditioned sampling (`cond`, `cond_mask`): only the target frames (mask 0) are sampled.
At the conditioning positions (mask 1) the state z always holds the clean frames `cond` — this is
what `predict_x` sees there, as the network expects (SPEC §5: conditioning frames enter clean; the
network gets `cond_mask` itself through its closure). No noise is ever put on them, aDDIM's norm
and d count the target frames only, and the output holds `cond` at those positions, bit for bit.

Everything is one traceable function built on `lax.fori_loop`: jit it with the model parameters as
arguments, e.g.

    @jax.jit
    def draw(params, rng):
        return samplers.sample(lambda z, l: model(params, z, l), rng, (8, 16, 64, 64, 3),
                               schedule=schedule, num_steps=128, method="addim")

Randomness: `rng` is split into the starting noise and one stream per step (`fold_in(step_key, i)`);
the same key gives the same samples (up to float rounding) on any device layout: a batch sharded
along its first axis works unchanged, and nothing here looks at the devices.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sid2video.diffusion.parametrization import per_example
from sid2video.diffusion.schedules import Schedule, alpha_sigma

Array = jax.Array
PredictFn = Callable[[Array, Array], Array]

METHODS = ("ddpm", "ddim", "addim")


# ----------------------------------------------------------------------------------------------
# Single steps. logsnr_t and logsnr_s have shape [B]; z_t and x_hat have shape [B, ...].


def ddpm_step(z_t: Array, x_hat: Array, logsnr_t: Array, logsnr_s: Array, noise: Array,
              logvar_interp: float | Array = 0.3) -> Array:
    """Ancestral step z_t -> z_s (simple diffusion App. A; SiD2 `logvar_type`).

    Log-variance γ · log((1 − r) σ_t²) + (1 − γ) · log((1 − r) σ_s²) with γ = `logvar_interp`:
    γ = 0 is the posterior ("small") variance, γ = 1 the "large" one.
    """
    log_r = per_example(logsnr_t - logsnr_s, z_t)  # < 0
    alpha_t, _ = alpha_sigma(per_example(logsnr_t, z_t))
    alpha_s, _ = alpha_sigma(per_example(logsnr_s, z_t))
    r = jnp.exp(log_r)
    one_minus_r = -jnp.expm1(log_r)
    mean = r * (alpha_s / alpha_t) * z_t + one_minus_r * alpha_s * x_hat
    log_sigma2_t = jax.nn.log_sigmoid(-per_example(logsnr_t, z_t))
    log_sigma2_s = jax.nn.log_sigmoid(-per_example(logsnr_s, z_t))
    logvar = jnp.log(one_minus_r) + logvar_interp * log_sigma2_t + (1.0 - logvar_interp) * log_sigma2_s
    return mean + jnp.exp(0.5 * logvar) * noise


def _eps_hat(z_t: Array, x_hat: Array, logsnr_t: Array) -> Array:
    alpha_t, sigma_t = alpha_sigma(per_example(logsnr_t, z_t))
    return (z_t - alpha_t * x_hat) / sigma_t


def ddim_step(z_t: Array, x_hat: Array, logsnr_t: Array, logsnr_s: Array) -> Array:
    """Deterministic step z_s = α_s x̂ + σ_s ε̂ with ε̂ = (z_t − α_t x̂)/σ_t (Song et al. 2021)."""
    alpha_s, sigma_s = alpha_sigma(per_example(logsnr_s, z_t))
    return alpha_s * x_hat + sigma_s * _eps_hat(z_t, x_hat, logsnr_t)


def addim_x_var(logsnr: Array) -> Array:
    """aDDIM's analytic variance of x given z_t: 0.1 / (2 + e^λ) (Heek et al. 2024).

    It depends on λ only, never on the network output: under guidance it is therefore the same
    for the conditional, unconditional and guided predictions (SPEC §4: "x_var comes from the
    conditional prediction" holds trivially).
    """
    return 0.1 / (2.0 + jnp.exp(logsnr))


def addim_step(z_t: Array, x_hat: Array, logsnr_t: Array, logsnr_s: Array,
               target: Array | None = None) -> Array:
    """Augmented DDIM step (Multistep Consistency Models, Alg. 3).

    z_s = α_s x̂ + sqrt(σ_s² + (d / ‖ε̂‖²) z_var) ε̂,  z_var = (α_s − α_t σ_s/σ_t)² x_var(λ_t).
    `target` (broadcastable to z_t, 1 = sampled, 0 = conditioning) restricts d and ‖ε̂‖² to the
    sampled positions of each example; by default every dimension counts.
    """
    eps = _eps_hat(z_t, x_hat, logsnr_t)
    axes = tuple(range(1, z_t.ndim))
    if target is None:
        d = jnp.asarray(math.prod(z_t.shape[1:]), z_t.dtype)
        sq = jnp.sum(jnp.square(eps), axis=axes)
    else:
        target = jnp.broadcast_to(target, z_t.shape).astype(z_t.dtype)
        d = jnp.sum(target, axis=axes)
        sq = jnp.sum(jnp.square(eps) * target, axis=axes)
    ratio = jnp.where(sq > 0, d / jnp.maximum(sq, jnp.finfo(z_t.dtype).tiny), 0.0)
    alpha_t, sigma_t = alpha_sigma(logsnr_t)
    alpha_s, sigma_s = alpha_sigma(logsnr_s)
    z_var = jnp.square(alpha_s - alpha_t * sigma_s / sigma_t) * addim_x_var(logsnr_t)
    scale = jnp.sqrt(jnp.square(sigma_s) + ratio * z_var)
    return per_example(alpha_s, z_t) * x_hat + per_example(scale, z_t) * eps


# ----------------------------------------------------------------------------------------------
# Validation shared by `sample` and `from_config`.


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_method(method: Any, key: str = "method") -> None:
    if method not in METHODS:
        raise ValueError(f"{key}={method!r} is not a sampler; choose one of {', '.join(METHODS)}")


def _check_num_steps(num_steps: Any, key: str = "num_steps") -> None:
    if not isinstance(num_steps, (int, np.integer)) or isinstance(num_steps, bool) or num_steps < 1:
        raise ValueError(f"{key}={num_steps!r} must be an integer >= 1")


def _check_logvar_interp(value: Any, key: str = "logvar_interp") -> None:
    if isinstance(value, jax.core.Tracer):
        return
    if not _is_number(value) or not 0.0 <= float(value) <= 1.0:
        raise ValueError(
            f"{key}={value!r} must be a number in [0, 1] (0: small/posterior variance, 1: large)"
        )


def _check_guidance(scale: Any, interval: Any, prefix: str = "") -> tuple[float, float] | None:
    if not isinstance(scale, jax.core.Tracer) and (not _is_number(scale) or float(scale) < 0):
        raise ValueError(f"{prefix}guidance={scale!r} must be a number >= 0 (0 turns guidance off)")
    if interval is None:
        return None
    if (not isinstance(interval, (tuple, list)) or len(interval) != 2
            or not all(_is_number(v) for v in interval)):
        raise ValueError(
            f"{prefix}guidance_interval={interval!r} must be None or a (lo, hi) pair of logSNR values"
        )
    lo, hi = float(interval[0]), float(interval[1])
    if not lo < hi:
        raise ValueError(f"{prefix}guidance_interval={interval!r} needs lo < hi")
    return lo, hi


# ----------------------------------------------------------------------------------------------
# Classifier-free guidance (simple diffusion App. A; guidance interval: Kynkäänniemi et al. 2024).


def _interval_weight(logsnr: Array, scale: float | Array,
                     interval: tuple[float, float] | None) -> tuple[Array, Array]:
    """Per-example guidance weight [B]: `scale` where λ ∈ (lo, hi) (open), 0 elsewhere."""
    logsnr = jnp.asarray(logsnr)
    if interval is None:
        inside = jnp.ones(logsnr.shape, bool)
    else:
        inside = (logsnr > interval[0]) & (logsnr < interval[1])
    return jnp.where(inside, jnp.asarray(scale, logsnr.dtype), 0.0), inside


def _combine(x_cond: Array, x_uncond: Array, weight: Array) -> Array:
    # (1 + w) x̂_c − w x̂_u, written so that w = 0 returns x̂_c exactly.
    w = per_example(weight, x_cond).astype(x_cond.dtype)
    return x_cond + w * (x_cond - x_uncond)


def guided(predict_cond: PredictFn, predict_uncond: PredictFn, scale: float,
           logsnr_interval: tuple[float, float] | None = None) -> PredictFn:
    """Classifier-free guidance: predict_x(z, λ) = (1 + w) x̂(z | c) − w x̂(z).

    With `logsnr_interval=(lo, hi)` guidance applies only to examples with λ ∈ (lo, hi) (open
    interval); elsewhere the result is x̂(z | c) alone. When no example of the batch is inside the
    interval, the unconditional network is not evaluated (`lax.cond`). w = 0 returns
    `predict_cond` itself. Guiding x̂ equals guiding ε̂ or v̂ (they are affine in x̂ for fixed z).

    Both predictors get the same z (with frame conditioning: the clean conditioning frames at
    their positions); a model that drops the conditioning for the unconditional prediction does
    so in its own closure. aDDIM uses its analytic x_var(λ), which does not depend on either
    prediction, so "x_var from the conditional prediction" (SPEC §4) holds for any w.
    """
    interval = _check_guidance(scale, logsnr_interval)
    if _is_number(scale) and float(scale) == 0.0:
        return predict_cond

    def predict_x(z: Array, logsnr: Array) -> Array:
        x_cond = predict_cond(z, logsnr)
        weight, inside = _interval_weight(logsnr, scale, interval)
        if interval is None:
            x_uncond = predict_uncond(z, logsnr)
        else:
            x_uncond = jax.lax.cond(
                jnp.any(inside),
                lambda: predict_uncond(z, logsnr).astype(x_cond.dtype),
                lambda: x_cond,
            )
        return _combine(x_cond, x_uncond, weight)

    return predict_x


def guided_batched(predict_both: PredictFn, scale: float,
                   logsnr_interval: tuple[float, float] | None = None, *,
                   predict_cond: PredictFn | None = None) -> PredictFn:
    """Classifier-free guidance with ONE network call on a doubled batch.

    `predict_both(z2, logsnr2)` receives z2 = concat([z, z]) and logsnr2 = concat([λ, λ]) along
    the batch axis ([2B, ...] and [2B]) and returns [2B, ...] predictions whose first B rows are
    conditional and last B rows unconditional. The caller's closure attaches the matching
    conditioning, e.g. labels concat([y, null_label]) or, for video, the conditioning mask for
    the first half and the dropped-conditioning input for the second.

    If `predict_cond` is given (the conditional network on a batch of B) and an interval is set,
    steps where no example is inside the interval evaluate only `predict_cond` (`lax.cond`).
    The result is the same as `guided(cond, uncond, scale, logsnr_interval)`.
    """
    interval = _check_guidance(scale, logsnr_interval)

    def both(z: Array, logsnr: Array) -> tuple[Array, Array]:
        batch = z.shape[0]
        out = predict_both(jnp.concatenate([z, z], axis=0), jnp.concatenate([logsnr, logsnr], axis=0))
        out = out.astype(z.dtype)
        return out[:batch], out[batch:]

    def cond_only(z: Array, logsnr: Array) -> tuple[Array, Array]:
        x = predict_cond(z, logsnr).astype(z.dtype)
        return x, x

    def predict_x(z: Array, logsnr: Array) -> Array:
        weight, inside = _interval_weight(logsnr, scale, interval)
        if interval is None or predict_cond is None:
            x_cond, x_uncond = both(z, logsnr)
        else:
            x_cond, x_uncond = jax.lax.cond(
                jnp.any(inside),
                lambda: both(z, logsnr),
                lambda: cond_only(z, logsnr),
            )
        return _combine(x_cond, x_uncond, weight)

    return predict_x


# ----------------------------------------------------------------------------------------------
# The sampling loop.


def _frame_mask(cond_mask: Array, shape: Sequence[int]) -> Array:
    mask = jnp.asarray(cond_mask)
    if mask.shape != tuple(shape[:2]):
        raise ValueError(f"cond_mask has shape {mask.shape}; expected [B, T] = {tuple(shape[:2])}")
    mask = mask != 0
    return mask.reshape(mask.shape + (1,) * (len(shape) - 2))


def sample(predict_x: PredictFn, rng: Array, shape: Sequence[int], *, schedule: Schedule,
           num_steps: int, method: str = "ddpm", logvar_interp: float = 0.3, clip: bool = True,
           cond: Array | None = None, cond_mask: Array | None = None,
           z_init: Array | None = None, start_step: int = 0, dtype: Any = jnp.float32) -> Array:
    """Draw samples of `shape` ([B, T, H, W, C], any T including 1). Traceable and jit-able.

    predict_x(z, logsnr) -> x̂ with z of `shape` and logsnr of shape [B] (all equal within a step).
    Steps t_i = i/N from t = 1 to t = 0 (N = num_steps steps), then x̂ at t = 0: N + 1 calls.

    cond, cond_mask: optional frame conditioning. `cond` [B, T, H, W, C] holds the clean frames,
    `cond_mask` [B, T] is nonzero at conditioning frames (values of `cond` elsewhere are ignored).
    predict_x sees z with the clean `cond` frames at the conditioning positions; only the other
    frames are sampled; the output holds `cond` there exactly (cast to `dtype`).
    z_init: optional starting point z at t = 1 (default N(0, I) from `rng`); at conditioning
    positions it is replaced by `cond`.
    start_step: begin at step `start_step` of the N, i.e. at t = 1 − start_step/N, with `z_init`
    (required then) the state there, e.g. data diffused to that logSNR: the rest of the chain
    exactly as a run from t = 1 would take it (same noise at each step), N − start_step + 1 calls.
    """
    _check_method(method)
    _check_num_steps(num_steps)
    if method == "ddpm":
        _check_logvar_interp(logvar_interp)
    shape = tuple(int(s) for s in shape)
    if len(shape) < 2:
        raise ValueError(f"shape={shape} needs at least a batch and one more axis")
    if (cond is None) != (cond_mask is None):
        raise ValueError("frame conditioning needs both cond and cond_mask (or neither)")
    if isinstance(start_step, bool) or not isinstance(start_step, numbers.Integral) \
            or not 0 <= start_step <= num_steps:
        raise ValueError(f"start_step={start_step!r} must be an integer in [0, num_steps={num_steps}]")
    start_step = int(start_step)
    if start_step and z_init is None:
        raise ValueError(f"start_step={start_step} needs z_init, the state at t = 1 - start_step/num_steps")
    batch = shape[0]
    init_key, step_key = jax.random.split(rng)
    if z_init is None:
        z = jax.random.normal(init_key, shape, dtype)
    else:
        if tuple(z_init.shape) != shape:
            raise ValueError(f"z_init has shape {tuple(z_init.shape)}; expected {shape}")
        z = jnp.asarray(z_init, dtype)

    if cond is not None:
        if tuple(cond.shape) != shape:
            raise ValueError(f"cond has shape {tuple(cond.shape)}; expected {shape}")
        mask = _frame_mask(cond_mask, shape)
        cond = jnp.asarray(cond).astype(dtype)
        target = jnp.logical_not(mask)

        def insert(a: Array) -> Array:
            return jnp.where(mask, cond, a)
    else:
        target = None

        def insert(a: Array) -> Array:
            return a

    def denoise(z: Array, logsnr: Array) -> Array:  # logsnr: [B]
        x_hat = predict_x(z, logsnr).astype(dtype)
        return jnp.clip(x_hat, -1.0, 1.0) if clip else x_hat

    def logsnr_at(t: Array) -> Array:
        return jnp.full((batch,), schedule(t), dtype)

    def body(i: Array, z: Array) -> Array:
        t = (num_steps - i).astype(dtype) / num_steps
        s = (num_steps - i - 1).astype(dtype) / num_steps
        logsnr_t, logsnr_s = logsnr_at(t), logsnr_at(s)
        x_hat = denoise(z, logsnr_t)
        if method == "ddpm":
            noise = jax.random.normal(jax.random.fold_in(step_key, i), shape, dtype)
            z_s = ddpm_step(z, x_hat, logsnr_t, logsnr_s, noise, logvar_interp)
        elif method == "ddim":
            z_s = ddim_step(z, x_hat, logsnr_t, logsnr_s)
        else:
            z_s = addim_step(z, x_hat, logsnr_t, logsnr_s, target)
        return insert(z_s)

    z = jax.lax.fori_loop(start_step, num_steps, body, insert(z))
    x = denoise(z, logsnr_at(jnp.asarray(0.0, dtype)))
    return insert(x)


# ----------------------------------------------------------------------------------------------
# Config: the `config.sampler` section.

DEFAULTS: dict[str, Any] = {
    "method": "ddpm",
    "num_steps": 256,
    "logvar_interp": 0.3,
    "clip": True,
    "guidance": 0.0,
    "guidance_interval": None,
}


@dataclasses.dataclass(frozen=True)
class Sampler:
    """Sampler settings bound to a schedule; hashable, so usable as a static jit argument.

    sampler = samplers.from_config(config.sampler, schedule)
    predict_x = sampler.predictor(predict_cond, predict_uncond)        # or predict_both=...
    x = sampler(predict_x, rng, shape, cond=cond, cond_mask=cond_mask)
    """

    schedule: Schedule
    method: str = "ddpm"
    num_steps: int = 256
    logvar_interp: float = 0.3
    clip: bool = True
    guidance: float = 0.0
    guidance_interval: tuple[float, float] | None = None

    @property
    def num_evaluations(self) -> int:
        """Network calls per sample: num_steps + 1 (twice that batch size under guidance)."""
        return self.num_steps + 1

    def predictor(self, predict_cond: PredictFn, predict_uncond: PredictFn | None = None, *,
                  predict_both: PredictFn | None = None) -> PredictFn:
        """Apply the configured guidance. Without guidance (w = 0) this is `predict_cond`.

        Give either `predict_uncond` (two calls per step) or `predict_both` (one call on a
        doubled batch, see `guided_batched`).
        """
        if self.guidance == 0.0:
            return predict_cond
        if predict_both is not None:
            return guided_batched(predict_both, self.guidance, self.guidance_interval,
                                  predict_cond=predict_cond)
        if predict_uncond is None:
            raise ValueError(
                f"config.sampler.guidance={self.guidance} needs an unconditional prediction: "
                "pass predict_uncond or predict_both (or set guidance=0)"
            )
        return guided(predict_cond, predict_uncond, self.guidance, self.guidance_interval)

    def __call__(self, predict_x: PredictFn, rng: Array, shape: Sequence[int], *,
                 cond: Array | None = None, cond_mask: Array | None = None,
                 z_init: Array | None = None, start_step: int = 0) -> Array:
        return sample(predict_x, rng, shape, schedule=self.schedule, num_steps=self.num_steps,
                      method=self.method, logvar_interp=self.logvar_interp, clip=self.clip,
                      cond=cond, cond_mask=cond_mask, z_init=z_init, start_step=start_step)


def from_config(sampler_cfg: Mapping[str, Any], schedule: Schedule) -> Sampler:
    """Validate a `config.sampler` section and bind it to `schedule`.

    Keys: method ('ddpm' | 'ddim' | 'addim'), num_steps (int >= 1), logvar_interp ([0, 1], used
    by ddpm), clip (bool), guidance (w >= 0, 0 = off), guidance_interval (None or (lo, hi) in
    logSNR with lo < hi; None guides at every step). Missing keys take `DEFAULTS`.
    """
    cfg = dict(sampler_cfg.items()) if hasattr(sampler_cfg, "items") else dict(sampler_cfg)
    unknown = sorted(set(cfg) - set(DEFAULTS))
    if unknown:
        raise ValueError(
            f"config.sampler has unknown key(s) {unknown}; allowed: {', '.join(DEFAULTS)}"
        )
    cfg = {**DEFAULTS, **cfg}
    _check_method(cfg["method"], "config.sampler.method")
    _check_num_steps(cfg["num_steps"], "config.sampler.num_steps")
    if cfg["method"] == "ddpm":
        _check_logvar_interp(cfg["logvar_interp"], "config.sampler.logvar_interp")
    if not isinstance(cfg["clip"], (bool, np.bool_)):
        raise ValueError(f"config.sampler.clip={cfg['clip']!r} must be True or False")
    interval = _check_guidance(cfg["guidance"], cfg["guidance_interval"], prefix="config.sampler.")
    return Sampler(
        schedule=schedule,
        method=cfg["method"],
        num_steps=int(cfg["num_steps"]),
        logvar_interp=float(cfg["logvar_interp"]) if _is_number(cfg["logvar_interp"]) else 0.3,
        clip=bool(cfg["clip"]),
        guidance=float(cfg["guidance"]),
        guidance_interval=interval,
    )
