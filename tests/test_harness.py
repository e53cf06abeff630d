"""The evaluation harness end to end on a tiny trained frame-prediction run, its cache, sample
files, set-against-set FVD, and the command line's errors."""

import json
import math
import os
import signal
import threading

import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
import pytest
from PIL import Image

from evaluation import clips, evaluators, frechet, fvd, harness, i3d, metrics, references
from sid2video import train
from sid2video.data import pipeline, synthetic, video_io
from train_worker import tiny_config

FRAMES, RES, COND = 9, 16, 2     # I3D needs 9 frames; 16² keeps SSIM's 11×11 window inside the frame
DIM = 12 * FRAMES                # features of CountingNet


class CountingNet:
    """A cheap stand-in for I3D that counts its calls: per-frame 2×2 average pools [B, 12T]."""

    checksum = "counting-net-v1"

    def __init__(self):
        self.calls = 0
        self._f = jax.jit(lambda x: jnp.mean(x.reshape(x.shape[0], x.shape[1], 2, 112, 2, 112, 3), axis=(3, 5))
                          .reshape(x.shape[0], -1))

    def __call__(self, x):
        self.calls += 1
        return self._f(x)


def _strict_json(path):
    """The file parsed as strict JSON: NaN, Infinity and -Infinity are refused."""
    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant} in {path}")

    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("digits")
    synthetic.write_moving_digits(root, counts={"train": 2, "val": 2}, num_frames=FRAMES, height=RES, width=RES,
                                  digit_size=8, num_digits=1, max_speed=2, progress=False, workers=2)
    return root


def _data_config(data_dir, **kw):
    return dict(dataset="moving_digits", data_dir=str(data_dir), num_frames=FRAMES, resolution=RES,
                num_cond_frames=COND, eval_split="val", **kw)


@pytest.fixture(scope="module")
def run(tmp_path_factory, data_dir):
    """A 9-frame, 16² frame-prediction model trained for 2 steps on the dataset (checkpoints at 1 and 2)."""
    workdir = tmp_path_factory.mktemp("run")
    c = tiny_config(batch_size=2, checkpoint_every=1)
    # One ResBlock level keeps the compilations short; the harness does not care about the network.
    c.model.update(num_frames=FRAMES, resolution=RES, channels=(8,), block_types=("resnet",), encoder_blocks=(1,),
                   decoder_blocks=(1,), dropout=0.0, dropout_from_resolution=0, num_classes=0)
    c.loss.class_drop_rate = 0.0
    c.schedule = dict(name="cosine_shifted", image_d=RES, noise_d=RES)
    c.data = _data_config(data_dir)
    c.sampler = dict(method="ddim", num_steps=2, guidance=0.0)
    train.fit(c, workdir, steps=2, progress=False)
    return workdir


@pytest.fixture(scope="module")
def val_clips(data_dir):
    it = pipeline.make_eval_iterator(mlc.ConfigDict(_data_config(data_dir)), batch_size=3, worker_count=0)
    batch = next(it)
    assert batch["mask"].tolist() == [True, True, False]
    return batch["video"][:2]


@pytest.fixture(scope="module")
def i3d_extractor():
    return fvd.FeatureExtractor(batch_size=2)


@pytest.fixture(scope="module")
def val_features(i3d_extractor, val_clips):
    return i3d_extractor.features(val_clips)


def test_fvd_of_clips_against_themselves_and_with_shuffled_frames(i3d_extractor, val_clips, val_features):
    """The real I3D: a set against itself is at distance 0; the same frames in another order are far."""
    feats = val_features
    shuffled = i3d_extractor.features(val_clips[:, [4, 0, 7, 2, 8, 1, 6, 3, 5]])
    assert feats.shape == (2, 400)
    a = frechet.RunningStatistics(400).update(feats)
    scale = float(np.trace(a.result()[1]))
    assert fvd.distance(a, a) < 1e-6 * scale
    far = fvd.distance(a, frechet.RunningStatistics(400).update(shuffled))
    assert far > 0.3 * scale and far > 10.0


