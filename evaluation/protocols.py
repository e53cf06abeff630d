"""Evaluation protocols: what a number means (SPEC §7).

A `Protocol` fixes the metric, the split, the number of samples, the FVD resolution, whether FVD
sees the conditioning frames and which clips the reference statistics come from. `PROTOCOLS`
holds the presets of the published numbers; `resolve_protocol` puts explicit arguments on top of a
preset. `protocol_record` is the protocol as result.json and report.md state it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

__all__ = ["METRICS", "PROTOCOLS", "Protocol", "resolve_protocol", "protocol_record", "is_preset", "check_metric",
           "expectation_notes"]

METRICS = ("fvd", "fid", "frames")

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


def is_preset(name: str | None) -> bool:
    """Whether `name` names a preset (None, '', 'none' and 'default' name none)."""
    return name not in (None, "", "none", "default")


def resolve_protocol(name: str | None = None, *, metric: str | None = None, split: str | None = None,
                     num_samples: int | None = None, fvd_resolution: int | None | str = "preset",
                     cond_frames_in_fvd: bool | None = None, seed: int = 0,
                     reference_samples: int | str | None = "preset", subset_seed: int = 0) -> Protocol:
    """A preset (or none) with explicit arguments on top; 'preset' (fvd_resolution, reference_samples)
    keeps the preset's value."""
    if not is_preset(name):
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


def protocol_record(proto: Protocol, *, dataset: str, data_dir: Any, split: str, num_samples: int,
                    split_size: int, clips: str, reference_samples: int | None, num_frames: int, num_cond: int,
                    resolution: Any, frame_stride: int, batch_size: int, processes: int, devices: int,
                    ema: bool) -> dict[str, Any]:
    """The protocol as result.json and report.md state it."""
    fvd = proto.metric == "fvd"
    return {
        "name": proto.name, "description": proto.description, "metric": proto.metric,
        "dataset": dataset, "data_dir": str(data_dir), "split": split, "num_samples": num_samples,
        "split_size": split_size, "clips": clips, "reference_samples": reference_samples,
        "num_frames": num_frames, "num_cond_frames": num_cond,
        "num_predicted_frames": num_frames - num_cond if num_cond else None,
        "resolution": resolution, "frame_stride": frame_stride,
        "fvd_resolution": proto.fvd_resolution if fvd else None,
        "cond_frames_in_fvd": proto.cond_frames_in_fvd if fvd else None,
        "frames_seen_by_fvd": (num_frames if proto.cond_frames_in_fvd else num_frames - num_cond) if fvd else None,
        "seed": proto.seed, "batch_size_per_process": batch_size, "processes": processes,
        "devices": devices, "ema": ema,
    }


def expectation_notes(proto: Protocol, have: Mapping[str, Any]) -> list[str]:
    """A note when the run differs from what the preset assumes (numbers not comparable)."""
    if not proto.expect:
        return []
    off = {k: (have.get(k), v) for k, v in proto.expect.items() if have.get(k) != v}
    if not off:
        return []
    return [f"the {proto.name} protocol assumes " + ", ".join(
        f"{k}={v[1]} (this run: {v[0]})" for k, v in off.items()) + "; the numbers are not comparable "
        "with the published ones"]


def check_metric(proto: Protocol, num_frames: int, num_cond: int) -> None:
    """ValueError when the metric does not fit the data (FVD of images, FID of video, ...)."""
    if proto.metric == "fvd" and num_frames == 1:
        raise ValueError("FVD needs video; this dataset has single images (num_frames=1): use --metric fid")
    if proto.metric == "fid" and num_frames > 1:
        raise ValueError(f"FID measures images; this dataset has {num_frames}-frame clips: use --metric fvd")
    if proto.metric == "frames" and not num_cond:
        raise ValueError("frame metrics (PSNR/SSIM) need a frame-prediction model (num_cond_frames > 0)")
    if proto.metric == "fvd":
        from evaluation import fvd

        fvd.check_clip(num_frames, num_cond, proto.cond_frames_in_fvd)
