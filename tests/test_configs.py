"""Config files: every variant builds, validates and eval_shapes; paper settings; clear errors."""

import pathlib

import pytest
from ml_collections import ConfigDict

from sid2video import config as config_lib
from sid2video import flags
from sid2video.models import flops, uvit
from sid2video.models.uvit_config import UViTConfig

ROOT = pathlib.Path(__file__).resolve().parents[1]
VARIANTS = [
    ("demo", "video"), ("demo", "images"), ("kinetics600", "small"),
    ("imagenet128", "small"), ("imagenet128", "flop_heavy"),
    ("imagenet256", "small"), ("imagenet256", "flop_heavy"),
    ("imagenet512", "small"), ("imagenet512", "flop_heavy"),
]


def load(name: str, variant: str):
    """configs/<name>.py:<variant>, loaded the way `--config configs/<name>.py:variant` does."""
    return config_lib.load(f"{ROOT / 'configs' / name}.py:{variant}")


validate = config_lib.validate


@pytest.mark.parametrize("name,variant", VARIANTS)
def test_every_variant_builds_validates_and_eval_shapes(name, variant):
    config = load(name, variant)
    for section in ("seed", "data", "model", "schedule", "loss", "sampler", "train"):
        assert section in config
    validate(config)
    model = uvit.abstract(config.model)
    # eval_shape's exact count equals the closed form of sid2video.models.flops.
    assert uvit.count_params(model) == flops.param_count(config.model)["total"] > 0
    cfg = model.config
    assert (cfg.num_frames, cfg.resolution, cfg.num_classes) == (
        config.data.num_frames, config.data.resolution, config.data.num_classes)
    if config.data.num_frames == 1:  # an image model is the 2D U-ViT
        assert cfg.conv_kind == "2d" and cfg.attention_axes == ("space",)


def test_unknown_variant_is_an_error():
    with pytest.raises(ValueError, match="no variant 'huge'; choose one of small, flop_heavy"):
        load("imagenet512", "huge")
    with pytest.raises(ValueError, match="no shipped config 'k600'; choose one of demo, imagenet128"):
        config_lib.load("k600:small")


@pytest.mark.parametrize("name,variant", VARIANTS)
def test_shipped_configs_load_by_name_as_by_path(name, variant):
    """`kinetics600:small` is the file shipped with the package, configs/kinetics600.py."""
    assert config_lib.SHIPPED == ROOT / "configs"
    assert config_lib.load(f"{name}:{variant}").to_dict() == load(name, variant).to_dict()


