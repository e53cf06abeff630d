"""Evaluation during training: eval/ rows every train.eval_every steps that equal an independent
computation from the saved EMA, hooks never at step 0 nor when off, and the keys' errors."""

import json
import math
import pathlib
import re

import jax
import ml_collections as mlc
import numpy as np
import pytest
from flax import nnx

from evaluation import clips, in_training
from sid2video import checkpoint as ckpt
from sid2video import config as config_lib
from sid2video import sample, train, train_command
from sid2video.config import TrainConfig
from sid2video.trainer import Trainer
from sid2video.data import pipeline, synthetic
from train_worker import Batches, tiny_config

FRAMES, RES, COND, SEED = 3, 16, 1, 5   # 16² keeps SSIM's 11×11 window inside the frame
VAL, HELD_OUT = 3, 2                    # a held-out subset of 2 of the 3 validation clips

CONFIG_FILE = """
from sid2video import config


def get_config():
    return config.base(
        data=dict(dataset="moving_digits", data_dir={data_dir!r}, num_frames={frames}, num_cond_frames={cond},
                  resolution={res}, eval_split="val"),
        model=dict(channels=(8,), block_types=("resnet",), encoder_blocks=(1,), decoder_blocks=(1,),
                   emb_channels=16, frame_conditioning=True),
        schedule=dict(name="cosine_shifted", image_d={res}, noise_d={res}),
        loss=dict(weighting="sigmoid", bias=0.0),
        sampler=dict(method="ddim", num_steps=2, guidance=0.0),
        train=dict(batch_size=2, num_steps=4, warmup_steps=0, learning_rate=3e-3, log_every=1,
                   checkpoint_every=2, async_checkpoint=False, ema_decay=0.9, eval_num_clips={held_out}),
        seed={seed},
    )
"""


def _strict(constant):
    raise ValueError(f"metrics.jsonl holds {constant}, which strict JSON does not allow")


def _rows(workdir):
    return [json.loads(line, parse_constant=_strict) for line in open(pathlib.Path(workdir) / "metrics.jsonl")]


def _eval_rows(workdir):
    return [r for r in _rows(workdir) if any(k.startswith("eval/") for k in r)]


