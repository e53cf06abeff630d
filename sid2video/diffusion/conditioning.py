"""What a conditional network is given, and conditional sampling with guidance.

Pixels enter the diffusion process in [−1, 1] (`to_unit`) and leave it as uint8 (`to_uint8`). The
first `num_cond` frames of a clip are conditioning frames (`cond_mask`, 1 on them): the network
sees them clean and the samplers hold them fixed. `generate` samples a batch from a network given
as a callable `net(z, logsnr, cond=, cond_mask=, label=)`; training previews and
`sid2video.sample.Generator` both call it, each on its own mesh.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from sid2video.diffusion import parametrization
from sid2video.diffusion.samplers import Sampler

Array = jax.Array


def to_unit(video_BTHWC: Array) -> Array:
    """uint8 pixels [0, 255] to float32 in [−1, 1]."""
    return video_BTHWC.astype(jnp.float32) / 127.5 - 1.0


def to_uint8(x: Array) -> Array:
    """[−1, 1] floats to uint8 pixels (round to nearest)."""
    return jnp.clip(jnp.round((x + 1.0) * 127.5), 0, 255).astype(jnp.uint8)


def cond_mask(batch_size: int, num_frames: int, num_cond: int) -> Array:
    """float32 [B, T]: 1 on the first `num_cond` (conditioning) frames of every clip, 0 after."""
    mask_T = (jnp.arange(num_frames) < num_cond).astype(jnp.float32)
    return jnp.broadcast_to(mask_T, (batch_size, num_frames))


def check_labels(label: np.ndarray, num_classes: int, *, allow_null: bool = True) -> None:
    """Class labels must lie in [0, num_classes) (plus num_classes, the null class, when sampling);
    an embedding lookup out of range would give NaN instead of an error."""
    top = num_classes if allow_null else num_classes - 1
    if num_classes and label.size and (label.min() < 0 or label.max() > top):
        null = f" or {num_classes} (no class)" if allow_null else ""
        raise ValueError(
            f"labels must lie in [0, {num_classes - 1}]{null} for config.model.num_classes="
            f"{num_classes}, got values from {label.min()} to {label.max()}; check "
            "config.data.num_classes against the dataset"
        )


def generate(net: Callable[..., Array], sampler: Sampler, video_BTHWC: Array, label_B: Array,
             rng: Array, *, num_cond: int, num_classes: int, frame_conditioning: bool,
             mean_type: str) -> Array:
    """Samples (uint8, the shape of `video_BTHWC`) given the first `num_cond` frames of each clip
    and, for a class-conditional network, the labels. With guidance (sampler.guidance = w > 0) the
    conditional and unconditional x̂ (the null class, or no conditioning frames) come from one
    network call on the doubled batch (classifier-free guidance)."""
    b, t = video_BTHWC.shape[:2]
    x_cond = to_unit(video_BTHWC)
    mask_BT = cond_mask(b, t, num_cond) if frame_conditioning else None
    use_label = bool(num_classes)

    def x_hat(z, logsnr, mask, lab):
        out = net(z, logsnr, cond=x_cond if frame_conditioning else None, cond_mask=mask,
                  label=lab if use_label else None)
        return parametrization.predictions(out.astype(jnp.float32), z, logsnr, mean_type)[0]

    def predict_cond(z, logsnr):
        return x_hat(z, logsnr, mask_BT, label_B)

    if sampler.guidance > 0:
        predict = sampler.predictor(predict_cond, predict_both=_predict_both(
            net, x_cond, mask_BT, label_B, rng, num_cond=num_cond, num_classes=num_classes,
            frame_conditioning=frame_conditioning, mean_type=mean_type))
    else:
        predict = sampler.predictor(predict_cond)
    out = sampler(predict, rng, x_cond.shape, cond=x_cond if num_cond else None,
                  cond_mask=mask_BT if num_cond else None)
    return to_uint8(out)


def _predict_both(net, x_cond, mask_BT, label_B, rng, *, num_cond, num_classes, frame_conditioning,
                  mean_type):
    """x̂ on the doubled batch [conditional; unconditional] for `Sampler.predictor(predict_both=)`."""
    b = x_cond.shape[0]
    use_label = bool(num_classes)
    # Unconditional: the null class if there are classes, else no conditioning frames.
    u_label = jnp.full_like(label_B, num_classes) if use_label else label_B
    u_mask = mask_BT if (use_label or mask_BT is None) else jnp.zeros_like(mask_BT)
    # Without its conditioning frames the model was trained on them noised like the rest: the
    # unconditional half sees them noised to the current logSNR (one fixed draw).
    drop_frames = frame_conditioning and not use_label and num_cond > 0
    eps_u = jax.random.normal(jax.random.fold_in(rng, 1), x_cond.shape) if drop_frames else None

    def predict_both(z2, logsnr2):
        if drop_frames:
            noised = parametrization.diffuse(x_cond, eps_u, logsnr2[b:])
            z_u = jnp.where(mask_BT[:, :, None, None, None] > 0, noised, z2[b:])
            z2 = jnp.concatenate([z2[:b], z_u])
        both_mask = None if mask_BT is None else jnp.concatenate([mask_BT, u_mask])
        out = net(z2, logsnr2, cond=jnp.concatenate([x_cond, x_cond]) if frame_conditioning else None,
                  cond_mask=both_mask, label=jnp.concatenate([label_B, u_label]) if use_label else None)
        return parametrization.predictions(out.astype(jnp.float32), z2, logsnr2, mean_type)[0]

    return predict_both
