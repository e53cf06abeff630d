"""Kinetics600 folders: labels from annotation CSVs and folders, the cached index, the clip source.

Layout read (what the public Kinetics downloaders produce):

    <root>/{train,val,test}/<label>/<youtube_id>_<start:06d>_<end:06d>.mp4
    <root>/annotations/*.csv  (or <root>/*.csv)    label,youtube_id,time_start,time_end,split

Files may also lie directly in `<root>/<split>/` (no label folders); the label then comes from the
CSVs. Class ids are positions in the sorted list of CSV label names (the folder names when there
is no CSV); a video with no known label gets -1.

The index opens every video once (frame count, frame rate, size, and a decode of the first frame)
and is cached as JSON, keyed by a fingerprint of every file's path, size and modification time,
so adding, removing or touching a file rebuilds it. Files that cannot be opened are recorded in
the index with the reason; videos too short for the requested clip are skipped when the index is
used. Each skipped file is logged once per process. `FolderClipSource` serves the usable
entries to grain; `clip_decoder.ClipDecoder` turns each into a clip.
"""

from __future__ import annotations

import concurrent.futures
import csv
import dataclasses
import hashlib
import json
import logging
import os
import pathlib
from typing import Iterable, Sequence

from sid2video.data import clip_decoder, files, skips, video_io

log = logging.getLogger(__name__)

INDEX_VERSION = 1
VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v")


# --------------------------------------------------------------------------------------------
# Annotations and labels


def normalize_label(name: str) -> str:
    """Label names as compared: folder names may use '_' where the CSVs use spaces."""
    return " ".join(name.replace("_", " ").strip().strip('"').split()).lower()


def annotation_files(root: pathlib.Path) -> list[pathlib.Path]:
    files = sorted((root / "annotations").glob("*.csv")) if (root / "annotations").is_dir() else []
    return files + sorted(root.glob("*.csv"))


def read_annotations(root: pathlib.Path) -> tuple[list[str], dict[str, str]]:
    """(sorted class names, {video key: label name}) from every annotation CSV under `root`."""
    names: set[str] = set()
    labels: dict[str, str] = {}
    for path in annotation_files(root):
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or "youtube_id" not in reader.fieldnames:
                continue
            for row in reader:
                label = (row.get("label") or "").strip()
                if not label:
                    continue
                names.add(label)
                try:
                    key = f"{row['youtube_id']}_{int(float(row['time_start'])):06d}_{int(float(row['time_end'])):06d}"
                except (KeyError, TypeError, ValueError):
                    continue
                labels[key] = label
    return sorted(names), labels


class LabelMap:
    """Label ids of the videos under `<root>/<split>`.

    Class names are the sorted label names of all annotation CSVs, or the label folders of the
    train split (else of this split) when there is none. A video's label comes from its folder
    name when that names a class, else from the CSV row of its key; otherwise it is -1.
    """

    def __init__(self, root: str | os.PathLike, split: str):
        self.root = pathlib.Path(root)
        self.split_dir = self.root / split
        self.class_names, self._csv = read_annotations(self.root)
        if not self.class_names:
            label_root = self.root / "train" if (self.root / "train").is_dir() else self.split_dir
            self.class_names = sorted(
                d.name for d in label_root.iterdir() if d.is_dir() and not d.name.startswith(".")
            )
        self._ids = {normalize_label(n): i for i, n in enumerate(self.class_names)}

    def __call__(self, path: pathlib.Path) -> tuple[int, str]:
        """(class id or -1, class name or "") of the video at `path`."""
        folder = normalize_label(path.parent.name)
        if path.parent != self.split_dir and folder in self._ids:
            i = self._ids[folder]
            return i, self.class_names[i]
        name = self._csv.get(path.stem)
        if name is not None and normalize_label(name) in self._ids:
            i = self._ids[normalize_label(name)]
            return i, self.class_names[i]
        return -1, ""


# --------------------------------------------------------------------------------------------
# The index


@dataclasses.dataclass
class VideoIndex:
    """The readable videos of one split, and the files that were skipped, with reasons.

    entries: dicts with key, path (relative to root), label, label_name, num_frames, fps, height,
    width (prepared datasets add `record`, the position in the array_record split).
    unreadable: dicts with path and reason.
    """

    root: str
    split: str
    class_names: list[str]
    entries: list[dict]
    unreadable: list[dict]
    cache_path: str | None = None

    def usable(self, spec: clip_decoder.ClipSpec, *, log_skips: bool = True) -> tuple[list[dict], list[dict]]:
        """(entries long enough for `spec`, skipped files with reasons: unreadable and too short)."""
        keep, skipped = [], [dict(s) for s in self.unreadable]
        for e in self.entries:
            if e["num_frames"] < spec.span:
                skipped.append(
                    {
                        "path": e["path"],
                        "reason": f"too short: {e['num_frames']} frames, a clip of {spec.num_frames} "
                        f"frames at stride {spec.frame_stride} needs {spec.span}",
                    }
                )
            else:
                keep.append(e)
        if log_skips:
            for s in skipped:
                skips.log_skip_once(os.path.join(self.root, s["path"]), s["reason"])
        return keep, skipped


