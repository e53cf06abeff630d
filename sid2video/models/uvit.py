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

from typing import Any, Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from sid2video.sharding import param_partition_spec  # noqa: F401  (re-exported)

from sid2video.models import layers
from sid2video.models.uvit_config import UViTConfig

Array = jax.Array


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
        logsnr = jnp.broadcast_to(jnp.asarray(logsnr, jnp.float32), z.shape[:1])
        last = self.last_given(cond, cond_mask, z) if cfg.frame_residual else None
        if last is not None:  # the residual process z' = α (x − last) + σ ε = z − α·last
            alpha = jnp.sqrt(jax.nn.sigmoid(logsnr)).reshape(-1, 1, 1, 1, 1)
            z_in = (z.astype(jnp.float32) - alpha * last).astype(z.dtype)
        else:
            z_in = z
        x = self.inputs(z_in, cond, cond_mask)
        emb = self.embed(logsnr, label)
        h = self.patch_in(layers.patchify(x, cfg.patch_frames, cfg.patch_size))
        h = self.trunk(h, emb, deterministic)
        out = self.patch_out(nnx.swish(self.out_norm(h)))
        out = layers.unpatchify(out, cfg.patch_frames, cfg.patch_size)
        if last is not None:  # back to the output of the plain process: v = v' − σ·last, x = x' + last
            sigma = jnp.sqrt(jax.nn.sigmoid(-logsnr)).reshape(-1, 1, 1, 1, 1)
            if cfg.mean_type == "v":
                out = out.astype(jnp.float32) - sigma * last
            elif cfg.mean_type == "x":
                out = out.astype(jnp.float32) + last
        return out.astype(z.dtype)

    @staticmethod
    def last_given(cond: Array | None, cond_mask: Array | None, z: Array) -> Array | None:
        """float32 [B, T, H, W, C]: on every frame without conditioning the latest given frame
        before it, zeros on given frames and where none precedes (None without conditioning)."""
        if cond is None or cond_mask is None:
            return None
        if cond.shape != z.shape or tuple(cond_mask.shape) != z.shape[:2]:
            raise ValueError(f"cond {cond.shape} and cond_mask {tuple(cond_mask.shape)} must have shapes "
                             f"{z.shape} and {z.shape[:2]} (z's and its [B, T])")
        mask = jnp.asarray(cond_mask, jnp.float32)
        given = mask[:, :, None, None, None] * cond.astype(jnp.float32)
        return fill_from_last(given, mask) * (1.0 - mask)[:, :, None, None, None]


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
