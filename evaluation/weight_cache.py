"""Flat `.npz` files and the cache of converted weights, checked by content checksums.

Converted weights are written once as flat `.npz` files (read back with `allow_pickle=False`)
under the cache directory: `$SID2VIDEO_CACHE`, else `~/.cache/sid2video`. A cache file records the
SHA-256 of the source it was converted from and a SHA-256 of its own arrays (names, dtypes,
shapes and bytes), both checked at load (`load_cache`): an altered, missing or extra array makes
the cache invalid, and it is rebuilt. Writes are atomic (a temporary file, then a rename).
"""

from __future__ import annotations

import hashlib
import logging
import os
import pathlib
import tempfile

import numpy as np

__all__ = [
    "cache_dir", "sha256", "CacheError", "SOURCE_KEY", "CONTENT_KEY", "save_npz", "load_npz",
    "content_sha256", "save_cache", "load_cache",
]

log = logging.getLogger("evaluation.weight_cache")


def cache_dir() -> pathlib.Path:
    """Where converted weights live: $SID2VIDEO_CACHE, else ~/.cache/sid2video (created on use)."""
    root = os.environ.get("SID2VIDEO_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "sid2video")
    return pathlib.Path(root)


SOURCE_KEY = "__source_sha256__"
CONTENT_KEY = "__content_sha256__"


class CacheError(ValueError):
    """A weights cache path that cannot hold a cache file (a directory, a file as its folder)."""


def sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_npz(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> pathlib.Path:
    """Writes {name: array} atomically (temporary file, then rename), so concurrent writers are safe."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def load_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads a flat npz written by `save_npz` (no pickled objects allowed)."""
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def content_sha256(arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 over every array's name, dtype, shape and bytes (in name order); the content
    checksum key itself is left out."""
    h = hashlib.sha256()
    for name in sorted(k for k in arrays if k != CONTENT_KEY):
        a = np.asarray(arrays[name])
        h.update(f"{name}\0{a.dtype.str}\0{a.shape}\0".encode())
        h.update(a.tobytes(order="C"))
    return h.hexdigest()


def _check_cache_path(path: pathlib.Path) -> None:
    if path.is_dir():
        raise CacheError(f"the weights cache {path} is a directory, not a file: remove it, or point "
                         "$SID2VIDEO_CACHE at another folder")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise CacheError(f"the weights cache {path} cannot be written: {parent} is a file, not a "
                                 "folder; remove it, or point $SID2VIDEO_CACHE at another folder")
            break


def save_cache(path: str | os.PathLike, arrays: dict[str, np.ndarray], source_sha256: str) -> pathlib.Path:
    """Writes converted weights with the SHA-256 of their source and of their own contents."""
    path = pathlib.Path(path)
    _check_cache_path(path)
    tagged = {**arrays, SOURCE_KEY: np.asarray(source_sha256)}
    return save_npz(path, {**tagged, CONTENT_KEY: np.asarray(content_sha256(tagged))})


def load_cache(path: str | os.PathLike, source_sha256: str | None = None) -> dict[str, np.ndarray] | None:
    """The arrays of a cache file written by `save_cache` (checksum keys removed), or None when
    there is none or it is not valid: unreadable, its contents not matching their checksum (an
    altered, missing or added array), or converted from another source than `source_sha256`.
    A path that cannot be a cache file is a CacheError."""
    path = pathlib.Path(path)
    _check_cache_path(path)
    if not path.exists():
        return None
    try:
        arrays = load_npz(path)
    except Exception as err:  # noqa: BLE001  (a truncated or foreign file is rebuilt)
        log.warning("the weights cache %s is unreadable (%s); rebuilding it", path, err)
        return None
    recorded = str(arrays.get(CONTENT_KEY, ""))
    if recorded != content_sha256(arrays):
        why = "has no content checksum" if not recorded else "does not match its content checksum"
        log.warning("the weights cache %s %s; rebuilding it", path, why)
        return None
    if source_sha256 is not None and str(arrays.get(SOURCE_KEY, "")) != source_sha256:
        log.info("the weights cache %s was converted from another source file; rebuilding it", path)
        return None
    return {k: v for k, v in arrays.items() if k not in (SOURCE_KEY, CONTENT_KEY)}
