"""Analytic cost of the Residual U-ViT: FLOPs, parameters, activation memory (SiD2 B.3; SPEC §5).

FLOPs follow SiD2 B.3: a multiply-add counts as ONE flop (XLA's `cost_analysis()['flops']`
counts it as two), and a training step costs 3 forward passes. Per example, with N = T'·S² tokens
at a level of side S and width C (T' = frames after temporal patching):

    ResBlock            2 convs · taps · C² · N          taps: 3×3 = 9, 3×3×3 = 27,
                                                         1×3×3 + 3×1×1 = 9 + 3 (B.3: 2·3²·C²·S²)
    transformer linears (4·A + 2·r) · C² · N             A attention branches (q, k, v, out),
                                                         MLP ratio r = 4 (B.3: 12·C²·S² for A = 1)
    attention           spatial   T' · 2 · (S²)² · C     (q·kᵀ and probs·v; B.3: 2·S⁴·C)
                        temporal  S² · 2 · T'² · C
                        full      2 · (T'·S²)² · C
    patching            N₀ · (p_t·p²·C_in) · C₀  +  N₀ · C₀ · (p_t·p²·C_out)
    down / up           N_{i+1} · C_i · C_{i+1}  each    (D: pool, Dense; U: Dense, upsample)
    conditioning        the logSNR MLP and every FiLM projection (per example, not per token)

Elementwise work (norms, softmax, swish, adds) is not counted; at paper sizes it is well under
1% (B.3), at the tiny test sizes a few percent. B.3 counts every tap of a 3×3 kernel, also those
on the zero padding; XLA counts taps inside the map only (`count_padding=False`), which differs
by (1 − 2/(3n)) per padded axis of length n: −1% at 128², −4% for 16 frames in time. XLA's count
of the paper configs agrees with `count_padding=False` to 0.4%. `sid2video info` (sid2video/info.py)
prints it all:

    sid2video info --config configs/kinetics600.py:small [--config.model.key=value ...]
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from sid2video.models.uvit_config import UViTConfig

TRAIN_STEP_FORWARDS = 3  # SiD2 B.3 / EDM2: a training step costs three forward passes


def _conv_macs(kind: str, t: int, s: int, c: int, count_padding: bool) -> int:
    """Multiply-adds of one C->C Conv on a [T, S, S] map.

    count_padding=True is B.3's count (every tap of every output, 9·S² for 3×3). With False only
    taps that land inside the map count, as XLA's cost analysis does for 'SAME' zero padding:
    a 3-tap axis of length n has 3n − 2 in-bounds taps instead of 3n.
    """
    def taps(n):  # in-bounds taps summed over the n outputs of one 3-tap axis
        return 3 * n if count_padding else max(3 * n - 2, 1)

    spatial = taps(s) ** 2 * t
    if kind == "2d":
        return spatial * c * c
    temporal = taps(t) * s * s
    if kind == "3d":
        return taps(s) ** 2 * taps(t) * c * c
    return (spatial + temporal) * c * c  # factorized: 1×3×3 then 3×1×1


def _attention_macs(axis: str, t: int, s2: int, c: int) -> int:
    if axis == "space":
        return t * 2 * s2 * s2 * c
    if axis == "time":
        return s2 * 2 * t * t * c
    return 2 * (t * s2) ** 2 * c


def forward_flops(config: Mapping[str, Any] | UViTConfig, *,
                  count_padding: bool = True) -> dict[str, int]:
    """Multiply-adds of one forward pass for one example, by component (see module doc).

    `count_padding=False` counts convolution taps inside the map only (see `_conv_macs`); the
    difference is (1 − 2/(3S))² ≈ 1% at S = 128, but 30% on a 4×4 test map.
    """
    cfg = UViTConfig.from_config(config)
    t = cfg.tokens_t
    e = cfg.emb_channels
    r = cfg.mlp_ratio
    out = dict(resblocks=0, transformer_linears=0, attention=0, patching=0, down_up=0,
               conditioning=2 * e * e)
    patch = cfg.patch_frames * cfg.patch_size**2
    n0 = t * cfg.level_resolutions[0] ** 2
    out["patching"] = n0 * cfg.channels[0] * patch * (cfg.input_channels + cfg.out_channels)
    axes = cfg.attention_axes
    for i, (c, s, kind) in enumerate(zip(cfg.channels, cfg.level_resolutions, cfg.block_types)):
        blocks = cfg.encoder_blocks[i] + cfg.decoder_blocks[i]
        n = t * s * s
        if kind == "resnet":
            out["resblocks"] += blocks * 2 * _conv_macs(cfg.conv_kind, t, s, c, count_padding)
            out["conditioning"] += blocks * e * 2 * c
        else:
            out["transformer_linears"] += blocks * (4 * len(axes) + 2 * r) * c * c * n
            out["attention"] += blocks * sum(_attention_macs(a, t, s * s, c) for a in axes)
            out["conditioning"] += blocks * e * 2 * r * c
        if i + 1 < cfg.num_levels:
            out["down_up"] += 2 * (n // 4) * c * cfg.channels[i + 1]
    out["total"] = sum(out.values())
    return out


def paper_gflops(size: int, channels: int, blocks: int, kind: str) -> float:
    """SiD2 B.3's two formulas verbatim (2D, one attention): GFLOPs of `blocks` blocks."""
    if kind == "transformer":
        return (12 * channels**2 * blocks * size**2 + 2 * size**4 * blocks * channels) / 1000**3
    return 2 * 3**2 * blocks * channels**2 * size**2 / 1000**3


