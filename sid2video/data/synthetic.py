"""Embedded datasets written as real files, deterministic from a seed.

Moving digits: the 8x8 handwritten digits bundled with scikit-learn (`load_digits`), upscaled,
coloured and bouncing inside the frame, saved as H.264 MP4s in the Kinetics600 layout that
`kinetics.py` reads unchanged:

    <root>/annotations/{split}.csv              label,youtube_id,time_start,time_end,split
    <root>/{split}/<label>/<id>_<start:06d>_<end:06d>.mp4
    <root>/ground_truth/{split}.json            per clip: digit classes, colours, positions

Positions are the integer top-left corners `(y, x)` of each digit's `digit_size` square in every
frame, so a test or a metric can find each digit in the decoded frames.

Digit images: the same digits as PNGs in the image-folder layout `<root>/{split}/<class>/<n>.png`.

Both writers are `sid2video prepare moving_digits --out DIR` / `sid2video prepare digit_images
--out DIR` (`add_commands`, `run_command`). They write every file under a temporary name and
rename it when complete, and write the completion marker last (files.py); the readers refuse a
folder whose marker says incomplete, naming the command that finishes it.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import csv
import dataclasses
import json
import math
import os
import pathlib
import shlex
from typing import Mapping, Sequence

import numpy as np

from sid2video.data import files, video_io

# Saturated colours for the digits; black background.
PALETTE = np.array(
    [
        [255, 255, 255],
        [255, 80, 80],
        [80, 255, 80],
        [90, 140, 255],
        [255, 230, 60],
        [255, 90, 255],
        [60, 235, 235],
    ],
    dtype=np.float32,
)

# write_digit_images: the digit's side is drawn from [lo, hi] × the image side.
DIGIT_SCALE = (0.5, 1.0)

# Disjoint pools of the 1797 bundled digits per split, so held-out clips show unseen handwriting.
_POOLS = {"train": (0, 1200), "val": (1200, 1500), "test": (1500, 1797)}


def label_name(digit: int) -> str:
    """Class name of a digit as written in the annotation CSVs ("digit 3")."""
    return f"digit {int(digit)}"


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits  # pylint: disable=import-outside-toplevel

    data = load_digits()
    return data.images.astype(np.float32) / 16.0, data.target.astype(np.int64)


def _pool(split: str, n_total: int) -> tuple[int, int]:
    lo, hi = _POOLS.get(split, (0, n_total))
    return lo, min(hi, n_total)


def upscale(digit_8x8: np.ndarray, size: int) -> np.ndarray:
    """A digit (float in [0, 1]) resized bilinearly to `size x size`."""
    from PIL import Image  # pylint: disable=import-outside-toplevel

    img = Image.fromarray(np.asarray(digit_8x8, np.float32), mode="F")
    out = np.asarray(img.resize((size, size), Image.BILINEAR), dtype=np.float32)
    return np.clip(out, 0.0, 1.0)


def bounce(start: int, velocity: int, limit: int, num_steps: int) -> np.ndarray:
    """Integer positions of a point moving at `velocity` px/frame and reflecting off [0, limit]."""
    pos, vel = int(start), int(velocity)
    out = np.empty(num_steps, np.int64)
    for t in range(num_steps):
        out[t] = pos
        pos += vel
        if limit == 0:
            pos, vel = 0, 0
        # Reflect as often as needed (a speed above the free space reflects more than once).
        while pos < 0 or pos > limit:
            if pos < 0:
                pos, vel = -pos, -vel
            if pos > limit:
                pos, vel = 2 * limit - pos, -vel
    return out


def render(templates: list[np.ndarray], colors: np.ndarray, top_left: np.ndarray, height: int, width: int) -> np.ndarray:
    """Frames `[T, H, W, 3]` uint8 with each digit composited (per-channel max) at `top_left[t, k]`."""
    num_frames = top_left.shape[0]
    frames = np.zeros((num_frames, height, width, 3), np.float32)
    for k, (tmpl, color) in enumerate(zip(templates, colors)):
        s = tmpl.shape[0]
        patch = tmpl[:, :, None] * np.asarray(color, np.float32)[None, None, :]
        for t in range(num_frames):
            y, x = top_left[t, k]
            region = frames[t, y : y + s, x : x + s]
            np.maximum(region, patch, out=region)
    return np.clip(np.rint(frames), 0, 255).astype(np.uint8)


@dataclasses.dataclass(frozen=True)
class MovingDigitsConfig:
    """Sizes of the moving-digits dataset; the defaults suit the demo (a few hundred small clips)."""

    num_frames: int = 32
    height: int = 64
    width: int = 64
    digit_size: int = 24
    num_digits: int = 2
    max_speed: int = 3
    fps: float = 8.0
    crf: int = 0
    pix_fmt: str = "yuv444p"


def write_moving_digits(
    root: str | pathlib.Path,
    *,
    seed: int = 0,
    counts: Mapping[str, int] | None = None,
    config: MovingDigitsConfig | None = None,
    progress: bool = True,
    workers: int | None = None,
    **overrides,
) -> dict:
    """Writes the moving-digits video dataset under `root`; returns its description.

    counts: clips per split, default {"train": 256, "val": 32, "test": 64}.
    Keyword overrides replace fields of `config` (num_frames=..., height=..., ...).
    The same seed and sizes give the same clips; clip `i` of a split depends only on
    (seed, split, i), so a larger count extends a smaller one. `workers` clips are encoded at
    once (default: one per CPU).
    """
    cfg = dataclasses.replace(config or MovingDigitsConfig(), **overrides)
    counts = dict(counts or {"train": 256, "val": 32, "test": 64})
    if cfg.digit_size > min(cfg.height, cfg.width):
        raise ValueError(f"digit_size={cfg.digit_size} does not fit a {cfg.height}x{cfg.width} frame")
    root = pathlib.Path(root)
    root.mkdir(parents=True, exist_ok=True)
    files.begin(root, _moving_digits_command(root, seed, counts, cfg))
    images, targets = _digits()
    split_ids = {name: i for i, name in enumerate(["train", "val", "test"])}
    duration = int(math.ceil(cfg.num_frames / cfg.fps))
    total = sum(counts.values())
    bar = _progress(total, "moving digits", progress)

    def make_clip(split: str, i: int):
        lo, hi = _pool(split, len(images))
        rng = np.random.default_rng([seed, split_ids.get(split, 3 + len(split)), i])
        samples = rng.integers(lo, hi, size=cfg.num_digits)
        classes = [int(targets[s]) for s in samples]
        colors = PALETTE[rng.choice(len(PALETTE), size=cfg.num_digits, replace=cfg.num_digits > len(PALETTE))]
        limit_y, limit_x = cfg.height - cfg.digit_size, cfg.width - cfg.digit_size
        top_left = np.zeros((cfg.num_frames, cfg.num_digits, 2), np.int64)
        speeds = [v for v in range(-cfg.max_speed, cfg.max_speed + 1) if v != 0] or [0]
        for k in range(cfg.num_digits):
            vy, vx = rng.choice(speeds, size=2)
            top_left[:, k, 0] = bounce(rng.integers(0, limit_y + 1), vy, limit_y, cfg.num_frames)
            top_left[:, k, 1] = bounce(rng.integers(0, limit_x + 1), vx, limit_x, cfg.num_frames)
        templates = [upscale(images[s], cfg.digit_size) for s in samples]
        frames = render(templates, colors, top_left, cfg.height, cfg.width)
        youtube_id = f"md{split[:1]}{seed % 1000:03d}{i:06d}"
        label = label_name(classes[0])
        key = f"{youtube_id}_{0:06d}_{duration:06d}"
        path = root / split / label.replace(" ", "_") / f"{key}.mp4"
        video_io.write_mp4(path, frames, fps=cfg.fps, crf=cfg.crf, pix_fmt=cfg.pix_fmt)
        truth = {
            "label": label,
            "digits": [
                {
                    "class": classes[k],
                    "sample": int(samples[k]),
                    "color": [int(c) for c in colors[k]],
                    "top_left": top_left[:, k].tolist(),
                }
                for k in range(cfg.num_digits)
            ],
        }
        return [label, youtube_id, 0, duration, split], key, truth

    # Clips are independent: encode several at once (each ffmpeg is its own process).
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, workers or os.cpu_count() or 1)) as pool:
        for split, count in counts.items():
            rows, truth = [], {}
            for row, key, clip_truth in pool.map(lambda i, split=split: make_clip(split, i), range(count)):
                rows.append(row)
                truth[key] = clip_truth
                bar.update(1)
            _write_annotations(root / "annotations" / f"{split}.csv", rows)
            meta = dataclasses.asdict(cfg) | {"seed": seed, "split": split, "position": "top-left (y, x) of the digit square"}
            files.write_json_atomic(root / "ground_truth" / f"{split}.json", {"meta": meta, "clips": truth})
    bar.close()
    files.finish(root)
    return {"root": str(root), "counts": counts, "config": dataclasses.asdict(cfg), "seed": seed}


def _write_annotations(path: pathlib.Path, rows: Sequence[list]) -> None:
    """A Kinetics annotation CSV, written under a temporary name and renamed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = files.part_path(path)
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["label", "youtube_id", "time_start", "time_end", "split"])
        writer.writerows(rows)
    os.replace(tmp, path)


