"""Weight caches check their own contents: an altered or missing array is rebuilt, never used."""

import numpy as np
import pytest

from evaluation import i3d, inception, weight_cache

SOURCE = "ab" * 32


def _arrays(seed=0):
    r = np.random.default_rng(seed)
    return {"a/kernel": r.standard_normal((3, 4)).astype(np.float32), "a/bias": np.zeros(4, np.float32),
            "b/var": r.random(5).astype(np.float32)}


def _rewrite(path, change):
    """Rewrite a cache file with `change` applied to its arrays, keeping its recorded checksums."""
    arrays = weight_cache.load_npz(path)
    change(arrays)
    weight_cache.save_npz(path, arrays)


ALTERATIONS = {
    "altered": lambda a: a["a/kernel"].__setitem__((0, 0), a["a/kernel"][0, 0] + 1e-3),
    "missing": lambda a: a.pop("b/var"),
    "added": lambda a: a.__setitem__("c/extra", np.ones(2, np.float32)),
    "retyped": lambda a: a.__setitem__("a/bias", a["a/bias"].astype(np.float64)),
    "no checksum": lambda a: a.pop(weight_cache.CONTENT_KEY),
}


def test_cache_round_trip_and_source(tmp_path):
    path = tmp_path / "w.npz"
    weight_cache.save_cache(path, _arrays(), SOURCE)
    got = weight_cache.load_cache(path, SOURCE)
    assert got.keys() == _arrays().keys()
    for k, v in _arrays().items():
        np.testing.assert_array_equal(got[k], v)
    assert weight_cache.load_cache(path, "cd" * 32) is None  # converted from another source file
    assert weight_cache.load_cache(tmp_path / "absent.npz") is None
    # The checksum is a function of the contents: a second implementation over the raw bytes.
    import hashlib
    h = hashlib.sha256()
    stored = weight_cache.load_npz(path)
    for name in sorted(k for k in stored if k != weight_cache.CONTENT_KEY):
        h.update(f"{name}\0{stored[name].dtype.str}\0{stored[name].shape}\0".encode() + stored[name].tobytes())
    assert str(stored[weight_cache.CONTENT_KEY]) == h.hexdigest()


@pytest.mark.parametrize("kind", list(ALTERATIONS))
def test_any_change_invalidates_the_cache(tmp_path, kind):
    path = tmp_path / "w.npz"
    weight_cache.save_cache(path, _arrays(), SOURCE)
    _rewrite(path, ALTERATIONS[kind])
    assert weight_cache.load_cache(path, SOURCE) is None


def test_truncated_cache_is_rebuilt(tmp_path):
    path = tmp_path / "w.npz"
    weight_cache.save_cache(path, _arrays(), SOURCE)
    path.write_bytes(path.read_bytes()[:100])
    assert weight_cache.load_cache(path, SOURCE) is None


def test_a_directory_is_not_a_cache(tmp_path):
    (tmp_path / "w.npz").mkdir()
    with pytest.raises(weight_cache.CacheError, match=r"w.npz is a directory, not a file") as err:
        weight_cache.load_cache(tmp_path / "w.npz")
    assert "\n" not in str(err.value)
    (tmp_path / "file").write_text("x")
    with pytest.raises(weight_cache.CacheError, match=r"file is a file, not a folder"):
        weight_cache.save_cache(tmp_path / "file" / "w.npz", _arrays(), SOURCE)


@pytest.fixture
def fake_i3d(tmp_path, monkeypatch):
    """I3D's cache in an empty folder, its conversion replaced by small arrays (counted)."""
    monkeypatch.setenv("SID2VIDEO_CACHE", str(tmp_path))
    calls = []

    def convert(*a, **k):
        calls.append(1)
        return _arrays()

    monkeypatch.setattr(i3d, "convert", convert)
    return calls


@pytest.mark.parametrize("kind", list(ALTERATIONS))
def test_i3d_cache_is_rebuilt_after_any_change(fake_i3d, tmp_path, kind):
    first = i3d._cached_weights()
    assert len(fake_i3d) == 1
    i3d._cached_weights()
    assert len(fake_i3d) == 1  # an intact cache is read, not rebuilt
    (path,) = tmp_path.glob("i3d-kinetics-400-*.npz")
    _rewrite(path, ALTERATIONS[kind])
    again = i3d._cached_weights()
    assert len(fake_i3d) == 2  # rebuilt from the source
    assert again.keys() == first.keys()
    for k in first:
        np.testing.assert_array_equal(again[k], first[k])
    assert weight_cache.load_cache(path, i3d.SOURCE_SHA256) is not None  # and written back intact


def test_i3d_cache_path_that_is_a_directory(fake_i3d, tmp_path):
    (tmp_path / f"i3d-kinetics-400-{i3d.SOURCE_SHA256[:16]}.npz").mkdir()
    with pytest.raises(weight_cache.CacheError, match="is a directory, not a file"):
        i3d._cached_weights()


def test_inception_cache_is_checked(tmp_path, monkeypatch):
    monkeypatch.setenv("SID2VIDEO_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("SID2VIDEO_FID_WEIGHTS", raising=False)
    cached = tmp_path / "cache" / inception.CACHED_FILE
    weight_cache.save_cache(cached, _arrays(), SOURCE)
    _rewrite(cached, ALTERATIONS["altered"])
    with pytest.raises(FileNotFoundError, match="not set up \\(no valid"):
        inception.load()
    # A converted .npz passed explicitly is checked too.
    weight_cache.save_cache(tmp_path / "given.npz", _arrays(), SOURCE)
    _rewrite(tmp_path / "given.npz", ALTERATIONS["missing"])
    with pytest.raises(ValueError, match="does not match its content checksum"):
        inception.load(tmp_path / "given.npz")
    cached.unlink()
    cached.mkdir()
    with pytest.raises(weight_cache.CacheError, match="is a directory, not a file"):
        inception.load()
