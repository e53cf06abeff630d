"""The Residual U-ViT for video and images (SiD2 eq. 5, §2.2–2.3, B.7; simple diffusion §3, B.2).

One network serves Kinetics600 frame prediction and ImageNet generation (T = 1):

    x = [z_t, mask · cond, mask]                       clean conditioning frames + mask channel
    h0 = Dense(patchify(x))                             p_t × p × p space-time patches
    h  = trunk(h0)                                      the nested levels below
    out = unpatchify(Dense₀(swish(norm(h))))            the transpose of the patching

A level (SiD2 eq. 5) is

    level_i(x) = f_u(U(level_{i+1}(D(h)) − D(h)) + h),   h = f_d(x)

with f_d / f_u the level's encoder / decoder blocks (their counts may differ: E3-D3, E1-D5, …),
D = 2×2 average pool + Dense, U = Dense + 2× nearest upsample (time is never pooled). The
innermost level is its encoder blocks followed by its decoder blocks. There is one skip per level
and none per block. Every residual branch ends in a zero-initialised layer and the learned
position embeddings start at zero, so every block, every level and therefore the whole trunk is
exactly the identity at initialisation; the zero-initialised output projection makes the
initial prediction 0.

Levels use ResBlocks (3D or factorized convolutions) or transformer blocks (factorized
space/time attention, or full space-time attention). With T = 1 (after temporal patching) the
network builds no temporal kernel taps and no temporal attention: it is the 2D Residual U-ViT.

Conditioning: `logsnr` embeds through sinusoidal features of an affine map of λ itself (valid
for any λ, so shifted schedules are fine); `label` in [0, num_classes] where num_classes is the
null class (classifier-free guidance); `cond` / `cond_mask` give the clean conditioning frames,
any subset per example.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from sid2video.sharding import param_partition_spec  # noqa: F401  (re-exported)

from sid2video.models import layers

Array = jax.Array

BLOCK_TYPES = ("resnet", "transformer")
ATTENTION_TYPES = ("factorized", "full", "spatial")
COND_FILLS = ("zeros", "last")
DTYPES = ("float32", "bfloat16", "float16")


def _err(key: str, value: Any, allowed: str) -> ValueError:
    return ValueError(f"config.model.{key}={value!r} is invalid: {allowed}")


@dataclasses.dataclass(frozen=True)
class UViTConfig:
    """The network's settings: the keys of `config.model`.

    num_frames, resolution        input [T, H, W] (H = W), the data's
    in_channels, out_channels     3 and 3
    patch_size, patch_frames      p and p_t: p_t × p × p space-time patches
    channels                      width per level, top first; level i has side
                                  resolution / p / 2^i (time is never pooled)
    block_types                   per level: 'resnet' or 'transformer'
    encoder_blocks/decoder_blocks per level (E3-D3, E1-D5, …); the innermost level runs its
                                  encoder then its decoder blocks
    num_heads, mlp_ratio          attention heads (head dim = C / heads), MLP width ratio (4)
    emb_channels                  conditioning embedding width
    conv                          '3d' (3×3×3), 'factorized' (1×3×3 then 3×1×1), '2d' (no taps
                                  in time)
    attention                     'factorized' (space then time), 'full' (space-time),
                                  'spatial' (within frames only)
    dropout, dropout_from_resolution
                                  rate, and the level side from which it applies (0 = none;
                                  never the top level)
    num_classes                   0 = unconditional; else labels 0..num_classes−1 plus the null
                                  class num_classes
    frame_conditioning            inputs [z_t, mask·cond, mask] (clean conditioning frames)
    cond_fill                     what the cond channels of a frame without conditioning hold:
                                  'zeros', or 'last' (the latest given frame before it, zeros if
                                  none), so each predicted frame sees the newest context locally
    logsnr_scale_range            (lo, hi) of the affine map of λ fed to the sinusoidal embedding
    dtype, param_dtype            compute and parameter dtypes ('bfloat16' / 'float32')
    remat, scan_blocks            rematerialise each block; scan over stacked blocks
    remat_policy                  with remat: 'full' (recompute the whole block) or
                                  'save_dots' (keep matmul and conv outputs, recompute the
                                  element-wise work between them)
    conv_impl                     how the temporal conv taps run: 'lax', 'stacked' (frames
                                  stacked on channels), 'shifted' (one op per tap); the same
                                  function and parameters (layers module doc)
    attention_impl                'auto' (cuDNN fused attention on GPU with bf16/fp16, else XLA),
                                  'xla', or 'cudnn' (an error where it cannot run)

    With one frame after temporal patching, `conv` and `attention` collapse to '2d' and
    spatial: the image model builds no temporal layers.
    """

    num_frames: int = 1
    resolution: int = 32
    in_channels: int = 3
    out_channels: int = 3
    patch_size: int = 1
    patch_frames: int = 1
    channels: tuple[int, ...] = (32, 64)
    block_types: tuple[str, ...] = ("resnet", "transformer")
    encoder_blocks: tuple[int, ...] = (1, 1)
    decoder_blocks: tuple[int, ...] = (1, 1)
    num_heads: int = 1
    mlp_ratio: int = 4
    emb_channels: int = 64
    conv: str = "3d"
    attention: str = "factorized"
    dropout: float = 0.0
    dropout_from_resolution: int = 0
    num_classes: int = 0
    frame_conditioning: bool = False
    cond_fill: str = "zeros"
    logsnr_scale_range: tuple[float, float] = (-10.0, 10.0)
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat: bool = False
    scan_blocks: bool = False
    remat_policy: str = "full"
    conv_impl: str = "lax"
    attention_impl: str = "auto"

    # --- derived ---------------------------------------------------------------------------------
    @property
    def num_levels(self) -> int:
        return len(self.channels)

    @property
    def tokens_t(self) -> int:
        """Frames after temporal patching (T')."""
        return self.num_frames // self.patch_frames

    @property
    def level_resolutions(self) -> tuple[int, ...]:
        """Side length S of each level's feature map (after patching)."""
        top = self.resolution // self.patch_size
        return tuple(top // 2**i for i in range(self.num_levels))

    @property
    def temporal(self) -> bool:
        """Whether the network has any temporal mixing layer (never when T' = 1)."""
        return self.tokens_t > 1

    @property
    def conv_kind(self) -> str:
        return self.conv if self.temporal else "2d"

    @property
    def attention_axes(self) -> tuple[str, ...]:
        if not self.temporal or self.attention == "spatial":
            return ("space",)
        if self.attention == "full":
            return ("full",)
        return ("space", "time")

    @property
    def input_channels(self) -> int:
        """Channels entering the patch embedding: z_t, plus cond frames and mask if conditioned."""
        extra = self.in_channels + 1 if self.frame_conditioning else 0
        return self.in_channels + extra

    def dropout_at(self, level: int) -> float:
        s = self.level_resolutions[level]
        if self.dropout > 0 and self.dropout_from_resolution and s <= self.dropout_from_resolution:
            return self.dropout
        return 0.0

    # --- construction ---------------------------------------------------------------------------
    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | "UViTConfig") -> "UViTConfig":
        """Build from `config.model` (a ConfigDict or dict); unknown keys are an error."""
        if isinstance(cfg, UViTConfig):
            return cfg
        if hasattr(cfg, "to_dict"):
            cfg = cfg.to_dict()
        cfg = dict(cfg)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(cfg) - names)
        if unknown:
            raise ValueError(
                f"config.model has unknown key(s) {unknown}; known keys: {', '.join(sorted(names))}"
            )
        for key in ("channels", "block_types", "encoder_blocks", "decoder_blocks",
                    "logsnr_scale_range"):
            if key in cfg and isinstance(cfg[key], (list, tuple)):
                cfg[key] = tuple(cfg[key])
            elif key in cfg:
                raise _err(key, cfg[key], "must be a tuple")
        out = cls(**cfg)
        out.check()
        return out

    def check(self) -> None:
        """Raise ValueError naming the key, the value and what is allowed."""
        def positive_int(key):
            v = getattr(self, key)
            if not (isinstance(v, int) and not isinstance(v, bool) and v > 0):
                raise _err(key, v, "must be a positive integer")

        for key in ("num_frames", "resolution", "in_channels", "out_channels", "patch_size",
                    "patch_frames", "num_heads", "mlp_ratio", "emb_channels"):
            positive_int(key)
        n = len(self.channels)
        if n == 0:
            raise _err("channels", self.channels, "needs at least one level")
        if any(not isinstance(c, int) or c <= 0 for c in self.channels):
            raise _err("channels", self.channels, "must be positive integers, one per level")
        for key in ("block_types", "encoder_blocks", "decoder_blocks"):
            v = getattr(self, key)
            if len(v) != n:
                raise _err(key, v, f"needs one entry per level ({n} levels, from channels)")
        for t in self.block_types:
            if t not in BLOCK_TYPES:
                raise _err("block_types", self.block_types, f"entries must be one of {BLOCK_TYPES}")
        for key in ("encoder_blocks", "decoder_blocks"):
            if any(not isinstance(b, int) or b < 0 for b in getattr(self, key)):
                raise _err(key, getattr(self, key), "must be non-negative integers")
        if self.emb_channels % 2:
            raise _err("emb_channels", self.emb_channels, "must be even (sin/cos features)")
        if self.conv not in layers.CONV_KINDS:
            raise _err("conv", self.conv, f"must be one of {layers.CONV_KINDS}")
        if self.conv_impl not in layers.CONV_IMPLS:
            raise _err("conv_impl", self.conv_impl, f"must be one of {layers.CONV_IMPLS}")
        if self.remat_policy not in layers.REMAT_POLICIES:
            raise _err("remat_policy", self.remat_policy,
                       f"must be one of {tuple(layers.REMAT_POLICIES)}")
        if self.attention_impl not in layers.ATTENTION_IMPLS:
            raise _err("attention_impl", self.attention_impl,
                       f"must be one of {layers.ATTENTION_IMPLS}")
        if self.attention not in ATTENTION_TYPES:
            raise _err("attention", self.attention, f"must be one of {ATTENTION_TYPES}")
        if self.num_frames % self.patch_frames:
            raise _err("patch_frames", self.patch_frames,
                       f"must divide num_frames={self.num_frames}")
        factor = self.patch_size * 2 ** (n - 1)
        if self.resolution % factor:
            raise _err("resolution", self.resolution,
                       f"must be divisible by patch_size × 2^(levels−1) = {self.patch_size} × "
                       f"2^{n - 1} = {factor}")
        for c, t in zip(self.channels, self.block_types):
            if t == "transformer" and c % self.num_heads:
                raise _err("num_heads", self.num_heads,
                           f"must divide the channels of every transformer level (got {c})")
        if not 0.0 <= self.dropout < 1.0:
            raise _err("dropout", self.dropout, "must be in [0, 1)")
        allowed = self.level_resolutions[1:]
        if self.dropout_from_resolution and self.dropout_from_resolution not in allowed:
            raise _err("dropout_from_resolution", self.dropout_from_resolution,
                       f"must be 0 (no dropout) or the feature-map side of a level below the top "
                       f"(dropout never applies at the top level): one of {list(allowed)}")
        if not (isinstance(self.num_classes, int) and self.num_classes >= 0):
            raise _err("num_classes", self.num_classes, "must be a non-negative integer (0 = none)")
        if self.cond_fill not in COND_FILLS:
            raise _err("cond_fill", self.cond_fill, f"must be one of {COND_FILLS}")
        lo, hi = self.logsnr_scale_range
        if not lo < hi:
            raise _err("logsnr_scale_range", self.logsnr_scale_range, "needs lo < hi")
        for key in ("dtype", "param_dtype"):
            if getattr(self, key) not in DTYPES:
                raise _err(key, getattr(self, key), f"must be one of {DTYPES}")


