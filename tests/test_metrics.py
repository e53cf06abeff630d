"""Frame metrics (PSNR, SSIM, copy-last-frame baseline) and the FVD / FID feature pipelines.

Also run as a worker of the two-process test:
    python tests/test_metrics.py gather OUT PID NPROC PORT
"""

import math
import os
import pathlib
import socket
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from evaluation import fid, frechet, fvd, i3d, metrics

ROOT = pathlib.Path(__file__).resolve().parents[1]


class FrameMeans:
    """A cheap stand-in feature network: [B, T, 224, 224, 3] -> per-frame channel means [B, 3T]."""

    checksum = "frame-means-v1"

    def __init__(self):
        self.calls = 0
        self._f = jax.jit(lambda x: jnp.mean(x, axis=(2, 3)).reshape(x.shape[0], -1))

    def __call__(self, x):
        self.calls += 1
        return self._f(x)


def moving_squares(n, num_frames=9, size=16, seed=0):
    """Coloured 5×5 squares bouncing over a black frame: uint8 [n, T, size, size, 3]."""
    r = np.random.default_rng(seed)
    out = np.zeros((n, num_frames, size, size, 3), np.uint8)
    for i in range(n):
        y, x = (int(v) for v in r.integers(0, size - 5, 2))
        vy, vx = (int(v) for v in r.choice([-2, -1, 1, 2], 2))
        color = r.integers(80, 256, 3)
        for t in range(num_frames):
            out[i, t, y:y + 5, x:x + 5] = color
            vy = -vy if not 0 <= y + vy <= size - 5 else vy
            vx = -vx if not 0 <= x + vx <= size - 5 else vx
            y, x = y + vy, x + vx
    return out


# ----------------------------------------------------------------------------------------------
# PSNR / SSIM.

def test_psnr_closed_form():
    r = np.random.default_rng(0)
    true = r.integers(20, 230, (2, 3, 12, 12, 3)).astype(np.uint8)
    offsets = np.array([1, 3, 7])                       # a different constant offset per frame
    pred = (true.astype(int) + offsets[None, :, None, None, None]).astype(np.uint8)
    got = np.asarray(metrics.psnr(pred, true))
    want = 10 * np.log10(255.0 ** 2 / offsets.astype(float) ** 2)
    np.testing.assert_allclose(got, np.broadcast_to(want, (2, 3)), rtol=1e-5)
    # The same on the [0, 1] scale with max_value = 1.
    np.testing.assert_allclose(np.asarray(metrics.psnr(pred / 255.0, true / 255.0, max_value=1.0)), got, rtol=1e-5)
    # Identical frames: +inf without the cap, the cap (PSNR_CAP_DB) with it.
    assert np.all(np.isinf(np.asarray(metrics.psnr(true, true, cap=None))))
    np.testing.assert_array_equal(np.asarray(metrics.psnr(true, true)), metrics.PSNR_CAP_DB)


def _reference_ssim(x, y, max_value=255.0):
    """SSIM written out with scipy: Gaussian filter (σ 1.5, radius 5), valid region, float64."""
    from scipy.ndimage import gaussian_filter

    x, y = x.astype(np.float64), y.astype(np.float64)
    c1, c2 = (0.01 * max_value) ** 2, (0.03 * max_value) ** 2
    values = []
    for c in range(x.shape[-1]):
        def f(a):
            return gaussian_filter(a, 1.5, truncate=5 / 1.5, mode="constant")[5:-5, 5:-5]

        a, b = x[..., c], y[..., c]
        mx, my = f(a), f(b)
        vx, vy, cxy = f(a * a) - mx ** 2, f(b * b) - my ** 2, f(a * b) - mx * my
        s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
        values.append(s.mean())
    return float(np.mean(values))


