"""`sid2video demo` end to end at a tiny step count: data, training, sampling, metrics, MP4s, report."""

import json

import numpy as np
import pytest
from PIL import Image

from sid2video import cli, config
from sid2video.data import video_io


@pytest.fixture(scope="module")
def video_demo(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("demo")
    rc = cli.main(["demo", "--workdir", str(workdir), "--train_steps", "2", "--num_eval", "2", "--sampler_steps", "2",
                   "--train_clips", "8", "--no_fvd", "--config.train.learning_rate=0.002"])
    assert rc == 0
    return workdir


def test_video_demo_writes_decodable_mp4s_and_a_report(video_demo):
    result = json.loads((video_demo / "result.json").read_text())
    assert result["train"]["step"] == 2 and result["num_clips"] == 2 and result["num_cond"] == 5
    for row in ("model", "copy_last_frame"):
        assert set(result[row]) == {"psnr", "ssim", "position_error_px", "digit_shown", "digit_recognised"}
        assert 0.0 <= result[row]["digit_recognised"] <= 1.0
    assert 0.0 <= result["digit_recognised_in_truth"] <= 1.0
    # The copy-last-frame baseline shows the whole (stale) digit in every predicted frame.
    assert result["copy_last_frame"]["digit_shown"] == 1.0
    # --config.key=value reached the demo's config.
    assert json.loads((video_demo / "run" / "config.json").read_text())["train"]["learning_rate"] == 0.002
    clips = [p for p in result["renders"] if p.endswith(".mp4")]
    assert len(clips) == 3  # two clips and the grid
    for path in clips:
        info = video_io.probe(path)
        frames = video_io.read_frames(path, list(range(16)))
        assert frames.shape[0] == 16 and frames.shape[1] % 2 == 0 and frames.shape[2] % 2 == 0
        assert info.num_frames == 16
    report = (video_demo / "report.md").read_text()
    assert "copy-last-frame" in report and "report_metrics.png" in report
    assert (video_demo / "report_metrics.png").stat().st_size > 0
    assert "report_strip.png" in report
    assert "| frames showing the clip's digit (classifier) ↑ |" in report
    # The saved predictions keep the given frames exactly.
    npz = np.load(video_demo / "run" / "samples" / "step_2.npz")
    np.testing.assert_array_equal(npz["sample"][:, :5], npz["truth"][:, :5])
    # Both rows' PSNR, recomputed from the saved clips: 10·log10(255² / MSE) per predicted frame,
    # averaged; the baseline repeats the last given frame (frame 4).
    truth = npz["truth"].astype(np.float64)
    baseline = np.repeat(truth[:, 4:5], 16, axis=1)
    for row, pred in (("model", npz["sample"].astype(np.float64)), ("copy_last_frame", baseline)):
        mse = ((pred[:, 5:] - truth[:, 5:]) ** 2).mean(axis=(2, 3, 4))
        assert result[row]["psnr"] == pytest.approx(np.mean(10 * np.log10(255.0**2 / mse)), rel=1e-6)


def test_the_report_strip_shows_truth_above_prediction(video_demo):
    """The strip's cells are the saved clips' frames 5, 6, 11 and 16 (1-based), enlarged 4× (16² to
    the 64-pixel minimum) in 2-pixel borders: truth then prediction per clip, 6 blank rows between clips."""
    from sid2video import demo

    assert demo.strip_frames(16, 5) == [4, 5, 10, 15]
    assert demo.strip_frames(3, 1) == [0, 1, 2]  # one given frame, two predicted: no repeats
    result = json.loads((video_demo / "result.json").read_text())
    assert result["strip_frames"] == [4, 5, 10, 15]
    picture = np.asarray(Image.open(video_demo / "report_strip.png").convert("RGB"))
    npz = np.load(video_demo / "run" / "samples" / "step_2.npz")
    cell, gap = 16 * 4 + 2 * 2, 6
    assert picture.shape == (4 * cell + gap, 4 * cell, 3)  # 2 clips x (truth, prediction), 4 frames
    for clip in range(2):
        for kind, key in enumerate(("truth", "sample")):
            y = clip * (2 * cell + gap) + kind * cell + 2
            for col, frame in enumerate(result["strip_frames"]):
                x = col * cell + 2
                want = np.kron(npz[key][clip, frame], np.ones((4, 4, 1), np.uint8))
                np.testing.assert_array_equal(picture[y:y + 64, x:x + 64], want)


def test_positions_follow_the_saved_ground_truth():
    from sid2video import demo_positions

    video = np.zeros((1, 3, 16, 16, 3), np.uint8)
    corners = np.array([[[2, 3], [4, 6], [9, 1]]], np.float64)
    for f, (y, x) in enumerate(corners[0].astype(int)):
        video[0, f, y:y + 3, x:x + 2] = 255  # a 3x2 block: centroid offset (1, 0.5)
    np.testing.assert_allclose(demo_positions.centroids(video), corners + [1.0, 0.5])
    np.testing.assert_allclose(demo_positions.true_positions(video, corners), corners + [1.0, 0.5])
    # The same blocks moved are digits; an empty frame, uniform noise, and a block 3x as big are not.
    moved = np.roll(video, 2, axis=3)
    rng = np.random.default_rng(0)
    other = np.stack([np.zeros((16, 16, 3)), rng.integers(0, 256, (16, 16, 3)), np.zeros((16, 16, 3))])
    other[2, 0:9, 0:6] = 255
    shown = demo_positions.digit_shown(np.stack([moved[0], other.astype(np.uint8)]), np.concatenate([video, video]))
    np.testing.assert_array_equal(shown, [[True, True, True], [False, False, False]])


def test_image_demo(tmp_path):
    rc = cli.main(["demo", "--images", "--workdir", str(tmp_path), "--train_steps", "2", "--num_eval", "10",
                   "--sampler_steps", "2"])
    assert rc == 0
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["samples_per_class"] == 1
    assert result["classifier_accuracy_on_real"] > 0.8  # the independent classifier works on real digits
    for row in ("guided", "unguided"):  # the share of the 10 samples the classifier agrees with
        assert result[row]["accuracy"] * 10 == pytest.approx(round(result[row]["accuracy"] * 10))
    # Guided sampling uses the images config's guidance weight (what guidance does to samples is
    # tested in tests/test_samplers.py and tests/test_sample.py).
    assert result["guided"]["guidance"] == config.load("demo:images").sampler.guidance > 0
    renders = sorted(p.name for p in (tmp_path / "renders").iterdir())
    assert renders == [f"step_2_{n}_{g}.png" for n in ("guided", "unguided") for g in ("samples", "truth")]
    # The reference grid holds real digits of the requested classes, not the samples again.
    npz = np.load(tmp_path / "run" / "samples" / "step_2_guided.npz")
    assert npz["truth"].shape == npz["sample"].shape and not np.array_equal(npz["truth"], npz["sample"])
    # Each reference image is one of the written held-out digits of its requested class.
    for image, label in zip(npz["truth"][:, 0], npz["label"]):
        written = [np.asarray(Image.open(p).convert("RGB")) for p in (tmp_path / "data" / "val" / f"digit_{label}").glob("*.png")]
        assert any(np.array_equal(image, w) for w in written)



def test_probe_table_of_a_demo_run(video_demo):
    """benchmarks/demo_probe.py on the demo's run: the copy-last-frame row recomputed here from the
    same clips. The demo's network predicts x with a zero-initialised output head, so after 2 steps
    (learning rate still ~1e-5 in the warm-up) x̂ is still ≈ 0 at every logSNR and its error is the
    clips' mean square, also where almost no noise is added (a probe reading the output as v would
    give x̂ ≈ α z ≈ x there, an error near 0)."""
    import pathlib
    import sys

    from sid2video import checkpoint
    from sid2video.data import pipeline

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
    import demo_probe

    result = demo_probe.probe(str(video_demo / "run"), num_clips=4, logsnrs=(-7.0, 12.0))
    _, cfg, _ = checkpoint.load_model(video_demo / "run")
    batch = next(pipeline.make_eval_iterator(cfg.data, batch_size=4))
    video = np.asarray(batch["video"])[np.asarray(batch["mask"], bool)].astype(np.float64) / 127.5 - 1.0
    assert result["num_clips"] == len(video)
    err_T = ((video[:, 5:] - video[:, 4:5]) ** 2).mean(axis=(0, 2, 3, 4))
    assert result["copy_last_frame"]["first"] == pytest.approx(err_T[0], rel=1e-5)
    assert result["copy_last_frame"]["all"] == pytest.approx(err_T.mean(), rel=1e-5)
    low, high = result["rows"]
    assert (low["logsnr"], high["logsnr"]) == (-7.0, 12.0)
    assert cfg.loss.mean_type == "x"
    power_T = (video[:, 5:] ** 2).mean(axis=(0, 2, 3, 4))
    for row in (low, high):
        assert row["all"] == pytest.approx(power_T.mean(), rel=0.05)
        assert row["first"] == pytest.approx(power_T[0], rel=0.05)
        # x̂ ≈ 0 whatever the given frames hold: a still history moves it by (almost) nothing.
        assert 0.0 <= row["history"] < 1e-3 * power_T.mean()
    assert "| copy last frame |" in demo_probe.table(result)
    # The still history: every given frame is the last given one, the predicted frames are kept.
    clips = video.astype(np.float32)
    still = np.asarray(demo_probe.still_history(clips, 5))
    np.testing.assert_array_equal(still[:, :5], np.repeat(clips[:, 4:5], 5, axis=1))
    np.testing.assert_array_equal(still[:, 4:], clips[:, 4:])
    # The sampler run from the truth diffused to step K: its output is the network's (clipped) x̂ at
    # the last step, ≈ 0 here, so its error is the clips' mean square from every K, the start
    # included (K = N: only the final x̂, from the truth at the highest logSNR).
    n = int(cfg.sampler.num_steps)
    trip = demo_probe.round_trip(str(video_demo / "run"), num_clips=4, start_steps=(0, n), repeats=1)
    assert [r["start_step"] for r in trip["rows"]] == [0, n] and trip["num_steps"] == n and trip["split"] == "val"
    assert trip["rows"][0]["logsnr"] < trip["rows"][1]["logsnr"]
    for row in trip["rows"]:
        assert row["mse"] == pytest.approx(power_T.mean(), rel=0.05)
        assert 0.0 <= row["recognised"] <= 1.0
        # one share per predicted frame, whose mean is the row's share
        assert len(row["recognised_by_frame"]) == cfg.data.num_frames - cfg.data.num_cond_frames
        assert np.mean(row["recognised_by_frame"]) == pytest.approx(row["recognised"])
    assert trip["recognised_in_truth"] == pytest.approx(np.mean(trip["recognised_in_truth_by_frame"]))
    assert "| true frames |" in demo_probe.round_trip_table(trip)
    with pytest.raises(SystemExit, match="outside"):
        demo_probe.round_trip(str(video_demo / "run"), num_clips=4, start_steps=(n + 1,))


def test_a_rerun_with_other_data_settings_rewrites_the_data(video_demo, tmp_path):
    """The workdir, moved, run again with 3 held-out clips instead of 2: the data folder is written
    anew (no clip of the old set left to be indexed), the trained run is reused, and the clips come
    from the moved folder, not from where the run was trained."""
    import shutil

    workdir = tmp_path / "demo"
    shutil.copytree(video_demo, workdir)
    rc = cli.main(["demo", "--workdir", str(workdir), "--train_steps", "2", "--num_eval", "3", "--sampler_steps", "2",
                   "--train_clips", "8", "--no_fvd"])
    assert rc == 0
    result = json.loads((workdir / "result.json").read_text())
    assert result["num_clips"] == 3 and result["train"]["step"] == 2
    assert len(list((workdir / "data" / "test").rglob("*.mp4"))) == 3
    assert json.loads((workdir / "data" / "DONE.json").read_text())["counts"]["test"] == 3


def test_recognition_reads_the_clips_digit(tmp_path):
    """The demo's 'frames showing the clip's digit' row: a classifier trained on the training clips'
    frames names the digit of held-out true frames far above chance (10 classes); a prediction equal
    to the truth scores exactly the truth's share, frames of another clip's digit score far
    less, and the per-frame shares average to the row."""
    from sid2video import demo
    from sid2video.data import pipeline, synthetic

    synthetic.write_moving_digits(tmp_path, seed=0, counts={"train": 96, "test": 16}, progress=False,
                                  **demo.VIDEO_DATA)
    cfg = demo.load_config("video")
    cfg.data.data_dir = str(tmp_path)
    it = pipeline.make_eval_iterator(cfg.data, batch_size=16, split="test")
    batch = next(it)
    truth = np.asarray(batch["video"])
    keys = [it.keys[i] for i in np.asarray(batch["index"])]
    other = np.roll(truth, 8, axis=0)  # clips come in class order: half a turn pairs other digits
    classes = demo.clip_classes(tmp_path, "test", keys)
    assert (classes != np.roll(classes, 8)).all()
    clips = demo._Predictions({"truth": truth, "model": truth, "copy_last_frame": other}, 5, keys,
                              np.asarray(batch["start"]), 0, {})
    result = {"model": {}, "copy_last_frame": {}}
    per_frame = {"model": {}, "copy_last_frame": {}}
    demo._score_recognition(result, per_frame, clips, cfg, tmp_path, seed=0)
    assert result["digit_recognised_in_truth"] > 0.5
    assert result["model"]["digit_recognised"] == result["digit_recognised_in_truth"]
    assert result["copy_last_frame"]["digit_recognised"] < result["digit_recognised_in_truth"] - 0.4
    for row in ("model", "copy_last_frame"):
        assert per_frame[row]["recognised"].shape == (11,)
        assert per_frame[row]["recognised"].mean() == pytest.approx(result[row]["digit_recognised"])
