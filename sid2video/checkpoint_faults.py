"""What went wrong with a checkpoint, in one line, and the clean-up after it.

Orbax and TensorStore report a damaged file or a failed write as long chained errors (a
TensorStore spec of several kilobytes, an exception per array, tracebacks from background
threads). Here they are reduced to the file concerned and the cause (`describe`), a failed
save's temporary folder is removed (`remove_partial`), a checkpoint that does not restore is
renamed out of Orbax's sight (`set_aside`), and the background threads' echoes of a failure
already reported are kept out of the user's terminal (`watch`).
"""

from __future__ import annotations

import errno
import logging
import os
import pathlib
import re
import shutil
import sys
import threading
import time

log = logging.getLogger("sid2video.checkpoint")

TMP_SUFFIX = ".orbax-checkpoint-tmp"
DAMAGED_SUFFIX = ".damaged"

_QUOTED_PATH = re.compile(r'"(/[^"]+)"')
_PLAIN_PATH = re.compile(r"(?:File|file|path) '?(/[^\s',]+)")
_OS_ERROR_CODE = re.compile(r"os_error_code='?(\d+)")
_PARTIAL_STEP = re.compile(r"/(\d+)" + re.escape(TMP_SUFFIX))
_MISSING_ITEM = re.compile(r'Item "(\w+)" was not found')
_SPEC = re.compile(r"\s*\[tensorstore_spec[^\]]*=.*$", re.S)


def _chain(err: BaseException) -> list[BaseException]:
    """`err`, its causes and contexts, and the members of exception groups, outermost first."""
    seen, out, todo = set(), [], [err]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        out.append(e)
        todo.extend(getattr(e, "exceptions", ()) or ())
        todo.extend([e.__cause__, e.__context__])
    return out


def _errno(chain: list[BaseException]) -> int | None:
    for e in chain:
        if isinstance(e, OSError) and e.errno:
            return e.errno
        found = _OS_ERROR_CODE.search(str(e))
        if found:
            return int(found.group(1))
    return None


def _file(chain: list[BaseException], root: pathlib.Path) -> pathlib.Path | None:
    """The most specific path under `root` that the errors name (the innermost one named last)."""
    root = str(root)
    for e in reversed(chain):
        names = [getattr(e, "filename", None)] if isinstance(e, OSError) else []
        text = _SPEC.sub("", str(e))
        names += _QUOTED_PATH.findall(text) + _PLAIN_PATH.findall(text)
        names = [n for n in names if n and str(n).startswith(root)]
        if names:
            name = str(names[-1]).rstrip("/.\\")
            return pathlib.Path(name.removesuffix(".__lock"))
    return None


def _message(chain: list[BaseException]) -> str:
    """The cause in one short line: the innermost error that says something, spec removed."""
    for e in reversed(chain):
        text = _SPEC.sub("", str(e)).strip()
        if not text or "Event loop is closed" in text:
            continue
        text = " ".join(text.split())
        if len(text) > 240:
            code = text.split(":", 1)[0] if text.split(":", 1)[0].isupper() else ""
            text = f"{code}: ... {text[-180:]}" if code else f"... {text[-200:]}"
        return f"{type(e).__name__}: {text}"
    return type(chain[0]).__name__


def describe(err: BaseException, root: pathlib.Path, step: int | None = None) -> str:
    """'<file relative to root>: <cause>' in one line (`step`: the checkpoint read, if any)."""
    chain = _chain(err)
    code = _errno(chain)
    cause = f"{os.strerror(code)} ({errno.errorcode.get(code, code)})" if code else _message(chain)
    path = _file(chain, root)
    missing = next((m for m in map(_MISSING_ITEM.search, map(str, chain)) if m), None)
    if path is None and missing and step is not None:
        path, cause = root / str(step) / missing.group(1), "missing"
    if path is None:
        return cause
    try:
        where = str(path.relative_to(root))
    except ValueError:
        where = str(path)
    return f"{where}: {cause}"