def test_config_files_import_only_the_config_module():
    """Config files are data: no sys.path edits, no imports but `from sid2video import config`."""
    import ast

    for path in sorted((ROOT / "configs").glob("*.py")):
        tree = ast.parse(path.read_text())
        imports = [ast.unparse(n) for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
        assert imports == ([] if path.name == "__init__.py" else ["from sid2video import config"]), path


@pytest.mark.parametrize("res,bias,interval,small_patch,heavy_patch", [
    (128, 0.0, (0.0, 5.0), 1, 1), (256, -1.0, (-1.5, 5.0), 2, 1), (512, -3.0, (-3.0, 5.0), 4, 2)])
def test_imagenet_paper_settings(res, bias, interval, small_patch, heavy_patch):
    """SiD2 §2.1–2.2 and B.6: loss bias, guidance interval, sampler, patching, optimiser."""
    small, heavy = load(f"imagenet{res}", "small"), load(f"imagenet{res}", "flop_heavy")
    for c in (small, heavy):
        assert c.loss.weighting == "sigmoid" and c.loss.bias == bias and c.loss.mean_type == "v"
        assert c.loss.class_drop_rate == 0.1
        assert tuple(c.sampler.guidance_interval) == interval and c.sampler.guidance == 1.0
        sampler = (c.sampler.method, c.sampler.num_steps, c.sampler.logvar_interp)
        assert sampler == ("ddpm", 512, 0.3)
        assert c.sampler.clip is True
        t = c.train
        assert (t.batch_size, t.learning_rate, t.warmup_steps, t.lr_decay) == (2048, 1e-4, 10_000, "none")
        assert (t.adam_b1, t.adam_b2, t.adam_eps, t.weight_decay) == (0.9, 0.99, 1e-12, 0.0)
        assert (t.ema_decay, t.grad_clip) == (0.9999, 1.0)
        s = c.schedule
        assert (s.name, s.noise_d_low, s.noise_d_high, s.image_d) == (
            "cosine_interpolated", 32, 512, res)
        assert (s.logsnr_min, s.logsnr_max) == (-10.0, 10.0)
        assert c.data.num_classes == 1000 and c.data.num_frames == 1
    assert small.model.patch_size == small_patch and heavy.model.patch_size == heavy_patch
    assert small.train.num_steps == 1_000_000 and heavy.train.num_steps == 800_000
    # §2.2: the small U-ViT runs on a 128² map; flop heavy doubles the map, not the channels.
    small_net, heavy_net = UViTConfig.from_config(small.model), UViTConfig.from_config(heavy.model)
    assert small_net.level_resolutions[0] == 128 and small_net.channels[0] == 128
    if res == 128:  # B.6: the 128-channel top level is removed at 128²
        assert heavy_net.channels == small_net.channels[1:] and heavy_net.level_resolutions[0] == 128
    else:
        assert heavy_net.channels == small_net.channels and heavy_net.level_resolutions[0] == 256
    # About 4x the FLOPs of the small model (§2.2).
    ratio = flops.forward_flops(heavy_net)["total"] / flops.forward_flops(small_net)["total"]
    assert 3 < ratio < 5
    assert small.model.dropout_from_resolution < res // small_patch  # never the top level


def test_kinetics600_paper_settings():
    c = load("kinetics600", "small")
    assert (c.data.num_frames, c.data.num_cond_frames, c.data.resolution) == (16, 5, 128)
    assert c.loss.weighting == "sigmoid" and c.loss.bias == 0.0  # Table 4
    assert (c.sampler.method, c.sampler.num_steps) == ("addim", 128)  # B.7
    assert c.sampler.guidance == 0.0 and c.sampler.guidance_interval is None
    assert c.model.frame_conditioning and c.model.conv == "3d"
    assert c.model.attention == "factorized"


def test_demo_configs_are_tiny():
    video, images = load("demo", "video"), load("demo", "images")
    assert (video.data.num_frames, video.data.num_cond_frames) == (16, 5)
    assert video.data.resolution <= 32 and max(video.model.channels) <= 32
    assert images.data.num_frames == 1 and images.data.num_classes == 10
    # Images: 2×2 patches on 16² keep an (64, 128) network to an 8×8 and a 4×4 map.
    assert images.model.patch_size == 2 and max(images.model.channels) <= 128 and images.model.emb_channels <= 32


def test_model_follows_data_through_references():
    c = load("imagenet256", "small")
    c.data.resolution = 128
    assert c.model.resolution == 128 and c.schedule.image_d == 128
    validate(c)
    c = load("kinetics600", "small")
    c.data.num_frames = 8
    assert c.model.num_frames == 8
    validate(c)
    c.loss.mean_type = "eps"
    assert c.model.mean_type == "eps"
    c.model.frame_residual = True
    validate(c)
    # A config read back from JSON has no references: the two can disagree, and the shift would be wrong.
    c.model.mean_type = "x"
    assert c.loss.mean_type == "x"  # setting either end of the reference sets both
    unlinked = c.to_dict()
    unlinked["loss"]["mean_type"] = "eps"
    with pytest.raises(ValueError, match=r"model.mean_type='x'.*loss.mean_type='eps'"):
        validate(ConfigDict(unlinked))


def _set(config, path, value):
    *parents, key = path.split(".")
    node = config
    for p in parents:
        node = node[p]
    node[key] = value


@pytest.mark.parametrize("name,variant,path,value,message", [
    ("demo", "video", "data.resolution", 34, r"resolution=34.*divisible by patch_size"),
    ("demo", "video", "model.attention", "axial", r"attention='axial'.*factorized"),
    ("demo", "video", "model.conv", "4d", r"conv='4d'"),
    ("imagenet512", "small", "model.dropout_from_resolution", 128,
     r"dropout_from_resolution=128.*\[64, 32, 16\]"),
    ("imagenet512", "small", "model.dropout_from_resolution", 20,
     r"dropout_from_resolution=20"),
    ("demo", "video", "data.num_cond_frames", 16, r"num_cond_frames=16.*num_frames=16"),
    ("demo", "video", "model.block_types", ("resnet", "conv"), r"block_types.*'resnet'"),
    ("demo", "video", "model.encoder_blocks", (1,), r"encoder_blocks.*one entry per level"),
    ("demo", "video", "model.num_heads", 3, r"num_heads=3.*divide"),
    ("demo", "video", "model.patch_frames", 3, r"patch_frames=3.*num_frames=16"),
    ("demo", "video", "model.frame_conditioning", False, r"frame_conditioning"),
    ("demo", "images", "model.frame_residual", True, r"frame_residual=True.*frame_conditioning=True"),
    ("demo", "video", "schedule.name", "linear", r"config.schedule.*'linear'"),
    ("demo", "video", "loss.weighting", "l2", r"config.loss.*weighting"),
    ("demo", "video", "sampler.method", "euler", r"config.sampler.*euler"),
    ("demo", "video", "sampler.guidance", 1.0, r"sampler.guidance=1.0.*cond_drop_rate"),
    ("demo", "images", "loss.cond_drop_rate", 0.2, r"cond_drop_rate=0.2"),
    ("demo", "video", "train.learning_rate", -1.0, r"train.learning_rate=-1.0"),
    ("demo", "video", "train.adam_b2", 1.0, r"train.adam_b2=1.0"),
])
def test_bad_values_give_clear_errors(name, variant, path, value, message):
    config = load(name, variant)
    _set(config, path, value)
    with pytest.raises(ValueError, match=message):
        validate(config)


def test_unknown_model_key_is_an_error():
    config = load("demo", "images")
    config.model.unlock()
    config.model.widht = 3
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['widht'\]"):
        validate(config)


def test_overrides_reach_the_config_read_as_the_key_type_and_name_a_missing_key():
    config = load("demo", "video")
    config_lib.override(config, [("loss.bias", "-2"), ("model.channels", "(32, 48)"),
                                 ("sampler.method", "ddpm"), ("train.lr_decay", "cosine"),
                                 ("train.learning_rate", "1"), ("train.ema_warmup", "false"),
                                 ("data.dataset", "123"), ("sampler.guidance_interval", "(-1, 2)")])
    assert config.loss.bias == -2 and tuple(config.model.channels) == (32, 48)
    assert config.sampler.method == "ddpm" and config.train.lr_decay == "cosine"
    assert config.train.learning_rate == 1.0 and isinstance(config.train.learning_rate, float)
    assert config.train.ema_warmup is False and config.data.dataset == "123"
    assert tuple(config.sampler.guidance_interval) == (-1, 2)
    config_lib.override(config, [("data.resolution", "32")])  # the model follows the data
    assert config.model.resolution == 32
    for key in ("loss.bais", "modle.channels", "loss.bias.x", "seed.x"):
        with pytest.raises(KeyError):
            config_lib.override(config, [(key, "1")])
    for key, text in (("train.fsdp", "abc"), ("train.ema_warmup", "maybe"), ("model.channels", "3"), ("loss", "1")):
        with pytest.raises(ValueError, match=f"config.{key}"):
            config_lib.override(config, [(key, text)])


def test_config_flags_load_and_override_in_one_line_errors():
    spec, items, rest = flags.split_config_args(
        ["--config", "demo:video", "--workdir", "w", "--config.loss.bias=-2", "--config.seed", "3"])
    assert spec == "demo:video" and items == [("loss.bias", "-2"), ("seed", "3")] and rest == ["--workdir", "w"]
    config = flags.load_config("prog", spec, items)
    assert config.loss.bias == -2 and config.seed == 3
    with pytest.raises(SystemExit, match=r"^prog: --config.loss.bais names no config key"):
        flags.load_config("prog", spec, [("loss.bais", "1")])
    with pytest.raises(SystemExit, match=r"^prog: --config.train.fsdp=abc: "):
        flags.load_config("prog", spec, [("train.fsdp", "abc")])
    with pytest.raises(SystemExit, match=r"^prog: --config configs/k600.py:small: no config file configs/k600.py"):
        flags.load_config("prog", "configs/k600.py:small", [])


@pytest.mark.parametrize("command,old,new", [
    ("train", "--steps", "--train_steps"), ("demo", "--steps", "--train_steps"),
    ("sample", "--steps", "--sampler_steps"), ("evaluate", "--steps", "--sampler_steps"),
    ("evaluate", "--logvar-interp", "--logvar_interp"), ("evaluate", "--num-samples", "--num_samples"),
    ("demo", "--set", "--config.KEY=VALUE"), ("demo", "--num-eval", "--num_eval"),
    ("render", "--max-clips", "--max_clips"), ("info", "--set", "--config.KEY=VALUE"),
])
def test_old_flag_names_name_the_new_one(command, old, new):
    from sid2video import cli

    argv = [command, "--workdir", "w", old + "=1"] if command != "render" else [command, "--npz", "x", old, "1"]
    with pytest.raises(SystemExit, match=rf"^sid2video {command}: {old} is now {new}$"):
        cli.main(argv)


@pytest.mark.parametrize("key", sorted(config_lib.FOLLOWS))
def test_an_override_of_a_key_that_follows_another_is_refused_naming_the_source(key):
    """Setting schedule.image_d would write through its reference into data.resolution (the data
    would then be loaded at that size); the override is refused and names the key to set."""
    config = load("imagenet256", "small") if key.startswith("schedule") else load("demo", "video")
    before = config.to_dict()
    source = config_lib.FOLLOWS[key]
    with pytest.raises(ValueError, match=rf"config\.{key} follows config\.{source} .*--config\.{source}="):
        config_lib.override(config, [(key, "64" if not key.endswith("mean_type") else "eps")])
    assert config.to_dict() == before  # nothing written through
    # Every listed key really follows its source in a built config.
    section, name = source.split(".")
    assert config[section].get_ref(name) is config[key.split(".")[0]].get_ref(key.split(".")[1])


def test_random_flip_is_a_bool_and_off_only_for_the_digit_images():
    # Digits mirrored are not digits; the paper configs keep ADM's flips.
    assert load("demo", "images").data.random_flip is False
    assert all(load(name, variant).data.random_flip is True
               for name, variant in (("kinetics600", "small"), ("imagenet512", "small"), ("demo", "video")))
    config = load("demo", "video")
    config_lib.override(config, [("data.random_flip", "false")])
    assert config.data.random_flip is False
    written = load("demo", "images").to_dict()
    written["data"]["random_flip"] = "yes"
    with pytest.raises(ValueError, match=r"config.data.random_flip='yes' is invalid: must be True or False"):
        validate(ConfigDict(written))
