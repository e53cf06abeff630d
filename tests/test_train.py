"""The trainer: learning, exact resume, sharding invariance, multi-process, gradient accumulation,
EMA, non-finite updates, logs and clear errors."""

import functools
import json
import logging
import math
import os
import pathlib
import signal
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sid2video import checkpoint as ckpt
from sid2video import optim, train
from sid2video.config import LR_DECAYS, TrainConfig
from sid2video.trainer import Trainer
import shipped
from train_worker import Batches, global_batch, tiny_config

WORKER = str(pathlib.Path(__file__).with_name("train_worker.py"))
ROOT = pathlib.Path(__file__).resolve().parents[1]


def _env(**extra):
    # Subprocesses share this process's persistent compilation cache: a one-device worker loads
    # the programs the tests here compiled for the same config instead of compiling them again.
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT),
               JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir,
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5")
    env.update(extra)
    return env


@functools.cache
def _abstract_params():
    """The tiny config's parameter shapes and shardings (building a Trainer traces the model)."""
    return Trainer(tiny_config()).abstract_state.params


def _params(workdir, step=None, item="params"):
    c = ckpt.Checkpointer(workdir, async_save=False)
    target = _abstract_params() if item in ("params", "ema") else None
    got = c.restore(step, {item: target})[item]
    c.close()
    return [np.asarray(x) for x in jax.tree.leaves(got)]


def _strict(constant):
    raise ValueError(f"metrics.jsonl holds {constant}, which strict JSON does not allow")


def _rows(workdir):
    return [json.loads(line, parse_constant=_strict) for line in open(pathlib.Path(workdir) / "metrics.jsonl")]


def _losses(workdir):
    return {r["step"]: r["loss"] for r in _rows(workdir)}


# Sharded and unsharded runs sum gradients in another order. Adam divides each update by the
# gradient's own RMS, so an element whose gradient is near zero turns a float32 rounding
# difference into an update difference of a few 1e-6; a wrong reduction moves parameters by
# the learning rate (up to 3e-3 per step here) and still fails.
PARAM_ATOL = 2e-5


@pytest.fixture(scope="module")
def reference_run(tiny_run):
    """An uninterrupted 10-step run (conftest)."""
    return tiny_run


def test_overfits_a_tiny_batch():
    cfg = tiny_config(learning_rate=1e-2, warmup_steps=0)
    cfg.loss.class_drop_rate = 0.0
    cfg.loss.cond_drop_rate = 0.0
    cfg.model.dropout = 0.0
    trainer = Trainer(cfg)
    state = trainer.init_state()
    # One smooth moving pattern, repeated: a clip the network can memorise.
    t, h, w = np.meshgrid(np.arange(3), np.arange(8), np.arange(8), indexing="ij")
    clip = np.stack([np.sin((h + t) / 2.0), np.cos((w - t) / 3.0), np.sin((h + w) / 4.0)], -1)
    video = np.broadcast_to(((clip + 1) * 127.5).astype(np.uint8), (8, 3, 8, 8, 3))
    batch = {"video": np.ascontiguousarray(video), "label": np.zeros(8, np.int32)}
    x = {k: jnp.asarray(v) for k, v in batch.items()}
    keys = jax.random.split(jax.random.PRNGKey(9), 32)

    @jax.jit
    def eval_loss(params):  # the same 32 noise draws before and after training
        return jnp.mean(jax.vmap(lambda k: trainer.loss_fn(params, x, k, 0)[0])(keys))

    before = float(eval_loss(state.params))
    for _ in range(80):  # measured: a quarter of the loss by step 50, a tenth by step 75
        state, _ = trainer.step(state, batch)
    after = float(eval_loss(state.params))
    assert after < before / 4, (before, after)


