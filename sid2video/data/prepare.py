"""Folders -> TFDS array_record datasets, and reading them back.

`sid2video prepare kinetics600 --src DIR --out DIR [--split train]` stores each video's MP4
bytes with its metadata as one record, so training reads a few large files instead of hundreds of
thousands of small ones, and decodes the bytes with decord inside grain's workers.

Output, readable with `tfds.builder_from_directory(...)` / `tfds.data_source(name,
data_dir=OUT)` without TensorFlow:

    OUT/<name>/1.0.0/dataset_info.json, features.json, metadata.json
    OUT/<name>/1.0.0/<name>-<split>.array_record-00000-of-000NN     (tf.train.Example records)
    OUT/<name>/1.0.0/sid2video_index-<split>.json   metadata of every record (no bytes) and the
                                                   files that were skipped, with reasons
    OUT/<name>/1.0.0/sid2video_prepare-<split>.json  the resume manifest

Features of a video record: video (MP4 bytes), label (int64, -1 if unknown), label_name, id
(`<youtube_id>_<start>_<end>`), num_frames, fps, height, width, source_path.

Resuming: the split's file list is cut into shards up front; each shard is written under a
temporary name and renamed when complete, and the manifest (rewritten atomically after every
shard) lists the finished ones, so an interrupted run continues with the first unfinished shard.
`dataset_info.json` is written only when every shard of a split exists, so a half-prepared
split is never read. If the source folder changed since the manifest was written, prepare stops
and asks for `--restart`.

`sid2video prepare index --src DIR` builds the cached folder index ahead of a multi-host run
(so that hosts do not all probe every video at start-up).
`sid2video prepare image_folder --src DIR --out DIR --name NAME` does the same for
`<class>/<image>` folders with ImageNet's features (image bytes, label, file_name), and
`sid2video prepare moving_digits --out DIR` / `digit_images --out DIR` write the embedded
datasets (synthetic.py).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import io
import json
import logging
import math
import os
import pathlib
import sys
import threading
from typing import Any, Callable, Sequence

import numpy as np

from sid2video import flags
from sid2video.data import kinetics, video_io

log = logging.getLogger(__name__)

VERSION = "1.0.0"
INDEX_FILE = "sid2video_index-{split}.json"
MANIFEST_FILE = "sid2video_prepare-{split}.json"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".JPEG")


# Serializes the first use of TFDS in a process: its lazy imports deadlock when two of grain's
# reader threads trigger them at the same time.
TFDS_LOCK = threading.Lock()


def _tfds():
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

    return tfds


def _array_record_writer(path: str):
    from array_record.python import array_record_module  # pylint: disable=import-outside-toplevel

    # group_size:1 makes every record individually addressable (fast random access).
    return array_record_module.ArrayRecordWriter(path, "group_size:1")


def video_features():
    tfds = _tfds()
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


def image_features(class_names: Sequence[str], encoding_format: str = "jpeg"):
    tfds = _tfds()
    return tfds.features.FeaturesDict(
        {
            "image": tfds.features.Image(shape=(None, None, 3), encoding_format=encoding_format),
            "label": tfds.features.ClassLabel(names=list(class_names)),
            "file_name": tfds.features.Text(),
        }
    )


def _write_json_atomic(path: pathlib.Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj))
    os.replace(tmp, path)


def _shard_name(name: str, split: str, shard: int, num_shards: int) -> str:
    return f"{name}-{split}.array_record-{shard:05d}-of-{num_shards:05d}"


# --------------------------------------------------------------------------------------------
# The generic sharded writer


def _write_split(
    *,
    out_dir: pathlib.Path,
    name: str,
    split: str,
    items: Sequence[pathlib.Path],
    fingerprint: str,
    items_per_shard: int,
    encode: Callable[[pathlib.Path], tuple[bytes | None, dict | None, str | None]],
    workers: int,
    restart: bool,
    progress: bool,
    extra: dict,
    stop_after_shards: int | None = None,
) -> dict:
    """Writes `items` as shards, resumable; returns the finished manifest.

    encode(item) -> (serialized record, index entry, None) or (None, None, reason) for a skip.
    """
    from tqdm import tqdm  # pylint: disable=import-outside-toplevel

    out_dir.mkdir(parents=True, exist_ok=True)
    num_shards = max(1, math.ceil(len(items) / items_per_shard))
    manifest_path = out_dir / MANIFEST_FILE.format(split=split)
    manifest = None
    if manifest_path.exists() and not restart:
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("fingerprint") != fingerprint or manifest.get("num_shards") != num_shards:
            raise RuntimeError(
                f"{manifest_path} was written for a different set of source files (they changed "
                "since the interrupted run). Run again with --restart to prepare the split anew."
            )
    if manifest is None:
        manifest = {"fingerprint": fingerprint, "num_shards": num_shards, "complete": False, "shards": {}}
        for stale in out_dir.glob(f"{name}-{split}.array_record-*"):
            stale.unlink()
        _write_json_atomic(manifest_path, manifest)

    done = manifest["shards"]
    done_items = sum(len(items[int(s) * items_per_shard : (int(s) + 1) * items_per_shard]) for s in done)
    bar = tqdm(total=len(items), initial=done_items, desc=f"prepare {name}/{split}", unit="file", disable=not progress)
    written_now = 0
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for shard in range(num_shards):
            if str(shard) in done:
                continue
            if stop_after_shards is not None and written_now >= stop_after_shards:
                break  # for tests: an interruption between shards
            chunk = items[shard * items_per_shard : (shard + 1) * items_per_shard]
            final = out_dir / _shard_name(name, split, shard, num_shards)
            tmp = final.with_name(final.name + ".incomplete")
            writer = _array_record_writer(str(tmp))
            entries, skipped, num_bytes = [], [], 0
            try:
                for item, (record, entry, reason) in zip(chunk, pool.map(encode, chunk)):
                    if record is None:
                        skipped.append({"path": str(entry["path"]) if entry else str(item), "reason": reason})
                        kinetics.log_skip_once(str(item), reason)
                    else:
                        writer.write(record)
                        entries.append(entry)
                        num_bytes += len(record)
                    bar.update(1)
            finally:
                writer.close()
            os.replace(tmp, final)
            done[str(shard)] = {"entries": entries, "skipped": skipped, "num_bytes": num_bytes}
            _write_json_atomic(manifest_path, manifest)
            written_now += 1
    bar.close()
    manifest["complete"] = len(done) == num_shards
    manifest.update(extra)
    _write_json_atomic(manifest_path, manifest)
    return manifest


def _finish(out_dir: pathlib.Path, name: str, features, description: str, metadata: dict,
            version: str = VERSION) -> None:
    """Writes the sidecar indexes and dataset_info.json over every finished split."""
    tfds = _tfds()
    splits = []
    for manifest_path in sorted(out_dir.glob(MANIFEST_FILE.format(split="*"))):
        manifest = json.loads(manifest_path.read_text())
        if not manifest.get("complete"):
            continue
        split = manifest_path.name[len("sid2video_prepare-") : -len(".json")]
        shards = [manifest["shards"][str(s)] for s in range(manifest["num_shards"])]
        entries, skipped = [], []
        for s in shards:
            for e in s["entries"]:
                entries.append(dict(e, record=len(entries)))
            skipped += s["skipped"]
        index_path = out_dir / INDEX_FILE.format(split=split)
        _write_json_atomic(
            index_path,
            {"class_names": manifest.get("class_names", []), "entries": entries, "unreadable": skipped,
             "source": manifest.get("source", "")},
        )
        template = tfds.core.ShardedFileTemplate(
            data_dir=out_dir, dataset_name=name, split=split, filetype_suffix="array_record"
        )
        splits.append(
            tfds.core.SplitInfo(
                name=split,
                shard_lengths=[len(s["entries"]) for s in shards],
                num_bytes=sum(s["num_bytes"] for s in shards),
                filename_template=template,
            )
        )
    if not splits:
        return
    identity = tfds.core.DatasetIdentity(name=name, version=version, data_dir=str(out_dir), module_name="sid2video.data.prepare")
    info = tfds.core.DatasetInfo(
        builder=identity,
        description=description,
        features=features,
        metadata=tfds.core.MetadataDict(metadata),
    )
    info.set_splits(tfds.core.SplitDict(splits))
    info.set_file_format("array_record")
    info.write_to_directory(out_dir)


# --------------------------------------------------------------------------------------------
# Videos (Kinetics layout)


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
    """
    src = pathlib.Path(src)
    out_dir = pathlib.Path(out) / name / VERSION
    if splits is None:
        splits = [s for s in ("train", "val", "validation", "test") if (src / s).is_dir()]
        if not splits:
            raise FileNotFoundError(f"--src {src}: no train/val/test folders found")
    features = video_features()
    tfds = _tfds()
    for split in splits:
        split_dir = src / split
        if not split_dir.is_dir():
            raise FileNotFoundError(f"--split {split}: no folder {split_dir}")
        files = kinetics._scan(split_dir)  # pylint: disable=protected-access
        labels = kinetics.LabelMap(src, split)
        fp = kinetics.fingerprint(files + kinetics.annotation_files(src), src)

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

        manifest = _write_split(
            out_dir=out_dir,
            name=name,
            split=split,
            items=files,
            fingerprint=fp,
            items_per_shard=videos_per_shard,
            encode=encode,
            workers=workers,
            restart=restart,
            progress=progress,
            extra={"class_names": labels.class_names, "source": str(src.resolve())},
            stop_after_shards=stop_after_shards,
        )
        if not manifest["complete"]:
            log.warning("%s/%s: %d of %d shards written; run again to resume", name, split,
                        len(manifest["shards"]), manifest["num_shards"])
    _finish(
        out_dir,
        name,
        features,
        description=f"{name}: one record per video (MP4 bytes and metadata), prepared by sid2video.",
        metadata={"class_names": kinetics.LabelMap(src, splits[0]).class_names, "source": str(src.resolve())},
    )
    del tfds
    return out_dir


