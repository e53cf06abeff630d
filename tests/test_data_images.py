"""Image folders and TFDS image datasets (ImageNet's layout): shapes, labels, ADM centre crop."""

import pathlib

import numpy as np
import pytest
from PIL import Image

from sid2video.data import convert_images, images, pipeline, synthetic

# ffmpeg runs as a subprocess (fork + exec), which JAX's fork warning does not distinguish.
pytestmark = pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("digits")
    synthetic.write_digit_images(root, counts={"train": 40, "val": 10}, size=24, progress=False)
    (root / "val" / "digit_3" / "broken.png").write_bytes(b"not a png")
    return root


def _cfg(data_dir, dataset="image_folder", **kw):
    cfg = dict(dataset=dataset, data_dir=str(data_dir), resolution=16)
    cfg.update(kw)
    return cfg


def test_image_folder_batches_and_labels(folder):
    it = pipeline.make_eval_iterator(_cfg(folder), batch_size=4, split="val", process_index=0, process_count=1)
    batches = list(it)
    names, entries, _ = images.index_image_folder(folder, "val")
    assert names == it.class_names and all(n.startswith("digit_") for n in names)
    assert len(batches) == 3  # 10 good images + 1 broken -> 10 rows, padded to 12
    for b in batches:
        assert b["video"].shape == (4, 1, 16, 16, 3) and b["video"].dtype == np.uint8
        assert b["label"].dtype == np.int32
    rows = np.concatenate([b["video"][b["mask"]] for b in batches])
    labels = np.concatenate([b["label"][b["mask"]] for b in batches])
    good = [e for e in entries if not e["path"].endswith("broken.png")]
    assert len(rows) == len(good) == 10
    for row, label, e in zip(rows, labels, good):
        assert names[label] == pathlib.Path(e["path"]).parent.name
        expected = images.adm_center_crop(Image.open(e["path"]), (16, 16))
        np.testing.assert_array_equal(row[0], expected)
    assert it.loader_stats.skipped_files == 1 and "broken.png" in next(iter(it.loader_stats.decode_skipped))


def test_adm_center_crop_matches_box_halving_and_centre():
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (40, 100, 3), dtype=np.uint8)  # h=40, w=100, target 16
    out = images.adm_center_crop(Image.fromarray(arr), (16, 16))
    # 100x40 -> one box halving (50x20; 20 < 32 stops it) -> bicubic to short side 16 (40x16) -> centre.
    half = arr.reshape(20, 2, 50, 2, 3).astype(float).mean(axis=(1, 3))
    ref = np.asarray(Image.fromarray(np.rint(half).astype(np.uint8)).resize((40, 16), Image.BICUBIC))
    np.testing.assert_allclose(out, ref[:, 12:28], atol=2)  # rounding of the halved image
    assert np.abs(out.astype(int) - ref[:, 11:27]).mean() > 20  # one column off is far off
    # Non-square targets keep the aspect ratio and cover the crop.
    assert images.adm_center_crop(Image.fromarray(arr), (8, 30)).shape == (8, 30, 3)


def _count_mirrored(folder, batch_size: int, **cfg) -> int:
    """How many training images of one batch are mirrored crops (every one is a crop or its mirror)."""
    train = pipeline.make_train_iterator(_cfg(folder, **cfg), batch_size=batch_size, seed=1, process_index=0,
                                         process_count=1)
    batch = next(train)
    _, entries, _ = images.index_image_folder(folder, "train")
    crops = [images.adm_center_crop(Image.open(e["path"]), (16, 16)) for e in entries]
    flipped = 0
    for row in batch["video"][:, 0]:
        match = [i for i, c in enumerate(crops) if np.array_equal(c, row)]
        mirror = [i for i, c in enumerate(crops) if np.array_equal(c[:, ::-1], row)]
        assert match or mirror
        flipped += bool(mirror and not match)
    return flipped


def test_training_flips_some_images(folder):
    assert 0 < _count_mirrored(folder, 10) < 10


def test_random_flip_false_never_mirrors(folder):
    # 40 images, of which a fair coin would mirror none with probability 2^-40 (minus the few
    # symmetric crops, which count as unmirrored either way).
    assert _count_mirrored(folder, 40, random_flip=False) == 0
    with pytest.raises(ValueError, match=r"config.data.random_flip='no' is invalid: must be True or False"):
        pipeline.make_train_iterator(_cfg(folder, random_flip="no"), batch_size=4, seed=1, process_index=0,
                                     process_count=1)


def test_imagenet2012_through_tfds_data_source(folder, tmp_path):
    # A stand-in with ImageNet's TFDS name, version and features, prepared from the digit folder.
    convert_images.prepare_image_folder(folder, tmp_path, name="imagenet2012", version="5.1.0", progress=False)
    kw = dict(batch_size=4, process_index=0, process_count=1)
    tfds_it = pipeline.make_eval_iterator(_cfg(tmp_path, "imagenet2012"), split="val", **kw)
    assert "array_record" in tfds_it.description
    folder_it = pipeline.make_eval_iterator(_cfg(folder), split="val", **kw)
    a, b = list(tfds_it), list(folder_it)
    assert len(a) == len(b) == 3
    for x, y in zip(a, b):
        for k in ("video", "label", "mask"):  # (index differs: the prepared set omits broken.png)
            np.testing.assert_array_equal(x[k], y[k])
    # Read by TFDS's registered imagenet2012 builder: its 1000 WordNet ids name the classes.
    assert len(tfds_it.class_names) == 1000 and tfds_it.class_names[0] == "n01440764"
