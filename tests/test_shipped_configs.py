"""Every shipped config, as its users run it: the real structure at shrunk width, through the CLI,
on 2 CPU devices.

For each config file and variant in configs/ (enumerated from the files' VARIANTS), with widths
and resolution shrunk by `--config` overrides only: train with FSDP over both devices and gradient
accumulation, lose the newest checkpoint, resume, and compare with the uninterrupted run; sample
with the config's own sampler (method, guidance and its logSNR interval; fewer steps) and evaluate
(FVD with I3D for video, FID's Fréchet distance for images) with the FSDP-sharded model; train with
plain data parallelism. `make test` runs this for kinetics600:small and imagenet512:flop_heavy,
`make test-shipped` (SID2VIDEO_SHIPPED_FULL=1) for every variant.
"""

from __future__ import annotations

import json
import shlex

import jax
import numpy as np
import pytest
from flax import nnx

import shipped
from sid2video import checkpoint, config as config_lib


# Sampling keeps the config's method, guidance weight and interval, variance and clipping; only the
# number of steps is cut (as `--sampler_steps` lets a user), so 512-step DDPM stays cheap on a CPU.
SAMPLER_STEPS = 8


def _plain(section) -> dict:
    return {k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in section.to_dict().items()}


@pytest.fixture(scope="session")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("shipped_data")
    out = shipped.write_data(root)
    out["fid_weights"] = shipped.write_random_inception(root / "inception_random.npz")
    return out


def test_every_config_file_declares_its_variants():
    found = shipped.variants()
    assert ("kinetics600", "small") in found and ("imagenet512", "flop_heavy") in found
    for name, variant in found:
        config = config_lib.load(f"{shipped.CONFIGS / name}.py:{variant}")
        assert "model" in config and "train" in config


def _assert_resumed_equals_whole(tmp_path):
    """The resumed run's step 2 (tmp_path/run) equals the uninterrupted one's (tmp_path/whole), bit
    for bit, parameters and EMA; returns the run's config."""
    for ema in (False, True):
        resumed, run_config, step = checkpoint.load_model(tmp_path / "run", ema=ema)
        whole, _, _ = checkpoint.load_model(tmp_path / "whole", ema=ema)
        assert step == 2
        pairs = zip(jax.tree.leaves(nnx.state(resumed, nnx.Param)), jax.tree.leaves(nnx.state(whole, nnx.Param)))
        for x, y in pairs:
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    return run_config


def _commands(name, variant, config, data, tmp_path, *, data_parallel: bool):
    video = config.data.num_frames > 1
    spec = ["--config", f"configs/{name}.py:{variant}", *shipped.shrink_flags(config),
            f"--config.data.data_dir={data['video' if video else 'images']}",
            "--config.train.batch_size=4", "--config.train.checkpoint_every=1", "--config.train.log_every=1"]
    fsdp = ["--config.train.fsdp=2", "--config.train.grad_accum_steps=2", "--config.train.fsdp_min_params=64"]
    run = str(tmp_path / "run")
    evaluate = ["evaluate", "--workdir", run, "--num_samples", "2", "--batch_size", "2", "--no_progress",
                "--sampler_steps", str(SAMPLER_STEPS)]
    if video:
        evaluate += ["--metric", "fvd", "--no_baseline_fvd"]
    else:
        evaluate += ["--metric", "fid", "--fid_weights", str(data["fid_weights"])]
    commands = [
        # FSDP over both devices (the batch split over both as well) with gradient accumulation, 2
        # steps; the step-2 checkpoint is then taken away (a preempted run) and the run resumes
        # from step 1. Its model samples and is evaluated FSDP-sharded.
        ["train", *spec, *fsdp, "--workdir", run, "--train_steps", "2"],
        ["@move", f"{run}/checkpoints/2", str(tmp_path / "whole" / "checkpoints" / "2")],
        ["train", *spec, *fsdp, "--workdir", run, "--train_steps", "2"],
        ["sample", "--workdir", run, "--num", "2", "--sampler_steps", str(SAMPLER_STEPS)],
        evaluate,
    ]
    if data_parallel:  # replicated parameters, the batch over both devices
        commands.append(["train", *spec, "--workdir", str(tmp_path / "dp"), "--train_steps", "1"])
    return commands


