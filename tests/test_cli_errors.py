"""Every command turns expected user errors into one line on stderr and a non-zero exit status;
SIGINT / SIGTERM during start-up end the process with one line and 130 / 143."""

import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from sid2video import checkpoint as ckpt
from sid2video import cli, workdir_lock
from sid2video.data import files, synthetic

ROOT = pathlib.Path(__file__).resolve().parents[1]
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d [\d:,]+ sid2video\.[\w.]+ INFO ")
# configs/demo.py:video shrunk: 16 frames of 16², batch 2, no cache.
SMALL = ["--config", str(ROOT / "configs" / "demo.py") + ":video", "--config.train.batch_size=2",
         "--config.data.cache_mb=0", "--config.data.progress=false"]


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    """data: a finished dataset; partial: one whose writer did not finish; run: a workdir with
    checkpoints 1 and 2 (2 damaged); missing: nothing."""
    root = tmp_path_factory.mktemp("cli")
    data = root / "data"
    synthetic.write_moving_digits(data, counts={"train": 2, "val": 2}, num_frames=16, height=16, width=16,
                                  digit_size=8, progress=False)
    partial = root / "partial"
    shutil.copytree(data, partial)
    files.begin(partial, "sid2video prepare moving_digits --out partial")
    run = root / "run"
    c = ckpt.Checkpointer(run, async_save=False)
    for step in (1, 2):
        s = {"w": np.full((2, 2), float(step), np.float32)}
        c.save(step, params=s, ema=s, opt={"mu": s}, data={"i": step},
               meta={"fingerprint": "f", "model_config": {}}, force=True)
    c.close()
    shutil.rmtree(run / "checkpoints" / "2" / "meta")
    shutil.copytree(run, root / "run2")   # for the trainer, which sets damaged ones aside
    shutil.rmtree(root / "run2" / "checkpoints" / "1" / "meta")
    return {"data": data, "partial": partial, "run": run, "missing": root / "missing", "root": root}


def _error_lines(err: str) -> list[str]:
    """The non-empty lines of stderr but the INFO log lines of a command that got under way."""
    return [line for line in err.splitlines() if line.strip() and not LOG_LINE.match(line)]


def _call(argv, capsys):
    """`sid2video ARGV` in this process, as the console script would end: (exit status, stderr)."""
    try:
        rc = cli.main(argv)
    except SystemExit as err:  # the interpreter prints a message and exits 1
        rc = err.code if isinstance(err.code, int) else 1
        if isinstance(err.code, str):
            print(err.code, file=sys.stderr)
    return rc, capsys.readouterr().err


def _train(paths, *more, workdir="w"):
    return ["train", *SMALL, f"--config.data.data_dir={paths['data']}", "--workdir",
            str(paths["root"] / workdir), "--train_steps", "1", *more]


