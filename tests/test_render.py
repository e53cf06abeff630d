"""Rendering: MP4 / GIF / PNG files that decode to what draw.py drew, captioned image grids, and
the `sid2video render` command."""

import pathlib
import subprocess

import numpy as np
import pytest
from PIL import Image

from sid2video import cli, draw, render
from sid2video.data import video_io

B, T, H, W, NUM_COND = 2, 5, 16, 16, 2
FPS = 8.0


def _smooth_clips(b=B, t=T, h=H, w=W):
    """Smooth, moving colour gradients (what H.264 at high quality keeps to well above 35 dB)."""
    yy, xx = np.mgrid[:h, :w]
    out = np.zeros((b, t, h, w, 3), np.uint8)
    for i in range(b):
        for j in range(t):
            out[i, j, ..., 0] = (xx * 200 // w + 10 * j + 30 * i) % 256
            out[i, j, ..., 1] = yy * 200 // h + 20
            out[i, j, ..., 2] = 60 + 40 * i + 5 * j
    return out


def _psnr(a, b):
    mse = np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)
    return 10 * np.log10(255.0 ** 2 / max(mse, 1e-10))


def _truth_and_sample():
    truth = _smooth_clips()
    sample = truth.copy()
    # Predictions unlike the truth, but smooth: a transposed, colour-swapped version.
    sample[:, NUM_COND:] = truth[:, NUM_COND:].transpose(0, 1, 3, 2, 4)[..., ::-1]
    return truth, sample


@pytest.fixture(scope="module")
def npz_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("render")
    truth, sample = _truth_and_sample()
    path = d / "samples" / "step_7.npz"
    path.parent.mkdir()
    np.savez_compressed(path, sample=sample, truth=truth, label=np.arange(B), num_cond=NUM_COND)
    return path


