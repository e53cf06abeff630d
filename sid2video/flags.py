"""Command-line flags shared by the subcommands, in one style.

Flag names use underscores (`--logvar_interp`); a config is `--config path.py:variant` (or a
shipped config's name, `--config kinetics600:small`) with `--config.section.key=value` overrides;
training steps are `--train_steps`, sampler steps `--sampler_steps`. A flag under an old name
stops with one line naming the new one.

Subcommands with a config parse with `parse_flags` (absl flags, which grain's worker processes
need marked as parsed); the others build a `Parser` (argparse). Importing this module does not import JAX.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any, Callable

# Old flag names of every subcommand -> the new ones.
RENAMED = {"--set": "--config.KEY=VALUE"}
TRAIN_STEPS = {"--steps": "--train_steps"}
SAMPLER_STEPS = {"--steps": "--sampler_steps"}


def refuse_old_names(prog: str, argv: list[str], known: set[str], renamed: dict[str, str]) -> None:
    """Stop with one line if `argv` uses an old flag name: one in `renamed` (or RENAMED), or a
    dashed name (`--logvar-interp`) whose underscore form is in `known`."""
    renamed = {**RENAMED, **renamed}
    for arg in argv:
        if not arg.startswith("--") or arg.startswith("--config."):
            continue
        name = arg.split("=", 1)[0]
        new = renamed.get(name)
        if new is None and "-" in name[2:]:
            dashed = name.replace("-", "_")
            if "--" + dashed[2:] in known:
                new = "--" + dashed[2:]
        if new is not None and name not in known:
            raise SystemExit(f"{prog}: {name} is now {new}")


class Parser(argparse.ArgumentParser):
    """argparse with old flag names refused in one line (`refuse_old_names`)."""

    def __init__(self, *args, renamed: dict[str, str] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.renamed = dict(renamed or {})

    def parse_known_args(self, args=None, namespace=None):
        args = list(sys.argv[1:] if args is None else args)
        refuse_old_names(self.prog, args, set(self._option_string_actions), self.renamed)
        return super().parse_known_args(args, namespace)


def add_sampler_flags(parser: argparse.ArgumentParser) -> None:
    """The sampler overrides of `sample` and `evaluate` (default: the run's config.sampler)."""
    from sid2video.diffusion.samplers import METHODS

    group = parser.add_argument_group("sampler (default: the run's config.sampler)")
    group.add_argument("--method", choices=METHODS, default=None, help="sampler")
    group.add_argument("--sampler_steps", type=int, default=None, help="sampler steps")
    group.add_argument("--guidance", type=float, default=None, help="guidance weight")
    group.add_argument("--interval", type=_interval, default=None,
                       help="guidance logSNR interval 'lo,hi', or 'none' for guidance at every step")
    group.add_argument("--logvar_interp", type=float, default=None,
                       help="DDPM log-variance interpolation")


def sampler_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The config.sampler keys the flags of `add_sampler_flags` set; `--interval none` turns the
    guidance interval off."""
    out = {k: v for k, v in dict(method=args.method, num_steps=args.sampler_steps,
                                 guidance=args.guidance, logvar_interp=args.logvar_interp).items()
           if v is not None}
    if args.interval is not None:
        out["guidance_interval"] = args.interval or None
    return out


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive integer")
    return value


def _interval(text: str) -> tuple[float, ...]:
    """'lo,hi' -> (lo, hi); 'none' -> () (no interval)."""
    if text.strip().lower() == "none":
        return ()
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not 'lo,hi' or 'none'") from None


def split_config_args(argv: list[str]) -> tuple[str | None, list[tuple[str, str]], list[str]]:
    """`--config SPEC` and `--config.key=value` (or `--config.key value`) out of `argv`:
    (spec, [(key, text), ...], the other arguments)."""
    spec, items, rest = None, [], []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--config" or arg.startswith("--config.") and "=" not in arg:
            if i + 1 == len(argv):
                raise SystemExit(f"{arg} needs a value")
            value, i = argv[i + 1], i + 2
        elif arg.startswith("--config=") or arg.startswith("--config."):
            arg, value = arg.split("=", 1)
            i += 1
        else:
            rest.append(arg)
            i += 1
            continue
        if arg == "--config":
            spec = value
        else:
            items.append((arg.removeprefix("--config."), value))
    return spec, items, rest


def load_config(prog: str, spec: str, items: list[tuple[str, str]]):
    """`sid2video.config.load(spec)` with the overrides applied and the whole config checked
    (`sid2video.config.validate`); a missing file, unknown variant, unknown key, bad value or
    invalid config stops with one line, before any data or JAX is touched."""
    from sid2video import config as config_lib

    try:
        config = config_lib.load(spec)
    except ValueError as err:
        raise SystemExit(f"{prog}: --config {spec}: {err}")
    for key, text in items:
        try:
            config_lib.override(config, [(key, text)])
        except KeyError as err:
            raise SystemExit(f"{prog}: --config.{key} names no config key ({err.args[0]!r} is not "
                             "there); the config file lists the keys")
        except ValueError as err:
            raise SystemExit(f"{prog}: --config.{key}={text}: {err}")
    try:
        config_lib.validate(config)
    except ValueError as err:
        raise SystemExit(f"{prog}: invalid config: {err}")
    return config


def parse_flags(prog: str, argv: list[str], define: Callable[[Any], None] | None = None, *,
                config_required: bool = True, default_config: str | None = None,
                renamed: dict[str, str] | None = None) -> argparse.Namespace:
    """Parse a subcommand's flags: the config (`--config`, default `default_config`) with its
    `--config.key=value` overrides, plus the absl flags `define(flag_values)` adds. Returns a
    namespace of the flag values with `config` (None if there is none and it is not required).

    Each call uses its own FlagValues, so subcommands never clash over flag names. absl's global
    flags are marked parsed as well, which grain's worker processes require.
    """
    from absl import flags

    fv = flags.FlagValues()
    flags.DEFINE_bool("help", False, "show this help", flag_values=fv, short_name="h")
    if define is not None:
        define(fv)
    known = {"--" + name for name in fv}
    refuse_old_names(prog, argv, known | {"--config"}, renamed or {})
    spec, items, rest = split_config_args(argv)
    try:
        fv([prog] + rest)
    except flags.Error as err:
        raise SystemExit(f"{prog}: {err} (run `{prog} --help` for the flags)")
    if fv.help:
        print(f"usage: {prog} --config path.py:variant [--config.key=value ...] [flags]\n")
        print("  --config: a config file and variant, e.g. configs/kinetics600.py:small, or a "
              "shipped config's name, e.g. kinetics600:small")
        print(fv.get_help())
        raise SystemExit(0)
    spec = spec or default_config
    if spec is None and (config_required or items):
        raise SystemExit(f"{prog}: --config is required, e.g. --config configs/kinetics600.py:small")
    config = load_config(prog, spec, items) if spec is not None else None
    flags.FLAGS.mark_as_parsed()
    return argparse.Namespace(config=config, **fv.flag_values_dict())


def config_arg(argv: list[str]) -> str:
    """The `--config` value given in `argv` ('' if none)."""
    return split_config_args(argv)[0] or ""


LOG_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"


def configure_logging(info: bool = True) -> None:
    """Every command's logging: everyone's warnings to stderr and, with `info`, sid2video's and
    evaluation's INFO lines (resume step, loader summary, evaluations, why a run stopped); other
    libraries' INFO chatter (orbax's) would bury an error. Importing orbax already gave the root
    logger a handler, which a plain `basicConfig` would keep (with its threshold), so it is replaced."""
    logging.basicConfig(level=logging.WARNING, format=LOG_FORMAT, force=True)
    for name in ("sid2video", "evaluation"):
        logging.getLogger(name).setLevel(logging.INFO if info else logging.WARNING)
