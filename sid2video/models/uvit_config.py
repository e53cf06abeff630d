"""The network's settings, `config.model` (SiD2 §2.2–2.3, B.7): `UViTConfig` and its checks.

Plain Python, no JAX or Flax, so reading and checking a config (`sid2video.config.validate`,
`sid2video info`) does not build or import the network (sid2video/models/uvit.py).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

CONV_KINDS = ("3d", "factorized", "2d")
CONV_IMPLS = ("lax", "stacked", "shifted")
ATTENTION_IMPLS = ("auto", "xla", "cudnn")
REMAT_POLICY_NAMES = ("full", "save_dots")  # layers.REMAT_POLICIES maps them to jax.checkpoint policies
BLOCK_TYPES = ("resnet", "transformer")
ATTENTION_TYPES = ("factorized", "full", "spatial")
COND_FILLS = ("zeros", "last")
MEAN_TYPES = ("v", "eps", "x")  # the same as diffusion.parametrization.MEAN_TYPES (tested)
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
    frame_residual                the network models each predicted frame's change from the
                                  latest given frame: it sees z_t − α·last and its output is
                                  shifted back (v: −σ·last, x: +last, ε: unchanged), so
                                  the diffusion runs over x − last; an untrained network
                                  predicts copy-last-frame at high noise
    mean_type                     what the output is ('v', 'eps', 'x'); only frame_residual
                                  reads it, and it must equal config.loss.mean_type
    logsnr_scale_range            (lo, hi) of the affine map of λ fed to the sinusoidal embedding
    dtype, param_dtype            compute and parameter dtypes ('bfloat16' / 'float32')
    remat, scan_blocks            rematerialise each block; scan over stacked blocks
    remat_policy                  with remat: 'full' (recompute the whole block) or
                                  'save_dots' (keep matmul and conv outputs, recompute the
                                  element-wise work between them)
    conv_impl                     how the temporal conv taps run: 'lax', 'stacked' (frames
                                  stacked on channels), 'shifted' (one op per tap); the same
                                  function and parameters (models/temporal_taps.py)
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
    frame_residual: bool = False
    mean_type: str = "v"
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
        if self.conv not in CONV_KINDS:
            raise _err("conv", self.conv, f"must be one of {CONV_KINDS}")
        if self.conv_impl not in CONV_IMPLS:
            raise _err("conv_impl", self.conv_impl, f"must be one of {CONV_IMPLS}")
        if self.remat_policy not in REMAT_POLICY_NAMES:
            raise _err("remat_policy", self.remat_policy, f"must be one of {REMAT_POLICY_NAMES}")
        if self.attention_impl not in ATTENTION_IMPLS:
            raise _err("attention_impl", self.attention_impl, f"must be one of {ATTENTION_IMPLS}")
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
        if self.mean_type not in MEAN_TYPES:
            raise _err("mean_type", self.mean_type, f"must be one of {MEAN_TYPES}")
        if self.frame_residual and not self.frame_conditioning:
            raise _err("frame_residual", self.frame_residual,
                       "needs frame_conditioning=True (the change is taken from the given frames)")
        lo, hi = self.logsnr_scale_range
        if not lo < hi:
            raise _err("logsnr_scale_range", self.logsnr_scale_range, "needs lo < hi")
        for key in ("dtype", "param_dtype"):
            if getattr(self, key) not in DTYPES:
                raise _err(key, getattr(self, key), f"must be one of {DTYPES}")


# --- the network ---------------------------------------------------------------------------------
