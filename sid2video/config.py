"""Configs as data: the sections and their defaults, loading, overrides and the start-up check.

Every config has the sections seed, data, model, schedule, loss, sampler and train. Each section
but the schedule (whose keys depend on its name) starts from `defaults(section)`: the fields of the
dataclass that reads it (UViTConfig, LossConfig, TrainConfig; the sampler's DEFAULTS; the data
loader's DATA_DEFAULTS). So every key a section accepts is present in every config and can be
overridden (`--config.train.fsdp=8`), and no default is written twice.

A config file (configs/*.py) imports only this module and returns `base(...)` from
`get_config(variant)`; `load("configs/kinetics600.py:small")` runs it by path, `load("kinetics600:
small")` runs the one shipped with the package. `validate(config)` raises ValueError naming the
key, its value and what is allowed. Importing this module is cheap: the model, loss and sampler
modules are imported on use, and none of them imports the trainer.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import numbers
import pathlib
import re
from typing import Any, Mapping

from ml_collections import ConfigDict

SECTIONS = ("seed", "data", "model", "schedule", "loss", "sampler", "train")

# The configs that ship with the package (installed beside it), loadable by bare name.
SHIPPED = pathlib.Path(__file__).resolve().parent.parent / "configs"

# config.data: what the loaders read (sid2video.data.pipeline), with their defaults. None means
# "decided elsewhere": eval_split by the dataset, tfds_name = dataset, cache_dir beside the data.
DATA_DEFAULTS: dict[str, Any] = dict(
    dataset="", data_dir="", num_frames=1, num_cond_frames=0, resolution=32, frame_stride=1,
    num_classes=0, split="train", eval_split=None, format="auto", tfds_name=None, cache_dir=None,
    worker_count=0, read_threads=2, prefetch=2, decode_threads=1, cache_mb=0.0, progress=True,
    # Training mirrors each image or clip left-right with probability ½ (ADM's ImageNet recipe);
    # False for data whose mirror image is not data, such as digits.
    random_flip=True,
)

# Keys of config.loss the trainer reads beside LossConfig's (classifier-free guidance dropout).
LOSS_DROP_DEFAULTS: dict[str, float] = dict(class_drop_rate=0.0, cond_drop_rate=0.0)

LR_DECAYS = ("none", "cosine", "linear")

# config.train.eval_metrics: the evaluators run during training ('auto' picks one from config.data).
EVAL_METRICS = ("frames", "fvd", "fid")


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
    # Evaluation during training (`sid2video train`; evaluation/in_training.py): every eval_every
    # steps the EMA network samples the same eval_num_clips clips of config.data's eval split with
    # the same noise, and the metrics go to metrics.jsonl and TensorBoard as eval/<name>.
    eval_every: int = 0  # 0 = off
    eval_num_clips: int = 16  # the held-out set: a seeded subset of the eval split, fixed for the run
    # Comma-separated names from EVAL_METRICS: 'frames' (PSNR/SSIM of the predicted frames; needs
    # data.num_cond_frames > 0), 'fvd' (I3D; clips of >= 9 frames), 'fid' (images; the FID Inception
    # weights). 'auto': 'frames' with conditioning frames, else 'fvd' for video, 'fid' for images.
    eval_metrics: str = "auto"
    eval_sampler_steps: int = 0  # sampler steps of these evaluations; 0 = config.sampler.num_steps

    def __post_init__(self):
        def bad(key, allowed):
            return ValueError(f"config.train.{key}={getattr(self, key)!r} is invalid: {allowed}")

        for key in ("batch_size", "num_steps", "grad_accum_steps", "fsdp", "log_every",
                    "checkpoint_every", "keep_checkpoints", "num_samples", "eval_num_clips"):
            v = getattr(self, key)
            if not (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
                raise bad(key, "must be an integer >= 1")
        for key in ("warmup_steps", "keep_every", "sample_every", "fsdp_min_params",
                    "max_nonfinite_skips", "eval_every", "eval_sampler_steps"):
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
        parse_eval_metrics(self.eval_metrics)

    @property
    def eval_metric_names(self) -> tuple[str, ...]:
        """config.train.eval_metrics as a tuple of names (('auto',) for 'auto')."""
        return parse_eval_metrics(self.eval_metrics)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> "TrainConfig":
        cfg = dict(cfg.to_dict() if hasattr(cfg, "to_dict") else cfg)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(cfg) - names)
        if unknown:
            raise ValueError(f"config.train has unknown key(s) {unknown}; known: {', '.join(sorted(names))}")
        return cls(**cfg)


def parse_eval_metrics(value: Any) -> tuple[str, ...]:
    """config.train.eval_metrics ('frames,fvd', 'auto', ...) as a tuple of names; a ValueError
    naming the key when it is not a comma-separated string of EVAL_METRICS, each once, or 'auto'."""
    names = tuple(n.strip() for n in value.split(",")) if isinstance(value, str) else ()
    if names == ("auto",) or (names and set(names) <= set(EVAL_METRICS) and len(set(names)) == len(names)):
        return names
    raise _fail("train.eval_metrics", value, f"must be a comma-separated string of "
                f"{', '.join(map(repr, EVAL_METRICS))} (each once), or 'auto'")


def eval_metrics(config) -> tuple[str, ...]:
    """The evaluators config.train.eval_metrics names for this config's data ('auto' resolved);
    a ValueError naming the key when one does not fit the data."""
    tc = TrainConfig.from_config(config.train)
    frames = int(config.data.get("num_frames", 1) or 1)
    cond = int(config.data.get("num_cond_frames", 0) or 0)
    names = tc.eval_metric_names
    if names == ("auto",):
        return ("frames",) if cond else ("fvd",) if frames > 1 else ("fid",)
    for name, fits, why in (("frames", cond > 0, "needs conditioning frames (data.num_cond_frames > 0)"),
                            ("fvd", frames > 1, "measures video (data.num_frames > 1)"),
                            ("fid", frames == 1, "measures images (data.num_frames = 1)")):
        if name in names and not fits:
            raise _fail("train.eval_metrics", tc.eval_metrics, f"{name!r} {why}")
    return names


def defaults(section: str) -> dict[str, Any]:
    """Every key of `section` with its default (a fresh dict)."""
    if section == "data":
        return dict(DATA_DEFAULTS)
    if section == "model":
        from sid2video.models.uvit_config import UViTConfig

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


def base(*, data: dict, model: dict, schedule: dict, loss: dict, sampler: dict, train: dict,
         seed: int = 0) -> ConfigDict:
    """Assemble a config: each section starts from every key its reader accepts, with the reader's
    default (`defaults`; the train defaults are the papers' optimisation settings, SiD2 B.6 /
    simple diffusion B.2), and the given dicts override them. A key no reader knows is an error
    here, not at the first train step. model.num_frames / resolution / num_classes follow `data`
    through field references, so `--config.data.resolution=64` moves both; model.mean_type follows
    loss.mean_type the same way."""
    c = ConfigDict()
    c.seed = seed
    for name, given in (("data", data), ("model", model), ("loss", loss), ("sampler", sampler),
                        ("train", train)):
        section = defaults(name)
        unknown = sorted(set(given) - set(section))
        if unknown:
            raise ValueError(f"config.{name} has unknown key(s) {unknown}; known: {', '.join(sorted(section))}")
        section.update(given)
        c[name] = ConfigDict(section)
    c.schedule = ConfigDict(schedule)
    for key, source in FOLLOWS.items():
        section, name = key.split(".")
        if section == "schedule" and name not in c.schedule:
            continue  # a schedule without a resolution (plain cosine)
        src_section, src_name = source.split(".")
        c[section][name] = c[src_section].get_ref(src_name)
    return c


# Keys that follow another key through a field reference (`base`): setting one would set its
# source too (ml_collections writes through the reference), so `override` refuses them and names
# the key to set. model.mean_type says what the output is (model.frame_residual reads it);
# schedule.image_d is set where the schedule has one.
FOLLOWS: dict[str, str] = {
    "model.num_frames": "data.num_frames",
    "model.resolution": "data.resolution",
    "model.num_classes": "data.num_classes",
    "model.mean_type": "loss.mean_type",
    "schedule.image_d": "data.resolution",
}


def interpolated_schedule(low: int = 32, high: int = 512) -> dict:
    """SiD2 B.6 `cosine_interpolated_low_32_high_512` with SiD2's base bounds ±10 (B.1 code);
    image_d follows config.data.resolution."""
    return dict(name="cosine_interpolated", image_d=0, noise_d_low=low, noise_d_high=high,
                logsnr_min=-10.0, logsnr_max=10.0)


# --------------------------------------------------------------------------------------------------
# the ImageNet family (SiD2 §2.2, B.6)
#
# SiD2's printed B.6 gives the loss bias, patching, guidance and training settings but its
# block of model settings did not survive; the widths and depths below are chosen (and marked
# CHOSEN) from what the paper does state:
#   * small: a U-ViT on a 128² top feature map (512² with 4×4 patches, §2.2) whose top level has
#     128 channels (§2.3), E3-D3 per level (C.3 baseline), simple diffusion's level widths
#     128-256-512 and a transformer at 16² (simple diffusion B.2, 4 levels);
#   * flop heavy: the same parameters on a 2× larger map (2×2 patches at 512², none at 256²;
#     at 128² the 128-channel top level is removed, B.6), about 4× the FLOPs (§2.2);
#   * the transformer width (1024) and depth (20 blocks, E10-D10) are CHOSEN so that the
#     512² flop-heavy forward pass costs SiD2 Table 5's 653 GFLOPs (B.3 counting).


def imagenet_model(top_resolution_levels: int, patch_size: int) -> dict:
    """The small / flop-heavy trunk; `top_resolution_levels=3` drops the 128-channel level."""
    channels = (128, 256, 512, 1024)[-top_resolution_levels:]
    n = len(channels)
    return dict(
        patch_size=patch_size,
        channels=channels,
        block_types=("resnet",) * (n - 1) + ("transformer",),
        encoder_blocks=(3,) * (n - 1) + (10,),
        decoder_blocks=(3,) * (n - 1) + (10,),
        num_heads=8,  # CHOSEN: head dim 128 (simple diffusion uses 4 heads at 2048 channels)
        emb_channels=1024,  # simple diffusion B.2
        dropout=0.1,  # CHOSEN (simple diffusion uses 0.1–0.2), only in the transformer level
        dtype="bfloat16",
        remat=True,
        scan_blocks=True,
    )


def imagenet(resolution: int, variant: str, *, bias: float, guidance_interval: tuple,
             small_patch: int, flop_heavy_patch: int, drop_top_level: bool = False) -> ConfigDict:
    """An ImageNet config (class-conditional, T = 1) at `resolution` for 'small' / 'flop_heavy'."""
    if variant not in ("small", "flop_heavy"):
        raise ValueError(f"unknown variant {variant!r} for imagenet{resolution}; "
                         "choose 'small' or 'flop_heavy'")
    heavy = variant == "flop_heavy"
    model = imagenet_model(3 if heavy and drop_top_level else 4,
                           flop_heavy_patch if heavy else small_patch)
    n = len(model["channels"])
    model["dropout_from_resolution"] = resolution // model["patch_size"] // 2 ** (n - 1)
    return base(
        data=dict(dataset="imagenet2012", num_frames=1, num_cond_frames=0, resolution=resolution,
                  frame_stride=1, num_classes=1000),
        model=model,
        schedule=interpolated_schedule(32, 512),
        loss=dict(weighting="sigmoid", bias=bias, class_drop_rate=0.1),
        sampler=dict(method="ddpm", num_steps=512, logvar_interp=0.3, clip=True, guidance=1.0,
                     guidance_interval=guidance_interval),
        train=dict(num_steps=800_000 if heavy else 1_000_000),
    )


# --------------------------------------------------------------------------------------------------
# loading and overrides


def resolve(spec: str) -> tuple[pathlib.Path, str | None]:
    """`path.py[:variant]` or a shipped config's bare `name[:variant]` -> (file, variant). A missing
    file or a variant not in the file's VARIANTS raises ValueError naming the fix, before the file
    runs."""
    where, _, variant = spec.partition(":")
    if where.endswith(".py") or "/" in where or "\\" in where:
        path = pathlib.Path(where)
        if not path.is_file():
            near = sorted(str(p) for p in path.parent.glob("*.py") if "def get_config" in p.read_text())
            raise ValueError(f"no config file {where}"
                             + (f"; the configs here: {', '.join(near)}" if near else
                                f"; shipped configs: {', '.join(shipped())}"))
    else:
        path = SHIPPED / f"{where}.py"
        if not path.is_file():
            raise ValueError(f"no shipped config {where!r}; choose one of {', '.join(shipped())} "
                             "or give a path, e.g. configs/kinetics600.py:small")
    match = re.search(r"^VARIANTS\s*=\s*(\([^)]*\))", path.read_text(), re.MULTILINE)
    if variant and match:
        variants = ast.literal_eval(match.group(1))
        if variant not in variants:
            raise ValueError(f"{where} has no variant {variant!r}; choose one of "
                             f"{', '.join(variants)} (e.g. {where}:{variants[0]})")
    return path, variant or None


def shipped() -> list[str]:
    """The bare names of the configs shipped with the package."""
    return sorted(p.stem for p in SHIPPED.glob("*.py") if not p.stem.startswith("_"))


def load(spec: str, variant: str | None = None) -> ConfigDict:
    """`get_config(variant)` of a config file: `spec` is `path.py[:variant]` or a shipped config's
    `name[:variant]` (a `variant` argument takes the place of the spec's)."""
    path, given = resolve(spec)
    variant = variant or given
    module_spec = importlib.util.spec_from_file_location(f"sid2video_config_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(variant) if variant else module.get_config()


def override(config: ConfigDict, items: list[tuple[str, str]]) -> None:
    """Set (`section.key`, text) pairs on a config in place, the text read as the key's current
    type: a string stays a string, a bool is true/false, numbers and tuples are Python literals
    (a key whose value is None takes any literal, else the text). A key the config does not have
    raises KeyError (naming it); a value of the wrong type raises ValueError."""
    for key, text in items:
        section, _, name = key.rpartition(".")
        target = config
        try:
            for part in filter(None, section.split(".")):
                target = target[part]
        except (KeyError, TypeError):
            target = None
        if target is None or not isinstance(target, ConfigDict) or name not in target:
            raise KeyError(name)
        current = target[name]
        if isinstance(current, ConfigDict):
            raise ValueError(f"config.{key} is a section; set one of its keys")
        source = FOLLOWS.get(key)
        if source is not None:
            raise ValueError(f"config.{key} follows config.{source} (now {current!r}); setting it would "
                             f"change config.{source} too. Set --config.{source}=... instead")
        try:
            target[name] = _parse(text, current)
        except (ValueError, TypeError, SyntaxError) as err:
            raise ValueError(f"cannot set config.{key} (now {current!r}) to {text!r}: {err}") from None


def _parse(text: str, current: Any) -> Any:
    if isinstance(current, str):
        return text
    if isinstance(current, bool):
        if text.lower() not in ("true", "false", "1", "0"):
            raise ValueError("expected true or false")
        return text.lower() in ("true", "1")
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        if current is None:
            return text
        raise ValueError(f"expected a value like {current!r}") from None
    if isinstance(current, tuple) and isinstance(value, list):
        value = tuple(value)
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if current is not None and not isinstance(value, type(current)):
        raise ValueError(f"expected a {type(current).__name__}")
    return value


# --------------------------------------------------------------------------------------------------
# validation


def _fail(key: str, value, allowed: str) -> ValueError:
    return ValueError(f"config.{key}={value!r} is invalid: {allowed}")


def _int(section, key, *, minimum: int, prefix: str) -> int:
    v = section[key]
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < minimum:
        raise _fail(f"{prefix}.{key}", v, f"must be an integer >= {minimum}")
    return int(v)


def _rate(section, key, *, prefix: str) -> float:
    """A probability in [0, 1)."""
    v = section[key]
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not 0 <= v < 1:
        raise _fail(f"{prefix}.{key}", v, "must be a number in [0, 1)")
    return float(v)


def validate(config: ConfigDict) -> ConfigDict:
    """Check a whole config at start-up; returns it unchanged or raises ValueError."""
    from sid2video.data import sources
    from sid2video.diffusion import losses, samplers, schedules
    from sid2video.models.uvit_config import UViTConfig

    missing = [s for s in SECTIONS if s not in config]
    if missing:
        raise ValueError(f"config is missing section(s) {missing}; every config has {SECTIONS}")
    if isinstance(config.seed, bool) or not isinstance(config.seed, numbers.Integral):
        raise _fail("seed", config.seed, "must be an integer")

    d = config.data
    for key in ("dataset", "num_frames", "num_cond_frames", "resolution", "frame_stride",
                "num_classes"):
        if key not in d:
            raise ValueError(f"config.data is missing key {key!r}")
    frames = _int(d, "num_frames", minimum=1, prefix="data")
    cond = _int(d, "num_cond_frames", minimum=0, prefix="data")
    if cond >= frames:
        raise _fail("data.num_cond_frames", cond,
                    f"must be below data.num_frames={frames} (at least one frame to predict)")
    _int(d, "resolution", minimum=1, prefix="data")
    _int(d, "frame_stride", minimum=1, prefix="data")
    classes = _int(d, "num_classes", minimum=0, prefix="data")
    sources.random_flip(d)  # a bool, else a ValueError naming the key

    model = UViTConfig.from_config(config.model)
    for key in ("num_frames", "resolution", "num_classes"):
        if getattr(model, key) != d[key]:
            raise _fail(f"model.{key}", getattr(model, key),
                        f"must equal config.data.{key}={d[key]!r}")
    if cond > 0 and not model.frame_conditioning:
        raise _fail("model.frame_conditioning", False,
                    f"must be True when data.num_cond_frames={cond} > 0")

    # schedule, loss, sampler: each module's own checks, with the section named
    try:
        schedule = schedules.from_config(config.schedule)
    except (ValueError, TypeError) as err:
        raise ValueError(f"config.schedule: {err}") from None
    try:
        loss = losses.LossConfig.from_config(config.loss)
    except (ValueError, TypeError) as err:
        raise ValueError(f"config.loss: {err}") from None
    if model.frame_residual and model.mean_type != loss.mean_type:
        raise _fail("model.mean_type", model.mean_type,
                    f"must equal config.loss.mean_type={loss.mean_type!r} with model.frame_residual=True "
                    "(the network's output is shifted back according to what it predicts)")
    class_drop = _rate(config.loss, "class_drop_rate", prefix="loss")
    cond_drop = _rate(config.loss, "cond_drop_rate", prefix="loss")
    if class_drop > 0 and classes == 0:
        raise _fail("loss.class_drop_rate", class_drop,
                    "must be 0 for a model without classes (data.num_classes=0)")
    if cond_drop > 0 and cond == 0:
        raise _fail("loss.cond_drop_rate", cond_drop,
                    "must be 0 without conditioning frames (data.num_cond_frames=0)")
    try:
        sampler = samplers.from_config(config.sampler, schedule)
    except (ValueError, TypeError) as err:
        raise ValueError(f"config.sampler: {err}") from None
    if sampler.guidance > 0 and not (class_drop > 0 or cond_drop > 0):
        raise _fail("sampler.guidance", sampler.guidance,
                    "needs an unconditional model: set loss.class_drop_rate > 0 (classes) or "
                    "loss.cond_drop_rate > 0 (conditioning frames), or guidance = 0")
    eval_metrics(config)
    return config
