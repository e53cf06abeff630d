"""Prepared array_record datasets: TFDS-readable, same clips as the folder reader, resumable."""

import json
import os
import shutil

import numpy as np
import pytest

from sid2video.data import convert_videos, pipeline, prepared, synthetic

# ffmpeg runs as a subprocess (fork + exec), which JAX's fork warning does not distinguish.
pytestmark = pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    root = tmp_path_factory.mktemp("src")
    videos = [dict(split="train", label=f"class {i % 2}", num_frames=10 + 2 * i) for i in range(6)]
    videos.append(dict(split="train", label="class 1", num_frames=4))  # too short for 4 x stride 2
    videos += [dict(split="val", label="class 0", num_frames=12), dict(split="val", label="class 1", num_frames=9)]
    synthetic.write_pattern_videos(root, videos)
    (root / "train" / "class_0" / "corrupt0000_000000_000001.mp4").write_bytes(os.urandom(1500))
    return root


@pytest.fixture(scope="module")
def written(src, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    convert_videos.prepare_videos(src, out, videos_per_shard=3, workers=2, progress=False)
    return out


def _cfg(data_dir, **kw):
    cfg = dict(dataset="kinetics600", data_dir=str(data_dir), num_frames=4, frame_stride=2,
               resolution=(32, 40), progress=False)
    cfg.update(kw)
    return cfg


def test_tfds_reads_the_prepared_dataset(src, written):
    import tensorflow_datasets as tfds

    train = tfds.data_source("kinetics600", split="train", data_dir=str(written), download=False)
    assert len(train) == 7  # 6 good + the short one; the corrupt file is not stored
    rec = train[0]
    assert set(rec) >= {"video", "label", "label_name", "id", "num_frames", "fps", "height", "width"}
    path = src / rec["source_path"].decode()
    assert rec["video"] == path.read_bytes()
    assert rec["id"].decode() == path.stem and (rec["height"], rec["width"]) == (32, 40)
    assert len(tfds.data_source("kinetics600", split="val", data_dir=str(written), download=False)) == 2
    info = tfds.builder_from_directory(str(written / "kinetics600" / "1.0.0")).info
    assert info.splits["train"].num_shards == 3 and info.splits["train"].num_examples == 7
    index = prepared.load_prepared_index(written / "kinetics600" / "1.0.0", "train")
    assert [os.path.basename(u["path"]) for u in index.unreadable] == ["corrupt0000_000000_000001.mp4"]
    assert index.class_names == ["class 0", "class 1"]


@pytest.mark.parametrize("train", [False, True])
def test_prepared_and_folder_give_the_same_clips(src, written, train):
    kw = dict(batch_size=3, process_index=0, process_count=1)
    if train:
        make = lambda cfg: pipeline.make_train_iterator(cfg, seed=5, **kw)  # noqa: E731
        folder_it, prep_it = make(_cfg(src, format="folder", resolution=(24, 24))), make(
            _cfg(written, format="prepared", resolution=(24, 24)))
        folder, prep = [next(folder_it) for _ in range(4)], [next(prep_it) for _ in range(4)]
    else:
        folder_it = pipeline.make_eval_iterator(_cfg(src), split="train", **kw)
        prep_it = pipeline.make_eval_iterator(_cfg(written), split="train", **kw)  # format auto -> prepared
        folder, prep = list(folder_it), list(prep_it)
    assert "array_record" in prep_it.description and "folder" in folder_it.description
    assert len(folder) == len(prep) == (4 if train else 2)
    for a, b in zip(folder, prep):
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    # Both count the same skipped files (the short one and the corrupt one).
    assert folder_it.loader_stats.skipped_files == prep_it.loader_stats.skipped_files == 2


def test_prepare_resumes_after_an_interruption(src, written, tmp_path):
    out = tmp_path / "resumed"
    version = out / "kinetics600" / "1.0.0"
    convert_videos.prepare_videos(src, out, splits=["train"], videos_per_shard=3, progress=False, stop_after_shards=2)
    manifest = json.loads((version / "sid2video_prepare-train.json").read_text())
    assert sorted(manifest["shards"]) == ["0", "1"] and not manifest["complete"]
    assert not (version / "dataset_info.json").exists()  # a partial split is not readable
    first = version / "kinetics600-train.array_record-00000-of-00003"
    stamp = first.stat().st_mtime_ns
    # A half-written shard left by the interruption is ignored and rewritten.
    (version / "kinetics600-train.array_record-00002-of-00003.incomplete").write_bytes(b"junk")
    convert_videos.prepare_videos(src, out, splits=["train"], videos_per_shard=3, progress=False)
    assert first.stat().st_mtime_ns == stamp  # finished shards are not rewritten
    reference = written / "kinetics600" / "1.0.0"
    for shard in range(3):
        name = f"kinetics600-train.array_record-{shard:05d}-of-00003"
        assert (version / name).read_bytes() == (reference / name).read_bytes()
    import tensorflow_datasets as tfds

    assert len(tfds.data_source("kinetics600", split="train", data_dir=str(out), download=False)) == 7


def test_resume_refuses_a_changed_source(src, tmp_path):
    copy = tmp_path / "src"
    shutil.copytree(src, copy)
    out = tmp_path / "out"
    convert_videos.prepare_videos(copy, out, splits=["train"], videos_per_shard=3, progress=False, stop_after_shards=1)
    (copy / "train" / "class_0" / "corrupt0000_000000_000001.mp4").unlink()
    with pytest.raises(RuntimeError, match="--restart"):
        convert_videos.prepare_videos(copy, out, splits=["train"], videos_per_shard=3, progress=False)
    convert_videos.prepare_videos(copy, out, splits=["train"], videos_per_shard=3, progress=False, restart=True)
    index = prepared.load_prepared_index(out / "kinetics600" / "1.0.0", "train")
    assert len(index.entries) == 7 and index.unreadable == []


def test_command_line(src, tmp_path, capsys):
    from sid2video import cli

    rc = cli.main(["prepare", "kinetics600", "--src", str(src), "--out", str(tmp_path), "--split", "val",
                   "--name", "tiny", "--no_progress"])
    assert rc == 0 and "wrote" in capsys.readouterr().out
    it = pipeline.make_eval_iterator(_cfg(tmp_path, dataset="video_folder", tfds_name="tiny"), batch_size=2,
                                     process_index=0, process_count=1)
    (batch,) = list(it)
    assert batch["mask"].tolist() == [True, True] and batch["video"].shape == (2, 4, 32, 40, 3)
    assert cli.main(["prepare", "index", "--src", str(src), "--split", "train", "--cache_dir", str(tmp_path / "c"),
                     "--no_progress"]) == 0
    assert "train: 7 readable videos, 1 unreadable" in capsys.readouterr().out


def test_prepared_source_in_a_worker_process_with_reader_threads(written):
    # Several reader threads open the TFDS source at once in a fresh worker process (TFDS's lazy
    # imports used to deadlock there); results equal the in-process pipeline's.
    cfg = _cfg(written, format="prepared", read_threads=4)
    kw = dict(batch_size=2, seed=3, process_index=0, process_count=1)
    it = pipeline.make_train_iterator(cfg, worker_count=1, **kw)
    try:
        with_worker = [next(it) for _ in range(4)]
    finally:
        it.close()
    in_process = pipeline.make_train_iterator(cfg, worker_count=0, **kw)
    for a, b in zip(with_worker, [next(in_process) for _ in range(4)]):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
