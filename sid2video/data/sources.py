"""Per-dataset sources: config.data resolved into a random-access source, its decoder and its skips.

`make_source` picks the reader for `config.data.dataset` and `format`: a prepared array_record
dataset (prepared.py, images.py's tfds source) when there is one, else the folder (kinetics.py's
index, images.py's folder scan). A `Source` pairs the records with the per-record transform
(clip_decoder.ClipDecoder for video, images.ImageDecoder for images) that the grain pipeline
(pipeline.py) maps over them. The evaluation split's name and size are answered here too.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, Mapping

from sid2video.data import clip_decoder, images, kinetics, prepared, skips

VIDEO_DATASETS = ("kinetics600", "moving_digits", "video_folder")
IMAGE_DATASETS = ("imagenet2012", "image_folder", "digits")
FORMATS = ("auto", "folder", "prepared")


def setting(cfg: Any, key: str, default: Any = None) -> Any:
    """`cfg[key]` of a dict, an ml_collections.ConfigDict or an object, else `default`."""
    if cfg is None:
        return default
    if isinstance(cfg, Mapping):
        return cfg.get(key, default)
    try:
        return cfg.get(key, default)  # ml_collections.ConfigDict
    except AttributeError:
        return getattr(cfg, key, default)


@dataclasses.dataclass
class Source:
    """A random-access source, the per-record transform, and what was skipped while indexing."""

    name: str
    kind: str  # "video" | "image"
    source: Any
    decoder: Any
    class_names: list[str]
    skipped: list[dict]
    description: str


def dataset_name(data_cfg: Any) -> str | None:
    """config.data.dataset."""
    return setting(data_cfg, "dataset", None)


def random_flip(data_cfg: Any) -> bool:
    """config.data.random_flip (default True): whether training mirrors images and clips."""
    flip = setting(data_cfg, "random_flip", True)
    if not isinstance(flip, bool):
        raise ValueError(f"config.data.random_flip={flip!r} is invalid: must be True or False")
    return flip


def make_source(data_cfg: Any, *, split: str, train: bool) -> Source:
    """Resolves config.data into a source for `split`.

    Keys read: dataset, data_dir, format ('auto': the prepared array_record dataset when there is
    one, else the folder), tfds_name, resolution, num_frames, frame_stride, decode_threads, cache_mb,
    random_flip, cache_dir, progress. A dataset whose writer did not finish is refused
    (files.IncompleteDatasetError, naming the command that finishes it).
    """
    dataset = dataset_name(data_cfg)
    data_dir = setting(data_cfg, "data_dir")
    fmt = setting(data_cfg, "format", "auto") or "auto"
    if dataset not in VIDEO_DATASETS + IMAGE_DATASETS:
        raise ValueError(
            f"config.data.dataset={dataset!r} is not supported; choose one of {VIDEO_DATASETS + IMAGE_DATASETS}"
        )
    if not data_dir:
        raise ValueError(f"config.data.data_dir={data_dir!r}: set it to the folder holding the dataset")
    if fmt not in FORMATS:
        raise ValueError(f"config.data.format={fmt!r} is not supported; choose one of {FORMATS}")
    size = clip_decoder.as_size(setting(data_cfg, "resolution", 128))
    tfds_name = setting(data_cfg, "tfds_name", None) or dataset
    prepared_dir = prepared.find_prepared(data_dir, tfds_name) if fmt != "folder" else None
    if fmt == "prepared" and prepared_dir is None:
        raise FileNotFoundError(
            f"config.data.format='prepared' but no {data_dir}/{tfds_name}/<version>/dataset_info.json; "
            "run `sid2video prepare` first"
        )
    if dataset in VIDEO_DATASETS:
        return _video_source(data_cfg, dataset, split, train, size, prepared_dir)
    return _image_source(data_dir, dataset, tfds_name, split, train, size, prepared_dir, random_flip(data_cfg))


def _video_source(data_cfg: Any, dataset: str, split: str, train: bool, size: tuple[int, int],
                  prepared_dir: pathlib.Path | None) -> Source:
    """Clips of the usable videos of `split`: from the prepared dataset, else the folder index."""
    data_dir = setting(data_cfg, "data_dir")
    spec = clip_decoder.ClipSpec(int(setting(data_cfg, "num_frames", 16)), int(setting(data_cfg, "frame_stride", 1)))
    decoder = clip_decoder.ClipDecoder(spec, size, train, int(setting(data_cfg, "decode_threads", 1)),
                                       float(setting(data_cfg, "cache_mb", 0) or 0), random_flip(data_cfg))
    if prepared_dir is not None:
        index = prepared.load_prepared_index(prepared_dir, split)
        entries, skipped = index.usable(spec)
        source = prepared.PreparedSource(prepared_dir, split, entries)
        where = f"{prepared_dir} (array_record)"
    else:
        index = kinetics.build_index(
            data_dir,
            split,
            cache_dir=setting(data_cfg, "cache_dir", None),
            progress=bool(setting(data_cfg, "progress", True)),
        )
        entries, skipped = index.usable(spec)
        source = kinetics.FolderClipSource(index, entries)
        where = f"{data_dir}/{split} (folder)"
    if not entries:
        raise ValueError(
            f"no usable videos in {where}: {len(index.entries)} readable, {len(skipped)} skipped "
            f"(a clip needs {spec.span} frames; config.data.num_frames={spec.num_frames}, "
            f"frame_stride={spec.frame_stride})"
        )
    return Source(dataset, "video", source, decoder, index.class_names, skipped,
                  f"{dataset}/{split}: {len(entries)} videos from {where}")


def _image_source(data_dir: str, dataset: str, tfds_name: str, split: str, train: bool, size: tuple[int, int],
                  prepared_dir: pathlib.Path | None, flip: bool = True) -> Source:
    """The images of `split`: from the prepared (tfds) dataset, else the `<split>/<class>/` folders."""
    decoder = images.ImageDecoder(size, train, flip)
    if prepared_dir is not None:
        source = images.TfdsImageSource(tfds_name, split, data_dir)
        names = source.class_names()
        return Source(dataset, "image", source, decoder, names, [],
                      f"{dataset}/{split}: {len(source)} images from {prepared_dir} (array_record)")
    names, entries, skipped = images.index_image_folder(data_dir, split)
    for s in skipped:
        skips.log_skip_once(s["path"], s["reason"])
    if not entries:
        raise ValueError(f"no images found in {images.image_folder_root(data_dir, split)} (config.data.data_dir)")
    return Source(dataset, "image", images.ImageFolderSource(entries), decoder, names, skipped,
                  f"{dataset}/{split}: {len(entries)} images from {images.image_folder_root(data_dir, split)}")


def default_eval_split(dataset: str) -> str:
    return "validation" if dataset == "imagenet2012" else "val"


def eval_split(data_cfg: Any) -> str:
    """The evaluation split: config.data.eval_split, else val (validation for imagenet2012)."""
    return setting(data_cfg, "eval_split", None) or default_eval_split(dataset_name(data_cfg))


def split_size(data_cfg: Any, split: str) -> int:
    """How many records (clips or images) `split` has, as the evaluation iterator counts them."""
    return len(make_source(data_cfg, split=split, train=False).source)


__all__ = [
    "VIDEO_DATASETS", "IMAGE_DATASETS", "FORMATS", "setting", "Source", "dataset_name", "make_source",
    "default_eval_split", "eval_split", "split_size",
]
