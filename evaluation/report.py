"""Evaluation reports: result.json, report.md, sample strips and metric plots (PNG).

`write_report(out_dir, result, strips=..., num_cond=...)` writes

    result.json          the harness's result, strict JSON (every number finite; an undefined value
                         is null, with the reason beside it as '<name>_na')
    report.md            the protocol (dataset, split, N, resolution, sampler, whether FVD counts the
                         conditioning frames), a results table with the copy-last-frame baseline,
                         published numbers for the protocol, the figures and the sample strips
    metric_vs_step.png   FVD / FID (and PSNR / SSIM) against training step, when several
                         checkpoints were evaluated
    frame_metrics.png    PSNR and SSIM per predicted frame: model(s) against the baseline
    samples_<tag>.png    a few clips as rows of frames (draw.strip): ground truth above each
                         sample, conditioning frames framed in green, predicted frames in red

Plots use matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

import json
import math
import pathlib
from typing import Any, Mapping, Sequence

import numpy as np

from sid2video import draw, render

__all__ = ["write_report", "write_json", "plot_metric_vs_step", "plot_frame_metrics", "summary", "markdown",
           "jsonable"]

_NAMES = {"fvd": "FVD", "fid": "FID", "psnr": "PSNR (dB)", "ssim": "SSIM", "mse": "MSE"}


# ----------------------------------------------------------------------------------------------
# JSON.

def jsonable(value: Any) -> Any:
    """Plain JSON values: numpy scalars/arrays to Python; a non-finite float becomes None (null), so the
    file parses as strict JSON (the evaluators report finite numbers or None with a reason)."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items() if not str(k).startswith("_")}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, pathlib.Path):
        return str(value)
    return value


def write_json(path, result: Mapping[str, Any]) -> pathlib.Path:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(jsonable(result), indent=2, allow_nan=False) + "\n")
    return path


def _num(value) -> float | None:
    """A float from a result value, None when absent or undefined."""
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _fmt(value, digits: int = 2) -> str:
    """A table cell: the number, or 'n/a' where it is undefined (the notes say why)."""
    v = _num(value)
    if v is None or not math.isfinite(v):
        return "n/a"
    return f"{v:.{digits}f}"


def _na_notes(result: Mapping[str, Any]) -> list[str]:
    """'<metric> n/a for <row>: <reason>' for every undefined value, and the exact-frame counts."""
    rows = [(f"step {c['step']}" if c.get("step") is not None else "the samples", c)
            for c in result.get("checkpoints", [])]
    if result.get("baseline"):
        rows.append(("the copy-last-frame baseline", result["baseline"]))
    notes = []
    for name, row in rows:
        for key, reason in row.items():
            if key.endswith("_na") and reason:
                notes.append(f"{_NAMES.get(key[:-3], key[:-3])} is n/a for {name}: {reason}")
        if row.get("exact_frames"):
            notes.append(f"{row['exact_frames']} predicted frame(s) of {name} equal the truth exactly; their "
                         f"PSNR counts as the cap")
    return notes


# ----------------------------------------------------------------------------------------------
# Plots.

def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _finite(values) -> np.ndarray:
    a = np.array([np.nan if _num(v) is None else _num(v) for v in values], np.float64)
    a[~np.isfinite(a)] = np.nan
    return a


