"""Interrupted dataset writers: temporary names, the completion marker, and readers that refuse an
unfinished dataset by naming the command that finishes it."""

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys

import pytest

from sid2video.data import convert_images, convert_videos, files, images, kinetics, pipeline, prepared, synthetic

# ffmpeg runs as a subprocess (fork + exec), which JAX's fork warning does not distinguish.
pytestmark = pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")

SMALL = dict(num_frames=8, height=24, width=24, digit_size=12, progress=False, workers=1)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _video_cfg(data_dir, **kw):
    return dict(dataset="moving_digits", data_dir=str(data_dir), num_frames=4, resolution=24, progress=False, **kw)


def test_temporary_names_are_recognised_and_nothing_else():
    for path in ("a/clip_000000_000002.mp4", "x/000001.png", "annotations/train.csv", "gt/train.json"):
        tmp = files.part_path(path)
        assert files.is_temporary(tmp.name) and tmp.suffix == os.path.splitext(path)[1]
        assert not files.is_temporary(os.path.basename(path))
    assert not files.is_temporary("movie.part.2.mp4") and not files.is_temporary("a.part.mp4")
    assert files.is_temporary("k600-train.array_record-00001-of-00003.incomplete")


def test_killed_moving_digits_is_refused_then_finished_by_the_named_command(tmp_path):
    """kill -9 in the middle of `sid2video prepare moving_digits` (after 3 clips, inside the writer
    of the 4th, whose temporary file is on disk): no reader takes what is left for a dataset."""
    out = tmp_path / "md"
    flags = ["--out", str(out), "--train", "4", "--val", "2", "--test", "2", "--num_frames", "8",
             "--height", "24", "--width", "24", "--digit_size", "12", "--no_progress"]
    script = (
        "import os, signal, threading\n"
        "from sid2video import cli\n"
        "from sid2video.data import files, video_io\n"
        "real, calls, lock = video_io.write_mp4, [], threading.Lock()\n"
        "def write_mp4(path, frames, **kw):\n"
        "    with lock:  # one clip at a time, so that exactly 3 are complete\n"
        "        calls.append(path)\n"
        "        if len(calls) == 4:\n"
        "            path.parent.mkdir(parents=True, exist_ok=True)\n"
        "            files.part_path(path).write_bytes(b'half an mp4')\n"
        "            os.kill(os.getpid(), signal.SIGKILL)\n"
        "        real(path, frames, **kw)\n"
        "video_io.write_mp4 = write_mp4\n"
        f"cli.main(['prepare', 'moving_digits'] + {flags!r})\n"
    )
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert len(list(out.rglob("*.part.mp4"))) == 1 and len(list(out.rglob("*.mp4"))) == 4
    marker = json.loads((out / files.MARKER).read_text())
    assert marker["complete"] is False
    command = marker["command"]
    assert command.startswith(f"sid2video prepare moving_digits --out {out} ") and "--train 4 --val 2" in command
    for read in (lambda: kinetics.build_index(out, "train", progress=False),
                 lambda: pipeline.make_train_iterator(_video_cfg(out), batch_size=2, seed=0),
                 lambda: convert_videos.prepare_videos(out, tmp_path / "prepared", progress=False)):
        with pytest.raises(files.IncompleteDatasetError, match="unfinished") as err:
            read()
        assert command in str(err.value)
    # The named command finishes it; the reader then reads it, and never a temporary file (here a
    # playable one: a copy of a finished clip under a temporary name).
    from sid2video import cli

    assert cli.main(shlex.split(command)[1:] + ["--no_progress"]) == 0
    assert json.loads((out / files.MARKER).read_text())["complete"] is True
    assert not list(out.rglob("*.part.*"))
    clip = sorted((out / "train").rglob("*.mp4"))[0]
    shutil.copy(clip, files.part_path(clip.with_name("md_extra_000000_000001.mp4")))
    index = kinetics.build_index(out, "train", progress=False, refresh=True)
    assert len(index.entries) == 4 and not index.unreadable
    assert all(not files.is_temporary(os.path.basename(e["path"])) for e in index.entries)
    batch = next(pipeline.make_train_iterator(_video_cfg(out), batch_size=2, seed=0))
    assert batch["video"].shape == (2, 4, 24, 24, 3)


