"""Shared test set-up: CPU only, a persistent compilation cache, quick compiles, absl flags
parsed, and the order in which pytest-xdist hands out the test groups."""

import fcntl
import os
import pathlib
import shutil

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The suite's models are tiny, so compiling costs far more than running: XLA's backend (LLVM)
# optimisations are off (about half the compile time; programs run somewhat slower, bfloat16 ones
# much slower). Set here, every subprocess the tests start inherits it. A test marked
# `xla_optimized` compiles with the optimisations on (see pytest_runtest_setup).
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")

import absl.flags  # noqa: E402
import jax  # noqa: E402
import pytest  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]

# grain's worker processes refuse to start unless absl flags have been parsed.
absl.flags.FLAGS.mark_as_parsed()

# Repeated runs of the suite skip recompiling the same functions. Each pytest-xdist worker keeps
# its own cache directory, so workers never contend for one cache's files or locks.
jax.config.update("jax_compilation_cache_dir",
                  str(ROOT / ".jax_cache" / os.environ.get("PYTEST_XDIST_WORKER", "main")))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
QUICK_COMPILE = bool(jax.config.read("jax_disable_most_optimizations"))

# Start JAX's backends now, with the one CPU device the in-process tests expect: a command run
# in-process (`cli.main(["demo", ...])`) would otherwise split the CPU into one device per core
# (devices.split_cpu) for every later test in this process. Tests of several devices start their
# own processes.
jax.devices()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """Before the test's fixtures: XLA's optimisations on for `xla_optimized` tests, else as the
    environment says (off unless JAX_DISABLE_MOST_OPTIMIZATIONS=0). Read at each compile."""
    optimized = item.get_closest_marker("xla_optimized") is not None
    jax.config.update("jax_disable_most_optimizations", QUICK_COMPILE and not optimized)


def _reference_dir() -> pathlib.Path | None:
    """The shared reference data (real clips with known answers), if this checkout has it."""
    candidates = [os.environ.get("SID2VIDEO_REFERENCE"), ROOT.parent / "shared" / "reference"]
    for c in candidates:
        if c and pathlib.Path(c).is_dir():
            return pathlib.Path(c)
    return None


@pytest.fixture(scope="session")
def reference_dir() -> pathlib.Path:
    path = _reference_dir()
    if path is None:
        pytest.skip("reference data not found: set SID2VIDEO_REFERENCE or place shared/ beside the repo")
    return path


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """An uninterrupted 10-step run of tests/train_worker.py's tiny config (checkpoints at 4, 8, 10;
    EMA sample strips at 5 and 10), shared by the trainer, sampling and checkpoint tests (read
    only). Trained once per pytest run: under pytest-xdist in the run's temporary directory, which
    all workers share, by the first worker that needs it while the others wait on a file lock."""
    from sid2video import train
    from train_worker import Batches, tiny_config

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # pytest-N/, above each worker's pytest-N/popen-gwK/
    workdir, done = root / "tiny_run", root / "tiny_run.done"
    with open(root / "tiny_run.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            shutil.rmtree(workdir, ignore_errors=True)
            summary = train.fit(tiny_config(sample_every=5, num_samples=2), workdir, steps=10,
                                data_iterator=Batches(), progress=False)
            assert summary["step"] == 10
            done.touch()
    return workdir


# Seconds of the long test groups (one process of `make test`, 2 CPU cores); unlisted groups take
# well under a minute. Only their order matters (see pytest_collection_modifyitems).
LONG_GROUPS = {
    "tests/test_train.py": 380,
    "tests/test_benchmarks.py": 165,
    "shipped-bfloat16": 145,
    "shipped-imagenet512-flop_heavy": 145,
    "shipped-two-processes": 140,
    "readme": 100,
    "tests/test_sample.py": 70,
    "tests/test_demo.py": 70,
}


def _group(item) -> str:
    mark = item.get_closest_marker("xdist_group")
    return mark.args[0] if mark.args else mark.kwargs.get("name", "default")


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "xla_optimized: compile with XLA's full optimisations (long bfloat16 training, "
                   "large real networks), which the suite otherwise turns off")
    # pytest-xdist hands out groups in collection order only without its default reordering
    # (largest number of tests first), which would leave the long one-test groups to the end.
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Under `pytest -n 2 --dist loadgroup` (make test) a test file's tests stay in one worker, so
    its module fixtures are built once, unless a test names its own xdist group (the shipped-config
    variants, which are long and independent). It runs before pytest-xdist's own hook, which turns
    the marks into the node-id suffix its scheduler groups by.

    In the xdist workers, whose collection order is the order the scheduler hands groups out in,
    the groups of LONG_GROUPS come first, longest first (longest-processing-time-first): each
    worker takes the next group when it is nearly done, so the short groups fill the gaps at the
    end instead of one long group running alone there. The sort is stable: the other groups, and
    the tests inside each group, keep their order."""
    for item in items:
        if item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::")[0]))
    if os.environ.get("PYTEST_XDIST_WORKER"):
        items.sort(key=lambda item: -LONG_GROUPS.get(_group(item), 0))
