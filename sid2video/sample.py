"""Sampling at scale: frame prediction and class-conditional images from a trained network.

`Generator(model, config)` turns a batch of ground truth (the conditioning frames of each clip,
or class labels for images) into samples with the configured sampler (config.sampler), guidance
and schedule, jitted once and sharded over all devices of all processes. `sid2video sample`
restores the EMA parameters of a run through checkpoint.py and writes the predictions, the
conditioning and the ground truth side by side to an .npz file that `sid2video render` and the
evaluation harness read.
"""

from __future__ import annotations

import json
import logging
import pathlib
from typing import Any, Mapping

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from sid2video import sharding
from sid2video.checkpoint import fresh_state
from sid2video.diffusion import conditioning, samplers, schedules

log = logging.getLogger("sid2video.sample")
Array = jax.Array


def sampler_settings(config, **overrides) -> dict[str, Any]:
    """config.sampler with overrides applied; every given key counts, so guidance_interval=None
    turns the interval off (callers leave out the keys they do not override)."""
    cfg = dict(config.sampler.to_dict() if hasattr(config.sampler, "to_dict") else config.sampler)
    cfg.update(overrides)
    return cfg


class Generator:
    """Samples for a batch: `generator(batch, rng) -> uint8 [B, T, H, W, C]`.

    batch["video"] (uint8 [B, T, H, W, C]) supplies the conditioning frames — the first
    config.data.num_cond_frames of each clip; other frames are ignored — and batch["label"] the
    classes of a class-conditional model. With config.sampler.guidance = w > 0 the conditional and
    unconditional predictions (null class, or no conditioning frames) come from one doubled-batch
    network call, inside config.sampler.guidance_interval only.
    """

    def __init__(self, model: nnx.Module, config, *, mesh: Mesh | None = None, **sampler_overrides):
        self.config = config
        self.model_cfg = model.config
        self.schedule = schedules.from_config(config.schedule)
        self.sampler = samplers.from_config(sampler_settings(config, **sampler_overrides), self.schedule)
        self.mean_type = config.loss.get("mean_type", "v")
        self.num_cond = int(config.data.get("num_cond_frames", 0) or 0)
        if self.sampler.guidance > 0 and not (self.model_cfg.num_classes or self.num_cond):
            raise ValueError(
                f"config.sampler.guidance={self.sampler.guidance} needs a class-conditional or a "
                "frame-conditioned model; set it to 0 for this one"
            )
        # The batch is split over every device; the parameters are replicated, or split over
        # 'fsdp' as in training when the mesh has an fsdp axis (a model that needed FSDP to train
        # also samples).
        self.mesh = mesh if mesh is not None else sharding.sampling_mesh(config)
        self.sharding = sharding.batch_sharding(self.mesh)
        self._min_params = sharding.min_params(config)
        self.graphdef, self.state, self._rest = self._split(model)
        self._jitted = jax.jit(self._generate, out_shardings=self.sharding)

    def _split(self, model: nnx.Module):
        """(graphdef, parameters on the mesh, the shapes of the rest): the parameters are replicated
        or FSDP-split (a no-op where they are there already); the rest (dropout rng streams, unused
        when sampling) is rebuilt inside the jitted function, so no host-local array meets the
        global mesh of a multi-process run."""
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        params = jax.device_put(params, sharding.param_shardings(params, self.mesh, self._min_params))
        return graphdef, params, jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), rest)

    def set_model(self, model: nnx.Module) -> None:
        """Swap in other parameters of the same network (e.g. another checkpoint) without
        recompiling; a network of another structure is refused."""
        graphdef, state, _ = self._split(model)
        if graphdef != self.graphdef:
            raise ValueError("set_model needs a network of the same structure; build a new Generator")
        self.state = state

    # -- the traced part --------------------------------------------------------------------------
    def _generate(self, state, video: Array, label: Array, rng: Array) -> Array:
        # The network is rebuilt from `state` inside every call: the sampler calls it from inside
        # its loop, and a module's variables are only usable at the trace level that built them.
        def net(*args, **kwargs):
            return nnx.merge(self.graphdef, state, fresh_state(self._rest))(*args, **kwargs)

        return conditioning.generate(net, self.sampler, video, label, rng, num_cond=self.num_cond,
                                     num_classes=self.model_cfg.num_classes,
                                     frame_conditioning=self.model_cfg.frame_conditioning,
                                     mean_type=self.mean_type)

    # -- host side --------------------------------------------------------------------------------
    def __call__(self, batch: Mapping[str, np.ndarray], rng: Array) -> np.ndarray:
        """Samples for this process's batch (uint8, same shape as batch['video'])."""
        video = np.asarray(batch["video"])
        if video.dtype != np.uint8 or video.ndim != 5:
            raise ValueError(f"batch['video'] must be uint8 [B, T, H, W, C], got {video.dtype} {video.shape}")
        expected = (self.model_cfg.num_frames, self.model_cfg.resolution, self.model_cfg.resolution,
                    self.model_cfg.in_channels)
        if video.shape[1:] != expected:
            raise ValueError(f"batch['video'] has frames of shape {video.shape[1:]}; the model takes {expected}")
        label = np.asarray(batch.get("label", np.zeros(len(video), np.int32)), np.int32)
        conditioning.check_labels(label, self.model_cfg.num_classes)
        (g_video, g_label), n = sharding.put_local_rows(self.sharding, video, label)
        return sharding.local_rows(self._jitted(self.state, g_video, g_label, rng), n)


