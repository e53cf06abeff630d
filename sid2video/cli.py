"""The `sid2video` command.

One console script with a subcommand per job. Each subcommand lives in its own module and is
imported only when it runs, so `sid2video --help` stays fast and does not import JAX. Flags are
parsed by the subcommands (sid2video/flags.py); this module dispatches and reports:

* an expected error (`sid2video.errors.UserError`: a damaged or foreign checkpoint, a locked
  workdir, an unfinished dataset; or a missing file or folder) is one line on stderr,
  `sid2video <command>: <message>`, and exit status 2. A subcommand's own one-line refusals
  (SystemExit with a message, exit status 1; argparse usage errors, 2) pass through.
* SIGINT / SIGTERM outside a subcommand's own handling (the trainer saves and exits 0; `evaluate`
  stops at a batch boundary) end the process at once with one line and exit status 130 / 143.
* `sid2video --debug COMMAND ...` (or SID2VIDEO_DEBUG=1) shows the traceback of those instead.
  Any other exception is a bug and always keeps its traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import signal
import sys
import threading
import traceback

from sid2video import errors, host_memory
from sid2video.errors import UserError

# name -> (module providing `run(argv) -> int`, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("sid2video.demo", "run the embedded end-to-end job: data, training, sampling, metrics, MP4s"),
    "train": ("sid2video.train_command", "train a model from a config (--config configs/kinetics600.py:small)"),
    "sample": ("sid2video.sample", "sample from a checkpoint"),
    "evaluate": ("evaluation.harness", "compute FVD / FID and frame-prediction metrics for a checkpoint"),
    "render": ("sid2video.render", "render predictions as MP4 / GIF / PNG"),
    "prepare": ("sid2video.data.prepare", "convert a dataset folder into TFDS array_record files"),
    "info": ("sid2video.info", "print parameters, FLOPs and activation memory of a config"),
}

# The exceptions shown as one line: the user's to fix. FileNotFoundError / NotADirectoryError
# are a path given (or configured) that is not there.
USER_ERRORS = (UserError, FileNotFoundError, NotADirectoryError)

EXIT_USER_ERROR = 2
DEBUG_ENV = errors.DEBUG_ENV


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sid2video",
        description="SiD2 pixel-space diffusion for video (Kinetics600 frame prediction) and images.",
        epilog=f"--debug (or {DEBUG_ENV}=1) before COMMAND shows tracebacks instead of one-line errors. "
               "Exit status: 0 done, 1 or 2 an error (one line on stderr), 130 / 143 SIGINT / SIGTERM.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks for expected errors too")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in SUBCOMMANDS.items():
        # Each subcommand parses its own flags; everything after the name is passed through.
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def message(err: BaseException) -> str:
    """`err` as one line: an OS error as 'path: reason', anything else its text, lines joined."""
    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        text = f"{err.filename}: {err.strerror[:1].lower()}{err.strerror[1:]}"
    else:
        text = str(err) or type(err).__name__
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


@contextlib.contextmanager
def _interrupts(prog: str, debug: bool):
    """Inside the block SIGINT and SIGTERM end the process at once (`_exit_on_signal`); a signal the
    parent process ignores stays ignored, and the previous handlers come back after the block. A
    subcommand that can stop cleanly (the trainer, `evaluate`) installs its own handlers meanwhile.

    The handler exits instead of raising: an exception raised from a signal handler can surface
    inside any Python callback that happens to run (a garbage-collection hook, a callback from
    compiled code), where it is swallowed or aborts the process."""
    previous = {}

    def handler(signum, frame):
        _exit_on_signal(prog, signum, frame, debug)

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            if signal.getsignal(sig) is not signal.SIG_IGN:
                previous[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _exit_on_signal(prog: str, signum: int, frame, debug: bool) -> None:
    """One line (with --debug, the stack where the signal landed first), then leave at once: exit
    status 128 + the signal. `os._exit` skips interpreter shutdown, where JAX's compiler and runtime
    threads may still be running (a plain exit there can crash)."""
    if debug and frame is not None:
        traceback.print_stack(frame)
    print(f"{prog}: interrupted by {signal.Signals(signum).name}; stopped", file=sys.stderr)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(128 + signum)


@contextlib.contextmanager
def _debug_env(debug: bool):
    """With --debug, SID2VIDEO_DEBUG=1 while the command runs (it reaches the commands that
    report their own errors, and child processes); the previous value afterwards."""
    previous = os.environ.get(DEBUG_ENV)
    if debug:
        os.environ[DEBUG_ENV] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(DEBUG_ENV, None)
        else:
            os.environ[DEBUG_ENV] = previous


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = errors.debugging()
    while argv and argv[0] == "--debug":
        debug, argv = True, argv[1:]
    parser = _parser()
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        parser.error(f"unknown command {name!r}; choose one of: {', '.join(SUBCOMMANDS)}")
    prog = f"sid2video {name}"
    module_name, _ = SUBCOMMANDS[name]
    host_memory.tune()
    with _interrupts(prog, debug), _debug_env(debug):
        try:
            return int(importlib.import_module(module_name).run(rest) or 0)
        except KeyboardInterrupt:  # Python's own SIGINT handler, where a subcommand restored it
            _exit_on_signal(prog, signal.SIGINT, None, debug)
        except USER_ERRORS as err:
            if debug:
                raise
            text = message(err)
            print(text if text.startswith(prog + ":") else f"{prog}: {text}", file=sys.stderr)
            return EXIT_USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
