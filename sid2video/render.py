"""Rendering predictions for people to look at: MP4, GIF and PNG.

`sid2video sample` writes an .npz holding `sample` and `truth` (uint8 `[B, T, H, W, C]`), `label`
(`[B]`) and `num_cond` (the number of leading conditioning frames). This module turns it into files
a person can open:

* Video (T > 1), one clip: two panels per frame, `[sample | truth]`. The left panel shows the
  sample array, whose first `num_cond` frames are the given conditioning frames (equal to the
  truth) and the rest the model's predictions; the right panel shows the ground truth. Every panel
  has a coloured border: green for given (conditioning) frames, red for predicted frames and blue
  for ground-truth frames. A header bar above the panels carries the frame counter ("3/16"), the
  tag GIVEN or PRED, and TRUTH over the right panel. The text sits in the bar, outside the panels,
  so no pixel of a frame is covered. Small frames are upscaled with nearest neighbour by an
  integer factor until they are at least `min_height` pixels high, and the output is padded to
  even height and width so that it can be encoded as yuv420p.
* Several clips: `grid` tiles rendered clips into one video (shorter clips hold their last frame).
* Images (T = 1): `image_grid` tiles upscaled images into one PNG, each captioned with its label.

Text is drawn with a built-in 3x5 pixel font (digits, A-Z and a little punctuation) scaled by an
integer factor, so rendering needs no font files and gives the same pixels on every machine.

`write_video` encodes frames as H.264 MP4 in yuv420p (plays in browsers and common players, and
decord reads it), as an animated GIF (PIL), or as a PNG strip with the frames side by side.

`sid2video render --workdir DIR [--checkpoint N] [--out DIR] [--format mp4,gif,png] [--fps 8]`
renders WORKDIR/samples/step_N.npz (the latest one without --checkpoint); `--npz FILE` renders a
given file.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
import re
import sys
from typing import Iterable, Sequence

import numpy as np

from sid2video import flags

# Colours (RGB).
GIVEN = (40, 200, 70)  # border of conditioning frames: given to the model
PRED = (230, 70, 40)  # border of predicted frames
TRUTH = (60, 130, 235)  # border of ground-truth frames
BACKGROUND = (24, 24, 24)
TEXT = (235, 235, 235)

FORMATS = ("mp4", "gif", "png")
DEFAULT_FPS = 8.0
DEFAULT_CRF = 12  # H.264 quality for renders: near-transparent, small files for small clips

# ------------------------------------------------------------------------------------------------
# A 3x5 bitmap font. Each glyph is five rows of three pixels ("1" = ink).

_GLYPHS: dict[str, tuple[str, ...]] = {
    "0": ("111", "101", "101", "101", "111"),
    "1": ("010", "110", "010", "010", "111"),
    "2": ("111", "001", "111", "100", "111"),
    "3": ("111", "001", "111", "001", "111"),
    "4": ("101", "101", "111", "001", "001"),
    "5": ("111", "100", "111", "001", "111"),
    "6": ("111", "100", "111", "101", "111"),
    "7": ("111", "001", "001", "010", "010"),
    "8": ("111", "101", "111", "101", "111"),
    "9": ("111", "101", "111", "001", "111"),
    "A": ("010", "101", "111", "101", "101"),
    "B": ("110", "101", "110", "101", "110"),
    "C": ("011", "100", "100", "100", "011"),
    "D": ("110", "101", "101", "101", "110"),
    "E": ("111", "100", "110", "100", "111"),
    "F": ("111", "100", "110", "100", "100"),
    "G": ("011", "100", "101", "101", "011"),
    "H": ("101", "101", "111", "101", "101"),
    "I": ("111", "010", "010", "010", "111"),
    "J": ("001", "001", "001", "101", "010"),
    "K": ("101", "101", "110", "101", "101"),
    "L": ("100", "100", "100", "100", "111"),
    "M": ("101", "111", "111", "101", "101"),
    "N": ("110", "101", "101", "101", "101"),
    "O": ("010", "101", "101", "101", "010"),
    "P": ("110", "101", "110", "100", "100"),
    "Q": ("010", "101", "101", "110", "011"),
    "R": ("110", "101", "110", "101", "101"),
    "S": ("011", "100", "010", "001", "110"),
    "T": ("111", "010", "010", "010", "010"),
    "U": ("101", "101", "101", "101", "111"),
    "V": ("101", "101", "101", "101", "010"),
    "W": ("101", "101", "111", "111", "101"),
    "X": ("101", "101", "010", "101", "101"),
    "Y": ("101", "101", "010", "010", "010"),
    "Z": ("111", "001", "010", "100", "111"),
    " ": ("000", "000", "000", "000", "000"),
    "/": ("001", "001", "010", "100", "100"),
    "-": ("000", "000", "111", "000", "000"),
    "+": ("000", "010", "111", "010", "000"),
    "=": ("000", "111", "000", "111", "000"),
    ":": ("000", "010", "000", "010", "000"),
    ".": ("000", "000", "000", "000", "010"),
    ",": ("000", "000", "000", "010", "100"),
    "#": ("101", "111", "101", "111", "101"),
    "_": ("000", "000", "000", "000", "111"),
    "(": ("010", "100", "100", "100", "010"),
    ")": ("010", "001", "001", "001", "010"),
    "%": ("101", "001", "010", "100", "101"),
    "?": ("111", "001", "010", "000", "010"),
}
_FONT = {k: np.array([[c == "1" for c in row] for row in rows], bool) for k, rows in _GLYPHS.items()}
GLYPH_H, GLYPH_W = 5, 3


def text_size(text: str, px: int = 2) -> tuple[int, int]:
    """(height, width) in pixels of `text` drawn with pixel size `px` (one blank column between glyphs)."""
    n = len(text)
    return GLYPH_H * px, max(0, n * (GLYPH_W + 1) * px - px)


def draw_text(image: np.ndarray, text: str, y: int, x: int, *, color=TEXT, px: int = 2) -> np.ndarray:
    """Draws `text` into `image` ([H, W, 3] uint8, in place) with its top-left corner at (y, x).

    Lower-case letters are drawn as capitals and unknown characters as "?". Ink that falls outside
    the image is clipped. Returns `image`.
    """
    h, w = image.shape[:2]
    color = np.asarray(color, np.uint8)
    for i, ch in enumerate(text.upper()):
        glyph = _FONT.get(ch, _FONT["?"])
        mask = np.kron(glyph, np.ones((px, px), bool))
        gy, gx = y, x + i * (GLYPH_W + 1) * px
        y0, x0 = max(gy, 0), max(gx, 0)
        y1, x1 = min(gy + mask.shape[0], h), min(gx + mask.shape[1], w)
        if y0 >= y1 or x0 >= x1:
            continue
        sub = mask[y0 - gy:y1 - gy, x0 - gx:x1 - gx]
        image[y0:y1, x0:x1][sub] = color
    return image


# ------------------------------------------------------------------------------------------------
# Array helpers.


def _as_rgb(frames: np.ndarray, name: str) -> np.ndarray:
    """Checks uint8 pixels with 1 or 3 channels and returns them as RGB."""
    frames = np.asarray(frames)
    if frames.dtype != np.uint8:
        raise ValueError(f"{name} must hold uint8 pixels, got {frames.dtype} (convert [-1, 1] floats "
                         "with sid2video.sample.to_uint8 first)")
    if frames.shape[-1] == 1:
        frames = np.repeat(frames, 3, axis=-1)
    if frames.shape[-1] != 3:
        raise ValueError(f"{name} must have 1 or 3 channels in the last axis, got shape {frames.shape}")
    return frames


def upscale_factor(height: int, min_height: int) -> int:
    """The smallest integer factor that makes `height` at least `min_height` (at least 1)."""
    return max(1, math.ceil(min_height / max(1, height)))


def upscale(frames: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour upscaling of `[..., H, W, C]` by an integer factor."""
    if factor == 1:
        return frames
    return np.repeat(np.repeat(frames, factor, axis=-3), factor, axis=-2)