# --------------------------------------------------------------------------------------------
# Image folders


def scan_image_folder(split_dir: pathlib.Path) -> tuple[list[str], list[tuple[pathlib.Path, int]]]:
    """(sorted class folder names, [(image path, class id)] sorted by path) of `<class>/<image>`."""
    classes = sorted(d.name for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith("."))
    items = []
    for i, c in enumerate(classes):
        for p in sorted((split_dir / c).rglob("*")):
            if p.suffix.lower() in {e.lower() for e in IMAGE_EXTENSIONS} and p.is_file():
                items.append((p, i))
    return classes, items


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
    version: str = VERSION,
) -> pathlib.Path:
    """Writes `<src>/<split>/<class>/<image>` as a TFDS dataset with ImageNet's features.

    The class list is the union of the class folders of all splits. Image bytes are stored as they are
    (JPEG or PNG); unreadable images are skipped and listed in the index.
    """
    from PIL import Image  # pylint: disable=import-outside-toplevel

    src = pathlib.Path(src)
    out_dir = pathlib.Path(out) / name / version
    if splits is None:
        splits = sorted(d.name for d in src.iterdir() if d.is_dir() and not d.name.startswith("."))
    from sid2video.data import images  # pylint: disable=import-outside-toplevel

    classes = images.class_folders(src, splits[0])
    _, first = scan_image_folder(src / splits[0])
    png = bool(first) and first[0][0].suffix.lower() == ".png"
    features = image_features(classes, "png" if png else "jpeg")
    for split in splits:
        _, items = scan_image_folder(src / split)
        ids = {c: i for i, c in enumerate(classes)}
        paths = [p for p, _ in items]

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

        fp = kinetics.fingerprint(paths, src)
        _write_split(
            out_dir=out_dir,
            name=name,
            split=split,
            items=paths,
            fingerprint=fp,
            items_per_shard=images_per_shard,
            encode=encode,
            workers=workers,
            restart=restart,
            progress=progress,
            extra={"class_names": classes, "source": str(src.resolve())},
        )
    _finish(
        out_dir,
        name,
        features,
        description=f"{name}: images from {src} (class folders), prepared by sid2video.",
        metadata={"class_names": classes, "source": str(src.resolve())},
        version=version,
    )
    return out_dir