def test_sigterm_mid_run_then_resume_is_bit_identical(reference_run, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="sid2video")

    def hook(i):
        if i == 6:  # a real SIGTERM arrives while batch 6 is being fetched
            os.kill(os.getpid(), signal.SIGTERM)

    summary = train.fit(tiny_config(), tmp_path, steps=10, data_iterator=Batches(hook=hook), progress=False)
    assert summary["stopped_by"] == "signal SIGTERM"
    assert summary["step"] == 7  # finished the step in flight, saved, returned
    resumed = train.fit(tiny_config(), tmp_path, steps=10, data_iterator=Batches(), progress=False)
    assert resumed["start_step"] == 7 and resumed["step"] == 10
    assert "resumed from step 7" in caplog.text and "stopped at step 10 (steps)" in caplog.text
    assert "changed settings" not in caplog.text and not list(tmp_path.glob("config.until_step_*.json"))
    for a, b in zip(_params(tmp_path), _params(reference_run)):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(_params(tmp_path, item="ema"), _params(reference_run, item="ema")):
        np.testing.assert_array_equal(a, b)
    assert _losses(tmp_path) == _losses(reference_run)
    # Fitting a finished run again (its last checkpoint is the target step) is a no-op, not a
    # second save of step 10.
    again = train.fit(tiny_config(), tmp_path, steps=10, data_iterator=Batches(), progress=False)
    assert again["start_step"] == again["step"] == 10
    assert ckpt.Checkpointer(tmp_path).latest_step() == 10


def test_resuming_with_other_settings_rewrites_config_json(tmp_path, caplog):
    """A run resumed with another loss bias and schedule shift trains on (only the model's settings
    must match), and its config.json becomes the new settings (sampling and evaluation read the
    config each checkpoint holds); the old file is kept under the step it ended at, and the warning
    names each changed key. Resuming again with the same settings changes nothing."""
    caplog.set_level(logging.INFO, logger="sid2video")
    first = tiny_config()
    train.fit(first, tmp_path, steps=2, data_iterator=Batches(), progress=False)
    written = json.loads((tmp_path / "config.json").read_text())
    second = tiny_config()
    second.loss.bias = first.loss.bias - 3.0
    second.schedule.noise_d = 2 * first.schedule.noise_d
    resumed = train.fit(second, tmp_path, steps=4, data_iterator=Batches(), progress=False)
    assert resumed["start_step"] == 2 and resumed["step"] == 4
    now = json.loads((tmp_path / "config.json").read_text())
    assert now["loss"]["bias"] == second.loss.bias and now["schedule"]["noise_d"] == second.schedule.noise_d
    assert json.loads((tmp_path / "config.until_step_2.json").read_text()) == written
    warning = [r.getMessage() for r in caplog.records if "changed settings" in r.getMessage()]
    assert len(warning) == 1
    assert f"loss.bias: {first.loss.bias!r} -> {second.loss.bias!r}" in warning[0]
    assert f"schedule.noise_d: {first.schedule.noise_d} -> {second.schedule.noise_d}" in warning[0]
    assert "model." not in warning[0]
    assert train.record_resumed_config(tmp_path, second, 4) == []
    assert sorted(p.name for p in tmp_path.glob("config*.json")) == ["config.json", "config.until_step_2.json"]