def load_ground_truth(root: str | pathlib.Path, split: str) -> dict:
    """The saved ground truth of a split: {"meta": {...}, "clips": {key: {...}}}."""
    return json.loads((pathlib.Path(root) / "ground_truth" / f"{split}.json").read_text())


def write_digit_images(
    root: str | pathlib.Path,
    *,
    seed: int = 0,
    counts: Mapping[str, int] | None = None,
    size: int = 32,
    scale: tuple[float, float] = DIGIT_SCALE,
    progress: bool = True,
) -> dict:
    """Writes labelled digit PNGs (RGB, `size x size`) as `<root>/{split}/digit_<d>/<n>.png`.

    Each image holds one coloured digit at a random position, its side drawn uniformly from
    the whole pixels in [scale[0] · size, scale[1] · size] (default half to full frame;
    `scale=(1, 1)`: every digit fills the frame, like MNIST's centred digits).
    counts: images per split, default {"train": 500, "val": 100}.
    """
    from PIL import Image  # pylint: disable=import-outside-toplevel

    counts = dict(counts or {"train": 500, "val": 100})
    lo_side, hi_side = digit_sides(size, scale)
    root = pathlib.Path(root)
    root.mkdir(parents=True, exist_ok=True)
    files.begin(root, _digit_images_command(root, seed, counts, size, scale))
    images, targets = _digits()
    bar = _progress(sum(counts.values()), "digit images", progress)
    split_ids = {name: i for i, name in enumerate(["train", "val", "test"])}
    for split, count in counts.items():
        lo, hi = _pool(split, len(images))
        for i in range(count):
            rng = np.random.default_rng([seed, 100 + split_ids.get(split, 3 + len(split)), i])
            s = int(rng.integers(lo, hi))
            side = int(rng.integers(lo_side, hi_side + 1))
            y, x = (int(v) for v in rng.integers(0, size - side + 1, size=2))
            color = PALETTE[rng.integers(len(PALETTE))]
            frame = render([upscale(images[s], side)], color[None], np.array([[[y, x]]]), size, size)[0]
            path = root / split / f"digit_{int(targets[s])}" / f"{i:06d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = files.part_path(path)
            Image.fromarray(frame).save(tmp)
            os.replace(tmp, path)
            bar.update(1)
    bar.close()
    files.finish(root)
    return {"root": str(root), "counts": counts, "size": size, "seed": seed, "scale": tuple(scale)}


