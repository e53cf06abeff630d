"""The embedded datasets: deterministic, in the Kinetics layout, positions that match the pixels."""

import filecmp

import numpy as np
import pytest

from sid2video.data import kinetics, synthetic, video_io

# ffmpeg runs as a subprocess (fork + exec), which JAX's fork warning does not distinguish.
pytestmark = pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")

SMALL = dict(num_frames=12, height=32, width=40, digit_size=12, max_speed=4, progress=False)


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    root = tmp_path_factory.mktemp("md1")
    synthetic.write_moving_digits(root, seed=3, counts={"train": 4, "val": 2}, num_digits=1, **SMALL)
    return root


def test_same_seed_same_dataset_other_seed_differs(tmp_path):
    kw = dict(counts={"train": 3, "val": 1}, **SMALL)
    synthetic.write_moving_digits(tmp_path / "a", seed=1, **kw)
    synthetic.write_moving_digits(tmp_path / "b", seed=1, **kw)
    synthetic.write_moving_digits(tmp_path / "c", seed=2, **kw)
    for split in ("train", "val"):
        ga = synthetic.load_ground_truth(tmp_path / "a", split)
        assert ga == synthetic.load_ground_truth(tmp_path / "b", split)
        assert ga["clips"] != synthetic.load_ground_truth(tmp_path / "c", split)["clips"]
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.mp4"))
    assert len(files) == 4
    for rel in files:
        a = video_io.read_frames(tmp_path / "a" / rel, range(12))
        b = video_io.read_frames(tmp_path / "b" / rel, range(12))
        np.testing.assert_array_equal(a, b)
    assert filecmp.cmp(tmp_path / "a/annotations/train.csv", tmp_path / "b/annotations/train.csv", shallow=False)


def test_kinetics_reader_reads_it_unchanged(single):
    index = kinetics.build_index(single, "train", progress=False, refresh=True)
    truth = synthetic.load_ground_truth(single, "train")["clips"]
    assert len(index.entries) == 4 and not index.unreadable
    assert index.class_names == sorted({c["label"] for c in truth.values()} |
                                       {c["label"] for c in synthetic.load_ground_truth(single, "val")["clips"].values()})
    for e in index.entries:
        assert e["label_name"] == truth[e["key"]]["label"] == f"digit {truth[e['key']]['digits'][0]['class']}"
        assert (e["num_frames"], e["height"], e["width"]) == (12, 32, 40)


def test_saved_positions_match_the_decoded_frames(single):
    index = kinetics.build_index(single, "val", progress=False)
    truth = synthetic.load_ground_truth(single, "val")["clips"]
    moved = 0
    for e in index.entries:
        frames = video_io.read_frames(single / e["path"], range(12)).astype(float)
        digit = truth[e["key"]]["digits"][0]
        top_left = np.array(digit["top_left"])  # [T, 2] (y, x)
        s = 12
        assert (top_left >= 0).all() and (top_left[:, 0] <= 32 - s).all() and (top_left[:, 1] <= 40 - s).all()
        intensity = frames.sum(-1)
        ys, xs = np.mgrid[:32, :40]
        for t in range(12):
            y, x = top_left[t]
            lit = intensity[t] > 30
            # Every lit pixel lies inside the digit's square...
            assert lit[y : y + s, x : x + s].sum() == lit.sum() > 0
        # ...and the intensity centroid moves exactly as the saved positions do.
        w = intensity / intensity.sum(axis=(1, 2), keepdims=True)
        centroid = np.stack([(w * ys).sum(axis=(1, 2)), (w * xs).sum(axis=(1, 2))], -1)
        np.testing.assert_allclose(centroid - centroid[0], top_left - top_left[0], atol=0.3)
        moved += int(np.abs(np.diff(top_left, axis=0)).sum() > 0)
    assert moved == len(index.entries)


