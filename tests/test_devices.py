"""sid2video.devices reads the exact device model from JAX's device kind (SXM, PCIe and NVL
parts of one chip have different peaks) and reports no peak for devices it does not know."""

import os

import jax
import pytest

from sid2video import devices


@pytest.mark.parametrize("kind, name, tflops", [
    ("NVIDIA H100 80GB HBM3", "H100 SXM", 989.4),
    ("NVIDIA H100 PCIe", "H100 PCIe", 756.0),
    ("NVIDIA H100 NVL", "H100 NVL", 835.5),
    ("NVIDIA H200", "H200 SXM", 989.4),
    ("NVIDIA H200 NVL", "H200 NVL", 835.5),
    ("NVIDIA GH200 480GB", "GH200", 989.4),
    ("NVIDIA A100-SXM4-80GB", "A100", 312.0),
    ("NVIDIA A100 80GB PCIe", "A100", 312.0),
    ("TPU v4", "TPU v4", 275.0),
    ("TPU v5 lite", "TPU v5e", 197.0),
    ("TPU v5p", "TPU v5p", 459.0),
    ("TPU v5", "TPU v5p", 459.0),
    ("TPU v6 lite", "TPU v6e", 918.0),
])
def test_device_kinds_map_to_their_dense_bf16_peak(kind, name, tflops):
    assert devices.identify(kind) == (name, pytest.approx(tflops * 1e12))
    assert devices.peak_bf16_flops(kind) == pytest.approx(tflops * 1e12)


@pytest.mark.parametrize("kind", ["cpu", "NVIDIA GeForce RTX 4090", "TPU v3", ""])
def test_unknown_devices_have_no_peak(kind):
    assert devices.identify(kind) is None and devices.peak_bf16_flops(kind) is None


def test_cpu_memory_figures_are_absent_not_invented():
    mem = devices.memory(jax.devices()[0])
    assert set(mem) == {"limit", "peak"}
    assert mem["limit"] is None or mem["limit"] > 0


@pytest.mark.parametrize("cores, batches, expected", [
    (2, (8,), 2), (3, (8,), 2), (4, (8, 16), 4), (3, (9, 6), 3), (5, (7,), 1), (1, (8,), 1), (16, (12,), 12),
])
def test_cpu_device_count_is_the_most_that_split_every_batch(cores, batches, expected):
    n = devices.cpu_device_count(cores, batches)
    assert n == expected
    # No larger count up to `cores` splits every batch evenly.
    assert all(any(b % m for b in batches) for m in range(n + 1, cores + 1))


def test_split_cpu_changes_nothing_once_backends_run_or_when_xla_flags_choose(monkeypatch):
    jax.devices()  # running: the count is fixed
    assert devices.split_cpu((8,), cores=2) is None
    assert jax.device_count() == 1
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=3")
    assert devices.split_cpu((8,), cores=2) is None


def test_split_cpu_in_a_fresh_process_gives_one_device_per_core():
    import subprocess
    import sys

    code = ("import jax; from sid2video import devices; "
            "n = devices.split_cpu((8,), cores=4); print(n, jax.device_count(), jax.local_device_count())")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    out = subprocess.run([sys.executable, "-c", code], env=dict(env, JAX_PLATFORMS="cpu"), check=True,
                         capture_output=True, text=True).stdout.split()
    assert out == ["4", "4", "4"]
