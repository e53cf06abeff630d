"""Every command the README shows runs, with the same flags, on tiny data.

The commands are read from the README's bash blocks, so a new one fails here until it has a way to
run. Paths point at generated data, counts shrink (samples, steps, batch) and `...` (what the
README leaves to the user) is the demo's video config, the cheapest to compile; the flags are the
README's. The train commands run on 8 CPU devices (the README's FSDP command splits over 8); the
multi-process one runs in tests/test_shipped_configs.py's two-process Kinetics600 run.
`make demo` and `make test` are the Quickstart, which CI runs.
"""

from __future__ import annotations

import json
import pathlib
import shlex

import pytest

import shipped

QUICKSTART = {"make demo", "make test"}


def _concrete(command: str, *, data: dict, tmp: pathlib.Path, spec: list[str]) -> list[str]:
    """A README command on tiny data: paths to generated data and a temporary run, `...` to the
    shrunk Kinetics600 config, large counts to small ones; every flag kept."""
    subs = {
        "/data/kinetics600": str(data["video"]), "/data/k600_prepared": str(tmp / "k600_prepared"),
        "runs/k600": str(tmp / "runs" / "k600"), "renders/": str(tmp / "renders") + "/",
        "--config.train.batch_size=256": "--config.train.batch_size=8",
        "--num 64": "--num 8", "--sampler_steps 128": "--sampler_steps 8", "--num_samples 50000": "--num_samples 2",
    }
    for old, new in subs.items():
        command = command.replace(old, new)
    argv = shlex.split(command)[1:]
    if "..." in argv:
        i = argv.index("...")
        argv[i:i + 1] = spec
    return argv


def test_every_readme_command_is_covered():
    commands = shipped.readme_commands()
    assert "sid2video info --config configs/kinetics600.py:small" in commands
    unknown = [c for c in commands if c not in QUICKSTART and c not in PLAN]
    assert not unknown, f"README commands without a test: {unknown}"


# How each README command runs here: its place in one 8-device session ('session'), or covered by
# another test (the reason).
PLAN = {
    "sid2video demo --workdir DIR": "tests/test_demo.py runs the demo end to end",
    "sid2video prepare kinetics600 --src /data/kinetics600 --out /data/k600_prepared --split train": "session",
    "sid2video prepare index --src /data/kinetics600 --split train": "session",
    "sid2video info --config configs/kinetics600.py:small": "session",
    "sid2video train --config configs/imagenet512.py:flop_heavy --config.train.batch_size=256 ...":
        "tests/test_shipped_configs.py trains imagenet512:flop_heavy through this CLI",
    "sid2video train --config configs/kinetics600.py:small --workdir runs/k600 "
    "--config.data.data_dir=/data/kinetics600":
        "tests/test_shipped_configs.py trains kinetics600:small with these flags at shrunk width",
    "sid2video train ... --config.train.fsdp=8 --config.train.grad_accum_steps=4": "session",
    "sid2video train ... --distributed": "session",
    "sid2video train ... --coordinator_address=127.0.0.1:1234 --num_processes=2 --process_id=0":
        "tests/test_shipped_configs.py trains the Kinetics600 structure (for `...`) with it as two processes",
    "sid2video sample --workdir runs/k600 --num 64 --method addim --sampler_steps 128": "session",
    "sid2video evaluate --workdir runs/k600 --metric fvd --num_samples 50000 --protocol kinetics600":
        "tests/test_shipped_configs.py evaluates the two-process Kinetics600 run with these flags",
    "sid2video render --workdir runs/k600 --out renders/ --format mp4,gif": "session",
}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return shipped.write_data(tmp_path_factory.mktemp("readme_data"))


def _spec(tmp: pathlib.Path, data: dict, batch: int) -> list[str]:
    """What `...` stands for: a config, its data and the run directory."""
    return ["--config", "configs/demo.py:video", f"--config.data.data_dir={data['video']}",
            f"--config.train.batch_size={batch}", "--config.train.checkpoint_every=1",
            "--config.train.log_every=1",
            "--workdir", str(tmp / "runs" / "k600")]


@pytest.mark.xdist_group("readme")
def test_readme_commands_run_as_printed(data, tmp_path):
    commands = [c for c in shipped.readme_commands() if PLAN.get(c) == "session"]
    spec = _spec(tmp_path, data, batch=32)  # 8 devices × 4 accumulation steps × 1
    argvs = []
    for command in commands:
        argv = _concrete(command, data=data, tmp=tmp_path, spec=spec)
        if argv[0] == "train":  # the first runs 1 step; each next one resumes and adds one
            argv += ["--train_steps", str(1 + sum(a[0] == "train" for a in argvs))]
        argvs.append(argv)
    # `--distributed` asks JAX to find its peers: here a one-task SLURM job on this machine. JAX
    # joins a distributed run before its first computation, so that command starts a new process.
    cut = next(i for i, a in enumerate(argvs) if "--distributed" in a)
    slurm = dict(SLURM_JOB_ID="4242", SLURM_NTASKS="1", SLURM_PROCID="0", SLURM_LOCALID="0",
                 SLURM_STEP_NODELIST="localhost")
    shipped.run_commands(argvs[:cut], tmp_path, devices=8)
    shipped.run_commands(argvs[cut:], tmp_path, devices=8, env_extra=slurm)
    run = tmp_path / "runs" / "k600"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert (tmp_path / "renders").is_dir() and any((tmp_path / "renders").rglob("*.mp4"))
    assert any((tmp_path / "renders").rglob("*.gif"))
    assert (tmp_path / "k600_prepared").is_dir()
