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


def load_config_file(path, variant: str | None = None):
    """`get_config(variant)` of the config file at `path` (an ml_collections config module)."""
    import importlib.util  # pylint: disable=import-outside-toplevel
    import pathlib  # pylint: disable=import-outside-toplevel

    path = pathlib.Path(path)
    spec = importlib.util.spec_from_file_location(f"sid2video_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(variant) if variant else module.get_config()


def apply_overrides(config, items, prog: str) -> None:
    """Set `key=value` items (`loss.bias=-2`, `model.channels=(16,32)`) on a config in place; a
    value is read as a Python literal where it is one, else kept as a string. A key the config
    does not have stops with a message naming it."""
    import ast  # pylint: disable=import-outside-toplevel

    for item in items:
        key, sep, text = item.partition("=")
        if not sep:
            raise SystemExit(f"{prog}: --set {item!r} must look like key=value, e.g. loss.bias=-2")
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text
        section, _, name = key.rpartition(".")
        target = config
        try:
            for part in filter(None, section.split(".")):
                target = target[part]
        except (KeyError, TypeError):
            target = None
        if target is None or not hasattr(target, "keys") or name not in target:
            raise SystemExit(f"{prog}: --set {key}: no such config key")
        target[name] = value


def parse_flags(prog: str, argv: list[str], define: Callable[[Any], None] | None = None,
                config_required: bool = True):
    """Parse a subcommand's flags with absl: `--config path.py:variant`, `--config.key=value`
    overrides, plus whatever `define(flag_values)` adds. Returns the parsed FlagValues.

    Each call uses its own FlagValues, so subcommands never clash over flag names. absl's global
    flags are marked parsed as well, which grain's worker processes require.
    """
    from absl import flags
    from ml_collections import config_flags

    _check_config_arg(prog, argv)
    args = [prog] + list(argv)
    fv = flags.FlagValues()
    # sys_argv: which --config.key=value overrides exist is read from these args; by default
    # ml_collections looks at sys.argv, which is not what a caller of cli.main([...]) passed.
    config_flags.DEFINE_config_file(
        "config", None, "config file and variant, e.g. configs/kinetics600.py:small", flag_values=fv,
        lock_config=False, sys_argv=args,
    )
    flags.DEFINE_bool("help", False, "show this help", flag_values=fv, short_name="h")
    if define is not None:
        define(fv)
    try:
        fv(args)
    except flags.Error as err:
        raise SystemExit(f"{prog}: {err}\n(run `{prog} --help` for the flags)")
    except (AttributeError, KeyError) as err:
        # ml_collections: an override of a key that is not there. The same exceptions from
        # inside a config file's own code are that code's errors and go up unchanged.
        key = str(err).strip("\"'")
        named = [a.split("=", 1)[0] for a in argv if a.startswith("--config.")
                 and key in a.split("=", 1)[0].split(".")]
        if not named:
            raise
        raise SystemExit(f"{prog}: {' '.join(named)} names no config key "
                         f"({key!r} is not there); the config file lists the keys")
    if fv.help:
        print(f"usage: {prog} [flags]\n")
        print(fv.module_help(fv.find_module_defining_flag("config")) or fv)
        raise SystemExit(0)
    if config_required and fv.config is None:
        raise SystemExit(f"{prog}: --config is required, e.g. --config configs/kinetics600.py:small")
    flags.FLAGS.mark_as_parsed()
    return fv


def _check_config_arg(prog: str, argv: list[str]) -> None:
    """`--config path.py[:variant]`: a missing file or an unknown variant (one not in the file's
    VARIANTS) is one line naming the fix, before the config file runs."""
    import pathlib  # pylint: disable=import-outside-toplevel
    import re  # pylint: disable=import-outside-toplevel

    value = None
    for i, a in enumerate(argv):
        if a == "--config" and i + 1 < len(argv):
            value = argv[i + 1]
        elif a.startswith("--config="):
            value = a.split("=", 1)[1]
    if not value:
        return
    path, _, variant = value.partition(":")
    file = pathlib.Path(path)
    if not file.is_file():
        shipped = sorted(str(p) for p in pathlib.Path("configs").glob("*.py") if "def get_config" in p.read_text())
        hint = f"; the configs here: {', '.join(shipped)}" if shipped else ""
        raise SystemExit(f"{prog}: --config {value}: no config file {path}{hint}")
    match = re.search(r"^VARIANTS\s*=\s*(\([^)]*\))", file.read_text(), re.MULTILINE)
    if variant and match:
        import ast  # pylint: disable=import-outside-toplevel

        try:
            variants = ast.literal_eval(match.group(1))
        except (ValueError, SyntaxError):
            return
        if variant not in variants:
            raise SystemExit(f"{prog}: --config {value}: {path} has no variant {variant!r}; choose one of "
                             f"{', '.join(variants)} (e.g. --config {path}:{variants[0]})")


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
