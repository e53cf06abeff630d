"""The `sid2video train` command: `train.fit` on a config, with evaluation during training.

The command sits above both the trainer and evaluation/: with config.train.eval_every > 0 it
builds `evaluation.in_training.TrainingEvaluation` (the shared evaluators on a fixed held-out set)
and hands it to the loop as a hook, so the trainer itself never imports evaluation.
"""

from __future__ import annotations

import json

from sid2video import checkpoint as ckpt
from sid2video import errors, sharding
from sid2video.config import TrainConfig
from sid2video.train import NonFiniteError, fit


def eval_hooks(config, workdir) -> list:
    """The loop's hooks: the evaluators of config.train.eval_metrics, or none when eval_every = 0
    (evaluation/ is then not imported)."""
    if not TrainConfig.from_config(config.train).eval_every:
        return []
    from evaluation import in_training

    return [in_training.TrainingEvaluation(config, workdir)]


def run(argv: list[str]) -> int:
    """`sid2video train --config configs/kinetics600.py:small --workdir DIR [--config.key=value]`."""
    from absl import flags

    from sid2video import flags as cli_flags

    cli_flags.configure_logging()

    def define(fv):
        flags.DEFINE_string("workdir", None, "run directory (checkpoints, metrics); resumed if it exists",
                            flag_values=fv)
        flags.DEFINE_integer("train_steps", None, "train until this step (default: config.train.num_steps)",
                             lower_bound=1, flag_values=fv)
        flags.DEFINE_float("minutes", None, "stop (and save) after this much wall time", flag_values=fv)
        flags.DEFINE_string("coordinator_address", None, "host:port of process 0 for multi-process CPU/GPU runs",
                            flag_values=fv)
        flags.DEFINE_integer("num_processes", None, "number of processes in a multi-process run", flag_values=fv)
        flags.DEFINE_integer("process_id", None, "this process's index in a multi-process run", flag_values=fv)
        flags.DEFINE_bool("distributed", False, "call jax.distributed.initialize() with auto-detection "
                          "(TPU pods, SLURM)", flag_values=fv)

    fv = cli_flags.parse_flags("sid2video train", argv, define, renamed=cli_flags.TRAIN_STEPS)
    if not fv.workdir:
        raise SystemExit("sid2video train: --workdir is required")
    sharding.join_from_flags(fv)
    try:  # the held-out data and the feature networks' weights are checked before training starts
        hooks = eval_hooks(fv.config, fv.workdir)
    except (ValueError, FileNotFoundError) as err:
        if errors.debugging():
            raise
        raise SystemExit(f"sid2video train: {err}")
    try:
        summary = fit(fv.config, fv.workdir, steps=fv.train_steps, minutes=fv.minutes, hooks=hooks)
    except (NonFiniteError, ckpt.CheckpointMismatchError, ValueError) as err:
        if errors.debugging():  # --debug: the traceback, not the one line
            raise
        raise SystemExit(f"sid2video train: {err}")
    print(json.dumps({k: v for k, v in summary.items() if k != "last_metrics"}))
    return 0
