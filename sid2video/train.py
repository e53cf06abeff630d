"""Training: the train state, the sharded train step, EMA, checkpoints with data state, the loop.

The train step is a pure function of (state, batch, rng), jitted once over a `Mesh` with explicit
in/out shardings and a donated state. The mesh has axes ('data', 'fsdp'): data parallel by
default (fsdp = 1, parameters replicated), FSDP by `config.train.fsdp` (parameters and optimizer
state split over the 'fsdp' axis). The batch is split over both axes. Several processes (TPU/GPU
pods, or CPU processes with gloo) run the same program after `jax.distributed.initialize()`; each
feeds its own share of the global batch from its grain shard.

A run in `workdir` resumes from its latest checkpoint (parameters, optimizer state, EMA, step and
the data iterator's state), so it continues on exactly the batches it would have seen.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
import signal
import time
from typing import Any, Iterator, Mapping

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh

from sid2video import checkpoint as ckpt
from sid2video import sharding
from sid2video.config import TrainConfig
from sid2video.sharding import initialize_distributed, make_mesh  # noqa: F401  (re-exported)
from sid2video.diffusion import losses, schedules
from sid2video.models import uvit

log = logging.getLogger("sid2video.train")
Array = jax.Array


# ----------------------------------------------------------------------------- config


def conditioning_frames(config) -> int:
    """How many leading frames of each clip are conditioning (0 for images and unconditional video)."""
    return int(config.data.get("num_cond_frames", 0) or 0)


# ----------------------------------------------------------------------------- state


@flax.struct.dataclass
class TrainState:
    step: Array  # int32 scalar
    params: Any  # nested dict of arrays (the nnx.Param values)
    opt_state: Any
    ema: Any


def learning_rate_schedule(tc: TrainConfig) -> optax.Schedule:
    """Linear warm-up from 0 to `learning_rate` over `warmup_steps` (SPEC §6), then constant
    (`lr_decay='none'`, the papers' setting) or decaying to 0 at `num_steps` along a half cosine or
    a line (for short runs, where the last steps at a small rate are worth more than the papers'
    constant rate)."""
    peak, warm = tc.learning_rate, tc.warmup_steps
    if tc.lr_decay == "none":
        return optax.linear_schedule(0.0, peak, warm) if warm else optax.constant_schedule(peak)
    span = tc.num_steps - warm
    if tc.lr_decay == "cosine":
        decay = optax.cosine_decay_schedule(peak, span)
    else:
        decay = optax.linear_schedule(peak, 0.0, span)
    if not warm:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warm), decay], [warm])


def make_optimizer(tc: TrainConfig) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """Adam(β1, β2, ε) at `learning_rate_schedule(tc)`, global-norm clipping (SPEC §6)."""
    lr = learning_rate_schedule(tc)
    parts = []
    if tc.grad_clip > 0:
        parts.append(optax.clip_by_global_norm(tc.grad_clip))
    parts.append(optax.adamw(lr, b1=tc.adam_b1, b2=tc.adam_b2, eps=tc.adam_eps, weight_decay=tc.weight_decay))
    return optax.chain(*parts), lr


class Trainer:
    """Builds the model, optimizer, mesh and the jitted step for one config."""

    def __init__(self, config, mesh: Mesh | None = None):
        self.config = config
        self.tc = TrainConfig.from_config(config.train)
        self.model_cfg = uvit.UViTConfig.from_config(config.model)
        self.schedule = schedules.from_config(config.schedule)
        self.loss_cfg = losses.LossConfig.from_config(config.loss)
        self.class_drop_rate = float(config.loss.get("class_drop_rate", 0.0))
        self.cond_drop_rate = float(config.loss.get("cond_drop_rate", 0.0))
        self.num_cond = conditioning_frames(config)
        if self.num_cond >= self.model_cfg.num_frames:
            raise ValueError(
                f"config.data.num_cond_frames={self.num_cond} must be below model.num_frames="
                f"{self.model_cfg.num_frames}: at least one frame has to be predicted"
            )
        if self.num_cond and not self.model_cfg.frame_conditioning:
            raise ValueError(
                f"config.data.num_cond_frames={self.num_cond} needs config.model.frame_conditioning=True"
            )
        self.seed = int(config.get("seed", 0))
        self.base_key = jax.random.PRNGKey(self.seed)
        self.mesh = mesh or make_mesh(self.tc.fsdp)
        n_batch_shards = self.mesh.devices.size
        micro = self.tc.batch_size // self.tc.grad_accum_steps
        if micro % n_batch_shards:
            raise ValueError(
                f"config.train.batch_size={self.tc.batch_size} / grad_accum_steps={self.tc.grad_accum_steps} "
                f"= {micro} must be divisible by the number of devices ({n_batch_shards})"
            )
        if self.tc.batch_size % jax.process_count():
            raise ValueError(
                f"config.train.batch_size={self.tc.batch_size} must be divisible by the number of "
                f"processes ({jax.process_count()})"
            )
        self.tx, self.lr_schedule = make_optimizer(self.tc)

        abstract_model = uvit.abstract(self.model_cfg)
        self.graphdef, abstract_params, self._abstract_rest = nnx.split(abstract_model, nnx.Param, ...)
        self._param_template = abstract_params
        abstract_state = jax.eval_shape(self._init_state)
        self.state_shardings = sharding.param_shardings(abstract_state, self.mesh, self.tc.fsdp_min_params)
        self.abstract_state = ckpt.abstract_like(abstract_state, self.state_shardings)
        self.batch_sharding = sharding.batch_sharding(self.mesh)
        self.replicated = sharding.replicated(self.mesh)
        self._step = jax.jit(
            self.train_step,
            in_shardings=(self.state_shardings, self.batch_sharding, self.replicated),
            out_shardings=(self.state_shardings, self.replicated),
            donate_argnums=(0,),
        )

    # -- state ------------------------------------------------------------------------------------
    def _init_state(self) -> TrainState:
        model = uvit.create(self.model_cfg, seed=self.seed)
        params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
        return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                          opt_state=self.tx.init(params), ema=params)

    def init_state(self) -> TrainState:
        """Fresh parameters, created directly with their shardings."""
        return jax.jit(self._init_state, out_shardings=self.state_shardings)()

    def model(self, params: Any) -> uvit.UViT:
        """The network with the given parameters (a nested dict), inside or outside jit."""
        state = jax.tree.map(lambda a: a, self._param_template)  # a copy to fill in
        nnx.replace_by_pure_dict(state, params)
        return nnx.merge(self.graphdef, state, ckpt.fresh_state(self._abstract_rest))

    # -- the step ---------------------------------------------------------------------------------
    def cond_mask(self, batch_size: int) -> Array:
        t = self.model_cfg.num_frames
        return jnp.broadcast_to((jnp.arange(t) < self.num_cond).astype(jnp.float32), (batch_size, t))

    def loss_fn(self, params: Any, batch: Mapping[str, Array], rng: Array, step: Array):
        x = batch["video"].astype(jnp.float32) / 127.5 - 1.0
        b = x.shape[0]
        rng_drop, rng_label, rng_cond, rng_loss = jax.random.split(rng, 4)
        model = self.model(params)
        # Scanned blocks hold their dropout keys stacked along the block axis; 'match_shape' gives
        # every block (and every stream) its own key derived from rng_drop.
        nnx.reseed(model, dropout=rng_drop, policy="match_shape")
        label = None
        if self.model_cfg.num_classes:
            label = losses.drop_labels(rng_label, batch["label"].astype(jnp.int32), self.class_drop_rate,
                                       self.model_cfg.num_classes)
        cond_mask = cond = None
        loss_mask = None
        if self.model_cfg.frame_conditioning:
            cond_mask = self.cond_mask(b)
            if self.cond_drop_rate > 0:
                cond_mask = losses.drop_condition(rng_cond, cond_mask, self.cond_drop_rate)
            cond = x
            # The loss covers the frames the model has to predict (all of them where dropped).
            loss_mask = 1.0 - cond_mask

        def model_fn(z, logsnr):
            return model(z, logsnr, cond=cond, cond_mask=cond_mask, label=label, deterministic=False)

        # Conditioning frames enter z_t clean, as the samplers hold them.
        return losses.diffusion_loss(model_fn, x, rng_loss, schedule=self.schedule, cfg=self.loss_cfg,
                                     mask=loss_mask, clean=cond_mask, step=step)

    def train_step(self, state: TrainState, batch: Mapping[str, Array], rng: Array):
        """One update. `rng` is the run's base key; this step uses fold_in(rng, state.step), so a
        resumed run draws the same noise as an uninterrupted one."""
        tc = self.tc
        rng = jax.random.fold_in(rng, state.step)
        grad_fn = jax.value_and_grad(self.loss_fn, has_aux=True)
        if tc.grad_accum_steps == 1:
            (loss, metrics), grads = grad_fn(state.params, batch, rng, state.step)
        else:
            n = tc.grad_accum_steps

            def split(a):  # microbatch j takes examples j, j + n, ...: each stays on its device
                return jnp.swapaxes(a.reshape((a.shape[0] // n, n) + a.shape[1:]), 0, 1)

            micro = jax.tree.map(split, dict(batch))

            def body(carry, xs):
                g_acc, m_acc = carry
                mb, key = xs
                (_, m), g = grad_fn(state.params, mb, key, state.step)
                return (jax.tree.map(jnp.add, g_acc, g), jax.tree.map(jnp.add, m_acc, m)), None

            zeros_g = jax.tree.map(jnp.zeros_like, state.params)
            zeros_m = {"loss": jnp.zeros(()), "x_mse": jnp.zeros(())}
            (grads, metrics), _ = jax.lax.scan(body, (zeros_g, zeros_m), (micro, jax.random.split(rng, n)))
            grads = jax.tree.map(lambda g: g / n, grads)
            metrics = jax.tree.map(lambda m: m / n, metrics)
            loss = metrics["loss"]
        grad_norm = optax.tree.norm(grads)
        updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        decay = jnp.asarray(tc.ema_decay, jnp.float32)
        if tc.ema_warmup:
            s = state.step.astype(jnp.float32)
            decay = jnp.minimum(decay, (1.0 + s) / (10.0 + s))
        ema = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, state.ema, params)

        def keep_if_finite(new, old):  # a non-finite step never touches the state
            return jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)

        new_state = TrainState(
            step=state.step + 1,
            params=keep_if_finite(params, state.params),
            opt_state=keep_if_finite(opt_state, state.opt_state),
            ema=keep_if_finite(ema, state.ema),
        )
        metrics = dict(metrics, grad_norm=grad_norm, finite=finite,
                       learning_rate=self.lr_schedule(state.step))
        return new_state, metrics

    def step(self, state: TrainState, batch: Mapping[str, np.ndarray]) -> tuple[TrainState, dict]:
        """One optimisation step; `batch` holds this process's share of the global batch."""
        if self.model_cfg.num_classes and "label" in batch:
            from sid2video.sample import check_labels

            check_labels(np.asarray(batch["label"]), self.model_cfg.num_classes, allow_null=False)
        global_batch = {
            k: jax.make_array_from_process_local_data(self.batch_sharding, np.asarray(v))
            for k, v in batch.items() if k in ("video", "label")
        }
        return self._step(state, global_batch, self.base_key)

    # -- checkpoints ------------------------------------------------------------------------------
    def meta(self) -> dict[str, Any]:
        from sid2video import __version__

        model_config = dataclasses.asdict(self.model_cfg)
        return {"model_config": ckpt._plain(model_config), "fingerprint": ckpt.fingerprint(model_config),
                "config": ckpt._plain(self.config), "version": __version__}

    def restore(self, checkpointer: ckpt.Checkpointer, step: int | None = None) -> tuple[TrainState, dict]:
        meta = checkpointer.read_meta(step)
        ckpt.check_compatible(meta, dataclasses.asdict(self.model_cfg), str(checkpointer.directory))
        a = self.abstract_state
        got = checkpointer.restore(step, {"params": a.params, "ema": a.ema,
                                          "opt": {"step": a.step, "opt_state": a.opt_state}, "data": None})
        state = TrainState(step=got["opt"]["step"], params=got["params"], opt_state=got["opt"]["opt_state"],
                           ema=got["ema"])
        return state, got["data"]

    def save(self, checkpointer: ckpt.Checkpointer, state: TrainState, data_state: Mapping | None,
             force: bool = False) -> None:
        checkpointer.save(int(state.step), params=state.params, ema=state.ema,
                          opt={"step": state.step, "opt_state": state.opt_state},
                          data=data_state, meta=self.meta(), force=force)


# ----------------------------------------------------------------------------- logging


class MetricWriter:
    """Metrics as JSON lines (`metrics.jsonl`) and TensorBoard event files (`tb/`), process 0 only."""

    def __init__(self, workdir: pathlib.Path, enabled: bool = True):
        self.enabled = enabled
        self._tb = None
        self._jsonl = None
        if enabled:
            from tensorboardX import SummaryWriter

            self._jsonl = open(workdir / "metrics.jsonl", "a", buffering=1)
            self._tb = SummaryWriter(str(workdir / "tb"))

    def write(self, step: int, metrics: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        row = {"step": int(step), **{k: float(v) for k, v in metrics.items()}}
        self._jsonl.write(json.dumps(row) + "\n")
        for k, v in metrics.items():
            self._tb.add_scalar(k, float(v), int(step))

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            self._tb.close()


# Dense bf16 peak FLOP/s per device (FMA = 2 FLOPs), for MFU when config.train.peak_flops_per_device = 0.
PEAK_FLOPS = {
    "H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12,
    "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12, "TPU v6 lite": 918e12,
}


def peak_flops(tc: TrainConfig) -> float | None:
    if tc.peak_flops_per_device:
        return tc.peak_flops_per_device
    kind = jax.devices()[0].device_kind if jax.devices() else ""
    for name, value in PEAK_FLOPS.items():
        if name.lower() in kind.lower():
            return value
    return None


class NonFiniteError(RuntimeError):
    """The loss or the gradients became NaN or Inf."""


# ----------------------------------------------------------------------------- the loop


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


def _any_process(flag: bool) -> bool:
    """Whether `flag` holds on any process (a small all-gather when there are several)."""
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel

    return bool(np.any(multihost_utils.process_allgather(np.asarray(flag, np.int32))))


def fit(config, workdir: str | pathlib.Path, *, steps: int | None = None, minutes: float | None = None,
        data_iterator: Iterator | None = None, progress: bool = True,
        handle_signals: bool = True) -> dict[str, Any]:
    """Train `config` in `workdir`, resuming from its latest checkpoint.

    Runs until step `steps` (default config.train.num_steps), until `minutes` of wall time have
    passed, or until SIGTERM/SIGINT; then saves a checkpoint and returns a summary. Raises
    NonFiniteError (after saving a debug snapshot) when the loss or gradients stop being finite
    and config.train.on_nonfinite is 'stop'.
    """
    from tqdm import tqdm

    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(config)
    tc = trainer.tc
    lead = jax.process_index() == 0
    target = tc.num_steps if steps is None else int(steps)
    checkpointer = ckpt.Checkpointer(workdir, keep=tc.keep_checkpoints, keep_every=tc.keep_every or None,
                                     async_save=tc.async_checkpoint, lock=True)
    if data_iterator is None:
        from sid2video.data import pipeline

        data_iterator = pipeline.make_train_iterator(
            config.data, batch_size=tc.batch_size // jax.process_count(), seed=trainer.seed)
    it = data_iterator
    if checkpointer.latest_step() is not None:
        state, data_state = trainer.restore(checkpointer)
        if data_state:
            it.set_state(data_state)
        log.info("resumed from step %d in %s", int(state.step), checkpointer.directory)
    else:
        state = trainer.init_state()
        if lead:
            (workdir / "config.json").write_text(json.dumps(ckpt._plain(config), indent=2))
    start = int(state.step)
    saved = checkpointer.latest_step()  # the step of the newest checkpoint, None if none
    writer = MetricWriter(workdir, enabled=lead)
    stop = _StopRequest()
    if handle_signals:
        stop.install()
    flops_per_example = _train_flops_per_example(trainer)
    peak = peak_flops(tc)
    bar = tqdm(total=target, initial=start, desc="train", unit="step", disable=not (progress and lead),
               dynamic_ncols=True)
    t_start = time.perf_counter()
    window = (t_start, start)
    reason = "steps"
    pending: tuple[int, dict, Mapping] | None = None
    skipped_nonfinite = 0
    last: dict[str, float] = {}

    def handle(step_index: int, metrics: dict, batch: Mapping) -> None:
        nonlocal skipped_nonfinite, window, last
        m = {k: float(v) for k, v in jax.device_get(metrics).items()}
        last = m
        if not m.pop("finite"):
            if tc.on_nonfinite == "skip":
                skipped_nonfinite += 1
                log.warning("step %d: non-finite loss or gradients; update skipped (%d so far)",
                            step_index, skipped_nonfinite)
            else:
                snapshot = _debug_snapshot(workdir, trainer, state, batch, step_index)
                raise NonFiniteError(
                    f"step {step_index}: the loss ({m['loss']}) or the gradient norm ({m['grad_norm']}) "
                    f"is not finite. The update was not applied; the state and the batch are in "
                    f"{snapshot}. Lower train.learning_rate, check the data, or set "
                    f"train.on_nonfinite='skip' to drop such updates."
                )
        bar.set_postfix(loss=f"{m['loss']:.4g}", refresh=False)
        if (step_index + 1) % tc.log_every == 0:
            now = time.perf_counter()
            t0, s0 = window
            sps = (step_index + 1 - s0) / max(now - t0, 1e-9)
            window = (now, step_index + 1)
            row = dict(m, steps_per_s=sps, examples_per_s=sps * tc.batch_size,
                       nonfinite_skipped=skipped_nonfinite)
            if flops_per_example:
                achieved = sps * tc.batch_size * flops_per_example * 2 / jax.device_count()
                row["flops_per_s_per_device"] = achieved
                if peak:
                    row["mfu"] = achieved / peak
            stats = getattr(it, "loader_stats", None)
            if stats is not None:
                row.update(stats.as_dict())
            writer.write(step_index + 1, row)

    try:
        step = start
        while step < target:
            local = None
            if stop.signal is not None:
                local = f"signal {signal.Signals(stop.signal).name}"
            elif minutes is not None and time.perf_counter() - t_start > 60 * minutes:
                local = f"time budget of {minutes} min"
            # Every process stops at the same step (the save and the train step are collective).
            if _any_process(local is not None):
                reason = local or "another process stopped (signal or time budget)"
                break
            batch = next(it)
            state, metrics = trainer.step(state, batch)
            if pending is not None:
                handle(*pending)
            pending = (step, metrics, batch)
            step += 1
            bar.update(1)
            if step % tc.checkpoint_every == 0 and step < target:
                trainer.save(checkpointer, state, it.get_state())
                saved = step
            if tc.sample_every and step % tc.sample_every == 0:
                _write_samples(trainer, state, workdir, step, batch)
        if pending is not None:
            handle(*pending)
            pending = None
        # The final state, unless a periodic save (or the restored checkpoint) already holds it.
        if saved != step:
            trainer.save(checkpointer, state, it.get_state(), force=True)
        checkpointer.wait()
    finally:
        bar.close()
        writer.close()
        checkpointer.close()
        if handle_signals:
            stop.uninstall()
    elapsed = time.perf_counter() - t_start
    summary = {"step": int(state.step), "start_step": start, "stopped_by": reason,
               "seconds": elapsed, "steps_per_s": (int(state.step) - start) / max(elapsed, 1e-9),
               "last_metrics": last, "nonfinite_skipped": skipped_nonfinite}
    stats = getattr(it, "loader_stats", None)
    if stats is not None and lead:
        log.info(stats.line())
    log.info("stopped at step %d (%s)", summary["step"], reason)
    return summary


def _train_flops_per_example(trainer: Trainer) -> float | None:
    """Analytic FLOPs of one training example (3 × forward, multiply-add = 1), if available."""
    from sid2video.models import flops

    return 3.0 * float(flops.forward_flops(trainer.model_cfg)["total"])


def _debug_snapshot(workdir: pathlib.Path, trainer: Trainer, state: TrainState, batch: Mapping,
                    step_index: int) -> pathlib.Path:
    """Save the (last good) state and the offending batch for inspection."""
    path = workdir / f"debug_step_{step_index}"
    path.mkdir(parents=True, exist_ok=True)
    if jax.process_index() == 0:
        np.savez(path / "batch.npz", **{k: np.asarray(v) for k, v in batch.items()})
    snap = ckpt.Checkpointer(path, keep=1, async_save=False)
    trainer.save(snap, state, None, force=True)
    snap.close()
    return path


def _write_samples(trainer: Trainer, state: TrainState, workdir: pathlib.Path, step: int,
                   batch: Mapping) -> None:
    """Periodic samples from the EMA parameters, conditioned on the current batch (PNG strip)."""
    from sid2video import sample as sample_lib

    n = min(trainer.tc.num_samples, len(batch["video"]))
    model = trainer.model(state.ema)
    sampler = sample_lib.Generator(model, trainer.config, mesh=trainer.mesh)
    sub = {k: np.asarray(v)[:n] for k, v in batch.items()}
    video = sampler(sub, jax.random.PRNGKey(step))
    if jax.process_index() == 0:
        sample_lib.write_strip(workdir / "samples" / f"step_{step:08d}.png", video,
                               num_cond=trainer.num_cond)


def run(argv: list[str]) -> int:
    """`sid2video train --config configs/kinetics600.py:small --workdir DIR [--config.key=value]`."""
    from absl import flags

    from sid2video import flags as cli_flags

    def define(fv):
        flags.DEFINE_string("workdir", None, "run directory (checkpoints, metrics); resumed if it exists",
                            flag_values=fv)
        flags.DEFINE_integer("train_steps", None, "train until this step (default: config.train.num_steps)",
                             flag_values=fv)
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
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    sharding.join_from_flags(fv)
    try:
        summary = fit(fv.config, fv.workdir, steps=fv.train_steps, minutes=fv.minutes)
    except (NonFiniteError, ckpt.CheckpointMismatchError, ValueError) as err:
        raise SystemExit(f"sid2video train: {err}")
    print(json.dumps({k: v for k, v in summary.items() if k != "last_metrics"}))
    return 0
