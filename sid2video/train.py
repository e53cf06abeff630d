"""The training loop: `fit(config, workdir)`.

A run in `workdir` resumes from its latest checkpoint (parameters, optimiser state, EMA, step and
the data iterator's state), so it continues on exactly the batches it would have seen. Several
processes (TPU/GPU pods, or CPU processes with gloo) run the same program after
`sharding.initialize_distributed`; each feeds its own share of the global batch. The step itself
is in trainer.py, the optimiser in optim.py, the reporting in runlog.py; the `sid2video train`
command, which hands `fit` the evaluators of evaluation/ as hooks, is train_command.py.
"""

from __future__ import annotations

import json
import logging
import pathlib
import signal
import time
from typing import Any, Callable, Iterator, Mapping, Sequence

import jax
import numpy as np

from sid2video import checkpoint as ckpt
from sid2video import sharding
from sid2video.preview import Preview
from sid2video.runlog import RunLog
from sid2video.trainer import Trainer, TrainState

log = logging.getLogger("sid2video.train")

# hook(step, ema_model) -> {name: number}: called every config.train.eval_every steps with the
# network holding the EMA parameters, on every process; the loop logs the numbers as eval/<name>.
Hook = Callable[[int, Any], Mapping[str, float]]


class NonFiniteError(RuntimeError):
    """The loss or the gradients became NaN or Inf (or were so too often, with on_nonfinite='skip')."""


