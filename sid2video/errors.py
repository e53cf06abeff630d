"""The family of errors that are the user's to fix, not bugs.

A `UserError` is an expected mistake or mishap in what a command was given or finds: a damaged or
foreign checkpoint, a workdir another trainer holds, an unfinished dataset. Its message is one
line that names the file or setting and the fix. `sid2video.cli.main` prints such errors (and a
missing file or folder) as `sid2video <command>: <message>` with exit status 2; every other
exception is a bug and keeps its traceback. This module imports only `os`, so any layer may raise one.
"""

from __future__ import annotations

import os

# `sid2video --debug` sets it for the command it runs, so commands that turn an error into one line
# themselves show the traceback instead.
DEBUG_ENV = "SID2VIDEO_DEBUG"


def debugging() -> bool:
    """Whether tracebacks are wanted instead of one-line errors (--debug or SID2VIDEO_DEBUG=1)."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


class UserError(Exception):
    """An error the user fixes (the message says how); the command line shows it in one line.

    Mixed into the specific errors, which keep their usual base (e.g. ValueError) for callers
    that catch that."""