def test_ssim_is_one_for_identical_frames_and_matches_a_reference():
    r = np.random.default_rng(1)
    x = r.integers(0, 256, (3, 20, 17, 3)).astype(np.uint8)
    np.testing.assert_allclose(np.asarray(metrics.ssim(x, x)), 1.0, atol=1e-6)
    noisy = np.clip(x.astype(int) + r.integers(-40, 41, x.shape), 0, 255).astype(np.uint8)
    smooth = np.clip(np.cumsum(r.integers(-6, 7, x.shape), axis=1) + 128, 0, 255).astype(np.uint8)
    for a, b in ((x, noisy), (x, r.integers(0, 256, x.shape).astype(np.uint8)), (smooth, noisy)):
        got = np.asarray(metrics.ssim(a, b))
        want = [_reference_ssim(a[i], b[i]) for i in range(len(a))]
        np.testing.assert_allclose(got, want, atol=2e-5)
        np.testing.assert_allclose(np.asarray(metrics.ssim(b, a)), got, atol=2e-5)   # symmetric
    assert np.all(np.asarray(metrics.ssim(x, noisy)) < 0.99)
    assert np.all(np.abs(np.asarray(metrics.ssim(x, r.integers(0, 256, x.shape).astype(np.uint8)))) < 0.1)
    with pytest.raises(ValueError, match="11×11"):
        metrics.ssim(x[:, :8, :8], x[:, :8, :8])


def test_copy_last_frame_baseline_exact_on_static_video_worse_on_motion():
    r = np.random.default_rng(2)
    static = np.repeat(r.integers(0, 256, (2, 1, 16, 16, 3)).astype(np.uint8), 6, axis=1)
    moving = moving_squares(2, num_frames=6, size=16)
    base = metrics.copy_last_frame(moving, 2)
    np.testing.assert_array_equal(base[:, :2], moving[:, :2])
    assert np.all(base[:, 2:] == moving[:, 1:2])

    fm = metrics.FrameMetrics(num_cond=2).update(metrics.copy_last_frame(static, 2), static)
    res = fm.result()
    assert res["count"] == 2 and len(res["psnr_per_frame"]) == 4
    assert res["psnr_per_frame"] == [metrics.PSNR_CAP_DB] * 4 and res["exact_frames"] == 2 * 4
    np.testing.assert_allclose(res["ssim_per_frame"], 1.0, atol=1e-6)

    res = metrics.FrameMetrics(num_cond=2).update(base, moving).result()
    assert all(math.isfinite(v) for v in res["psnr_per_frame"])
    assert max(res["ssim_per_frame"]) < 0.999
    # The copy drifts away from the truth as the squares move on: the last frame is the worst.
    assert res["mse_per_frame"][-1] > res["mse_per_frame"][0] > 0


def test_frame_metrics_stay_finite_on_identical_constant_and_black_frames():
    """Identical frames, constant frames and all-black predictions: closed forms, never inf or NaN."""
    r = np.random.default_rng(7)
    truth = r.integers(0, 256, (2, 4, 12, 12, 3)).astype(np.uint8)
    const_a = np.full((1, 3, 12, 12, 3), 60, np.uint8)
    const_b = np.full((1, 3, 12, 12, 3), 90, np.uint8)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    # Constant frames: no variance, SSIM = (2ab + C1) / (a² + b² + C1) (the C2 factor is 1), finite.
    want = (2 * 60 * 90 + c1) / (60 ** 2 + 90 ** 2 + c1) * (c2 / c2)
    np.testing.assert_allclose(np.asarray(metrics.ssim(const_a, const_b)), want, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(metrics.ssim(const_a, const_a)), 1.0, atol=1e-6)
    np.testing.assert_allclose(np.asarray(metrics.psnr(const_a, const_b)), 10 * np.log10(255.0 ** 2 / 30 ** 2),
                               rtol=1e-5)
    # All-black predictions: PSNR = 10 log10(255² / mean(truth²)) per frame; black truth too: the cap.
    black = np.zeros_like(truth)
    want = 10 * np.log10(255.0 ** 2 / (truth.astype(float) ** 2).mean(axis=(2, 3, 4)))
    np.testing.assert_allclose(np.asarray(metrics.psnr(black, truth)), want, rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(metrics.psnr(black, black)), metrics.PSNR_CAP_DB)
    # The cap touches exact frames only: the least inexact 12x12 frame (one grey level in one sample).
    one = truth.copy()
    one[0, 0, 0, 0, 0] ^= 1
    least = float(np.asarray(metrics.psnr(one[0, 0], truth[0, 0])))
    assert least == pytest.approx(10 * np.log10(255.0 ** 2 * 12 * 12 * 3), rel=1e-5) and least < metrics.PSNR_CAP_DB
    # A mean over a clip with one exact frame: the exact frame counts as the cap, the rest as they are.
    pred = truth.copy()
    pred[:, 2:] = np.clip(truth[:, 2:].astype(int) + 5, 0, 255).astype(np.uint8)
    res = metrics.FrameMetrics(1).update(pred, truth).result()
    per = np.asarray(metrics.psnr(pred[:, 1:], truth[:, 1:])).mean(axis=0)
    assert res["psnr_per_frame"][0] == metrics.PSNR_CAP_DB and res["exact_frames"] == 2
    np.testing.assert_allclose(res["psnr_per_frame"], per, rtol=1e-6)
    assert all(math.isfinite(v) for k in ("psnr", "ssim", "mse") for v in res[f"{k}_per_frame"])


