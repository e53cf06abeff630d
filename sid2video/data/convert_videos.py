"""Kinetics-layout video folders -> a TFDS array_record dataset (`sid2video prepare kinetics600`).

Each video's MP4 bytes are stored with its metadata as one record, so training reads a few large
files instead of hundreds of thousands of small ones, and decodes the bytes with decord inside
grain's workers. Features of a record: video (MP4 bytes), label (int64, -1 if unknown),
label_name, id (`<youtube_id>_<start>_<end>`), num_frames, fps, height, width, source_path.
Unreadable files are skipped and listed, with the reason, in the split's index (prepared.py).
"""

from __future__ import annotations

import logging
import os
import pathlib
import shlex
from typing import Sequence

import numpy as np

from sid2video.data import files, kinetics, prepared, tfds_writer, video_io

log = logging.getLogger(__name__)


def video_features():
    """The TFDS features of a video record."""
    tfds = prepared.tfds()
    return tfds.features.FeaturesDict(
        {
            "video": tfds.features.Tensor(shape=(), dtype=np.object_),
            "label": tfds.features.Scalar(dtype=np.int64),
            "label_name": tfds.features.Text(),
            "id": tfds.features.Text(),
            "num_frames": tfds.features.Scalar(dtype=np.int32),
            "fps": tfds.features.Scalar(dtype=np.float32),
            "height": tfds.features.Scalar(dtype=np.int32),
            "width": tfds.features.Scalar(dtype=np.int32),
            "source_path": tfds.features.Text(),
        }
    )


def _encoder(src: pathlib.Path, features, labels: kinetics.LabelMap):
    """encode(path) for the writer: the serialized record and index entry of one video."""

    def encode(path: pathlib.Path):
        rel = path.relative_to(src).as_posix()
        try:
            data = path.read_bytes()
            info = video_io.probe(data)
        except (OSError, video_io.VideoReadError) as err:
            return None, {"path": rel}, str(err)
        label, label_name = labels(path)
        example = {
            "video": data,
            "label": label,
            "label_name": label_name,
            "id": path.stem,
            "num_frames": info.num_frames,
            "fps": info.fps,
            "height": info.height,
            "width": info.width,
            "source_path": rel,
        }
        entry = kinetics.index_entry(path, rel, label, label_name, info)
        return features.serialize_example(example), entry, None

    return encode


def prepare_videos(
    src: str | os.PathLike,
    out: str | os.PathLike,
    *,
    splits: Sequence[str] | None = None,
    name: str = "kinetics600",
    videos_per_shard: int = 256,
    workers: int = 4,
    restart: bool = False,
    progress: bool = True,
    stop_after_shards: int | None = None,
) -> pathlib.Path:
    """Writes the videos of `src` (Kinetics layout) as `out/<name>/1.0.0`; returns that folder.

    splits: default every one of train/val/test (or validation) that exists under `src`.
    stop_after_shards: write at most this many new shards, then return (simulates an interruption).
    The completion marker is written last, once every shard of every split exists.
    """
    src = pathlib.Path(src)
    files.require_complete(src)
    out_dir = pathlib.Path(out) / name / prepared.VERSION
    if splits is None:
        splits = [s for s in ("train", "val", "validation", "test") if (src / s).is_dir()]
        if not splits:
            raise FileNotFoundError(f"--src {src}: no train/val/test folders found")
    command = ["sid2video", "prepare", "kinetics600", "--src", str(src), "--out", str(out), "--name", name]
    for split in splits:
        command += ["--split", split]
    out_dir.mkdir(parents=True, exist_ok=True)
    files.begin(out_dir, shlex.join(command))
    features = video_features()
    complete = True
    for split in splits:
        split_dir = src / split
        if not split_dir.is_dir():
            raise FileNotFoundError(f"--split {split}: no folder {split_dir}")
        items = kinetics.scan_videos(split_dir)
        labels = kinetics.LabelMap(src, split)
        manifest = tfds_writer.write_split(
            out_dir=out_dir, name=name, split=split, items=items,
            fingerprint=kinetics.fingerprint(items + kinetics.annotation_files(src), src),
            items_per_shard=videos_per_shard, encode=_encoder(src, features, labels), workers=workers,
            restart=restart, progress=progress,
            extra={"class_names": labels.class_names, "source": str(src.resolve())},
            stop_after_shards=stop_after_shards,
        )
        if not manifest["complete"]:
            complete = False
            log.warning("%s/%s: %d of %d shards written; run again to resume", name, split,
                        len(manifest["shards"]), manifest["num_shards"])
    tfds_writer.finish(
        out_dir,
        name,
        features,
        description=f"{name}: one record per video (MP4 bytes and metadata), prepared by sid2video.",
        metadata={"class_names": kinetics.LabelMap(src, splits[0]).class_names, "source": str(src.resolve())},
    )
    if complete:
        files.finish(out_dir)
    return out_dir