def test_end_to_end_fvd_and_report(run, val_clips, i3d_extractor, val_features, tmp_path):
    """The real I3D on a trained run: result.json, report.md, figures and sample strips."""
    result = harness.evaluate(run, metric="fvd", num_samples=2, batch_size=2, checkpoint=2, baseline=False,
                              out=tmp_path / "eval", progress=False)
    (entry,) = result["checkpoints"]
    assert entry["step"] == 2 and entry["num_samples"] == 2 and result["reference"]["num_samples"] == 2
    assert math.isfinite(entry["fvd"]) and entry["fvd"] > 0
    assert len(entry["psnr_per_frame"]) == FRAMES - COND and math.isfinite(entry["psnr"])
    # The sample strip holds the raw frames (4× enlarged, 2-pixel borders): rows truth 0, sample 0,
    # a 6-pixel gap, truth 1, sample 1. The model's PSNR/SSIM are those of its samples in the strip.
    with Image.open(tmp_path / "eval" / "samples_step_2.png") as img:
        strip = np.asarray(img.convert("RGB"))
    size = RES * 4 + 4

    def clip(y0):
        return np.stack([strip[y0 + 2:y0 + 2 + 4 * RES:4, t * size + 2:t * size + 2 + 4 * RES:4]
                         for t in range(FRAMES)])

    truth = np.stack([clip(0), clip(2 * size + 6)])
    samples = np.stack([clip(size), clip(3 * size + 6)])
    np.testing.assert_array_equal(truth, val_clips)
    np.testing.assert_array_equal(samples[:, :COND], val_clips[:, :COND])     # conditioning kept
    mine = metrics.FrameMetrics(COND).update(samples, val_clips).result()
    np.testing.assert_allclose(entry["psnr_per_frame"], mine["psnr_per_frame"], rtol=1e-9)
    np.testing.assert_allclose(entry["ssim_per_frame"], mine["ssim_per_frame"], rtol=1e-9)
    # ... and its FVD is the Fréchet distance of I3D features of those samples and of the true clips.
    want = frechet.distance(*frechet.statistics(i3d_extractor.features(samples)), *frechet.statistics(val_features))
    assert entry["fvd"] == pytest.approx(want, rel=1e-3)
    # The baseline's PSNR/SSIM are those of copy-last-frame on the two clips.
    want = metrics.FrameMetrics(COND).update(metrics.copy_last_frame(val_clips, COND), val_clips).result()
    np.testing.assert_allclose(result["baseline"]["psnr_per_frame"], want["psnr_per_frame"], rtol=1e-9)
    np.testing.assert_allclose(result["baseline"]["ssim"], want["ssim"], rtol=1e-9)
    assert "fvd" not in result["baseline"]                                # baseline=False: no baseline FVD

    out = tmp_path / "eval"
    saved = json.loads((out / "result.json").read_text())
    assert saved["checkpoints"][0]["fvd"] == pytest.approx(entry["fvd"])
    p = saved["protocol"]
    assert (p["split"], p["num_samples"], p["num_cond_frames"], p["cond_frames_in_fvd"]) == ("val", 2, COND, True)
    assert p["sampler"]["num_steps"] == 2 and p["frames_seen_by_fvd"] == FRAMES
    assert p["feature_network"].startswith("i3d-kinetics-400")
    report = (out / "report.md").read_text()
    assert "| conditioning frames in FVD | **yes**" in report and "| split | val |" in report
    assert "| samples (N) | 2 |" in report and "copy last frame (baseline)" in report
    for name in ("frame_metrics.png", "samples_step_2.png"):
        assert f"]({name})" in report
        with Image.open(out / name) as img:
            assert img.format == "PNG" and img.size[0] > 100


