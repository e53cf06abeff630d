"""The evaluation harness: FVD / FID and frame-prediction metrics of checkpoints or sample files.

    result = harness.evaluate("runs/k600", metric="fvd", protocol="kinetics600", checkpoint="all")
    sid2video evaluate --workdir runs/k600 --metric fvd --protocol kinetics600 --checkpoint all

For each requested checkpoint the EMA network is restored through `checkpoint.load_model`, the
evaluation split is read through the eval pipeline of data/pipeline.py (centre clips, no flips;
`num_samples` clips: the whole split, or a seeded uniformly random subset of it, because splits are
stored in class order; rows whose 'mask' is False — padding — never count), the conditioning
frames of every clip (or the labels of an image model) go through `sample.Generator`, sharded over
every device of every process, and:

  * FVD (video) or FID (images): features of the samples against those of the same clips of the
    split (or of the whole split: `reference_samples='all'`, the ImageNet convention). Reference
    statistics depend only on the data and the protocol, so they are cached in
    `<workdir>/eval_cache/<hash>.npz`, keyed by a hash of the dataset, its folder, split, split
    size, resolution, clip length and stride, the subset rule, the feature protocol (network
    checksum, FVD resolution, whether conditioning frames are counted) and the number of samples;
  * for frame prediction, PSNR / SSIM / MSE of every predicted frame against the true one, and the
    same for the copy-last-frame baseline (its FVD is cached with the reference statistics).

`evaluate(samples=PATH)` measures already generated clips instead (an .npz from `sid2video
sample`, a .npy array, or a folder of MP4s or images), and `evaluate_sets(a, b)` gives the FVD of
two sets of clips (arrays or data configs), e.g. test clips against training clips.

Every long loop has a progress bar; process 0 writes `result.json`, `report.md` and the PNGs
(report.py). Protocol presets (`PROTOCOLS`) fix the split, the number of samples and the FVD
resolution of the published numbers; explicit arguments override them, and every report states
whether the conditioning frames were part of the clips FVD saw.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import pathlib
import sys
import time
from typing import Any, Callable, Iterable, Mapping, Sequence

import jax
import numpy as np

from evaluation import fid as fid_lib
from evaluation import frechet, fvd, metrics

log = logging.getLogger("sid2video.evaluate")

__all__ = ["evaluate", "evaluate_sets", "reference_statistics", "load_samples", "resolve_protocol",
           "subset_positions", "split_size", "make_extractor", "cache_key", "Protocol", "PROTOCOLS", "METRICS",
           "run"]

METRICS = ("fvd", "fid", "frames")
CACHE_VERSION = 1

# Published protocols (SPEC §7). `expect` lists the config values the protocol assumes.
PROTOCOLS: dict[str, dict[str, Any]] = {
    "kinetics600": dict(
        metric="fvd", split="test", num_samples=50_000, fvd_resolution=64, cond_frames_in_fvd=True,
        expect=dict(num_frames=16, num_cond_frames=5, resolution=128),
        description="Kinetics600 frame prediction (Video Diffusion Models; SiD2 Table 4): 16-frame clips, "
                    "5 conditioning and 11 predicted frames, generated at 128² and resized to 64² for FVD; "
                    "FVD_50k over 50 000 test clips",
        quoted={"metric": "FVD_50k", "results": {"SiD2": 2.3, "W.A.L.T": 3.3, "MAGVIT-v2": 4.3,
                                                 "Rolling Diffusion": 5.2, "MAGVIT": 9.9, "RIN": 10.8,
                                                 "Video Diffusion Models": 16.6}}),
    "imagenet": dict(
        metric="fid", split="train", num_samples=50_000, reference_samples="all",
        description="ImageNet class-conditional generation: FID_50k of 50 000 samples (labels those of 50 000 "
                    "random training images) against the Inception statistics of the whole training set",
        quoted={"metric": "FID_50k", "results": {"SiD2 flop heavy 128²": 1.26, "SiD2 flop heavy 256²": 1.38,
                                                 "SiD2 flop heavy 512²": 1.48, "SiD2 1024²": 1.75,
                                                 "EDM2-XXL 512²": 1.40}}),
}


@dataclasses.dataclass
class Protocol:
    """Everything that decides what a number means (stored in result.json and the report)."""

    name: str | None
    metric: str
    split: str | None
    num_samples: int | None
    fvd_resolution: int | None
    cond_frames_in_fvd: bool
    seed: int = 0
    reference_samples: int | str | None = None   # None: the same clips as the samples; 'all': the split
    subset_seed: int = 0
    description: str = ""
    quoted: dict | None = None
    expect: dict | None = None


def resolve_protocol(name: str | None = None, *, metric: str | None = None, split: str | None = None,
                     num_samples: int | None = None, fvd_resolution: int | None | str = "preset",
                     cond_frames_in_fvd: bool | None = None, seed: int = 0,
                     reference_samples: int | str | None = "preset", subset_seed: int = 0) -> Protocol:
    """A preset (or none) with explicit arguments on top; 'preset' (fvd_resolution, reference_samples)
    keeps the preset's value."""
    if name in (None, "", "none", "default"):
        preset: dict[str, Any] = {}
        name = None
    elif name in PROTOCOLS:
        preset = PROTOCOLS[name]
    else:
        raise ValueError(f"unknown protocol {name!r}; choose one of {sorted(PROTOCOLS)} or none")
    metric = metric or preset.get("metric", "fvd")
    if metric not in METRICS:
        raise ValueError(f"metric={metric!r} is not supported; choose one of {METRICS}")
    if num_samples is not None and int(num_samples) < 1:
        raise ValueError(f"num_samples={num_samples} must be at least 1")
    res = preset.get("fvd_resolution") if fvd_resolution == "preset" else fvd_resolution
    ref = preset.get("reference_samples") if reference_samples == "preset" else reference_samples
    if ref not in (None, "all") and int(ref) < 1:
        raise ValueError(f"reference_samples={ref!r} must be a positive count, 'all' or None")
    return Protocol(
        name=name, metric=metric, split=split or preset.get("split"),
        num_samples=int(num_samples) if num_samples is not None else preset.get("num_samples"),
        fvd_resolution=None if res in (None, 0) else int(res),
        cond_frames_in_fvd=preset.get("cond_frames_in_fvd", True) if cond_frames_in_fvd is None
        else bool(cond_frames_in_fvd),
        seed=int(seed), reference_samples=ref if ref in (None, "all") else int(ref), subset_seed=int(subset_seed),
        description=preset.get("description", ""), quoted=preset.get("quoted"),
        expect=preset.get("expect"))


