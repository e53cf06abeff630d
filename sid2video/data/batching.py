"""grain stages that batch decoded records, drop undecodable ones and count them in LoaderStats.

Skipped files: files that cannot be opened or are too short are found when the index is built
and counted from the index. Files that fail later, inside a worker (a decode error), come back
from the decode step as a `{"_skip": "<file>: <reason>"}` marker; the batching step
(`DropCountBatch`, in the worker) drops markers, fills the batch with the next good records and
attaches the dropped markers as `batch["_skipped"]`; the accounting step (`Accounting`, in the
parent process) pops that key, logs each file once and counts it in `LoaderStats`. Nothing is
dropped without being counted, and the counts do not depend on shared memory between processes.
"""

from __future__ import annotations

import threading
import time
from typing import Mapping, Sequence

import grain
import numpy as np

from sid2video.data import skips

# Consecutive undecodable records after which the loader gives up (something systematic is wrong).
MAX_CONSECUTIVE_SKIPS = 1000


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
                    skips.log_skip_once(key, reason)

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
                    skips.log_skip_once(key, reason)
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