def test_padding_never_counts_and_the_reference_cache(run, data_dir, val_clips, tmp_path):
    net = CountingNet()
    # 2 clips in the split, batches of 3: every batch carries a zero padding row that must not count.
    kw = dict(metric="fvd", num_samples=2, batch_size=3, feature_net=net, feature_dim=DIM,
              cache_dir=tmp_path / "cache", progress=False)
    first = harness.evaluate(run, out=tmp_path / "a", checkpoint="all", **kw)
    # reference + baseline + one batch per checkpoint (steps 1 and 2)
    assert net.calls == 4 and not first["reference"]["cache_hit"]
    assert [c["step"] for c in first["checkpoints"]] == [1, 2]
    assert [c["num_samples"] for c in first["checkpoints"]] == [2, 2]
    assert first["checkpoints"][0]["fvd"] != first["checkpoints"][1]["fvd"]
    assert (tmp_path / "a" / "metric_vs_step.png").is_file()
    # The cached reference statistics are those of exactly the two real clips.
    ref = np.load(first["reference"]["cache_file"])
    assert float(ref["reference_count"]) == 2 and float(ref["baseline_count"]) == 2
    direct = CountingNet()(i3d.preprocess(val_clips))
    np.testing.assert_allclose(ref["reference_mean"], np.asarray(direct).mean(axis=0), rtol=1e-5, atol=1e-6)
    # Copy-last-frame on the two clips (a zero padding row would be copied exactly: PSNR at the cap).
    want = metrics.FrameMetrics(COND).update(metrics.copy_last_frame(val_clips, COND), val_clips).result()
    np.testing.assert_allclose(first["baseline"]["psnr_per_frame"], want["psnr_per_frame"], rtol=1e-9)

    net.calls = 0
    second = harness.evaluate(run, out=tmp_path / "b", checkpoint=2, **kw)
    assert net.calls == 1 and second["reference"]["cache_hit"]         # only the generated clips
    assert second["reference"]["cache_file"] == first["reference"]["cache_file"]
    # A fresh sampler on step 2 gives what the reused one gave after step 1 (same seed, same samples).
    assert second["checkpoints"][0]["fvd"] == pytest.approx(first["checkpoints"][1]["fvd"], rel=1e-6)
    assert second["baseline"]["fvd"] == pytest.approx(first["baseline"]["fvd"], rel=1e-12)

    # The reference pass alone: the same protocol hits the cache, a changed one misses it.
    def reference(**change):
        ev = evaluators.FVD(num_cond=COND, resolution=change.pop("fvd_resolution", None), batch_size=3,
                            feature_net=net, feature_dim=DIM)
        args = dict(split="val", num_samples=2, num_cond=COND, baseline=True, batch_size=3, progress=False,
                    cache_dir=tmp_path / "cache", extractor_factory=ev.extractor)
        args.update(change)
        net.calls = 0
        return references.reference_statistics(_data_config(data_dir), **args), net.calls

    got, calls = reference()
    assert calls == 0 and got["cache_hit"] and got["cache_file"] == first["reference"]["cache_file"]
    for change in (dict(fvd_resolution=8), dict(split="train"), dict(num_samples=1)):
        got, calls = reference(**change)
        assert not got["cache_hit"] and got["cache_file"] != first["reference"]["cache_file"], change
        assert calls == 2 and got["reference"].count == got["key"]["num_samples"], change   # reference + baseline
        again, calls = reference(**change)
        assert again["cache_hit"] and calls == 0, change
    # Fewer samples than the split: the seeded random subset of its positions.
    (pos,) = clips.subset_positions(2, 1, 0)
    np.testing.assert_allclose(got["reference"].mean, np.asarray(direct)[pos], rtol=1e-5, atol=1e-6)


def test_subset_positions():
    assert clips.subset_positions(5, 5) is None                  # the whole split, in order
    a = clips.subset_positions(1000, 100, seed=3)
    assert len(set(a.tolist())) == 100 and np.all(np.diff(a) > 0) and 0 <= a[0] and a[-1] < 1000
    np.testing.assert_array_equal(a, clips.subset_positions(1000, 100, seed=3))
    assert not np.array_equal(a, clips.subset_positions(1000, 100, seed=4))
    # Not the first records (class order): spread over the whole split.
    assert a.mean() == pytest.approx(500, abs=100)
    with pytest.raises(ValueError):
        clips.subset_positions(3, 4)