# --- the network ---------------------------------------------------------------------------------


class Level(nnx.Module):
    """One level of the Residual U-ViT, with the deeper levels nested inside (SiD2 eq. 5)."""

    def __init__(self, cfg: UViTConfig, index: int, *, rngs: nnx.Rngs):
        dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        c = cfg.channels[index]
        s = cfg.level_resolutions[index]
        drop = cfg.dropout_at(index)
        kind = cfg.block_types[index]
        self.index = index
        if kind == "transformer":
            axes = cfg.attention_axes

            def make(r):
                return layers.TransformerBlock(c, cfg.emb_channels, cfg.num_heads, axes,
                                               cfg.mlp_ratio, drop, rngs=r, dtype=dtype,
                                               param_dtype=param_dtype,
                                               attention_impl=cfg.attention_impl)

            # Learned position embeddings, zero at initialisation (the level stays the identity).
            self.pos_space = nnx.Param(jnp.zeros((s, s, c), param_dtype))
            # A frame index embedding only where attention mixes frames: a frame-wise model
            # (attention='spatial', conv='2d') stays equivariant to permutations of the frames.
            self.pos_time = (nnx.Param(jnp.zeros((cfg.tokens_t, c), param_dtype))
                             if cfg.attention_axes != ("space",) else None)
        else:
            def make(r):
                return layers.ResBlock(c, cfg.emb_channels, cfg.conv_kind, drop, rngs=r,
                                       dtype=dtype, param_dtype=param_dtype,
                                       conv_impl=cfg.conv_impl)

            self.pos_space = None
            self.pos_time = None
        stack = dict(rngs=rngs, scan=cfg.scan_blocks, remat=cfg.remat,
                     remat_policy=cfg.remat_policy)
        self.encoder = layers.BlockStack(make, cfg.encoder_blocks[index], **stack)
        if index + 1 < cfg.num_levels:
            c_next = cfg.channels[index + 1]
            self.down = layers.dense(c, c_next, **kw)
            self.inner = Level(cfg, index + 1, rngs=rngs)
            self.up = layers.dense(c_next, c, **kw)  # bias starts at 0, so U(0) = 0
        else:
            self.down = self.inner = self.up = None
        self.decoder = layers.BlockStack(make, cfg.decoder_blocks[index], **stack)

    def __call__(self, x: Array, emb: Array, deterministic: bool = True) -> Array:
        if self.pos_space is not None:
            x = x + self.pos_space[...].astype(x.dtype)[None, None]
        if self.pos_time is not None:
            x = x + self.pos_time[...].astype(x.dtype)[None, :, None, None]
        h = self.encoder(x, emb, deterministic)  # f_d
        if self.inner is not None:
            d = self.down(layers.downsample_pool(h))  # D(h)
            m = self.inner(d, emb, deterministic)  # f_m(D(h))
            h = h + layers.upsample_nearest(self.up(m - d))  # U(f_m(D(h)) − D(h)) + h
        return self.decoder(h, emb, deterministic)  # f_u


