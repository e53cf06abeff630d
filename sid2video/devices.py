"""Accelerator facts for MFU: the dense bf16 peak of a device model, and its memory figures.

Peaks are the vendors' dense (not 2:4-sparse) bfloat16 tensor-core rates with a multiply-add
counted as 2 FLOPs. The device model is read from `device.device_kind` exactly: an H100 SXM,
PCIe and NVL differ by 30 %, so "H100" alone is not enough. JAX's kinds look like
"NVIDIA H100 80GB HBM3" (SXM), "NVIDIA H100 PCIe", "NVIDIA H100 NVL", "NVIDIA H200",
"NVIDIA A100-SXM4-80GB", "TPU v4", "TPU v5 lite" (v5e), "TPU v5p" / "TPU v5", "TPU v6 lite".

    peak = devices.peak_bf16_flops(jax.devices()[0].device_kind)   # None where unknown (CPUs)
"""

from __future__ import annotations

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