# ----------------------------------------------------------------------------------------------
# Small helpers.

def _lead() -> bool:
    return jax.process_index() == 0


def _bar(total: int | None, desc: str, progress: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="batch", disable=not (progress and _lead()), dynamic_ncols=True,
                leave=False)


def _plain(value: Any) -> Any:
    if hasattr(value, "to_dict"):
        value = value.to_dict()
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(_plain(obj), sort_keys=True, default=str).encode()).hexdigest()[:24]


def _broadcast_bool(value: bool) -> bool:
    """Process 0's value on every process (so that all take the same branch around collectives)."""
    if jax.process_count() == 1:
        return bool(value)
    from jax.experimental import multihost_utils

    return bool(multihost_utils.broadcast_one_to_all(np.int32(bool(value))))


def _merge_frame_metrics(fm: metrics.FrameMetrics) -> metrics.FrameMetrics:
    rows = fvd.allgather_float64(fm.to_array())
    out = metrics.FrameMetrics(fm.num_cond, fm.num_pred)
    for row in rows:
        out.merge(metrics.FrameMetrics.from_array(row, fm.num_cond))
    return out


def _get(cfg: Any, key: str, default: Any = None) -> Any:
    try:
        value = cfg.get(key, default)
    except AttributeError:
        value = getattr(cfg, key, default)
    return default if value is None else value


# ----------------------------------------------------------------------------------------------
# Data.

class DataError(FileNotFoundError):
    """The evaluation data cannot be found or read."""


def _data_config(config_data: Any, data_dir: str | None) -> dict[str, Any]:
    from sid2video.data import pipeline

    data = dict(_plain(config_data) or {})
    if data_dir:
        data["data_dir"] = str(data_dir)
    if not pipeline.dataset_name(data):
        raise ValueError("the config names no dataset (config.data.dataset); pass a data config")
    if not data.get("data_dir"):
        raise DataError(f"config.data.data_dir is not set for dataset {pipeline.dataset_name(data)!r}; "
                        "pass --data_dir DIR")
    return data


def _default_split(data: Mapping[str, Any]) -> str:
    from sid2video.data import pipeline

    return data.get("eval_split") or pipeline.default_eval_split(pipeline.dataset_name(data))


def _source(data: Mapping[str, Any], split: str):
    """pipeline.make_source for evaluation, with a clear error when the split cannot be read."""
    from sid2video.data import pipeline

    try:
        return pipeline.make_source(data, split=split, train=False)
    except (FileNotFoundError, ValueError) as err:
        raise DataError(f"cannot read the {split!r} split of {pipeline.dataset_name(data)!r} in "
                        f"{data.get('data_dir')}: {err} (pass --data_dir to point at the dataset)") from err


def split_size(data: Mapping[str, Any], split: str) -> int:
    """How many clips (images) the split has."""
    return len(_source(data, split).source)


def _check_num_samples(data: Mapping[str, Any], split: str, num_samples: int | str | None) -> int:
    """num_samples as a count of the split (None or 'all': the whole split); too many is an error."""
    from sid2video.data import pipeline

    n = split_size(data, split)
    if num_samples in (None, "all"):
        return n
    if int(num_samples) > n:
        raise ValueError(f"num_samples={num_samples} is larger than the {split!r} split of "
                         f"{pipeline.dataset_name(data)!r} in {data.get('data_dir')}, which has {n} "
                         f"{'clips' if int(data.get('num_frames', 1) or 1) > 1 else 'images'}; "
                         f"use --num_samples {n} or fewer")
    return int(num_samples)


def subset_positions(total: int, num_samples: int, seed: int = 0) -> np.ndarray | None:
    """Which positions of a split of `total` records are evaluated: all of them (None) when
    num_samples == total, else a uniformly random subset without replacement, seeded, sorted.

    The split is stored in class order (label folders), so its first N records would cover only
    the first classes; a random subset keeps the classes' proportions.
    """
    if not 0 < num_samples <= total:
        raise ValueError(f"num_samples={num_samples} must be in [1, {total}]")
    if num_samples == total:
        return None
    rng = np.random.default_rng([int(seed), int(total), int(num_samples)])
    return np.sort(rng.choice(total, size=num_samples, replace=False))


class _Subset:
    """Random-access view of some positions of a source; records keep their original 'index'."""

    def __init__(self, source, positions: np.ndarray):
        self.source = source
        self.positions = [int(p) for p in positions]

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i: int) -> dict:
        return self.source[self.positions[int(i)]]


def _subset_description(total: int, num_samples: int, seed: int) -> dict:
    if num_samples == total:
        return {"rule": "whole split, in order", "split_size": total}
    return {"rule": "uniform random subset without replacement (numpy default_rng([seed, split_size, n]))",
            "seed": int(seed), "split_size": total}


def _eval_batches(data: Mapping[str, Any], split: str, num_samples: int, batch_size: int, *,
                  subset_seed: int = 0, desc: str, progress: bool) -> Iterable[tuple[int, dict, np.ndarray]]:
    """(batch index, batch, real rows) over `num_samples` clips of the split (see subset_positions).

    The eval pipeline (centre clips / crops, no flips) of data/pipeline.py, each process reading its
    share; every process gets the same number of batches (the last ones padded, 'mask' False), so
    the sharded generator and feature network stay in step. Padding rows never count.
    """
    from sid2video.data import pipeline

    src = _source(data, split)
    total = len(src.source)
    positions = subset_positions(total, num_samples, subset_seed)
    if positions is not None:
        src = dataclasses.replace(src, source=_Subset(src.source, positions))
    pc = jax.process_count()
    workers = int(_get(data, "worker_count", 0))
    ds = pipeline.build_dataset(src, batch_size=batch_size, seed=0, train=False,
                                process_index=jax.process_index(), process_count=pc, worker_count=workers,
                                read_threads=int(_get(data, "read_threads", 2)),
                                prefetch=int(_get(data, "prefetch", 2)))
    it = iter(ds)
    bar = _bar(math.ceil(math.ceil(num_samples / pc) / batch_size), desc, progress)
    try:
        for i, batch in enumerate(it):
            yield i, batch, np.asarray(batch["mask"], bool)
            bar.update(1)
    finally:
        bar.close()
        close = getattr(it, "close", None)
        if close is not None:
            close()