@pytest.fixture(scope="module")
def rendered(npz_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    paths = render.render_npz(npz_file, out, fmt=("mp4", "gif", "png"), fps=FPS)
    return out, paths


# ------------------------------------------------------------------------------------------------
# Files.


def test_mp4_decodes_with_decord_and_keeps_conditioning_and_prediction(npz_file, rendered):
    out, paths = rendered
    truth, sample = _truth_and_sample()
    clip_path = out / "step_7_clip000.mp4"
    assert clip_path in paths and (out / "step_7_grid.mp4") in paths
    info = video_io.probe(clip_path)
    assert info.num_frames == T and info.fps == pytest.approx(FPS)
    # H.264 in 4:2:0, the combination browsers and common players accept.
    probe = subprocess.run([video_io.ffmpeg_exe(), "-hide_banner", "-i", str(clip_path)],
                           capture_output=True, text=True).stderr
    assert "Video: h264" in probe and "yuv420p" in probe
    expected = draw.side_by_side(sample[0], truth[0], NUM_COND)
    frames = video_io.read_frames(clip_path, range(T))
    assert frames.shape == expected.shape
    hh, ww = frames.shape[1:3]
    assert hh % 2 == 0 and ww % 2 == 0 and hh >= 128
    lay = draw.clip_layout(H, W)
    up = lambda x: np.kron(x, np.ones((lay.scale, lay.scale, 1), np.uint8))  # noqa: E731
    for t in range(T):
        got = lay.crop(frames[t], "sample")
        if t < NUM_COND:  # the given frames come through unchanged (up to H.264 error)
            assert _psnr(got, up(truth[0, t])) > 35
        else:  # the prediction panel shows the prediction, not the truth
            assert _psnr(got, up(sample[0, t])) > 35
            assert _psnr(got, up(truth[0, t])) < 20
        assert _psnr(lay.crop(frames[t], "truth"), up(truth[0, t])) > 35
    # Border colour after decoding: green for given frames, red for predicted ones.
    y, x, h, w = lay.panels["sample"]
    left_border = frames[:, y:y + h, x - lay.border:x].reshape(T, -1, 3).mean(axis=1)
    for t in range(T):
        want = np.array(draw.GIVEN if t < NUM_COND else draw.PRED)
        other = np.array(draw.PRED if t < NUM_COND else draw.GIVEN)
        assert np.abs(left_border[t] - want).max() < 20
        assert np.abs(left_border[t] - other).max() > 100


def test_grid_mp4_holds_every_clip(rendered):
    out, _ = rendered
    truth, sample = _truth_and_sample()
    clips = [draw.side_by_side(sample[i], truth[i], NUM_COND) for i in range(B)]
    ch, cw = clips[0].shape[1:3]
    g = video_io.read_frames(out / "step_7_grid.mp4", range(T))
    gap = 8
    assert g.shape[1:3] == (ch + 2 * gap, 2 * cw + 3 * gap)
    for i in range(B):
        x = gap + i * (cw + gap)
        assert _psnr(g[:, gap:gap + ch, x:x + cw], clips[i]) > 30


def test_gif_and_png_strip(rendered):
    out, paths = rendered
    truth, sample = _truth_and_sample()
    expected = draw.side_by_side(sample[1], truth[1], NUM_COND)
    _, hh, ww, _ = expected.shape
    gif = out / "step_7_clip001.gif"
    assert gif in paths
    with Image.open(gif) as im:
        assert im.n_frames == T and im.size == (ww, hh)
        assert im.info["duration"] == pytest.approx(1000 / FPS, abs=10)
        decoded = []
        for t in range(T):
            im.seek(t)
            decoded.append(np.asarray(im.convert("RGB")))
    for t in range(T):
        err = [np.abs(decoded[t].astype(int) - expected[s]).mean() for s in range(T)]
        assert err[t] < 6 and int(np.argmin(err)) == t
    png = out / "step_7_clip001.png"
    with Image.open(png) as im:
        assert im.size == (T * ww, hh)
        strip = np.asarray(im.convert("RGB"))
    np.testing.assert_array_equal(strip, np.concatenate(list(expected), axis=1))  # PNG is lossless


def test_write_video_checks_format_and_pads_odd_sizes(tmp_path):
    frames = np.random.default_rng(2).integers(0, 256, (3, 15, 21, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="mp4, gif, png"):
        render.write_video(tmp_path / "x.avi", frames, 8)
    p = render.write_video(tmp_path / "x", frames, 8, "mp4", crf=0)
    assert p.suffix == ".mp4"
    assert video_io.read_frames(p, range(3)).shape == (3, 16, 22, 3)


# ------------------------------------------------------------------------------------------------
# Images (T = 1).


def test_image_npz_renders_captioned_pngs(tmp_path):
    n = 3
    truth = _smooth_clips(b=n, t=1)
    sample = truth[:, :, ::-1].copy()
    labels = np.array([4, 4, 9])
    npz = tmp_path / "step_1.npz"
    np.savez(npz, sample=sample, truth=truth, label=labels, num_cond=0)
    paths = render.render_npz(npz, tmp_path / "out", fmt=("mp4",))  # images become PNGs regardless
    assert all(p.suffix == ".png" for p in paths)
    assert {p.name for p in paths} >= {"step_1_samples.png", "step_1_truth.png", "step_1_image000.png"}
    with Image.open(tmp_path / "out" / "step_1_samples.png") as im:
        g = np.asarray(im.convert("RGB"))
    gap, cell_h, cell_w = 8, 128 + 14, 128  # 16 px images upscaled 8x, a 14 px caption bar below
    assert g.shape == (gap + 2 * (cell_h + gap), gap + 2 * (cell_w + gap), 3)  # 2 x 2 cells for 3
    caps = []
    for i in range(n):
        r, c = divmod(i, 2)
        y, x = gap + r * (cell_h + gap), gap + c * (cell_w + gap)
        want = np.kron(sample[i, 0], np.ones((8, 8, 1), np.uint8))
        np.testing.assert_array_equal(g[y:y + 128, x:x + 128], want)
        caps.append(g[y + 128:y + cell_h, x:x + cell_w])
    # Captions show the labels: equal labels draw equal captions, different ones differ, none is blank.
    np.testing.assert_array_equal(caps[0], caps[1])
    assert not np.array_equal(caps[0], caps[2])
    assert all((c != np.array(draw.BACKGROUND, np.uint8)).any() for c in caps)
    # Without labels there is no caption bar.
    plain = draw.image_grid(sample, cols=3)
    assert plain.shape == (gap + 128 + gap, gap + 3 * (128 + gap), 3)


# ------------------------------------------------------------------------------------------------
# The command.


def _write_npz(path: pathlib.Path, t=T):
    truth = _smooth_clips(t=t)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, sample=truth, truth=truth, label=np.zeros(B), num_cond=1)


def test_cli_renders_latest_or_chosen_step(tmp_path, capsys):
    wd = tmp_path / "run"
    _write_npz(wd / "samples" / "step_3.npz", t=3)
    _write_npz(wd / "samples" / "step_10.npz", t=4)  # latest by number, not by name
    out = tmp_path / "renders"
    assert cli.main(["render", "--workdir", str(wd), "--out", str(out), "--format", "mp4,png",
                     "--fps", "4", "--no_per_clip"]) == 0
    printed = capsys.readouterr().out
    assert str(out) in printed
    assert sorted(p.name for p in out.iterdir()) == ["step_10_grid.mp4", "step_10_grid.png"]
    info = video_io.probe(out / "step_10_grid.mp4")
    assert info.num_frames == 4 and info.fps == pytest.approx(4)
    assert render.run(["--workdir", str(wd), "--checkpoint", "3", "--out", str(out), "--format", "gif"]) == 0
    with Image.open(out / "step_3_clip001.gif") as im:
        assert im.n_frames == 3
    npz = tmp_path / "elsewhere" / "mine.npz"
    _write_npz(npz)
    assert render.run(["--npz", str(npz)]) == 0  # default output: renders/ beside the file
    assert (npz.parent / "renders" / "mine_grid.mp4").is_file()


def test_cli_missing_npz_names_the_file_and_the_command(tmp_path, capsys):
    wd = tmp_path / "run"
    wd.mkdir()
    assert render.run(["--workdir", str(wd), "--checkpoint", "7", "--out", str(tmp_path / "o")]) != 0
    err = capsys.readouterr().err
    assert str(wd / "samples" / "step_7.npz") in err
    assert f"sid2video sample --workdir {wd}" in err
    assert cli.main(["render", "--workdir", str(wd)]) != 0
    err = capsys.readouterr().err
    assert "samples" in err and f"sid2video sample --workdir {wd}" in err
    assert render.run(["--npz", str(tmp_path / "nope.npz")]) != 0
    assert "nope.npz" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
