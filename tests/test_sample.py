"""Sampling from checkpoints: restored EMA parameters, conditioning kept, guidance, determinism."""

import jax
import numpy as np
import pytest
from flax import nnx

from sid2video import checkpoint, sample
from sid2video.diffusion import parametrization, samplers, schedules
from sid2video.trainer import Trainer
from train_worker import global_batch, tiny_config


@pytest.fixture(scope="module")
def run(tiny_run):
    return tiny_run, Trainer(tiny_config())


@pytest.fixture(scope="module")
def restored(run):
    return checkpoint.load_model(run[0])


def test_load_model_gives_the_ema_parameters(run, restored):
    workdir, trainer = run
    model, config, step = restored
    assert step == 10 and config.train.sample_every == 5  # the run's own config came back
    # Replay the last two updates from the step-8 checkpoint (batches 8 and 9): with decay 0.9 the
    # EMA must be 0.81 ema_8 + 0.09 params_9 + 0.1 params_10, and the raw parameters params_10.
    c = checkpoint.Checkpointer(workdir, async_save=False)
    state, data_state = trainer.restore(c, 8)
    c.close()
    assert data_state == {"i": 8}
    ema8 = [np.asarray(a, np.float64) for a in jax.tree.leaves(state.ema)]
    state, _ = trainer.step(state, global_batch(8))
    p9 = [np.asarray(a, np.float64) for a in jax.tree.leaves(state.params)]
    state, _ = trainer.step(state, global_batch(9))
    p10 = [np.asarray(a, np.float64) for a in jax.tree.leaves(state.params)]
    got = jax.tree.leaves(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    for g, e, a, b in zip(got, ema8, p9, p10):
        np.testing.assert_allclose(np.asarray(g), 0.81 * e + 0.09 * a + 0.1 * b, rtol=1e-5, atol=1e-6)
    raw, _, _ = checkpoint.load_model(workdir, ema=False)
    for g, b in zip(jax.tree.leaves(nnx.to_pure_dict(nnx.state(raw, nnx.Param))), p10):
        np.testing.assert_array_equal(np.asarray(g), b.astype(np.float32))
    for step in (5, 10):  # periodic EMA samples: one row per sample, one column per frame
        from PIL import Image

        strip = Image.open(workdir / "samples" / f"step_{step:08d}.png")
        assert strip.size == (3 * 68, 2 * 68 + 6)  # 8² frames enlarged 8x, 2-px borders, a 6-px gap


def test_generator_matches_the_sampler_and_keeps_conditioning(restored):
    model, config, _ = restored
    gen = sample.Generator(model, config)
    b = global_batch(7)
    batch = {"video": b["video"][:3], "label": b["label"][:3]}
    out = gen(batch, jax.random.PRNGKey(1))
    assert out.shape == batch["video"].shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out[:, :1], batch["video"][:, :1])  # conditioning frame unchanged
    np.testing.assert_array_equal(out, gen(batch, jax.random.PRNGKey(1)))  # same key, same samples
    assert not np.array_equal(out[:, 1:], gen(batch, jax.random.PRNGKey(2))[:, 1:])

    # A direct call of the sampler with the model's x̂ (written here independently) agrees.
    x = batch["video"].astype(np.float32) / 127.5 - 1
    mask = np.zeros((3, 3), np.float32)
    mask[:, 0] = 1
    sched = schedules.from_config(config.schedule)

    def predict(z, logsnr):
        v = model(z, logsnr, cond=x, cond_mask=mask, label=batch["label"])
        return parametrization.x_from_v(z, v, logsnr)

    direct = samplers.sample(predict, jax.random.PRNGKey(1), x.shape, schedule=sched, num_steps=6,
                             method="addim", cond=x, cond_mask=mask)
    direct = np.clip(np.round((np.asarray(direct) + 1) * 127.5), 0, 255).astype(np.uint8)
    assert np.abs(direct.astype(int) - out.astype(int)).max() <= 1