# --------------------------------------------------------------------------------------------
# Reading prepared datasets


def find_prepared(data_dir: str | os.PathLike, name: str) -> pathlib.Path | None:
    """The newest `<data_dir>/<name>/<version>` holding a dataset_info.json, or None."""
    base = pathlib.Path(data_dir) / name
    if not base.is_dir():
        return None
    versions = [d for d in base.iterdir() if (d / "dataset_info.json").exists()]
    if not versions:
        return None

    def key(d: pathlib.Path):
        try:
            return tuple(int(x) for x in d.name.split("."))
        except ValueError:
            return (-1,)

    return max(versions, key=key)


def load_prepared_index(version_dir: str | os.PathLike, split: str) -> kinetics.VideoIndex:
    """The sidecar index of a prepared split (metadata of every record, without reading bytes)."""
    version_dir = pathlib.Path(version_dir)
    path = version_dir / INDEX_FILE.format(split=split)
    if not path.exists():
        raise FileNotFoundError(
            f"data.split={split!r}: {path} not found; prepared splits: "
            f"{sorted(p.name[len('sid2video_index-'):-5] for p in version_dir.glob('sid2video_index-*.json'))}"
        )
    data = json.loads(path.read_text())
    return kinetics.VideoIndex(
        root=data.get("source") or str(version_dir),  # where `path`s point (for messages)
        split=split,
        class_names=data["class_names"],
        entries=data["entries"],
        unreadable=data["unreadable"],
        cache_path=str(path),
    )