def param_count(config: Mapping[str, Any] | UViTConfig) -> dict[str, int]:
    """Parameters in closed form (weights, biases, norms, embeddings), by component.

    It equals the exact count of the built network; the tests check this on every config.
    """
    cfg = UViTConfig.from_config(config)
    e, r = cfg.emb_channels, cfg.mlp_ratio
    patch = cfg.patch_frames * cfg.patch_size**2
    c0 = cfg.channels[0]

    def dense(i, o):
        return i * o + o

    def norm(c):
        return 2 * c

    def conv(c):
        kind = cfg.conv_kind
        if kind == "factorized":
            return 9 * c * c + c + 3 * c * c + c
        return (27 if kind == "3d" else 9) * c * c + c

    out = dict(embedding=2 * dense(e, e) + (cfg.num_classes + 1) * e * bool(cfg.num_classes),
               patching=dense(patch * cfg.input_channels, c0) + norm(c0)
               + dense(c0, patch * cfg.out_channels),
               resblocks=0, transformer=0, down_up=0, position=0)
    axes = cfg.attention_axes
    for i, (c, s, kind) in enumerate(zip(cfg.channels, cfg.level_resolutions, cfg.block_types)):
        blocks = cfg.encoder_blocks[i] + cfg.decoder_blocks[i]
        if kind == "resnet":
            out["resblocks"] += blocks * (2 * norm(c) + 2 * conv(c) + dense(e, 2 * c))
        else:
            d = c // cfg.num_heads
            attn = norm(c) + dense(c, 3 * c) + 2 * norm(d) - d + dense(c, c)  # k_norm has no bias
            mlp = norm(c) + dense(c, r * c) + dense(e, 2 * r * c) + dense(r * c, c)
            out["transformer"] += blocks * (len(axes) * attn + mlp)
            out["position"] += s * s * c + (cfg.tokens_t * c if axes != ("space",) else 0)
        if i + 1 < cfg.num_levels:
            out["down_up"] += dense(c, cfg.channels[i + 1]) + dense(cfg.channels[i + 1], c)
    out["total"] = sum(out.values())
    return out


# Elements kept per block for the backward pass, in units of the block's feature map N·C
# (inputs of every linear/conv/norm/nonlinearity that autodiff saves): a ResBlock keeps its
# input, two norm outputs, two swish outputs and the first conv output (+1 per factorized
# conv for the spatial-conv output); an attention branch its input, the norm output, q, k, v,
# normalised q and k and the attention output, plus the softmax probabilities; an MLP its input,
# the norm output and three hidden maps of r·C (dense, swish, FiLM).
_RES_STORED = 6
_ATTN_STORED = 8
_MLP_STORED_BASE = 2


@dataclasses.dataclass(frozen=True)
class Memory:
    """Activation bytes per example."""

    train: int  # everything autodiff keeps for the backward pass, no rematerialisation
    train_remat: int  # with remat per block: block inputs plus one block's internals
    inference: int  # peak of a forward pass: the levels' h and D(h) plus one block's working set


