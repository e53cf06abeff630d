"""Train-step throughput and MFU of a config on the local devices.

    .venv/bin/python benchmarks/train_step.py --config configs/demo.py:video [--train_steps 20] [--batch 16]
        [--config.model.conv=3d --config.KEY=VALUE ...]

Model FLOPs are the analytic ones of sid2video.models.flops (SiD2 B.3: multiply-add = 1 FLOP,
a train step = 3 forward passes), doubled to count multiply and add separately like hardware
peaks do. MFU divides the achieved rate by the device peak: the table in sid2video.runlog for
known accelerators, else (CPUs) the measured rate of a large float32 matmul on the same
devices, which is the best a dense kernel reaches here. Both figures are printed.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import jax
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import throughput  # noqa: E402  (benchmarks/throughput.py, beside this file)


def main() -> None:
    from sid2video import flags

    parser = flags.Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                          renamed=flags.TRAIN_STEPS,
                          epilog="--config PATH.py:VARIANT or a shipped NAME:VARIANT (default demo:video); "
                                 "--config.KEY=VALUE overrides a config key, e.g. --config.model.attention=full")
    parser.add_argument("--train_steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=None, help="global batch (default: the config's)")
    spec, overrides, argv = flags.split_config_args(sys.argv[1:])
    args = parser.parse_args(argv)

    from sid2video.models import flops
    from sid2video.runlog import peak_flops
    from sid2video.trainer import Trainer

    config = flags.load_config("train_step.py", spec or "demo:video", overrides)
    if args.batch:
        config.train.batch_size = args.batch
    trainer = Trainer(config)
    state = trainer.init_state()
    b, t, r = config.train.batch_size, config.model.num_frames, config.model.resolution
    rng = np.random.default_rng(0)
    batch = {"video": rng.integers(0, 256, (b // jax.process_count(), t, r, r, 3), dtype=np.uint8),
             "label": rng.integers(0, max(1, config.model.num_classes), (b // jax.process_count(),),
                                   dtype=np.int32)}
    t0 = time.perf_counter()
    state, m = trainer.step(state, batch)
    jax.block_until_ready(m)
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(args.train_steps):
        state, m = trainer.step(state, batch)
    jax.block_until_ready(m)
    step_s = (time.perf_counter() - t0) / args.train_steps

    fwd = flops.forward_flops(trainer.model_cfg)["total"]
    achieved = 3 * fwd * 2 * b / step_s / jax.device_count()  # FLOP/s per device, FMA = 2
    known = peak_flops(trainer.tc)
    measured = throughput.matmul_rate()
    print(f"config {spec or 'demo:video'} {' '.join(f'--config.{k}={v}' for k, v in overrides)}, global batch {b}, {jax.device_count()} x {jax.devices()[0].device_kind}")
    print(f"compile + first step {compile_s:.1f} s; {1 / step_s:.2f} steps/s, {b / step_s:.1f} examples/s")
    print(f"analytic train FLOPs {3 * fwd * 2 * b / 1e9:.2f} GFLOP per step (FMA = 2), "
          f"achieved {achieved / 1e9:.2f} GFLOP/s per device")
    print(f"float32 matmul peak measured here {measured / 1e9:.1f} GFLOP/s per device: "
          f"MFU {achieved / measured:.3f} of it")
    if known:
        print(f"published bf16 peak {known / 1e12:.0f} TFLOP/s: MFU {achieved / known:.4f}")


if __name__ == "__main__":
    main()
