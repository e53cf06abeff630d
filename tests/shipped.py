"""Helpers for the shipped-config and README tests: the configs and variants in configs/, shrinking
one the way a user would on the command line, the README's commands, tiny generated datasets, and
running `sid2video` commands on several CPU devices."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
README = ROOT / "README.md"
WORKER = ROOT / "tests" / "cli_worker.py"
# Compiled programs shared by every shipped-config subprocess of a test session (and of later runs
# on the same checkout): a resumed run or a second sampler call loads them instead of compiling.
JAX_CACHE = ROOT / ".jax_cache" / "cli"

# `make test` runs the whole chain for these variants (the largest image config; the Kinetics600
# structure runs the same chain as two processes); `make test-shipped` (SID2VIDEO_SHIPPED_FULL=1) for every variant, with plain data
# parallelism as well. Each variant costs one to two minutes of compiling on 2 CPU cores.
CI_VARIANTS = {("imagenet512", "flop_heavy")}


def full_matrix() -> bool:
    return os.environ.get("SID2VIDEO_SHIPPED_FULL", "") not in ("", "0")


def config_files() -> list[pathlib.Path]:
    """Every config file in configs/ (a module with get_config)."""
    return sorted(p for p in CONFIGS.glob("*.py") if "def get_config" in p.read_text())


def variants() -> list[tuple[str, str]]:
    """(file stem, variant) for every config file and every variant it declares in VARIANTS."""
    out = []
    for path in config_files():
        spec = importlib.util.spec_from_file_location(f"shipped_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        names = getattr(module, "VARIANTS", None)
        if not names:
            raise AssertionError(f"{path} declares no VARIANTS tuple")
        out += [(path.stem, v) for v in names]
    return out


def readme_commands() -> list[str]:
    """The `sid2video ...` and `make ...` lines of the README's bash blocks, continuations joined
    and comments dropped."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), re.S):
        text = block.replace("\\\n", " ")
        for line in text.splitlines():
            line = line.split(" #", 1)[0].strip()
            if line.startswith(("sid2video ", "make ")):
                out.append(" ".join(line.split()))
    return out


def shrink_flags(config) -> list[str]:
    """`--config.*` overrides that shrink widths and resolution only.

    The resolution drops by a factor f (at most 8) that keeps every level of the U-ViT (its
    innermost map at least 2×2) and frames of at least 16² (SSIM's window); the dropout level
    follows it. Channels become 8 per ResBlock
    level and 2 per head (at least 16) per transformer level; the embedding 16. Levels, block types
    and counts, patching, scan, remat, dropout rate, dtype, conv and attention kinds, schedule,
    loss, sampler and guidance settings stay as shipped.
    """
    m = config.model
    levels = len(m.channels)
    res = int(config.data.resolution)
    smallest = m.patch_size * 2 ** (levels - 1)
    f = 1
    while f < 8 and res // (2 * f) >= max(16, 2 * smallest) and res % (2 * f * smallest) == 0:
        f *= 2
    widths = tuple(max(16, 2 * m.num_heads) if kind == "transformer" else 8 for kind in m.block_types)
    flags = [f"--config.data.resolution={res // f}",
             f"--config.model.channels={widths}".replace(" ", ""),
             "--config.model.emb_channels=16"]
    if m.dropout_from_resolution:
        flags.append(f"--config.model.dropout_from_resolution={m.dropout_from_resolution // f}")
    return flags


def write_data(root: pathlib.Path) -> dict[str, pathlib.Path]:
    """Tiny datasets: moving digits (16 frames of 16², Kinetics layout) and digit images (16²)."""
    from sid2video.data import synthetic

    video, images = root / "video", root / "images"
    synthetic.write_moving_digits(video, counts={"train": 8, "val": 4, "test": 4}, progress=False,
                                  height=16, width=16, digit_size=8)
    synthetic.write_digit_images(images, counts={"train": 8, "val": 4, "validation": 4}, size=16,
                                 progress=False)
    return {"video": video, "images": images}


def write_random_inception(path: pathlib.Path) -> pathlib.Path:
    """The FID Inception with random weights as a converted .npz (FID's real weights are a download
    the tests cannot make); `--fid_weights` reads it like the converted real file."""
    import jax
    import numpy as np

    from evaluation import inception
    from evaluation import weight_cache

    arrays = {}

    def put(p, leaf):
        arrays[".".join(inception._path_parts(p))] = np.asarray(leaf)
        return leaf

    jax.tree_util.tree_map_with_path(put, inception.random(0).params.host)
    return weight_cache.save_npz(path, arrays)