def scan_videos(split_dir: pathlib.Path) -> list[pathlib.Path]:
    """The video files under `split_dir`, sorted (hidden files and writers' temporary names left out)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(split_dir):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if name.lower().endswith(VIDEO_EXTENSIONS) and not name.startswith(".") and not files.is_temporary(name):
                out.append(pathlib.Path(dirpath) / name)
    return sorted(out)


def fingerprint(files: Iterable[pathlib.Path], root: pathlib.Path) -> str:
    """A hash of every file's relative path, size and modification time."""
    h = hashlib.sha1(f"v{INDEX_VERSION}".encode())
    for p in files:
        st = p.stat()
        h.update(f"{p.relative_to(root).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _cache_candidates(root: pathlib.Path, split: str, cache_dir: str | os.PathLike | None) -> list[pathlib.Path]:
    digest = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:12]
    if cache_dir is not None:
        return [pathlib.Path(cache_dir) / f"index-{digest}-{split}.json"]
    name = f"index-{split}.json"
    home = pathlib.Path(os.environ.get("XDG_CACHE_HOME", pathlib.Path.home() / ".cache")) / "sid2video"
    return [root / ".sid2video" / name, home / f"index-{digest}-{split}.json"]


def _read_cache(candidates: Sequence[pathlib.Path], fp: str) -> dict | None:
    """The first cached index of `candidates` written for fingerprint `fp` (with its `cache_path`)."""
    for c in candidates:
        try:
            cached = json.loads(c.read_text())
        except (OSError, ValueError):
            continue
        if cached.get("fingerprint") == fp and cached.get("version") == INDEX_VERSION:
            return dict(cached, cache_path=str(c))
    return None


def _probe_one(path: pathlib.Path) -> tuple[video_io.VideoInfo | None, str | None]:
    try:
        return video_io.probe(path), None
    except video_io.VideoReadError as err:
        return None, str(err)
    except Exception as err:  # never let one file stop the index
        return None, f"{type(err).__name__}: {err}"


def index_entry(path: pathlib.Path, rel: str, label: int, label_name: str, info) -> dict:
    """One video's row in an index (the folder index and the prepared dataset's share it)."""
    return {
        "key": path.stem,
        "path": rel,
        "label": label,
        "label_name": label_name,
        "num_frames": info.num_frames,
        "fps": info.fps,
        "height": info.height,
        "width": info.width,
    }


def build_index(
    root: str | os.PathLike,
    split: str,
    *,
    cache_dir: str | os.PathLike | None = None,
    probe_workers: int | None = None,
    refresh: bool = False,
    progress: bool = True,
) -> VideoIndex:
    """Indexes `<root>/<split>` (cached; rebuilt when any file changes).

    The cache goes to `<root>/.sid2video/index-<split>.json`, or under `cache_dir`
    (default ~/.cache/sid2video) when `root` is not writable or `cache_dir` is given. A dataset
    whose writer did not finish is refused (files.IncompleteDatasetError).
    """
    root = pathlib.Path(root)
    files.require_complete(root)
    split_dir = root / split
    if not split_dir.is_dir():
        raise FileNotFoundError(
            f"data.split={split!r}: no folder {split_dir}; expected <data_dir>/<split>/<label>/<id>.mp4"
        )
    videos = scan_videos(split_dir)
    fp = fingerprint(videos + annotation_files(root), root)
    candidates = _cache_candidates(root, split, cache_dir)
    cached = None if refresh else _read_cache(candidates, fp)
    if cached is not None:
        return VideoIndex(str(root), split, cached["class_names"], cached["entries"], cached["unreadable"],
                          cache_path=cached["cache_path"])
    labels = LabelMap(root, split)

    entries, unreadable = [], []
    workers = probe_workers or min(8, os.cpu_count() or 1)
    from tqdm import tqdm  # pylint: disable=import-outside-toplevel

    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(_probe_one, videos)
        bar = tqdm(results, total=len(videos), desc=f"indexing {split_dir}", unit="video", disable=not progress)
        for path, (info, error) in zip(videos, bar):
            rel = path.relative_to(root).as_posix()
            if info is None:
                unreadable.append({"path": rel, "reason": error})
                continue
            label, label_name = labels(path)
            entries.append(index_entry(path, rel, label, label_name, info))
    for u in unreadable:
        skips.log_skip_once(str(root / u["path"]), u["reason"])
    index = VideoIndex(str(root), split, labels.class_names, entries, unreadable)
    payload = {
        "version": INDEX_VERSION,
        "fingerprint": fp,
        "root": str(root.resolve()),
        "split": split,
        "class_names": labels.class_names,
        "entries": entries,
        "unreadable": unreadable,
    }
    for c in candidates:
        try:
            files.write_json_atomic(c, payload)
        except OSError:
            continue
        index.cache_path = str(c)
        break
    else:
        log.warning("could not write the index cache to any of %s", [str(c) for c in candidates])
    return index


class FolderClipSource:
    """Random-access records of the usable videos of an index (grain data source)."""

    def __init__(self, index: VideoIndex, entries: Sequence[dict]):
        self._root = index.root
        self._entries = [dict(e) for e in entries]

    def __len__(self) -> int:
        return len(self._entries)

    def __getitem__(self, i: int) -> dict:
        e = dict(self._entries[int(i)])
        e["path"] = os.path.join(self._root, e["path"])
        e["index"] = int(i)
        return e

    @property
    def keys(self) -> list[str]:
        return [e["key"] for e in self._entries]

    def __repr__(self) -> str:
        return f"FolderClipSource({self._root!r}, {len(self)} videos)"
