"""The temporal taps of a 'SAME' 3-tap convolution on [B, T, H, W, C] without a 3D convolution.

Frame t of a 3×3×3 (or 3×1×1) convolution sums the kernel's temporal taps k = 0, 1, 2 applied to
frames t − 1, t, t + 1 (zero frames beyond the ends). Here the taps run either as one op over
the three frames stacked on channels (depth 3C) or as one op per tap over the shifted frames,
summed: 2D convolutions for a 3×3×3 kernel, matmuls for a 3×1×1 kernel. Each equals the flax
convolution with the same parameters (layers.Conv, `conv_impl`; tested).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

Array = jax.Array


def _shifted_frames(x_BTHWC: Array) -> list[Array]:
    """[x_{t−1}, x_t, x_{t+1}] for every t, zero frames beyond the ends ('SAME' padding in time)."""
    t = x_BTHWC.shape[1]
    pad = jnp.pad(x_BTHWC, ((0, 0), (1, 1), (0, 0), (0, 0), (0, 0)))
    return [pad[:, k:k + t] for k in range(3)]


def _operands(x: Array, conv: nnx.Conv) -> tuple[Array, Array]:
    kernel = conv.kernel[...]
    dtype = conv.dtype or jnp.result_type(x, kernel)
    return x.astype(dtype), kernel.astype(dtype)


def _add_bias(out: Array, conv: nnx.Conv) -> Array:
    return out if conv.bias is None else out + conv.bias[...].astype(out.dtype)


def conv2d_frames(x_BTHWC: Array, kernel_HWIO: Array) -> Array:
    """A 3×3 'SAME' 2D convolution of every frame of [B, T, H, W, C]."""
    b, t, h, w, c = x_BTHWC.shape
    out = jax.lax.conv_general_dilated(
        x_BTHWC.reshape(b * t, h, w, c), kernel_HWIO, (1, 1), "SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return out.reshape(b, t, h, w, out.shape[-1])


def conv3d_as_2d(x: Array, conv: nnx.Conv, *, stacked: bool) -> Array:
    """`conv` (a 3×3×3 kernel, 'SAME' padding) on [B, T, H, W, C] through 2D convolutions.

    stacked=True: one 3×3 convolution of [x_{t−1}, x_t, x_{t+1}] stacked on channels (depth 3C)
    with the kernel reshaped to [3, 3, 3C, D]; False: the sum of three 3×3 convolutions of the
    shifted frames, one per temporal tap. Both equal `conv(x)` with the same parameters.
    """
    x, kernel_THWIO = _operands(x, conv)
    frames = _shifted_frames(x)
    if stacked:
        c, d = kernel_THWIO.shape[3:]
        kernel_HWKD = jnp.transpose(kernel_THWIO, (1, 2, 0, 3, 4)).reshape(3, 3, 3 * c, d)
        out = conv2d_frames(jnp.concatenate(frames, axis=-1), kernel_HWKD)
    else:
        out = sum(conv2d_frames(frames[k], kernel_THWIO[k]) for k in range(3))
    return _add_bias(out, conv)


def temporal_conv(x: Array, conv: nnx.Conv, *, stacked: bool = False) -> Array:
    """`conv` (a 3×1×1 kernel, 'SAME' padding) on [B, T, H, W, C], computed as matmuls over
    frames shifted by −1, 0, +1 (zero frames beyond the ends): three of depth C, or with
    `stacked` one of depth 3C over the frames stacked on channels. The same function as
    `conv(x)` with the same parameters, but a matmul instead of a 3D convolution, which XLA's
    CPU backend runs several times slower."""
    x, kernel = _operands(x, conv)
    frames = _shifted_frames(x)
    if stacked:
        c, d = kernel.shape[3:]
        out = jnp.einsum("bthwk,kd->bthwd", jnp.concatenate(frames, axis=-1),
                         kernel[:, 0, 0].reshape(3 * c, d))
    else:
        out = sum(jnp.einsum("bthwc,cd->bthwd", frames[k], kernel[k, 0, 0]) for k in range(3))
    return _add_bias(out, conv)
