"""Reading datasets written by `sid2video prepare` (TFDS array_record folders).

    <data_dir>/<name>/<version>/dataset_info.json, features.json        (TFDS reads these)
    <data_dir>/<name>/<version>/<name>-<split>.array_record-NNNNN-of-NNNNN
    <data_dir>/<name>/<version>/sid2video_index-<split>.json            metadata of every record
    <data_dir>/<name>/<version>/sid2video_prepared.json                 the completion marker

A version folder whose completion marker says incomplete (an interrupted or unfinished prepare) is
refused, naming the command that finishes it (files.py); TFDS's own datasets carry no marker and
are read as they are.
"""

from __future__ import annotations

import json
import os
import pathlib
import threading
from typing import Sequence

from sid2video.data import files, kinetics

VERSION = "1.0.0"
INDEX_FILE = "sid2video_index-{split}.json"

# Serializes the first use of TFDS in a process: its lazy imports deadlock when two of grain's
# reader threads trigger them at the same time.
TFDS_LOCK = threading.Lock()


def tfds():
    """tensorflow_datasets, imported on first use."""
    import tensorflow_datasets  # pylint: disable=import-outside-toplevel

    return tensorflow_datasets


def _version_key(d: pathlib.Path) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in d.name.split("."))
    except ValueError:
        return (-1,)


def find_prepared(data_dir: str | os.PathLike, name: str) -> pathlib.Path | None:
    """The newest `<data_dir>/<name>/<version>` holding a dataset, or None.

    A version counts when it holds dataset_info.json or the completion marker; an unfinished one
    (marker incomplete) raises IncompleteDatasetError rather than falling back to an older one.
    """
    base = pathlib.Path(data_dir) / name
    if not base.is_dir():
        return None
    versions = [d for d in base.iterdir()
                if (d / "dataset_info.json").exists() or (d / files.MARKER).exists()]
    if not versions:
        return None
    newest = max(versions, key=_version_key)
    files.require_complete(newest)
    return newest


def load_prepared_index(version_dir: str | os.PathLike, split: str) -> kinetics.VideoIndex:
    """The sidecar index of a prepared split (metadata of every record, without reading bytes)."""
    version_dir = pathlib.Path(version_dir)
    files.require_complete(version_dir)
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
                    builder = tfds().builder_from_directory(self._dir)
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
