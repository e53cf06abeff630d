"""The config sections' keys and defaults, in one place.

Every config has the sections seed, data, model, schedule, loss, sampler and train. Each section
but the schedule (whose keys depend on its name) starts from `defaults(section)`: the fields of the
dataclass that reads it (UViTConfig, LossConfig, TrainConfig; the sampler's DEFAULTS; the data
loader's DATA_DEFAULTS). So every key a section accepts is present in every config and can be
overridden from the command line (`--config.train.fsdp=8`), and no default is written twice.

Importing this module is cheap: the model, loss and sampler modules are imported on use.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

# config.data: what the loaders read (sid2video.data.pipeline), with their defaults. None means
# "decided elsewhere": eval_split by the dataset, tfds_name = dataset, cache_dir beside the data.
DATA_DEFAULTS: dict[str, Any] = dict(
    dataset="",
    data_dir="",
    num_frames=1,
    num_cond_frames=0,
    resolution=32,
    frame_stride=1,
    num_classes=0,
    split="train",
    eval_split=None,
    format="auto",
    tfds_name=None,
    cache_dir=None,
    worker_count=0,
    read_threads=2,
    prefetch=2,
    decode_threads=1,
    cache_mb=0.0,
    progress=True,
)

# Keys of config.loss the trainer reads beside LossConfig's (classifier-free guidance dropout).
LOSS_DROP_DEFAULTS: dict[str, float] = dict(class_drop_rate=0.0, cond_drop_rate=0.0)

SECTIONS = ("seed", "data", "model", "schedule", "loss", "sampler", "train")


def defaults(section: str) -> dict[str, Any]:
    """Every key of `section` with its default (a fresh dict)."""
    if section == "data":
        return dict(DATA_DEFAULTS)
    if section == "model":
        from sid2video.models.uvit import UViTConfig

        return _fields(UViTConfig)
    if section == "loss":
        from sid2video.diffusion.losses import LossConfig

        return {**_fields(LossConfig), **LOSS_DROP_DEFAULTS}
    if section == "sampler":
        from sid2video.diffusion.samplers import DEFAULTS

        return dict(DEFAULTS)
    if section == "train":
        return _fields(TrainConfig)
    raise ValueError(f"no defaults for config section {section!r}; sections with defaults: "
                     "data, model, loss, sampler, train")


def _fields(cls) -> dict[str, Any]:
    return {f.name: f.default for f in dataclasses.fields(cls)}


LR_DECAYS = ("none", "cosine", "linear")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """`config.train`: optimisation (SPEC §6), parallelism, logging and checkpointing."""

    batch_size: int = 2048  # global, over all processes
    num_steps: int = 1_000_000
    learning_rate: float = 1e-4
    warmup_steps: int = 10_000
    lr_decay: str = "none"  # after warm-up: 'none' (constant), 'cosine' or 'linear' to 0 at num_steps
    adam_b1: float = 0.9
    adam_b2: float = 0.99
    adam_eps: float = 1e-12
    grad_clip: float = 1.0  # global-norm clip; 0 disables
    weight_decay: float = 0.0
    ema_decay: float = 0.9999
    ema_warmup: bool = False  # decay_t = min(decay, (1 + t) / (10 + t)) early in training
    grad_accum_steps: int = 1
    fsdp: int = 1  # size of the 'fsdp' mesh axis; 1 = pure data parallel
    fsdp_min_params: int = 2**14  # smaller parameters stay replicated under FSDP
    on_nonfinite: str = "stop"  # 'stop': save a debug snapshot and stop; 'skip': drop the update
    max_nonfinite_skips: int = 10  # 'skip': stop like 'stop' once more updates of a run were dropped; 0 = no limit
    log_every: int = 50
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    keep_every: int = 0  # also keep every K-th step's checkpoint; 0 = none
    async_checkpoint: bool = True
    sample_every: int = 0  # periodic EMA samples written as PNG strips; 0 = off
    num_samples: int = 4
    peak_flops_per_device: float = 0.0  # for MFU; 0 = look up the device kind, else no MFU

    def __post_init__(self):
        def bad(key, allowed):
            return ValueError(f"config.train.{key}={getattr(self, key)!r} is invalid: {allowed}")

        for key in ("batch_size", "num_steps", "grad_accum_steps", "fsdp", "log_every",
                    "checkpoint_every", "keep_checkpoints", "num_samples"):
            v = getattr(self, key)
            if not (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
                raise bad(key, "must be an integer >= 1")
        for key in ("warmup_steps", "keep_every", "sample_every", "fsdp_min_params", "max_nonfinite_skips"):
            v = getattr(self, key)
            if not (isinstance(v, int) and not isinstance(v, bool) and v >= 0):
                raise bad(key, "must be an integer >= 0")
        if not self.learning_rate > 0:
            raise bad("learning_rate", "must be > 0")
        for key in ("adam_b1", "adam_b2", "ema_decay"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise bad(key, "must be in [0, 1)")
        for key in ("adam_eps", "grad_clip", "weight_decay", "peak_flops_per_device"):
            if not getattr(self, key) >= 0:
                raise bad(key, "must be >= 0")
        if self.lr_decay not in LR_DECAYS:
            raise bad("lr_decay", f"choose one of {', '.join(map(repr, LR_DECAYS))}")
        if self.lr_decay != "none" and self.warmup_steps >= self.num_steps:
            raise bad("lr_decay", f"decays after the warm-up, which needs train.warmup_steps="
                      f"{self.warmup_steps} < train.num_steps={self.num_steps}")
        if self.on_nonfinite not in ("stop", "skip"):
            raise bad("on_nonfinite", "choose 'stop' or 'skip'")
        if self.batch_size % self.grad_accum_steps:
            raise bad("grad_accum_steps", f"must divide train.batch_size={self.batch_size}")

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> "TrainConfig":
        cfg = dict(cfg.to_dict() if hasattr(cfg, "to_dict") else cfg)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(cfg) - names)
        if unknown:
            raise ValueError(f"config.train has unknown key(s) {unknown}; known: {', '.join(sorted(names))}")
        return cls(**cfg)
