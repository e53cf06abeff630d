"""The `sid2video` command.

One console script with a subcommand per job. Each subcommand lives in its own module and is
imported only when it runs, so `sid2video --help` stays fast and does not import JAX.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Any, Callable

# name -> (module providing `run(argv) -> int`, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("sid2video.demo", "run the embedded end-to-end job: data, training, sampling, metrics, MP4s"),
    "train": ("sid2video.train", "train a model from a config (--config configs/kinetics600.py:small)"),
    "sample": ("sid2video.sample", "sample from a checkpoint"),
    "evaluate": ("evaluation.harness", "compute FVD / FID and frame-prediction metrics for a checkpoint"),
    "render": ("sid2video.render", "render predictions as MP4 / GIF / PNG"),
    "prepare": ("sid2video.data.prepare", "convert a dataset folder into TFDS array_record files"),
    "info": ("sid2video.models.flops", "print parameters, FLOPs and activation memory of a config"),
}

_PLANNED = {
    "demo": (
        "sid2video demo --workdir DIR will: (1) write an embedded moving-digits video dataset as MP4s "
        "in the Kinetics600 layout; (2) train the tiny 5->11 frame-prediction config; (3) predict "
        "held-out clips with aDDIM from the EMA parameters; (4) report PSNR/SSIM, object-position "
        "error and FVD beside a copy-last-frame baseline; (5) render MP4s and a Markdown report."
    ),
}


def parse_flags(prog: str, argv: list[str], define: Callable[[Any], None] | None = None,
                config_required: bool = True):
    """Parse a subcommand's flags with absl: `--config path.py:variant`, `--config.key=value`
    overrides, plus whatever `define(flag_values)` adds. Returns the parsed FlagValues.

    Each call uses its own FlagValues, so subcommands never clash over flag names. absl's global
    flags are marked parsed as well, which grain's worker processes require.
    """
    from absl import flags
    from ml_collections import config_flags

    fv = flags.FlagValues()
    config_flags.DEFINE_config_file(
        "config", None, "config file and variant, e.g. configs/kinetics600.py:small", flag_values=fv,
        lock_config=False,
    )
    flags.DEFINE_bool("help", False, "show this help", flag_values=fv, short_name="h")
    if define is not None:
        define(fv)
    try:
        fv([prog] + list(argv))
    except flags.Error as err:
        raise SystemExit(f"{prog}: {err}\n(run `{prog} --help` for the flags)")
    if fv.help:
        print(f"usage: {prog} [flags]\n")
        print(fv.module_help(fv.find_module_defining_flag("config")) or fv)
        raise SystemExit(0)
    if config_required and fv.config is None:
        raise SystemExit(f"{prog}: --config is required, e.g. --config configs/kinetics600.py:small")
    flags.FLAGS.mark_as_parsed()
    return fv


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
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name != module_name:
            raise
        module = None
    run = getattr(module, "run", None)
    if run is None:
        plan = _PLANNED.get(name, "")
        print(f"sid2video {name}: not yet available in this version. {plan}".strip())
        return 0 if name == "demo" else 2
    return int(run(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
