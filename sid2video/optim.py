"""The optimiser (SPEC §6): Adam with global-norm clipping, the learning-rate schedule, and the
exponential moving average of the parameters that sampling uses."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from sid2video.config import TrainConfig


def learning_rate_schedule(tc: TrainConfig) -> optax.Schedule:
    """Linear warm-up from 0 to `learning_rate` over `warmup_steps` (SPEC §6), then constant
    (`lr_decay='none'`, the papers' setting) or decaying to 0 at `num_steps` along a half cosine or
    a line (for short runs, where the last steps at a small rate are worth more than the papers'
    constant rate)."""
    peak, warm = tc.learning_rate, tc.warmup_steps
    if tc.lr_decay == "none":
        return optax.linear_schedule(0.0, peak, warm) if warm else optax.constant_schedule(peak)
    span = tc.num_steps - warm
    if tc.lr_decay == "cosine":
        decay = optax.cosine_decay_schedule(peak, span)
    else:
        decay = optax.linear_schedule(peak, 0.0, span)
    if not warm:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warm), decay], [warm])


def make_optimizer(tc: TrainConfig) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """Adam(β1, β2, ε) at `learning_rate_schedule(tc)`, global-norm clipping (SPEC §6)."""
    lr = learning_rate_schedule(tc)
    parts = []
    if tc.grad_clip > 0:
        parts.append(optax.clip_by_global_norm(tc.grad_clip))
    parts.append(optax.adamw(lr, b1=tc.adam_b1, b2=tc.adam_b2, eps=tc.adam_eps, weight_decay=tc.weight_decay))
    return optax.chain(*parts), lr


def ema_decay(tc: TrainConfig, step: jax.Array) -> jax.Array:
    """The EMA decay at update `step` (0 for the first): `ema_decay`, or with `ema_warmup`
    min(ema_decay, (1 + step) / (10 + step)), which lets the average forget the initialisation."""
    decay = jnp.asarray(tc.ema_decay, jnp.float32)
    if tc.ema_warmup:
        s = jnp.asarray(step).astype(jnp.float32)
        decay = jnp.minimum(decay, (1.0 + s) / (10.0 + s))
    return decay


def ema_update(ema: Any, params: Any, decay: jax.Array) -> Any:
    """ema ← decay · ema + (1 − decay) · params, leaf by leaf (params: after this update)."""
    return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)
