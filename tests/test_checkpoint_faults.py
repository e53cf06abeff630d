"""Checkpoints under faults: damaged files, two trainers on one workdir, failed writes."""

import errno
import json
import logging
import os
import pathlib
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest

from sid2video import checkpoint as ckpt
from sid2video import workdir_lock

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _state(step):
    """A small train-state-like tree whose values identify the step."""
    return {"w": np.full((4, 8), float(step), np.float32), "b": np.arange(8, dtype=np.float32) + step}


def _save(c, step):
    s = _state(step)
    c.save(step, params=s, ema=s, opt={"step": np.int32(step), "mu": s}, data={"i": step},
           meta={"fingerprint": "f", "model_config": {}}, force=True)


def _targets():
    import jax

    tree = {"w": np.zeros((4, 8), np.float32), "b": np.zeros(8, np.float32)}
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), tree)
    return {"params": abstract, "opt": {"step": jax.ShapeDtypeStruct((), np.int32), "mu": abstract},
            "data": None}


@pytest.fixture
def run(tmp_path):
    """A workdir with checkpoints 1, 2 and 3."""
    c = ckpt.Checkpointer(tmp_path, async_save=False, lock=True)
    for step in (1, 2, 3):
        _save(c, step)
    c.close()
    return tmp_path


def _truncate_params(step_dir):
    for f in (step_dir / "params").rglob("*"):
        if f.is_file() and f.parent.name == "d":
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


DAMAGE = {
    "truncated params": _truncate_params,
    "deleted opt manifest": lambda d: os.remove(d / "opt" / "manifest.ocdbt"),
    "deleted data metadata": lambda d: os.remove(d / "data" / "metadata"),
    "deleted meta": lambda d: shutil.rmtree(d / "meta"),
}


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_resume_sets_a_damaged_checkpoint_aside(run, kind, caplog):
    DAMAGE[kind](run / "checkpoints" / "3")
    # A reader names the step and the file in one line and renames nothing.
    reader = ckpt.Checkpointer(run, async_save=False)
    with pytest.raises(ckpt.DamagedCheckpointError, match=r"checkpoint 3 in .* cannot be restored \(3/") as err:
        reader.restore(3, dict(_targets(), meta=None))
    assert "\n" not in str(err.value) and "older one (2)" in str(err.value)
    reader.close()
    assert (run / "checkpoints" / "3").is_dir()

    writer = ckpt.Checkpointer(run, async_save=False, lock=True)
    caplog.set_level(logging.WARNING, "sid2video.checkpoint")
    writer.read_meta()
    got = writer.restore(None, _targets())
    np.testing.assert_array_equal(got["params"]["w"], _state(2)["w"])  # the one before
    assert int(got["opt"]["step"]) == 2 and got["data"] == {"i": 2}
    assert writer.latest_step() == 2 and writer.all_steps() == [1, 2]
    lines = [r.getMessage() for r in caplog.records if "does not restore" in r.getMessage()]
    assert len(lines) == 1 and "checkpoint 3 does not restore (3/" in lines[0] and "3.damaged" in lines[0]
    # Set aside, not deleted: the files are still there for inspection.
    assert (run / "checkpoints" / "3.damaged").is_dir() and not (run / "checkpoints" / "3").exists()
    # Training continues: step 3 is saved again next to the damaged copy.
    _save(writer, 3)
    writer.close()
    assert ckpt.Checkpointer(run, async_save=False).all_steps() == [1, 2, 3]


def test_no_restorable_checkpoint_is_one_error(run):
    for step in (1, 2, 3):
        _truncate_params(run / "checkpoints" / str(step))
    writer = ckpt.Checkpointer(run, async_save=False, lock=True)
    with pytest.raises(ckpt.NoRestorableCheckpointError, match=r"no checkpoint in .* restores \(3: .*; 2: .*; 1: ") as err:
        writer.restore(None, _targets())
    assert "\n" not in str(err.value)
    writer.close()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["1", "2", "3"]  # nothing renamed