class PreparedSource:
    """Random access to chosen records of a prepared split, merged with their index entries.

    The TFDS data source is opened lazily in each process (grain workers receive this object
    pickled, without open file handles).
    """

    def __init__(self, version_dir: str | os.PathLike, split: str, entries: Sequence[dict], *, decoders=None):
        self._dir = str(version_dir)
        self._split = split
        self._entries = [dict(e) for e in entries]
        self._decoders = decoders
        self._source = None

    def _open(self):
        if self._source is None:
            with TFDS_LOCK:
                if self._source is None:
                    builder = _tfds().builder_from_directory(self._dir)
                    self._source = builder.as_data_source(split=self._split, decoders=self._decoders)
        return self._source

    def __len__(self) -> int:
        return len(self._entries)

    def __getitem__(self, i: int) -> dict:
        entry = self._entries[int(i)]
        record = self._open()[int(entry["record"])]
        out = dict(entry)
        out["video"] = record["video"]
        out["index"] = int(i)
        return out

    @property
    def keys(self) -> list[str]:
        return [e["key"] for e in self._entries]

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_source"] = None
        return state

    def __repr__(self) -> str:
        return f"PreparedSource({self._dir!r}, {self._split!r}, {len(self)} records)"


# --------------------------------------------------------------------------------------------
# The command


def _parser() -> argparse.ArgumentParser:
    p = flags.Parser(prog="sid2video prepare", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="what", required=True)

    k = sub.add_parser("kinetics600", help="Kinetics-layout video folders -> array_record (MP4 bytes per video)")
    k.add_argument("--src", required=True, help="root holding train/ val/ test/ and annotations/")
    k.add_argument("--out", required=True, help="TFDS data_dir to write <name>/1.0.0 into")
    k.add_argument("--split", action="append", help="split to prepare (repeatable); default: all found")
    k.add_argument("--name", default="kinetics600", help="dataset name (default kinetics600)")
    k.add_argument("--videos_per_shard", type=int, default=256)
    k.add_argument("--workers", type=int, default=4, help="threads reading and probing videos")
    k.add_argument("--restart", action="store_true", help="discard an interrupted run's shards")
    k.add_argument("--no_progress", action="store_true")

    ix = sub.add_parser("index", help="build (or refresh) the cached folder index of a Kinetics-layout split")
    ix.add_argument("--src", required=True)
    ix.add_argument("--split", action="append", help="default: all of train/val/test found")
    ix.add_argument("--cache_dir", default=None, help="where to cache it when --src is read-only")
    ix.add_argument("--workers", type=int, default=None, help="threads probing videos")
    ix.add_argument("--refresh", action="store_true")
    ix.add_argument("--no_progress", action="store_true")

    im = sub.add_parser("image_folder", help="<split>/<class>/<image> folders -> array_record")
    im.add_argument("--src", required=True)
    im.add_argument("--out", required=True)
    im.add_argument("--name", required=True, help="dataset name, e.g. imagenet2012 or digits")
    im.add_argument("--split", action="append")
    im.add_argument("--version", default=VERSION)
    im.add_argument("--images_per_shard", type=int, default=1024)
    im.add_argument("--workers", type=int, default=4)
    im.add_argument("--restart", action="store_true")
    im.add_argument("--no_progress", action="store_true")

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
    di.add_argument("--no_progress", action="store_true")
    return p


def run(argv: Sequence[str] | None = None) -> int:
    """Entry point of `sid2video prepare ...` (argv: the arguments after `prepare`)."""
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    progress = not args.no_progress
    if args.what == "kinetics600":
        out = prepare_videos(
            args.src, args.out, splits=args.split, name=args.name, videos_per_shard=args.videos_per_shard,
            workers=args.workers, restart=args.restart, progress=progress,
        )
    elif args.what == "index":
        splits = args.split or [x for x in ("train", "val", "validation", "test") if (pathlib.Path(args.src) / x).is_dir()]
        for split in splits:
            index = kinetics.build_index(args.src, split, cache_dir=args.cache_dir, probe_workers=args.workers,
                                         refresh=args.refresh, progress=progress)
            print(f"{split}: {len(index.entries)} readable videos, {len(index.unreadable)} unreadable; "
                  f"index at {index.cache_path}")
        return 0
    elif args.what == "image_folder":
        out = prepare_image_folder(
            args.src, args.out, name=args.name, splits=args.split, images_per_shard=args.images_per_shard,
            workers=args.workers, restart=args.restart, progress=progress, version=args.version,
        )
    elif args.what == "moving_digits":
        from sid2video.data import synthetic  # pylint: disable=import-outside-toplevel

        synthetic.write_moving_digits(
            args.out, seed=args.seed, counts={"train": args.train, "val": args.val, "test": args.test},
            num_frames=args.num_frames, height=args.height, width=args.width, digit_size=args.digit_size,
            num_digits=args.num_digits, progress=progress,
        )
        out = args.out
    else:
        from sid2video.data import synthetic  # pylint: disable=import-outside-toplevel

        synthetic.write_digit_images(
            args.out, seed=args.seed, counts={"train": args.train, "val": args.val}, size=args.size, progress=progress
        )
        out = args.out
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(run())
