"""host_memory.tune: freed blocks stay in the process (no page fault per reuse), measured in
fresh interpreters, since malloc settings cannot be undone within one."""

import json
import os
import platform
import subprocess
import sys

import pytest

from sid2video import host_memory

# Allocate, touch and free a 48 MiB block 10 times (above glibc's largest default mmap threshold,
# below the tuned one); print the minor page faults that took and whether tune() took.
_PROBE = r"""
import ctypes, json, resource, sys
from sid2video import host_memory
tuned = host_memory.tune() if sys.argv[1] == "tune" else False
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
size = 48 << 20
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for i in range(10):
    p = libc.malloc(size)
    ctypes.memset(p, i, size)
    libc.free(p)
after = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
print(json.dumps({"tuned": tuned, "faults": after - before, "pages": size // 4096}))
"""

glibc = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                           reason="mallopt is glibc's")


def _probe(mode: str, **env) -> dict:
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True,
                         env={**os.environ, **env})
    return json.loads(out.stdout)


@glibc
def test_tuned_malloc_reuses_freed_blocks():
    plain = _probe("plain")
    tuned = _probe("tune")
    assert tuned["tuned"] is True
    # Untuned, every round maps fresh pages: ~10 × 12288 faults. Tuned, only the first round faults
    # (plus the heap's growth pad, touched lazily, and the interpreter's own few).
    assert plain["faults"] >= 9 * plain["pages"]
    assert tuned["faults"] <= 1.5 * tuned["pages"]


@glibc
def test_malloc_tuning_can_be_turned_off():
    off = _probe("tune", SID2VIDEO_MALLOC_TUNING="0")
    assert off["tuned"] is False and off["faults"] >= 9 * off["pages"]


def test_enabled_reads_the_environment(monkeypatch):
    for value, want in (("0", False), ("off", False), ("False", False), ("1", True), ("", True)):
        monkeypatch.setenv(host_memory.ENV, value)
        assert host_memory.enabled() is want
    monkeypatch.delenv(host_memory.ENV)
    assert host_memory.enabled() is True
