"""ImageNet through `tfds.data_source`, and plain image folders.

Images come out as uint8 `[1, H, W, 3]` (a one-frame video, so that image and video batches share
the `[B, T, H, W, C]` layout) with an int32 label. Preprocessing is ADM's (Dhariwal & Nichol
2021, also used by simple diffusion and SiD2): halve with a box filter while the image is at
least twice the target, resize bicubically so the short side matches, take the centre crop;
training adds a random horizontal flip.

Sources:
  - `imagenet2012` prepared by TFDS (`<data_dir>/imagenet2012/<version>/`), read with
    `tfds.data_source(..., decoders={"image": SkipDecoding()})` so the JPEG bytes are decoded with
    PIL in grain's workers (no TensorFlow needed);
  - any dataset with ImageNet's features written by `sid2video prepare image_folder`;
  - a folder `<data_dir>/<split>/<class>/<image>` (or `<data_dir>/<class>/<image>`).
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import pathlib
from typing import Any, Mapping, Sequence

import numpy as np

from sid2video.data import files, prepared

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"}


def adm_center_crop(image, size: tuple[int, int]) -> np.ndarray:
    """ADM's centre crop of a PIL image to `size=(height, width)`, as uint8 `[H, W, 3]`."""
    from PIL import Image  # pylint: disable=import-outside-toplevel

    th, tw = size
    image = image.convert("RGB")
    # Box-filter halving while both sides stay at least twice the target (cheap anti-aliasing).
    while image.size[0] >= 2 * tw and image.size[1] >= 2 * th:
        image = image.resize((image.size[0] // 2, image.size[1] // 2), resample=Image.BOX)
    scale = max(th / image.size[1], tw / image.size[0])
    new_w = max(tw, round(image.size[0] * scale))
    new_h = max(th, round(image.size[1] * scale))
    image = image.resize((new_w, new_h), resample=Image.BICUBIC)
    arr = np.asarray(image, dtype=np.uint8)
    y, x = (new_h - th) // 2, (new_w - tw) // 2
    return np.ascontiguousarray(arr[y : y + th, x : x + tw])


@dataclasses.dataclass(frozen=True)
class ImageDecoder:
    """Record (`image` bytes or `path`) -> {"video": uint8 [1, H, W, 3], "label": int32} (plus
    "index" for evaluation), or {"_skip": "<key>: <reason>"} for an unreadable image (counted by
    the pipeline)."""

    size: tuple[int, int]
    train: bool
    flip: bool = True  # training images mirrored left-right with probability ½ (config.data.random_flip)

    def __call__(self, record: Mapping[str, Any], rng: np.random.Generator) -> dict:
        from PIL import Image  # pylint: disable=import-outside-toplevel

        key = str(record.get("key", record.get("path", "?")))
        try:
            data = record["image"] if "image" in record else pathlib.Path(record["path"]).read_bytes()
            with Image.open(io.BytesIO(data)) as im:
                im.load()
                arr = adm_center_crop(im, self.size)
        except Exception as err:  # PIL raises many types for broken files
            return {"_skip": f"{key}: unreadable image: {type(err).__name__}: {err}"}
        if self.train and self.flip and rng.random() < 0.5:
            arr = arr[:, ::-1]
        out = {"video": np.ascontiguousarray(arr)[None], "label": np.int32(record.get("label", -1))}
        if not self.train:
            out["index"] = np.int32(record.get("index", -1))
        return out


def image_folder_root(data_dir: str | os.PathLike, split: str) -> pathlib.Path:
    """`<data_dir>/<split>` when it exists, else `<data_dir>` itself (a single split)."""
    data_dir = pathlib.Path(data_dir)
    if (data_dir / split).is_dir():
        return data_dir / split
    if data_dir.is_dir():
        return data_dir
    raise FileNotFoundError(f"data.data_dir={str(data_dir)!r} does not exist")


def class_folders(data_dir: str | os.PathLike, split: str) -> list[str]:
    """Sorted class names shared by every split: the union of the class folders of all splits
    when `<data_dir>/<split>` exists (so ids agree across splits), else `<data_dir>`'s folders."""
    data_dir = pathlib.Path(data_dir)
    roots = [image_folder_root(data_dir, split)]
    if roots[0] != data_dir:
        roots = [d for d in data_dir.iterdir() if d.is_dir() and not d.name.startswith(".")]
    return sorted({c.name for r in roots for c in r.iterdir() if c.is_dir() and not c.name.startswith(".")})


def index_image_folder(data_dir: str | os.PathLike, split: str, class_names: Sequence[str] | None = None):
    """(class names, entries, skipped) of `<class>/<image>` folders, entries sorted by path.

    Class ids are positions in `class_names` (default: `class_folders`). Images in a folder that
    is not a class are returned as skipped, with the reason. Writers' temporary files are left
    out, and a dataset whose writer did not finish is refused (files.IncompleteDatasetError).
    """
    files.require_complete(data_dir)
    root = image_folder_root(data_dir, split)
    folders = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    names = list(class_names) if class_names is not None else class_folders(data_dir, split)
    ids = {n: i for i, n in enumerate(names)}
    entries, skipped = [], []
    for folder in folders:
        for dirpath, dirnames, filenames in os.walk(root / folder):
            dirnames.sort()
            for f in sorted(filenames):
                if pathlib.Path(f).suffix.lower() not in IMAGE_EXTENSIONS or files.is_temporary(f):
                    continue
                path = pathlib.Path(dirpath) / f
                rel = path.relative_to(root).as_posix()
                if folder not in ids:
                    skipped.append({"path": rel, "reason": f"folder {folder!r} is not one of the classes"})
                    continue
                entries.append({"key": rel, "path": str(path), "label": ids[folder]})
    entries.sort(key=lambda e: e["key"])
    return names, entries, skipped


class TfdsImageSource:
    """Records of a TFDS image dataset ({"image": bytes, "label", "key"}), opened lazily per process."""

    def __init__(self, name: str, split: str, data_dir: str | os.PathLike):
        self._name, self._split, self._data_dir = name, split, str(data_dir)
        self._source = None
        self._len = len(self._open())

    def _open(self):
        if self._source is not None:
            return self._source
        with prepared.TFDS_LOCK:  # TFDS's lazy imports deadlock when two reader threads race
            if self._source is None:
                self._source = self._open_locked()
        return self._source

    def _open_locked(self):
        tfds = prepared.tfds()

        decoders = {"image": tfds.decode.SkipDecoding()}
        try:
            return tfds.data_source(
                self._name, split=self._split, data_dir=self._data_dir, download=False, decoders=decoders
            )
        except Exception as err:  # not a registered name, or its builder code disagrees
            version_dir = prepared.find_prepared(self._data_dir, self._name)
            if version_dir is None:
                raise
            logging.getLogger(__name__).info(
                "tfds.data_source(%r) failed (%s); reading %s directly", self._name, err, version_dir)
            builder = tfds.builder_from_directory(str(version_dir))
            return builder.as_data_source(split=self._split, decoders=decoders)

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, i: int) -> dict:
        rec = self._open()[int(i)]
        name = rec.get("file_name", b"")
        key = name.decode() if isinstance(name, bytes) else str(name)
        return {"image": rec["image"], "label": int(rec["label"]), "key": key or f"{self._split}[{int(i)}]",
                "index": int(i)}

    @property
    def keys(self) -> list[str]:
        return []  # known only by reading every record

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_source"] = None
        return state

    def class_names(self) -> list[str]:
        feature = self._open().dataset_info.features["label"]
        return list(getattr(feature, "names", []) or [])


class ImageFolderSource:
    """Random-access records of an image-folder index."""

    def __init__(self, entries: Sequence[dict]):
        self._entries = [dict(e) for e in entries]

    def __len__(self) -> int:
        return len(self._entries)

    def __getitem__(self, i: int) -> dict:
        return dict(self._entries[int(i)], index=int(i))

    @property
    def keys(self) -> list[str]:
        return [e["key"] for e in self._entries]