def test_evaluators_on_a_single_clip_give_finite_values_or_na():
    """One clip: the frame metrics are defined; FVD has no covariance and says so (None with a reason),
    and the results pass strict JSON."""
    import json

    from evaluation import evaluators

    clip = moving_squares(1, num_frames=9, size=16, seed=8)
    frames = evaluators.FrameEvaluator(num_cond=2).run({"sample": clip, "truth": clip})
    assert frames["psnr"] == metrics.PSNR_CAP_DB and frames["exact_frames"] == 7
    assert frames["ssim"] == pytest.approx(1.0, abs=1e-6)
    base = evaluators.FrameEvaluator(num_cond=2, baseline=True).run({"sample": clip, "truth": clip})
    want = metrics.FrameMetrics(2).update(metrics.copy_last_frame(clip, 2), clip).result()
    np.testing.assert_allclose(base["psnr_per_frame"], want["psnr_per_frame"], rtol=1e-12)
    reference = frechet.RunningStatistics(27).update(np.random.default_rng(0).standard_normal((5, 27)))
    fvd_eval = evaluators.FVD(reference=reference, feature_net=FrameMeans(), feature_dim=27, batch_size=2)
    out = fvd_eval.run(clip)
    assert out["fvd"] is None and "at least 2 clips" in out["fvd_na"] and out["num_samples"] == 1
    # Two clips against a reference of 5 vectors in 27 dimensions (fewer than the dimensions): finite.
    two = moving_squares(2, num_frames=9, size=16, seed=9)
    assert math.isfinite(fvd_eval.run(two)["fvd"])
    row = evaluators.scalars(frames, out)
    assert "fvd" not in row and row["psnr"] == metrics.PSNR_CAP_DB
    for r in (frames, base, out, row):
        json.loads(json.dumps(r, allow_nan=False), parse_constant=lambda c: pytest.fail(c))


def test_frame_metrics_mask_merge_and_flat_round_trip():
    clips = moving_squares(5, num_frames=4, size=12, seed=3)
    pred = metrics.copy_last_frame(clips, 1)
    mask = np.array([True, False, True, True, False])
    whole = metrics.FrameMetrics(1).update(pred, clips, mask).result()
    # Independent: per-clip, per-frame PSNR of the kept rows, averaged.
    err = (pred[mask, 1:].astype(float) - clips[mask, 1:]) ** 2
    want = (10 * np.log10(255.0 ** 2 / err.mean(axis=(2, 3, 4)))).mean(axis=0)
    np.testing.assert_allclose(whole["psnr_per_frame"], want, rtol=1e-5)
    assert whole["count"] == 3

    a = metrics.FrameMetrics(1).update(pred[:2], clips[:2], mask[:2])
    b = metrics.FrameMetrics(1).update(pred[2:], clips[2:], mask[2:])
    b2 = metrics.FrameMetrics.from_array(b.to_array(), 1)
    merged = a.merge(b2).result()
    # The round trip and the merge add float64 sums exactly: the same batches through one
    # accumulator give the same numbers. Against one call on all rows the per-frame values are
    # computed in float32 over other batch shapes, so they agree to float32 rounding.
    same = metrics.FrameMetrics(1).update(pred[:2], clips[:2], mask[:2]).update(pred[2:], clips[2:], mask[2:])
    for k in ("psnr_per_frame", "ssim_per_frame", "mse_per_frame"):
        np.testing.assert_allclose(merged[k], same.result()[k], rtol=1e-12)
        np.testing.assert_allclose(merged[k], whole[k], rtol=1e-5)


# ----------------------------------------------------------------------------------------------
# Exact float64 across processes.