class _StopRequest:
    """SIGTERM / SIGINT: finish the current step, save, exit cleanly."""

    def __init__(self):
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        self.signal = signum

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, Mapping):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(_flat(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}


def record_resumed_config(workdir: pathlib.Path, config, step: int) -> list[str]:
    """A run resumed with other settings than its config.json (the model's must match, the loss's,
    schedule's, sampler's or training's may change): config.json becomes the settings the run now
    trains with (each checkpoint also holds its own, which `sample` and `evaluate` read), and the
    old file is kept as config.until_step_<step>.json, so the run's record says what each stretch
    of steps was trained with. Logs a warning naming each changed key; returns those keys ([] when
    nothing changed or there was no config.json)."""
    path = pathlib.Path(workdir) / "config.json"
    current = ckpt._plain(config)
    if not path.exists():
        path.write_text(json.dumps(current, indent=2))
        return []
    before = json.loads(path.read_text())
    old, new = _flat(before), _flat(current)
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if not changed:
        return []
    kept = path.with_name(f"config.until_step_{step}.json")
    path.replace(kept)
    path.write_text(json.dumps(current, indent=2))
    log.warning("resumed at step %d with changed settings (%s); %s now holds the new ones, the old are in %s",
                step, "; ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed), path.name, kept.name)
    return changed


class _Run:
    """One call of `fit`: what the loop needs between steps (trainer, checkpointer, data, the
    stop conditions, the reporting) and the non-finite policy (config.train.on_nonfinite)."""

    def __init__(self, trainer: Trainer, workdir: pathlib.Path, it: Iterator, *, target: int,
                 minutes: float | None, progress: bool, handle_signals: bool, hooks: Sequence[Hook] = ()):
        tc = trainer.tc
        self.trainer, self.tc, self.workdir, self.it = trainer, tc, workdir, it
        self.target, self.minutes = target, minutes
        self.checkpointer = ckpt.Checkpointer(workdir, keep=tc.keep_checkpoints, keep_every=tc.keep_every or None,
                                              async_save=tc.async_checkpoint, lock=True)
        self.preview = Preview(trainer) if tc.sample_every else None
        self.hooks = list(hooks) if tc.eval_every else []
        if tc.eval_every and not self.hooks:
            log.warning("config.train.eval_every=%d but fit was given no hooks: nothing is evaluated "
                        "(`sid2video train` builds them)", tc.eval_every)
        self.stop = _StopRequest()
        if handle_signals:
            self.stop.install()
        self.t_start = time.perf_counter()
        self.reason = "steps"
        self.log: RunLog | None = None

    def start(self, config) -> TrainState:
        """The latest checkpoint's state (the data iterator set to its position), or a fresh one."""
        if self.checkpointer.latest_step() is not None:
            state, data_state = self.trainer.restore(self.checkpointer)
            if data_state:
                self.it.set_state(data_state)
            log.info("resumed from step %d in %s", int(state.step), self.checkpointer.directory)
            if jax.process_index() == 0:
                record_resumed_config(self.workdir, config, int(state.step))
        else:
            state = self.trainer.init_state()
            if jax.process_index() == 0:
                (self.workdir / "config.json").write_text(json.dumps(ckpt._plain(config), indent=2))
        return state

    def should_stop(self) -> bool:
        """A signal or the time budget, on any process: every process stops at the same step
        (the save and the train step are collective)."""
        local = None
        if self.stop.signal is not None:
            local = f"signal {signal.Signals(self.stop.signal).name}"
        elif self.minutes is not None and time.perf_counter() - self.t_start > 60 * self.minutes:
            local = f"time budget of {self.minutes} min"
        if sharding.any_process(local is not None):
            self.reason = local or "another process stopped (signal or time budget)"
            return True
        return False

    def check(self, step_index: int, metrics: Mapping, batch: Mapping, state: TrainState) -> None:
        """Report step `step_index`, whose update gave `state`. A non-finite update (which left
        the state untouched) stops the run with a snapshot, or is counted and skipped."""
        m, finite = self.log.fetch(metrics)
        if not finite:
            if self.tc.on_nonfinite == "stop":
                self._fail(step_index, m, batch, state, "")
            self.log.nonfinite_skipped += 1
            skipped, limit = self.log.nonfinite_skipped, self.tc.max_nonfinite_skips
            log.warning("step %d: non-finite loss or gradients; update skipped (%d so far)", step_index, skipped)
            if limit and skipped > limit:
                self._fail(step_index, m, batch, state,
                           f"{skipped} updates of this run were skipped, more than train.max_nonfinite_skips="
                           f"{limit}. ")
        self.log.step_done(step_index, m)

    def _fail(self, step_index: int, m: Mapping, batch: Mapping, state: TrainState, why: str) -> None:
        # The step did not change the state but its counter: one back is the state it started from.
        snapshot = debug_snapshot(self.workdir, self.trainer, state.replace(step=state.step - 1), batch, step_index)
        raise NonFiniteError(
            f"step {step_index}: the loss ({m['loss']}) or the gradient norm ({m['grad_norm']}) is not "
            f"finite. {why}The update was not applied; the state before it and the batch are in "
            f"{snapshot}. Lower train.learning_rate, check the data, or set train.on_nonfinite='skip' "
            f"(with train.max_nonfinite_skips) to drop such updates."
        )

    def after_step(self, step: int, state: TrainState, batch: Mapping) -> int | None:
        """Periodic checkpoint and samples after `step` updates; the step saved, if any."""
        saved = None
        if step % self.tc.checkpoint_every == 0 and step < self.target:
            self.trainer.save(self.checkpointer, state, self.it.get_state())
            saved = step
        if self.preview is not None and step % self.tc.sample_every == 0:
            self.preview.write(state.ema, batch, step, self.workdir)
        if self.hooks and step % self.tc.eval_every == 0:
            self.evaluate(step, state)
        return saved

    def evaluate(self, step: int, state: TrainState) -> None:
        """Every hook on the EMA network after `step` updates. All processes run them (evaluation
        is collective); process 0 writes the eval/ row and logs one line. The time they take is
        left out of the next row's throughput."""
        t0 = time.perf_counter()
        model = self.trainer.model(state.ema)
        row: dict[str, float] = {}
        for hook in self.hooks:
            row.update({f"eval/{k}": float(v) for k, v in hook(step, model).items()})
        seconds = time.perf_counter() - t0
        self.log.writer.write(step, dict(row, **{"eval/seconds": seconds}))
        self.log.exclude(seconds)
        if jax.process_index() == 0:
            log.info("step %d eval: %s (%.1f s)", step, ", ".join(f"{k[5:]}={v:.4g}" for k, v in row.items())
                     or "no values", seconds)

    def close(self) -> None:
        if self.log is not None:
            self.log.close()
        self.checkpointer.close()
        self.stop.uninstall()


def fit(config, workdir: str | pathlib.Path, *, steps: int | None = None, minutes: float | None = None,
        data_iterator: Iterator | None = None, progress: bool = True, handle_signals: bool = True,
        hooks: Sequence[Hook] = ()) -> dict[str, Any]:
    """Train `config` in `workdir`, resuming from its latest checkpoint.

    Runs until step `steps` (default config.train.num_steps), until `minutes` of wall time have
    passed, or until SIGTERM/SIGINT; then saves a checkpoint and returns a summary. Raises
    NonFiniteError (after saving a debug snapshot: the state before the failing update and its
    batch) when the loss or gradients stop being finite and config.train.on_nonfinite is 'stop',
    or when more than config.train.max_nonfinite_skips updates of this call were skipped.
    Every config.train.eval_every steps (never at the start) each of `hooks` is called (`Hook`).
    """
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(config)
    tc = trainer.tc
    target = tc.num_steps if steps is None else int(steps)
    if data_iterator is None:
        from sid2video.data import pipeline

        data_iterator = pipeline.make_train_iterator(
            config.data, batch_size=tc.batch_size // jax.process_count(), seed=trainer.seed)
    run = _Run(trainer, workdir, data_iterator, target=target, minutes=minutes, progress=progress,
               handle_signals=handle_signals, hooks=hooks)
    try:
        state = run.start(config)
        start = int(state.step)
        run.log = RunLog(workdir, tc, trainer.model_cfg, start=start, target=target, progress=progress,
                         loader=data_iterator)
        state = _loop(run, state)
        run.checkpointer.wait()
    finally:
        run.close()
    elapsed = time.perf_counter() - run.t_start
    summary = {"step": int(state.step), "start_step": start, "stopped_by": run.reason,
               "seconds": elapsed, "steps_per_s": (int(state.step) - start) / max(elapsed, 1e-9),
               "last_metrics": run.log.last, "nonfinite_skipped": run.log.nonfinite_skipped}
    stats = run.log.loader_stats()
    if stats is not None and jax.process_index() == 0:
        log.info(stats.line())
    log.info("stopped at step %d (%s)", summary["step"], run.reason)
    return summary


def _loop(run: _Run, state: TrainState) -> TrainState:
    """Steps until the target or a stop; the final state saved unless a checkpoint holds it.

    A step's metrics are read after the next batch is fetched (the host loads data while the
    device computes) but before the next step starts, so a non-finite step is caught while its
    resulting state is still there to snapshot."""
    step = int(state.step)
    saved = run.checkpointer.latest_step()  # the step of the newest checkpoint, None if none
    pending: tuple[int, Mapping, Mapping] | None = None
    while step < run.target and not run.should_stop():
        batch = next(run.it)
        if pending is not None:
            run.check(*pending, state)
        state, metrics = run.trainer.step(state, batch)
        pending = (step, metrics, batch)
        step += 1
        run.log.advance()
        saved = run.after_step(step, state, batch) or saved
    if pending is not None:
        run.check(*pending, state)
    if saved != step:
        run.trainer.save(run.checkpointer, state, run.it.get_state(), force=True)
    return state


def debug_snapshot(workdir: pathlib.Path, trainer: Trainer, state: TrainState, batch: Mapping,
                   step_index: int) -> pathlib.Path:
    """Save `state` (a checkpoint of step `step_index`, the state before the failing update) and
    the failing batch (batch.npz, process 0's share) to WORKDIR/debug_step_N. Replay with
    `trainer.step(trainer.restore(Checkpointer(path))[0], np.load(path / 'batch.npz'))`."""
    path = workdir / f"debug_step_{step_index}"
    path.mkdir(parents=True, exist_ok=True)
    if jax.process_index() == 0:
        np.savez(path / "batch.npz", **{k: np.asarray(v) for k, v in batch.items()})
    snap = ckpt.Checkpointer(path, keep=1, async_save=False)
    trainer.save(snap, state, None, force=True)
    snap.close()
    return path