def _pad_even(frames: np.ndarray, background=BACKGROUND) -> np.ndarray:
    """Pads `[..., H, W, 3]` at the bottom / right to even height and width."""
    h, w = frames.shape[-3:-1]
    ph, pw = h % 2, w % 2
    if not (ph or pw):
        return frames
    out = np.empty(frames.shape[:-3] + (h + ph, w + pw, 3), np.uint8)
    out[...] = np.asarray(background, np.uint8)
    out[..., :h, :w, :] = frames
    return out


def _fill_border(canvas: np.ndarray, y: int, x: int, h: int, w: int, b: int, color) -> None:
    """Paints a frame of width `b` around the box (y, x, h, w) of `canvas` ([..., H, W, 3])."""
    if b <= 0:
        return
    c = np.asarray(color, np.uint8)
    canvas[..., y - b:y, x - b:x + w + b, :] = c
    canvas[..., y + h:y + h + b, x - b:x + w + b, :] = c
    canvas[..., y:y + h, x - b:x, :] = c
    canvas[..., y:y + h, x + w:x + w + b, :] = c


# ------------------------------------------------------------------------------------------------
# One clip side by side with its ground truth.


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where things go in a rendered clip frame.

    `panels` maps "sample" and "truth" to the (y, x, height, width) box of the upscaled frame
    inside its border; `header` is the height of the text bar at the top; `size` the (H, W) of
    the output frame (even).
    """

    scale: int
    border: int
    header: int
    size: tuple[int, int]
    panels: dict

    def crop(self, frames: np.ndarray, panel: str) -> np.ndarray:
        """The pixels of one panel (inside its border) of rendered `[..., H, W, 3]` frames."""
        y, x, h, w = self.panels[panel]
        return frames[..., y:y + h, x:x + w, :]


def clip_layout(height: int, width: int, *, scale: int | None = None, min_height: int = 128,
                border: int = 2, gap: int = 4, text_px: int = 2) -> Layout:
    """The layout `side_by_side` uses for `height` x `width` input frames.

    The upscaling factor is `scale` if given, else the smallest integer that makes the frames at
    least `min_height` pixels high. Keep `border`, `gap` and the header even (the defaults are) so
    that an even factor puts every panel on the 2x2 chroma grid of yuv420p.
    """
    if scale is None:
        scale = upscale_factor(height, min_height)
    if scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale}")
    fh, fw = height * scale, width * scale
    header = GLYPH_H * text_px + 2 * text_px
    header += header % 2
    y = header + border
    x_sample = border
    x_truth = fw + 2 * border + gap + border
    h_total = y + fh + border
    w_total = x_truth + fw + border
    size = (h_total + h_total % 2, w_total + w_total % 2)
    panels = {"sample": (y, x_sample, fh, fw), "truth": (y, x_truth, fh, fw)}
    return Layout(scale=scale, border=border, header=header, size=size, panels=panels)


def side_by_side(sample: np.ndarray, truth: np.ndarray, num_cond: int, *, scale: int | None = None,
                 min_height: int = 128, border: int = 2, gap: int = 4, text_px: int = 2,
                 title: str | None = None) -> np.ndarray:
    """Renders one clip as uint8 `[T, H', W', 3]`: panels `[sample | truth]` under a header bar.

    `sample` and `truth` are uint8 `[T, H, W, C]` (C = 1 or 3); the first `num_cond` frames are
    conditioning frames. Borders: green (GIVEN) around the sample panel for t < num_cond, red
    (PRED) for t >= num_cond; blue (TRUTH) around the truth panel, green while the frame is a
    conditioning frame. The header shows "t/T" and GIVEN or PRED over the sample panel and TRUTH
    (or `title`) over the truth panel. Frames are upscaled (nearest neighbour) as in `clip_layout`;
    H' and W' are even.
    """
    sample = _as_rgb(sample, "sample")
    truth = _as_rgb(truth, "truth")
    if sample.ndim != 4 or sample.shape != truth.shape:
        raise ValueError(f"sample and truth must both be [T, H, W, C] of the same shape, got "
                         f"{sample.shape} and {truth.shape}")
    t_len, h, w, _ = sample.shape
    num_cond = int(num_cond)
    if not 0 <= num_cond <= t_len:
        raise ValueError(f"num_cond must be in [0, {t_len}], got {num_cond}")
    lay = clip_layout(h, w, scale=scale, min_height=min_height, border=border, gap=gap, text_px=text_px)
    out = np.empty((t_len,) + lay.size + (3,), np.uint8)
    out[...] = np.asarray(BACKGROUND, np.uint8)
    for name, frames in (("sample", sample), ("truth", truth)):
        y, x, fh, fw = lay.panels[name]
        out[:, y:y + fh, x:x + fw] = upscale(frames, lay.scale)
    pad = text_px
    for t in range(t_len):
        given = t < num_cond
        _, xs, _, fw = lay.panels["sample"]
        _fill_border(out[t], *lay.panels["sample"], border, GIVEN if given else PRED)
        _fill_border(out[t], *lay.panels["truth"], border, GIVEN if given else TRUTH)
        counter = f"{t + 1}/{t_len}"
        draw_text(out[t], counter, pad, xs, px=text_px)
        tag = "GIVEN" if given else "PRED"
        tag_w = text_size(tag, text_px)[1]
        counter_w = text_size(counter, text_px)[1]
        tag_x = max(xs + fw - tag_w, xs + counter_w + 2 * text_px)
        draw_text(out[t], tag, pad, tag_x, color=GIVEN if given else PRED, px=text_px)
        _, xt, _, _ = lay.panels["truth"]
        draw_text(out[t], title if title is not None else "TRUTH", pad, xt, px=text_px)
    return out


# ------------------------------------------------------------------------------------------------
# Tiling.


def grid(videos: Sequence[np.ndarray], *, cols: int | None = None, gap: int = 8,
         background=BACKGROUND) -> np.ndarray:
    """Tiles rendered clips (each uint8 `[T_i, H_i, W_i, 3]`) into one video, row by row.

    Cells are as large as the largest clip (smaller clips sit top-left); the video is as long as
    the longest clip and shorter clips hold their last frame. `cols` defaults to ceil(sqrt(n)).
    `gap` pixels of background separate the cells and surround the grid. Sizes are even.
    """
    videos = [_as_rgb(v, "video") for v in videos]
    if not videos:
        raise ValueError("grid needs at least one video")
    videos = [v[None] if v.ndim == 3 else v for v in videos]
    if any(v.ndim != 4 for v in videos):
        raise ValueError(f"grid takes [T, H, W, 3] videos, got shapes {[v.shape for v in videos]}")
    n = len(videos)
    cols = max(1, min(int(cols or math.ceil(math.sqrt(n))), n))
    rows = math.ceil(n / cols)
    t_len = max(v.shape[0] for v in videos)
    ch = max(v.shape[1] for v in videos)
    cw = max(v.shape[2] for v in videos)
    out = np.empty((t_len, gap + rows * (ch + gap), gap + cols * (cw + gap), 3), np.uint8)
    out[...] = np.asarray(background, np.uint8)
    for i, v in enumerate(videos):
        r, c = divmod(i, cols)
        y, x = gap + r * (ch + gap), gap + c * (cw + gap)
        idx = np.minimum(np.arange(t_len), v.shape[0] - 1)
        out[:, y:y + v.shape[1], x:x + v.shape[2]] = v[idx]
    return _pad_even(out, background)


_tile = grid  # render_npz's `grid` flag shadows the function inside it


def image_grid(images: np.ndarray, *, labels: Iterable | None = None, cols: int | None = None,
               scale: int | None = None, min_height: int = 128, gap: int = 8,
               text_px: int = 2) -> np.ndarray:
    """Tiles images (uint8 `[N, H, W, C]` or `[N, 1, H, W, C]`) into one uint8 `[H', W', 3]` picture.

    Images are upscaled (nearest neighbour) to at least `min_height` pixels unless `scale` is
    given. With `labels` (ints or strings, one per image) each image gets its label as a caption
    in a bar below it.
    """
    images = _as_rgb(images, "images")
    if images.ndim == 5:
        if images.shape[1] != 1:
            raise ValueError(f"image_grid takes [N, H, W, C] or [N, 1, H, W, C], got {images.shape}")
        images = images[:, 0]
    if images.ndim != 4:
        raise ValueError(f"image_grid takes [N, H, W, C] or [N, 1, H, W, C], got {images.shape}")
    n, h, w, _ = images.shape
    if scale is None:
        scale = upscale_factor(h, min_height)
    big = upscale(images, scale)
    if labels is not None:
        labels = [_label_text(v) for v in labels]
        if len(labels) != n:
            raise ValueError(f"got {len(labels)} labels for {n} images")
        bar = GLYPH_H * text_px + 2 * text_px
        cells = np.empty((n, h * scale + bar, w * scale, 3), np.uint8)
        cells[...] = np.asarray(BACKGROUND, np.uint8)
        cells[:, :h * scale] = big
        for i, text in enumerate(labels):
            draw_text(cells[i], text, h * scale + text_px, 0, px=text_px)
        big = cells
    return grid(list(big[:, None]), cols=cols, gap=gap)[0]


def _label_text(value) -> str:
    """A caption for a label: integers (also integral floats) as digits, strings as they are."""
    if isinstance(value, (str, bytes)):
        return value.decode() if isinstance(value, bytes) else value
    v = np.asarray(value)
    if v.dtype.kind == "f" and float(v) == int(v):
        return str(int(v))
    return str(v.item() if v.ndim == 0 else v)


# ------------------------------------------------------------------------------------------------
# Writing files.


def write_video(path, frames: np.ndarray, fps: float = DEFAULT_FPS, fmt: str | None = None, *,
                crf: int = DEFAULT_CRF) -> pathlib.Path:
    """Writes uint8 `[T, H, W, 3]` frames and returns the path written.

    `fmt` (default: from the suffix of `path`) is one of:
      * "mp4": H.264, yuv420p, constant quality `crf` (0 = lossless luma). Odd sizes are padded to
        even. Plays in browsers and common players; decord reads it.
      * "gif": animated GIF (PIL, 256-colour palette), looping, 1/fps seconds a frame. GIF stores
        delays in 1/100 s, and PIL merges consecutive identical frames into one.
      * "png": one PNG with the frames side by side from left to right (width T * W).
    The file suffix is set to match `fmt`.
    """
    from PIL import Image

    frames = _as_rgb(frames, "frames")
    if frames.ndim == 3:
        frames = frames[None]
    if frames.ndim != 4 or frames.shape[0] == 0:
        raise ValueError(f"frames must be [T, H, W, 3] with T >= 1, got {frames.shape}")
    path = pathlib.Path(path)
    fmt = (fmt or path.suffix.lstrip(".")).lower()
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    path = path.with_suffix("." + fmt)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "mp4":
        from sid2video.data import video_io

        video_io.write_mp4(path, _pad_even(frames), fps=fps, crf=crf, pix_fmt="yuv420p")
    elif fmt == "gif":
        pics = [Image.fromarray(f) for f in frames]
        pics[0].save(path, save_all=True, append_images=pics[1:], duration=max(10, round(1000 / fps)),
                     loop=0, optimize=False)
    else:
        t, h, w, _ = frames.shape
        strip = frames.transpose(1, 0, 2, 3).reshape(h, t * w, 3)
        Image.fromarray(np.ascontiguousarray(strip)).save(path)
    return path


def write_png(path, image: np.ndarray) -> pathlib.Path:
    """Writes one uint8 `[H, W, 3]` image as PNG and returns the path."""
    from PIL import Image

    path = pathlib.Path(path).with_suffix(".png")
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_as_rgb(image, "image")).save(path)
    return path


# ------------------------------------------------------------------------------------------------
# Rendering a samples .npz.


def load_npz(npz_path) -> dict:
    """Reads and checks a samples file written by `sid2video sample`."""
    npz_path = pathlib.Path(npz_path)
    if not npz_path.is_file():
        raise FileNotFoundError(f"no samples file {npz_path}")
    with np.load(npz_path, allow_pickle=False) as data:
        missing = [k for k in ("sample", "truth") if k not in data.files]
        if missing:
            raise ValueError(f"{npz_path} lacks {', '.join(missing)} (has {', '.join(data.files)}); "
                             "expected a file written by `sid2video sample`")
        out = {k: np.asarray(data[k]) for k in data.files}
    sample, truth = out["sample"], out["truth"]
    if sample.ndim == 4:  # images without a time axis
        sample, truth = sample[:, None], truth[:, None]
    if sample.ndim != 5 or sample.shape != truth.shape:
        raise ValueError(f"{npz_path}: sample and truth must be [B, T, H, W, C] of one shape, got "
                         f"{out['sample'].shape} and {out['truth'].shape}")
    out["sample"], out["truth"] = _as_rgb(sample, "sample"), _as_rgb(truth, "truth")
    out["num_cond"] = int(np.asarray(out.get("num_cond", 0)))
    if "label" in out and len(out["label"]) != len(sample):
        raise ValueError(f"{npz_path}: {len(out['label'])} labels for {len(sample)} samples")
    return out


def render_npz(npz_path, out_dir, *, fmt: Sequence[str] | str = ("mp4",), fps: float = DEFAULT_FPS,
               per_clip: bool = True, grid: bool = True, max_clips: int | None = None,
               max_grid: int = 16, crf: int = DEFAULT_CRF, min_height: int = 128,
               scale: int | None = None) -> list[pathlib.Path]:
    """Renders a samples .npz into `out_dir`; returns the paths written.

    Videos (T > 1): for every format in `fmt`, `<stem>_clip<i>.<fmt>` per clip (`per_clip`) and
    `<stem>_grid.<fmt>` with the first `max_grid` clips tiled (`grid`), each clip drawn by
    `side_by_side`. Images (T = 1) always become PNGs, whatever `fmt` says:
    `<stem>_samples.png` and `<stem>_truth.png` grids captioned with the labels (`grid`) and
    `<stem>_image<i>.png` per sample (`per_clip`). `max_clips` limits how many samples are used.
    """
    fmts = [fmt] if isinstance(fmt, str) else list(fmt)
    fmts = [f.strip().lower() for f in fmts if f.strip()]
    bad = [f for f in fmts if f not in FORMATS]
    if bad or not fmts:
        raise ValueError(f"formats must be among {', '.join(FORMATS)}, got {fmts}")
    data = load_npz(npz_path)
    sample, truth, num_cond = data["sample"], data["truth"], data["num_cond"]
    labels = data.get("label")
    if max_clips is not None:
        sample, truth = sample[:max_clips], truth[:max_clips]
        labels = None if labels is None else labels[:max_clips]
    stem = pathlib.Path(npz_path).stem
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[pathlib.Path] = []
    if sample.shape[1] == 1:
        if grid:
            grid_labels = None if labels is None else labels[:max_grid]
            for name, images in (("samples", sample), ("truth", truth)):
                img = image_grid(images[:max_grid], labels=grid_labels, scale=scale, min_height=min_height)
                written.append(write_png(out_dir / f"{stem}_{name}.png", img))
        if per_clip:
            for i in range(len(sample)):
                img = image_grid(sample[i:i + 1], labels=None if labels is None else labels[i:i + 1],
                                 scale=scale, min_height=min_height, gap=0)
                written.append(write_png(out_dir / f"{stem}_image{i:03d}.png", img))
        return written
    clips = [side_by_side(s, t, num_cond, scale=scale, min_height=min_height) for s, t in zip(sample, truth)]
    for f in fmts:
        if per_clip:
            for i, clip in enumerate(clips):
                written.append(write_video(out_dir / f"{stem}_clip{i:03d}.{f}", clip, fps, f, crf=crf))
        if grid:
            written.append(write_video(out_dir / f"{stem}_grid.{f}", _tile(clips[:max_grid]), fps, f,
                                       crf=crf))
    return written


def latest_npz(workdir) -> pathlib.Path | None:
    """WORKDIR/samples/step_N.npz with the largest N, or None."""
    best = None
    for p in (pathlib.Path(workdir) / "samples").glob("step_*.npz"):
        m = re.fullmatch(r"step_(\d+)\.npz", p.name)
        if m and (best is None or int(m.group(1)) > best[0]):
            best = (int(m.group(1)), p)
    return None if best is None else best[1]


def run(argv: list[str]) -> int:
    """`sid2video render --workdir DIR [--checkpoint N] [--out DIR] [--format mp4,gif,png] [--fps 8]`
    or `sid2video render --npz FILE [--out DIR] ...`."""
    parser = flags.Parser(
        prog="sid2video render",
        description="Render samples written by `sid2video sample` as MP4 / GIF / PNG: the prediction "
                    "beside the ground truth, conditioning frames framed in green, predicted frames "
                    "in red, ground truth in blue.")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--workdir", help="run directory; renders WORKDIR/samples/step_N.npz")
    src.add_argument("--npz", help="a samples .npz to render")
    parser.add_argument("--checkpoint", type=int, default=None,
                        help="step N of WORKDIR/samples/step_N.npz (default: the latest)")
    parser.add_argument("--out", default=None,
                        help="output directory (default: WORKDIR/renders, or renders/ beside --npz)")
    parser.add_argument("--format", default="mp4", help="comma-separated among mp4,gif,png (default mp4)")
    parser.add_argument("--fps", type=float, default=DEFAULT_FPS, help="frames per second (default 8)")
    parser.add_argument("--crf", type=int, default=DEFAULT_CRF, help="H.264 quality, 0 = best (default 12)")
    parser.add_argument("--max_clips", type=int, default=None, help="render only the first N samples")
    parser.add_argument("--no_grid", action="store_true", help="skip the grid of all clips")
    parser.add_argument("--no_per_clip", action="store_true", help="skip the per-clip files")
    args = parser.parse_args(argv)

    if args.npz is not None:
        if args.checkpoint is not None:
            parser.error("--checkpoint goes with --workdir, not --npz")
        npz = pathlib.Path(args.npz)
        if not npz.is_file():
            print(f"sid2video render: no samples file {npz}", file=sys.stderr)
            return 2
        out = pathlib.Path(args.out) if args.out else npz.parent / "renders"
    else:
        workdir = pathlib.Path(args.workdir)
        if args.checkpoint is not None:
            npz = workdir / "samples" / f"step_{args.checkpoint}.npz"
            make = f"sid2video sample --workdir {workdir} --checkpoint {args.checkpoint}"
        else:
            npz = latest_npz(workdir) or workdir / "samples" / "step_*.npz"
            make = f"sid2video sample --workdir {workdir}"
        if not npz.is_file():
            print(f"sid2video render: no samples file {npz}; write it first with `{make}`",
                  file=sys.stderr)
            return 2
        out = pathlib.Path(args.out) if args.out else workdir / "renders"
    formats = [f.strip().lower() for f in args.format.split(",") if f.strip()]
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        parser.error(f"--format takes a comma-separated list among {','.join(FORMATS)}, got {args.format!r}")
    try:
        paths = render_npz(npz, out, fmt=formats, fps=args.fps, per_clip=not args.no_per_clip,
                           grid=not args.no_grid, max_clips=args.max_clips, crf=args.crf)
    except ValueError as err:
        print(f"sid2video render: {err}", file=sys.stderr)
        return 2
    print(f"rendered {npz} into {out}: {len(paths)} file(s)")
    for p in paths:
        print(f"  {p}")
    return 0
