"""Orbax checkpoints of a training run: parameters, EMA, optimizer state, step and data state.

A checkpoint directory `workdir/checkpoints/<step>/` holds five items:

    params  the model parameters (a nested dict of arrays)
    ema     the exponential moving average of the parameters
    opt     the optimizer state and the step
    data    the data iterator's state (JSON), so a resumed run continues on the same batches
    meta    JSON: the model config, the config fingerprint, the sid2video version

Items are saved together and restored separately: sampling and evaluation restore `ema` and `meta`
only and never need the optimizer. Orbax writes each checkpoint into a temporary directory and
renames it when complete, so a crash during a save leaves the previous checkpoint usable.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
from typing import Any, Mapping

import jax
import orbax.checkpoint as ocp

ITEMS = ("params", "ema", "opt", "data", "meta")


class CheckpointMismatchError(ValueError):
    """A checkpoint does not belong to the current model config."""


def _plain(value: Any) -> Any:
    """Config values as JSON-stable plain Python (tuples become lists, ConfigDicts dicts)."""
    if hasattr(value, "to_dict"):
        value = value.to_dict()
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in sorted(value.items())}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def fingerprint(model_config: Mapping[str, Any]) -> str:
    """A short hash of everything that determines the parameter shapes and the function."""
    blob = json.dumps(_plain(model_config), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def check_compatible(saved_meta: Mapping[str, Any], model_config: Mapping[str, Any], where: str) -> None:
    """Refuse a checkpoint written for another model config, naming the keys that differ."""
    saved = saved_meta.get("model_config", {})
    current = _plain(model_config)
    if saved_meta.get("fingerprint") == fingerprint(model_config):
        return
    keys = sorted(set(saved) | set(current))
    diffs = [f"model.{k}: checkpoint {saved.get(k)!r} vs config {current.get(k)!r}"
             for k in keys if saved.get(k) != current.get(k)]
    detail = "; ".join(diffs) if diffs else "fingerprints differ"
    raise CheckpointMismatchError(
        f"the checkpoint in {where} was written for another model config ({detail}). "
        "Use the config it was trained with, or a fresh --workdir."
    )


class Checkpointer:
    """Save and restore training checkpoints in `workdir/checkpoints` (keep-last-N plus keep-every-K)."""

    def __init__(self, workdir: str | pathlib.Path, *, keep: int = 3, keep_every: int | None = None,
                 async_save: bool = True, create: bool = True):
        self.directory = pathlib.Path(workdir).absolute() / "checkpoints"
        if not create and not self.directory.is_dir():
            raise FileNotFoundError(
                f"no checkpoint in {self.directory}; train first (sid2video train --workdir ...)"
            )
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            keep_period=keep_every,
            enable_async_checkpointing=async_save,
            create=create,
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def save(self, step: int, *, params: Any, ema: Any, opt: Any, data: Mapping[str, Any] | None,
             meta: Mapping[str, Any], force: bool = False) -> bool:
        args = ocp.args.Composite(
            params=ocp.args.StandardSave(params),
            ema=ocp.args.StandardSave(ema),
            opt=ocp.args.StandardSave(opt),
            data=ocp.args.JsonSave(dict(data or {})),
            meta=ocp.args.JsonSave(_plain(meta)),
        )
        return self._manager.save(step, args=args, force=force)

    def wait(self) -> None:
        """Block until an asynchronous save has finished writing."""
        self._manager.wait_until_finished()

    def read_meta(self, step: int | None = None) -> dict[str, Any]:
        step = self._resolve(step)
        return dict(self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta)

    def restore(self, step: int | None, targets: Mapping[str, Any]) -> dict[str, Any]:
        """Restore the named items. `targets` maps array items to abstract trees
        (jax.ShapeDtypeStruct leaves, with shardings) and JSON items ('data', 'meta') to None."""
        step = self._resolve(step)
        args = {}
        for name, target in targets.items():
            if name not in ITEMS:
                raise ValueError(f"unknown checkpoint item {name!r}; items are {ITEMS}")
            if name in ("data", "meta"):
                args[name] = ocp.args.JsonRestore()
            else:
                args[name] = ocp.args.StandardRestore(target)
        restored = self._manager.restore(step, args=ocp.args.Composite(**args))
        return {name: restored[name] for name in targets}

    def _resolve(self, step: int | None) -> int:
        if step is None:
            step = self.latest_step()
            if step is None:
                raise FileNotFoundError(
                    f"no checkpoint in {self.directory}; train first (sid2video train --workdir ...)"
                )
        elif step not in self._manager.all_steps():
            raise FileNotFoundError(
                f"no checkpoint for step {step} in {self.directory}; available: {self.all_steps()}"
            )
        return step

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def abstract_like(tree: Any, sharding: Any = None) -> Any:
    """ShapeDtypeStruct leaves for `tree` (optionally with one sharding or a matching tree of them)."""
    if sharding is None or isinstance(sharding, jax.sharding.Sharding):
        return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), tree)
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), tree, sharding)


def fresh_state(abstract: Any) -> Any:
    """Concrete values for a model's non-parameter state (its rng streams): keys for key leaves,
    zeros otherwise. Callers reseed the streams they use."""
    def leaf(a):
        if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
            return jax.numpy.broadcast_to(jax.random.key(0), a.shape)
        return jax.numpy.zeros(a.shape, a.dtype)

    return jax.tree.map(leaf, abstract)


def load_model(workdir: str | pathlib.Path, step: int | None = None, *, ema: bool = True,
               mesh: Any = None):
    """The network of a training run with its EMA (or raw) parameters, and the run's config.

    Returns (model, config, step): config is the run's full config as a ConfigDict, as saved in
    the checkpoint. The parameters are restored onto `mesh` (default: `sharding.sampling_mesh`
    of the run's config over all devices: replicated, or split as the run's FSDP was where the
    devices allow), whatever devices the run was trained on. Nothing from the trainer is needed.
    """
    import ml_collections
    from flax import nnx

    from sid2video import sharding
    from sid2video.models import uvit

    checkpointer = Checkpointer(workdir, async_save=False, create=False)
    try:
        step = checkpointer._resolve(step)
        meta = checkpointer.read_meta(step)
        model_cfg = uvit.UViTConfig.from_config(meta["model_config"])
        if meta.get("fingerprint") != fingerprint(meta["model_config"]):
            raise CheckpointMismatchError(
                f"checkpoint {step} in {checkpointer.directory} has inconsistent metadata "
                "(its model config does not match its fingerprint); it cannot be trusted"
            )
        graphdef, abstract_params, rest = nnx.split(uvit.abstract(model_cfg), nnx.Param, ...)
        run_config = ml_collections.ConfigDict(meta.get("config") or {"model": meta["model_config"]})
        if mesh is None:
            mesh = sharding.sampling_mesh(run_config)
        target = nnx.to_pure_dict(abstract_params)
        target = abstract_like(target, sharding.param_shardings(target, mesh, sharding.min_params(run_config)))
        item = "ema" if ema else "params"
        params = checkpointer.restore(step, {item: target})[item]
    finally:
        checkpointer.close()
    state = jax.tree.map(lambda a: a, abstract_params)
    nnx.replace_by_pure_dict(state, params)
    model = nnx.merge(graphdef, state, fresh_state(rest))
    return model, run_config, step