# (name, argv builder, fragment of the one line, exit status)
CASES = [
    # train: the full config check, and the step counts, before anything is touched
    ("unknown sampler", lambda p: _train(p, "--config.sampler.method=foo"), "config.sampler", 1),
    ("reversed guidance interval", lambda p: _train(
        p, "--config.loss.cond_drop_rate=0.1", "--config.sampler.guidance=1.0",
        "--config.sampler.guidance_interval=(2.0,-2.0)"), "needs lo < hi", 1),
    ("zero sampler steps", lambda p: _train(p, "--config.sampler.num_steps=0"), "num_steps", 1),
    ("guidance without dropout", lambda p: _train(p, "--config.sampler.guidance=1.0"),
     "config.sampler.guidance=1.0 is invalid", 1),
    ("negative train steps", lambda p: _train(p, "--train_steps", "-5"), "-5 is not a positive integer", 1),
    ("zero train steps", lambda p: _train(p, "--train_steps", "0"), "0 is not a positive integer", 1),
    ("zero config steps", lambda p: _train(p, "--config.train.num_steps=0"),
     "config.train.num_steps=0 is invalid", 1),
    ("unknown variant", lambda p: ["train", "--config", "configs/demo.py:nope", "--workdir", "w"],
     "has no variant 'nope'", 1),
    ("missing config file", lambda p: ["train", "--config", "configs/nope.py:x", "--workdir", "w"],
     "no config file configs/nope.py", 1),
    ("info: unknown variant", lambda p: ["info", "--config", "demo:nope"], "has no variant 'nope'", 1),
    ("info: invalid config", lambda p: ["info", *SMALL, "--config.model.attention=axial"],
     "attention='axial'", 1),
    # train: data and workdir
    ("train: missing data folder", lambda p: _train(p, f"--config.data.data_dir={p['missing']}"),
     "no folder", 2),
    ("train: unfinished dataset", lambda p: _train(p, f"--config.data.data_dir={p['partial']}"),
     "sid2video prepare moving_digits", 1),
    ("train: only checkpoint damaged", lambda p: _train(p, workdir="run2"), "cannot be restored", 1),
    # sample
    ("sample: no such step", lambda p: ["sample", "--workdir", str(p["run"]), "--checkpoint", "999"],
     "no checkpoint for step 999", 1),
    ("sample: no such run", lambda p: ["sample", "--workdir", str(p["missing"])], "train first", 1),
    ("sample: --num 0", lambda p: ["sample", "--workdir", str(p["run"]), "--num", "0"],
     "--num 0 must be a positive multiple", 1),
    ("sample: damaged checkpoint", lambda p: ["sample", "--workdir", str(p["run"]), "--checkpoint", "2"],
     "checkpoint 2", 1),
    # evaluate
    ("evaluate: no such run", lambda p: ["evaluate", "--workdir", str(p["missing"])], "no checkpoints in", 2),
    ("evaluate: no such samples", lambda p: ["evaluate", "--samples", str(p["missing"] / "x.npz"),
                                             "--dataset", "moving_digits", "--data_dir", str(p["data"])],
     "x.npz", 2),
    # render
    ("render: no samples", lambda p: ["render", "--workdir", str(p["missing"])], "no samples file", 2),
    ("render: no npz", lambda p: ["render", "--npz", str(p["missing"] / "s.npz")], "no samples file", 2),
    # prepare
    ("prepare: missing source", lambda p: ["prepare", "kinetics600", "--src", str(p["missing"]),
                                           "--out", str(p["root"] / "out")], "no train/val/test folders", 2),
    ("prepare index: missing source", lambda p: ["prepare", "index", "--src", str(p["missing"])],
     "no train/val/validation/test folders", 2),
    # demo: a bad override stops before the dataset is written
    ("demo: unknown config key", lambda p: ["demo", "--workdir", str(p["root"] / "demo"), "--config.nope=1"],
     "--config.nope names no config key", 1),
    ("demo: invalid config", lambda p: ["demo", "--workdir", str(p["root"] / "demo"),
                                        "--config.sampler.num_steps=0"], "invalid config", 1),
]


@pytest.mark.parametrize("name,argv,fragment,status", CASES, ids=[c[0] for c in CASES])
def test_user_errors_are_one_line(paths, capsys, name, argv, fragment, status):
    rc, err = _call(argv(paths), capsys)
    lines = _error_lines(err)
    assert rc == status, err
    command = argv(paths)[0]
    assert len(lines) == 1 and lines[0].startswith(f"sid2video {command}: ") and fragment in lines[0], err
    # Refused at start-up: no workdir made, no step-0 checkpoint; nothing of the demo written.
    assert not (paths["root"] / "w" / "checkpoints").exists()
    assert not (paths["root"] / "demo" / "data").exists()


def test_a_locked_workdir_is_one_line(paths, capsys):
    lock = workdir_lock.WorkdirLock(paths["root"] / "locked")
    try:
        rc, err = _call(_train(paths, workdir="locked"), capsys)
    finally:
        lock.release()
    lines = _error_lines(err)
    assert rc == 1 and len(lines) == 1 and lines[0].startswith("sid2video train: "), err
    assert str(os.getpid()) in err                                         # names the holder
    assert not (paths["root"] / "locked" / "checkpoints").exists()
    # --debug: the error itself, with its traceback, instead of the line; the variable is unset again.
    lock = workdir_lock.WorkdirLock(paths["root"] / "locked")
    try:
        with pytest.raises(ValueError, match=str(os.getpid())):
            cli.main(["--debug", *_train(paths, workdir="locked")])
    finally:
        lock.release()
    assert "SID2VIDEO_DEBUG" not in os.environ


