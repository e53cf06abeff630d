"""Accelerator facts for MFU: the dense bf16 peak of a device model, and its memory figures.

Peaks are the vendors' dense (not 2:4-sparse) bfloat16 tensor-core rates with a multiply-add
counted as 2 FLOPs. The device model is read from `device.device_kind` exactly: an H100 SXM,
PCIe and NVL differ by 30 %, so "H100" alone is not enough. JAX's kinds look like
"NVIDIA H100 80GB HBM3" (SXM), "NVIDIA H100 PCIe", "NVIDIA H100 NVL", "NVIDIA H200",
"NVIDIA A100-SXM4-80GB", "TPU v4", "TPU v5 lite" (v5e), "TPU v5p" / "TPU v5", "TPU v6 lite".

    peak = devices.peak_bf16_flops(jax.devices()[0].device_kind)   # None where unknown (CPUs)
"""

from __future__ import annotations

import os
import re
from typing import Any

# (pattern on the upper-cased device kind, model name, dense bf16 FLOP/s), first match wins:
# the more specific variants (NVL, PCIe) come before the SXM default of the same chip.
PEAKS: tuple[tuple[str, str, float], ...] = (
    (r"GH200", "GH200", 989.4e12),
    (r"H200.*NVL", "H200 NVL", 835.5e12),
    (r"H200", "H200 SXM", 989.4e12),
    (r"H100.*NVL", "H100 NVL", 835.5e12),
    (r"H100.*PCIE", "H100 PCIe", 756.0e12),
    (r"H100", "H100 SXM", 989.4e12),
    (r"H800.*PCIE", "H800 PCIe", 756.0e12),
    (r"H800", "H800 SXM", 989.4e12),
    (r"A100", "A100", 312.0e12),  # SXM and PCIe share the bf16 peak
    (r"L40S", "L40S", 362.05e12),
    (r"\bL4\b", "L4", 121.0e12),
    (r"TPU V4", "TPU v4", 275.0e12),
    (r"TPU V5 ?LITE|TPU V5E", "TPU v5e", 197.0e12),
    (r"TPU V5P|TPU V5$", "TPU v5p", 459.0e12),
    (r"TPU V6 ?LITE|TPU V6E", "TPU v6e", 918.0e12),
)


def identify(kind: str) -> tuple[str, float] | None:
    """(model name, dense bf16 peak FLOP/s) of a `device_kind`, or None if it is not known."""
    upper = kind.strip().upper()
    for pattern, name, peak in PEAKS:
        if re.search(pattern, upper):
            return name, peak
    return None


def peak_bf16_flops(kind: str) -> float | None:
    """Dense bf16 peak FLOP/s (multiply-add = 2) of one device of this kind; None if unknown."""
    found = identify(kind)
    return found[1] if found else None


def memory(device: Any) -> dict[str, int | None]:
    """Device memory figures in bytes: `limit` (what the allocator may use) and `peak` (the
    most in use so far in this process); None where the backend reports none (CPUs)."""
    stats = None
    try:
        stats = device.memory_stats()
    except Exception:  # noqa: BLE001  (backends without memory statistics raise or return None)
        stats = None
    stats = stats or {}
    return {"limit": stats.get("bytes_limit"), "peak": stats.get("peak_bytes_in_use")}


# --------------------------------------------------------------------------- CPU devices

CPU_SPLIT_FLAG = "xla_force_host_platform_device_count"


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # platforms without affinity masks
        return os.cpu_count() or 1


def cpu_device_count(cores: int, batch_sizes: tuple[int, ...]) -> int:
    """The most CPU devices, at most `cores`, that split every batch size evenly (at least 1)."""
    # One device splits any batch, so the search always ends.
    return next(n for n in range(max(1, cores), 0, -1) if all(b % n == 0 for b in batch_sizes))


def split_cpu(batch_sizes: tuple[int, ...], cores: int | None = None) -> int | None:
    """Gives JAX one CPU device per usable core (fewer where a batch size would not split evenly),
    so a data-parallel step runs one shard per core. Returns the device count set, or None where
    nothing was changed: XLA_FLAGS already sets --xla_force_host_platform_device_count (the user's
    choice wins) or JAX's backends are already running (the count is fixed at their start).

    Why: XLA on the CPU runs a small model's ops with little parallelism inside each op, so one
    device leaves a core idle much of a step. Two devices on two cores run the demo's video step
    1.7× as fast (README, "Training on CPUs"). A GPU or TPU backend is not affected; only JAX's CPU
    backend reads the setting.
    """
    import jax

    if CPU_SPLIT_FLAG in os.environ.get("XLA_FLAGS", ""):
        return None
    n = cpu_device_count(usable_cores() if cores is None else cores, tuple(batch_sizes))
    try:
        jax.config.update("jax_num_cpu_devices", n)
    except RuntimeError:  # backends already initialised: the count can no longer change
        return None
    return n