def plot_metric_vs_step(path, checkpoints: Sequence[Mapping[str, Any]], *, metric: str,
                        baseline: Mapping[str, Any] | None = None) -> pathlib.Path | None:
    """Panels of FVD/FID and PSNR/SSIM against training step; the baseline as a dashed line."""
    entries = [c for c in checkpoints if c.get("step") is not None]
    names = [m for m in (metric, "psnr", "ssim") if m in _NAMES and any(_num(c.get(m)) is not None for c in entries)]
    if len(entries) < 2 or not names:
        return None
    plt = _pyplot()
    steps = [c["step"] for c in entries]
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.4), squeeze=False)
    for ax, name in zip(axes[0], names):
        ax.plot(steps, _finite(c.get(name) for c in entries), "o-", label="model (EMA)")
        if baseline is not None and _num(baseline.get(name)) is not None and math.isfinite(_num(baseline[name])):
            ax.axhline(_num(baseline[name]), color="gray", ls="--", label="copy last frame")
        ax.set_xlabel("training step")
        ax.set_ylabel(_NAMES[name])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{_NAMES.get(metric, metric)} against training step")
    fig.tight_layout()
    path = pathlib.Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_frame_metrics(path, checkpoints: Sequence[Mapping[str, Any]], baseline: Mapping[str, Any] | None,
                       *, num_cond: int = 0) -> pathlib.Path | None:
    """PSNR and SSIM per predicted frame (x: frame index in the clip) for each checkpoint and the baseline.

    Undefined values (None) are gaps in the curve.
    """
    names = [m for m in ("psnr", "ssim") if any(c.get(f"{m}_per_frame") for c in checkpoints)
             or (baseline and baseline.get(f"{m}_per_frame"))]
    if not names:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(names), figsize=(4.6 * len(names), 3.4), squeeze=False)
    for ax, name in zip(axes[0], names):
        for c in checkpoints:
            values = c.get(f"{name}_per_frame")
            if values:
                x = np.arange(num_cond + 1, num_cond + 1 + len(values))
                label = "model" if c.get("step") is None else f"step {c['step']}"
                ax.plot(x, _finite(values), "o-", ms=3, label=label)
        if baseline and baseline.get(f"{name}_per_frame"):
            values = baseline[f"{name}_per_frame"]
            x = np.arange(num_cond + 1, num_cond + 1 + len(values))
            ax.plot(x, _finite(values), "s--", ms=3, color="gray", label="copy last frame")
        ax.set_xlabel("frame (1-based; predicted frames only)")
        ax.set_ylabel(_NAMES[name])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("per predicted frame: model against the copy-last-frame baseline")
    fig.tight_layout()
    path = pathlib.Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------------------------
# Markdown.

def _cond_line(p: Mapping[str, Any]) -> str:
    if p.get("metric") != "fvd":
        return "not applicable (no FVD in this evaluation)"
    n, c, seen = p.get("num_frames"), p.get("num_cond_frames") or 0, p.get("frames_seen_by_fvd")
    if not c:
        return f"not applicable (no conditioning frames); FVD sees all {n} frames"
    if p.get("cond_frames_in_fvd"):
        return f"**yes**: FVD sees whole {seen}-frame clips, the {c} given conditioning frames included"
    return f"**no**: FVD sees only the {seen} predicted frames (the {c} conditioning frames are cut off)"


def _protocol_rows(result: Mapping[str, Any], metric: str) -> list[tuple[str, Any]]:
    """The protocol table of the report: (name, value) rows."""
    p = result.get("protocol", {})
    res = p.get("resolution")
    clip = f"{p.get('num_frames')} frame{'s' if (p.get('num_frames') or 1) > 1 else ''} at {res}²" \
        if not isinstance(res, (list, tuple)) else f"{p.get('num_frames')} frames at {res[0]}×{res[1]}"
    if p.get("num_cond_frames"):
        clip += f" (stride {p.get('frame_stride', 1)}): {p['num_cond_frames']} conditioning, " \
                f"{p.get('num_predicted_frames')} predicted"
    rows = [
        ("dataset", f"{p.get('dataset')} (`{p.get('data_dir')}`)"),
        ("split", p.get("split")),
        ("samples (N)", p.get("num_samples")),
        ("clips evaluated", f"{p.get('clips')}; the split has {p.get('split_size')}" if p.get("clips") else "–"),
        ("clips", clip),
        ("metric", {"fvd": "FVD: I3D (Kinetics-400) logits averaged over time; frames "
                           + (f"resized to {p.get('fvd_resolution')}² then " if p.get("fvd_resolution") else "")
                           + "bilinearly to 224², in [−1, 1]",
                    "fid": "FID: InceptionV3 pool3 (2048-d) at 299²",
                    "frames": "PSNR / SSIM of the predicted frames only"}.get(metric, metric)),
        ("conditioning frames in FVD", _cond_line(p)),
    ]
    if p.get("sampler"):
        s = p["sampler"]
        rows.append(("sampler", ", ".join(f"{k}={jsonable(v)}" for k, v in s.items())))
    rows.append(("parameters", "EMA" if p.get("ema", True) else "raw (no EMA)"))
    rows.append(("seed", p.get("seed")))
    rows.append(("devices", f"{p.get('devices')} on {p.get('processes')} process(es), "
                            f"{p.get('batch_size_per_process')} rows per process per batch"))
    if p.get("feature_network_sha256"):
        rows.append(("feature network", f"{p.get('feature_network')}; parameters sha256 "
                                        f"`{str(p['feature_network_sha256'])[:16]}…`"))
    ref = result.get("reference")
    if ref:
        n_ref = ref.get("num_samples")
        which = ("the whole split" if n_ref == p.get("split_size") else
                 "the evaluated clips" if n_ref == p.get("num_samples") else "a random subset of the split")
        rows.append(("reference statistics", f"{n_ref} clips ({which}), "
                                             f"{'read from' if ref.get('cache_hit') else 'computed, saved to'} "
                                             f"`{ref.get('cache_file')}`"))
    if result.get("samples"):
        rows.append(("generated samples", f"`{result['samples']}`"))
    return rows