@pytest.fixture(scope="module")
def config_file(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_data")
    data_dir = root / "digits"
    synthetic.write_moving_digits(data_dir, counts={"train": 4, "val": VAL}, num_frames=FRAMES, height=RES,
                                  width=RES, digit_size=8, num_digits=1, progress=False, workers=1)
    path = root / "tiny.py"
    path.write_text(CONFIG_FILE.format(data_dir=str(data_dir), frames=FRAMES, cond=COND, res=RES,
                                       held_out=HELD_OUT, seed=SEED))
    return path


@pytest.fixture(scope="module")
def eval_run(config_file, tmp_path_factory):
    """`sid2video train` for 4 steps with evaluation every 2 (checkpoints at 2 and 4)."""
    workdir = tmp_path_factory.mktemp("eval_run")
    rc = train_command.run(["--config", str(config_file), "--workdir", str(workdir), "--train_steps=4",
                            "--config.train.eval_every=2"])
    assert rc == 0
    return workdir


def _psnr_closed_form(pred_BTHWC, true_BTHWC):
    """Mean over clips and predicted frames of min(10 log10(255² / MSE), 100) (evaluation/metrics.py)."""
    err = (pred_BTHWC.astype(np.float64) - true_BTHWC.astype(np.float64)) ** 2
    mse_BT = err.mean(axis=(2, 3, 4))
    db = np.where(mse_BT > 0, 10 * np.log10(255.0 ** 2 / np.maximum(mse_BT, 1e-300)), 100.0)
    return float(np.minimum(db, 100.0).mean())


def _independent_psnr(workdir, step, ema=True):
    """PSNR of the held-out clips sampled from checkpoint `step` by `sample.Generator`."""
    model, config, _ = ckpt.load_model(workdir, step, ema=ema)
    positions = clips.subset_positions(VAL, HELD_OUT, seed=0)
    it = pipeline.make_eval_iterator(config.data, batch_size=HELD_OUT, split="val", positions=positions)
    batch = next(it)
    assert batch["mask"].all()
    video = np.asarray(batch["video"])
    out = sample.Generator(model, config)({"video": video, "label": np.asarray(batch["label"])},
                                          jax.random.fold_in(jax.random.PRNGKey(SEED), 0))
    return _psnr_closed_form(out[:, COND:], video[:, COND:])


def test_eval_rows_every_n_steps_equal_an_independent_computation(eval_run):
    rows = _eval_rows(eval_run)
    assert [r["step"] for r in rows] == [2, 4]  # never at step 0
    for r in rows:
        assert math.isfinite(r["eval/psnr"]) and 0 < r["eval/psnr"] <= 100
        assert math.isfinite(r["eval/ssim"]) and -1 <= r["eval/ssim"] <= 1
        assert not any(k.startswith("eval/fvd") for k in r)  # 'auto' with conditioning frames: frames only
    # The training rows are still there, one per step (log_every=1).
    assert [r["step"] for r in _rows(eval_run) if "loss" in r] == [1, 2, 3, 4]
    for r in rows:
        expected = _independent_psnr(eval_run, r["step"])
        assert r["eval/psnr"] == pytest.approx(expected, rel=1e-5, abs=1e-5)
        # The raw parameters sample otherwise: the check above would catch a hook that used them.
        raw = _independent_psnr(eval_run, r["step"], ema=False)
        assert abs(raw - expected) > 1e-3
    assert (eval_run / "tb").is_dir()


class _Recorder:
    """A hook that keeps the steps it saw and the network's parameters, and returns fixed values."""

    def __init__(self):
        self.steps, self.params = [], {}

    def __call__(self, step, model):
        self.steps.append(step)
        self.params[step] = [np.asarray(x) for x in jax.tree.leaves(nnx.to_pure_dict(nnx.state(model, nnx.Param)))]
        return {"value": 1.5, "undefined": float("nan")}


def test_hooks_run_every_n_steps_on_the_ema_never_at_the_start_and_not_when_off(tmp_path):
    hook = _Recorder()
    train.fit(tiny_config(eval_every=2), tmp_path / "on", steps=4, data_iterator=Batches(), progress=False,
              hooks=[hook])
    assert hook.steps == [2, 4]
    rows = _eval_rows(tmp_path / "on")
    assert [(r["step"], r["eval/value"], r["eval/undefined"]) for r in rows] == [(2, 1.5, None), (4, 1.5, None)]
    # The hook saw the EMA of step 4 (the checkpoint's), not the raw parameters.
    trainer = Trainer(tiny_config())
    c = ckpt.Checkpointer(tmp_path / "on", async_save=False)
    got = c.restore(4, {"ema": trainer.abstract_state.ema, "params": trainer.abstract_state.params})
    c.close()
    for a, b in zip(hook.params[4], jax.tree.leaves(got["ema"])):
        np.testing.assert_array_equal(a, np.asarray(b))
    assert any(not np.array_equal(a, np.asarray(b)) for a, b in zip(hook.params[4], jax.tree.leaves(got["params"])))
    # Resumed at step 4, the run evaluates at 6, not again at its first step.
    train.fit(tiny_config(eval_every=2), tmp_path / "on", steps=6, data_iterator=Batches(), progress=False,
              hooks=[hook])
    assert hook.steps == [2, 4, 6]
    # eval_every = 0 (the default): hooks are never called and no eval/ row is written.
    off = _Recorder()
    train.fit(tiny_config(), tmp_path / "off", steps=2, data_iterator=Batches(), progress=False, hooks=[off])
    assert off.steps == [] and _eval_rows(tmp_path / "off") == []
    assert train_command.eval_hooks(tiny_config(), tmp_path / "off") == []


@pytest.mark.parametrize("key,value,message", [
    ("eval_every", -1, "must be an integer >= 0"),
    ("eval_num_clips", 0, "must be an integer >= 1"),
    ("eval_sampler_steps", -2, "must be an integer >= 0"),
    ("eval_metrics", "psnr", "comma-separated string of 'frames', 'fvd', 'fid'"),
    ("eval_metrics", "frames,frames", "each once"),
    ("eval_metrics", ("frames",), "comma-separated string"),
])
def test_invalid_eval_keys_are_named(key, value, message):
    with pytest.raises(ValueError, match=rf"^config\.train\.{key}={re.escape(repr(value))} is invalid: .*"
                                         rf"{re.escape(message)}"):
        TrainConfig(**{key: value})


def _config(**data):
    c = mlc.ConfigDict({"train": {}, "data": dict(num_frames=16, num_cond_frames=5)})
    c.data.update(data)
    return c


def test_eval_metrics_follow_the_data_and_refuse_what_does_not_fit():
    assert config_lib.eval_metrics(_config()) == ("frames",)
    assert config_lib.eval_metrics(_config(num_cond_frames=0)) == ("fvd",)
    assert config_lib.eval_metrics(_config(num_frames=1, num_cond_frames=0)) == ("fid",)
    c = _config()
    c.train.eval_metrics = "fvd, frames"
    assert config_lib.eval_metrics(c) == ("fvd", "frames")
    for data, names, why in [(dict(num_cond_frames=0), "frames", "needs conditioning frames"),
                             (dict(num_frames=1, num_cond_frames=0), "fvd", "measures video"),
                             (dict(), "fid", "measures images")]:
        c = _config(**data)
        c.train.eval_metrics = names
        with pytest.raises(ValueError, match=rf"^config\.train\.eval_metrics='{names}' is invalid: '{names}' {why}"):
            config_lib.eval_metrics(c)


def test_held_out_set_errors_name_the_key(config_file, tmp_path):
    config = config_lib.load(str(config_file))
    config.train.eval_every = 2
    config.train.eval_num_clips = VAL + 1
    with pytest.raises(ValueError, match=rf"^config\.train\.eval_num_clips={VAL + 1} is invalid: the 'val' split "
                                         rf".* has {VAL} clips"):
        in_training.TrainingEvaluation(config, tmp_path)
    config.train.eval_num_clips = VAL
    config.train.eval_metrics = "fvd"  # 3-frame clips: too short for I3D, refused before loading it
    with pytest.raises(ValueError, match=r"^config\.train\.eval_metrics='fvd' is invalid: FVD's I3D needs at least 9"):
        in_training.TrainingEvaluation(config, tmp_path)
    # The command stops with one line before training.
    with pytest.raises(SystemExit) as err:
        train_command.run(["--config", str(config_file), "--workdir", str(tmp_path / "run"),
                           "--config.train.eval_every=2", f"--config.train.eval_num_clips={VAL + 1}"])
    msg = str(err.value)
    assert msg.startswith("sid2video train: config.train.eval_num_clips=4 is invalid") and "\n" not in msg
    assert not (tmp_path / "run" / "checkpoints").exists()


class _StandInI3D:
    """A cheap stand-in for I3D that counts its calls: 2×2 average pools of each frame, projected
    to I3D's 400 features by a fixed random matrix."""

    checksum = "stand-in-i3d-v1"

    def __init__(self, frames):
        self.calls = 0
        w = jax.numpy.asarray(np.random.default_rng(0).normal(size=(12 * frames, 400)), jax.numpy.float32)
        self._f = jax.jit(lambda x: jax.numpy.mean(x.reshape(x.shape[0], x.shape[1], 2, 112, 2, 112, 3), axis=(3, 5))
                          .reshape(x.shape[0], -1) @ w)

    def __call__(self, x):
        self.calls += 1
        return self._f(x)


def test_fvd_and_frames_see_the_same_clips_and_noise_at_every_call(tmp_path):
    from evaluation import frechet, fvd
    from sid2video.models import uvit

    frames = 9  # I3D's shortest clip
    synthetic.write_moving_digits(tmp_path / "digits", counts={"val": VAL}, num_frames=frames, height=RES,
                                  width=RES, digit_size=8, num_digits=1, progress=False, workers=1)
    (tmp_path / "c.py").write_text(CONFIG_FILE.format(data_dir=str(tmp_path / "digits"), frames=frames, cond=2,
                                                      res=RES, held_out=HELD_OUT, seed=SEED))
    config = config_lib.load(str(tmp_path / "c.py"))
    config.train.update(eval_every=1, eval_metrics="frames,fvd")
    net = _StandInI3D(frames)
    hook = in_training.TrainingEvaluation(config, tmp_path / "run", feature_nets={"fvd": net})
    model = uvit.create(config.model, seed=1)
    first = hook(1, model)
    assert net.calls == 2  # the held-out clips' statistics, then the samples'
    assert hook(2, model) == first  # the same clips and noise: the same numbers for the same network
    assert net.calls == 3  # the reference statistics are computed once
    assert first["num_samples"] == HELD_OUT and math.isfinite(first["fvd"]) and math.isfinite(first["psnr"])
    # FVD from the clips and the Generator's samples directly.
    positions = clips.subset_positions(VAL, HELD_OUT, seed=0)
    video = np.asarray(next(pipeline.make_eval_iterator(config.data, batch_size=HELD_OUT, split="val",
                                                        positions=positions))["video"])
    out = sample.Generator(model, config)({"video": video, "label": np.zeros(HELD_OUT, np.int32)},
                                          jax.random.fold_in(jax.random.PRNGKey(SEED), 0))
    features = fvd.FeatureExtractor(net=net, batch_size=HELD_OUT)
    stats = [frechet.RunningStatistics(400).update(features.features(v)) for v in (out, video)]
    assert first["fvd"] == pytest.approx(fvd.distance(*stats), rel=1e-4)
    assert first["psnr"] == pytest.approx(_psnr_closed_form(out[:, 2:], video[:, 2:]), rel=1e-5)