# ----------------------------------------------------------------------------------------------
# Feature extractors and the reference-statistics cache.

def _load_network(metric: str, fid_weights=None):
    """I3D for FVD; the FID Inception (a clear FileNotFoundError without its weights file)."""
    if metric == "fvd":
        from evaluation import i3d

        return i3d.load()
    from evaluation import inception

    return inception.load(fid_weights)


def make_extractor(metric: str, *, protocol: Protocol, num_cond: int, batch_size: int,
                   feature_net=None, fid_weights=None, dim: int | None = None) -> fvd.StreamingExtractor:
    """The FVD or FID extractor for a protocol (feature_net/dim replace the network, e.g. in tests)."""
    if metric == "fvd":
        kw = {} if dim is None else {"dim": dim}
        return fvd.FeatureExtractor(resolution=protocol.fvd_resolution, num_cond_frames=num_cond,
                                    count_cond_frames=protocol.cond_frames_in_fvd, net=feature_net,
                                    batch_size=batch_size, **kw)
    if metric == "fid":
        kw = {} if dim is None else {"dim": dim}
        return fid_lib.FeatureExtractor(weights=fid_weights, net=feature_net, batch_size=batch_size, **kw)
    raise ValueError(f"no feature extractor for metric {metric!r}")


def cache_key(data: Mapping[str, Any], split: str, num_samples: int, extractor: fvd.StreamingExtractor, *,
              split_size: int, subset_seed: int = 0) -> dict:
    """What the reference statistics depend on (hashed into the cache file name)."""
    from sid2video.data import pipeline

    data_dir = data.get("data_dir")
    return {
        "version": CACHE_VERSION,
        "dataset": pipeline.dataset_name(data),
        "data_dir": os.path.abspath(str(data_dir)) if data_dir else None,
        "format": data.get("format", "auto"),
        "split": split,
        "resolution": _plain(data.get("resolution")),
        "num_frames": data.get("num_frames"),
        "frame_stride": data.get("frame_stride", 1),
        "num_samples": int(num_samples),
        "subset": _subset_description(split_size, int(num_samples), subset_seed),
        "protocol": extractor.protocol(),
        "network": extractor.checksum,
    }


def _save_cache(path: pathlib.Path, key: dict, reference: frechet.RunningStatistics,
                baseline: frechet.RunningStatistics | None) -> None:
    from evaluation import weights as wlib

    arrays = {"key": np.asarray(json.dumps(_plain(key), sort_keys=True))}
    for name, acc in (("reference", reference), ("baseline", baseline)):
        if acc is not None and acc.count:
            count, mean, m2 = acc.to_arrays()
            arrays.update({f"{name}_count": count, f"{name}_mean": mean, f"{name}_m2": m2})
    wlib.save_npz(path, arrays)


def _load_cache(path: pathlib.Path, key: dict, need_baseline: bool):
    """(reference, baseline or None) from a cache file, or None when absent, stale or incomplete."""
    from evaluation import weights as wlib

    if not path.is_file():
        return None
    try:
        arrays = wlib.load_npz(path)
        if json.loads(str(arrays["key"])) != json.loads(json.dumps(_plain(key), sort_keys=True)):
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


class _ReferencePass:
    """Accumulates reference (true clips) and copy-last-baseline features during a data pass."""

    def __init__(self, reference: fvd.StreamingExtractor, baseline: fvd.StreamingExtractor | None, num_cond: int):
        self.reference = reference
        self.baseline = baseline
        self.num_cond = num_cond

    def update(self, video: np.ndarray, valid: np.ndarray) -> None:
        self.reference.update(video, valid)
        if self.baseline is not None:
            self.baseline.update(metrics.copy_last_frame(video, self.num_cond), valid)

    def result(self):
        ref = self.reference.merged()
        base = self.baseline.merged() if self.baseline is not None else None
        return ref, base


def reference_statistics(data: Mapping[str, Any], *, split: str, num_samples: int | str | None,
                         extractor_factory: Callable[[], fvd.StreamingExtractor], cache_dir,
                         batch_size: int = 8, num_cond: int = 0, baseline: bool = False, subset_seed: int = 0,
                         progress: bool = True) -> dict[str, Any]:
    """Reference (and copy-last baseline) statistics of `num_samples` clips of the split, cached.

    num_samples None / 'all' is the whole split; fewer is the seeded random subset of
    `subset_positions` (the same clips the harness generates from). Returns {'reference',
    'baseline' (RunningStatistics or None), 'cache_file', 'cache_hit', 'key'}.
    """
    total = split_size(data, split)
    num_samples = _check_num_samples(data, split, num_samples)
    probe = extractor_factory()
    key = cache_key(data, split, num_samples, probe, split_size=total, subset_seed=subset_seed)
    path = pathlib.Path(cache_dir) / f"{_hash(key)}.npz"
    want_baseline = bool(baseline and num_cond)
    cached = _load_cache(path, key, want_baseline) if _lead() else None
    if _broadcast_bool(cached is not None):
        if cached is None:   # not process 0: read what process 0 found
            cached = _load_cache(path, key, want_baseline)
            if cached is None:
                raise FileNotFoundError(f"process {jax.process_index()} cannot read the evaluation cache {path} "
                                        "that process 0 found; put --cache_dir on a shared filesystem")
        ref, base = cached
        return {"reference": ref, "baseline": base if want_baseline else None, "cache_file": str(path),
                "cache_hit": True, "key": key}
    acc = _ReferencePass(probe, extractor_factory() if want_baseline else None, num_cond)
    for _, batch, valid in _eval_batches(data, split, num_samples, batch_size, subset_seed=subset_seed,
                                         desc="reference", progress=progress):
        acc.update(np.asarray(batch["video"]), valid)
    ref, base = acc.result()
    if _lead():
        _save_cache(path, key, ref, base)
    return {"reference": ref, "baseline": base, "cache_file": str(path), "cache_hit": False, "key": key}