def run(argv: list[str]) -> int:
    """`sid2video sample --workdir DIR [--checkpoint N] [--num N] [--out FILE] [sampler flags]`."""
    import absl.flags

    from sid2video import flags

    parser = flags.Parser(prog="sid2video sample", description=run.__doc__, renamed=flags.SAMPLER_STEPS)
    parser.add_argument("--workdir", required=True, help="training run directory")
    parser.add_argument("--checkpoint", type=int, default=None, help="step to load (default: latest)")
    parser.add_argument("--num", type=int, default=8, help="number of samples")
    parser.add_argument("--out", default=None, help="output .npz (default WORKDIR/samples/step_N.npz)")
    parser.add_argument("--split", default=None, help="data split for the conditioning frames / labels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--raw", action="store_true", help="use the raw parameters instead of the EMA")
    flags.add_sampler_flags(parser)
    sharding.add_distributed_flags(parser)
    args = parser.parse_args(argv)
    absl.flags.FLAGS.mark_as_parsed()
    flags.configure_logging()

    from sid2video import checkpoint
    from sid2video.data import pipeline

    sharding.join_from_flags(args)
    processes = jax.process_count()
    if args.num < 1 or args.num % processes:
        raise SystemExit(f"sid2video sample: --num {args.num} must be a positive multiple of the number "
                         f"of processes ({processes})")
    try:
        model, config, step = checkpoint.load_model(args.workdir, args.checkpoint, ema=not args.raw)
    except (FileNotFoundError, ValueError) as err:  # no run, no such step, another config's checkpoint
        raise SystemExit(f"sid2video sample: {err}")
    overrides = flags.sampler_overrides(args)
    try:
        generator = Generator(model, config, **overrides)
    except ValueError as err:
        raise SystemExit(f"sid2video sample: {err}")
    # Each process takes its share of the clips (rows p, p + P, ... of the split) and samples it
    # on the devices of all processes; the shares are gathered and process 0 writes the file.
    it = pipeline.make_eval_iterator(config.data, batch_size=args.num // processes, split=args.split)
    batch = next(it)
    keep = np.asarray(batch.get("mask", np.ones(len(batch["video"]), bool)), bool)
    batch = {k: np.asarray(v) for k, v in batch.items() if k in ("video", "label")}
    video = generator(batch, jax.random.PRNGKey(args.seed))
    if processes > 1:
        from jax.experimental import multihost_utils

        video, keep, batch = multihost_utils.process_allgather((video, keep, batch), tiled=True)
    n = int(keep.sum())
    out = pathlib.Path(args.out or pathlib.Path(args.workdir) / "samples" / f"step_{step}.npz")
    if jax.process_index() == 0:
        out.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(out, sample=video[keep], truth=batch["video"][keep],
                            label=batch.get("label", np.zeros(len(keep)))[keep], num_cond=generator.num_cond)
        settings = dict(sampler_settings(config, **overrides), checkpoint=step, num=n)
        out.with_suffix(".json").write_text(json.dumps(settings, indent=2, default=str))
    if jax.process_index() == 0:
        print(f"wrote {n} samples from step {step} to {out}")
    return 0