class UViT(nnx.Module):
    """Residual U-ViT: `model(z, logsnr, *, cond=None, cond_mask=None, label=None,
    deterministic=True)` -> an array of z's shape (a v, ε or x prediction)."""

    def __init__(self, config: Mapping[str, Any] | UViTConfig, *, rngs: nnx.Rngs):
        cfg = UViTConfig.from_config(config)
        self.config = cfg
        dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        e = cfg.emb_channels
        self.emb_in = layers.dense(e, e, **kw)
        self.emb_out = layers.dense(e, e, **kw)
        self.label_emb = (nnx.Embed(cfg.num_classes + 1, e, dtype=dtype, param_dtype=param_dtype,
                                    rngs=rngs) if cfg.num_classes else None)
        patch = cfg.patch_frames * cfg.patch_size**2
        self.patch_in = layers.dense(patch * cfg.input_channels, cfg.channels[0], **kw)
        self.trunk = Level(cfg, 0, rngs=rngs)
        self.out_norm = layers.layer_norm(cfg.channels[0], **kw)
        self.patch_out = layers.dense(cfg.channels[0], patch * cfg.out_channels, zero=True, **kw)

    @property
    def null_label(self) -> int:
        """The label meaning "no class" (classifier-free guidance): num_classes."""
        return self.config.num_classes

    def embed(self, logsnr: Array, label: Array | None = None) -> Array:
        """The conditioning embedding [B, emb_channels] (already passed through swish)."""
        cfg = self.config
        feats = layers.logsnr_features(logsnr, cfg.emb_channels, cfg.logsnr_scale_range)
        emb = self.emb_out(nnx.swish(self.emb_in(feats)))
        if self.label_emb is not None:
            if label is None:
                label = jnp.full(logsnr.shape, cfg.num_classes, jnp.int32)
            emb = emb + self.label_emb(jnp.asarray(label, jnp.int32))
        return nnx.swish(emb)

    def inputs(self, z: Array, cond: Array | None, cond_mask: Array | None) -> Array:
        """[z_t, mask · cond, mask] along channels (just z_t without frame conditioning)."""
        cfg = self.config
        if not cfg.frame_conditioning:
            if cond is not None or cond_mask is not None:
                raise ValueError("this model has frame_conditioning=False; pass no cond/cond_mask")
            return z
        b, t = z.shape[:2]
        if cond_mask is None:
            cond_mask = jnp.zeros((b, t), z.dtype)
        if cond_mask.shape != (b, t):
            raise ValueError(f"cond_mask has shape {cond_mask.shape}; expected [B, T] = {(b, t)}")
        mask = jnp.asarray(cond_mask, z.dtype)[:, :, None, None, None]
        if cond is None:
            cond = jnp.zeros_like(z)
        if cond.shape != z.shape:
            raise ValueError(f"cond has shape {cond.shape}; expected z's shape {z.shape}")
        mask_channel = jnp.broadcast_to(mask, z.shape[:4] + (1,))
        given = mask * cond.astype(z.dtype)
        if cfg.cond_fill == "last":
            given = fill_from_last(given, cond_mask)
        return jnp.concatenate([z, given, mask_channel], axis=-1)

    def __call__(self, z: Array, logsnr: Array, *, cond: Array | None = None,
                 cond_mask: Array | None = None, label: Array | None = None,
                 deterministic: bool = True) -> Array:
        cfg = self.config
        expected = (cfg.num_frames, cfg.resolution, cfg.resolution, cfg.in_channels)
        if z.ndim != 5 or tuple(z.shape[1:]) != expected:
            raise ValueError(f"z has shape {tuple(z.shape)}; this model takes [B, T, H, W, C] with "
                             f"(T, H, W, C) = {expected}")
        if label is not None and self.label_emb is None:
            raise ValueError("this model has num_classes=0; pass no label")
        x = self.inputs(z, cond, cond_mask)
        logsnr = jnp.broadcast_to(jnp.asarray(logsnr, jnp.float32), z.shape[:1])
        emb = self.embed(logsnr, label)
        h = self.patch_in(layers.patchify(x, cfg.patch_frames, cfg.patch_size))
        h = self.trunk(h, emb, deterministic)
        out = self.patch_out(nnx.swish(self.out_norm(h)))
        return layers.unpatchify(out, cfg.patch_frames, cfg.patch_size).astype(z.dtype)


