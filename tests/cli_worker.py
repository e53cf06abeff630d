"""Runs `sid2video` commands, exactly as typed, in one process (for the shipped-config tests).

    python tests/cli_worker.py COMMANDS.json

COMMANDS.json is a list of argv lists (`["train", "--config", "configs/kinetics600.py:small", ...]`).
`["@move", SRC, DST, ...]` moves a file or folder instead (e.g. a checkpoint, to resume before it;
in a multi-process run process 0 moves it and the others wait; flags after DST are ignored). Each
command goes through `sid2video.cli.main`, the console script's entry point, in order; one JSON line
per command reports its exit code, seconds and, for a SystemExit with a message, the message. The
first failing command ends the run (exit 1), unless $CLI_WORKER_KEEP_GOING is set.
Several commands in one process share the imports; compiled programs are shared through JAX's
persistent cache ($SID2VIDEO_TEST_JAX_CACHE), so a resumed run does not compile again.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import sys
import time
import traceback


def main(path: str) -> int:
    import jax

    cache = os.environ.get("SID2VIDEO_TEST_JAX_CACHE")
    if cache:
        jax.config.update("jax_compilation_cache_dir", cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    from sid2video import cli

    with open(path) as f:
        commands = json.load(f)
    for argv in commands:
        start = time.perf_counter()
        message = None
        try:
            if argv[0] == "@move":  # by process 0 of a multi-process run, the others wait for it
                if jax.process_index() == 0:
                    pathlib.Path(argv[2]).parent.mkdir(parents=True, exist_ok=True)
                    shutil.move(argv[1], argv[2])
                if jax.process_count() > 1:
                    from jax.experimental import multihost_utils

                    multihost_utils.sync_global_devices("cli_worker_move")
                rc = 0
            else:
                rc = cli.main(list(argv))
        except SystemExit as err:
            rc = err.code if isinstance(err.code, int) else (0 if err.code is None else 1)
            if isinstance(err.code, str):
                message = err.code
        except BaseException:  # noqa: BLE001 - reported, then the run stops
            traceback.print_exc()
            rc = 1
        report = {"argv": argv, "rc": rc, "seconds": round(time.perf_counter() - start, 2), "message": message}
        print("CLI_WORKER " + json.dumps(report), flush=True)
        if rc and not os.environ.get("CLI_WORKER_KEEP_GOING"):
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
