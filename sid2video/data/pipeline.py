"""grain input pipelines: global shuffle, per-process shards, worker processes, batches, state.

    source -> shuffle(seed) -> repeat -> random_map(decode; rng from (seed, global index))
           -> [process_index::process_count] -> threads -> drop-and-count batching
           -> worker processes (mp_prefetch), or a prefetch thread without workers
           -> accounting (main process) -> batches

- Shuffling is grain's index shuffle, different in every epoch; the random crop, flip and clip
  start of a record come from an rng seeded by (seed, position in the repeated shuffled stream),
  so they depend on the record and the epoch and on nothing else (not on the worker count, not on
  the process). The shard of process p is every process_count-th element of that one global
  stream, so processes never see the same element and together see all of them.
- Batches are dicts of numpy arrays: {"video": uint8 [B, T, H, W, 3], "label": int32 [B]} (images
  have T = 1); evaluation batches add "mask": bool [B], False for the padding that fills the last
  batch, "index": int32 [B], the row's position in the split (`iterator.keys[index]` names the
  file), and for video "start": int32 [B], the clip's first frame in its video. Scaling to
  [-1, 1] is the trainer's job.
- The iterator is a grain `DatasetIterator`: `get_state()` / `set_state()` (JSON-able dicts),
  grain's Orbax `CheckpointHandler` and `start_prefetch()` work on it. A restored iterator
  continues with exactly the batches the original would have produced, given the same
  configuration and worker count (the worker count decides which batch an element lands in).

Skipped files: files that cannot be opened or are too short are found when the index is built
and counted from the index. Files that fail later, inside a worker (a decode error), come back
from the decode step as a `{"_skip": "<file>: <reason>"}` marker; the batching step (in the
worker) drops markers, fills the batch with the next good records and attaches the dropped
markers as `batch["_skipped"]`; the accounting step in the parent process pops that key, logs
each file once and counts it in `LoaderStats`. Nothing is dropped without being counted, and the
counts do not depend on shared memory between processes.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from typing import Any, Mapping, Sequence

import grain
import numpy as np

from sid2video.data import images, kinetics, prepared

log = logging.getLogger(__name__)

VIDEO_DATASETS = ("kinetics600", "moving_digits", "video_folder")
IMAGE_DATASETS = ("imagenet2012", "image_folder", "digits")
FORMATS = ("auto", "folder", "prepared")

# Consecutive undecodable records after which the loader gives up (something systematic is wrong).
MAX_CONSECUTIVE_SKIPS = 1000


def _get(cfg: Any, key: str, default: Any = None) -> Any:
    if cfg is None:
        return default
    if isinstance(cfg, Mapping):
        return cfg.get(key, default)
    try:
        return cfg.get(key, default)  # ml_collections.ConfigDict
    except AttributeError:
        return getattr(cfg, key, default)


# --------------------------------------------------------------------------------------------
# Statistics


class LoaderStats:
    """What the loader has delivered and skipped, for the trainer's logs.

    `as_dict()` gives numbers for JSONL/TensorBoard, `line()` a one-line summary. Rates cover the
    time since the previous call with `reset_window=True` (the default) and since the start.
    """

    def __init__(self, name: str, index_skipped: Sequence[Mapping[str, str]] = ()):
        self.name = name
        self.index_skipped = [dict(s) for s in index_skipped]
        self.decode_skipped: dict[str, str] = {}
        self.skip_events = 0
        self.batches = 0
        self.examples = 0
        self.padding = 0
        self.wait_s = 0.0
        self._lock = threading.Lock()
        self._start = time.perf_counter()
        self._window = (self._start, 0, 0.0)  # (time, examples, wait_s) at the last report

    def record(self, examples: int, padding: int, wait_s: float, skipped: Sequence[str]) -> None:
        with self._lock:
            self.batches += 1
            self.examples += examples
            self.padding += padding
            self.wait_s += wait_s
            for marker in skipped:
                self.skip_events += 1
                key, _, reason = str(marker).partition(": ")
                if key not in self.decode_skipped:
                    self.decode_skipped[key] = reason
                    kinetics.log_skip_once(key, reason)

    @property
    def skipped_files(self) -> int:
        return len(self.index_skipped) + len(self.decode_skipped)

    def as_dict(self, reset_window: bool = True) -> dict[str, float]:
        with self._lock:
            now = time.perf_counter()
            t0, n0, w0 = self._window
            span = max(now - t0, 1e-9)
            out = {
                "data/examples_per_s": (self.examples - n0) / span,
                "data/examples_per_s_total": self.examples / max(now - self._start, 1e-9),
                "data/wait_fraction": (self.wait_s - w0) / span,
                "data/batches": float(self.batches),
                "data/examples": float(self.examples),
                "data/skipped_files": float(self.skipped_files),
                "data/skipped_at_index": float(len(self.index_skipped)),
                "data/skipped_at_decode": float(len(self.decode_skipped)),
                "data/skip_events": float(self.skip_events),
            }
            if reset_window:
                self._window = (now, self.examples, self.wait_s)
            return out

    def line(self, reset_window: bool = True) -> str:
        d = self.as_dict(reset_window)
        return (
            f"data[{self.name}]: {d['data/examples_per_s']:.1f} clips/s "
            f"(total {d['data/examples_per_s_total']:.1f}), waited {100 * d['data/wait_fraction']:.0f}% of the time, "
            f"{int(d['data/examples'])} clips in {int(d['data/batches'])} batches, "
            f"skipped {int(d['data/skipped_files'])} files ({len(self.index_skipped)} at indexing, "
            f"{len(self.decode_skipped)} at decoding, {self.skip_events} decode skips in all)"
        )


# --------------------------------------------------------------------------------------------
# Sources


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
    return _get(data_cfg, "dataset", None)


def make_source(data_cfg: Any, *, split: str, train: bool) -> Source:
    """Resolves config.data into a source for `split`.

    Keys read: dataset, data_dir, format ('auto': the prepared array_record dataset when there is
    one, else the folder), tfds_name, resolution, num_frames, frame_stride, decode_threads, cache_mb,
    cache_dir, progress. A dataset whose writer did not finish is refused
    (files.IncompleteDatasetError, naming the command that finishes it).
    """
    dataset = dataset_name(data_cfg)
    data_dir = _get(data_cfg, "data_dir")
    fmt = _get(data_cfg, "format", "auto") or "auto"
    if dataset not in VIDEO_DATASETS + IMAGE_DATASETS:
        raise ValueError(
            f"config.data.dataset={dataset!r} is not supported; choose one of {VIDEO_DATASETS + IMAGE_DATASETS}"
        )
    if not data_dir:
        raise ValueError(f"config.data.data_dir={data_dir!r}: set it to the folder holding the dataset")
    if fmt not in FORMATS:
        raise ValueError(f"config.data.format={fmt!r} is not supported; choose one of {FORMATS}")
    size = kinetics.as_size(_get(data_cfg, "resolution", 128))
    tfds_name = _get(data_cfg, "tfds_name", None) or dataset
    prepared_dir = prepared.find_prepared(data_dir, tfds_name) if fmt != "folder" else None
    if fmt == "prepared" and prepared_dir is None:
        raise FileNotFoundError(
            f"config.data.format='prepared' but no {data_dir}/{tfds_name}/<version>/dataset_info.json; "
            "run `sid2video prepare` first"
        )

    if dataset in VIDEO_DATASETS:
        spec = kinetics.ClipSpec(int(_get(data_cfg, "num_frames", 16)), int(_get(data_cfg, "frame_stride", 1)))
        decoder = kinetics.ClipDecoder(spec, size, train, int(_get(data_cfg, "decode_threads", 1)),
                                       float(_get(data_cfg, "cache_mb", 0) or 0))
        if prepared_dir is not None:
            index = prepared.load_prepared_index(prepared_dir, split)
            entries, skipped = index.usable(spec)
            source = prepared.PreparedSource(prepared_dir, split, entries)
            where = f"{prepared_dir} (array_record)"
        else:
            index = kinetics.build_index(
                data_dir,
                split,
                cache_dir=_get(data_cfg, "cache_dir", None),
                progress=bool(_get(data_cfg, "progress", True)),
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

    decoder = images.ImageDecoder(size, train)
    if prepared_dir is not None:
        source = images.TfdsImageSource(tfds_name, split, data_dir)
        names = source.class_names()
        return Source(dataset, "image", source, decoder, names, [],
                      f"{dataset}/{split}: {len(source)} images from {prepared_dir} (array_record)")
    names, entries, skipped = images.index_image_folder(data_dir, split)
    for s in skipped:
        kinetics.log_skip_once(s["path"], s["reason"])
    if not entries:
        raise ValueError(f"no images found in {images.image_folder_root(data_dir, split)} (config.data.data_dir)")
    return Source(dataset, "image", images.ImageFolderSource(entries), decoder, names, skipped,
                  f"{dataset}/{split}: {len(entries)} images from {images.image_folder_root(data_dir, split)}")


# --------------------------------------------------------------------------------------------
# grain pieces


def _stack(elements: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.stack([np.asarray(e[k]) for e in elements]) for k in elements[0]}


class _DropCountBatchIterator(grain.DatasetIterator):
    """Batches good elements; skip markers are dropped and attached as batch["_skipped"]."""

    def __init__(self, parent, batch_size: int, pad: bool, template):
        super().__init__(parent)
        self._batch_size = batch_size
        self._pad = pad
        self._template = template

    def __next__(self):
        good, skipped, consecutive = [], [], 0
        while len(good) < self._batch_size:
            try:
                element = next(self._parent)
            except StopIteration:
                break
            if "_skip" in element:
                skipped.append(element["_skip"])
                consecutive += 1
                if consecutive >= MAX_CONSECUTIVE_SKIPS:
                    raise RuntimeError(
                        f"{consecutive} consecutive records could not be decoded; the last: {skipped[-1]}"
                    )
                continue
            consecutive = 0
            good.append(element)
        if not good:
            if not skipped:
                raise StopIteration
            if not self._pad:  # training streams only end when num_epochs is set
                for marker in skipped:
                    key, _, reason = marker.partition(": ")
                    kinetics.log_skip_once(key, reason)
                raise StopIteration
            # The stream ended on undecodable records: an all-padding batch carries the markers.
            good = [{k: v[0] for k, v in self._template.items()}]
            n = 0
        else:
            n = len(good)
        if n < self._batch_size and not self._pad:
            raise StopIteration  # drop_remainder for training streams
        zeros = {k: np.zeros_like(v) for k, v in good[0].items()}
        batch = _stack(good[:n] + [zeros] * (self._batch_size - n))
        if self._pad:
            batch["mask"] = np.arange(self._batch_size) < n
        batch["_skipped"] = np.asarray(skipped, dtype=str) if skipped else np.zeros((0,), dtype="<U1")
        return batch

    def get_state(self):
        return self._parent.get_state()

    def set_state(self, state):
        self._parent.set_state(state)


class DropCountBatch(grain.IterDataset):
    """Batches of `batch_size` decoded elements; skip markers are dropped and carried along.

    pad=False (training): a short final batch is dropped. pad=True (evaluation): it is padded with
    zeros and every batch gets "mask". Runs inside grain's worker processes when there are any.
    """

    def __init__(self, parent, batch_size: int, pad: bool, template=None):
        super().__init__(parent)
        self._batch_size = batch_size
        self._pad = pad
        self._template = template

    def __iter__(self):
        return _DropCountBatchIterator(self._parent.__iter__(), self._batch_size, self._pad, self._template)

    def __str__(self):
        return f"DropCountBatch(batch_size={self._batch_size}, pad={self._pad})"


class _AccountingIterator(grain.DatasetIterator):
    """Parent-process end of the pipeline: times next(), pops and counts skip markers, and
    (evaluation) appends all-padding batches until `num_batches` have been produced."""

    def __init__(self, parent, loader_stats: LoaderStats, num_batches: int | None, template):
        super().__init__(parent)
        self.loader_stats = loader_stats
        self._num_batches = num_batches
        self._template = template
        self._emitted = 0

    def __next__(self):
        t0 = time.perf_counter()
        try:
            batch = next(self._parent)
        except StopIteration:
            if self._num_batches is None or self._emitted >= self._num_batches:
                raise
            batch = {k: np.zeros_like(v) for k, v in self._template.items()}
            batch["mask"] = np.zeros(len(batch["label"]), bool)
        wait = time.perf_counter() - t0
        skipped = batch.pop("_skipped", ())
        mask = batch.get("mask")
        n = int(mask.sum()) if mask is not None else len(batch["label"])
        self.loader_stats.record(n, len(batch["label"]) - n, wait, [str(s) for s in skipped])
        self._emitted += 1
        return batch

    def get_state(self):
        return {"pipeline": self._parent.get_state(), "batches": self._emitted}

    def set_state(self, state):
        self._parent.set_state(state["pipeline"])
        self._emitted = int(state["batches"])


class Accounting(grain.IterDataset):
    """Last stage, in the main process: updates LoaderStats from each batch (see module docs)."""

    def __init__(self, parent, loader_stats: LoaderStats, num_batches: int | None = None, template=None):
        super().__init__(parent)
        self._loader_stats = loader_stats
        self._num_batches = num_batches
        self._template = template

    def __iter__(self):
        return _AccountingIterator(self._parent.__iter__(), self._loader_stats, self._num_batches,
                                   self._template)


def _template(src: Source, batch_size: int, train: bool) -> dict[str, np.ndarray]:
    """A zero batch with the shapes the decoder produces (for evaluation padding)."""
    h, w = src.decoder.size
    t = src.decoder.spec.num_frames if src.kind == "video" else 1
    out = {"video": np.zeros((batch_size, t, h, w, 3), np.uint8), "label": np.zeros((batch_size,), np.int32)}
    if not train:
        out["index"] = np.zeros((batch_size,), np.int32)
        if src.kind == "video":
            out["start"] = np.zeros((batch_size,), np.int32)
    return out


def _process(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    if process_index is None or process_count is None:
        import jax  # pylint: disable=import-outside-toplevel

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} outside [0, process_count={process_count})")
    return int(process_index), int(process_count)


def build_dataset(
    src: Source,
    *,
    batch_size: int,
    seed: int,
    train: bool,
    process_index: int,
    process_count: int,
    worker_count: int = 0,
    read_threads: int = 2,
    prefetch: int = 2,
    num_epochs: int | None = None,
    stats: LoaderStats | None = None,
):
    """The grain IterDataset of batches for `src` (see the module docs for the stages)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not 0 <= seed < 2**32:
        raise ValueError(f"seed must be in [0, 2**32), got {seed}")
    ds = grain.MapDataset.source(src.source)
    if train:
        ds = ds.shuffle(seed=seed).repeat(num_epochs)
    ds = ds.random_map(src.decoder, seed=seed)
    ds = ds[process_index::process_count]
    ds = ds.to_iter_dataset(
        grain.ReadOptions(num_threads=max(1, read_threads), prefetch_buffer_size=max(2 * batch_size, 4))
    )
    template = _template(src, batch_size, train)
    ds = DropCountBatch(ds, batch_size, pad=not train, template=template)
    if worker_count > 0:
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count, per_worker_buffer_size=prefetch))
    elif prefetch > 0:  # batches are built in a background thread of this process
        ds = grain.experimental.ThreadPrefetchIterDataset(ds, prefetch_buffer_size=prefetch)
    stats = stats or LoaderStats(src.name, src.skipped)
    if train:
        return Accounting(ds, stats)
    # Every process yields the same number of evaluation batches (collectives stay in step):
    # the most any process can produce, each worker ending on its own partial batch.
    n = len(src.source)
    most = 0
    for p in range(process_count):
        n_p = len(range(p, n, process_count))
        workers = max(1, worker_count)
        most = max(most, sum(-(-len(range(w, n_p, workers)) // batch_size) for w in range(workers)))
    return Accounting(ds, stats, most, template)


class _Positions:
    """Random-access view of some positions of a source; records keep their original 'index'."""

    def __init__(self, source, positions: Sequence[int]):
        self.source = source
        self.positions = [int(p) for p in positions]
        if self.positions and not 0 <= min(self.positions) <= max(self.positions) < len(source):
            raise ValueError(f"positions must lie in [0, {len(source)}), got {min(self.positions)}..."
                             f"{max(self.positions)}")

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i: int):
        return self.source[self.positions[int(i)]]


def _make_iterator(data_cfg, *, split, train, batch_size, seed, process_index, process_count, worker_count,
                   num_epochs=None, positions=None):
    pi, pc = _process(process_index, process_count)
    src = make_source(data_cfg, split=split, train=train)
    if positions is not None:
        src = dataclasses.replace(src, source=_Positions(src.source, positions))
    workers = int(_get(data_cfg, "worker_count", 0) if worker_count is None else worker_count)
    stats = LoaderStats(f"{src.name}/{split}", src.skipped)
    ds = build_dataset(
        src,
        batch_size=batch_size,
        seed=seed,
        train=train,
        process_index=pi,
        process_count=pc,
        worker_count=workers,
        read_threads=int(_get(data_cfg, "read_threads", 2)),
        prefetch=int(_get(data_cfg, "prefetch", 2)),
        num_epochs=num_epochs,
        stats=stats,
    )
    it = iter(ds)
    it.class_names = src.class_names
    it.description = src.description
    it.keys = getattr(src.source, "keys", [])
    log.info("%s; process %d of %d, batch %d, %d workers", src.description, pi, pc, batch_size, workers)
    return it


def make_train_iterator(
    data_cfg: Any,
    *,
    batch_size: int,
    seed: int,
    process_index: int | None = None,
    process_count: int | None = None,
    worker_count: int | None = None,
    num_epochs: int | None = None,
):
    """An endless (or `num_epochs`-long) iterator of training batches for this process.

    batch_size is the per-process batch. process_index/count default to JAX's. worker_count
    defaults to config.data.worker_count. The iterator has `loader_stats` (LoaderStats),
    `class_names`, `get_state()` and `set_state()`.
    """
    split = _get(data_cfg, "split", "train")
    return _make_iterator(data_cfg, split=split, train=True, batch_size=batch_size, seed=seed,
                          process_index=process_index, process_count=process_count,
                          worker_count=worker_count, num_epochs=num_epochs)


def default_eval_split(dataset: str) -> str:
    return "validation" if dataset == "imagenet2012" else "val"


def eval_split(data_cfg: Any) -> str:
    """The evaluation split: config.data.eval_split, else val (validation for imagenet2012)."""
    return _get(data_cfg, "eval_split", None) or default_eval_split(dataset_name(data_cfg))


def split_size(data_cfg: Any, split: str) -> int:
    """How many records (clips or images) `split` has, as the evaluation iterator counts them."""
    return len(make_source(data_cfg, split=split, train=False).source)


def make_eval_iterator(
    data_cfg: Any,
    *,
    batch_size: int,
    split: str | None = None,
    seed: int = 0,
    process_index: int | None = None,
    process_count: int | None = None,
    worker_count: int | None = None,
    positions: Sequence[int] | None = None,
):
    """One pass over `split` (default `eval_split(data_cfg)`), in order.

    Centre clips and centre crops, no flips. Every batch has `batch_size` rows and a "mask"
    marking the real ones (padding rows are zeros). Every process yields the same number of
    batches (the most any process needs), so per-batch collectives stay in step; a process that
    runs out sooner yields all-padding batches. `positions`: read only these records of the
    split, in this order (each keeps its 'index' in the whole split); default all of them.
    """
    if split is None:
        split = eval_split(data_cfg)
    return _make_iterator(data_cfg, split=split, train=False, batch_size=batch_size, seed=seed,
                          process_index=process_index, process_count=process_count,
                          worker_count=worker_count, positions=positions)


__all__ = [
    "LoaderStats",
    "Source",
    "make_source",
    "build_dataset",
    "make_train_iterator",
    "make_eval_iterator",
    "eval_split",
    "split_size",
]