def test_pack_float64_is_bit_exact_where_float32_is_not():
    x = np.array([1 + 2.0 ** -52, 1e8 + 1e-7, -0.0, 5e-324, np.inf, -np.inf, np.pi * 1e300, np.nan])
    words = fvd.pack_float64(x)
    assert words.dtype == np.uint32 and words.shape == (16,)
    back = fvd.unpack_float64(words, x.shape)
    np.testing.assert_array_equal(back.view(np.uint64), x.view(np.uint64))
    # The words are the value's IEEE-754 bytes, little-endian (struct, an independent encoder): 1.0 is
    # 0x3FF0000000000000, low word first.
    import struct

    np.testing.assert_array_equal(words, np.frombuffer(struct.pack("<8d", *x), "<u4"))
    np.testing.assert_array_equal(fvd.pack_float64(1.0), [0, 0x3FF00000])
    # Through a JAX array with x64 disabled (what process_allgather moves) the words arrive unchanged;
    # float64 values themselves would arrive as float32 and lose the first two.
    gathered = fvd.allgather_float64(x, gather=lambda w: np.asarray(jnp.asarray(w))[None])
    np.testing.assert_array_equal(gathered[0].view(np.uint64), x.view(np.uint64))
    m = np.random.default_rng(0).standard_normal((3, 4))
    np.testing.assert_array_equal(fvd.unpack_float64(fvd.pack_float64(m), m.shape), m)


def _large_offset_features(seed, n, dim=6):
    """Features around 1e8 with unit spread: float32 keeps about 1 unit of them, float64 all."""
    return 1e8 + np.random.default_rng(seed).standard_normal((n, dim))


def test_merge_statistics_through_a_gather_equals_one_shot():
    parts = [_large_offset_features(s, n) for s, n in ((0, 7), (1, 5), (2, 0))]
    accs = [frechet.RunningStatistics(6).update(p) if len(p) else frechet.RunningStatistics(6) for p in parts]
    vectors = [fvd.pack_float64(fvd.statistics_to_vector(a, 6)) for a in accs]
    calls = []

    def gather(words):   # stands in for process_allgather: every process's words, in process order
        calls.append(words)
        return np.stack(vectors)

    merged = fvd.merge_statistics(accs[0], 6, gather=gather)
    assert len(calls) == 1 and calls[0].dtype == np.uint32
    mu, cov = merged.result()
    want_mu, want_cov = frechet.statistics(np.concatenate(parts))
    assert merged.count == 12
    # float64 agrees to ~1e-8 here; features cast to float32 are off by ~0.5 in the mean, ~1 in the cov.
    np.testing.assert_allclose(mu, want_mu, rtol=0, atol=1e-6)
    np.testing.assert_allclose(cov, want_cov, rtol=0, atol=1e-6)
    # Round trip of one accumulator through its vector (upper triangle of M2).
    again = fvd.statistics_from_vector(fvd.statistics_to_vector(accs[0], 6), 6)
    np.testing.assert_array_equal(again.m2, accs[0].m2)


def _gather_worker(out, pid, nproc, port):
    from sid2video import sharding

    sharding.initialize_distributed(f"127.0.0.1:{port}", nproc, pid)
    assert jax.process_count() == nproc
    # float64 accumulators with a large offset, merged through the real process_allgather.
    acc = frechet.RunningStatistics(6).update(_large_offset_features(pid, 4 + pid))
    merged = fvd.merge_statistics(acc, 6)
    # The FVD extractor on one global array over both processes; each masks different rows.
    clips = moving_squares(4, seed=10 + pid)
    mask = np.array([True, True, pid == 0, False])
    ex = fvd.FeatureExtractor(net=FrameMeans(), dim=27, batch_size=4).update(clips, mask)
    ex.update(clips[:1], [True])            # a smaller batch is padded to the same size
    stats = ex.merged()
    if pid == 0:
        np.savez(out, count=merged.count, mean=merged.mean, m2=merged.m2, fcount=stats.count, fmean=stats.mean,
                 fm2=stats.m2)