def partial_step(err: BaseException, default: int | None) -> int | None:
    """The step whose temporary folder the errors name (an asynchronous save's failure surfaces
    at the next save, whose own step is `default`)."""
    for e in _chain(err):
        found = _PARTIAL_STEP.search(str(e))
        if found:
            return int(found.group(1))
    return default


def remove_partial(directory: pathlib.Path) -> list[pathlib.Path]:
    """Delete the temporary folders of unfinished saves (`<step>.orbax-checkpoint-tmp*`)."""
    removed = []
    try:
        entries = list(directory.iterdir())
    except OSError:
        return removed
    for entry in entries:
        if TMP_SUFFIX in entry.name and entry.name.split(".", 1)[0].isdigit():
            for attempt in range(5):  # writes still in flight may add files while it is removed
                shutil.rmtree(entry, ignore_errors=True)
                if not entry.exists():
                    removed.append(entry)
                    break
                time.sleep(0.1 * (attempt + 1))
    return removed


def set_aside(directory: pathlib.Path, step: int) -> pathlib.Path:
    """Rename checkpoint `step` to `<step>.damaged` (`.damaged.2`, ... if taken); never deletes."""
    source = directory / str(step)
    target, n = directory / f"{step}{DAMAGED_SUFFIX}", 1
    while target.exists():
        n += 1
        target = directory / f"{step}{DAMAGED_SUFFIX}.{n}"
    os.rename(source, target)
    return target


class _Quiet(logging.Filter):
    """Drops error records from Orbax's threads or that mention a watched directory (while one is
    watched), leaving one DEBUG line on this
    module's logger (the failure they echo is raised, with its cause, by the checkpointer)."""

    def __init__(self):
        super().__init__()
        self.directories: dict[str, int] = {}
        self.guard = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR or not self.directories:
            return True
        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            text += " " + " ".join(str(e) for e in _chain(record.exc_info[1]))
        from_orbax = f"{os.sep}orbax{os.sep}" in (record.pathname or "")
        if from_orbax or any(d in text for d in list(self.directories)):
            log.debug("%s: %s", record.name, " ".join(record.getMessage().split())[:300])
            return False
        return True


_QUIET = _Quiet()
_LOGGERS = ("absl", "asyncio", "orbax")
for _name in _LOGGERS:
    logging.getLogger(_name).addFilter(_QUIET)


def _closed_loop_echo(exc: BaseException | None) -> bool:
    """TensorStore completes a cancelled write after Orbax closed the event loop it was started
    from, and prints the resulting RuntimeError: an echo of a failed save, not a failure."""
    return isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed"


def _install_excepthook() -> None:
    previous = sys.excepthook
    if getattr(previous, "_sid2video_quiet", False):
        return

    def hook(kind, value, tb):
        if _closed_loop_echo(value):
            log.debug("ignored after a failed save: %s", value)
            return
        previous(kind, value, tb)

    hook._sid2video_quiet = True
    sys.excepthook = hook
    previous_unraisable = sys.unraisablehook

    def unraisable(info):
        if _closed_loop_echo(info.exc_value):
            log.debug("ignored after a failed save: %s", info.exc_value)
            return
        previous_unraisable(info)

    sys.unraisablehook = unraisable


def watch(directory: pathlib.Path) -> None:
    """Keep the background threads' echoes of failures in `directory` out of the terminal."""
    _install_excepthook()
    with _QUIET.guard:
        _QUIET.directories[str(directory)] = _QUIET.directories.get(str(directory), 0) + 1


def unwatch(directory: pathlib.Path, failed: bool) -> None:
    """Stop watching `directory`, unless a failure there was reported: its echoes (futures
    collected later, threads finishing) may come after the checkpointer closed."""
    if failed:
        return
    with _QUIET.guard:
        n = _QUIET.directories.get(str(directory), 0) - 1
        if n > 0:
            _QUIET.directories[str(directory)] = n
        else:
            _QUIET.directories.pop(str(directory), None)