def digit_sides(size: int, scale: Sequence[float]) -> tuple[int, int]:
    """The smallest and largest digit side in pixels for `scale` = (lo, hi), fractions of `size`."""
    try:
        lo, hi = (float(v) for v in scale)
    except (TypeError, ValueError):
        raise ValueError(f"digit scale={scale!r} must be two numbers (lo, hi) with 0 < lo <= hi <= 1") from None
    if not 0 < lo <= hi <= 1:
        raise ValueError(f"digit scale=({lo:g}, {hi:g}) must satisfy 0 < lo <= hi <= 1 (fractions of the "
                         f"image side; (1, 1) fills the frame)")
    lo_side, hi_side = int(math.floor(lo * size)), int(math.floor(hi * size))
    if lo_side < 1:
        raise ValueError(f"digit scale lo={lo:g} of a {size}-pixel image is under one pixel; raise it")
    return lo_side, hi_side


def pattern_frames(video_number: int, num_frames: int, height: int, width: int) -> np.ndarray:
    """A test pattern whose pixels say where they come from: red = 8 t + 3 (frame t < 32), green =
    8 v + 3 (video v < 32), blue = 6 x + 3 (column x < 42). Survives crops, flips and lossless
    coding; `pattern_decode` reads it back."""
    if num_frames > 32 or video_number >= 32 or width > 42:
        raise ValueError("pattern_frames encodes at most 32 frames, 32 videos and 42 columns")
    frames = np.empty((num_frames, height, width, 3), np.uint8)
    frames[..., 0] = (8 * np.arange(num_frames) + 3)[:, None, None]
    frames[..., 1] = 8 * video_number + 3
    frames[..., 2] = (6 * np.arange(width) + 3)[None, None, :]
    return frames