def fill_from_last(frames: Array, mask: Array) -> Array:
    """Each frame of `frames` [B, T, ...] whose `mask` [B, T] is 0 replaced by the latest frame
    before it whose mask is 1 (zeros where there is none); frames with mask 1 are kept."""
    t = frames.shape[1]
    steps = jnp.arange(t)[None, :]
    source = jax.lax.cummax(jnp.where(jnp.asarray(mask) > 0, steps, -1), axis=1)  # [B, T]
    idx = jnp.maximum(source, 0).reshape(source.shape + (1,) * (frames.ndim - 2))
    picked = jnp.take_along_axis(frames, idx, axis=1)
    keep = (source >= 0).reshape(idx.shape)
    return jnp.where(keep, picked, jnp.zeros_like(picked))


def create(config: Mapping[str, Any] | UViTConfig, seed: int = 0) -> UViT:
    """Build the network with rng streams 'params' and 'dropout' derived from `seed`."""
    return UViT(config, rngs=nnx.Rngs(params=seed, dropout=seed + 1))


def abstract(config: Mapping[str, Any] | UViTConfig) -> UViT:
    """The network with ShapeDtypeStructs for arrays: sizes without allocating anything."""
    cfg = UViTConfig.from_config(config)
    return nnx.eval_shape(lambda: create(cfg))