def markdown(result: Mapping[str, Any], figures: Mapping[str, str], strips: Mapping[str, str],
             title: str = "", paired: bool = True) -> str:
    """The Markdown report; `paired`: the strips show ground truth above each sample."""
    p = result.get("protocol", {})
    metric = result.get("metric", "fvd")
    mname = _NAMES.get(metric, metric)
    lines = [f"# Evaluation{': ' + title if title else ''}", ""]
    if p.get("description"):
        lines += [f"Protocol **{p.get('name')}**: {p['description']}.", ""]
    rows = _protocol_rows(result, metric)
    lines += ["## Protocol", "", "| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows] + [""]

    # Results table.
    has = {m: any(m in c for c in result.get("checkpoints", [])) or m in (result.get("baseline") or {})
           for m in (metric, "psnr", "ssim")}
    cols = [m for m in ([metric] if metric in ("fvd", "fid") else []) + ["psnr", "ssim"] if has.get(m)]
    header = "| checkpoint | " + " | ".join(_NAMES[m] for m in cols) + " | N | time |"
    lines += ["## Results", "", header, "|" + "---|" * (len(cols) + 3)]
    for c in result.get("checkpoints", []):
        name = f"step {c['step']}" if c.get("step") is not None else "samples"
        secs = f"{c['seconds']:.1f} s" if _num(c.get("seconds")) is not None else "–"
        lines.append(f"| {name} | " + " | ".join(_fmt(c.get(m), 4 if m == "ssim" else 2) for m in cols)
                     + f" | {c.get('num_samples')} | {secs} |")
    base = result.get("baseline")
    if base:
        lines.append("| copy last frame (baseline) | " + " | ".join(
            _fmt(base.get(m), 4 if m == "ssim" else 2) for m in cols) + f" | {p.get('num_samples')} | – |")
    lines.append("")
    if metric in ("fvd", "fid"):
        lines += [f"Lower {mname} is better; higher PSNR / SSIM is better.", ""]
    if "psnr" in cols:
        psnr_rule = (result.get("conventions") or {}).get("psnr", "mean over clips and predicted frames")
        lines += [f"PSNR: {psnr_rule}. SSIM: mean over clips and predicted frames (uint8 frames, 11×11 "
                  "Gaussian window, σ 1.5).", ""]
    quoted = result.get("quoted")
    if quoted:
        lines += [f"Published {quoted['metric']} under this protocol (for orientation; only comparable at the "
                  "full protocol):", "", "| model | value |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in quoted["results"].items()] + [""]

    if figures:
        lines += ["## Figures", ""]
        captions = {"metric_vs_step": f"{mname} against training step",
                    "frame_metrics": "PSNR and SSIM per predicted frame: model against the copy-last-frame baseline"}
        for name, rel in figures.items():
            lines += [f"![{captions.get(name, name)}]({rel})", "", f"*{captions.get(name, name)}*", ""]
    if strips:
        if paired:
            caption = ("Each clip is a pair of rows: the ground truth above the generated clip. "
                       + ("Green frames are the given conditioning frames, red frames are predicted."
                          if p.get("num_cond_frames") else ""))
        elif (p.get("num_frames") or 1) == 1:
            caption = "Generated images."
        else:
            caption = "Generated clips, one per row" + (
                "; green frames are the given conditioning frames, red frames are predicted."
                if p.get("num_cond_frames") else ".")
        lines += ["## Samples", "", caption, ""]
        for name, rel in strips.items():
            lines += [f"![{name}]({rel})", "", f"*{name.replace('_', ' ')}*", ""]
    notes = list(result.get("notes") or []) + _na_notes(result)
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(lines)


def summary(result: Mapping[str, Any]) -> str:
    """A few lines for the terminal."""
    metric = result.get("metric", "fvd")
    p = result.get("protocol", {})
    out = [f"{p.get('dataset')}/{p.get('split')}, N={p.get('num_samples')}, "
           f"conditioning frames in FVD: {_cond_line(p).replace('**', '')}"]
    for c in result.get("checkpoints", []):
        name = f"step {c['step']}" if c.get("step") is not None else "samples"
        parts = [f"{_NAMES[m]} {_fmt(c.get(m), 4 if m == 'ssim' else 2)}" for m in (metric, "psnr", "ssim")
                 if m in _NAMES and m in c]
        out.append(f"  {name}: " + ", ".join(parts))
    base = result.get("baseline")
    if base:
        parts = [f"{_NAMES[m]} {_fmt(base.get(m), 4 if m == 'ssim' else 2)}" for m in (metric, "psnr", "ssim")
                 if m in _NAMES and m in base]
        out.append("  copy last frame: " + ", ".join(parts))
    files = result.get("files") or {}
    if files.get("report"):
        out.append(f"report: {files['report']}")
    return "\n".join(out)


def write_report(out_dir, result: dict, *, strips: Mapping[str, Any] | None = None, num_cond: int = 0,
                 title: str = "") -> dict[str, Any]:
    """Writes result.json, report.md and the PNGs into out_dir; returns {'result', 'report', 'figures', 'strips'}.

    strips: {tag: (truth [n, T, H, W, C] or None, samples [n, T, H, W, C])}.
    """
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    metric = result.get("metric", "fvd")
    figures: dict[str, str] = {}
    path = plot_metric_vs_step(out / "metric_vs_step.png", result.get("checkpoints", []), metric=metric,
                               baseline=result.get("baseline"))
    if path:
        figures["metric_vs_step"] = path.name
    if num_cond:
        path = plot_frame_metrics(out / "frame_metrics.png", result.get("checkpoints", []), result.get("baseline"),
                                  num_cond=num_cond)
        if path:
            figures["frame_metrics"] = path.name
    strip_files: dict[str, str] = {}
    paired = True
    for tag, (truth, sample) in (strips or {}).items():
        paired = paired and truth is not None
        if truth is not None:
            rows, group = [r for pair in zip(truth, sample) for r in pair], 2
        elif sample.shape[1] == 1:   # images: one row of them
            rows, group = [sample[:, 0]], 1
        else:
            rows, group = list(sample), 1
        name = f"samples_{tag}.png"
        render.write_png(out / name, draw.strip(rows, num_cond=num_cond, group=group))
        strip_files[tag] = name
    files = {"result": str(out / "result.json"), "report": str(out / "report.md"),
             "figures": {k: str(out / v) for k, v in figures.items()},
             "strips": {k: str(out / v) for k, v in strip_files.items()}}
    result["files"] = files
    (out / "report.md").write_text(markdown(result, figures, strip_files, title, paired) + "\n")
    write_json(out / "result.json", result)
    return files
