"""Generated samples given by path: .npz / .npy arrays or folders of MP4s or images.

`load_samples(path)` gives {'sample': uint8 [N, T, H, W, 3], 'truth'?, 'num_cond'?, 'source'}; the
evaluators take it as it is (`evaluators.run_all(..., loaded)`), the harness measures it against
the reference data of a data config.
"""

from __future__ import annotations

import pathlib
from typing import Any

import numpy as np

__all__ = ["load_samples", "check_against_data"]

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def load_samples(path, *, num_frames: int | None = None) -> dict[str, Any]:
    """Generated clips from a file or folder: {'sample': uint8 [N, T, H, W, 3], 'truth'?, 'num_cond'?}.

    Accepted: an .npz written by `sid2video sample` (keys sample, truth, label, num_cond) or any
    .npz with a 'sample' / 'video' / 'videos' array; an .npy array [N, T, H, W, 3] or [N, H, W, 3];
    a folder of .mp4 files (sorted by name; the first `num_frames` frames of each); a folder of
    images (sorted; [N, 1, H, W, 3]).
    """
    path = pathlib.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no generated samples at {path}")
    out: dict[str, Any] = {"source": str(path)}
    if path.is_file() and path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            names = [k for k in ("sample", "video", "videos", "samples") if k in z.files]
            if not names:
                raise ValueError(f"{path} holds {z.files}; expected an array named 'sample' (sid2video sample)")
            out["sample"] = z[names[0]]
            if "truth" in z.files:
                out["truth"] = z["truth"]
            if "num_cond" in z.files:
                out["num_cond"] = int(z["num_cond"])
    elif path.is_file() and path.suffix == ".npy":
        out["sample"] = np.load(path, allow_pickle=False)
    elif path.is_dir():
        videos = sorted(p for p in path.iterdir() if p.suffix.lower() == ".mp4")
        images = sorted(p for p in path.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
        if videos:
            from sid2video.data import video_io

            clips = []
            for p in videos:
                n = video_io.probe(p).num_frames
                if num_frames is not None and n < num_frames:
                    raise ValueError(f"{p} has {n} frames, the protocol needs {num_frames}")
                clips.append(video_io.read_frames(p, range(num_frames or n)))
            out["sample"] = np.stack(clips)
        elif images:
            from PIL import Image

            out["sample"] = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in images])[:, None]
        else:
            raise FileNotFoundError(f"{path} holds no .mp4 files and no images")
    else:
        raise ValueError(f"{path}: expected an .npz, an .npy, or a folder of MP4s / images")
    sample = np.asarray(out["sample"])
    if sample.ndim == 4:
        sample = sample[:, None]
    if sample.dtype != np.uint8 or sample.ndim != 5 or sample.shape[-1] != 3:
        raise ValueError(f"generated samples must be uint8 [N, T, H, W, 3], got {sample.dtype} {sample.shape}")
    out["sample"] = sample
    return out


def check_against_data(loaded: dict[str, Any], *, source, num_samples: int, num_frames: int,
                       resolution: Any) -> list[str]:
    """ValueError when the samples cannot be measured against the data; notes when they differ in size."""
    sample = loaded["sample"]
    if len(sample) < num_samples:
        raise ValueError(f"{source} holds {len(sample)} samples, fewer than num_samples={num_samples}")
    if num_frames > 1 and sample.shape[1] != num_frames:
        raise ValueError(f"{source} holds clips of {sample.shape[1]} frames; the reference data has {num_frames}")
    want_hw = tuple(resolution) if isinstance(resolution, (list, tuple)) else (resolution, resolution)
    if tuple(sample.shape[2:4]) != tuple(want_hw):
        return [f"the generated frames are {sample.shape[2]}×{sample.shape[3]}, the reference frames "
                f"{want_hw[0]}×{want_hw[1]}"]
    return []