# ----------------------------------------------------------------------------------------------
# Generated samples given by path.

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def load_samples(path, *, num_frames: int | None = None) -> dict[str, Any]:
    """Generated clips from a file or folder: {'sample': uint8 [N, T, H, W, 3], 'truth'?, 'num_cond'?}.

    Accepted: an .npz written by `sid2video sample` (keys sample, truth, label, num_cond) or any
    .npz with a 'sample' / 'video' / 'videos' array; an .npy array [N, T, H, W, 3] or [N, H, W, 3];
    a folder of .mp4 files (sorted by name; the first `num_frames` frames of each); a folder of
    images (sorted; [N, 1, H, W, 3]).
    """
    path = pathlib.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no generated samples at {path}")
    out: dict[str, Any] = {"source": str(path)}
    if path.is_file() and path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            names = [k for k in ("sample", "video", "videos", "samples") if k in z.files]
            if not names:
                raise ValueError(f"{path} holds {z.files}; expected an array named 'sample' (sid2video sample)")
            out["sample"] = z[names[0]]
            if "truth" in z.files:
                out["truth"] = z["truth"]
            if "num_cond" in z.files:
                out["num_cond"] = int(z["num_cond"])
    elif path.is_file() and path.suffix == ".npy":
        out["sample"] = np.load(path, allow_pickle=False)
    elif path.is_dir():
        videos = sorted(p for p in path.iterdir() if p.suffix.lower() == ".mp4")
        images = sorted(p for p in path.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
        if videos:
            from sid2video.data import video_io

            clips = []
            for p in videos:
                n = video_io.probe(p).num_frames
                if num_frames is not None and n < num_frames:
                    raise ValueError(f"{p} has {n} frames, the protocol needs {num_frames}")
                clips.append(video_io.read_frames(p, range(num_frames or n)))
            out["sample"] = np.stack(clips)
        elif images:
            from PIL import Image

            out["sample"] = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in images])[:, None]
        else:
            raise FileNotFoundError(f"{path} holds no .mp4 files and no images")
    else:
        raise ValueError(f"{path}: expected an .npz, an .npy, or a folder of MP4s / images")
    sample = np.asarray(out["sample"])
    if sample.ndim == 4:
        sample = sample[:, None]
    if sample.dtype != np.uint8 or sample.ndim != 5 or sample.shape[-1] != 3:
        raise ValueError(f"generated samples must be uint8 [N, T, H, W, 3], got {sample.dtype} {sample.shape}")
    out["sample"] = sample
    return out


# ----------------------------------------------------------------------------------------------
# The harness.

def _checkpoint_steps(workdir: pathlib.Path, checkpoint) -> list[int | None]:
    from sid2video import checkpoint as ckpt

    directory = workdir / "checkpoints"
    if not directory.is_dir():
        raise FileNotFoundError(f"no checkpoints in {directory}: is --workdir a training run? "
                                "(train first: sid2video train --workdir ...)")
    steps = ckpt.Checkpointer(workdir, async_save=False)
    try:
        available = steps.all_steps()
    finally:
        steps.close()
    if not available:
        raise FileNotFoundError(f"no checkpoints in {directory}; train first (sid2video train --workdir ...)")
    if checkpoint in (None, "latest", "last"):
        return [available[-1]]
    if checkpoint == "all":
        return list(available)
    wanted = [int(s) for s in str(checkpoint).split(",")] if isinstance(checkpoint, str) else (
        [int(checkpoint)] if np.ndim(checkpoint) == 0 else [int(s) for s in checkpoint])
    missing = [s for s in wanted if s not in available]
    if missing:
        raise FileNotFoundError(f"no checkpoint for step(s) {missing} in {directory}; available: {available}")
    return wanted


def _apply_sampler(config, sampler: Mapping[str, Any] | None):
    """config with sampler overrides applied (a copy); guidance_interval='none' removes the interval."""
    config = config.copy_and_resolve_references() if hasattr(config, "copy_and_resolve_references") else config
    if not sampler:
        return config
    import ml_collections

    section = dict(_plain(config.get("sampler", {}) or {}))
    for k, v in sampler.items():
        if v is None:
            continue
        if k == "guidance_interval" and (v == () or (isinstance(v, str) and v.lower() == "none")):
            v = None
        section[k] = tuple(v) if isinstance(v, list) else v
    with config.unlocked() if hasattr(config, "unlocked") else contextlib.nullcontext():
        config.sampler = ml_collections.ConfigDict(section)
    return config


