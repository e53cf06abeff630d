"""Building blocks of the Residual U-ViT (simple diffusion App. B.2.1; SiD2 §2.3; SPEC §5).

Every feature map is `[B, T, H, W, C]` (an image batch has T = 1). Blocks are residual and their
branches end in a zero-initialised layer, so each block is the identity at initialisation:

    ResBlock          x + conv₀(drop(swish(FiLM(norm(conv(swish(norm(x))))))))
    TransformerBlock  x += attn_space(x); x += attn_time(x); x += mlp(x)
                      (attn_time absent without temporal mixing; one space-time attn if 'full')
    MLP               dense₀(drop(FiLM(swish(dense_4C(norm(x))))))
    Attention         dense₀(softmax(norm(q) · norm(k)ᵀ / √d) v)

(₀ = zero-initialised.) FiLM is `h · (1 + scale) + shift` with scale and shift projected from the
conditioning embedding. Convolutions are 3×3 in space with 3 temporal taps (`'3d'`: one 3×3×3
kernel; `'factorized'`: 1×3×3 followed by 3×1×1; `'2d'`: no temporal taps). Attention is spatial
(within a frame), temporal (across frames at one position) or full (all T·H·W tokens).

Speed choices that compute the same function (tested equal on CPU):
  conv_impl       how the temporal taps run. 'lax': '3d' as one 3D convolution, the factorized
                  3×1×1 as three shifted matmuls; 'stacked': the frames t−1, t, t+1 stacked on
                  channels, so '3d' is one 2D 3×3 convolution of depth 3C and the factorized
                  3×1×1 one matmul of depth 3C; 'shifted': three 2D convolutions (or matmuls) of
                  depth C over shifted frames, summed. Every choice has the same parameters.
  attention_impl  'xla' (XLA's einsum/softmax), 'cudnn' (the fused cuDNN kernel: GPU with
                  bfloat16/float16 only, else an error), 'auto' (cuDNN where allowed and the
                  kernel accepts the shapes, else XLA).
  remat_policy    with remat: 'full' recomputes the whole block in the backward pass; 'save_dots'
                  keeps the outputs of matmuls and convolutions and recomputes only the
                  element-wise work between them (norms, swish, FiLM, softmax).

Norms are LayerNorms over channels, one position at a time, so no statistic mixes frames: with
`conv='2d'` and `attention='spatial'` nothing crosses frames at all.
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from sid2video.models import temporal_taps as taps
from sid2video.models.uvit_config import ATTENTION_IMPLS, CONV_IMPLS, CONV_KINDS, REMAT_POLICY_NAMES

Array = jax.Array
Dtype = jnp.dtype

ATTENTION_AXES = ("space", "time", "full")
# jax.checkpoint policies: None saves nothing (the whole block is recomputed); dots_saveable saves
# the outputs of dot_general and conv_general_dilated.
REMAT_POLICIES = {"full": None, "save_dots": jax.checkpoint_policies.dots_saveable}
assert tuple(REMAT_POLICIES) == REMAT_POLICY_NAMES

_zeros = nnx.initializers.zeros_init()


def dense(
    in_features: int,
    out_features: int,
    *,
    rngs: nnx.Rngs,
    zero: bool = False,
    dtype: Dtype | None = None,
    param_dtype: Dtype = jnp.float32,
) -> nnx.Linear:
    """A Linear layer; `zero=True` gives the zero-initialised last layer of a residual branch."""
    kwargs = {"kernel_init": _zeros} if zero else {}
    return nnx.Linear(
        in_features, out_features, dtype=dtype, param_dtype=param_dtype, rngs=rngs, **kwargs
    )


def layer_norm(
    features: int, *, rngs: nnx.Rngs, dtype: Dtype | None = None, param_dtype: Dtype = jnp.float32,
    bias: bool = True,
) -> nnx.LayerNorm:
    """LayerNorm with scale (and by default bias) over the last axis ("NormalizeWithBias")."""
    return nnx.LayerNorm(features, epsilon=1e-6, dtype=dtype, param_dtype=param_dtype, use_bias=bias,
                         rngs=rngs)


# --- patching ------------------------------------------------------------------------------------


def patchify(x: Array, pt: int, p: int) -> Array:
    """Space-time space-to-depth: [B, T, H, W, C] -> [B, T/pt, H/p, W/p, pt·p·p·C]."""
    b, t, h, w, c = x.shape
    x = x.reshape(b, t // pt, pt, h // p, p, w // p, p, c)
    x = x.transpose(0, 1, 3, 5, 2, 4, 6, 7)
    return x.reshape(b, t // pt, h // p, w // p, pt * p * p * c)


def unpatchify(x: Array, pt: int, p: int) -> Array:
    """The inverse of `patchify`: [B, T', H', W', pt·p·p·C] -> [B, T'·pt, H'·p, W'·p, C]."""
    b, t, h, w, d = x.shape
    c = d // (pt * p * p)
    x = x.reshape(b, t, h, w, pt, p, p, c)
    x = x.transpose(0, 1, 4, 2, 5, 3, 6, 7)
    return x.reshape(b, t * pt, h * p, w * p, c)


def downsample_pool(x: Array) -> Array:
    """2×2 spatial average pooling of [B, T, H, W, C] (time is kept)."""
    b, t, h, w, c = x.shape
    return x.reshape(b, t, h // 2, 2, w // 2, 2, c).mean(axis=(3, 5))


def upsample_nearest(x: Array) -> Array:
    """2× nearest-neighbour spatial upsampling of [B, T, H, W, C]."""
    return jnp.repeat(jnp.repeat(x, 2, axis=2), 2, axis=3)


# --- conditioning --------------------------------------------------------------------------------


def logsnr_features(logsnr: Array, dim: int, scale_range: tuple[float, float]) -> Array:
    """Sinusoidal features of an affine map of λ itself (`logsnr_input_type='linear'`).

    u = (λ − lo) / (hi − lo) with fixed constants (lo, hi), then the usual sinusoidal embedding
    of 1000·u. The map is defined for every real λ, so schedules whose bounds move with a shift
    (λ below lo or above hi) embed without clipping; nothing depends on t or on a schedule.
    """
    lo, hi = scale_range
    u = (jnp.asarray(logsnr, jnp.float32) - lo) / (hi - lo)
    half = dim // 2
    freqs = jnp.exp(-math.log(10_000.0) * jnp.arange(half, dtype=jnp.float32) / half)
    args = 1000.0 * u[:, None] * freqs[None, :]
    return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)


class FiLM(nnx.Module):
    """h · (1 + scale) + shift, with (scale, shift) = Dense(emb)."""

    def __init__(self, emb_features: int, features: int, *, rngs: nnx.Rngs, dtype=None,
                 param_dtype=jnp.float32):
        self.proj = dense(emb_features, 2 * features, rngs=rngs, dtype=dtype,
                          param_dtype=param_dtype)

    def __call__(self, h: Array, emb: Array) -> Array:
        scale, shift = jnp.split(self.proj(emb), 2, axis=-1)
        expand = (slice(None),) + (None,) * (h.ndim - 2) + (slice(None),)
        return h * (1.0 + scale[expand]) + shift[expand]


# --- convolutions and ResBlock -------------------------------------------------------------------


class Conv(nnx.Module):
    """A 3×3 spatial convolution with 0 or 3 temporal taps, 'SAME' padding, on [B, T, H, W, C].

    kind '3d': one 3×3×3 kernel; 'factorized': 1×3×3 then 3×1×1 (a (2+1)D convolution);
    '2d': 1×3×3 only (no temporal parameters). `zero=True` zero-initialises the layer that
    produces the output, so the convolution maps everything to 0 at initialisation. `impl`
    (one of CONV_IMPLS, see the module doc) picks how the temporal taps are computed.
    """

    def __init__(self, in_features: int, out_features: int, kind: str, *, rngs: nnx.Rngs,
                 zero: bool = False, dtype=None, param_dtype=jnp.float32, impl: str = "lax"):
        if kind not in CONV_KINDS:
            raise ValueError(f"conv kind {kind!r} is not one of {CONV_KINDS}")
        if impl not in CONV_IMPLS:
            raise ValueError(f"conv impl {impl!r} is not one of {CONV_IMPLS}")
        self.kind = kind
        self.impl = impl
        common = dict(padding="SAME", dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        zero_kw = {"kernel_init": _zeros} if zero else {}
        spatial_kernel = (3, 3, 3) if kind == "3d" else (3, 3)
        spatial_zero = zero_kw if kind != "factorized" else {}
        self.spatial = nnx.Conv(in_features, out_features, spatial_kernel, **common, **spatial_zero)
        if kind == "factorized":
            self.temporal = nnx.Conv(out_features, out_features, (3, 1, 1), **common, **zero_kw)

    def __call__(self, x: Array) -> Array:
        if self.kind == "3d" and self.impl != "lax":
            return taps.conv3d_as_2d(x, self.spatial, stacked=self.impl == "stacked")
        h = self.spatial(x)  # a 2D kernel treats [B, T] as batch dimensions
        if self.kind == "factorized":
            h = taps.temporal_conv(h, self.temporal, stacked=self.impl == "stacked")
        return h


class ResBlock(nnx.Module):
    """Residual convolution block with FiLM conditioning (simple diffusion B.2.1, no skip input)."""

    def __init__(self, features: int, emb_features: int, conv: str, dropout: float, *,
                 rngs: nnx.Rngs, dtype=None, param_dtype=jnp.float32, conv_impl: str = "lax"):
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.norm1 = layer_norm(features, **kw)
        self.conv1 = Conv(features, features, conv, impl=conv_impl, **kw)
        self.norm2 = layer_norm(features, **kw)
        self.film = FiLM(emb_features, features, **kw)
        self.dropout = nnx.Dropout(dropout, rngs=rngs) if dropout > 0 else None
        self.conv2 = Conv(features, features, conv, zero=True, impl=conv_impl, **kw)

    def __call__(self, x: Array, emb: Array, deterministic: bool = True) -> Array:
        h = self.conv1(nnx.swish(self.norm1(x)))
        h = nnx.swish(self.film(self.norm2(h), emb))
        if self.dropout is not None:
            h = self.dropout(h, deterministic=deterministic)
        return x + self.conv2(h)


# --- attention and transformer block -------------------------------------------------------------


def _to_sequences(x: Array, axis: str) -> Array:
    """[B, T, N, ...] -> [batch, length, ...] for attention over `axis`."""
    b, t, n = x.shape[:3]
    rest = x.shape[3:]
    if axis == "space":
        return x.reshape((b * t, n) + rest)
    if axis == "time":
        return jnp.swapaxes(x, 1, 2).reshape((b * n, t) + rest)
    return x.reshape((b, t * n) + rest)


def _from_sequences(x: Array, axis: str, b: int, t: int, n: int) -> Array:
    rest = x.shape[2:]
    if axis == "space":
        return x.reshape((b, t, n) + rest)
    if axis == "time":
        return jnp.swapaxes(x.reshape((b, n, t) + rest), 1, 2)
    return x.reshape((b, t, n) + rest)


def attention_implementation(impl: str, dtype, backend: str | None = None) -> str:
    """The `jax.nn.dot_product_attention` implementation for `attention_impl` = `impl`.

    The fused cuDNN kernel needs a GPU and bfloat16/float16 operands: 'auto' picks it there and
    XLA elsewhere; 'cudnn' where it cannot run is a ValueError; 'xla' is always XLA.
    """
    if impl not in ATTENTION_IMPLS:
        raise ValueError(f"attention impl {impl!r} is not one of {ATTENTION_IMPLS}")
    backend = backend or jax.default_backend()
    fused = backend in ("gpu", "cuda") and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16)
    if impl == "cudnn" and not fused:
        raise ValueError(
            f"config.model.attention_impl='cudnn' needs a GPU and bfloat16/float16 compute "
            f"(backend {backend!r}, dtype {jnp.dtype(dtype).name}); use 'auto' or 'xla'")
    if impl == "auto":
        return "cudnn" if fused else "xla"
    return impl


def dot_product_attention(q: Array, k: Array, v: Array, impl: str = "auto") -> Array:
    """softmax(q kᵀ / √d) v per head, [batch, length, heads, d], with `attention_implementation`.

    Under 'auto' a shape or cuDNN version the fused kernel refuses (it says so while tracing)
    falls back to XLA.
    """
    chosen = attention_implementation(impl, q.dtype)
    if chosen == "cudnn" and impl == "auto":
        try:
            return jax.nn.dot_product_attention(q, k, v, implementation="cudnn")
        except (NotImplementedError, ValueError, RuntimeError, TypeError):
            chosen = "xla"
    return jax.nn.dot_product_attention(q, k, v, implementation=chosen)


class Attention(nnx.Module):
    """Multi-head self-attention with normalised queries and keys; zero-initialised output.

    Input and output are token maps [B, T, N, C] (N = H·W); `axis` picks the sequences:
    'space' attends within each frame, 'time' across frames at each position, 'full' over all.
    `impl` is the attention kernel (ATTENTION_IMPLS, see `attention_implementation`).
    """

    def __init__(self, features: int, num_heads: int, axis: str, *, rngs: nnx.Rngs, dtype=None,
                 param_dtype=jnp.float32, impl: str = "auto"):
        if axis not in ATTENTION_AXES:
            raise ValueError(f"attention axis {axis!r} is not one of {ATTENTION_AXES}")
        if impl not in ATTENTION_IMPLS:
            raise ValueError(f"attention impl {impl!r} is not one of {ATTENTION_IMPLS}")
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.axis = axis
        self.impl = impl
        self.num_heads = num_heads
        self.head_dim = features // num_heads
        self.norm = layer_norm(features, **kw)
        self.qkv = dense(features, 3 * features, **kw)
        self.q_norm = layer_norm(self.head_dim, **kw)
        # No bias on the keys: adding one vector b to every key adds q·b to all logits of a query,
        # which the softmax ignores. Such a parameter gets only rounding noise as its gradient,
        # which Adam would turn into full-size steps.
        self.k_norm = layer_norm(self.head_dim, bias=False, **kw)
        self.out = dense(features, features, zero=True, **kw)

    def __call__(self, x: Array) -> Array:
        b, t, n, c = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, t, n, 3, self.num_heads, self.head_dim)
        q, k, v = qkv[..., 0, :, :], qkv[..., 1, :, :], qkv[..., 2, :, :]
        q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = (_to_sequences(a, self.axis) for a in (q, k, v))
        o = dot_product_attention(q, k, v, self.impl)  # softmax(q kᵀ / √d) v, per head
        o = _from_sequences(o, self.axis, b, t, n).reshape(b, t, n, c)
        return self.out(o)


class MLP(nnx.Module):
    """norm -> dense (ratio·C) -> swish -> FiLM -> dropout -> zero-initialised dense (B.2.1)."""

    def __init__(self, features: int, emb_features: int, ratio: int, dropout: float, *,
                 rngs: nnx.Rngs, dtype=None, param_dtype=jnp.float32):
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        hidden = ratio * features
        self.norm = layer_norm(features, **kw)
        self.fc1 = dense(features, hidden, **kw)
        self.film = FiLM(emb_features, hidden, **kw)
        self.dropout = nnx.Dropout(dropout, rngs=rngs) if dropout > 0 else None
        self.fc2 = dense(hidden, features, zero=True, **kw)

    def __call__(self, x: Array, emb: Array, deterministic: bool = True) -> Array:
        h = self.film(nnx.swish(self.fc1(self.norm(x))), emb)
        if self.dropout is not None:
            h = self.dropout(h, deterministic=deterministic)
        return self.fc2(h)


class TransformerBlock(nnx.Module):
    """Attention branches (one per entry of `axes`, in order) then the MLP, each residual.

    `axes=('space', 'time')` is factorized space-time attention, `('full',)` joint attention,
    `('space',)` attention within frames only (an image model, or a video model without
    temporal mixing).
    """

    def __init__(self, features: int, emb_features: int, num_heads: int, axes: Sequence[str],
                 mlp_ratio: int, dropout: float, *, rngs: nnx.Rngs, dtype=None,
                 param_dtype=jnp.float32, attention_impl: str = "auto"):
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.attention = nnx.List([Attention(features, num_heads, a, impl=attention_impl, **kw)
                                   for a in axes])
        self.mlp = MLP(features, emb_features, mlp_ratio, dropout, **kw)

    def __call__(self, x: Array, emb: Array, deterministic: bool = True) -> Array:
        b, t, h, w, c = x.shape
        tokens = x.reshape(b, t, h * w, c)
        for attn in self.attention:
            tokens = tokens + attn(tokens)
        tokens = tokens + self.mlp(tokens, emb, deterministic)
        return tokens.reshape(b, t, h, w, c)


# --- stacks of blocks ----------------------------------------------------------------------------


class BlockStack(nnx.Module):
    """`num` blocks of one kind applied in sequence: x -> block_n(... block_1(x, emb) ..., emb).

    `scan=True` (with num ≥ 2) builds the blocks once with stacked parameters (nnx.vmap, each
    block's parameters and dropout rng stream along a leading axis) and runs them with
    nnx.scan, so tracing and compile time do not grow with depth; `remat=True` rematerialises
    each block in the backward pass (activations of one block kept instead of all), saving what
    `remat_policy` (REMAT_POLICIES) keeps. All give the same function as the plain Python loop
    (tested).
    """

    def __init__(self, make_block, num: int, *, rngs: nnx.Rngs, scan: bool = False,
                 remat: bool = False, remat_policy: str = "full"):
        if remat_policy not in REMAT_POLICIES:
            raise ValueError(f"remat policy {remat_policy!r} is not one of {tuple(REMAT_POLICIES)}")
        self.num = num
        self.scan = bool(scan and num > 1)
        self.remat = remat
        self.remat_policy = remat_policy
        if self.scan:
            @nnx.split_rngs(splits=num)
            @nnx.vmap(in_axes=(0,), out_axes=0)
            def create(r: nnx.Rngs):
                return make_block(r)

            self.blocks = create(rngs)
        else:
            self.blocks = nnx.List([make_block(rngs) for _ in range(num)])

    def __call__(self, x: Array, emb: Array, deterministic: bool = True) -> Array:
        if self.num == 0:
            return x
        # Plain JAX transforms over (graphdef, state) rather than nnx.scan / nnx.remat: those
        # refuse parameters traced at an outer level, which is what a sampler's loop (or any
        # caller's jax.lax loop) closes over. Only the rng streams change during a call; their
        # new state is written back (only when dropout runs: a deterministic call leaves it as
        # it was, and the caller's loop may not allow writing to it).
        if self.scan:
            graphdef, state = nnx.split(self.blocks)
            step = functools.partial(_apply_block, graphdef, emb=emb, deterministic=deterministic)
            if self.remat:
                step = self._checkpoint(step)
            x, rng_state = jax.lax.scan(lambda h, st: step(st, h), x, state)
            if not deterministic:
                nnx.update(self.blocks, rng_state)
            return x
        for block in self.blocks:
            if self.remat:
                graphdef, state = nnx.split(block)
                x, rng_state = self._checkpoint(functools.partial(
                    _apply_block, graphdef, emb=emb, deterministic=deterministic))(state, x)
                if not deterministic:
                    nnx.update(block, rng_state)
            else:
                x = block(x, emb, deterministic)
        return x


    def _checkpoint(self, fn):
        return jax.checkpoint(fn, policy=REMAT_POLICIES[self.remat_policy])


def _apply_block(graphdef, state, h: Array, *, emb: Array, deterministic: bool):
    """One block rebuilt from its state, applied to h: (output, the block's new rng state)."""
    block = nnx.merge(graphdef, state)
    out = block(h, emb, deterministic)
    return out, nnx.state(block, nnx.RngState)


def tree_size(tree) -> int:
    """Total number of elements of the arrays (or ShapeDtypeStructs) in a pytree."""
    return int(sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree)))