def test_load_model_on_a_damaged_step_is_one_line(tiny_run, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(tiny_run, workdir)
    os.remove(workdir / "checkpoints" / "10" / "ema" / "manifest.ocdbt")
    with pytest.raises(ckpt.DamagedCheckpointError, match=r"checkpoint 10 .* cannot be restored \(10/ema") as err:
        ckpt.load_model(workdir, 10)
    assert "\n" not in str(err.value)
    _, _, step = ckpt.load_model(workdir, 8)
    assert step == 8


def test_fit_resumes_from_the_checkpoint_before_a_damaged_one(tiny_run, tmp_path):
    """The run resumed past a damaged newest checkpoint ends where the uninterrupted one did."""
    import jax

    from sid2video import train
    from sid2video.trainer import Trainer
    from train_worker import Batches, tiny_config

    workdir = tmp_path / "run"
    shutil.copytree(tiny_run, workdir)
    (workdir / "metrics.jsonl").write_text("")
    os.remove(workdir / "checkpoints" / "10" / "data" / "metadata")
    summary = train.fit(tiny_config(sample_every=5, num_samples=2), workdir, steps=10,
                        data_iterator=Batches(), progress=False)
    assert summary["start_step"] == 8 and summary["step"] == 10
    assert (workdir / "checkpoints" / "10.damaged").is_dir()
    trainer = Trainer(tiny_config())
    target = {"params": trainer.abstract_state.params}
    a = ckpt.Checkpointer(workdir, async_save=False).restore(10, target)["params"]
    b = ckpt.Checkpointer(tiny_run, async_save=False).restore(10, target)["params"]
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# ----------------------------------------------------------------------------- the workdir lock


def test_second_trainer_on_a_workdir_is_refused(tmp_path):
    first = ckpt.Checkpointer(tmp_path, async_save=False, lock=True)
    with pytest.raises(workdir_lock.WorkdirLockedError) as err:
        ckpt.Checkpointer(tmp_path, async_save=False, lock=True)
    msg = str(err.value)
    assert f"process {os.getpid()} on {socket.gethostname()} (since " in msg and "\n" not in msg
    # Readers never lock: sampling and evaluation run beside the trainer.
    _save(first, 1)
    first.wait()
    assert ckpt.Checkpointer(tmp_path, async_save=False).latest_step() == 1
    first.close()
    assert not (tmp_path / workdir_lock.LOCK_NAME).exists()  # released
    ckpt.Checkpointer(tmp_path, async_save=False, lock=True).close()


def test_second_launch_in_another_process_exits_naming_the_first(tmp_path):
    held = ckpt.Checkpointer(tmp_path, async_save=False, lock=True)
    code = ("import sys; from sid2video import checkpoint as c\n"
            "try:\n    c.Checkpointer(sys.argv[1], lock=True)\n"
            "except ValueError as e:\n    raise SystemExit(f'sid2video train: {e}')\n")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True,
                          env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT)), timeout=300)
    held.close()
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()
    assert len(last) == 1 and f"in use by process {os.getpid()}" in last[0], proc.stderr


def _write_lock(tmp_path, **info):
    (tmp_path / workdir_lock.LOCK_NAME).write_text(json.dumps(dict(since="2024-01-01T00:00:00", **info)))


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path, caplog):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _write_lock(tmp_path, pid=dead.pid, host=socket.gethostname(), token="old")
    caplog.set_level(logging.WARNING, "sid2video.checkpoint")
    c = ckpt.Checkpointer(tmp_path, async_save=False, lock=True)
    assert any(f"process {dead.pid} on {socket.gethostname()} is gone" in r.getMessage() for r in caplog.records)
    assert json.loads((tmp_path / workdir_lock.LOCK_NAME).read_text())["pid"] == os.getpid()
    c.close()