def test_bounce_stays_inside_and_reflects():
    pos = synthetic.bounce(start=2, velocity=3, limit=7, num_steps=8)
    assert pos.tolist() == [2, 5, 6, 3, 0, 3, 6, 5]
    assert (synthetic.bounce(0, -9, 4, 50) >= 0).all() and (synthetic.bounce(0, -9, 4, 50) <= 4).all()


def test_digit_images_are_deterministic_labelled_pngs(tmp_path):
    from PIL import Image

    synthetic.write_digit_images(tmp_path / "a", seed=0, counts={"train": 12}, size=20, progress=False)
    synthetic.write_digit_images(tmp_path / "b", seed=0, counts={"train": 12}, size=20, progress=False)
    pngs = sorted((tmp_path / "a").rglob("*.png"))
    assert len(pngs) == 12
    for p in pngs:
        assert p.parent.name.startswith("digit_") and p.parent.parent.name == "train"
        img = np.asarray(Image.open(p))
        assert img.shape == (20, 20, 3) and img.max() > 100
        np.testing.assert_array_equal(img, np.asarray(Image.open(tmp_path / "b" / p.relative_to(tmp_path / "a"))))


def _ink_sides(root):
    """Height and width of each PNG's bounding box of bright pixels."""
    from PIL import Image

    sides = []
    for p in sorted(root.rglob("*.png")):
        ys, xs = np.nonzero(np.asarray(Image.open(p)).max(axis=-1) > 32)
        sides.append((ys.max() - ys.min() + 1, xs.max() - xs.min() + 1))
    return np.array(sides)


def test_digit_scale_bounds_the_digit_and_the_cli_writes_the_same_files(tmp_path):
    from sid2video import cli

    size, counts = 32, {"train": 30}
    small = synthetic.write_digit_images(tmp_path / "small", counts=counts, size=size, scale=(0.25, 0.5),
                                         progress=False)
    full = synthetic.write_digit_images(tmp_path / "full", counts=counts, size=size, scale=(1, 1), progress=False)
    assert small["scale"] == (0.25, 0.5) and full["scale"] == (1, 1)
    # A digit drawn in a square of side <= 16 has ink no wider or taller than 16; one drawn over the
    # whole 32² frame is at least 3/4 of it tall (the 8×8 glyphs fill 6 to 8 of their rows).
    assert _ink_sides(tmp_path / "small").max() <= size // 2
    assert _ink_sides(tmp_path / "full")[:, 0].min() >= 3 * size // 4
    # The default scale (half to full frame) draws other sides and places: other files.
    default = tmp_path / "default"
    synthetic.write_digit_images(default, counts=counts, size=size, progress=False)
    assert not all(filecmp.cmp(a, b, shallow=False) for a, b in
                   zip(sorted(default.rglob("*.png")), sorted((tmp_path / "full").rglob("*.png"))))
    # The CLI flags say the same, and the completion marker names the command with them.
    out = tmp_path / "cli"
    assert cli.main(["prepare", "digit_images", "--out", str(out), "--train", "30", "--val", "0", "--size",
                     str(size), "--min_scale", "1", "--max_scale", "1", "--no_progress"]) == 0
    for a in sorted((tmp_path / "full").rglob("*.png")):
        assert filecmp.cmp(a, out / a.relative_to(tmp_path / "full"), shallow=False)
    assert "--min_scale 1.0 --max_scale 1.0" in (out / "sid2video_prepared.json").read_text()


@pytest.mark.parametrize("scale, match", [
    ((0.0, 1.0), r"0 < lo <= hi <= 1"), ((0.8, 0.5), r"0 < lo <= hi <= 1"), ((0.5, 1.5), r"0 < lo <= hi <= 1"),
    ((0.01, 0.5), r"under one pixel"), ("big", r"two numbers"),
])
def test_a_bad_digit_scale_is_refused_before_anything_is_written(tmp_path, scale, match):
    with pytest.raises(ValueError, match=match):
        synthetic.write_digit_images(tmp_path / "d", counts={"train": 2}, size=32, scale=scale, progress=False)
    assert not (tmp_path / "d").exists()
