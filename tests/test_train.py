"""The trainer: learning, exact resume, sharding invariance, multi-process, clear errors."""

import json
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
from sid2video import config
from sid2video import train
from train_worker import Batches, global_batch, tiny_config

WORKER = str(pathlib.Path(__file__).with_name("train_worker.py"))
ROOT = pathlib.Path(__file__).resolve().parents[1]


def _env(**extra):
    # Subprocesses share the suite's persistent compilation cache.
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT),
               JAX_COMPILATION_CACHE_DIR=str(ROOT / ".jax_cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5")
    env.update(extra)
    return env


def _params(workdir, step=None, item="params"):
    trainer = train.Trainer(tiny_config())
    c = ckpt.Checkpointer(workdir, async_save=False)
    target = trainer.abstract_state.params if item in ("params", "ema") else None
    got = c.restore(step, {item: target})[item]
    c.close()
    return [np.asarray(x) for x in jax.tree.leaves(got)]


def _losses(workdir):
    rows = [json.loads(line) for line in open(pathlib.Path(workdir) / "metrics.jsonl")]
    return {r["step"]: r["loss"] for r in rows}


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
    trainer = train.Trainer(cfg)
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
    for _ in range(150):
        state, _ = trainer.step(state, batch)
    after = float(eval_loss(state.params))
    assert after < before / 4, (before, after)


def test_sigterm_mid_run_then_resume_is_bit_identical(reference_run, tmp_path):
    def hook(i):
        if i == 6:  # a real SIGTERM arrives while batch 6 is being fetched
            os.kill(os.getpid(), signal.SIGTERM)

    summary = train.fit(tiny_config(), tmp_path, steps=10, data_iterator=Batches(hook=hook), progress=False)
    assert summary["stopped_by"] == "signal SIGTERM"
    assert summary["step"] == 7  # finished the step in flight, saved, returned
    resumed = train.fit(tiny_config(), tmp_path, steps=10, data_iterator=Batches(), progress=False)
    assert resumed["start_step"] == 7 and resumed["step"] == 10
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


def test_data_parallel_and_fsdp_on_8_devices_equal_one_device(reference_run, tmp_path):
    # 4 steps on 8 devices, data parallel and FSDP (2 x 4), against the 1-device run's step 4.
    out = tmp_path / "shard.npz"
    proc = subprocess.run([sys.executable, WORKER, "shard", str(out)], timeout=600, capture_output=True, text=True,
                          env=_env(XLA_FLAGS="--xla_force_host_platform_device_count=8"))
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
    procs = [subprocess.Popen([sys.executable, WORKER, "dist", str(workdir), "10", str(p), "2", str(port), *extra],
                              env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for p in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    return [out for out, _ in outs]


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
    """Batch `bad` carries a NaN pixel (as float video), which makes the loss non-finite."""

    def __init__(self, bad):
        super().__init__()
        self.bad = bad

    def __next__(self):
        i = self.i
        b = super().__next__()
        video = b["video"].astype(np.float32)
        if i == self.bad:
            video[0, -1, 0, 0, 0] = np.nan
        return dict(b, video=video)


def test_nonfinite_loss_stops_with_a_snapshot(tmp_path):
    with pytest.raises(train.NonFiniteError, match=r"step 3: the loss \(nan\)") as err:
        train.fit(tiny_config(), tmp_path, steps=8, data_iterator=NaNAt(3), progress=False)
    snapshot = tmp_path / "debug_step_3"
    assert str(snapshot) in str(err.value)
    assert np.isnan(np.load(snapshot / "batch.npz")["video"]).any()
    params = _params(snapshot)
    assert all(np.isfinite(p).all() for p in params)  # the bad update never reached the state


def test_nonfinite_updates_can_be_skipped(tmp_path):
    summary = train.fit(tiny_config(on_nonfinite="skip"), tmp_path, steps=6, data_iterator=NaNAt(3),
                        progress=False)
    assert summary["step"] == 6 and summary["nonfinite_skipped"] == 1
    assert all(np.isfinite(p).all() for p in _params(tmp_path))


def test_bad_config_values_are_named():
    cfg = tiny_config()
    cfg.train.batch_size = 6
    cfg.train.grad_accum_steps = 4
    with pytest.raises(ValueError, match=r"config.train.grad_accum_steps=4 is invalid: must divide train.batch_size=6"):
        train.Trainer(cfg)
    cfg = tiny_config(on_nonfinite="ignore")
    with pytest.raises(ValueError, match=r"config.train.on_nonfinite='ignore'"):
        train.Trainer(cfg)
    cfg = tiny_config(learning_rat=1.0)
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['learning_rat'\]"):
        train.Trainer(cfg)
    trainer = train.Trainer(tiny_config())
    bad = dict(global_batch(0), label=np.full(8, 3, np.int32))  # tiny_config has 3 classes: 0, 1, 2
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\] for config.model.num_classes=3"):
        trainer.step(trainer.init_state(), bad)
    cfg = tiny_config()
    cfg.data.num_cond_frames = 3
    with pytest.raises(ValueError, match="num_cond_frames=3 must be below model.num_frames=3"):
        train.Trainer(cfg)


@pytest.mark.parametrize("decay", config.LR_DECAYS)
@pytest.mark.parametrize("warmup", [0, 10])
def test_learning_rate_schedules_follow_their_closed_forms(decay, warmup):
    peak, total = 2e-3, 110
    schedule = train.learning_rate_schedule(
        config.TrainConfig(learning_rate=peak, warmup_steps=warmup, num_steps=total, lr_decay=decay))

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
        config.TrainConfig(lr_decay="exp")
    with pytest.raises(ValueError, match=r"train.warmup_steps=100 < train.num_steps=100"):
        config.TrainConfig(lr_decay="cosine", warmup_steps=100, num_steps=100)
