"""The reference-statistics cache: feature statistics of the true clips, computed once per protocol.

Reference statistics depend only on the data and the protocol, so they are cached in
`<cache_dir>/<hash>.npz`, keyed (`cache_key`) by a hash of the dataset, its folder, split, split
size, resolution, clip length and stride, the subset rule, the feature protocol (network checksum,
FVD resolution, whether conditioning frames are counted) and the number of clips. The same data
pass can also accumulate the features of the copy-last-frame baseline (its FVD needs no model).
Process 0 reads and writes the file; the others read what process 0 found.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pathlib
from typing import Any, Callable, Mapping

import jax
import numpy as np

from evaluation import clips as clips_lib
from evaluation import frechet, fvd, metrics

log = logging.getLogger("sid2video.evaluate")

__all__ = ["CACHE_VERSION", "cache_key", "reference_statistics"]

CACHE_VERSION = 1


def _canonical(key: Mapping[str, Any]) -> str:
    from sid2video import checkpoint

    return json.dumps(checkpoint._plain(key), sort_keys=True, default=str)   # pylint: disable=protected-access


def _hash(key: Mapping[str, Any]) -> str:
    return hashlib.sha256(_canonical(key).encode()).hexdigest()[:24]


def broadcast_bool(value: bool) -> bool:
    """Process 0's value on every process (so that all take the same branch around collectives)."""
    if jax.process_count() == 1:
        return bool(value)
    from jax.experimental import multihost_utils

    return bool(multihost_utils.broadcast_one_to_all(np.int32(bool(value))))


def cache_key(data: Mapping[str, Any], split: str, num_samples: int, extractor: fvd.StreamingExtractor, *,
              split_size: int, subset_seed: int = 0) -> dict:
    """What the reference statistics depend on (hashed into the cache file name)."""
    from sid2video import checkpoint
    from sid2video.data import sources

    data_dir = data.get("data_dir")
    return {
        "version": CACHE_VERSION,
        "dataset": sources.dataset_name(data),
        "data_dir": os.path.abspath(str(data_dir)) if data_dir else None,
        "format": data.get("format", "auto"),
        "split": split,
        "resolution": checkpoint._plain(data.get("resolution")),   # pylint: disable=protected-access
        "num_frames": data.get("num_frames"),
        "frame_stride": data.get("frame_stride", 1),
        "num_samples": int(num_samples),
        "subset": clips_lib.subset_description(split_size, int(num_samples), subset_seed),
        "protocol": extractor.protocol(),
        "network": extractor.checksum,
    }


def _save(path: pathlib.Path, key: dict, reference: frechet.RunningStatistics,
          baseline: frechet.RunningStatistics | None) -> None:
    from evaluation import weight_cache

    arrays = {"key": np.asarray(_canonical(key))}
    for name, acc in (("reference", reference), ("baseline", baseline)):
        if acc is not None and acc.count:
            count, mean, m2 = acc.to_arrays()
            arrays.update({f"{name}_count": count, f"{name}_mean": mean, f"{name}_m2": m2})
    weight_cache.save_npz(path, arrays)


def _load(path: pathlib.Path, key: dict, need_baseline: bool):
    """(reference, baseline or None) from a cache file, or None when absent, stale or incomplete."""
    from evaluation import weight_cache

    if not path.is_file():
        return None
    try:
        arrays = weight_cache.load_npz(path)
        if json.loads(str(arrays["key"])) != json.loads(_canonical(key)):
            return None
        ref = frechet.RunningStatistics.from_arrays(arrays["reference_count"], arrays["reference_mean"],
                                                    arrays["reference_m2"])
        base = None
        if "baseline_count" in arrays:
            base = frechet.RunningStatistics.from_arrays(arrays["baseline_count"], arrays["baseline_mean"],
                                                         arrays["baseline_m2"])
        elif need_baseline:
            return None
        return ref, base
    except Exception as err:   # a damaged cache file is recomputed
        log.warning("ignoring unreadable evaluation cache %s: %s", path, err)
        return None


def _compute(clips: clips_lib.EvalClips, reference: fvd.StreamingExtractor, extractor_factory,
             want_baseline: bool, num_cond: int):
    """One pass over the clips: the reference features and, if wanted, the copy-last-frame baseline's."""
    baseline = extractor_factory() if want_baseline else None
    for _, batch, valid in clips.batches("reference"):
        video_BTHWC = np.asarray(batch["video"])
        reference.update(video_BTHWC, valid)
        if baseline is not None:
            baseline.update(metrics.copy_last_frame(video_BTHWC, num_cond), valid)
    return reference.merged(), baseline.merged() if baseline is not None else None


def reference_statistics(data: Mapping[str, Any], *, split: str, num_samples: int | str | None,
                         extractor_factory: Callable[[], fvd.StreamingExtractor], cache_dir=None,
                         batch_size: int = 8, num_cond: int = 0, baseline: bool = False, subset_seed: int = 0,
                         progress: bool = True) -> dict[str, Any]:
    """Reference (and copy-last baseline) statistics of `num_samples` clips of the split, cached.

    num_samples None / 'all' is the whole split; fewer is the seeded random subset of
    `clips.subset_positions` (the same clips the harness generates from). cache_dir None: computed,
    not cached. Returns {'reference', 'baseline' (RunningStatistics or None), 'cache_file',
    'cache_hit', 'key'}.
    """
    clips = clips_lib.EvalClips(data, split=split, num_samples=num_samples, batch_size=batch_size,
                                subset_seed=subset_seed, progress=progress)
    probe = extractor_factory()
    key = cache_key(clips.data, clips.split, clips.num_samples, probe, split_size=clips.split_size,
                    subset_seed=subset_seed)
    want_baseline = bool(baseline and num_cond)
    path = pathlib.Path(cache_dir) / f"{_hash(key)}.npz" if cache_dir is not None else None
    cached = _load(path, key, want_baseline) if (path is not None and clips_lib.is_lead()) else None
    if path is not None and broadcast_bool(cached is not None):
        if cached is None:   # not process 0: read what process 0 found
            cached = _load(path, key, want_baseline)
            if cached is None:
                raise FileNotFoundError(f"process {jax.process_index()} cannot read the evaluation cache {path} "
                                        "that process 0 found; put --cache_dir on a shared filesystem")
        ref, base = cached
        return {"reference": ref, "baseline": base if want_baseline else None, "cache_file": str(path),
                "cache_hit": True, "key": key}
    ref, base = _compute(clips, probe, extractor_factory, want_baseline, num_cond)
    if path is not None and clips_lib.is_lead():
        _save(path, key, ref, base)
    return {"reference": ref, "baseline": base, "cache_file": str(path) if path else None, "cache_hit": False,
            "key": key}