def evaluate(workdir=None, *, metric: str | None = None, num_samples: int | None = None,
             protocol: str | None = None, checkpoint=None, batch_size: int = 8, split: str | None = None,
             fvd_resolution: int | None | str = "preset", cond_frames_in_fvd: bool | None = None,
             data_dir: str | None = None, data: Mapping[str, Any] | None = None, samples=None,
             num_cond_frames: int | None = None, sampler: Mapping[str, Any] | None = None, ema: bool = True,
             seed: int = 0, out=None, cache_dir=None, baseline: bool = True, num_strips: int = 4,
             fid_weights=None, feature_net=None, feature_dim: int | None = None, progress: bool = True,
             reference_samples: int | str | None = "preset", subset_seed: int = 0,
             write: bool = True) -> dict[str, Any]:
    """Evaluates checkpoints of a training run (or generated samples given by path); returns the result.

    metric: 'fvd' (video), 'fid' (images) or 'frames' (PSNR/SSIM only); default from the protocol,
      else 'fvd' for video and 'fid' for images. Frame-prediction runs always get PSNR/SSIM of the
      model and of the copy-last-frame baseline as well.
    protocol: a `PROTOCOLS` preset ('kinetics600', 'imagenet') or None; split, num_samples,
      fvd_resolution, cond_frames_in_fvd and reference_samples override it. num_samples defaults to
      the whole split; fewer is a seeded uniformly random subset of it (`subset_positions`,
      subset_seed), the same clips for every checkpoint and for the reference statistics.
    reference_samples: None: the reference statistics come from the same clips as the samples;
      'all': from the whole split (the ImageNet FID convention); a number: that many random clips.
    checkpoint: None (latest), a step, a list or comma-separated steps, or 'all'.
    batch_size: rows per process per batch.
    data_dir / data: where the evaluation data lives (default: the run's config.data); `data` is a
      whole data config (needed with `samples` when there is no workdir).
    samples: a path of generated clips (see `load_samples`) to evaluate instead of checkpoints.
    sampler: overrides of config.sampler (method, num_steps, guidance, guidance_interval,
      logvar_interp).
    out: where result.json / report.md / PNGs go (default <workdir>/eval, or beside `samples`).
    cache_dir: reference-statistics cache (default <workdir>/eval_cache).
    baseline: also the FVD of the copy-last-frame baseline (frame prediction, FVD only).
    feature_net / feature_dim: replace the I3D / Inception network (tests).
    """
    t_start = time.perf_counter()
    if workdir is None and samples is None:
        raise ValueError("give a training run (workdir) or generated samples (samples=PATH)")
    workdir = pathlib.Path(workdir) if workdir is not None else None
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be at least 1")

    # -- the run, its config and the data -----------------------------------------------------------
    steps: list[int | None] = []
    config = None
    if samples is None:
        steps = _checkpoint_steps(workdir, checkpoint)
        from sid2video import checkpoint as ckpt

        reader = ckpt.Checkpointer(workdir, async_save=False)
        try:
            meta = reader.read_meta(steps[0])
        finally:
            reader.close()
        import ml_collections

        config = ml_collections.ConfigDict(meta.get("config") or {"model": meta["model_config"]})
        config = _apply_sampler(config, sampler)
        data_cfg = _data_config(data if data is not None else config.get("data", {}), data_dir)
    elif data is not None or workdir is not None:
        if data is None:
            from sid2video import checkpoint as ckpt

            if not (workdir / "checkpoints").is_dir():
                raise FileNotFoundError(f"no checkpoints in {workdir / 'checkpoints'} to take the data config "
                                        "from; pass the dataset (--dataset/--data_dir) instead")
            reader = ckpt.Checkpointer(workdir, async_save=False)
            try:
                meta = reader.read_meta(None)
            finally:
                reader.close()
            data = (meta.get("config") or {}).get("data", {})
        data_cfg = _data_config(data, data_dir)
    else:
        raise ValueError("evaluating samples by path needs the reference dataset: pass data= (or --dataset "
                         "and --data_dir) or a workdir whose config names it")

    num_frames = int(data_cfg.get("num_frames", 1) or 1)
    num_cond = int(num_cond_frames if num_cond_frames is not None else data_cfg.get("num_cond_frames", 0) or 0)
    loaded = None
    if samples is not None:
        loaded = load_samples(samples, num_frames=num_frames if num_frames > 1 else None)
        if num_cond_frames is None and "num_cond" in loaded:
            num_cond = int(loaded["num_cond"])
    default_metric = "fvd" if num_frames > 1 else "fid"
    has_preset = protocol not in (None, "", "none", "default")
    proto = resolve_protocol(protocol, metric=metric or (None if has_preset else default_metric), split=split,
                             num_samples=num_samples, fvd_resolution=fvd_resolution,
                             cond_frames_in_fvd=cond_frames_in_fvd, seed=seed, reference_samples=reference_samples,
                             subset_seed=subset_seed)
    if proto.metric == "fvd" and num_frames == 1:
        raise ValueError("FVD needs video; this dataset has single images (num_frames=1): use --metric fid")
    if proto.metric == "fid" and num_frames > 1:
        raise ValueError(f"FID measures images; this dataset has {num_frames}-frame clips: use --metric fvd")
    if proto.metric == "frames" and not num_cond:
        raise ValueError("frame metrics (PSNR/SSIM) need a frame-prediction model (num_cond_frames > 0)")
    split_name = proto.split or _default_split(data_cfg)
    if loaded is not None and proto.num_samples is None:
        proto.num_samples = len(loaded["sample"])
    n = _check_num_samples(data_cfg, split_name, proto.num_samples)
    ref_n = n if proto.reference_samples is None else _check_num_samples(data_cfg, split_name,
                                                                          proto.reference_samples)
    if loaded is not None and len(loaded["sample"]) < n:
        raise ValueError(f"{samples} holds {len(loaded['sample'])} samples, fewer than num_samples={n}")
    if proto.metric in ("fvd", "fid") and min(n, ref_n) < 2:
        raise ValueError(f"{proto.metric.upper()} needs at least 2 samples (a covariance), got num_samples={n}")
    notes = []
    if loaded is not None:
        shape = loaded["sample"].shape
        if num_frames > 1 and shape[1] != num_frames:
            raise ValueError(f"{samples} holds clips of {shape[1]} frames; the reference data has {num_frames}")
        res = _plain(data_cfg.get("resolution", 128))
        want_hw = tuple(res) if isinstance(res, (list, tuple)) else (res, res)
        if tuple(shape[2:4]) != tuple(want_hw):
            notes.append(f"the generated frames are {shape[2]}×{shape[3]}, the reference frames "
                         f"{want_hw[0]}×{want_hw[1]}")
    if proto.expect:
        have = {"num_frames": num_frames, "num_cond_frames": num_cond,
                "resolution": _plain(data_cfg.get("resolution", 128))}
        off = {k: (have[k], v) for k, v in proto.expect.items() if have.get(k) != v}
        if off:
            notes.append(f"the {proto.name} protocol assumes " + ", ".join(
                f"{k}={v[1]} (this run: {v[0]})" for k, v in off.items()) + "; the numbers are not comparable "
                "with the published ones")

    features = proto.metric in ("fvd", "fid")
    if features and proto.metric == "fvd":
        fvd.check_clip(num_frames, num_cond, proto.cond_frames_in_fvd)
    if features and feature_net is None:   # loaded once, shared by every extractor below
        feature_net = _load_network(proto.metric, fid_weights)

    def factory():
        return make_extractor(proto.metric, protocol=proto, num_cond=num_cond, batch_size=batch_size,
                              feature_net=feature_net, fid_weights=fid_weights, dim=feature_dim)

    cache_root = pathlib.Path(cache_dir) if cache_dir is not None else (
        (workdir / "eval_cache") if workdir is not None else pathlib.Path(samples).parent / "eval_cache")
    reference = None
    if features:
        reference = reference_statistics(data_cfg, split=split_name, num_samples=ref_n, extractor_factory=factory,
                                         cache_dir=cache_root, batch_size=batch_size, num_cond=num_cond,
                                         baseline=baseline, subset_seed=proto.subset_seed, progress=progress)

    # -- protocol record ----------------------------------------------------------------------------
    from sid2video.data import pipeline

    total = split_size(data_cfg, split_name)
    protocol_record = {
        "name": proto.name, "description": proto.description, "metric": proto.metric,
        "dataset": pipeline.dataset_name(data_cfg), "data_dir": str(data_cfg.get("data_dir")),
        "split": split_name, "num_samples": n, "split_size": total,
        "clips": _subset_description(total, n, proto.subset_seed)["rule"] if loaded is None
        else "generated samples from a file",
        "reference_samples": ref_n if features else None,
        "num_frames": num_frames, "num_cond_frames": num_cond,
        "num_predicted_frames": num_frames - num_cond if num_cond else None,
        "resolution": _plain(data_cfg.get("resolution")), "frame_stride": data_cfg.get("frame_stride", 1),
        "fvd_resolution": proto.fvd_resolution if proto.metric == "fvd" else None,
        "cond_frames_in_fvd": proto.cond_frames_in_fvd if proto.metric == "fvd" else None,
        "frames_seen_by_fvd": (num_frames if proto.cond_frames_in_fvd else num_frames - num_cond)
        if proto.metric == "fvd" else None,
        "seed": proto.seed, "batch_size_per_process": batch_size, "processes": jax.process_count(),
        "devices": jax.device_count(), "ema": ema,
    }
    if features:
        protocol_record["feature_network"] = reference["key"]["protocol"]["network"]
        protocol_record["feature_network_sha256"] = reference["key"]["network"]
    result: dict[str, Any] = {"metric": proto.metric, "protocol": protocol_record, "checkpoints": [],
                              "notes": notes, "quoted": proto.quoted}
    if config is not None:
        from sid2video import sample as sample_lib

        result["protocol"]["sampler"] = _plain(sample_lib.sampler_settings(config))
    if reference is not None:
        result["reference"] = {"num_samples": int(reference["reference"].count),
                               "cache_file": reference["cache_file"], "cache_hit": reference["cache_hit"]}
    baseline_fm = metrics.FrameMetrics(num_cond, num_frames - num_cond) if num_cond else None
    strips: dict[str, Any] = {}

    # -- generated clips: from checkpoints, or from the path ----------------------------------------
    if loaded is not None:
        entry, strip = _evaluate_loaded(loaded, n, num_cond, factory if features else None, batch_size,
                                        baseline_fm, progress)
        result["samples"] = loaded["source"]
        if "_stats" in entry:
            entry[proto.metric] = fvd.distance(entry.pop("_stats"), reference["reference"])
        result["checkpoints"].append(entry)
        if strip is not None:
            strips["samples"] = strip
    else:
        from sid2video import checkpoint as ckpt
        from sid2video import sample as sample_lib

        generator = None
        for k, step in enumerate(steps):
            t0 = time.perf_counter()
            model, run_config, step = ckpt.load_model(workdir, step, ema=ema)
            run_config = _apply_sampler(run_config, sampler)
            generator = _generator_for(generator, model, run_config)
            extractor = factory() if features else None
            fm = metrics.FrameMetrics(num_cond, num_frames - num_cond) if num_cond else None
            keep: list[tuple[np.ndarray, np.ndarray]] = []
            got = 0
            for i, batch, valid in _eval_batches(data_cfg, split_name, n, batch_size, subset_seed=proto.subset_seed,
                                                 desc=f"step {step}", progress=progress):
                video = np.asarray(batch["video"])
                rng = jax.random.fold_in(jax.random.PRNGKey(proto.seed), i)
                out_video = generator({"video": video, "label": np.asarray(batch["label"])}, rng)
                got += int(valid.sum())
                if extractor is not None:
                    extractor.update(out_video, valid)
                if fm is not None:
                    fm.update(out_video, video, valid)
                    if k == 0:
                        baseline_fm.update(metrics.copy_last_frame(video, num_cond), video, valid)
                if len(keep) < num_strips and valid.any():
                    rows = np.flatnonzero(valid)[:num_strips - len(keep)]
                    keep += [(video[r], out_video[r]) for r in rows]
            entry = {"step": int(step), "num_samples": got}
            if extractor is not None:
                stats = extractor.merged()
                entry["num_samples"] = int(stats.count)
                entry[proto.metric] = fvd.distance(stats, reference["reference"])
            else:
                entry["num_samples"] = int(fvd.allgather_float64(np.float64(got)).sum())
            if fm is not None:
                entry.update(_frame_entry(_merge_frame_metrics(fm)))
            entry["seconds"] = time.perf_counter() - t0
            result["checkpoints"].append(entry)
            if keep:   # image models: the samples alone (their "truth" is an unrelated image of the class)
                strips[f"step_{step}"] = (np.stack([t for t, _ in keep]) if num_cond else None,
                                          np.stack([s for _, s in keep]))
            if _lead():
                log.info("step %d: %s", step, {k2: v for k2, v in entry.items() if not k2.endswith("per_frame")})

    # -- baseline -------------------------------------------------------------------------------------
    if num_cond:
        base = {"name": "copy-last-frame", "description": "every predicted frame is the last conditioning frame"}
        # The same condition on every process (the merge is a collective).
        if baseline_fm is not None and (loaded is None or loaded.get("truth") is not None):
            base.update(_frame_entry(_merge_frame_metrics(baseline_fm)))
        if reference is not None and reference.get("baseline") is not None:
            base[proto.metric] = fvd.distance(reference["baseline"], reference["reference"])
        result["baseline"] = base
    result["seconds"] = time.perf_counter() - t_start

    if write and _lead():
        from evaluation import report

        out_dir = pathlib.Path(out) if out is not None else (
            (workdir / "eval") if workdir is not None else pathlib.Path(samples).parent / "eval")
        result["files"] = report.write_report(out_dir, result, strips=strips, num_cond=num_cond,
                                              title=str(workdir or samples))
    return result