def activation_memory(config: Mapping[str, Any] | UViTConfig) -> Memory:
    """A rough estimate of activation memory per example (see the constants above)."""
    cfg = UViTConfig.from_config(config)
    nbytes = {"float32": 4, "bfloat16": 2, "float16": 2}[cfg.dtype]
    t, r, heads = cfg.tokens_t, cfg.mlp_ratio, cfg.num_heads
    extra_conv = 2 if cfg.conv_kind == "factorized" else 0
    total = inputs = largest = held = 0
    for i, (c, s, kind) in enumerate(zip(cfg.channels, cfg.level_resolutions, cfg.block_types)):
        nc = t * s * s * c
        blocks = cfg.encoder_blocks[i] + cfg.decoder_blocks[i]
        if kind == "resnet":
            per_block = (_RES_STORED + extra_conv) * nc
        else:
            per_block = _MLP_STORED_BASE * nc + 3 * r * nc
            for axis in cfg.attention_axes:
                seq = {"space": (t, s * s), "time": (s * s, t), "full": (1, t * s * s)}[axis]
                per_block += _ATTN_STORED * nc + seq[0] * heads * seq[1] ** 2
        total += blocks * per_block
        inputs += blocks * nc
        largest = max(largest, per_block if blocks else 0)
        held += nc  # h of this level, kept while the deeper levels run
        if i + 1 < cfg.num_levels:
            n_below = t * (s // 2) ** 2
            # pooled h, D(h), f_m(D(h)) − D(h), U(·) before upsampling, and the upsampled sum
            total += 2 * n_below * c + 2 * n_below * cfg.channels[i + 1] + nc
    return Memory(train=total * nbytes, train_remat=(inputs + largest) * nbytes,
                  inference=(held + largest) * nbytes)


def _num(x: float) -> str:
    """At least 4 significant digits, thousands separated."""
    return f"{x:,.1f}" if abs(x) >= 100 else f"{x:.4g}"


def summary(config: Mapping[str, Any] | UViTConfig) -> str:
    """The text `sid2video info` prints."""
    cfg = UViTConfig.from_config(config)
    fl = forward_flops(cfg)
    inside = forward_flops(cfg, count_padding=False)["total"]
    pc = param_count(cfg)
    mem = activation_memory(cfg)
    g = 1000**3
    gib = 1024**3
    levels = ", ".join(
        f"{s}²×{c} {'R' if k == 'resnet' else 'T'} E{ne}-D{nd}"
        for s, c, k, ne, nd in zip(cfg.level_resolutions, cfg.channels, cfg.block_types,
                                   cfg.encoder_blocks, cfg.decoder_blocks))
    b3 = sum(
        paper_gflops(s, c, cfg.encoder_blocks[i] + cfg.decoder_blocks[i], k) * cfg.tokens_t
        for i, (s, c, k) in enumerate(zip(cfg.level_resolutions, cfg.channels, cfg.block_types)))
    lines = [
        f"input        {cfg.num_frames}×{cfg.resolution}×{cfg.resolution}×{cfg.in_channels}, "
        f"patch {cfg.patch_frames}×{cfg.patch_size}×{cfg.patch_size} -> T'={cfg.tokens_t}",
        f"levels       {levels}  (R = ResBlocks, T = transformer)",
        f"temporal     conv={cfg.conv_kind}, attention={'+'.join(cfg.attention_axes)}",
        f"parameters   {pc['total']:,} (closed form, equal to the built network's count)",
        f"forward      {_num(fl['total'] / g)} GFLOPs per example (multiply-add = 1 flop)",
        "  by part    " + ", ".join(f"{k} {_num(v / g)}" for k, v in fl.items() if k != "total"),
        f"  taps inside the map only  {_num(inside / g)} GFLOPs (XLA's convention for padding)",
        f"  B.3 as printed  {_num(b3)} GFLOPs (2D 3×3 convs and one attention per block, × T')",
        f"train step   {_num(TRAIN_STEP_FORWARDS * fl['total'] / g)} GFLOPs per example "
        f"({TRAIN_STEP_FORWARDS} × forward)",
        f"activations  {_num(mem.train / gib)} GiB per example in training "
        f"({_num(mem.train_remat / gib)} GiB with remat per block), "
        f"{_num(mem.inference / gib)} GiB peak in a forward pass ({cfg.dtype})",
    ]
    return "\n".join(lines)