def test_interrupted_digit_images_are_refused_and_a_stray_png_is_never_read(tmp_path, monkeypatch):
    root = tmp_path / "digits"
    real, calls = synthetic.render, []

    def render(*args, **kw):
        calls.append(1)
        if len(calls) == 7:
            raise KeyboardInterrupt  # Ctrl-C half-way through the images
        return real(*args, **kw)

    monkeypatch.setattr(synthetic, "render", render)
    with pytest.raises(KeyboardInterrupt):
        synthetic.write_digit_images(root, counts={"train": 8, "val": 4}, size=16, progress=False)
    monkeypatch.setattr(synthetic, "render", real)
    command = f"sid2video prepare digit_images --out {root} --seed 0 --train 8 --val 4 --size 16"
    for read in (lambda: images.index_image_folder(root, "train"),
                 lambda: pipeline.make_eval_iterator(dict(dataset="digits", data_dir=str(root), resolution=16),
                                                     batch_size=2, split="train"),
                 lambda: convert_images.prepare_image_folder(root, tmp_path / "p", name="digits", progress=False)):
        with pytest.raises(files.IncompleteDatasetError) as err:
            read()
        assert command in str(err.value)
    synthetic.write_digit_images(root, counts={"train": 8, "val": 4}, size=16, progress=False)
    png = sorted((root / "train").rglob("*.png"))[0]
    shutil.copy(png, files.part_path(png.with_name("000099.png")))  # a readable image, temporary name
    _, entries, skipped = images.index_image_folder(root, "train")
    assert len(entries) == 8 and not skipped
    assert all(not files.is_temporary(os.path.basename(e["path"])) for e in entries)


def test_helper_written_datasets_carry_the_marker(tmp_path):
    synthetic.write_moving_digits(tmp_path / "md", counts={"train": 1}, **SMALL)
    synthetic.write_digit_images(tmp_path / "di", counts={"train": 2}, size=16, progress=False)
    for root in (tmp_path / "md", tmp_path / "di"):
        assert json.loads((root / files.MARKER).read_text())["complete"] is True
        files.require_complete(root)
    # A call the command line cannot express is named as the call itself.
    marker = json.loads((tmp_path / "md" / files.MARKER).read_text())
    assert marker["command"].startswith("sid2video.data.synthetic.write_moving_digits(")
    assert "counts={'train': 1}" in marker["command"]


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    synthetic.write_pattern_videos(root, [dict(split="train", label=f"c{i % 2}", num_frames=8) for i in range(4)])
    return root


def test_interrupted_array_record_prepare_is_refused_until_resumed(videos, tmp_path, monkeypatch):
    out = tmp_path / "out"
    version = out / "kinetics600" / prepared.VERSION
    real, calls = kinetics.index_entry, []

    def index_entry(*args):
        calls.append(1)
        if len(calls) == 3:  # inside the second shard's writer
            raise OSError(28, "No space left on device")
        return real(*args)

    monkeypatch.setattr(kinetics, "index_entry", index_entry)
    with pytest.raises(OSError, match="No space"):
        convert_videos.prepare_videos(videos, out, videos_per_shard=2, workers=1, progress=False)
    monkeypatch.setattr(kinetics, "index_entry", real)
    assert list(version.glob("*.incomplete")) and not (version / "dataset_info.json").exists()
    command = f"sid2video prepare kinetics600 --src {videos} --out {out} --name kinetics600 --split train"
    cfg = dict(dataset="kinetics600", data_dir=str(out), num_frames=4, resolution=24, progress=False)
    for fmt in ("auto", "prepared"):
        with pytest.raises(files.IncompleteDatasetError) as err:
            pipeline.make_eval_iterator(dict(cfg, format=fmt), batch_size=2, split="train")
        assert command in str(err.value)
    with pytest.raises(files.IncompleteDatasetError):
        prepared.load_prepared_index(version, "train")
    # The named command (the same call) resumes and finishes; a later interrupted re-run of a
    # finished dataset is refused again although its dataset_info.json is still there.
    convert_videos.prepare_videos(videos, out, splits=["train"], videos_per_shard=2, workers=1, progress=False)
    assert json.loads((version / files.MARKER).read_text())["complete"] is True
    (batch,) = list(pipeline.make_eval_iterator(cfg, batch_size=4, split="train"))
    assert batch["mask"].all() and batch["video"].shape == (4, 4, 24, 24, 3)
    convert_videos.prepare_videos(videos, out, splits=["train"], videos_per_shard=2, progress=False,
                                  restart=True, stop_after_shards=1)
    assert (version / "dataset_info.json").exists()
    with pytest.raises(files.IncompleteDatasetError, match="kinetics600 --src"):
        prepared.find_prepared(out, "kinetics600")
