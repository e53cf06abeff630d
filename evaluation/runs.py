"""A training run as evaluation sees it: its checkpoint steps, its config with sampler overrides,
its data config, and a sampler that is reused across checkpoints of the same network."""

from __future__ import annotations

import contextlib
import pathlib
from typing import Any, Mapping

import numpy as np

from evaluation import clips as clips_lib

__all__ = ["checkpoint_steps", "apply_sampler", "read_meta", "run_and_data", "generator_for"]


def checkpoint_steps(workdir: pathlib.Path, checkpoint) -> list[int | None]:
    from sid2video import checkpoint as ckpt

    directory = workdir / "checkpoints"
    if not directory.is_dir():
        raise FileNotFoundError(f"no checkpoints in {directory}: is --workdir a training run? "
                                "(train first: sid2video train --workdir ...)")
    steps = ckpt.Checkpointer(workdir, async_save=False)
    try:
        available = steps.all_steps()
    finally:
        steps.close()
    if not available:
        raise FileNotFoundError(f"no checkpoints in {directory}; train first (sid2video train --workdir ...)")
    if checkpoint in (None, "latest", "last"):
        return [available[-1]]
    if checkpoint == "all":
        return list(available)
    wanted = [int(s) for s in str(checkpoint).split(",")] if isinstance(checkpoint, str) else (
        [int(checkpoint)] if np.ndim(checkpoint) == 0 else [int(s) for s in checkpoint])
    missing = [s for s in wanted if s not in available]
    if missing:
        raise FileNotFoundError(f"no checkpoint for step(s) {missing} in {directory}; available: {available}")
    return wanted


def apply_sampler(config, sampler: Mapping[str, Any] | None):
    """config with sampler overrides applied (a copy); guidance_interval='none' removes the interval."""
    config = config.copy_and_resolve_references() if hasattr(config, "copy_and_resolve_references") else config
    if not sampler:
        return config
    import ml_collections

    from sid2video import checkpoint as ckpt

    section = dict(ckpt._plain(config.get("sampler", {}) or {}))   # pylint: disable=protected-access
    for k, v in sampler.items():
        if v is None:
            continue
        if k == "guidance_interval" and (v == () or (isinstance(v, str) and v.lower() == "none")):
            v = None
        section[k] = tuple(v) if isinstance(v, list) else v
    with config.unlocked() if hasattr(config, "unlocked") else contextlib.nullcontext():
        config.sampler = ml_collections.ConfigDict(section)
    return config


def read_meta(workdir: pathlib.Path, step) -> dict:
    from sid2video import checkpoint as ckpt

    reader = ckpt.Checkpointer(workdir, async_save=False)
    try:
        return reader.read_meta(step)
    finally:
        reader.close()


def run_and_data(workdir: pathlib.Path | None, *, samples=None, checkpoint=None, sampler=None, data=None,
                 data_dir=None):
    """(checkpoint steps, run config with sampler overrides or None, data config): of the run's
    checkpoints, or ([], None, data config) for samples given by path."""
    if samples is None:
        steps = checkpoint_steps(workdir, checkpoint)
        import ml_collections

        meta = read_meta(workdir, steps[0])
        config = ml_collections.ConfigDict(meta.get("config") or {"model": meta["model_config"]})
        config = apply_sampler(config, sampler)
        return steps, config, clips_lib.data_config(data if data is not None else config.get("data", {}), data_dir)
    if data is None and workdir is None:
        raise ValueError("evaluating samples by path needs the reference dataset: pass data= (or --dataset "
                         "and --data_dir) or a workdir whose config names it")
    if data is None:
        if not (workdir / "checkpoints").is_dir():
            raise FileNotFoundError(f"no checkpoints in {workdir / 'checkpoints'} to take the data config "
                                    "from; pass the dataset (--dataset/--data_dir) instead")
        data = (read_meta(workdir, None).get("config") or {}).get("data", {})
    return [], None, clips_lib.data_config(data, data_dir)


def generator_for(previous, model, config):
    """A sample.Generator for `model`; the previous one gets the new parameters when the network and
    the sampling config are the same, so its compiled sampling loop is reused across checkpoints."""
    from sid2video import checkpoint as ckpt
    from sid2video import sample as sample_lib

    plain = ckpt._plain   # pylint: disable=protected-access
    if previous is not None and plain(previous.config) == plain(config):
        try:
            previous.set_model(model)
            return previous
        except ValueError:  # another network structure: compile anew
            pass
    return sample_lib.Generator(model, config)
