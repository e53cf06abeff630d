"""Evaluation during training: the shared evaluators on a small held-out set every N steps.

`TrainingEvaluation(config, workdir)` is a hook of `sid2video.train.fit` (the `sid2video train`
command builds it when config.train.eval_every > 0). Called with the step and the network holding
the EMA parameters, it samples the held-out clips with `sample.Generator` (config.sampler, with
config.train.eval_sampler_steps steps where set) and returns the scalars of the evaluators named by
config.train.eval_metrics: psnr, ssim, mse and exact_frames ('frames', `FrameEvaluator`), fvd
('fvd') or fid ('fid'), each with num_samples; the loop logs them as eval/<name>.

The held-out set is `EvalClips` of config.data's eval split: config.train.eval_num_clips clips (a
seeded subset, `clips.subset_positions`), the same at every call, and batch i is sampled with the
noise fold_in(PRNGKey(config.seed), i) at every call, so successive values differ by the network
only. FVD / FID compare with the held-out clips' statistics, computed at the first call and cached
in WORKDIR/eval_cache. Every process calls the hook; each samples its share, the results are merged.
"""

from __future__ import annotations

import pathlib
from typing import Any

import jax

from evaluation import clips as clips_lib
from evaluation import evaluators, fvd
from sid2video import config as config_lib
from sid2video import sample
from sid2video.config import TrainConfig

__all__ = ["TrainingEvaluation", "held_out_clips"]


def held_out_clips(config) -> clips_lib.EvalClips:
    """config.train.eval_num_clips clips of config.data's eval split, in batches of at most a
    training batch's share per process; a ValueError naming the key where the data cannot give them."""
    tc = TrainConfig.from_config(config.train)
    n = tc.eval_num_clips
    if not config.data.get("dataset") or not config.data.get("data_dir"):
        raise ValueError(f"config.train.eval_every={tc.eval_every} evaluates on held-out clips of "
                         "config.data.dataset in config.data.data_dir; set both, or eval_every=0")
    data = clips_lib.data_config(config.data)
    split = clips_lib.default_split(data)
    total = clips_lib.split_size(data, split)
    if n > total:
        raise ValueError(f"config.train.eval_num_clips={n} is invalid: the {split!r} split of "
                         f"{data['dataset']!r} in {data['data_dir']} has {total} clips; use {total} or fewer")
    processes = jax.process_count()
    batch_size = min(-(-n // processes), max(1, tc.batch_size // processes))
    return clips_lib.EvalClips(data, split=split, num_samples=n, batch_size=batch_size)


class TrainingEvaluation:
    """`hook(step, ema_model) -> {name: number}` on a fixed held-out set (module docstring).

    feature_nets: {'fvd' or 'fid': network} in place of I3D / the FID Inception (tests).
    """

    def __init__(self, config, workdir: str | pathlib.Path, *, feature_nets: dict[str, Any] | None = None):
        tc = TrainConfig.from_config(config.train)
        self.config = config
        self.names = config_lib.eval_metrics(config)
        self.seed = int(config.get("seed", 0))
        self.num_cond = int(config.data.get("num_cond_frames", 0) or 0)
        self.overrides = {"num_steps": tc.eval_sampler_steps} if tc.eval_sampler_steps else {}
        self.clips = held_out_clips(config)
        cache = pathlib.Path(workdir) / "eval_cache"
        nets = dict(feature_nets or {})
        self.evaluators: list[evaluators.Evaluator] = []
        for name in self.names:
            if name == "frames":
                self.evaluators.append(evaluators.FrameEvaluator(num_cond=self.num_cond, clips=self.clips))
                continue
            if name == "fvd":
                try:
                    fvd.check_clip(int(config.data.num_frames), self.num_cond)
                except ValueError as err:
                    raise ValueError(f"config.train.eval_metrics={tc.eval_metrics!r} is invalid: {err}") from None
            net = nets.get(name) or evaluators.load_network(name)  # a missing weights file fails here
            kind = evaluators.FVD if name == "fvd" else evaluators.FID
            extra = {"num_cond": self.num_cond} if name == "fvd" else {}
            self.evaluators.append(kind(self.clips, cache_dir=cache, feature_net=net, **extra))
        self.generator: sample.Generator | None = None

    def __call__(self, step: int, model) -> dict[str, float]:
        if self.generator is None:
            self.generator = sample.Generator(model, self.config, **self.overrides)
        else:
            self.generator.set_model(model)  # the same network with this step's EMA: no recompiling
        try:
            rows = evaluators.run_all(self.evaluators, self.generator, clips=self.clips, seed=self.seed,
                                      desc=f"eval at step {step}")
        finally:
            self.generator.state = None  # the parameters of this step are not kept until the next call
        return evaluators.scalars(*rows)
