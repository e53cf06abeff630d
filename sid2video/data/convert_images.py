"""`<split>/<class>/<image>` folders -> a TFDS array_record dataset with ImageNet's features
(`sid2video prepare image_folder`): image bytes as they are (JPEG or PNG), label, file_name.
Unreadable images are skipped and listed, with the reason, in the split's index (prepared.py).
"""

from __future__ import annotations

import io
import os
import pathlib
import shlex
from typing import Sequence

from sid2video.data import files, images, kinetics, prepared, tfds_writer

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def image_features(class_names: Sequence[str], encoding_format: str = "jpeg"):
    """ImageNet's TFDS features: image, label (class names), file_name."""
    tfds = prepared.tfds()
    return tfds.features.FeaturesDict(
        {
            "image": tfds.features.Image(shape=(None, None, 3), encoding_format=encoding_format),
            "label": tfds.features.ClassLabel(names=list(class_names)),
            "file_name": tfds.features.Text(),
        }
    )


def scan_image_folder(split_dir: pathlib.Path) -> tuple[list[str], list[tuple[pathlib.Path, int]]]:
    """(sorted class folder names, [(image path, class id)] sorted by path) of `<class>/<image>`."""
    classes = sorted(d.name for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith("."))
    items = []
    for i, c in enumerate(classes):
        for p in sorted((split_dir / c).rglob("*")):
            if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file() and not files.is_temporary(p.name):
                items.append((p, i))
    return classes, items


def _encoder(src: pathlib.Path, split: str, features, ids: dict[str, int]):
    """encode(path) for the writer: the serialized record and index entry of one image."""
    from PIL import Image  # pylint: disable=import-outside-toplevel

    def encode(path: pathlib.Path):
        rel = path.relative_to(src).as_posix()
        cls = path.relative_to(src / split).parts[0]
        try:
            data = path.read_bytes()
            with Image.open(io.BytesIO(data)) as im:
                im.verify()
        except Exception as err:  # PIL raises many types for broken files
            return None, {"path": rel}, f"unreadable image: {type(err).__name__}: {err}"
        if cls not in ids:
            return None, {"path": rel}, f"class folder {cls!r} is not a class"
        example = {"image": io.BytesIO(data), "label": ids[cls], "file_name": path.name}
        return features.serialize_example(example), {"key": path.name, "path": rel, "label": ids[cls]}, None

    return encode


def prepare_image_folder(
    src: str | os.PathLike,
    out: str | os.PathLike,
    *,
    name: str,
    splits: Sequence[str] | None = None,
    images_per_shard: int = 1024,
    workers: int = 4,
    restart: bool = False,
    progress: bool = True,
    version: str = prepared.VERSION,
) -> pathlib.Path:
    """Writes `<src>/<split>/<class>/<image>` as `out/<name>/<version>`; returns that folder.

    The class list is the union of the class folders of all splits. The completion marker is
    written last.
    """
    src = pathlib.Path(src)
    files.require_complete(src)
    out_dir = pathlib.Path(out) / name / version
    if splits is None:
        splits = sorted(d.name for d in src.iterdir() if d.is_dir() and not d.name.startswith("."))
    command = ["sid2video", "prepare", "image_folder", "--src", str(src), "--out", str(out), "--name", name,
               "--version", version]
    for split in splits:
        command += ["--split", split]
    out_dir.mkdir(parents=True, exist_ok=True)
    files.begin(out_dir, shlex.join(command))
    classes = images.class_folders(src, splits[0])
    ids = {c: i for i, c in enumerate(classes)}
    _, first = scan_image_folder(src / splits[0])
    png = bool(first) and first[0][0].suffix.lower() == ".png"
    features = image_features(classes, "png" if png else "jpeg")
    for split in splits:
        paths = [p for p, _ in scan_image_folder(src / split)[1]]
        tfds_writer.write_split(
            out_dir=out_dir, name=name, split=split, items=paths, fingerprint=kinetics.fingerprint(paths, src),
            items_per_shard=images_per_shard, encode=_encoder(src, split, features, ids), workers=workers,
            restart=restart, progress=progress, extra={"class_names": classes, "source": str(src.resolve())},
        )
    tfds_writer.finish(
        out_dir,
        name,
        features,
        description=f"{name}: images from {src} (class folders), prepared by sid2video.",
        metadata={"class_names": classes, "source": str(src.resolve())},
        version=version,
    )
    files.finish(out_dir)
    return out_dir