def pattern_decode(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(frame index per frame, video number per frame, column of every x) of pattern frames."""
    frames = np.asarray(frames, np.float32)
    t = np.rint((frames[..., 0].mean(axis=(-1, -2)) - 3) / 8).astype(int)
    v = np.rint((frames[..., 1].mean(axis=(-1, -2)) - 3) / 8).astype(int)
    x = np.rint((frames[..., 2].mean(axis=-2) - 3) / 6).astype(int)
    return t, v, x


def write_pattern_videos(root: str | pathlib.Path, videos: list[dict], *, fps: float = 10.0) -> list[pathlib.Path]:
    """Writes pattern videos in the Kinetics layout; each dict has split, label, num_frames and
    optionally height (32), width (40). Returns the paths; annotation CSVs are written per split."""
    root = pathlib.Path(root)
    rows: dict[str, list] = {}
    paths = []
    for v, spec in enumerate(videos):
        frames = pattern_frames(v, spec["num_frames"], spec.get("height", 32), spec.get("width", 40))
        youtube_id = f"pattern{v:04d}"
        end = int(math.ceil(spec["num_frames"] / fps))
        path = root / spec["split"] / spec["label"].replace(" ", "_") / f"{youtube_id}_{0:06d}_{end:06d}.mp4"
        video_io.write_mp4(path, frames, fps=fps, preset="medium")
        rows.setdefault(spec["split"], []).append([spec["label"], youtube_id, 0, end, spec["split"]])
        paths.append(path)
    for split, split_rows in rows.items():
        _write_annotations(root / "annotations" / f"{split}.csv", split_rows)
    return paths


def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm  # pylint: disable=import-outside-toplevel

    return tqdm(total=total, desc=desc, unit="file", disable=not enabled, dynamic_ncols=True)


# --------------------------------------------------------------------------------------------
# `sid2video prepare moving_digits` and `sid2video prepare digit_images`

_MD_FLAGS = {"num_frames": "--num_frames", "height": "--height", "width": "--width",
             "digit_size": "--digit_size", "num_digits": "--num_digits"}


def _command(what: str, root: pathlib.Path, seed: int, counts: Mapping[str, int], flags: dict,
             splits: Sequence[str], expressible: bool, call: str) -> str:
    """The command that writes this dataset again: the CLI when its flags can say it, else the call."""
    if not expressible or set(counts) != set(splits):
        return call
    argv = ["sid2video", "prepare", what, "--out", str(root), "--seed", str(seed)]
    argv += [x for split in splits for x in (f"--{split}", str(counts[split]))]
    argv += [x for flag, value in flags.items() for x in (flag, str(value))]
    return shlex.join(argv)


def _moving_digits_command(root: pathlib.Path, seed: int, counts: Mapping[str, int],
                           cfg: MovingDigitsConfig) -> str:
    fields = dataclasses.asdict(cfg)
    default = dataclasses.asdict(MovingDigitsConfig())
    expressible = all(fields[k] == default[k] for k in fields if k not in _MD_FLAGS)
    changed = {k: v for k, v in fields.items() if v != default[k]}
    call = (f"sid2video.data.synthetic.write_moving_digits({str(root)!r}, seed={seed}, counts={dict(counts)!r}"
            + "".join(f", {k}={v!r}" for k, v in changed.items()) + ")")
    return _command("moving_digits", root, seed, counts, {_MD_FLAGS[k]: fields[k] for k in _MD_FLAGS},
                    ("train", "val", "test"), expressible, call)


def _digit_images_command(root: pathlib.Path, seed: int, counts: Mapping[str, int], size: int,
                          scale: Sequence[float] = DIGIT_SCALE) -> str:
    lo, hi = (float(v) for v in scale)
    flags, extra = {"--size": size}, ""
    if (lo, hi) != DIGIT_SCALE:
        flags.update({"--min_scale": lo, "--max_scale": hi})
        extra = f", scale={(lo, hi)!r}"
    call = (f"sid2video.data.synthetic.write_digit_images({str(root)!r}, seed={seed}, counts={dict(counts)!r}, "
            f"size={size}{extra})")
    return _command("digit_images", root, seed, counts, flags, ("train", "val"), True, call)


def add_commands(sub) -> None:
    """Adds the `moving_digits` and `digit_images` subcommands to `sid2video prepare`'s parser."""
    md = sub.add_parser("moving_digits", help="write the embedded moving-digits MP4 dataset (Kinetics layout)")
    md.add_argument("--out", required=True)
    md.add_argument("--seed", type=int, default=0)
    md.add_argument("--train", type=int, default=256)
    md.add_argument("--val", type=int, default=32)
    md.add_argument("--test", type=int, default=64)
    md.add_argument("--num_frames", type=int, default=32)
    md.add_argument("--height", type=int, default=64)
    md.add_argument("--width", type=int, default=64)
    md.add_argument("--digit_size", type=int, default=24)
    md.add_argument("--num_digits", type=int, default=2)
    md.add_argument("--no_progress", action="store_true")

    di = sub.add_parser("digit_images", help="write the embedded digit PNGs (class folders)")
    di.add_argument("--out", required=True)
    di.add_argument("--seed", type=int, default=0)
    di.add_argument("--train", type=int, default=500)
    di.add_argument("--val", type=int, default=100)
    di.add_argument("--size", type=int, default=32)
    di.add_argument("--min_scale", type=float, default=DIGIT_SCALE[0],
                    help="smallest digit side as a fraction of the image side (default %(default)s)")
    di.add_argument("--max_scale", type=float, default=DIGIT_SCALE[1],
                    help="largest digit side as a fraction of the image side (default %(default)s)")
    di.add_argument("--no_progress", action="store_true")


def run_command(args: argparse.Namespace) -> str:
    """Runs `moving_digits` or `digit_images` from parsed arguments; returns the folder written."""
    if args.what == "moving_digits":
        write_moving_digits(
            args.out, seed=args.seed, counts={"train": args.train, "val": args.val, "test": args.test},
            num_frames=args.num_frames, height=args.height, width=args.width, digit_size=args.digit_size,
            num_digits=args.num_digits, progress=not args.no_progress,
        )
    else:
        write_digit_images(args.out, seed=args.seed, counts={"train": args.train, "val": args.val},
                           size=args.size, scale=(args.min_scale, args.max_scale), progress=not args.no_progress)
    return args.out
