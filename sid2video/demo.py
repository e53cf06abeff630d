"""`sid2video demo`: the whole framework on embedded data, on one CPU, in about ten minutes.

Video (default): write the moving-digits dataset (real MP4s in the Kinetics600 layout, with the
digits' positions saved), train the tiny 5 -> 11 frame-prediction config with the real trainer,
grain loader and checkpoints, predict held-out clips with the config's sampler (DDPM-32) from the
EMA parameters, measure PSNR / SSIM per predicted frame, the digit's position error, whether each
predicted frame shows the clip's digit (a classifier trained on the training clips) and FVD, each
beside the copy-last-frame baseline, render MP4s and write a Markdown report with plots.

Images (`--images`): the same for a class-conditional digits model (T = 1): samples with and
without classifier-free guidance, scored by a classifier the demo trains on the real digits.
"""

from __future__ import annotations

import argparse
import json
import logging
import pathlib
import sys
import time
import warnings
from typing import Any, NamedTuple

import numpy as np

from sid2video import demo_positions, devices, flags

log = logging.getLogger("sid2video.demo")

# Written at 32², read at the config's resolution (16²): the loader's resize smooths the glyphs.
VIDEO_DATA = dict(height=32, width=32, digit_size=16, num_digits=1, num_frames=24, max_speed=2)
IMAGE_SIZE = 16
# Default training budgets: with data, evaluation (FVD on the CPU for video, about a minute) and
# start-up each demo ends within 10 minutes on a 2-core machine.
MINUTES = {"video": 7.0, "images": 8.5}
# Every digit fills its 16² frame (centred, like MNIST); only its colour and handwriting vary.
# At a random scale and position (synthetic.DIGIT_SCALE) the same 7 minutes gave 37 % guided
# samples recognised against 77 % here (README, demo section).
IMAGE_SCALE = (1.0, 1.0)


def load_config(variant: str, overrides: list[tuple[str, str]] = ()):
    """The shipped configs/demo.py:<variant> with `--config.key=value` overrides, (key, text),
    applied and the whole config checked."""
    return flags.load_config("sid2video demo", f"demo:{variant}", list(overrides))


def _configure(variant: str, data_dir: pathlib.Path, seed: int, sampler_steps: int | None,
               overrides: list[tuple[str, str]]):
    """The demo config pointed at the written data, with the command line's settings."""
    config = load_config(variant, overrides)
    config.data.data_dir = str(data_dir)
    config.seed = seed
    if sampler_steps:
        config.sampler.num_steps = sampler_steps
    return config


def _runs_on_cpu() -> bool:
    import jax

    return jax.default_backend() == "cpu"


