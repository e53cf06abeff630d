"""What a training run reports: a progress bar, and metrics as JSON lines and TensorBoard events.

Every `train.log_every` steps one row goes to WORKDIR/metrics.jsonl and WORKDIR/tb: the step's
metrics (loss, x_mse, grad_norm, learning_rate), throughput (steps/s, examples/s, FLOP/s per device
and MFU), the run's count of skipped non-finite updates and the data loader's counts. Evaluations
during training add rows of their own: {"step": N, "eval/psnr": ..., "eval/seconds": ...}.
"""

from __future__ import annotations

import json
import math
import pathlib
import time
from typing import Any, Mapping

import jax

from sid2video.config import TrainConfig

# Dense bf16 peak FLOP/s per device (FMA = 2 FLOPs), for MFU when config.train.peak_flops_per_device = 0.
def peak_flops(tc: TrainConfig) -> float | None:
    """config.train.peak_flops_per_device, else the dense bf16 peak of this device's exact model
    (sid2video.devices), else None."""
    if tc.peak_flops_per_device:
        return tc.peak_flops_per_device
    from sid2video import devices

    return devices.peak_bf16_flops(jax.devices()[0].device_kind) if jax.devices() else None


def json_number(value: float) -> float | None:
    """A metric as strict JSON allows it: finite floats as they are, NaN and ±Inf as null."""
    value = float(value)
    return value if math.isfinite(value) else None


class MetricWriter:
    """Metrics as JSON lines (`metrics.jsonl`) and TensorBoard event files (`tb/`), process 0 only.

    metrics.jsonl is strict JSON, one object per line: {"step": int, name: float or null, ...};
    a non-finite value (NaN, Inf) is written as null (TensorBoard gets the value itself).
    """

    def __init__(self, workdir: pathlib.Path, enabled: bool = True):
        self.enabled = enabled
        self._tb = None
        self._jsonl = None
        if enabled:
            from tensorboardX import SummaryWriter

            self._jsonl = open(workdir / "metrics.jsonl", "a", buffering=1)
            self._tb = SummaryWriter(str(workdir / "tb"))

    def write(self, step: int, metrics: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        row = {"step": int(step), **{k: json_number(v) for k, v in metrics.items()}}
        self._jsonl.write(json.dumps(row, allow_nan=False) + "\n")
        for k, v in metrics.items():
            self._tb.add_scalar(k, float(v), int(step))

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            self._tb.close()


class RunLog:
    """The loop's reporting for one run from step `start` to `target` (a small state object: the
    throughput window, the last metrics, the count of skipped non-finite updates)."""

    def __init__(self, workdir: pathlib.Path, tc: TrainConfig, model_cfg, *, start: int, target: int,
                 progress: bool, loader: Any = None):
        from tqdm import tqdm

        lead = jax.process_index() == 0
        self.tc = tc
        self.writer = MetricWriter(workdir, enabled=lead)
        self.bar = tqdm(total=target, initial=start, desc="train", unit="step", disable=not (progress and lead),
                        dynamic_ncols=True)
        self.flops_per_example = _train_flops_per_example(model_cfg)
        self.peak = peak_flops(tc)
        self.loader = loader  # an iterator with `loader_stats` (counts of clips read and skipped), or None
        self.window = (time.perf_counter(), start)
        self.last: dict[str, float] = {}
        self.nonfinite_skipped = 0

    def fetch(self, metrics: Mapping[str, Any]) -> tuple[dict[str, float], bool]:
        """A step's metrics on the host (waits for the step), and whether its update was finite."""
        m = {k: float(v) for k, v in jax.device_get(metrics).items()}
        finite = bool(m.pop("finite"))
        self.last = m
        return m, finite

    def advance(self) -> None:
        self.bar.update(1)

    def exclude(self, seconds: float) -> None:
        """Leave `seconds` spent outside training (evaluating) out of the next row's throughput."""
        t0, s0 = self.window
        self.window = (t0 + seconds, s0)

    def step_done(self, step_index: int, m: Mapping[str, float]) -> None:
        """Report step `step_index` (0-based): the bar's loss, and every log_every steps a row."""
        self.bar.set_postfix(loss=f"{m['loss']:.4g}", refresh=False)
        if (step_index + 1) % self.tc.log_every == 0:
            self.writer.write(step_index + 1, self._row(step_index + 1, m))

    def _row(self, step: int, m: Mapping[str, float]) -> dict[str, float]:
        now = time.perf_counter()
        t0, s0 = self.window
        sps = (step - s0) / max(now - t0, 1e-9)
        self.window = (now, step)
        batch_size = self.tc.batch_size
        row = dict(m, steps_per_s=sps, examples_per_s=sps * batch_size, nonfinite_skipped=self.nonfinite_skipped)
        if self.flops_per_example:
            achieved = sps * batch_size * self.flops_per_example * 2 / jax.device_count()
            row["flops_per_s_per_device"] = achieved
            if self.peak:
                row["mfu"] = achieved / self.peak
        stats = self.loader_stats()
        if stats is not None:
            row.update(stats.as_dict())
        return row

    def loader_stats(self):
        return getattr(self.loader, "loader_stats", None)

    def close(self) -> None:
        self.bar.close()
        self.writer.close()


def _train_flops_per_example(model_cfg) -> float | None:
    """Analytic FLOPs of one training example (3 × forward, multiply-add = 1), if available."""
    from sid2video.models import flops

    return 3.0 * float(flops.forward_flops(model_cfg)["total"])