def test_hard_kill_between_saves_then_resume_is_bit_identical(reference_run, tmp_path):
    # checkpoint_every = 4: the process dies at batch 6, after the step-4 save, before the next one.
    proc = subprocess.run([sys.executable, WORKER, "kill", str(tmp_path), "10", "6"], env=_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert ckpt.Checkpointer(tmp_path).latest_step() == 4
    resumed = train.fit(tiny_config(), tmp_path, steps=10, data_iterator=Batches(), progress=False)
    assert resumed["start_step"] == 4
    for a, b in zip(_params(tmp_path), _params(reference_run)):
        np.testing.assert_array_equal(a, b)
    ref = _losses(reference_run)
    assert {s: l for s, l in _losses(tmp_path).items() if s > 4} == {s: l for s, l in ref.items() if s > 4}


def test_data_parallel_and_fsdp_on_4_devices_equal_one_device(reference_run, tmp_path):
    # 4 steps on 4 devices, data parallel and FSDP (2 data x 2 fsdp: both mesh axes split), against
    # the 1-device run's step 4.
    out = tmp_path / "shard.npz"
    proc = subprocess.run([sys.executable, WORKER, "shard", str(out)], timeout=600, capture_output=True, text=True,
                          env=_env(XLA_FLAGS="--xla_force_host_platform_device_count=4"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = np.load(out)
    assert int(r["fsdp_split"]) > 0
    ref_losses = [_losses(reference_run)[s] for s in range(1, 5)]
    np.testing.assert_allclose(r["dp_loss"], ref_losses, rtol=1e-5)
    np.testing.assert_allclose(r["fsdp_loss"], ref_losses, rtol=1e-5)
    ref = _params(reference_run, step=4)
    for j, p in enumerate(ref):
        np.testing.assert_allclose(r[f"dp_p{j}"], p, rtol=1e-4, atol=PARAM_ATOL)
        np.testing.assert_allclose(r[f"fsdp_p{j}"], p, rtol=1e-4, atol=PARAM_ATOL)


def _two_processes(workdir, *extra):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    done = shipped.run_together([[sys.executable, WORKER, "dist", str(workdir), "10", str(p), "2", str(port), *extra]
                                 for p in range(2)], env=_env(), timeout=600)
    for rc, _, err in done:
        assert rc == 0, err[-3000:]
    return [out for _, out, _ in done]


def test_two_processes_train_like_one(reference_run, tmp_path):
    # Only the second process gets a SIGTERM (at batch 6): both stop after step 7 and save it,
    # instead of one process waiting forever in a collective the other never joins.
    outs = _two_processes(tmp_path, "6")
    assert "stopped at 7 by signal SIGTERM" in outs[1], outs
    assert "stopped at 7 by another process" in outs[0], outs
    assert ckpt.Checkpointer(tmp_path).all_steps()[-1] == 7
    # Resumed, the two processes finish the run like one process did.
    _two_processes(tmp_path)
    assert ckpt.Checkpointer(tmp_path).all_steps()[-1] == 10
    for a, b in zip(_params(tmp_path), _params(reference_run)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=PARAM_ATOL)
    ref, got = _losses(reference_run), _losses(tmp_path)
    assert sorted(got) == sorted(ref)
    np.testing.assert_allclose([got[s] for s in sorted(got)], [ref[s] for s in sorted(ref)], rtol=1e-4)


def test_mismatched_checkpoint_is_refused(reference_run):
    other = tiny_config()
    other.model.channels = (8, 24)
    with pytest.raises(ckpt.CheckpointMismatchError, match=r"model.channels: checkpoint \[8, 16\] vs config \[8, 24\]"):
        train.fit(other, reference_run, steps=11, data_iterator=Batches(), progress=False)


class NaNAt(Batches):
    """Batches `bad` (an int or a set) carry a NaN pixel (as float video): a non-finite loss."""

    def __init__(self, bad):
        super().__init__()
        self.bad = {bad} if isinstance(bad, int) else set(bad)

    def __next__(self):
        i = self.i
        b = super().__next__()
        video = b["video"].astype(np.float32)
        if i in self.bad:
            video[0, -1, 0, 0, 0] = np.nan
        return dict(b, video=video)


def test_nonfinite_loss_stops_with_a_snapshot_that_replays(reference_run, tmp_path):
    with pytest.raises(train.NonFiniteError, match=r"step 3: the loss \(nan\)") as err:
        train.fit(tiny_config(), tmp_path, steps=8, data_iterator=NaNAt(3), progress=False)
    snapshot = tmp_path / "debug_step_3"
    assert str(snapshot) in str(err.value)
    bad = dict(np.load(snapshot / "batch.npz"))
    assert np.isnan(bad["video"]).any()
    trainer = Trainer(tiny_config())

    def restored():
        c = ckpt.Checkpointer(snapshot, async_save=False)
        state, _ = trainer.restore(c)
        c.close()
        return state

    # The last good state: three updates done, and on the clean batch 3 it gives the loss that the
    # uninterrupted run logged for its fourth step.
    state = restored()
    assert int(state.step) == 3
    assert all(np.isfinite(np.asarray(p)).all() for p in jax.tree.leaves(state.params))
    _, m = trainer.step(state, global_batch(3))
    assert float(m["loss"]) == pytest.approx(_losses(reference_run)[4], rel=1e-6)
    # Replaying the failing batch on it fails again.
    _, m = trainer.step(restored(), bad)
    assert not bool(m["finite"]) and np.isnan(float(m["loss"]))


def test_nonfinite_updates_can_be_skipped_and_are_null_in_the_metrics(tmp_path):
    summary = train.fit(tiny_config(on_nonfinite="skip"), tmp_path, steps=6, data_iterator=NaNAt(3),
                        progress=False)
    assert summary["step"] == 6 and summary["nonfinite_skipped"] == 1
    assert all(np.isfinite(p).all() for p in _params(tmp_path))
    rows = {r["step"]: r for r in _rows(tmp_path)}  # strict JSON: NaN is null
    assert rows[4]["loss"] is None and rows[4]["nonfinite_skipped"] == 1
    assert all(isinstance(rows[s]["loss"], float) and math.isfinite(rows[s]["loss"]) for s in (1, 2, 3, 5, 6))


def test_too_many_skipped_updates_stop_the_run(tmp_path):
    cfg = tiny_config(on_nonfinite="skip", max_nonfinite_skips=2)
    with pytest.raises(train.NonFiniteError, match=r"step 4: .* 3 updates of this run were skipped, more than "
                                                    r"train.max_nonfinite_skips=2"):
        train.fit(cfg, tmp_path, steps=8, data_iterator=NaNAt({1, 2, 4}), progress=False)
    assert (tmp_path / "debug_step_4" / "batch.npz").is_file()
    with pytest.raises(ValueError, match=r"config.train.max_nonfinite_skips=-1 is invalid"):
        TrainConfig(max_nonfinite_skips=-1)


def test_info_lines_reach_stderr_from_the_train_command():
    # Importing orbax configures the root logger at WARNING; `sid2video train` must replace that
    # before it logs, and keep other libraries' INFO chatter out.
    code = ("import logging\nfrom sid2video import train_command\n"
            "try:\n    train_command.run(['--workdir', 'unused'])\nexcept SystemExit:\n    pass\n"
            "logging.getLogger('sid2video.train').info('resumed from step 7')\n"
            "logging.getLogger('orbax').info('orbax chatter')\n")
    proc = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=300,
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "sid2video.train INFO resumed from step 7" in proc.stderr
    assert "orbax chatter" not in proc.stderr


class _ExampleKeyed(Trainer):
    """The trainer's loss with each example's noise drawn from its own index (not from its place in
    a microbatch), so that a batch and its microbatches see the same draws."""

    def loss_fn(self, params, batch, rng, step):
        def one(video, label, index):
            key = jax.random.fold_in(jax.random.PRNGKey(0), index)
            return Trainer.loss_fn(self, params, {"video": video[None], "label": label[None]}, key, step)

        losses, metrics = jax.vmap(one)(batch["video"], batch["label"], batch["index"])
        return jnp.mean(losses), jax.tree.map(jnp.mean, metrics)


def test_gradient_accumulation_equals_one_full_batch_step():
    batch = {k: jnp.asarray(v) for k, v in dict(global_batch(0), index=np.arange(8)).items()}
    got = []
    for n in (1, 2):
        cfg = tiny_config(grad_accum_steps=n, warmup_steps=0)
        cfg.model.dropout = 0.0
        cfg.loss.class_drop_rate = cfg.loss.cond_drop_rate = 0.0
        trainer = _ExampleKeyed(cfg)
        state = trainer.init_state()

        @jax.jit
        def grads_and_step(state, batch, key):  # the step's gradients (its key is folded with the step) and the step
            grads, _ = trainer.grads(state.params, batch, jax.random.fold_in(key, state.step), state.step)
            return grads, trainer.train_step(state, batch, key)

        grads, (new, m) = grads_and_step(state, batch, jax.random.PRNGKey(1))
        got.append((jax.tree.leaves(grads), float(m["loss"]), float(m["grad_norm"]), jax.tree.leaves(new.params)))
    (g1, loss1, norm1, p1), (g2, loss2, norm2, p2) = got
    assert loss2 == pytest.approx(loss1, rel=1e-5) and norm2 == pytest.approx(norm1, rel=1e-5)
    for a, b in zip(g1, g2):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-7)
    for a, b in zip(p1, p2):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=PARAM_ATOL)


def test_ema_and_its_warmup_follow_the_closed_form():
    # decay_s = min(ema_decay, (1 + s) / (10 + s)) for update s = 0, 1, ...
    tc = TrainConfig(ema_decay=0.9, ema_warmup=True)
    for s, expected in [(0, 0.1), (1, 2 / 11), (8, 0.5), (80, 0.9), (10_000, 0.9)]:
        assert float(optim.ema_decay(tc, s)) == pytest.approx(expected, rel=1e-6)
    assert float(optim.ema_decay(TrainConfig(ema_decay=0.9), 0)) == pytest.approx(0.9)
    trainer = Trainer(tiny_config(ema_decay=0.999, ema_warmup=True))
    state = trainer.init_state()
    ema = [np.asarray(p, np.float64) for p in jax.tree.leaves(state.params)]
    for s in range(3):
        state, _ = trainer.step(state, global_batch(s))
        d = min(0.999, (1 + s) / (10 + s))
        ema = [d * e + (1 - d) * np.asarray(p, np.float64) for e, p in zip(ema, jax.tree.leaves(state.params))]
        for got, want in zip(jax.tree.leaves(state.ema), ema):
            np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)