def _perturbed(model, scale=0.2):
    """A copy of the model whose every parameter is moved by noise, so that labels and
    conditioning frames change its predictions (a barely trained model hardly depends on them)."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(0), len(leaves))
    leaves = [p + scale * jax.random.normal(k, p.shape, p.dtype) for p, k in zip(leaves, keys)]
    return nnx.merge(graphdef, jax.tree.unflatten(tree, leaves), rest)


def test_guidance_outside_its_interval_is_unguided(restored):
    model, config, _ = restored
    model = _perturbed(model)
    b = global_batch(8)
    batch = {"video": b["video"][:2], "label": b["label"][:2]}
    plain = sample.Generator(model, config, method="ddim")(batch, jax.random.PRNGKey(3))
    # The schedule's logSNR never exceeds its bound, so an interval above it never guides.
    far = sample.Generator(model, config, method="ddim", guidance=2.0,
                           guidance_interval=(100.0, 200.0))(batch, jax.random.PRNGKey(3))
    np.testing.assert_array_equal(plain, far)
    near = sample.Generator(model, config, method="ddim", guidance=2.0,
                            guidance_interval=(-50.0, 50.0))(batch, jax.random.PRNGKey(3))
    assert not np.array_equal(plain, near)
    np.testing.assert_array_equal(near[:, :1], batch["video"][:, :1])


def test_bad_sampler_settings_are_named(restored):
    model, config, _ = restored
    with pytest.raises(ValueError, match="config.sampler.method='euler'"):
        sample.Generator(model, config, method="euler")
    gen = sample.Generator(model, config)
    with pytest.raises(ValueError, match="the model takes"):
        gen({"video": np.zeros((1, 3, 4, 4, 3), np.uint8)}, jax.random.PRNGKey(0))


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint in .*; train first"):
        checkpoint.load_model(tmp_path)


def test_guidance_on_conditioning_frames_is_the_guided_formula_with_noised_frames():
    """A model without classes guided on its conditioning frames: the unconditional prediction
    sees no conditioning (mask 0) and the conditioning frames noised to the current logSNR (one
    fixed draw, N(0, I) from fold_in(key, 1)), as it was trained when they were dropped. Checked
    against samplers.guided over two predictors written here, one network call each."""
    from sid2video.models import uvit

    config = tiny_config()
    config.model.num_classes = 0
    config.loss.class_drop_rate = 0.0
    model = _perturbed(uvit.create(config.model, seed=5), scale=0.3)
    video = global_batch(9)["video"][:2]
    w, key = 1.5, jax.random.PRNGKey(4)
    out = sample.Generator(model, config, method="ddim", num_steps=4, guidance=w,
                           guidance_interval=None)({"video": video}, key)

    x = video.astype(np.float32) / 127.5 - 1
    mask = np.zeros((2, 3), np.float32)
    mask[:, 0] = 1
    eps_u = jax.random.normal(jax.random.fold_in(key, 1), x.shape)

    def x_hat(z, logsnr, cond_mask):
        v = model(z, logsnr, cond=x, cond_mask=cond_mask)
        return parametrization.x_from_v(z, v, logsnr)

    def predict_uncond(z, logsnr):
        noised = parametrization.diffuse(x, eps_u, logsnr)
        z = jax.numpy.where(mask[:, :, None, None, None] > 0, noised, z)
        return x_hat(z, logsnr, np.zeros_like(mask))

    predict = samplers.guided(lambda z, logsnr: x_hat(z, logsnr, mask), predict_uncond, w)
    sched = schedules.from_config(config.schedule)
    direct = samplers.sample(predict, key, x.shape, schedule=sched, num_steps=4, method="ddim",
                             cond=x, cond_mask=mask)
    direct = np.clip(np.round((np.asarray(direct) + 1) * 127.5), 0, 255).astype(np.uint8)
    assert np.abs(direct.astype(int) - out.astype(int)).max() <= 1
    # Guidance changes the samples (the check above is not vacuous) and keeps the given frame.
    plain = sample.Generator(model, config, method="ddim", num_steps=4)({"video": video}, key)
    assert np.abs(plain.astype(int) - out.astype(int)).max() > 8
    np.testing.assert_array_equal(out[:, :1], video[:, :1])