def test_expected_errors_reach_cli_main_as_one_line_or_as_a_traceback_with_debug(capsys, monkeypatch, tmp_path):
    """The family cli.main reports itself (FileNotFoundError, UserError): one line, exit status 2;
    with --debug or SID2VIDEO_DEBUG=1 the exception itself; any other exception is a bug and
    passes through."""
    from sid2video import errors

    raised = {}
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)

    class Module:
        @staticmethod
        def run(argv):
            raise raised["error"]

    monkeypatch.setitem(sys.modules, "fake_command", Module)
    monkeypatch.setitem(cli.SUBCOMMANDS, "fake", ("fake_command", ""))

    class Locked(errors.UserError, ValueError):
        pass

    for error, line in ((Locked("the workdir w is held by pid 1\n on host h"),
                         "sid2video fake: the workdir w is held by pid 1 on host h"),
                        (FileNotFoundError(2, "No such file or directory", "/x/y"),
                         "sid2video fake: /x/y: no such file or directory")):
        raised["error"] = error
        assert cli.main(["fake"]) == 2
        assert capsys.readouterr().err == line + "\n"
        with pytest.raises(type(error)):
            cli.main(["--debug", "fake"])
        monkeypatch.setenv("SID2VIDEO_DEBUG", "1")
        with pytest.raises(type(error)):
            cli.main(["fake"])
        monkeypatch.delenv("SID2VIDEO_DEBUG")
    for bug in (ValueError("a bug"), KeyError("k"), TypeError("t")):
        raised["error"] = bug
        with pytest.raises(type(bug)):
            cli.main(["fake"])
    # The handlers cli.main installed for the command are gone again.
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


CHILD = """
import signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)   # as in a terminal, whoever started us
from sid2video import cli
print("READY", flush=True)
sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.mark.parametrize("sig,status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_during_start_up_is_one_line_and_128_plus_the_signal(paths, sig, status):
    """The signal lands while `train` imports JAX and builds the model (before the trainer's own
    handler, which saves and exits 0): one line, exit status 128 + signal, no traceback, no crash."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    env.pop("SID2VIDEO_DEBUG", None)
    workdir = paths["root"] / f"signal_{sig.name}"
    proc = subprocess.Popen([sys.executable, "-c", CHILD, *_train(paths, workdir=workdir.name)], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "READY"
    time.sleep(1.0)   # into the imports of the train command (several seconds)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == status, err     # exited (a death by the signal would be -sig)
    assert "Traceback" not in err and f"sid2video train: interrupted by {sig.name}" in err, err
    assert not (workdir / "checkpoints").exists()


def test_every_command_logs_the_same_way():
    """flags.configure_logging, which every command calls: sid2video's and evaluation's INFO lines
    and everyone's warnings reach stderr, other libraries' INFO does not; a handler installed
    before (importing orbax installs one) is replaced, not kept beside it; info=False (the demo)
    keeps only warnings."""
    import io
    import logging

    from sid2video import flags

    root = logging.getLogger()
    saved = root.handlers[:], root.level, {n: logging.getLogger(n).level for n in ("sid2video", "evaluation")}
    try:
        stale = logging.StreamHandler(io.StringIO())
        root.addHandler(stale)
        for info in (True, False):
            flags.configure_logging(info=info)
            assert stale not in root.handlers and len(root.handlers) == 1
            stream = io.StringIO()
            root.handlers[0].setStream(stream)
            logging.getLogger("sid2video.train").info("resumed")
            logging.getLogger("evaluation.harness").info("evaluated")
            logging.getLogger("absl").info("orbax chatter")
            logging.getLogger("jax").warning("a warning")
            text = stream.getvalue()
            assert ("resumed" in text, "evaluated" in text) == (info, info), text
            assert "orbax chatter" not in text and "a warning" in text
            assert " sid2video.train INFO resumed" in text or not info
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        for name, level in saved[2].items():
            logging.getLogger(name).setLevel(level)
