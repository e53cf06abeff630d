"""The Kinetics folder index and clip decoding, on pattern videos whose pixels give their frame."""

import json
import os

import numpy as np
import pytest

from sid2video.data import clip_decoder, kinetics, synthetic, video_io

# ffmpeg runs as a subprocess (fork + exec), which JAX's fork warning does not distinguish.
pytestmark = pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")

LENGTHS = [12, 16, 20, 24, 28, 30]
SPEC = clip_decoder.ClipSpec(num_frames=4, frame_stride=3)  # spans 10 frames


def _write_dataset(root):
    videos = [dict(split="train", label="abseiling" if i % 2 else "air drumming", num_frames=n)
              for i, n in enumerate(LENGTHS)]
    videos.append(dict(split="train", label="abseiling", num_frames=5))  # too short for SPEC
    videos.append(dict(split="val", label="abseiling", num_frames=14))
    paths = synthetic.write_pattern_videos(root, videos)
    (root / "train" / "abseiling" / "corrupt0000_000000_000010.mp4").write_bytes(b"\x00" * 64 + os.urandom(2000))
    data = paths[0].read_bytes()
    (root / "train" / "air_drumming" / "truncated00_000000_000010.mp4").write_bytes(data[: len(data) // 3])
    return paths


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("k600")
    _write_dataset(root)
    return root


def test_index_reads_labels_and_records_skips(dataset):
    index = kinetics.build_index(dataset, "train", progress=False, refresh=True)
    assert index.class_names == ["abseiling", "air drumming"]
    assert len(index.entries) == 7
    by_video = {int(e["key"][7:11]): e for e in index.entries}  # pattern<vvvv>_...
    for v, n in enumerate(LENGTHS):
        assert by_video[v]["num_frames"] == n
        assert (by_video[v]["height"], by_video[v]["width"]) == (32, 40)
        assert by_video[v]["label"] == (0 if v % 2 else 1)  # "air_drumming" folder -> "air drumming"
    unreadable = {os.path.basename(u["path"]): u["reason"] for u in index.unreadable}
    assert set(unreadable) == {"corrupt0000_000000_000010.mp4", "truncated00_000000_000010.mp4"}
    assert all(r for r in unreadable.values())

    usable, skipped = index.usable(SPEC)
    assert sorted(int(e["key"][7:11]) for e in usable) == list(range(6))
    reasons = {os.path.basename(s["path"]): s["reason"] for s in skipped}
    assert len(reasons) == 3 and "too short" in reasons["pattern0006_000000_000001.mp4"]
    # The cache records the unreadable files too.
    cached = json.loads(open(index.cache_path).read())
    assert len(cached["unreadable"]) == 2 and len(cached["entries"]) == 7


def test_index_cache_is_used_and_invalidated(dataset, monkeypatch, tmp_path):
    first = kinetics.build_index(dataset, "val", progress=False)

    def fail(*a, **k):
        raise AssertionError("probed although the cache is valid")

    monkeypatch.setattr(video_io, "probe", fail)
    again = kinetics.build_index(dataset, "val", progress=False)
    assert again.entries == first.entries and again.cache_path == first.cache_path
    monkeypatch.undo()
    # A new file changes the folder's fingerprint: the index is rebuilt and sees it.
    src = dataset / "val" / "abseiling" / "pattern0007_000000_000002.mp4"
    extra = dataset / "val" / "abseiling" / "extra000000_000000_000002.mp4"
    extra.write_bytes(src.read_bytes())
    try:
        rebuilt = kinetics.build_index(dataset, "val", progress=False)
        assert len(rebuilt.entries) == len(first.entries) + 1
    finally:
        extra.unlink()
    # A read-only data folder: the cache goes to cache_dir.
    other = kinetics.build_index(dataset, "val", progress=False, cache_dir=tmp_path)
    assert os.path.dirname(other.cache_path) == str(tmp_path)


def test_eval_clip_is_centred_with_the_stride(dataset):
    index = kinetics.build_index(dataset, "train", progress=False)
    usable, _ = index.usable(SPEC)
    source = kinetics.FolderClipSource(index, usable)
    decoder = clip_decoder.ClipDecoder(SPEC, (32, 40), train=False)
    for i in range(len(source)):
        rec = source[i]
        out = decoder(rec, np.random.default_rng(0))
        assert out["video"].shape == (4, 32, 40, 3) and out["video"].dtype == np.uint8
        t, v, x = synthetic.pattern_decode(out["video"])
        n = rec["num_frames"]
        start = (n - SPEC.span) // 2
        assert t.tolist() == [start + 3 * k for k in range(4)]
        assert (v == int(rec["key"][7:11])).all()
        assert (x == np.arange(40)).all()  # no crop, no flip
        assert out["label"] == rec["label"]


def test_train_clips_random_start_crop_and_flip(dataset):
    index = kinetics.build_index(dataset, "train", progress=False)
    usable, _ = index.usable(SPEC)
    rec = kinetics.FolderClipSource(index, usable)[[e["num_frames"] for e in usable].index(30)]
    decoder = clip_decoder.ClipDecoder(SPEC, (32, 24), train=True)  # no resize: crop only
    starts, flips, offsets = set(), set(), set()
    for seed in range(24):
        video = decoder(rec, np.random.default_rng(seed))["video"]
        assert video.shape == (4, 32, 24, 3)
        t, _, x = synthetic.pattern_decode(video)
        assert np.all(np.diff(t) == 3) and 0 <= t[0] <= 30 - SPEC.span
        for row in x:  # 24 consecutive columns of the 40, possibly mirrored
            flipped = row[0] > row[-1]
            assert np.array_equal(np.abs(np.diff(row)), np.ones(23, int))
            flips.add(flipped)
            offsets.add(int(row.min()))
            assert 0 <= row.min() and row.max() <= 39
        starts.add(int(t[0]))
    assert flips == {True, False} and len(starts) > 5 and len(offsets) > 5
    # config.data.random_flip=False: the same random crops, never mirrored.
    unflipped = clip_decoder.ClipDecoder(SPEC, (32, 24), train=True, flip=False)
    for seed in range(24):
        x = synthetic.pattern_decode(unflipped(rec, np.random.default_rng(seed))["video"])[2]
        assert (x[:, 0] < x[:, -1]).all()
    # The same rng gives the same clip.
    a = decoder(rec, np.random.default_rng(5))["video"]
    b = decoder(rec, np.random.default_rng(5))["video"]
    np.testing.assert_array_equal(a, b)


def test_short_side_resize_then_crop(dataset):
    index = kinetics.build_index(dataset, "train", progress=False)
    usable, _ = index.usable(SPEC)
    rec = kinetics.FolderClipSource(index, usable)[0]
    video = clip_decoder.ClipDecoder(SPEC, (16, 16), train=False)(rec, None)["video"]
    assert video.shape == (4, 16, 16, 3)
    # 32x40 -> 16x20 -> centre 16x16: the blue ramp is halved and shifted by two columns.
    blue = video[0, 8, :, 2].astype(float)
    expected = 6 * (2 * (np.arange(16) + 2) + 0.5) + 3
    assert np.abs(blue[1:-1] - expected[1:-1]).max() < 6


def test_decoded_cache_gives_the_same_clips_and_stays_within_its_budget(dataset):
    import pickle

    index = kinetics.build_index(dataset, "train", progress=False)
    usable, _ = index.usable(SPEC)
    source = kinetics.FolderClipSource(index, usable)
    records = [source[i] for i in range(len(source))]
    for size in [(32, 24), (16, 16)]:  # crop only; short-side resize then crop
        plain = clip_decoder.ClipDecoder(SPEC, size, train=True)
        cached = clip_decoder.ClipDecoder(SPEC, size, train=True, cache_mb=1)
        for rounds in range(2):
            for i, rec in enumerate(records):
                a = plain(rec, np.random.default_rng([rounds, i]))
                b = cached(rec, np.random.default_rng([rounds, i]))
                np.testing.assert_array_equal(a["video"], b["video"])
                assert a["label"] == b["label"]
        # Each video decoded once, then served from memory.
        assert cached.cache.misses == len(records) and cached.cache.hits == len(records)
    # A worker's copy starts empty; the budget evicts the least recently used video.
    assert len(pickle.loads(pickle.dumps(cached)).cache) == 0
    records = sorted(records, key=lambda rec: -rec["num_frames"])  # the third is the shortest
    sizes = [16 * 20 * 3 * rec["num_frames"] for rec in records[:3]]  # 32x40 short side -> 16x20
    small = clip_decoder.ClipDecoder(SPEC, (16, 16), train=False, cache_mb=(sizes[0] + sizes[1]) / 2**20)
    for rec in records[:2]:
        small(rec, None)
    assert len(small.cache) == 2 and small.cache.nbytes == sizes[0] + sizes[1]
    small(records[1], None)  # now the most recently used
    small(records[2], None)  # pushes out records[0] (and only it: it is the longer)
    assert small.cache.nbytes <= small.cache.max_bytes and small.cache.misses == 3
    small(records[1], None)
    assert small.cache.misses == 3
    small(records[0], None)  # evicted: decoded again
    assert small.cache.misses == 4
    with pytest.raises(ValueError, match="cache_mb"):
        clip_decoder.ClipDecoder(SPEC, (16, 16), train=False, cache_mb=-1)


def test_decode_failure_becomes_a_marker(dataset):
    decoder = clip_decoder.ClipDecoder(SPEC, (32, 40), train=True)
    rec = {"key": "bad", "path": str(dataset / "train" / "abseiling" / "corrupt0000_000000_000010.mp4"),
           "num_frames": 30, "height": 32, "width": 40, "label": 0}
    out = decoder(rec, np.random.default_rng(0))
    assert set(out) == {"_skip"} and out["_skip"].startswith("bad: ")


def test_clip_spec_validation():
    assert clip_decoder.ClipSpec(16, 2).span == 31
    with pytest.raises(ValueError, match="num_frames"):
        clip_decoder.ClipSpec(0, 1)
    with pytest.raises(ValueError, match="shorter"):
        clip_decoder.ClipSpec(16, 1).start(10, None)


def test_flat_split_folder_takes_labels_from_the_csv(tmp_path):
    # Some downloaders leave the videos directly in <split>/; the CSVs then give the labels.
    paths = synthetic.write_pattern_videos(tmp_path, [dict(split="test", label="zumba", num_frames=10),
                                                      dict(split="train", label="yoga", num_frames=10)])
    flat = tmp_path / "test" / paths[0].name
    paths[0].rename(flat)
    (tmp_path / "test" / "unlisted0000_000000_000001.mp4").write_bytes(paths[1].read_bytes())
    index = kinetics.build_index(tmp_path, "test", progress=False)
    labels = {e["key"]: (e["label"], e["label_name"]) for e in index.entries}
    assert index.class_names == ["yoga", "zumba"]
    assert labels[flat.stem] == (1, "zumba") and labels["unlisted0000_000000_000001"] == (-1, "")
