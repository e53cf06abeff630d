"""grain pipelines: coverage, skips, determinism, process shards, state restore, worker processes."""

import dataclasses
import json
import os

import numpy as np
import pytest

from sid2video.data import batching, clip_decoder, kinetics, pipeline, sources, synthetic

# ffmpeg runs as a subprocess (fork + exec), which JAX's fork warning does not distinguish.
pytestmark = pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")

NUM_GOOD = 10


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipe")
    videos = [dict(split="train", label=f"class {i % 3}", num_frames=12 + i) for i in range(NUM_GOOD)]
    videos.append(dict(split="train", label="class 0", num_frames=6))  # too short
    synthetic.write_pattern_videos(root, videos)
    (root / "train" / "class_1" / "corrupt0000_000000_000001.mp4").write_bytes(os.urandom(3000))
    return root


def _cfg(data_dir, **kw):
    cfg = dict(dataset="kinetics600", data_dir=str(data_dir), num_frames=4, frame_stride=2,
               resolution=(32, 40), progress=False)
    cfg.update(kw)
    return cfg


def _videos(batch):
    """Video number of every row (mask respected)."""
    v = synthetic.pattern_decode(batch["video"].reshape((-1,) + batch["video"].shape[2:]))[1]
    v = v.reshape(batch["video"].shape[:2])
    assert (v == v[:, :1]).all()
    rows = v[:, 0]
    return rows[batch["mask"]] if "mask" in batch else rows


def _take(it, n):
    return [next(it) for _ in range(n)]


def _same(a, b):
    return len(a) == len(b) and all(
        x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x) for x, y in zip(a, b)
    )


def test_eval_pass_reads_every_good_file_and_counts_skips(data_dir):
    it = pipeline.make_eval_iterator(_cfg(data_dir), batch_size=4, split="train", process_index=0, process_count=1)
    batches = list(it)
    assert len(batches) == 3
    for b in batches:
        assert set(b) == {"video", "label", "mask", "index", "start"}
        assert b["video"].shape == (4, 4, 32, 40, 3) and b["video"].dtype == np.uint8
        assert b["label"].dtype == np.int32 and b["mask"].dtype == bool
        # index names the file, start is the centred clip's first frame (pattern gives both).
        for row in np.flatnonzero(b["mask"]):
            key = it.keys[b["index"][row]]
            v = int(key[7:11])
            t = synthetic.pattern_decode(b["video"][row])[0]
            assert _videos(b)[row] == v and t[0] == b["start"][row] == (12 + v - 7) // 2
            assert t.tolist() == [t[0] + 2 * k for k in range(4)]
    assert [int(b["mask"].sum()) for b in batches] == [4, 4, 2]
    seen = np.concatenate([_videos(b) for b in batches])
    assert sorted(seen.tolist()) == list(range(NUM_GOOD))
    labels = np.concatenate([b["label"][b["mask"]] for b in batches])
    assert labels.tolist() == [it.class_names.index(f"class {v % 3}") for v in seen]
    stats = it.loader_stats
    assert stats.skipped_files == 2 and stats.examples == NUM_GOOD and stats.padding == 2
    reasons = " ".join(s["reason"] for s in stats.index_skipped)
    assert "too short" in reasons and "cannot open" in reasons
    line = stats.line()
    assert "clips/s" in line and "skipped 2 files" in line


def test_same_seed_same_batches_and_each_epoch_is_a_permutation(data_dir):
    cfg = _cfg(data_dir, resolution=(32, 24))
    kw = dict(batch_size=5, process_index=0, process_count=1)
    a = _take(pipeline.make_train_iterator(cfg, seed=7, **kw), 6)
    b = _take(pipeline.make_train_iterator(cfg, seed=7, **kw), 6)
    c = _take(pipeline.make_train_iterator(cfg, seed=8, **kw), 6)
    assert _same(a, b)
    assert not _same(a, c)
    assert set(a[0]) == {"video", "label"} and a[0]["video"].shape == (5, 4, 32, 24, 3)
    epochs = [np.concatenate([_videos(x) for x in a[2 * e : 2 * e + 2]]).tolist() for e in range(3)]
    for order in epochs:
        assert sorted(order) == list(range(NUM_GOOD))
    assert epochs[0] != epochs[1]  # reshuffled every epoch
    # The random crop of a video differs between epochs (seeded by record and epoch).
    first_cols = lambda batches: {  # noqa: E731
        int(v): int(synthetic.pattern_decode(x["video"][i])[2][0, 0])
        for x in batches for i, v in enumerate(_videos(x))
    }
    e0, e1 = first_cols(a[0:2]), first_cols(a[2:4])
    assert e0 != e1