def _generator_for(previous, model, config):
    """A sample.Generator for `model`; the previous one gets the new parameters when the network and
    the sampling config are the same, so its compiled sampling loop is reused across checkpoints."""
    from sid2video import sample as sample_lib

    if previous is not None and _plain(previous.config) == _plain(config):
        try:
            previous.set_model(model)
            return previous
        except ValueError:  # another network structure: compile anew
            pass
    return sample_lib.Generator(model, config)


def _frame_entry(fm: metrics.FrameMetrics) -> dict[str, Any]:
    r = fm.result()
    return {k: r[k] for k in ("psnr", "ssim", "mse", "psnr_per_frame", "ssim_per_frame", "mse_per_frame")}


def _evaluate_loaded(loaded: Mapping[str, Any], n: int, num_cond: int, factory, batch_size: int,
                     baseline_fm: metrics.FrameMetrics | None, progress: bool):
    """Features / frame metrics of the first n generated clips (process p takes rows p, p + P, ...)."""
    sample = loaded["sample"][:n]
    truth = loaded.get("truth")
    truth = None if truth is None else np.asarray(truth)[:n]
    if truth is not None and truth.shape != sample.shape:
        raise ValueError(f"'truth' has shape {truth.shape}, 'sample' {sample.shape}")
    pi, pc = jax.process_index(), jax.process_count()
    rows = np.arange(pi, n, pc)
    num_batches = math.ceil(math.ceil(n / pc) / batch_size)
    extractor = factory() if factory is not None else None
    fm = metrics.FrameMetrics(num_cond, sample.shape[1] - num_cond) if (num_cond and truth is not None) else None
    bar = _bar(num_batches, "samples", progress)
    for b in range(num_batches):
        idx = rows[b * batch_size:(b + 1) * batch_size]
        valid = np.ones(len(idx), bool)
        if len(idx) < batch_size:   # every process runs the same batches: pad with row 0, masked
            valid = np.concatenate([valid, np.zeros(batch_size - len(idx), bool)])
            idx = np.concatenate([idx, np.zeros(batch_size - len(idx), int)])
        chunk = sample[idx]
        if extractor is not None:
            extractor.update(chunk, valid)
        if fm is not None:
            fm.update(chunk, truth[idx], valid)
            baseline_fm.update(metrics.copy_last_frame(truth[idx], num_cond), truth[idx], valid)
        bar.update(1)
    bar.close()
    entry: dict[str, Any] = {"step": None, "num_samples": n}
    if extractor is not None:
        stats = extractor.merged()
        entry["num_samples"] = int(stats.count)
        entry["_stats"] = stats
    if fm is not None:
        entry.update(_frame_entry(_merge_frame_metrics(fm)))
    strip = None
    if truth is not None:
        strip = (truth[:4], sample[:4])
    elif len(sample):
        strip = (None, sample[:4])
    return entry, strip


