"""Keep freed host memory in the process instead of handing it back to the kernel every step.

XLA's CPU runtime allocates and frees its buffers through malloc, among them one block per
program run for all its intermediate values (tens of MiB for a training step). glibc serves
blocks above a threshold (128 KiB, raised dynamically up to 32 MiB) with fresh `mmap`s and returns
them with `munmap`, and trims the top of its heap after large frees; a training loop that
allocates and frees the same buffers every step then takes a page fault for every page it
touches, every step. With the demo's training on one core (`taskset -c 0`) that is almost half of
its time, spent in the kernel (`benchmarks/host_memory.py` measures it). The settings reach the
blocks a thread allocates from glibc's main arena; XLA's worker threads, which run the programs
when it has several cores, allocate from arenas of their own, so there the steps per second do
not change (measured on 2 cores).

`tune()` asks glibc (`mallopt`) to serve blocks up to 1 GiB from the heap (32 MiB where an older
glibc refuses more) and to keep what is freed: the process's resident memory then stays near its
peak instead of falling between steps. It is called by every `sid2video` command;
`SID2VIDEO_MALLOC_TUNING=0` leaves malloc alone. Elsewhere than glibc (macOS, musl) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

ENV = "SID2VIDEO_MALLOC_TUNING"

# mallopt parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
# Blocks up to this size come from the heap; glibc before 2.26 refuses more than HEAP_MAX_SIZE / 2
# (32 MiB on 64-bit systems), the fallback.
MMAP_THRESHOLD = 1 << 30
MMAP_THRESHOLD_FALLBACK = 32 << 20
# Never trim the heap's top (the largest C int), and grow it by 64 MiB at a time.
TRIM_THRESHOLD = 2**31 - 1
TOP_PAD = 64 * 1024 * 1024

_done: bool | None = None


def enabled() -> bool:
    """Whether `tune` will act: unless SID2VIDEO_MALLOC_TUNING is 0 / false / no / off."""
    return os.environ.get(ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def tune() -> bool:
    """Set glibc's malloc to keep freed memory (once per process); True when the settings took."""
    global _done
    if _done is not None:
        return _done
    _done = False
    if not enabled() or platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return False

    def mallopt(param: int, value: int) -> bool:
        return libc.mallopt(ctypes.c_int(param), ctypes.c_int(value)) == 1

    mmap = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) or mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_FALLBACK)
    trim = mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    pad = mallopt(_M_TOP_PAD, TOP_PAD)
    _done = mmap and trim and pad
    return _done
