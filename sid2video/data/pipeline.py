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
- Sources (which reader, which decoder) come from sources.py; the batching stage that drops and
  counts undecodable records, and the accounting stage and LoaderStats, from batching.py.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Sequence

import grain
import numpy as np

from sid2video.data import batching, sources

log = logging.getLogger(__name__)


def _template(src: sources.Source, batch_size: int, train: bool) -> dict[str, np.ndarray]:
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
    src: sources.Source,
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
    stats: batching.LoaderStats | None = None,
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
    ds = batching.DropCountBatch(ds, batch_size, pad=not train, template=template)
    if worker_count > 0:
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count, per_worker_buffer_size=prefetch))
    elif prefetch > 0:  # batches are built in a background thread of this process
        ds = grain.experimental.ThreadPrefetchIterDataset(ds, prefetch_buffer_size=prefetch)
    stats = stats or batching.LoaderStats(src.name, src.skipped)
    if train:
        return batching.Accounting(ds, stats)
    # Every process yields the same number of evaluation batches (collectives stay in step):
    # the most any process can produce, each worker ending on its own partial batch.
    n = len(src.source)
    most = 0
    for p in range(process_count):
        n_p = len(range(p, n, process_count))
        workers = max(1, worker_count)
        most = max(most, sum(-(-len(range(w, n_p, workers)) // batch_size) for w in range(workers)))
    return batching.Accounting(ds, stats, most, template)


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
    src = sources.make_source(data_cfg, split=split, train=train)
    if positions is not None:
        src = dataclasses.replace(src, source=_Positions(src.source, positions))
    workers = int(sources.setting(data_cfg, "worker_count", 0) if worker_count is None else worker_count)
    stats = batching.LoaderStats(f"{src.name}/{split}", src.skipped)
    ds = build_dataset(
        src,
        batch_size=batch_size,
        seed=seed,
        train=train,
        process_index=pi,
        process_count=pc,
        worker_count=workers,
        read_threads=int(sources.setting(data_cfg, "read_threads", 2)),
        prefetch=int(sources.setting(data_cfg, "prefetch", 2)),
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
    defaults to config.data.worker_count. The iterator has `loader_stats` (batching.LoaderStats),
    `class_names`, `get_state()` and `set_state()`.
    """
    split = sources.setting(data_cfg, "split", "train")
    return _make_iterator(data_cfg, split=split, train=True, batch_size=batch_size, seed=seed,
                          process_index=process_index, process_count=process_count,
                          worker_count=worker_count, num_epochs=num_epochs)


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
    """One pass over `split` (default `sources.eval_split(data_cfg)`), in order.

    Centre clips and centre crops, no flips. Every batch has `batch_size` rows and a "mask"
    marking the real ones (padding rows are zeros). Every process yields the same number of
    batches (the most any process needs), so per-batch collectives stay in step; a process that
    runs out sooner yields all-padding batches. `positions`: read only these records of the
    split, in this order (each keeps its 'index' in the whole split); default all of them.
    """
    if split is None:
        split = sources.eval_split(data_cfg)
    return _make_iterator(data_cfg, split=split, train=False, batch_size=batch_size, seed=seed,
                          process_index=process_index, process_count=process_count,
                          worker_count=worker_count, positions=positions)


__all__ = ["build_dataset", "make_train_iterator", "make_eval_iterator"]