def evaluate_sets(videos_a, videos_b, *, metric: str = "fvd", fvd_resolution: int | None = None,
                  num_cond_frames: int = 0, cond_frames_in_fvd: bool = True, num_samples: int | None = None,
                  batch_size: int = 8, feature_net=None, feature_dim: int | None = None, fid_weights=None,
                  subset_seed: int = 0, progress: bool = True) -> dict[str, Any]:
    """The FVD (or FID) between two sets of clips, e.g. test clips against training clips.

    Each set is a uint8 array [N, T, H, W, 3] (images: [N, H, W, 3]) or a data config (a mapping
    with dataset, data_dir, split, num_frames, resolution, ...) whose `split` is read in order.
    num_samples: how many of each set (default: all of each): the first ones of an array, a seeded
    random subset (`subset_positions`) of a split.
    """
    proto = Protocol(name=None, metric=metric, split=None, num_samples=num_samples,
                     fvd_resolution=None if fvd_resolution in (None, 0) else int(fvd_resolution),
                     cond_frames_in_fvd=cond_frames_in_fvd)
    if metric not in ("fvd", "fid"):
        raise ValueError(f"evaluate_sets measures 'fvd' or 'fid', got {metric!r}")

    def factory():
        return make_extractor(metric, protocol=proto, num_cond=num_cond_frames, batch_size=batch_size,
                              feature_net=feature_net, fid_weights=fid_weights, dim=feature_dim)

    if feature_net is None:
        feature_net = _load_network(metric, fid_weights)
    stats = [_set_statistics(s, factory, num_samples, batch_size, f"set {name}", progress, subset_seed)
             for name, s in (("a", videos_a), ("b", videos_b))]
    return {metric: fvd.distance(*stats), "num_samples_a": int(stats[0].count),
            "num_samples_b": int(stats[1].count), "protocol": factory().protocol()}


def _set_statistics(source, factory, num_samples, batch_size, desc, progress,
                    subset_seed: int = 0) -> frechet.RunningStatistics:
    extractor = factory()
    if isinstance(source, Mapping) or hasattr(source, "to_dict"):
        data = _data_config(source, None)
        split = data.get("split") or _default_split(data)
        n = _check_num_samples(data, split, num_samples)
        for _, batch, valid in _eval_batches(data, split, n, batch_size, subset_seed=subset_seed, desc=desc,
                                             progress=progress):
            extractor.update(np.asarray(batch["video"]), valid)
        return extractor.merged()
    array = np.asarray(source)
    if array.ndim == 4:
        array = array[:, None]
    n = len(array) if num_samples is None else int(num_samples)
    if n > len(array):
        raise ValueError(f"num_samples={n} is larger than the set, which has {len(array)} clips")
    entry, _ = _evaluate_loaded({"sample": array}, n, 0, factory, batch_size, None, progress)
    return entry["_stats"]


