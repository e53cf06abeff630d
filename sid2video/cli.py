"""The `sid2video` command.

One console script with a subcommand per job. Each subcommand lives in its own module and is
imported only when it runs, so `sid2video --help` stays fast and does not import JAX. Flags are
parsed by the subcommands (sid2video/flags.py); this module only dispatches.
"""

from __future__ import annotations

import argparse
import importlib
import sys

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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sid2video",
        description="SiD2 pixel-space diffusion for video (Kinetics600 frame prediction) and images.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in SUBCOMMANDS.items():
        # Each subcommand parses its own flags; everything after the name is passed through.
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        parser.error(f"unknown command {name!r}; choose one of: {', '.join(SUBCOMMANDS)}")
    module_name, _ = SUBCOMMANDS[name]
    return int(importlib.import_module(module_name).run(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
