"""The resumable, sharded writer of TFDS array_record datasets (the converters' common part).

A split's items are cut into shards up front; each shard is written under a temporary name
(`.incomplete`) and renamed when complete, and the manifest `sid2video_prepare-<split>.json`
(rewritten atomically after every shard) lists the finished ones, so an interrupted run continues
with the first unfinished shard. If the source files changed since the manifest was written, the
writer stops and asks for `--restart`. `finish` writes the sidecar indexes and
`dataset_info.json` over the finished splits; the converters then write the completion marker
(files.py), last of all.

Output, readable with `tfds.builder_from_directory(...)` / `tfds.data_source(name,
data_dir=OUT)` without TensorFlow: see prepared.py.
"""

from __future__ import annotations

import concurrent.futures
import json
import math
import os
import pathlib
from typing import Callable, Sequence

from sid2video.data import files, prepared, skips

MANIFEST_FILE = "sid2video_prepare-{split}.json"

# encode(item) -> (serialized record, index entry, None), or (None, {"path": ...} or None, reason).
Encoder = Callable[[pathlib.Path], tuple]


def _array_record_writer(path: str):
    from array_record.python import array_record_module  # pylint: disable=import-outside-toplevel

    # group_size:1 makes every record individually addressable (fast random access).
    return array_record_module.ArrayRecordWriter(path, "group_size:1")


def _shard_name(name: str, split: str, shard: int, num_shards: int) -> str:
    return f"{name}-{split}.array_record-{shard:05d}-of-{num_shards:05d}"


def _open_manifest(out_dir: pathlib.Path, name: str, split: str, fingerprint: str, num_shards: int,
                   restart: bool) -> dict:
    """The manifest of an interrupted run of the same sources, or a fresh one (old shards deleted)."""
    manifest_path = out_dir / MANIFEST_FILE.format(split=split)
    if manifest_path.exists() and not restart:
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("fingerprint") != fingerprint or manifest.get("num_shards") != num_shards:
            raise RuntimeError(
                f"{manifest_path} was written for a different set of source files (they changed "
                "since the interrupted run). Run again with --restart to prepare the split anew."
            )
        return manifest
    manifest = {"fingerprint": fingerprint, "num_shards": num_shards, "complete": False, "shards": {}}
    for stale in out_dir.glob(f"{name}-{split}.array_record-*"):
        stale.unlink()
    files.write_json_atomic(manifest_path, manifest)
    return manifest


def _write_shard(path: pathlib.Path, chunk: Sequence[pathlib.Path], encoded, bar) -> dict:
    """Writes one shard under a temporary name and renames it; returns its manifest entry."""
    tmp = path.with_name(path.name + ".incomplete")
    writer = _array_record_writer(str(tmp))
    entries, skipped, num_bytes = [], [], 0
    try:
        for item, (record, entry, reason) in zip(chunk, encoded):
            if record is None:
                skipped.append({"path": str(entry["path"]) if entry else str(item), "reason": reason})
                skips.log_skip_once(str(item), reason)
            else:
                writer.write(record)
                entries.append(entry)
                num_bytes += len(record)
            bar.update(1)
    finally:
        writer.close()
    os.replace(tmp, path)
    return {"entries": entries, "skipped": skipped, "num_bytes": num_bytes}


def write_split(
    *,
    out_dir: pathlib.Path,
    name: str,
    split: str,
    items: Sequence[pathlib.Path],
    fingerprint: str,
    items_per_shard: int,
    encode: Encoder,
    workers: int,
    restart: bool,
    progress: bool,
    extra: dict,
    stop_after_shards: int | None = None,
) -> dict:
    """Writes `items` as shards, resumable; returns the manifest (`complete` when every shard is).

    stop_after_shards: write at most this many new shards, then return (simulates an interruption).
    """
    from tqdm import tqdm  # pylint: disable=import-outside-toplevel

    out_dir.mkdir(parents=True, exist_ok=True)
    num_shards = max(1, math.ceil(len(items) / items_per_shard))
    manifest = _open_manifest(out_dir, name, split, fingerprint, num_shards, restart)
    manifest_path = out_dir / MANIFEST_FILE.format(split=split)
    done = manifest["shards"]
    done_items = sum(len(items[int(s) * items_per_shard : (int(s) + 1) * items_per_shard]) for s in done)
    bar = tqdm(total=len(items), initial=done_items, desc=f"prepare {name}/{split}", unit="file", disable=not progress)
    written_now = 0
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for shard in range(num_shards):
            if str(shard) in done:
                continue
            if stop_after_shards is not None and written_now >= stop_after_shards:
                break
            chunk = items[shard * items_per_shard : (shard + 1) * items_per_shard]
            path = out_dir / _shard_name(name, split, shard, num_shards)
            done[str(shard)] = _write_shard(path, chunk, pool.map(encode, chunk), bar)
            files.write_json_atomic(manifest_path, manifest)
            written_now += 1
    bar.close()
    manifest["complete"] = len(done) == num_shards
    manifest.update(extra)
    files.write_json_atomic(manifest_path, manifest)
    return manifest


def finish(out_dir: pathlib.Path, name: str, features, description: str, metadata: dict,
           version: str = prepared.VERSION) -> None:
    """Writes the sidecar indexes and dataset_info.json over every finished split."""
    tfds = prepared.tfds()
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
        files.write_json_atomic(
            out_dir / prepared.INDEX_FILE.format(split=split),
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
