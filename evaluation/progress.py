"""Stopping and resuming an evaluation: SIGTERM / SIGINT end it at a batch boundary, and a re-run
with the same protocol skips the checkpoints it had finished.

`StopOnSignal` turns the two signals into a flag that `evaluators.run_all` reads after every
batch (process 0's flag, broadcast, so that every process stops at the same batch). `Progress`
keeps the finished checkpoints' results (and the copy-last-frame baseline's frame metrics) in
`<out>/progress.json`, keyed by a hash of the protocol record, written after each checkpoint and
removed when the evaluation completes. The reference statistics need nothing of this: they are
cached on their own (references.py).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pathlib
import signal
import threading
from typing import Any, Mapping

from evaluation import clips as clips_lib

log = logging.getLogger("sid2video.evaluate")

__all__ = ["StopOnSignal", "Progress"]


class StopOnSignal:
    """Within `with StopOnSignal() as stop:`, SIGTERM and SIGINT set a flag instead of ending the
    process (a second one raises KeyboardInterrupt at once). Main thread only; elsewhere the
    handlers stay as they are. `stop()` reads process 0's flag."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.flag = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        if self.flag:   # a second signal: stop now
            raise KeyboardInterrupt(f"{signal.Signals(signum).name} received twice")
        self.flag = True
        log.warning("%s received: stopping after this batch; run the same command again to resume",
                    signal.Signals(signum).name)

    def __enter__(self) -> "StopOnSignal":
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def __call__(self) -> bool:
        from evaluation import references

        return references.broadcast_bool(self.flag)


class Progress:
    """The finished checkpoints of one evaluation (same protocol record, same run), on disk."""

    def __init__(self, out_dir, record: Mapping[str, Any], source: str):
        """out_dir None: kept in memory only (nothing to resume from)."""
        from evaluation import report

        self.path = pathlib.Path(out_dir) / "progress.json" if out_dir is not None else None
        blob = json.dumps(report.jsonable({"record": record, "source": source}), sort_keys=True)
        self.key = hashlib.sha256(blob.encode()).hexdigest()[:24]
        self.entries: dict[int, dict] = {}
        self.baseline: dict | None = None
        if self.path is not None and self.path.is_file():
            try:
                saved = json.loads(self.path.read_text())
            except ValueError as err:
                log.warning("ignoring unreadable %s: %s", self.path, err)
                saved = {}
            if saved.get("key") == self.key:
                self.entries = {int(e["step"]): e for e in saved.get("checkpoints", [])}
                self.baseline = saved.get("baseline")
                if self.entries:
                    log.info("resuming: steps %s already evaluated (%s)", sorted(self.entries), self.path)

    def done(self, step: int) -> dict | None:
        return self.entries.get(int(step))

    def add(self, entry: Mapping[str, Any], baseline: Mapping[str, Any] | None) -> None:
        """Records a finished checkpoint (process 0 writes the file, atomically)."""
        from evaluation import report

        self.entries[int(entry["step"])] = report.jsonable(entry)
        self.baseline = report.jsonable(baseline) if baseline is not None else self.baseline
        if self.path is not None and clips_lib.is_lead():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".json.tmp")
            tmp.write_text(json.dumps({"key": self.key, "checkpoints": list(self.entries.values()),
                                       "baseline": self.baseline}, allow_nan=False))
            os.replace(tmp, self.path)

    def finish(self) -> None:
        """The evaluation completed: nothing left to resume."""
        if self.path is not None and clips_lib.is_lead() and self.path.is_file():
            self.path.unlink()