def count_params(model: nnx.Module) -> int:
    """Exact parameter count (works on a real or an `abstract` model)."""
    return layers.tree_size(nnx.state(model, nnx.Param))


# --- sharding ------------------------------------------------------------------------------------


def named_shardings(model_or_state, mesh) -> Any:
    """`partition_specs` as NamedShardings on `mesh` (for device_put / jit out_shardings)."""
    from jax.sharding import NamedSharding

    specs = partition_specs(model_or_state, mesh)
    return jax.tree.map(lambda spec: NamedSharding(mesh, spec), specs)


def partition_specs(model_or_state, mesh) -> Any:
    """The PartitionSpecs of all parameters (an nnx.State shaped like `nnx.state(model, Param)`).

    `mesh` is a jax.sharding.Mesh or AbstractMesh with axes ('data',) or ('data', 'fsdp').
    """
    names = tuple(mesh.axis_names)
    if names not in (("data",), ("data", "fsdp")):
        raise ValueError(f"mesh axes {names} are not supported; use ('data',) or ('data', 'fsdp')")
    shape = dict(mesh.shape)
    state = (nnx.state(model_or_state, nnx.Param)
             if isinstance(model_or_state, nnx.Module) else model_or_state)
    return jax.tree.map(lambda a: param_partition_spec(a.shape, shape), state)