# Each variant is its own xdist group, so the variants spread over the test workers.
@pytest.mark.parametrize("name,variant", [
    pytest.param(n, v, marks=pytest.mark.xdist_group(f"shipped-{n}-{v}")) for n, v in shipped.variants()])
def test_shipped_config_trains_resumes_samples_and_evaluates(name, variant, data, tmp_path):
    if not (shipped.full_matrix() or (name, variant) in shipped.CI_VARIANTS):
        pytest.skip("in the full matrix: make test-shipped (SID2VIDEO_SHIPPED_FULL=1)")
    config = config_lib.load(f"{shipped.CONFIGS / name}.py:{variant}")
    # Plain data parallelism compiles one more train step per variant: the full matrix runs it
    # (the two-process test trains the Kinetics600 structure data parallel in the suite).
    data_parallel = shipped.full_matrix()
    commands = _commands(name, variant, config, data, tmp_path, data_parallel=data_parallel)
    reports = shipped.run_commands(commands, tmp_path)
    print([(r["argv"][0], r["seconds"]) for r in reports])

    # Resumed at step 1 = uninterrupted, bit for bit (parameters, EMA).
    run_config = _assert_resumed_equals_whole(tmp_path)
    # The run kept the shipped structure (only widths and resolution changed).
    for key in ("block_types", "encoder_blocks", "decoder_blocks", "patch_size", "scan_blocks", "remat",
                "dropout", "dtype", "conv", "attention", "num_heads"):
        assert run_config.model[key] == config.model[key] or tuple(run_config.model[key]) == tuple(config.model[key])
    assert _plain(run_config.sampler) == _plain(config.sampler)

    # Trained with finite losses (steps 1, 2, and 2 again after the resume).
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 2] and all(shipped.finite(r["loss"]) for r in rows)
    assert rows[1]["loss"] == rows[2]["loss"]
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (saved["train"]["fsdp"], saved["train"]["grad_accum_steps"]) == (2, 2)
    if data_parallel:
        rows = [json.loads(line) for line in (tmp_path / "dp" / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows] == [1] and shipped.finite(rows[0]["loss"])

    # Samples with the config's own sampler settings; given frames come back bit for bit.
    out = np.load(tmp_path / "run" / "samples" / "step_2.npz")
    settings = json.loads((tmp_path / "run" / "samples" / "step_2.json").read_text())
    assert settings["num_steps"] == SAMPLER_STEPS
    for key in ("method", "guidance", "logvar_interp", "clip"):
        assert settings[key] == config.sampler[key]
    interval = config.sampler.guidance_interval
    assert (settings["guidance_interval"] is None) == (interval is None)
    if interval is not None:
        assert tuple(settings["guidance_interval"]) == tuple(interval)
    res = config.data.resolution
    sample, truth = out["sample"], out["truth"]
    assert sample.dtype == np.uint8 and sample.shape == truth.shape
    shrunk = int(next(f for f in shipped.shrink_flags(config) if "data.resolution" in f).split("=")[1])
    assert sample.shape[:3] == (2, config.data.num_frames, shrunk) and shrunk <= res
    k = int(out["num_cond"])
    assert k == config.data.num_cond_frames
    np.testing.assert_array_equal(sample[:, :k], truth[:, :k])
    assert sample[:, k:].std() > 0

    # Evaluation of the FSDP-trained run on the same 2 devices.
    result = json.loads((tmp_path / "run" / "eval" / "result.json").read_text())
    entry = result["checkpoints"][0]
    metric = "fvd" if config.data.num_frames > 1 else "fid"
    assert entry["step"] == 2 and shipped.finite(entry[metric]) and entry[metric] > 0
    if k:
        assert shipped.finite(entry["psnr"]) and shipped.finite(entry["ssim"])


def _readme_two_process_train(spec: list[str], port: int, pid: int) -> list[str]:
    """The README's multi-process train command as printed, for process `pid`: `...` is `spec`,
    the coordinator is on `port`."""
    command = next(c for c in shipped.readme_commands() if "--num_processes=2" in c)
    argv = shlex.split(command.replace("127.0.0.1:1234", f"127.0.0.1:{port}"))[1:]
    assert argv[0] == "train" and "--process_id=0" in argv and "..." in argv, command
    i = argv.index("...")
    argv[i:i + 1] = spec
    return [a.replace("--process_id=0", f"--process_id={pid}") for a in argv]


@pytest.mark.xdist_group("shipped-two-processes")
def test_kinetics600_structure_on_two_processes(data, tmp_path):
    """The Kinetics600 structure as one run of two processes (jax.distributed over gloo on
    127.0.0.1, one CPU device each, each reading its share of the data): train data parallel with
    gradient accumulation through the README's multi-process command, then sample and evaluate
    with the README's flags. (A two-process resume is test_train.py's
    test_two_processes_train_like_one; a shipped config's resume, the chain above. Here it would
    cost a second compile: only process 0 reads JAX's persistent compilation cache.)"""
    config = config_lib.load(f"{shipped.CONFIGS}/kinetics600.py:small")
    run = str(tmp_path / "run")
    spec = ["--config", "configs/kinetics600.py:small", *shipped.shrink_flags(config),
            f"--config.data.data_dir={data['video']}", "--config.train.batch_size=4",
            "--config.train.checkpoint_every=1", "--config.train.log_every=1",
            "--config.train.grad_accum_steps=2", "--workdir", run, "--train_steps", "2"]
    port = shipped.free_port()
    join = ["--coordinator_address", f"127.0.0.1:{port}", "--num_processes", "2"]
    per_process = [[
        _readme_two_process_train(spec, port, pid),
        # README: sample --num 64 --method addim --sampler_steps 128; evaluate --metric fvd
        # --num_samples 50000 --protocol kinetics600 (counts cut to the tiny data).
        ["sample", "--workdir", run, "--num", "2", "--method", "addim", "--sampler_steps", str(SAMPLER_STEPS),
         *join, "--process_id", str(pid)],
        ["evaluate", "--workdir", run, "--metric", "fvd", "--num_samples", "2", "--protocol", "kinetics600",
         "--batch_size", "1", "--no_progress", "--sampler_steps", str(SAMPLER_STEPS), "--no_baseline_fvd",
         *join, "--process_id", str(pid)],
    ] for pid in range(2)]
    shipped.run_process_group(per_process, tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all(shipped.finite(r["loss"]) for r in rows)
    out = np.load(tmp_path / "run" / "samples" / "step_2.npz")
    sample, truth = out["sample"], out["truth"]
    assert sample.shape == truth.shape == (2, 16, 16, 16, 3)
    assert len({truth[i].tobytes() for i in range(2)}) == 2  # each process sampled its own clip
    np.testing.assert_array_equal(sample[:, :5], truth[:, :5])
    result = json.loads((tmp_path / "run" / "eval" / "result.json").read_text())
    entry = result["checkpoints"][0]
    assert (result["protocol"]["processes"], result["protocol"]["devices"]) == (2, 2)
    assert result["protocol"]["split"] == "test"
    assert entry["step"] == 2 and entry["num_samples"] == 2 and shipped.finite(entry["fvd"])


@pytest.mark.xdist_group("shipped-bad-input")
def test_bad_input_on_two_devices_is_one_clear_line(tmp_path):
    """What a user gets wrong on a paper config: each is refused at start-up with a message naming
    the key and the fix, never a traceback."""
    base = ["train", "--workdir", str(tmp_path / "run"), "--config", "configs/kinetics600.py:small"]
    cases = [
        (base + ["--config.train.nokey=1"], ["--config.train.nokey", "names no config key"]),
        (base + ["--config.train.batch_size=3"], ["batch_size=3", "divisible by the number of devices (2)"]),
        (base + ["--config.train.fsdp=4"], ["config.train.fsdp=4", "must divide the number of devices (2)"]),
        (base + ["--config.train.fsdp=abc"], ["--config.train.fsdp=abc"]),
        (base + ["--config.train.grad_accum_steps=3"], ["grad_accum_steps=3", "must divide"]),
        (["train", "--workdir", str(tmp_path / "run"), "--config", "configs/kinetics600.py:huge"],
         ["no variant 'huge'", "small"]),
        (["train", "--workdir", str(tmp_path / "run"), "--config", "configs/k600.py:small"],
         ["no config file configs/k600.py", "configs/kinetics600.py"]),
        (["sample", "--workdir", str(tmp_path / "missing")], ["missing"]),
    ]
    reports = shipped.run_commands([argv for argv, _ in cases], tmp_path, expect_errors=True)
    assert len(reports) == len(cases)
    for (argv, expected), report in zip(cases, reports):
        assert report["rc"] not in (0, None), argv
        message = report["message"] or ""
        for text in expected:
            assert text in message, (argv, message)
        assert "Traceback" not in message and len(message.strip().splitlines()) <= 2, message
    assert "Traceback" not in reports[0]["stderr"]


def _shrunk_kinetics600(**overrides):
    config = config_lib.load(f"{shipped.CONFIGS}/kinetics600.py:small")
    items = [tuple(f.removeprefix("--config.").split("=", 1)) for f in shipped.shrink_flags(config)]
    config_lib.override(config, items + [(k, v if isinstance(v, str) else repr(v)) for k, v in overrides.items()])
    return config


# Unoptimised bfloat16 code runs ~10x slower on a CPU and rounds differently from the compiled
# product; this test trains, so it compiles with XLA's optimisations (conftest).
@pytest.mark.xla_optimized
@pytest.mark.xdist_group("shipped-bfloat16")
def test_bfloat16_kinetics600_structure_learns_and_samples_like_float32():
    """The paper configs compute in bfloat16: the K600 structure (scan, remat, dropout, bf16) lowers
    its loss on a tiny batch (by over 10 % in 25 updates), and its bf16 sampler agrees with the float32 one on the same
    parameters and noise: mean |difference| below 2 % of the pixel range, every pixel within 25 %."""
    from sid2video import sample
    from sid2video.trainer import Trainer

    import optax

    config = _shrunk_kinetics600(**{"train.batch_size": 2, "train.warmup_steps": 0,
                                    "train.learning_rate": 3e-3})
    assert config.model.dtype == "bfloat16" and config.model.remat and config.model.scan_blocks
    trainer = Trainer(config)
    state = trainer.init_state()
    t, h, w = np.meshgrid(np.arange(16), np.arange(16), np.arange(16), indexing="ij")
    clip = np.stack([np.sin((h + t) / 2.0), np.cos((w - t) / 3.0), np.sin((h + w) / 4.0)], -1)
    batch = {"video": np.ascontiguousarray(np.broadcast_to(((clip + 1) * 127.5).astype(np.uint8),
                                                           (2, 16, 16, 16, 3)))}
    x = {"video": jax.numpy.asarray(batch["video"])}
    key = jax.random.PRNGKey(9)  # one draw of t, noise and dropout: a loss the network can memorise

    @jax.jit
    def update(params, opt_state):  # the trainer's loss (dropout on) and optimiser
        (loss, _), grads = jax.value_and_grad(trainer.loss_fn, has_aux=True)(params, x, key, 0)
        updates, opt_state = trainer.tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    params, opt_state = state.params, state.opt_state
    losses = []
    for _ in range(25):
        params, opt_state, loss = update(params, opt_state)
        losses.append(float(loss))
    # Measured: 0.0987 -> 0.0793 in 25 updates (float32 moves alike).
    assert all(np.isfinite(losses)) and losses[-1] < 0.9 * losses[0], losses

    videos = {}
    for dtype in ("bfloat16", "float32"):
        cfg = _shrunk_kinetics600(**{"model.dtype": dtype, "sampler.num_steps": SAMPLER_STEPS})
        model = Trainer(cfg).model(params)
        videos[dtype] = sample.Generator(model, cfg)(batch, jax.random.PRNGKey(3)).astype(np.float32) / 255
    diff = np.abs(videos["bfloat16"] - videos["float32"])[:, 5:]
    assert diff.mean() < 0.02 and diff.max() < 0.25, (diff.mean(), diff.max())
    assert videos["float32"][:, 5:].std() > 0.01  # not a constant picture on both sides
