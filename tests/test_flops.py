"""Analytic FLOPs / parameters / memory against XLA, SiD2 B.3 and the built network."""

import pathlib
import re

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from sid2video import cli, config, info
from sid2video.models import flops, uvit

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Unequal widths everywhere (nothing here runs an initialiser: eval_shape and compile only).
VIDEO = dict(num_frames=6, resolution=16, channels=(16, 24, 32),
             block_types=("resnet", "resnet", "transformer"), encoder_blocks=(1, 0, 1),
             decoder_blocks=(1, 2, 2), num_heads=2, emb_channels=32, conv="factorized",
             attention="factorized", frame_conditioning=True)
VIDEO_FULL = dict(VIDEO, conv="3d", attention="full", patch_frames=2)
IMAGE = dict(num_frames=1, resolution=16, patch_size=2, channels=(24, 32),
             block_types=("resnet", "transformer"), encoder_blocks=(2, 1), decoder_blocks=(1, 2),
             num_heads=4, emb_channels=32, num_classes=10)


def load(name: str, variant: str):
    return config.load(f"{ROOT / 'configs' / name}.py:{variant}")


def xla_flops(cfg: dict, batch: int = 1) -> float:
    """XLA's count for the jitted forward pass (it counts a multiply-add as 2 flops)."""
    model = uvit.abstract(cfg)
    graphdef, state = nnx.split(model)
    c = model.config
    f32 = jnp.float32
    z = jax.ShapeDtypeStruct((batch, c.num_frames, c.resolution, c.resolution, 3), f32)
    logsnr = jax.ShapeDtypeStruct((batch,), f32)
    cond = z if c.frame_conditioning else None
    mask = jax.ShapeDtypeStruct((batch, c.num_frames), f32) if c.frame_conditioning else None
    label = jax.ShapeDtypeStruct((batch,), jnp.int32) if c.num_classes else None

    def forward(state, z, logsnr, cond, mask, label):
        return nnx.merge(graphdef, state)(z, logsnr, cond=cond, cond_mask=mask, label=label)

    # LLVM's optimisation level changes the machine code, not XLA's HLO cost analysis.
    fast = {"xla_backend_optimization_level": 0}
    compiled = jax.jit(forward, compiler_options=fast).lower(state, z, logsnr, cond, mask,
                                                             label).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"])


@pytest.mark.parametrize("cfg", [VIDEO, VIDEO_FULL, IMAGE], ids=["factorized", "full", "image"])
def test_analytic_flops_agree_with_xla_cost_analysis(cfg):
    # XLA counts multiply-adds as 2 and only convolution taps inside the map ('SAME' padding),
    # plus elementwise work the analytic count leaves out: it may only be a little higher.
    analytic = flops.forward_flops(cfg, count_padding=False)["total"]
    ratio = xla_flops(cfg) / 2 / analytic
    assert 1.0 <= ratio < 1.10, ratio


def _b3_reference(cfg: dict) -> float:
    """SiD2 B.3's formulas written out for a video, per SPEC §5: 3D kernel volume for convs,
    token counts × T, spatial attention T·2(S²)²C, temporal S²·2T²C; 4C² per attention branch
    plus 8C² for the MLP (12C² with one attention)."""
    c = uvit.UViTConfig.from_config(cfg)
    t = c.tokens_t
    taps = {"2d": 9, "3d": 27, "factorized": 12}[c.conv_kind]
    total = 0
    for i, (ch, s, kind) in enumerate(zip(c.channels, c.level_resolutions, c.block_types)):
        blocks = c.encoder_blocks[i] + c.decoder_blocks[i]
        if kind == "resnet":
            total += 2 * taps * blocks * ch**2 * s**2 * t
        else:
            n_attn = len(c.attention_axes)
            total += (4 * n_attn + 8) * ch**2 * blocks * s**2 * t
            for axis in c.attention_axes:
                total += blocks * {"space": t * 2 * s**4 * ch, "time": s**2 * 2 * t**2 * ch,
                                   "full": 2 * (t * s**2) ** 2 * ch}[axis]
    return total


@pytest.mark.parametrize("cfg", [VIDEO, VIDEO_FULL, IMAGE], ids=["factorized", "full", "image"])
def test_block_flops_are_sid2_b3(cfg):
    fl = flops.forward_flops(cfg)
    blocks = fl["resblocks"] + fl["transformer_linears"] + fl["attention"]
    assert blocks == _b3_reference(cfg)


