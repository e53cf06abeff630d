"""Samples during training: every `train.sample_every` steps, EMA samples conditioned on the
current batch, written as a PNG strip to WORKDIR/samples/step_N.png (process 0 writes)."""

from __future__ import annotations

import pathlib
from typing import Any, Mapping

import jax
import numpy as np

from sid2video import draw, sharding
from sid2video.diffusion import conditioning, samplers
from sid2video.trainer import Trainer


class Preview:
    """`preview.write(ema_params, batch, step, workdir)`: sample with the configured sampler
    (config.sampler) on the trainer's mesh, jitted once for the run."""

    def __init__(self, trainer: Trainer):
        self.trainer = trainer
        cfg = trainer.model_cfg
        sampler = samplers.from_config(trainer.config.sampler, trainer.schedule)
        if sampler.guidance > 0 and not (cfg.num_classes or trainer.num_cond):
            raise ValueError(f"config.sampler.guidance={sampler.guidance} needs a class-conditional or a "
                             "frame-conditioned model; set it to 0 for this one")
        mean_type = trainer.config.loss.get("mean_type", "v")

        def generate(params, video_BTHWC, label_B, rng):
            return conditioning.generate(trainer.model(params), sampler, video_BTHWC, label_B, rng,
                                         num_cond=trainer.num_cond, num_classes=cfg.num_classes,
                                         frame_conditioning=cfg.frame_conditioning, mean_type=mean_type)

        self._generate = jax.jit(generate, out_shardings=trainer.batch_sharding)

    def write(self, ema: Any, batch: Mapping[str, np.ndarray], step: int, workdir: pathlib.Path) -> None:
        n = min(self.trainer.tc.num_samples, len(batch["video"]))
        video = np.asarray(batch["video"])[:n]
        label = np.asarray(batch.get("label", np.zeros(n, np.int32)), np.int32)[:n]
        (g_video, g_label), n = sharding.put_local_rows(self.trainer.batch_sharding, video, label)
        out = sharding.local_rows(self._generate(ema, g_video, g_label, jax.random.PRNGKey(step)), n)
        if jax.process_index() == 0:
            write_strip(workdir / "samples" / f"step_{step:08d}.png", out, num_cond=self.trainer.num_cond)


def write_strip(path: pathlib.Path, video_BTHWC: np.ndarray, *, num_cond: int = 0) -> None:
    """A PNG of uint8 clips, one row per clip (draw.strip: given frames framed in draw.GIVEN,
    predicted ones in draw.PRED)."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(draw.strip(list(np.asarray(video_BTHWC)), num_cond=num_cond)).save(path)