def test_samples_from_an_npz_and_from_a_folder_of_mp4s(data_dir, val_clips, tmp_path):
    data = _data_config(data_dir)
    # A perfect "prediction" in the layout `sid2video sample` writes: PSNR at the cap, SSIM 1, FVD 0.
    path = tmp_path / "perfect.npz"
    np.savez(path, sample=val_clips, truth=val_clips, label=np.zeros(2), num_cond=COND)
    net = CountingNet()
    result = harness.evaluate(samples=path, data=data, metric="fvd", batch_size=3, feature_net=net,
                              feature_dim=DIM, progress=False)
    (entry,) = result["checkpoints"]
    assert entry["num_samples"] == 2 and result["protocol"]["num_samples"] == 2
    assert entry["fvd"] < 1e-6 and entry["ssim"] == pytest.approx(1.0, abs=1e-6)
    assert entry["psnr"] == metrics.PSNR_CAP_DB and entry["exact_frames"] == 2 * (FRAMES - COND)
    report = (tmp_path / "eval" / "report.md").read_text()
    assert "capped at 100 dB" in report and f"{2 * (FRAMES - COND)} predicted frame(s) of the samples" in report
    _strict_json(tmp_path / "eval" / "result.json")
    assert (tmp_path / "eval" / "report.md").is_file() and (tmp_path / "eval" / "samples_samples.png").is_file()

    # A folder of MP4s: the same clips with their frames reversed in time.
    folder = tmp_path / "mp4"
    for i, clip in enumerate(val_clips):
        video_io.write_mp4(folder / f"{i:03d}.mp4", clip[::-1], fps=8)
    result = harness.evaluate(samples=folder, data=data, metric="fvd", batch_size=3, feature_net=net,
                              feature_dim=DIM, progress=False, out=tmp_path / "mp4_eval")
    assert result["checkpoints"][0]["num_samples"] == 2 and result["checkpoints"][0]["fvd"] > 1e-3


def test_evaluate_sets_arrays_and_datasets(data_dir, val_clips):
    net = CountingNet()
    kw = dict(batch_size=3, feature_net=net, feature_dim=DIM, progress=False)
    same = evaluators.evaluate_sets(val_clips, val_clips, **kw)
    assert same["fvd"] < 1e-6 and same["num_samples_a"] == same["num_samples_b"] == 2
    data = _data_config(data_dir)
    val, trn = dict(data, split="val"), dict(data, split="train")
    assert evaluators.evaluate_sets(val, val_clips, **kw)["fvd"] < 1e-3       # the split read from disk
    other = evaluators.evaluate_sets(val, trn, **kw)                            # test/val clips vs train clips
    assert other["fvd"] > 1e-3 and other["num_samples_b"] == 2


def test_cli_frame_metrics_and_errors(run, data_dir, tmp_path, capsys, monkeypatch):
    rc = harness.run(["--workdir", str(run), "--metric", "frames", "--num_samples", "2", "--batch_size", "3",
                      "--checkpoint", "1", "--out", str(tmp_path / "frames"), "--no_progress"])
    assert rc == 0
    saved = json.loads((tmp_path / "frames" / "result.json").read_text())
    assert saved["metric"] == "frames" and saved["checkpoints"][0]["step"] == 1
    assert "fvd" not in saved["checkpoints"][0] and saved["baseline"]["psnr"] > 0
    assert "step 1" in capsys.readouterr().out

    def error(argv):
        assert harness.run(argv) == 2
        return capsys.readouterr().err

    assert "no checkpoints in" in error(["--workdir", str(tmp_path / "nothing")])
    assert not (tmp_path / "nothing").exists()                     # nothing created on the way
    assert "available: [1, 2]" in error(["--workdir", str(run), "--checkpoint", "7"])
    err = error(["--workdir", str(run), "--data_dir", str(tmp_path / "missing")])
    assert "cannot read the 'val' split" in err and "--data_dir" in err
    err = error(["--workdir", str(run), "--num_samples", "5"])
    assert "num_samples=5" in err and "which has 2 clips" in err
    assert "at least 2 samples" in error(["--workdir", str(run), "--num_samples", "1"])
    err = error(["--workdir", str(run), "--no_cond_frames_in_fvd", "--num_samples", "2"])
    assert "at least 9 frames" in err and "7" in err

    # FID without the Inception weights: the error from inception.load names the file to get.
    images = tmp_path / "digit_images"
    synthetic.write_digit_images(images, counts={"val": 2}, size=16, progress=False)
    gen = tmp_path / "generated"
    gen.mkdir()
    for i in range(2):
        Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8)).save(gen / f"{i}.png")
    monkeypatch.setenv("SID2VIDEO_CACHE", str(tmp_path / "empty_cache"))
    monkeypatch.delenv("SID2VIDEO_FID_WEIGHTS", raising=False)
    err = error(["--samples", str(gen), "--dataset", "digits", "--data_dir", str(images), "--resolution", "16",
                 "--split", "val", "--metric", "fid"])
    assert "pt_inception-2015-12-05" in err