def test_image_flops_are_b3_as_printed():
    """For T = 1 the count is B.3's two functions, verbatim, level by level."""
    c = uvit.UViTConfig.from_config(IMAGE)
    fl = flops.forward_flops(IMAGE)
    printed = sum(flops.paper_gflops(s, ch, c.encoder_blocks[i] + c.decoder_blocks[i], k)
                  for i, (s, ch, k) in enumerate(zip(c.level_resolutions, c.channels,
                                                      c.block_types)))
    blocks = fl["resblocks"] + fl["transformer_linears"] + fl["attention"]
    assert blocks / 1e9 == pytest.approx(printed, rel=1e-12)


@pytest.mark.parametrize("cfg", [VIDEO, VIDEO_FULL, IMAGE, dict(IMAGE, num_classes=0)])
def test_closed_form_parameter_count_is_exact(cfg):
    assert flops.param_count(cfg)["total"] == uvit.count_params(uvit.abstract(cfg))


def test_paper_forward_costs():
    """SiD2 Table 5: 653 GFLOPs (512² flop heavy); B.7: 3570 GFLOPs (Kinetics600). §2.2: flop
    heavy keeps the parameters "almost the same" and costs "roughly a factor of 4" more."""
    g = 1e9
    heavy = load("imagenet512", "flop_heavy").model
    small = load("imagenet512", "small").model
    assert flops.forward_flops(heavy)["total"] / g == pytest.approx(653, rel=0.01)
    k600 = load("kinetics600", "small").model
    assert flops.forward_flops(k600)["total"] / g == pytest.approx(3570, rel=0.01)
    ratio = flops.forward_flops(heavy)["total"] / flops.forward_flops(small)["total"]
    assert 3.5 < ratio < 4.5, ratio
    assert flops.param_count(heavy)["total"] == pytest.approx(
        flops.param_count(small)["total"], rel=0.01)


def test_activation_memory_estimate():
    mem = flops.activation_memory(VIDEO)
    assert 0 < mem.inference < mem.train_remat < mem.train
    half = flops.activation_memory(dict(VIDEO, dtype="bfloat16"))
    assert half.train * 2 == mem.train
    # Per example: twice the frames, at least twice the stored activations.
    longer = flops.activation_memory(dict(VIDEO, num_frames=12))
    assert longer.train >= 2 * mem.train


def _gflops(text: str, label: str) -> float:
    match = re.search(label + r"\s+([\d,.]+) GFLOPs", text)
    assert match, text
    return float(match.group(1).replace(",", ""))


def test_info_command(capsys):
    argv = ["--config", str(ROOT / "configs" / "demo.py") + ":video"]
    assert info.run(argv) == 0
    out = capsys.readouterr().out
    cfg = load("demo", "video")
    exact = uvit.count_params(uvit.abstract(cfg.model))
    assert f"parameters   {exact:,} (closed form" in out  # the printed count is the built network's
    fwd = flops.forward_flops(cfg.model)["total"] / 1e9
    assert _gflops(out, "forward") == pytest.approx(fwd, rel=1e-3)
    assert _gflops(out, "train step") == pytest.approx(3 * fwd, rel=1e-3)
    assert "GiB per example in training" in out
    # --config.key=value overrides reach the model (through the CLI entry point).
    assert cli.main(["info"] + argv + ["--config.model.decoder_blocks=(1,3)"]) == 0
    out = capsys.readouterr().out
    cfg.model.decoder_blocks = (1, 3)
    more = flops.forward_flops(cfg.model)["total"] / 1e9
    assert more > 1.1 * fwd
    assert _gflops(out, "forward") == pytest.approx(more, rel=1e-3)
    # A bad value is reported in one line, not a traceback.
    with pytest.raises(SystemExit, match=r"^sid2video info: invalid config: .*attention='axial'"):
        info.run(argv + ["--config.model.attention=axial"])
    # So is a flag that does not exist, or a config key that does not.
    with pytest.raises(SystemExit, match=r"sid2video info: Unknown command line flag 'cfg'"):
        info.run(argv + ["--cfg=1"])
    with pytest.raises(SystemExit, match=r"sid2video info: --config.model.widht names no config key"):
        info.run(argv + ["--config.model.widht=3"])


def test_info_is_arithmetic_only():
    """`sid2video info` on a shipped config (by name) imports neither the network's Flax modules nor
    the trainer, optax or orbax."""
    import json
    import os
    import subprocess
    import sys

    code = ("import sys, json; from sid2video import cli; rc = cli.main(['info', '--config', 'kinetics600:small']); "
            "print(json.dumps([rc] + sorted(m for m in ('flax', 'optax', 'orbax', 'sid2video.train', "
            "'sid2video.models.uvit') if m in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                         env={**os.environ, "JAX_PLATFORMS": "cpu"}).stdout
    assert "GFLOPs per example" in out
    assert json.loads(out.strip().splitlines()[-1]) == [0]
