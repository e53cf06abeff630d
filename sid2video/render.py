"""Rendering predictions for people to look at: MP4, GIF and PNG files, and `sid2video render`.

`sid2video sample` writes an .npz holding `sample` and `truth` (uint8 `[B, T, H, W, C]`), `label`
(`[B]`) and `num_cond` (the number of leading conditioning frames). `render_npz` turns it into
files a person can open, drawn by draw.py: per clip, the sample beside the ground truth
(`draw.side_by_side`: given frames framed in green, predicted frames in red, ground truth in
blue), all clips tiled (`draw.grid`), and for images (T = 1) captioned grids (`draw.image_grid`).

`write_video` encodes frames as H.264 MP4 in yuv420p (plays in browsers and common players, and
decord reads it), as an animated GIF (PIL), or as a PNG strip with the frames side by side.

`sid2video render --workdir DIR [--checkpoint N] [--out DIR] [--format mp4,gif,png] [--fps 8]`
renders WORKDIR/samples/step_N.npz (the latest one without --checkpoint); `--npz FILE` renders a
given file.
"""

from __future__ import annotations

import pathlib
import re
import sys
from typing import Sequence

import numpy as np

from sid2video import draw, flags

FORMATS = ("mp4", "gif", "png")
DEFAULT_FPS = 8.0
DEFAULT_CRF = 12  # H.264 quality for renders: near-transparent, small files for small clips

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

    frames = draw.as_rgb(frames, "frames")
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

        video_io.write_mp4(path, draw.pad_even(frames), fps=fps, crf=crf, pix_fmt="yuv420p")
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
    Image.fromarray(draw.as_rgb(image, "image")).save(path)
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
    out["sample"], out["truth"] = draw.as_rgb(sample, "sample"), draw.as_rgb(truth, "truth")
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
                img = draw.image_grid(images[:max_grid], labels=grid_labels, scale=scale, min_height=min_height)
                written.append(write_png(out_dir / f"{stem}_{name}.png", img))
        if per_clip:
            for i in range(len(sample)):
                img = draw.image_grid(sample[i:i + 1], labels=None if labels is None else labels[i:i + 1],
                                 scale=scale, min_height=min_height, gap=0)
                written.append(write_png(out_dir / f"{stem}_image{i:03d}.png", img))
        return written
    clips = [draw.side_by_side(s, t, num_cond, scale=scale, min_height=min_height) for s, t in zip(sample, truth)]
    for f in fmts:
        if per_clip:
            for i, clip in enumerate(clips):
                written.append(write_video(out_dir / f"{stem}_clip{i:03d}.{f}", clip, fps, f, crf=crf))
        if grid:
            written.append(write_video(out_dir / f"{stem}_grid.{f}", draw.grid(clips[:max_grid]), fps, f,
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