def test_bad_config_values_are_named():
    cfg = tiny_config()
    cfg.train.batch_size = 6
    cfg.train.grad_accum_steps = 4
    with pytest.raises(ValueError, match=r"config.train.grad_accum_steps=4 is invalid: must divide train.batch_size=6"):
        Trainer(cfg)
    cfg = tiny_config(on_nonfinite="ignore")
    with pytest.raises(ValueError, match=r"config.train.on_nonfinite='ignore'"):
        Trainer(cfg)
    cfg = tiny_config(learning_rat=1.0)
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['learning_rat'\]"):
        Trainer(cfg)
    trainer = Trainer(tiny_config())
    bad = dict(global_batch(0), label=np.full(8, 3, np.int32))  # tiny_config has 3 classes: 0, 1, 2
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\] for config.model.num_classes=3"):
        trainer.step(trainer.init_state(), bad)
    cfg = tiny_config()
    cfg.data.num_cond_frames = 3
    with pytest.raises(ValueError, match="num_cond_frames=3 must be below model.num_frames=3"):
        Trainer(cfg)


@pytest.mark.parametrize("decay", LR_DECAYS)
@pytest.mark.parametrize("warmup", [0, 10])
def test_learning_rate_schedules_follow_their_closed_forms(decay, warmup):
    peak, total = 2e-3, 110
    schedule = optim.learning_rate_schedule(
        TrainConfig(learning_rate=peak, warmup_steps=warmup, num_steps=total, lr_decay=decay))

    def expected(step):
        if step < warmup:
            return peak * step / warmup
        u = min(step - warmup, total - warmup) / (total - warmup)  # fraction of the decay done
        return {"none": peak, "linear": peak * (1 - u), "cosine": peak * 0.5 * (1 + np.cos(np.pi * u))}[decay]

    steps = [0, 1, 5, warmup, warmup + 1, 37, 60, total - 1, total, total + 50]
    got = [float(schedule(s)) for s in steps]
    np.testing.assert_allclose(got, [expected(s) for s in steps], rtol=1e-5, atol=1e-9)


def test_bad_learning_rate_decay_is_named():
    with pytest.raises(ValueError, match=r"config.train.lr_decay='exp' is invalid: choose one of 'none', 'cosine', 'linear'"):
        TrainConfig(lr_decay="exp")
    with pytest.raises(ValueError, match=r"train.warmup_steps=100 < train.num_steps=100"):
        TrainConfig(lr_decay="cosine", warmup_steps=100, num_steps=100)
