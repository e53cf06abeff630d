"""The train state and the train step: one config's model, optimiser, mesh and jitted update.

The train step is a pure function of (state, batch, rng), jitted once over the ('data', 'fsdp')
mesh of sharding.py with explicit in/out shardings and a donated state: data parallel by default
(fsdp = 1, parameters replicated), FSDP by `config.train.fsdp` (parameters and optimiser state split
over 'fsdp'). The batch is split over both axes; with `train.grad_accum_steps` = n it is cut into n
microbatches whose gradients are averaged before one optimiser update.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh

from sid2video import checkpoint as ckpt
from sid2video import optim, sharding
from sid2video.diffusion import conditioning, losses, schedules
from sid2video.models import uvit
from sid2video.config import TrainConfig

Array = jax.Array


def conditioning_frames(config) -> int:
    """How many leading frames of each clip are conditioning (0 for images and unconditional video)."""
    return int(config.data.get("num_cond_frames", 0) or 0)


@flax.struct.dataclass
class TrainState:
    step: Array  # int32 scalar: the number of updates run (skipped non-finite ones included)
    params: Any  # nested dict of arrays (the nnx.Param values)
    opt_state: Any
    ema: Any


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
        self.mesh = mesh or sharding.make_mesh(self.tc.fsdp)
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
        self.tx, self.lr_schedule = optim.make_optimizer(self.tc)

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
    def loss_fn(self, params: Any, batch: Mapping[str, Array], rng: Array, step: Array):
        """(loss, metrics) of one batch (SPEC §3), with the conditioning dropout of guidance."""
        x = conditioning.to_unit(batch["video"])
        b, t = x.shape[:2]
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
            cond_mask = conditioning.cond_mask(b, t, self.num_cond)
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

    def grads(self, params: Any, batch: Mapping[str, Array], rng: Array, step: Array):
        """(gradients, metrics) of the batch: one pass, or the mean over `grad_accum_steps`
        microbatches, microbatch j taking examples j, j + n, ... (each stays on its device)."""
        grad_fn = jax.value_and_grad(self.loss_fn, has_aux=True)
        n = self.tc.grad_accum_steps
        if n == 1:
            (_, metrics), grads = grad_fn(params, batch, rng, step)
            return grads, metrics

        def split(a_B):  # [B, ...] -> [n, B / n, ...]
            return jnp.swapaxes(a_B.reshape((a_B.shape[0] // n, n) + a_B.shape[1:]), 0, 1)

        def body(carry, xs):
            g_acc, m_acc = carry
            mb, key = xs
            (_, m), g = grad_fn(params, mb, key, step)
            return (jax.tree.map(jnp.add, g_acc, g), jax.tree.map(jnp.add, m_acc, m)), None

        micro = jax.tree.map(split, dict(batch))
        zeros_g = jax.tree.map(jnp.zeros_like, params)
        zeros_m = {"loss": jnp.zeros(()), "x_mse": jnp.zeros(())}
        (grads, metrics), _ = jax.lax.scan(body, (zeros_g, zeros_m), (micro, jax.random.split(rng, n)))
        return jax.tree.map(lambda g: g / n, grads), jax.tree.map(lambda m: m / n, metrics)

    def train_step(self, state: TrainState, batch: Mapping[str, Array], rng: Array):
        """One update. `rng` is the run's base key; this step uses fold_in(rng, state.step), so a
        resumed run draws the same noise as an uninterrupted one. A non-finite loss or gradient
        leaves parameters, optimiser state and EMA untouched (only the step advances)."""
        rng = jax.random.fold_in(rng, state.step)
        grads, metrics = self.grads(state.params, batch, rng, state.step)
        grad_norm = optax.tree.norm(grads)
        updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(grad_norm)
        ema = optim.ema_update(state.ema, params, optim.ema_decay(self.tc, state.step))

        def keep_if_finite(new, old):
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
            conditioning.check_labels(np.asarray(batch["label"]), self.model_cfg.num_classes, allow_null=False)
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
