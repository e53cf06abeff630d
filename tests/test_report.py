"""Evaluation reports: strict result.json, report.md contents, sample strips and plots."""

import json
import re

import numpy as np
import pytest
from PIL import Image

from evaluation import report


def _clip(colors, size=8):
    """A clip whose frame t is the constant colour colors[t]: uint8 [T, size, size, 3]."""
    return np.stack([np.full((size, size, 3), c, np.uint8) for c in colors])


def _result(steps, *, cond_in_fvd=True):
    ckpts = []
    for i, s in enumerate(steps):
        ckpts.append({"step": s, "num_samples": 6, "fvd": 300.0 / (i + 1), "psnr": 20.0 + i, "ssim": 0.5 + 0.1 * i,
                      "psnr_per_frame": [22.0 + i, 19.0 + i, float("inf")], "ssim_per_frame": [0.7, 0.5, 0.4],
                      "seconds": 1.5, "_stats": object()})
    return {
        "metric": "fvd",
        "protocol": {"name": "kinetics600", "description": "test protocol", "metric": "fvd", "dataset": "kinetics600",
                     "data_dir": "/data/k600", "split": "test", "num_samples": 6, "num_frames": 16,
                     "num_cond_frames": 5, "num_predicted_frames": 11, "resolution": 128, "frame_stride": 1,
                     "fvd_resolution": 64, "cond_frames_in_fvd": cond_in_fvd,
                     "frames_seen_by_fvd": 16 if cond_in_fvd else 11, "seed": 0, "ema": True,
                     "sampler": {"method": "addim", "num_steps": 128, "guidance": 0.0, "guidance_interval": None},
                     "devices": 1, "processes": 1, "batch_size_per_process": 8},
        "checkpoints": ckpts,
        "baseline": {"name": "copy-last-frame", "fvd": 500.0, "psnr": 18.0, "ssim": 0.45,
                     "psnr_per_frame": [21.0, 18.0, 15.0], "ssim_per_frame": [0.6, 0.4, 0.3]},
        "reference": {"num_samples": 6, "cache_file": "/w/eval_cache/x.npz", "cache_hit": True},
        "quoted": {"metric": "FVD_50k", "results": {"SiD2": 2.3}},
        "notes": ["a note"],
    }


def test_write_report_several_checkpoints(tmp_path):
    strips = {"step_300": (np.stack([_clip([(0, 0, 0)] * 16)] * 2), np.stack([_clip([(9, 9, 9)] * 16)] * 2))}
    result = _result([100, 200, 300])
    files = report.write_report(tmp_path, result, strips=strips, num_cond=5, title="run")
    # Strict JSON: a non-finite number (none should reach the report) becomes null, private entries are dropped.
    saved = json.loads((tmp_path / "result.json").read_text(),
                       parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert saved["checkpoints"][0]["psnr_per_frame"][2] is None
    assert "_stats" not in saved["checkpoints"][0]
    assert saved["files"]["report"] == files["report"]

    md = (tmp_path / "report.md").read_text()
    assert "| conditioning frames in FVD | **yes**: FVD sees whole 16-frame clips, the 5 given" in md
    assert "| split | test |" in md and "| samples (N) | 6 |" in md and "resized to 64²" in md
    assert "method=addim" in md and "num_steps=128" in md
    assert "| step 100 | 300.00 | 20.00 | 0.5000 | 6 |" in md
    assert "| step 300 | 100.00 | 22.00 | 0.7000 | 6 |" in md
    assert "| copy last frame (baseline) | 500.00 | 18.00 | 0.4500 |" in md
    assert "| SiD2 | 2.3 |" in md and "- a note" in md
    for name in ("metric_vs_step.png", "frame_metrics.png", "samples_step_300.png"):
        assert f"]({name})" in md
        with Image.open(tmp_path / name) as img:
            assert img.format == "PNG"
            pixels = np.asarray(img.convert("L"))
            assert pixels.std() > 1    # something is drawn
    with Image.open(tmp_path / "samples_step_300.png") as img:
        assert img.size == (16 * 68, 4 * 68 + 6)     # 2 clips × (truth, sample), 16 frames of 64² + border


def test_single_checkpoint_has_no_step_plot_and_states_cut_conditioning(tmp_path):
    result = _result([100], cond_in_fvd=False)
    report.write_report(tmp_path, result, num_cond=5)
    md = (tmp_path / "report.md").read_text()
    assert not (tmp_path / "metric_vs_step.png").exists() and "metric_vs_step" not in md
    assert "**no**: FVD sees only the 11 predicted frames (the 5 conditioning frames are cut off)" in md
    text = report.summary(result)
    assert "FVD 300.00" in text and "copy last frame: FVD 500.00" in text


def test_jsonable():
    out = report.jsonable({"a": np.float32(1.5), "b": np.arange(3), "c": (float("-inf"), float("nan")),
                           "_hidden": 1, "d": {"e": np.int64(4)}})
    assert out == {"a": 1.5, "b": [0, 1, 2], "c": [None, None], "d": {"e": 4}}
    assert report._fmt(float("inf")) == report._fmt(None) == "n/a" and report._fmt(2.0) == "2.00"


def test_undefined_values_are_na_with_their_reason(tmp_path):
    """A value the evaluators cannot define is null in result.json and 'n/a' in report.md with the
    reason in the notes; exact frames are counted beside the capped PSNR; nothing is inf or NaN."""
    result = _result([100])
    result["conventions"] = {"psnr": "mean of per-frame PSNR capped at 100 dB"}
    c = result["checkpoints"][0]
    c.update(fvd=None, fvd_na="needs at least 2 clips", ssim=None, ssim_na="frames too small",
             psnr_per_frame=[22.0, 19.0, 100.0], exact_frames=3)
    report.write_report(tmp_path, result, num_cond=5)
    saved = json.loads((tmp_path / "result.json").read_text(),
                       parse_constant=lambda k: pytest.fail(f"non-standard JSON constant {k}"))
    assert saved["checkpoints"][0]["fvd"] is None and saved["checkpoints"][0]["fvd_na"] == "needs at least 2 clips"
    md = (tmp_path / "report.md").read_text()
    assert "| step 100 | n/a | 20.00 | n/a | 6 |" in md
    assert "- FVD is n/a for step 100: needs at least 2 clips" in md
    assert "- SSIM is n/a for step 100: frames too small" in md
    assert "3 predicted frame(s) of step 100 equal the truth exactly" in md
    assert "PSNR: mean of per-frame PSNR capped at 100 dB" in md
    assert not re.search(r"\binf\b|\bnan\b|∞", md, flags=re.IGNORECASE)
    assert "FVD n/a" in report.summary(result)
