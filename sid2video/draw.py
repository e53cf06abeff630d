"""Drawing for people to look at: text, borders, clips beside their ground truth, grids, strips.

Arrays in, arrays out (uint8 RGB); render.py writes them as MP4 / GIF / PNG files, and the
evaluation report and the trainer's sample strips draw with the same functions, so a given
(conditioning) frame has the same colour everywhere:

* `side_by_side`: one clip as video frames with two panels, `[sample | truth]`. The sample
  panel's border is GIVEN for conditioning frames and PRED for predicted ones; the truth panel's
  is TRUTH (GIVEN while the frame is a conditioning frame). A header bar above the panels carries
  the frame counter ("3/16"), the tag GIVEN or PRED, and TRUTH over the right panel; the text sits
  in the bar, outside the panels, so no pixel of a frame is covered. Small frames are upscaled
  with nearest neighbour by an integer factor until they are at least `min_height` pixels high,
  and sizes are padded to even (yuv420p).
* `grid`: rendered clips tiled into one video (shorter clips hold their last frame).
* `image_grid`: images (T = 1) tiled into one picture, each captioned with its label.
* `strip`: clips as rows of frames in one picture, each frame in a border of GIVEN or PRED.

Text is drawn with a built-in 3x5 pixel font (digits, A-Z and a little punctuation) scaled by an
integer factor, so drawing needs no font files and gives the same pixels on every machine.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Iterable, Sequence

import numpy as np

# Colours (RGB).
GIVEN = (40, 200, 70)  # conditioning frames: given to the model
PRED = (230, 70, 40)  # predicted frames
TRUTH = (60, 130, 235)  # ground-truth frames
BACKGROUND = (24, 24, 24)  # behind rendered clips and grids
PAPER = (255, 255, 255)  # behind strips (they go into reports)
TEXT = (235, 235, 235)

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


def as_rgb(frames: np.ndarray, name: str) -> np.ndarray:
    """Checks uint8 pixels with 1 or 3 channels and returns them as RGB."""
    frames = np.asarray(frames)
    if frames.dtype != np.uint8:
        raise ValueError(f"{name} must hold uint8 pixels, got {frames.dtype} (convert [-1, 1] floats "
                         "with sid2video.diffusion.conditioning.to_uint8 first)")
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


def pad_even(frames: np.ndarray, background=BACKGROUND) -> np.ndarray:
    """Pads `[..., H, W, 3]` at the bottom / right to even height and width."""
    h, w = frames.shape[-3:-1]
    ph, pw = h % 2, w % 2
    if not (ph or pw):
        return frames
    out = np.empty(frames.shape[:-3] + (h + ph, w + pw, 3), np.uint8)
    out[...] = np.asarray(background, np.uint8)
    out[..., :h, :w, :] = frames
    return out


def fill_border(canvas: np.ndarray, y: int, x: int, h: int, w: int, b: int, color) -> None:
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
    sample = as_rgb(sample, "sample")
    truth = as_rgb(truth, "truth")
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
        fill_border(out[t], *lay.panels["sample"], border, GIVEN if given else PRED)
        fill_border(out[t], *lay.panels["truth"], border, GIVEN if given else TRUTH)
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
    videos = [as_rgb(v, "video") for v in videos]
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
    return pad_even(out, background)


def image_grid(images: np.ndarray, *, labels: Iterable | None = None, cols: int | None = None,
               scale: int | None = None, min_height: int = 128, gap: int = 8,
               text_px: int = 2) -> np.ndarray:
    """Tiles images (uint8 `[N, H, W, C]` or `[N, 1, H, W, C]`) into one uint8 `[H', W', 3]` picture.

    Images are upscaled (nearest neighbour) to at least `min_height` pixels unless `scale` is
    given. With `labels` (ints or strings, one per image) each image gets its label as a caption
    in a bar below it.
    """
    images = as_rgb(images, "images")
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
        labels = [label_text(v) for v in labels]
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


def label_text(value) -> str:
    """A caption for a label: integers (also integral floats) as digits, strings as they are."""
    if isinstance(value, (str, bytes)):
        return value.decode() if isinstance(value, bytes) else value
    v = np.asarray(value)
    if v.dtype.kind == "f" and float(v) == int(v):
        return str(int(v))
    return str(v.item() if v.ndim == 0 else v)


# ------------------------------------------------------------------------------------------------
# Strips: clips as rows of frames.


def strip(rows: Sequence[np.ndarray], *, num_cond: int = 0, min_size: int = 64, group: int = 1,
          border: int = 2, gap: int = 6) -> np.ndarray:
    """One uint8 `[H', W', 3]` picture of clips as rows of frames (each uint8 `[T, H, W, C]`).

    Frames are enlarged (nearest neighbour) by the smallest integer factor that makes them at least
    `min_size` pixels on their long side, and each gets a `border`: GIVEN for the first `num_cond`
    frames, PRED for the rest (PAPER when num_cond = 0). `gap` rows of PAPER separate every
    `group` rows (e.g. group=2: truth and sample of a clip).
    """
    if not len(rows):
        raise ValueError("no clips to draw")
    t, h, w = np.asarray(rows[0]).shape[:3]
    scale = upscale_factor(max(h, w), min_size)
    colors = [PAPER if not num_cond else (GIVEN if i < num_cond else PRED) for i in range(t)]
    cell_h, cell_w = h * scale + 2 * border, w * scale + 2 * border
    lines = []
    for r, clip in enumerate(rows):
        clip = as_rgb(np.asarray(clip), "clip")
        if clip.shape[:3] != (t, h, w):
            raise ValueError(f"all clips must have shape {(t, h, w)}, got {clip.shape[:3]}")
        line = np.empty((cell_h, t * cell_w, 3), np.uint8)
        for i in range(t):
            x = i * cell_w + border
            line[:, x - border:x + w * scale + border] = np.asarray(colors[i], np.uint8)
            line[border:border + h * scale, x:x + w * scale] = upscale(clip[i], scale)
        lines.append(line)
        if group and (r + 1) % group == 0 and r + 1 < len(rows):
            lines.append(np.full((gap, line.shape[1], 3), PAPER, np.uint8))
    return np.concatenate(lines, axis=0)