def test_processes_get_disjoint_shards_that_cover_the_set(data_dir):
    cfg = _cfg(data_dir)
    seen = []
    for p in range(2):
        it = pipeline.make_train_iterator(cfg, batch_size=1, seed=3, process_index=p, process_count=2)
        seen.append([int(_videos(b)[0]) for b in _take(it, NUM_GOOD // 2)])
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == list(range(NUM_GOOD))
    # Evaluation shards too; every process yields the same number of batches (4 processes get
    # 3, 3, 2, 2 clips: two batches of 2 each, the last ones all padding).
    ev = [list(pipeline.make_eval_iterator(cfg, batch_size=2, split="train", process_index=p, process_count=4))
          for p in range(4)]
    assert [len(b) for b in ev] == [2, 2, 2, 2]
    assert [[int(x["mask"].sum()) for x in b] for b in ev] == [[2, 1], [2, 1], [2, 0], [2, 0]]
    seen = [np.concatenate([_videos(x) for x in b]).tolist() for b in ev]
    assert sorted(sum(seen, [])) == list(range(NUM_GOOD))


def test_restored_state_continues_with_identical_batches(data_dir):
    cfg = _cfg(data_dir, resolution=(24, 24))
    kw = dict(batch_size=3, seed=11, process_index=0, process_count=1)
    it = pipeline.make_train_iterator(cfg, **kw)
    _take(it, 2)  # mid-epoch (10 videos, 3 per batch)
    state = json.loads(json.dumps(it.get_state()))
    expected = _take(it, 5)  # crosses into the next epoch
    resumed = pipeline.make_train_iterator(cfg, **kw)
    resumed.set_state(state)
    assert _same(_take(resumed, 5), expected)
    fresh = pipeline.make_train_iterator(cfg, **kw)
    assert not _same(_take(fresh, 5), expected)


def test_worker_processes_match_in_process_and_count_decode_failures(data_dir):
    cfg = _cfg(data_dir)
    src = sources.make_source(cfg, split="train", train=False)
    # A stale index: one entry claims a readable video that is corrupt on disk.
    index = kinetics.build_index(data_dir, "train", progress=False)
    entries, _ = index.usable(clip_decoder.ClipSpec(4, 2))
    bad = dict(entries[3], key="stale_000000_000001", path="train/class_1/corrupt0000_000000_000001.mp4")
    src = dataclasses.replace(src, source=kinetics.FolderClipSource(index, entries[:3] + [bad] + entries[3:]))

    def run(workers, state=None, n=None):
        stats = batching.LoaderStats("t")
        ds = pipeline.build_dataset(src, batch_size=4, seed=0, train=False, process_index=0, process_count=1,
                                    worker_count=workers, stats=stats)
        it = iter(ds)
        if state is not None:
            it.set_state(state)
        out = []
        try:
            while n is None or len(out) < n:
                out.append(next(it))
                if len(out) == 1 and state is None:
                    state = it.get_state()
        except StopIteration:
            pass
        finally:
            it.close()
        return out, stats, state

    in_process, stats0, _ = run(0)
    with_worker, stats1, state1 = run(1)
    assert _same(in_process, with_worker)
    seen = np.concatenate([_videos(b) for b in with_worker])
    assert sorted(seen.tolist()) == list(range(NUM_GOOD))  # the bad record was replaced, not padded
    for stats in (stats0, stats1):
        assert list(stats.decode_skipped) == ["stale_000000_000001"] and stats.skip_events == 1
        assert stats.examples == NUM_GOOD
    # Restoring a worker pipeline's state continues where it was.
    rest, _, _ = run(1, state=state1)
    assert _same(rest, with_worker[1:])


def test_undecodable_tail_of_an_eval_pass_is_counted(data_dir):
    cfg = _cfg(data_dir)
    src = sources.make_source(cfg, split="train", train=False)
    index = kinetics.build_index(data_dir, "train", progress=False)
    entries, _ = index.usable(clip_decoder.ClipSpec(4, 2))
    bad = dict(entries[0], key="stale_000000_000001", path="train/class_1/corrupt0000_000000_000001.mp4")
    src = dataclasses.replace(src, source=kinetics.FolderClipSource(index, entries + [bad]))
    stats = batching.LoaderStats("t")
    batches = list(pipeline.build_dataset(src, batch_size=5, seed=0, train=False, process_index=0,
                                          process_count=1, stats=stats))
    assert [int(b["mask"].sum()) for b in batches] == [5, 5, 0]
    assert batches[2]["video"].shape == (5, 4, 32, 40, 3) and not batches[2]["video"].any()
    assert list(stats.decode_skipped) == ["stale_000000_000001"]


def test_grain_checkpoint_handler_round_trip(data_dir, tmp_path):
    import grain

    cfg = _cfg(data_dir)
    kw = dict(batch_size=4, seed=2, process_index=0, process_count=1)
    it = pipeline.make_train_iterator(cfg, **kw)
    _take(it, 3)
    grain.checkpoint.CheckpointHandler().save(tmp_path, item=it)
    expected = _take(it, 2)
    resumed = grain.checkpoint.CheckpointHandler().restore(tmp_path, item=pipeline.make_train_iterator(cfg, **kw))
    assert _same(_take(resumed, 2), expected)


def test_ml_collections_config_with_model_keys(data_dir):
    from ml_collections import ConfigDict

    cfg = ConfigDict(dict(dataset="kinetics600", data_dir=str(data_dir), num_frames=4, frame_stride=2,
                          resolution=32, num_cond_frames=1, num_classes=3, progress=False))
    batch = next(pipeline.make_train_iterator(cfg, batch_size=2, seed=0, process_index=0, process_count=1))
    assert batch["video"].shape == (2, 4, 32, 32, 3)


def test_config_errors_name_the_key(data_dir):
    with pytest.raises(ValueError, match="config.data.dataset='k700'"):
        sources.make_source(dict(dataset="k700", data_dir=str(data_dir)), split="train", train=True)
    with pytest.raises(FileNotFoundError, match="data.split='nope'"):
        sources.make_source(_cfg(data_dir), split="nope", train=True)
    with pytest.raises(ValueError, match="no usable videos"):
        sources.make_source(_cfg(data_dir, num_frames=30), split="train", train=True)
