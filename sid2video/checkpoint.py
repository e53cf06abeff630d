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
import logging
import pathlib
from typing import Any, Mapping

import jax
import orbax.checkpoint as ocp

from sid2video import checkpoint_faults as faults
from sid2video import workdir_lock
from sid2video.errors import UserError

log = logging.getLogger("sid2video.checkpoint")

ITEMS = ("params", "ema", "opt", "data", "meta")


class CheckpointMismatchError(UserError, ValueError):
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


class CheckpointError(UserError, ValueError):
    """A checkpoint cannot be written or read; the message is one line naming the file and cause."""


class DamagedCheckpointError(CheckpointError):
    """A checkpoint exists but does not restore (a truncated or missing file)."""


class NoRestorableCheckpointError(CheckpointError):
    """Every checkpoint of a run fails to restore."""


class CheckpointWriteError(CheckpointError):
    """A save failed (a full disk, a permission, a vanished mount); the previous checkpoint is intact."""


class Checkpointer:
    """Save and restore training checkpoints in `workdir/checkpoints` (keep-last-N plus keep-every-K).

    With `lock=True` this is the run's writer: process 0 holds `workdir/train.lock` until `close()`
    (a second trainer on the workdir stops with `WorkdirLockedError`), and resuming (`restore` with
    step None) falls back past checkpoints that do not restore, renaming each to `<step>.damaged`.
    Readers (lock=False) never lock or rename; a checkpoint that does not restore is one
    `DamagedCheckpointError`. A failed save is one `CheckpointWriteError`; its temporary folder is
    removed and the checkpoints before it are untouched.
    """

    def __init__(self, workdir: str | pathlib.Path, *, keep: int = 3, keep_every: int | None = None,
                 async_save: bool = True, create: bool = True, lock: bool = False):
        self.directory = pathlib.Path(workdir).absolute() / "checkpoints"
        if not create and not self.directory.is_dir():
            raise FileNotFoundError(
                f"no checkpoint in {self.directory}; train first (sid2video train --workdir ...)"
            )
        self.owner = lock
        self._lock = workdir_lock.WorkdirLock(workdir) if lock and jax.process_index() == 0 else None
        self._failed: CheckpointWriteError | None = None
        self._saving: int | None = None
        self._meta_read: tuple[int, dict] | None = None
        faults.watch(self.directory)
        try:
            options = ocp.CheckpointManagerOptions(
                max_to_keep=keep,
                keep_period=keep_every,
                enable_async_checkpointing=async_save,
                create=create,
            )
            self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)
        except BaseException:
            faults.unwatch(self.directory, failed=False)
            self._release()
            raise

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    # -- saving -----------------------------------------------------------------------------------
    def save(self, step: int, *, params: Any, ema: Any, opt: Any, data: Mapping[str, Any] | None,
             meta: Mapping[str, Any], force: bool = False) -> bool:
        if self._failed is not None:
            raise self._failed
        args = ocp.args.Composite(
            params=ocp.args.StandardSave(params),
            ema=ocp.args.StandardSave(ema),
            opt=ocp.args.StandardSave(opt),
            data=ocp.args.JsonSave(dict(data or {})),
            meta=ocp.args.JsonSave(_plain(meta)),
        )
        self._saving = step
        try:
            return self._manager.save(step, args=args, force=force)
        except Exception as err:  # noqa: BLE001  (an async save's failure may surface at the next save)
            raise self._write_failed(step, err) from None

    def wait(self) -> None:
        """Block until an asynchronous save has finished writing."""
        if self._failed is not None:
            raise self._failed
        try:
            self._manager.wait_until_finished()
        except Exception as err:  # noqa: BLE001
            raise self._write_failed(self._saving, err) from None

    def _write_failed(self, step: int | None, err: BaseException) -> CheckpointWriteError:
        """Report a failed save in one line; remove its temporary folder; refuse further saves."""
        try:
            self._manager.wait_until_finished()
        except Exception:  # noqa: BLE001  (the same failure again)
            pass
        step = faults.partial_step(err, step)
        if jax.process_index() == 0:
            faults.remove_partial(self.directory)
        kept = [s for s in self._manager.all_steps() if s != step]
        where = f"checkpoint {step} in {self.directory}" if step is not None else f"a checkpoint in {self.directory}"
        self._failed = CheckpointWriteError(
            f"could not write {where} ({faults.describe(err, self.directory)}); the run stopped. "
            f"Intact checkpoints: {sorted(kept) or 'none'}. Free space or fix the path, then train again to resume."
        )
        return self._failed

    # -- restoring --------------------------------------------------------------------------------
    def read_meta(self, step: int | None = None) -> dict[str, Any]:
        if step is None and self.owner:
            for s in reversed(self.all_steps()):  # the newest whose meta reads (restore() checks the rest)
                try:
                    meta = self._read_meta(s)
                except Exception:  # noqa: BLE001
                    continue
                self._meta_read = (s, meta)
                return meta
        step = self._resolve(step)
        try:
            return self._read_meta(step)
        except Exception as err:  # noqa: BLE001
            raise self._damaged(step, err) from None

    def _read_meta(self, step: int) -> dict[str, Any]:
        return dict(self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta)

    def restore(self, step: int | None, targets: Mapping[str, Any]) -> dict[str, Any]:
        """Restore the named items. `targets` maps array items to abstract trees
        (jax.ShapeDtypeStruct leaves, with shardings) and JSON items ('data', 'meta') to None.
        With step None the newest checkpoint is restored; the run's writer (lock=True) falls back
        to older ones past those that fail, and sets those aside."""
        args = {}
        for name, target in targets.items():
            if name not in ITEMS:
                raise ValueError(f"unknown checkpoint item {name!r}; items are {ITEMS}")
            if name in ("data", "meta"):
                args[name] = ocp.args.JsonRestore()
            else:
                args[name] = ocp.args.StandardRestore(target)
        if step is None and self.owner:
            return self._restore_newest_intact(args, list(targets))
        step = self._resolve(step)
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(**args))
        except Exception as err:  # noqa: BLE001
            raise self._damaged(step, err) from None
        return {name: restored[name] for name in targets}

    def _restore_newest_intact(self, args: dict, names: list[str]) -> dict[str, Any]:
        args = dict(args, meta=ocp.args.JsonRestore())  # a damaged meta counts too
        failures: list[tuple[int, str]] = []
        for step in reversed(self.all_steps()):
            try:
                restored = self._manager.restore(step, args=ocp.args.Composite(**args))
                error = None
            except Exception as err:  # noqa: BLE001
                restored, error = None, faults.describe(err, self.directory, step)
            if _any_process(error is not None):
                failures.append((step, error or "failed on another process"))
                continue
            self._set_aside(failures, step)
            self._check_same_model(step, restored["meta"])
            return {name: restored[name] for name in names}
        if not failures:
            raise FileNotFoundError(f"no checkpoint in {self.directory}; train first (sid2video train --workdir ...)")
        detail = "; ".join(f"{s}: {e}" for s, e in failures)
        raise NoRestorableCheckpointError(
            f"no checkpoint in {self.directory} restores ({detail}). Nothing was renamed; move them away "
            "to start afresh, or repair the files."
        )

    def _set_aside(self, failures: list[tuple[int, str]], restored: int) -> None:
        """Rename the newer checkpoints that failed to `<step>.damaged` (process 0), then let every
        process see the new list of steps."""
        for step, error in failures:
            if jax.process_index() == 0:
                moved = faults.set_aside(self.directory, step)
                log.warning("checkpoint %d does not restore (%s); set aside as %s, resuming from %d",
                            step, error, moved, restored)
        if failures:
            _barrier("sid2video_checkpoint_set_aside")
            self._manager.reload()

    def _check_same_model(self, step: int, meta: Mapping[str, Any]) -> None:
        """The meta the caller checked (read_meta) must be that of the step finally restored."""
        if self._meta_read is None or self._meta_read[0] == step:
            return
        if meta.get("fingerprint") != self._meta_read[1].get("fingerprint"):
            raise CheckpointMismatchError(
                f"checkpoint {step} in {self.directory}, the newest that restores, was written for another "
                f"model config than checkpoint {self._meta_read[0]}; use a fresh --workdir"
            )

    def _damaged(self, step: int, err: BaseException) -> DamagedCheckpointError:
        older = [s for s in self.all_steps() if s < step]
        hint = f" Pass an older one ({older[-1]}) explicitly, or resume training to set it aside." if older else ""
        return DamagedCheckpointError(
            f"checkpoint {step} in {self.directory} cannot be restored ({faults.describe(err, self.directory, step)}).{hint}"
        )

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
        """Finish a pending save, close Orbax, release the lock. Raises CheckpointWriteError when
        the pending save fails (once: a failure already raised is not raised again)."""
        try:
            if self._failed is None:
                self.wait()
        finally:
            try:
                self._manager.close()
            except Exception as err:  # noqa: BLE001  (after a failed save Orbax repeats the failure)
                if self._failed is None:
                    raise self._write_failed(self._saving, err) from None
            finally:
                if self._failed is not None and jax.process_index() == 0:
                    faults.remove_partial(self.directory)
                faults.unwatch(self.directory, failed=self._failed is not None)
                self._release()

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None


def _any_process(flag: bool) -> bool:
    """Whether `flag` holds on any process (all processes must agree on the step they restore)."""
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    import numpy as np  # pylint: disable=import-outside-toplevel

    return bool(np.any(multihost_utils.process_allgather(np.asarray(flag, np.int32))))


def _barrier(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel

        multihost_utils.sync_global_devices(name)


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