def _say(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


def _train(config, run_dir: pathlib.Path, *, minutes: float | None, steps: int | None) -> dict:
    from sid2video import train

    if steps is None:
        steps = config.train.num_steps
    config.train.checkpoint_every = max(1, min(config.train.checkpoint_every, steps))
    config.train.log_every = max(1, min(config.train.log_every, steps))
    budget = f"{minutes:g} minutes" if minutes else "no time limit"
    _say(f"training {steps} steps at most ({budget}) in {run_dir}")
    return train.fit(config, run_dir, steps=steps, minutes=minutes)


def _loss_curve(run_dir: pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
    rows = [json.loads(line) for line in open(run_dir / "metrics.jsonl")]
    return np.asarray([r["step"] for r in rows]), np.asarray([r["loss"] for r in rows])


# ----------------------------------------------------------------------------- video


def video_demo(workdir: pathlib.Path, *, minutes: float | None, steps: int | None, num_eval: int,
               sampler_steps: int | None, fvd: bool, seed: int, train_clips: int,
               overrides: list[tuple[str, str]] = ()) -> dict:
    """Writes the data, trains, predicts `num_eval` test clips, measures them and writes the report."""
    t0 = time.time()
    data_dir = workdir / "data"
    _write_moving_digits(data_dir, seed, {"train": train_clips, "val": 8, "test": num_eval})

    config = _configure("video", data_dir, seed, sampler_steps, overrides)
    run_dir = workdir / "run"
    _say("2/5 training the tiny frame-prediction model (5 given frames -> 11 predicted)")
    summary = _train(config, run_dir, minutes=minutes, steps=steps)

    _say(f"3/5 predicting {num_eval} held-out clips with {config.sampler.method} "
         f"({config.sampler.num_steps} steps) from the EMA parameters")
    clips = _predict_test_clips(run_dir, data_dir, num_eval, seed)

    _say("4/5 measuring predictions and the copy-last-frame baseline")
    truth_BTHWC = clips.videos["truth"]
    result: dict[str, Any] = {"step": clips.step, "train": {k: v for k, v in summary.items() if k != "last_metrics"},
                              "num_clips": len(truth_BTHWC), "num_cond": clips.num_cond, "sampler": clips.sampler}
    per_frame = _score_predictions(result, clips, _digit_positions(data_dir, clips))
    _score_recognition(result, per_frame, clips, config, data_dir, seed)
    if fvd:
        _score_fvd(result, clips)

    _say("5/5 rendering MP4s and writing the report")
    result["renders"] = _render_predictions(workdir, run_dir, clips)
    result["strip"], result["strip_frames"] = _report_strip(workdir, clips)
    result["seconds"] = time.time() - t0
    _video_report(workdir, run_dir, result, per_frame)
    return result


# Written last into the demo's data folder: what was written (counts, seed, sizes).
DATA_MARKER = "DONE.json"


def _needs_writing(data_dir: pathlib.Path, wanted: dict) -> bool:
    """Whether the demo's data must be written: not there yet, or written with other settings
    (then the old folder is removed first, so no clip of the old set stays behind and gets indexed)."""
    import shutil

    marker = data_dir / DATA_MARKER
    if not marker.exists():
        return True
    if json.loads(marker.read_text()) == wanted:
        return False
    shutil.rmtree(data_dir)
    return True


def _write_moving_digits(data_dir: pathlib.Path, seed: int, counts: dict[str, int]) -> None:
    """The moving-digits dataset in `data_dir`, written unless the same one is already there."""
    from sid2video.data import synthetic

    wanted = {"counts": counts, "seed": seed, **VIDEO_DATA}
    if _needs_writing(data_dir, wanted):
        _say(f"1/5 writing the moving-digits dataset ({sum(counts.values())} MP4 clips) to {data_dir}")
        synthetic.write_moving_digits(data_dir, seed=seed, counts=counts, **VIDEO_DATA)
        (data_dir / DATA_MARKER).write_text(json.dumps(wanted))
    else:
        _say(f"1/5 the moving-digits dataset is already in {data_dir}")


class _Predictions(NamedTuple):
    """Test clips and their predictions: `videos` maps truth, model and copy_last_frame to uint8
    [B, T, H, W, 3]; `keys` and `starts` name each clip's video and first frame."""

    videos: dict[str, np.ndarray]
    num_cond: int
    keys: list[str]
    starts: np.ndarray
    step: int
    sampler: dict


def _predict_test_clips(run_dir: pathlib.Path, data_dir: pathlib.Path, num_eval: int, seed: int) -> _Predictions:
    """The first `num_eval` test clips of `data_dir` (this demo's data, wherever the run was
    trained) predicted from their given frames with the EMA parameters, and the copy-last-frame
    baseline."""
    import jax

    from evaluation import metrics
    from sid2video import checkpoint, sample
    from sid2video.data import pipeline

    model, run_config, step = checkpoint.load_model(run_dir)
    run_config.data.data_dir = str(data_dir)
    generator = sample.Generator(model, run_config)
    it = pipeline.make_eval_iterator(run_config.data, batch_size=num_eval, split="test")
    batch = next(it)
    keep = np.asarray(batch["mask"], bool)
    truth_BTHWC = np.asarray(batch["video"])[keep]
    pred_BTHWC = generator({"video": truth_BTHWC}, jax.random.PRNGKey(seed))
    num_cond = generator.num_cond
    baseline_BTHWC = metrics.copy_last_frame(truth_BTHWC, num_cond)
    return _Predictions({"truth": truth_BTHWC, "model": pred_BTHWC, "copy_last_frame": baseline_BTHWC}, num_cond,
                        [it.keys[i] for i in np.asarray(batch["index"])[keep]], np.asarray(batch["start"])[keep],
                        step, dict(run_config.sampler.to_dict()))


def _digit_positions(data_dir: pathlib.Path, clips: _Predictions) -> np.ndarray:
    """The digit's true position (y, x) in every frame of the test clips [B, T, 2], at the loaded size."""
    from sid2video.data import synthetic

    truth_BTHWC = clips.videos["truth"]
    gt = synthetic.load_ground_truth(data_dir, "test")["clips"]
    t = truth_BTHWC.shape[1]
    scale = truth_BTHWC.shape[2] / VIDEO_DATA["height"]  # the loader resized the written frames
    top_left_BT2 = scale * np.stack([np.asarray(gt[k]["digits"][0]["top_left"], np.float64)[s:s + t]
                                     for k, s in zip(clips.keys, clips.starts)])
    return demo_positions.true_positions(truth_BTHWC, top_left_BT2)


def _score_predictions(result: dict, clips: _Predictions, where_BT2: np.ndarray) -> dict:
    """PSNR, SSIM, position error and digit-shown rate of both rows into `result`; returns the
    per-frame PSNR and position error of each row (for the plots)."""
    from evaluation import metrics

    truth_BTHWC, c = clips.videos["truth"], clips.num_cond
    per_frame = {}
    for name in ("model", "copy_last_frame"):
        video_BTHWC = clips.videos[name]
        m = metrics.frame_metrics(video_BTHWC, truth_BTHWC, c)
        err_BT = np.linalg.norm(demo_positions.centroids(video_BTHWC[:, c:]) - where_BT2[:, c:], axis=-1)
        shown_BT = demo_positions.digit_shown(video_BTHWC[:, c:], truth_BTHWC[:, c:])
        # PSNR: per-frame values capped at metrics.PSNR_CAP_DB (an exact frame is not +inf); SSIM: None
        # (n/a) for frames smaller than its window; a frame with no bright pixel has the centre as position.
        per_frame[name] = {"psnr": m["psnr"].mean(0), "position_error": err_BT.mean(0)}
        result[name] = {"psnr": float(m["psnr"].mean()),
                        "ssim": float(m["ssim"].mean()) if "ssim" in m else None,
                        "position_error_px": float(err_BT.mean()), "digit_shown": float(shown_BT.mean())}
    result["psnr_convention"] = metrics.PSNR_CONVENTION
    return per_frame


def clip_classes(data_dir: pathlib.Path, split: str, keys: list[str]) -> np.ndarray:
    """The digit class of each named clip of `split`, from the saved ground truth."""
    from sid2video.data import synthetic

    gt = synthetic.load_ground_truth(data_dir, split)["clips"]
    return np.asarray([gt[k]["digits"][0]["class"] for k in keys], np.int64)


def _score_recognition(result: dict, per_frame: dict, clips: _Predictions, config, data_dir: pathlib.Path,
                       seed: int) -> None:
    """Whether each predicted frame shows the clip's digit, by a classifier trained on every frame of
    the training clips: the share of predicted frames it assigns to the clip's class, per row, into
    `result` (and per frame into `per_frame`); its share on the true frames says what it can read."""
    clf = clip_digit_classifier(config.data, seed)
    classes = clip_classes(data_dir, "test", clips.keys)
    c = clips.num_cond
    for name in ("truth", "model", "copy_last_frame"):
        hit_BT = recognised(clf, clips.videos[name][:, c:], classes)
        if name == "truth":
            result["digit_recognised_in_truth"] = float(hit_BT.mean())
        else:
            result[name]["digit_recognised"] = float(hit_BT.mean())
            per_frame[name]["recognised"] = hit_BT.mean(0)


def clip_digit_classifier(data_cfg, seed: int):
    """`_digit_classifier` trained on every frame of the moving-digits training clips of
    `data_cfg.data_dir` (as `data_cfg` loads them), each labelled with its clip's class from the
    saved ground truth."""
    from sid2video.data import pipeline

    data_dir = pathlib.Path(data_cfg.data_dir)
    it = pipeline.make_eval_iterator(data_cfg, batch_size=64, split="train")
    videos, indices = [], []
    for batch in it:
        keep = np.asarray(batch["mask"], bool)
        videos.append(np.asarray(batch["video"])[keep])
        indices += np.asarray(batch["index"])[keep].tolist()
    train_BTHWC = np.concatenate(videos)
    train_classes = clip_classes(data_dir, "train", [it.keys[i] for i in indices])
    t = train_BTHWC.shape[1]
    return _digit_classifier(train_BTHWC.reshape(-1, *train_BTHWC.shape[2:]), np.repeat(train_classes, t), seed)


def recognised(clf, video_BTHWC: np.ndarray, classes_B: np.ndarray) -> np.ndarray:
    """bool [B, T]: whether `clf` names clip b's class `classes_B[b]` in each uint8 frame."""
    b, t = video_BTHWC.shape[:2]
    frames = np.asarray(video_BTHWC).reshape(-1, *video_BTHWC.shape[2:])
    return clf.predict(_gray(frames)).reshape(b, t) == np.asarray(classes_B)[:, None]


def _score_fvd(result: dict, clips: _Predictions) -> None:
    """FVD of both rows against the true clips, and the protocol line, into `result`."""
    from evaluation import fvd as fvd_lib

    truth_BTHWC, num_cond = clips.videos["truth"], clips.num_cond
    _say("    FVD (I3D on the CPU takes a few seconds per clip)")
    ref = fvd_lib.FeatureExtractor(num_cond_frames=num_cond)
    ref.update(truth_BTHWC)
    for name in ("model", "copy_last_frame"):
        ext = fvd_lib.FeatureExtractor(num_cond_frames=num_cond, net=ref.net)
        ext.update(clips.videos[name])
        # One clip has no covariance: FVD is n/a (None); fewer clips than I3D's 400 features is finite.
        result[name]["fvd"] = fvd_lib.distance(ext.stats, ref.stats) if len(truth_BTHWC) > 1 else None
    result["fvd_protocol"] = (f"I3D logits of all {truth_BTHWC.shape[1]} frames (the {num_cond} conditioning "
                              f"frames included) at {truth_BTHWC.shape[2]}², {len(truth_BTHWC)} predicted vs the "
                              f"same {len(truth_BTHWC)} true clips")


def _render_predictions(workdir: pathlib.Path, run_dir: pathlib.Path, clips: _Predictions) -> list[str]:
    """The predictions saved as the run's sample file and rendered to MP4s; the MP4 paths."""
    from sid2video import render

    truth_BTHWC = clips.videos["truth"]
    npz = run_dir / "samples" / f"step_{clips.step}.npz"
    npz.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(npz, sample=clips.videos["model"], truth=truth_BTHWC,
                        label=np.zeros(len(truth_BTHWC), np.int32), num_cond=clips.num_cond)
    return [str(p) for p in render.render_npz(npz, workdir / "renders", fmt=("mp4",), max_grid=16)]


# Clips in the report's strip: enough to judge by eye, few enough to stay one screen tall.
STRIP_CLIPS = 4


def strip_frames(num_frames: int, num_cond: int) -> list[int]:
    """The frames the report's strip shows: the last given one, then the first, middle and last
    predicted ones (0-based, ascending, no repeats)."""
    first, last = num_cond, num_frames - 1
    return sorted({num_cond - 1, first, (first + last) // 2, last})


def _report_strip(workdir: pathlib.Path, clips: _Predictions) -> tuple[str, list[int]]:
    """A PNG of the first STRIP_CLIPS test clips: per clip the truth above the prediction, at the
    frames `strip_frames` names (the given one in draw.GIVEN's border, predicted ones in PRED's)."""
    from sid2video import draw, render

    truth_BTHWC, pred_BTHWC = clips.videos["truth"], clips.videos["model"]
    frames = strip_frames(truth_BTHWC.shape[1], clips.num_cond)
    rows = []
    for truth_THWC, pred_THWC in zip(truth_BTHWC[:STRIP_CLIPS], pred_BTHWC[:STRIP_CLIPS]):
        rows += [truth_THWC[frames], pred_THWC[frames]]
    path = render.write_png(workdir / "report_strip.png", draw.strip(rows, num_cond=1, group=2))
    return str(path), frames


def _video_report(workdir: pathlib.Path, run_dir: pathlib.Path, result: dict, per_frame: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps, loss = _loss_curve(run_dir)
    fig, axes = plt.subplots(1, 4, figsize=(18, 3.6))
    axes[0].plot(steps, loss, lw=0.8)
    axes[0].set(title="training loss", xlabel="step", yscale="log")
    frames = np.arange(result["num_cond"] + 1, result["num_cond"] + 1 + len(per_frame["model"]["psnr"]))
    for ax, key, label in ((axes[1], "psnr", "PSNR (dB, higher is better)"),
                           (axes[2], "position_error", "digit position error (px, lower is better)"),
                           (axes[3], "recognised", "clip's digit recognised (share of clips)")):
        for name, style in (("model", "o-"), ("copy_last_frame", "s--")):
            if key not in per_frame[name]:
                continue
            ax.plot(frames, per_frame[name][key], style, label=name.replace("_", "-"))
        ax.set(title=label, xlabel="frame")
        ax.legend()
    fig.tight_layout()
    plot = workdir / "report_metrics.png"
    fig.savefig(plot, dpi=100)
    plt.close(fig)
    rows = ["| | model | copy-last-frame |", "|---|---|---|"]
    for key, label in (("psnr", "PSNR (dB) ↑"), ("ssim", "SSIM ↑"), ("position_error_px", "position error (px) ↓"),
                       ("digit_shown", "frames showing a digit ↑"),
                       ("digit_recognised", "frames showing the clip's digit (classifier) ↑"), ("fvd", "FVD ↓")):
        if key in result["model"]:
            rows.append(f"| {label} | {_cell(result['model'][key])} | {_cell(result['copy_last_frame'][key])} |")
    grid = [p for p in result["renders"] if p.endswith("_grid.mp4")]
    text = "\n".join([
        "# sid2video demo: moving-digits frame prediction", "",
        f"Trained {result['train']['step']} steps ({result['train']['stopped_by']}, "
        f"{result['train']['seconds'] / 60:.1f} min); predicted {result['num_clips']} held-out clips from "
        f"{result['num_cond']} given frames with {result['sampler']['method']} "
        f"({result['sampler']['num_steps']} steps) from the EMA parameters.", "",
        *rows, "",
        f"Metrics cover the predicted frames only. PSNR: {result['psnr_convention']}. The position error is "
        "the distance between the "
        "digit's brightness centroid in a predicted frame and its true position (saved top-left "
        "corner plus the glyph's centroid offset). A frame shows a digit when its bright pixels have "
        "the true frame's mass within a factor 2 and are not much more spread out (noise fails).",
        *([f"A classifier trained on every frame of the training clips names the digit in a frame; it "
           f"names the clip's digit in {_cell(result['digit_recognised_in_truth'])} of the true predicted-range "
           "frames, the most a prediction can score."] if "digit_recognised_in_truth" in result else []),
        *([f"FVD: {result['fvd_protocol']}; with so few clips it compares the two rows, it is "
           "not comparable to published FVD."] if "fvd" in result["model"] else []), "",
        f"![metrics]({plot.name})", "",
        f"Frames {', '.join(str(i + 1) for i in result['strip_frames'])} (the last given frame, then the "
        "first, middle and last predicted ones) of the first held-out clips: in each pair the truth "
        "above, the prediction below.", "",
        f"![truth above, prediction below]({pathlib.Path(result['strip']).name})", "",
        f"Videos: {grid[0] if grid else workdir / 'renders'} (left: given frames (green) and "
        "predictions (red); right: ground truth).",
    ])
    (workdir / "report.md").write_text(text + "\n")
    (workdir / "result.json").write_text(json.dumps(result, indent=2, default=float, allow_nan=False))


def _cell(value, width: int = 0) -> str:
    """A metric for the report and the terminal: 3 decimals, or 'n/a' where it is undefined."""
    return f"{'n/a':>{width}}" if value is None else f"{value:{width}.3f}"


# ----------------------------------------------------------------------------- images


def _gray(images: np.ndarray) -> np.ndarray:
    """Classifier features: each digit cropped to the bounding box of its bright pixels and
    resized to 8×8, so position and scale do not matter (the colour does not either)."""
    from PIL import Image

    out = []
    for img in np.asarray(images, np.float32).max(axis=-1):
        ys, xs = np.nonzero(img > 64)
        if len(ys):
            img = img[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
        out.append(np.asarray(Image.fromarray(img).resize((8, 8), Image.BILINEAR)).ravel() / 255.0)
    return np.stack(out)


def _digit_classifier(images_NHWC: np.ndarray, labels_N: np.ndarray, seed: int):
    """An MLP on `_gray` features of real digits: it reads which digit an image shows."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    # 60 epochs of Adam reach ~95% on held-out real digits in a few seconds (300 took 20 s for the
    # same accuracy); sklearn's warning that the loss is still moving is expected and silenced.
    clf = MLPClassifier(hidden_layer_sizes=(128,), max_iter=60, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(_gray(images_NHWC), labels_N)
    return clf


def image_demo(workdir: pathlib.Path, *, minutes: float | None, steps: int | None, num_eval: int,
               sampler_steps: int | None, seed: int, overrides: list[tuple[str, str]] = ()) -> dict:
    import jax

    from sid2video import checkpoint, render, sample
    from sid2video.data import pipeline, synthetic

    t0 = time.time()
    data_dir = workdir / "data"
    counts = {"train": 2000, "val": 400}
    wanted = {"counts": counts, "seed": seed, "size": IMAGE_SIZE, "scale": list(IMAGE_SCALE)}
    if _needs_writing(data_dir, wanted):
        _say(f"1/5 writing {sum(counts.values())} labelled digit PNGs to {data_dir}")
        synthetic.write_digit_images(data_dir, seed=seed, counts=counts, size=IMAGE_SIZE, scale=IMAGE_SCALE)
        (data_dir / DATA_MARKER).write_text(json.dumps(wanted))
    config = _configure("images", data_dir, seed, sampler_steps, overrides)
    run_dir = workdir / "run"
    _say("2/5 training the tiny class-conditional image model (T = 1)")
    summary = _train(config, run_dir, minutes=minutes, steps=steps)

    _say("3/5 training an independent classifier on the real digits")
    def images_of(split: str, n: int):
        it = pipeline.make_eval_iterator(config.data, batch_size=n, split=split)
        b = next(it)
        keep = np.asarray(b["mask"], bool)
        return np.asarray(b["video"])[keep][:, 0], np.asarray(b["label"])[keep]

    x_train, y_train = images_of("train", counts["train"])
    x_val, y_val = images_of("val", counts["val"])
    clf = _digit_classifier(x_train, y_train, seed)
    real_acc = float(clf.score(_gray(x_val), y_val))

    classes = config.data.num_classes
    per_class = max(1, num_eval // classes)
    labels = np.tile(np.arange(classes), per_class).astype(np.int32)  # 0..9, 0..9, ...
    # Beside the samples, real held-out digits of the requested classes (what each class looks like).
    by_class = [x_val[y_val == c] for c in range(classes)]
    if min(len(x) for x in by_class) == 0:
        raise RuntimeError("sid2video demo: a digit class has no held-out images; rewrite the data (delete DIR/data)")
    reference = np.stack([by_class[c][(k // classes) % len(by_class[c])] for k, c in enumerate(labels)])[:, None]
    blank = np.zeros((len(labels), 1, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    model, run_config, step = checkpoint.load_model(run_dir)
    result: dict[str, Any] = {"step": step, "train": {k: v for k, v in summary.items() if k != "last_metrics"},
                              "classifier_accuracy_on_real": real_acc, "samples_per_class": per_class}
    w = float(run_config.sampler.guidance) or 1.0
    _say(f"4/5 sampling {len(labels)} digits with guidance w = {w:g} and without")
    for name, overrides in (("guided", dict(guidance=w)), ("unguided", dict(guidance=0.0))):
        gen = sample.Generator(model, run_config, **overrides)
        images = gen({"video": blank, "label": labels}, jax.random.PRNGKey(seed))
        result[name] = {"guidance": overrides["guidance"],
                        "accuracy": float(np.mean(clf.predict(_gray(images[:, 0])) == labels))}
        npz = run_dir / "samples" / f"step_{step}_{name}.npz"
        npz.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(npz, sample=images, truth=reference, label=labels, num_cond=0)
        render.render_npz(npz, workdir / "renders", fmt=("png",), per_clip=False, max_grid=2 * classes)
    _say("5/5 writing the report")
    result["seconds"] = time.time() - t0
    text = "\n".join([
        "# sid2video demo: class-conditional digits (T = 1)", "",
        f"Trained {summary['step']} steps ({summary['stopped_by']}). A classifier trained on the real "
        f"digits recognises {100 * real_acc:.1f}% of held-out real digits.", "",
        "| samples | guidance w | classifier agrees with the requested class |", "|---|---|---|",
        *(f"| {n} | {result[n]['guidance']:g} | {100 * result[n]['accuracy']:.1f}% |" for n in ("guided", "unguided")),
        "", f"Sample grids (the first {2 * classes} samples, two per class, captioned with the requested "
        f"class): {workdir / 'renders'}/*_samples.png; beside them, *_truth.png shows real held-out digits "
        "of the same classes.",
    ])
    (workdir / "report.md").write_text(text + "\n")
    (workdir / "result.json").write_text(json.dumps(result, indent=2, default=float))
    return result


# ----------------------------------------------------------------------------- CLI


def run(argv: list[str]) -> int:
    """`sid2video demo --workdir DIR [--minutes M] [--train_steps N] [--images] [--config.key=value ...]`."""
    import absl.flags

    spec, overrides, argv = flags.split_config_args(argv)
    parser = flags.Parser(prog="sid2video demo", description=__doc__, renamed=flags.TRAIN_STEPS,
                          formatter_class=argparse.RawDescriptionHelpFormatter,
                          epilog="--config.KEY=VALUE overrides a key of the mode's config, configs/demo.py:video "
                                 "or configs/demo.py:images (e.g. --config.loss.bias=-2; repeatable)")
    parser.add_argument("--workdir", required=True, help="where data, checkpoints, MP4s and the report go")
    parser.add_argument("--minutes", type=float, default=None,
                        help=f"training time budget (default {MINUTES['video']:g}, "
                             f"{MINUTES['images']:g} with --images)")
    parser.add_argument("--train_steps", type=flags.positive_int, default=None,
                        help="training steps (default: the config's)")
    parser.add_argument("--images", action="store_true", help="the class-conditional image demo (T = 1)")
    parser.add_argument("--num_eval", type=flags.positive_int, default=None,
                        help="held-out clips to predict (default 16) / images to sample (default 100)")
    parser.add_argument("--sampler_steps", type=flags.positive_int, default=None,
                        help="sampler steps (default: config)")
    parser.add_argument("--no_fvd", action="store_true", help="skip FVD (I3D on the CPU is slow)")
    parser.add_argument("--train_clips", type=flags.positive_int, default=256, help="training clips to write")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if spec is not None:
        parser.error("the config is configs/demo.py's video or images variant (--images); "
                     "override its keys with --config.KEY=VALUE")
    # A bad override stops before any work.
    batch_size = load_config("images" if args.images else "video", overrides).train.batch_size
    cpu_devices = devices.split_cpu((batch_size,))
    absl.flags.FLAGS.mark_as_parsed()
    # ffmpeg runs through subprocess (fork, then exec at once), which JAX's fork warning does not
    # distinguish from an unsafe fork.
    warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called")
    flags.configure_logging(info=False)  # the demo prints its own progress lines
    workdir = pathlib.Path(args.workdir).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    if cpu_devices and cpu_devices > 1 and _runs_on_cpu():
        _say(f"{cpu_devices} JAX CPU devices, one per core: each trains on {batch_size // cpu_devices} "
             f"of the {batch_size} examples a step")
    if args.num_eval is None:
        args.num_eval = 100 if args.images else 16
    if args.minutes is None:
        args.minutes = MINUTES["images" if args.images else "video"]
    if args.images:
        result = image_demo(workdir, minutes=args.minutes, steps=args.train_steps, num_eval=args.num_eval,
                            sampler_steps=args.sampler_steps, seed=args.seed, overrides=overrides)
        print(f"\n[demo] done in {result['seconds'] / 60:.1f} min. Classifier accuracy on samples: "
              f"{100 * result['guided']['accuracy']:.1f}% with guidance, "
              f"{100 * result['unguided']['accuracy']:.1f}% without "
              f"(real digits: {100 * result['classifier_accuracy_on_real']:.1f}%).")
    else:
        result = video_demo(workdir, minutes=args.minutes, steps=args.train_steps, num_eval=args.num_eval,
                            sampler_steps=args.sampler_steps, fvd=not args.no_fvd, seed=args.seed,
                            train_clips=args.train_clips, overrides=overrides)
        m, b = result["model"], result["copy_last_frame"]
        print(f"\n[demo] done in {result['seconds'] / 60:.1f} min, {result['train']['step']} training steps.")
        print("[demo]                      model   copy-last-frame")
        for key, label in (("psnr", "PSNR dB (higher better)"), ("ssim", "SSIM (higher better)"),
                           ("position_error_px", "position error px (lower)"),
                           ("digit_shown", "frames showing a digit"),
                           ("digit_recognised", "frames showing its digit"), ("fvd", "FVD (lower better)")):
            if key in m:
                print(f"[demo] {label:27s} {_cell(m[key], 7)}   {_cell(b[key], 7)}")
    print(f"[demo] report: {workdir / 'report.md'}; videos and images: {workdir / 'renders'}; "
          f"checkpoints and TensorBoard logs: {workdir / 'run'}")
    return 0


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