def test_fid_of_image_files_through_the_harness(tmp_path):
    """Image datasets go through FID: generated PNGs against the split's images (a cheap network)."""

    class Pool2x2:
        checksum = "pool2x2-v1"

        def __call__(self, x):   # uint8 [B, H, W, 3] -> [B, 12]
            b, h, w, _ = x.shape
            x = x.astype(jnp.float32).reshape(b, 2, h // 2, 2, w // 2, 3)
            return jnp.mean(x, axis=(2, 4)).reshape(b, -1)

    root = tmp_path / "digit_images"
    synthetic.write_digit_images(root, counts={"val": 3}, size=16, progress=False)
    data = {"dataset": "digits", "data_dir": str(root), "resolution": 16, "num_frames": 1}
    files = sorted((root / "val").rglob("*.png"))
    same, other = tmp_path / "same", tmp_path / "other"
    for folder in (same, other):
        folder.mkdir()
    for i, f in enumerate(files):
        img = np.asarray(Image.open(f).convert("RGB"))
        Image.fromarray(img).save(same / f"{i}.png")
        Image.fromarray(255 - img).save(other / f"{i}.png")
    kw = dict(data=data, batch_size=2, feature_net=Pool2x2(), feature_dim=12, progress=False)
    result = harness.evaluate(samples=same, **kw)
    assert result["metric"] == "fid" and result["protocol"]["num_samples"] == 3
    assert result["checkpoints"][0]["fid"] < 1e-6 and "baseline" not in result
    assert (tmp_path / "eval" / "samples_samples.png").is_file()
    assert "not applicable" in (tmp_path / "eval" / "report.md").read_text()
    inverted = harness.evaluate(samples=other, out=tmp_path / "eval2", **kw)
    assert inverted["checkpoints"][0]["fid"] > 100


def test_evaluators_run_a_generator_on_held_out_clips(data_dir, val_clips, tmp_path):
    """What a trainer does every N steps: one pass of a generator over a few held-out clips feeds FVD and
    the frame metrics; they equal the same quantities computed directly."""
    held_out = clips.EvalClips(_data_config(data_dir), num_samples=2, batch_size=3)
    net = CountingNet()
    fvd_eval = evaluators.FVD(held_out, num_cond=COND, feature_net=net, feature_dim=DIM, cache_dir=tmp_path / "c")
    frames = evaluators.FrameEvaluator(num_cond=COND, clips=held_out)

    def copy_last(batch, rng):
        return metrics.copy_last_frame(batch["video"], COND)

    fvd_row, frame_row = evaluators.run_all([fvd_eval, frames], copy_last, clips=held_out, seed=3)
    want = metrics.FrameMetrics(COND).update(metrics.copy_last_frame(val_clips, COND), val_clips).result()
    np.testing.assert_allclose(frame_row["psnr_per_frame"], want["psnr_per_frame"], rtol=1e-9)
    feats = [np.asarray(net(i3d.preprocess(v))) for v in (metrics.copy_last_frame(val_clips, COND), val_clips)]
    want_fvd = frechet.distance(*frechet.statistics(feats[0]), *frechet.statistics(feats[1]))
    assert fvd_row["num_samples"] == 2 and fvd_row["fvd"] == pytest.approx(want_fvd, rel=1e-4)
    assert len(list((tmp_path / "c").glob("*.npz"))) == 1                 # the reference, cached
    # A generator that returns the truth: FVD 0, every frame exact (PSNR at the cap).
    assert fvd_eval.run(lambda batch, rng: batch["video"])["fvd"] < 1e-6
    assert frames.run(lambda batch, rng: batch["video"])["psnr"] == metrics.PSNR_CAP_DB


def test_single_clip_of_black_predictions_gives_strict_json(data_dir, val_clips, tmp_path):
    """evaluate on one clip whose predicted frames are black: finite closed-form PSNR, strict JSON."""
    black = val_clips[:1].copy()
    black[:, COND:] = 0
    path = tmp_path / "black.npz"
    np.savez(path, sample=black, truth=val_clips[:1], num_cond=COND)
    result = harness.evaluate(samples=path, data=_data_config(data_dir), metric="frames", num_samples=1,
                              batch_size=2, progress=False)
    saved = _strict_json(tmp_path / "eval" / "result.json")
    (entry,) = saved["checkpoints"]
    truth = val_clips[0, COND:].astype(np.float64)
    want = 10 * np.log10(255.0 ** 2 / (truth ** 2).mean(axis=(1, 2, 3)))
    assert entry["num_samples"] == 1 and saved["protocol"]["num_samples"] == 1
    np.testing.assert_allclose(entry["psnr_per_frame"], np.minimum(want, metrics.PSNR_CAP_DB), rtol=1e-5)
    assert all(math.isfinite(v) for v in saved["baseline"]["psnr_per_frame"] + saved["baseline"]["ssim_per_frame"])
    assert result["conventions"]["psnr"] == metrics.PSNR_CONVENTION


def test_a_signal_stops_evaluate_at_a_batch_boundary_and_a_rerun_resumes(run, tmp_path):
    """SIGTERM (sent from another thread) during step 2's batch: evaluate writes step 1 and stops; the
    same call again computes only step 2 (reference statistics cached, step 1 kept) and gives the
    numbers of an uninterrupted evaluation."""

    class SignalNet(CountingNet):
        def __call__(self, x):
            out = super().__call__(x)
            if self.calls == 4:   # reference, baseline, step 1, then step 2's batch
                sender = threading.Thread(target=os.kill, args=(os.getpid(), signal.SIGTERM))
                sender.start()
                sender.join()
            return out

    kw = dict(metric="fvd", num_samples=2, batch_size=3, feature_dim=DIM, cache_dir=tmp_path / "cache",
              checkpoint="all", progress=False)
    before = signal.getsignal(signal.SIGTERM)
    stopped = harness.evaluate(run, feature_net=SignalNet(), out=tmp_path / "eval", **kw)
    assert signal.getsignal(signal.SIGTERM) is before                      # the handler is put back
    assert stopped["interrupted"] and [c["step"] for c in stopped["checkpoints"]] == [1]
    saved = _strict_json(tmp_path / "eval" / "result.json")
    assert saved["interrupted"] and "the same command resumes it" in saved["notes"][-1]
    assert (tmp_path / "eval" / "progress.json").is_file()

    net = CountingNet()
    resumed = harness.evaluate(run, feature_net=net, out=tmp_path / "eval", **kw)
    assert net.calls == 1 and resumed["reference"]["cache_hit"]            # step 2's batch only
    assert "interrupted" not in resumed and [c["step"] for c in resumed["checkpoints"]] == [1, 2]
    assert not (tmp_path / "eval" / "progress.json").exists()
    full = harness.evaluate(run, feature_net=CountingNet(), out=tmp_path / "full", **kw)
    for got, want in zip(resumed["checkpoints"], full["checkpoints"]):
        assert got["fvd"] == pytest.approx(want["fvd"], rel=1e-6)
        np.testing.assert_allclose(got["psnr_per_frame"], want["psnr_per_frame"], rtol=1e-6)
    np.testing.assert_allclose(resumed["baseline"]["psnr_per_frame"], full["baseline"]["psnr_per_frame"], rtol=1e-9)
    assert resumed["baseline"]["fvd"] == pytest.approx(full["baseline"]["fvd"], rel=1e-12)