def test_two_processes_merge_exactly(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT),
               JAX_COMPILATION_CACHE_DIR=str(ROOT / ".jax_cache"), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5")
    out = tmp_path / "merged.npz"
    import shipped

    done = shipped.run_together([[sys.executable, __file__, "gather", str(out), str(p), "2", str(port)]
                                 for p in range(2)], env=env, timeout=300)
    for rc, _, err in done:
        assert rc == 0, err[-3000:]
    got = np.load(out)
    feats = np.concatenate([_large_offset_features(p, 4 + p) for p in range(2)])
    mu, cov = frechet.statistics(feats)
    assert int(got["count"]) == 9
    np.testing.assert_allclose(got["mean"], mu, rtol=0, atol=1e-6)   # float32 would be off by ~0.5
    np.testing.assert_allclose(got["m2"] / 8, cov, rtol=0, atol=1e-6)

    # The extractor: process 0 kept rows 0-2 and 0 again, process 1 rows 0-1 and 0.
    net = FrameMeans()
    ex = fvd.FeatureExtractor(net=net, dim=27, batch_size=4)
    rows = []
    for pid, keep in ((0, [0, 1, 2, 0]), (1, [0, 1, 0])):
        rows.append(ex.features(moving_squares(4, seed=10 + pid))[keep])
    want_mu, want_cov = frechet.statistics(np.concatenate(rows))
    assert int(got["fcount"]) == 7
    np.testing.assert_allclose(got["fmean"], want_mu, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got["fm2"] / 6, want_cov, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# FVD / FID extractors.

def test_streamed_masked_statistics_equal_one_shot():
    net = FrameMeans()
    ex = fvd.FeatureExtractor(net=net, dim=27, batch_size=4)
    clips = moving_squares(7, seed=4)
    garbage = np.full_like(clips[:2], 255)
    # Batches of different sizes; padding rows (garbage) are masked out.
    ex.update(clips[:3])
    ex.update(np.concatenate([clips[3:4], garbage]), [True, False, False])
    ex.update(np.concatenate([clips[4:7], garbage[:1]]), [True, True, True, False])
    assert net.calls == 3
    direct = np.asarray(net(i3d.preprocess(clips)))
    mu, cov = frechet.statistics(direct)
    got_mu, got_cov = ex.merged().result()
    assert ex.stats.count == 7
    np.testing.assert_allclose(got_mu, mu, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got_cov, cov, rtol=1e-4, atol=1e-7)
    with pytest.raises(ValueError, match="batch_size=4"):
        ex.update(clips[:5])


def test_conditioning_frames_in_or_out_of_fvd():
    clips = moving_squares(2, num_frames=11, seed=5)
    net = FrameMeans()
    counted = fvd.FeatureExtractor(net=net, dim=33, num_cond_frames=2, count_cond_frames=True, batch_size=2)
    cut = fvd.FeatureExtractor(net=net, dim=27, num_cond_frames=2, count_cond_frames=False, batch_size=2)
    f_all, f_cut = counted.features(clips), cut.features(clips)
    assert f_all.shape == (2, 33) and f_cut.shape == (2, 27)
    np.testing.assert_allclose(f_cut, f_all[:, 6:], rtol=1e-6)   # frames 2.. only
    assert counted.protocol()["cond_frames_in_fvd"] and not cut.protocol()["cond_frames_in_fvd"]
    with pytest.raises(ValueError, match="at least 9 frames.*predicted frames"):
        fvd.FeatureExtractor(net=net, dim=24, num_cond_frames=3, count_cond_frames=False).features(clips[:, :10])
    with pytest.raises(ValueError, match="at least 9 frames"):
        counted.features(clips[:, :8])


def test_fid_extractor_takes_images_and_rejects_video():
    seen = []

    class Pool:
        checksum = "pool-v1"

        def __call__(self, x):
            seen.append(x.shape)
            return jnp.mean(x.astype(jnp.float32), axis=(1, 2))

    ex = fid.FeatureExtractor(net=Pool(), dim=3, batch_size=4)
    images = np.random.default_rng(6).integers(0, 256, (3, 10, 10, 3)).astype(np.uint8)
    a = ex.features(images)
    b = ex.features(images[:, None])                 # [B, 1, H, W, 3] is the same
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(a, images.mean(axis=(1, 2)), rtol=1e-6)
    assert seen[0] == (4, 10, 10, 3)                 # padded to the batch size
    with pytest.raises(ValueError, match="use FVD"):
        ex.features(np.zeros((2, 3, 10, 10, 3), np.uint8))


if __name__ == "__main__":
    import absl.flags

    absl.flags.FLAGS.mark_as_parsed()
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "gather":
        _gather_worker(args[0], int(args[1]), int(args[2]), int(args[3]))
    else:
        raise SystemExit(f"unknown mode {mode}")
