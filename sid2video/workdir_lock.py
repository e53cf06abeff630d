"""One trainer per run directory: a lock file `<workdir>/train.lock` naming its holder.

The lock file is created exclusively (O_CREAT | O_EXCL) and holds JSON: the holder's pid, host,
process start time and the time it was taken. A second trainer on the same workdir finds it and
stops at once with a `WorkdirLockedError` naming the first. The lock is released (the file
removed) when its holder closes it or exits; a lock left behind by a process that died without
releasing it (kill -9, a lost node) is stale once its pid is gone on the same host (or the pid
now belongs to a process started later), and is then taken over with a log line. A lock written
on another host cannot be checked from here: the message says to remove the file if that run is
gone. Only the process that writes checkpoints (process 0 of a multi-process run) locks;
readers (sampling, evaluation) never do.
"""

from __future__ import annotations

import atexit
import datetime
import errno
import gc
import json
import logging
import os
import pathlib
import socket
import threading
import uuid
import weakref

from sid2video.errors import UserError

log = logging.getLogger("sid2video.checkpoint")

LOCK_NAME = "train.lock"

# Tokens of the locks this process holds (a lock file with this pid whose token is not here was
# left by an earlier holder in this process that never released it).
_HELD: dict[str, "weakref.ref[WorkdirLock]"] = {}
_HELD_GUARD = threading.Lock()


class WorkdirLockedError(UserError, ValueError):
    """Another trainer holds the run directory."""


def _start_time(pid: int) -> str | None:
    """The kernel's start time of `pid` (clock ticks since boot, Linux), None where unknown."""
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22 of stat(5), counted after the comm field


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class WorkdirLock:
    """The lock of one run directory, taken at construction, released by `release()` or at exit."""

    def __init__(self, workdir: str | os.PathLike):
        self.path = pathlib.Path(workdir).absolute() / LOCK_NAME
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.token = uuid.uuid4().hex
        self.info = {"pid": os.getpid(), "host": socket.gethostname(), "start_time": _start_time(os.getpid()),
                     "since": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                     "token": self.token}
        self._released = False
        self._acquire()
        with _HELD_GUARD:
            _HELD[self.token] = weakref.ref(self)
        self._finalizer = weakref.finalize(self, _remove, str(self.path), self.token)

    # -- taking the lock --------------------------------------------------------------------------
    def _acquire(self) -> None:
        for _ in range(3):
            if self._create():
                return
            holder = self._read()
            if holder is None:  # vanished between our create and read, or unreadable: try again
                continue
            stale = self._stale_reason(holder)
            if stale is None:
                raise WorkdirLockedError(self._held_message(holder))
            if self._take_over(holder):
                log.warning("took over the stale lock %s (%s)", self.path, stale)
                return
        raise WorkdirLockedError(f"could not take the lock {self.path}: another trainer is starting on "
                                 "this workdir at the same time")

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump(self.info, f)
        return True

    def _read(self) -> dict | None:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return None
        try:
            holder = json.loads(text)
            return holder if isinstance(holder, dict) else {}
        except json.JSONDecodeError:
            return {}  # an empty or half-written lock file: its writer died while writing it

    def _stale_reason(self, holder: dict) -> str | None:
        """Why `holder` no longer holds the lock, or None while it may still run."""
        pid, host = holder.get("pid"), holder.get("host")
        if not isinstance(pid, int) or not host:
            return "the lock file is unreadable"
        if host != self.info["host"]:
            return None
        if pid == os.getpid():
            if _held_here(holder.get("token")):
                gc.collect()  # an earlier holder that raised before closing may only await collection
                if _held_here(holder.get("token")):
                    return None
            return "left by an earlier run in this process"
        if not _alive(pid):
            return f"process {pid} on {host} is gone"
        started = holder.get("start_time")
        if started is not None and _start_time(pid) not in (None, started):
            return f"process {pid} on {host} is gone (the pid now belongs to another process)"
        return None

    def _take_over(self, holder: dict) -> bool:
        """Move the stale file aside atomically; False when someone else replaced it meanwhile."""
        aside = self.path.with_name(f"{LOCK_NAME}.stale.{self.token}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return self._create()
        try:
            moved = json.loads(aside.read_text() or "{}")
        except (OSError, json.JSONDecodeError):
            moved = {}
        if moved != holder and moved:  # a fresh lock was taken between our read and our rename
            try:
                os.link(aside, self.path)
            except OSError:
                pass
            aside.unlink(missing_ok=True)
            return False
        aside.unlink(missing_ok=True)
        return self._create()

    def _held_message(self, holder: dict) -> str:
        who = f"process {holder.get('pid')} on {holder.get('host')} (since {holder.get('since')})"
        if holder.get("host") != self.info["host"]:
            return (f"the workdir {self.path.parent} is in use by {who}, another host: run one trainer per "
                    f"workdir. If that run is gone, delete {self.path}.")
        return (f"the workdir {self.path.parent} is in use by {who}: run one trainer per workdir, or "
                "stop that one first.")

    # -- releasing it -----------------------------------------------------------------------------
    def release(self) -> None:
        if self._released:
            return
        self._released = True
        self._finalizer.detach()
        with _HELD_GUARD:
            _HELD.pop(self.token, None)
        _remove(str(self.path), self.token)


def _held_here(token) -> bool:
    """Whether a live, unreleased lock object of this process has `token`."""
    with _HELD_GUARD:
        ref = _HELD.get(token)
    owner = ref() if ref is not None else None
    return owner is not None and not owner._released


@atexit.register
def _release_all() -> None:
    with _HELD_GUARD:
        owners = [ref() for ref in _HELD.values()]
    for owner in owners:
        if owner is not None:
            owner.release()


def _remove(path: str, token: str) -> None:
    """Delete the lock file at `path` if it is still the one with `token`."""
    try:
        with open(path) as f:
            if json.load(f).get("token") != token:
                return
        os.unlink(path)
    except (OSError, ValueError, AttributeError) as err:
        if getattr(err, "errno", None) not in (None, errno.ENOENT):
            log.warning("could not remove the lock %s: %s", path, err)