def env(devices: int = 2, **extra) -> dict[str, str]:
    """The environment of a CLI subprocess: `devices` CPU devices, LLVM optimisations off (about a
    third of the compile time on tiny models), the shared compilation cache."""
    e = dict(os.environ)
    e.update(JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} --xla_backend_optimization_level=0",
             SID2VIDEO_TEST_JAX_CACHE=str(JAX_CACHE), PYTHONPATH=str(ROOT))
    e.update(extra)
    return e


def run_commands(commands: list[list[str]], tmp_path: pathlib.Path, *, devices: int = 2,
                 timeout: float = 900, expect_errors: bool = False,
                 env_extra: dict[str, str] | None = None) -> list[dict]:
    """Run `sid2video` commands in one subprocess with `devices` CPU devices; returns one report per
    command (argv, rc, seconds, message). A failing command fails the test with the output, unless
    `expect_errors` (then every command runs and the caller checks each report; the subprocess's
    stderr is in each report as 'stderr')."""
    JAX_CACHE.mkdir(parents=True, exist_ok=True)
    path = tmp_path / f"commands_{len(list(tmp_path.glob('commands_*.json')))}.json"
    path.write_text(json.dumps(commands))
    extra = dict(env_extra or {}, **({"CLI_WORKER_KEEP_GOING": "1"} if expect_errors else {}))
    proc = subprocess.run([sys.executable, str(WORKER), str(path)], cwd=ROOT, env=env(devices, **extra),
                          capture_output=True, text=True, timeout=timeout)
    reports = [json.loads(line.split(" ", 1)[1]) for line in proc.stdout.splitlines()
               if line.startswith("CLI_WORKER ")]
    if expect_errors:
        for r in reports:
            r["stderr"] = proc.stderr
        return reports
    if proc.returncode or len(reports) != len(commands):
        raise AssertionError(f"command {len(reports)} of {len(commands)} failed "
                             f"({reports[-1]['argv'] if reports else commands[0]}):\n"
                             f"{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")
    return reports


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_together(argvs: list[list[str]], *, env: dict[str, str], timeout: float) -> list[tuple[int, str, str]]:
    """Start every argv at once (the processes of one multi-process run) and wait for all; returns
    (exit code, stdout, stderr) per process. Output goes to files, not pipes: reading one process's
    pipe while another fills its own would stall that one inside a collective, and with it the
    first."""
    with tempfile.TemporaryDirectory() as tmp:
        procs, logs = [], []
        for i, argv in enumerate(argvs):
            logs.append((pathlib.Path(tmp) / f"{i}.out", pathlib.Path(tmp) / f"{i}.err"))
            with open(logs[-1][0], "w") as out, open(logs[-1][1], "w") as err:
                procs.append(subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=err, text=True))
        deadline = time.monotonic() + timeout
        try:
            for proc in procs:
                proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        finally:
            for proc in procs:
                proc.kill()
        return [(proc.returncode, out.read_text(), err.read_text()) for proc, (out, err) in zip(procs, logs)]


def run_process_group(per_process: list[list[list[str]]], tmp_path: pathlib.Path, *,
                      timeout: float = 900) -> list[list[dict]]:
    """Start one CLI worker per entry of `per_process` (its commands), one CPU device each, and wait
    for all; a failing process fails the test with its output."""
    JAX_CACHE.mkdir(parents=True, exist_ok=True)
    paths = []
    for pid, commands in enumerate(per_process):
        paths.append(tmp_path / f"process_{pid}.json")
        paths[-1].write_text(json.dumps(commands))
    done = run_together([[sys.executable, str(WORKER), str(path)] for path in paths], env=env(1), timeout=timeout)
    reports = []
    for pid, (rc, out, err) in enumerate(done):
        got = [json.loads(line.split(" ", 1)[1]) for line in out.splitlines() if line.startswith("CLI_WORKER ")]
        if rc or len(got) != len(per_process[pid]):
            raise AssertionError(f"process {pid}: command {len(got)} of {len(per_process[pid])} failed:\n"
                                 f"{out[-3000:]}\n{err[-6000:]}")
        reports.append(got)
    return reports


def finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)