# ----------------------------------------------------------------------------------------------
# Command line.

def _steps_arg(value: str):
    if value in ("all", "latest", "last"):
        return value
    try:
        return [int(v) for v in value.split(",")]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"--checkpoint takes a step, comma-separated steps, 'latest' or 'all', "
                                         f"got {value!r}") from err


def _resolution_arg(value: str):
    if value == "preset":   # not given: the protocol's
        return value
    if value.lower() in ("none", "native", "0"):
        return None
    return int(value)


def _reference_arg(value: str):
    if value in ("preset", "all"):
        return value
    if value == "same":
        return None
    try:
        return int(value)
    except ValueError as err:
        raise ValueError(f"--reference_samples takes a number, 'all' or 'same', got {value!r}") from err


def _parser() -> argparse.ArgumentParser:
    from sid2video import flags

    p = flags.Parser(
        prog="sid2video evaluate", renamed=flags.SAMPLER_STEPS,
        description="FVD / FID and frame-prediction metrics (PSNR, SSIM, copy-last-frame baseline) of a "
                    "training run's checkpoints, or of generated samples given by path.")
    p.add_argument("--workdir", help="training run directory (its checkpoints and config)")
    p.add_argument("--samples", help="generated samples to evaluate instead: .npz (sid2video sample), .npy, "
                                     "or a folder of MP4s / images")
    p.add_argument("--metric", choices=METRICS, default=None,
                   help="fvd (video), fid (images) or frames (PSNR/SSIM only); default from the protocol/data")
    p.add_argument("--protocol", default=None, choices=sorted(PROTOCOLS) + ["none"],
                   help="published protocol preset: split, number of samples, FVD resolution")
    p.add_argument("--num_samples", type=int, default=None, help="clips to evaluate (default: protocol or split)")
    p.add_argument("--checkpoint", type=_steps_arg, default=None,
                   help="step, comma-separated steps, 'latest' (default) or 'all'")
    p.add_argument("--split", default=None, help="data split (default: protocol's, else config.data.eval_split)")
    p.add_argument("--reference_samples", default="preset",
                   help="clips behind the reference statistics: a number, 'all' (whole split) or 'same' "
                        "(the evaluated clips; default unless the protocol says otherwise)")
    p.add_argument("--subset_seed", type=int, default=0,
                   help="seed of the random subset of the split when --num_samples is below its size")
    p.add_argument("--cond_frames_in_fvd", action="store_const", const=True, default=None,
                   help="FVD sees the conditioning frames as part of each clip (the default)")
    p.add_argument("--no_cond_frames_in_fvd", action="store_const", const=False, dest="cond_frames_in_fvd",
                   help="FVD sees the predicted frames only")
    p.add_argument("--fvd_resolution", type=_resolution_arg, default="preset",
                   help="resize frames to this size before I3D (Kinetics600: 64); 'none' keeps them")
    p.add_argument("--batch_size", type=int, default=8, help="rows per process per batch")
    p.add_argument("--data_dir", default=None, help="dataset folder (default: the run's config.data.data_dir)")
    p.add_argument("--dataset", default=None, help="with --samples and no --workdir: the dataset name")
    p.add_argument("--num_frames", type=int, default=None, help="with --dataset: frames per clip")
    p.add_argument("--resolution", type=int, default=None, help="with --dataset: frame size")
    p.add_argument("--num_cond_frames", type=int, default=None, help="conditioning frames (default: config's)")
    p.add_argument("--out", default=None, help="report folder (default WORKDIR/eval)")
    p.add_argument("--cache_dir", default=None, help="reference statistics cache (default WORKDIR/eval_cache)")
    p.add_argument("--fid_weights", default=None, help="pytorch-fid's pt_inception-2015-12-05 weights file")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--raw", action="store_true", help="use the raw parameters instead of the EMA")
    p.add_argument("--no_baseline_fvd", action="store_true", help="skip the copy-last-frame baseline's FVD")
    p.add_argument("--strips", type=int, default=4, help="clips shown in the sample strips")
    flags.add_sampler_flags(p)
    p.add_argument("--no_progress", action="store_true", help="no progress bars")
    from sid2video import sharding

    sharding.add_distributed_flags(p)
    return p


def run(argv: Sequence[str]) -> int:
    """`sid2video evaluate ...`: prints the result summary; returns 0, or 2 with a message on bad input."""
    args = _parser().parse_args(list(argv))
    import absl.flags

    absl.flags.FLAGS.mark_as_parsed()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from sid2video import sharding

    sharding.join_from_flags(args)
    from sid2video import flags

    sampler = flags.sampler_overrides(args)
    if "guidance_interval" in sampler and sampler["guidance_interval"] is None:
        sampler["guidance_interval"] = "none"  # evaluate() skips None overrides; 'none' turns it off
    data = None
    if args.dataset:
        data = {"dataset": args.dataset, "data_dir": args.data_dir}
        if args.num_frames:
            data["num_frames"] = args.num_frames
        if args.resolution:
            data["resolution"] = args.resolution
        if args.num_cond_frames is not None:
            data["num_cond_frames"] = args.num_cond_frames
    try:
        result = evaluate(
            args.workdir, metric=args.metric, num_samples=args.num_samples, protocol=args.protocol,
            checkpoint=args.checkpoint, batch_size=args.batch_size, split=args.split,
            fvd_resolution=args.fvd_resolution, cond_frames_in_fvd=args.cond_frames_in_fvd,
            data_dir=args.data_dir, data=data, samples=args.samples, num_cond_frames=args.num_cond_frames,
            sampler=sampler, ema=not args.raw, seed=args.seed, out=args.out, cache_dir=args.cache_dir,
            baseline=not args.no_baseline_fvd, num_strips=args.strips, fid_weights=args.fid_weights,
            reference_samples=_reference_arg(args.reference_samples), subset_seed=args.subset_seed,
            progress=not args.no_progress)
    except (FileNotFoundError, ValueError, TypeError) as err:
        print(f"sid2video evaluate: error: {err}", file=sys.stderr)
        return 2
    if _lead():
        from evaluation import report

        print(report.summary(result))
    return 0