def test_live_and_foreign_locks_are_respected(tmp_path):
    _write_lock(tmp_path, pid=os.getppid(), host=socket.gethostname(), token="other")  # alive
    with pytest.raises(workdir_lock.WorkdirLockedError, match=f"process {os.getppid()}"):
        ckpt.Checkpointer(tmp_path, async_save=False, lock=True)
    _write_lock(tmp_path, pid=1, host="another-host", token="other")
    with pytest.raises(workdir_lock.WorkdirLockedError, match=r"another-host .*another host.*delete .*train.lock"):
        ckpt.Checkpointer(tmp_path, async_save=False, lock=True)
    assert (tmp_path / workdir_lock.LOCK_NAME).exists()  # never removed by the refused launch


def test_lock_left_by_a_failed_run_in_this_process_is_taken_over(tmp_path):
    c = ckpt.Checkpointer(tmp_path, async_save=False, lock=True)
    del c  # never closed, as when a trainer raises before its clean-up
    ckpt.Checkpointer(tmp_path, async_save=False, lock=True).close()


# ----------------------------------------------------------------------------- failed writes


@pytest.mark.parametrize("async_save", [False, True])
def test_write_failure_is_one_line_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch, async_save):
    from orbax.checkpoint._src.handlers import json_checkpoint_handler as jh

    c = ckpt.Checkpointer(tmp_path, async_save=async_save, lock=True)
    _save(c, 1)
    c.wait()

    async def full_disk(self, x, directory):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(directory / "metadata"))

    monkeypatch.setattr(jh.JsonCheckpointHandler, "_save_fn", full_disk)
    with pytest.raises(ckpt.CheckpointWriteError) as err:
        _save(c, 2)
        c.wait()
    msg = str(err.value)
    assert "\n" not in msg and "could not write checkpoint 2" in msg and "No space left on device (ENOSPC)" in msg
    assert "2.orbax-checkpoint-tmp/" in msg and "Intact checkpoints: [1]" in msg
    c.close()  # the failure is not raised a second time
    monkeypatch.undo()
    left = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert left == ["1"], left  # no temporary folder
    got = ckpt.Checkpointer(tmp_path, async_save=False).restore(None, _targets())
    np.testing.assert_array_equal(got["params"]["b"], _state(1)["b"])
    assert not (tmp_path / workdir_lock.LOCK_NAME).exists()


FULL_DISK = r"""
import os, sys, numpy as np
sys.path.insert(0, sys.argv[2])
from test_checkpoint_faults import _save, _state
from sid2video import checkpoint as ckpt
wd = sys.argv[1]
c = ckpt.Checkpointer(wd, async_save=True, lock=True)
_save(c, 1); c.wait()
st = os.statvfs(wd)
with open(os.path.join(wd, "filler"), "wb") as f:
    f.write(b"\0" * (st.f_bavail * st.f_frsize - 20000))
big = {"w": np.ones((256, 1024), np.float32), "b": np.zeros(8, np.float32)}
try:
    c.save(2, params=big, ema=big, opt={"step": np.int32(2), "mu": big}, data={}, meta={}, force=True)
    c.wait()
except ckpt.CheckpointWriteError as e:
    print("ERROR:", e, flush=True)
c.close()
print("LEFT:", sorted(os.listdir(os.path.join(wd, "checkpoints"))), flush=True)
"""


def test_a_really_full_disk_during_an_async_save(tmp_path):
    """A 2 MB tmpfs (in a user and mount namespace, where the machine allows one) fills up."""
    if subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode != 0:
        pytest.skip("no unprivileged mount namespace here")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    (tmp_path / "script.py").write_text(FULL_DISK)
    cmd = (f"mount -t tmpfs -o size=2m tmpfs {mnt} && {sys.executable} {tmp_path / 'script.py'} "
           f"{mnt / 'run'} {pathlib.Path(__file__).parent}")
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", cmd], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT)))
    out = proc.stdout
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "ERROR: could not write checkpoint 2" in out and "No space left on device (ENOSPC)" in out, out
    assert "LEFT: ['1']" in out, out
    assert proc.stderr.count("Traceback") == 0, proc.stderr[-3000:]
