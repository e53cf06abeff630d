"""Drawing: panel layout and borders of a clip beside its truth, grids, strips, and one colour for
given frames in every picture the package draws."""

import numpy as np
import pytest
from PIL import Image

from sid2video import draw
from test_render import _smooth_clips  # smooth moving colour gradients

B, T, H, W, NUM_COND = 2, 5, 16, 16, 2


def _truth_and_sample():
    truth = _smooth_clips()
    sample = truth.copy()
    sample[:, NUM_COND:] = truth[:, NUM_COND:].transpose(0, 1, 3, 2, 4)[..., ::-1]
    return truth, sample


def _clip(colors, size=8):
    """A clip whose frame t is the constant colour colors[t]: uint8 [T, size, size, 3]."""
    return np.stack([np.full((size, size, 3), c, np.uint8) for c in colors])


def test_side_by_side_panels_hold_the_upscaled_frames_and_borders_mark_conditioning():
    truth, sample = _truth_and_sample()
    frames = draw.side_by_side(sample[0], truth[0], NUM_COND)
    lay = draw.clip_layout(H, W)
    assert lay.scale == 8  # 16 px high -> at least 128 px
    assert frames.dtype == np.uint8 and frames.shape[0] == T and frames.shape[-1] == 3
    assert frames.shape[1] % 2 == 0 and frames.shape[2] % 2 == 0
    up = lambda x: np.kron(x, np.ones((8, 8, 1), np.uint8))  # noqa: E731 - reference upscaling
    b = lay.border
    for t in range(T):
        for name, src, colour in (("sample", sample[0, t], draw.GIVEN if t < NUM_COND else draw.PRED),
                                  ("truth", truth[0, t], draw.GIVEN if t < NUM_COND else draw.TRUTH)):
            y, x, h, w = lay.panels[name]
            assert (h, w) == (128, 128)
            np.testing.assert_array_equal(frames[t, y:y + h, x:x + w], up(src))
            # The ring of `b` pixels around the panel is all border colour, and nothing else is.
            ring = np.ones((h + 2 * b, w + 2 * b), bool)
            ring[b:-b, b:-b] = False
            box = frames[t, y - b:y + h + b, x - b:x + w + b]
            assert (box[ring] == np.array(colour, np.uint8)).all(), (t, name)
    # The counter makes every frame's header different; the panels below it are untouched by text.
    headers = frames[:, :lay.header].reshape(T, -1)
    assert len({h.tobytes() for h in headers}) == T


def test_side_by_side_odd_and_large_sizes_give_even_frames_at_least_min_height():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (3, 15, 13, 1), dtype=np.uint8)  # grey, odd sizes
    frames = draw.side_by_side(x, x, 1)
    assert frames.shape[1] % 2 == 0 and frames.shape[2] % 2 == 0
    lay = draw.clip_layout(15, 13)
    assert lay.scale == 9 and lay.panels["sample"][2] >= 128
    want = np.kron(x[..., 0], np.ones((1, 9, 9), np.uint8))
    np.testing.assert_array_equal(lay.crop(frames, "sample")[..., 0], want)
    big = draw.side_by_side(np.zeros((2, 200, 64, 3), np.uint8), np.zeros((2, 200, 64, 3), np.uint8), 0)
    assert draw.clip_layout(200, 64).scale == 1 and big.shape[1] >= 200


def test_side_by_side_rejects_bad_input():
    x = np.zeros((T, H, W, 3), np.uint8)
    with pytest.raises(ValueError, match="uint8"):
        draw.side_by_side(x.astype(np.float32), x, 1)
    with pytest.raises(ValueError, match="same shape"):
        draw.side_by_side(x, x[:-1], 1)
    with pytest.raises(ValueError, match="num_cond"):
        draw.side_by_side(x, x, T + 1)


def test_grid_tiles_clips_and_holds_the_last_frame_of_short_clips():
    a = np.full((4, 10, 12, 3), 50, np.uint8)
    a[np.arange(4), 0, 0] = np.arange(4)[:, None] * 10
    b = np.full((2, 8, 12, 3), 200, np.uint8)
    b[np.arange(2), 0, 0] = np.arange(2)[:, None] * 10 + 1
    g = draw.grid([a, b], cols=2, gap=4)
    assert g.shape == (4, 4 + 10 + 4, 4 + 2 * (12 + 4), 3)
    np.testing.assert_array_equal(g[:, 4:14, 4:16], a)
    np.testing.assert_array_equal(g[:2, 4:12, 20:32], b)
    np.testing.assert_array_equal(g[2:, 4:12, 20:32], np.stack([b[-1], b[-1]]))



def test_strip_geometry_and_frame_marks():
    truth = _clip([(10, 10, 10), (20, 20, 20), (30, 30, 30), (40, 40, 40)])
    sample = _clip([(10, 10, 10), (20, 20, 20), (90, 0, 0), (0, 90, 0)])
    img = draw.strip([truth, sample, truth, sample], num_cond=2, group=2)
    # 8² frames are enlarged 8× to 64², with a 2-pixel border: 68 per frame; a 6-pixel gap per pair.
    assert img.shape == (4 * 68 + 6, 4 * 68, 3) and img.dtype == np.uint8
    assert tuple(img[0, 0]) == draw.GIVEN               # frame 0: conditioning
    assert tuple(img[0, 68 + 67]) == draw.GIVEN         # frame 1: conditioning
    assert tuple(img[0, 2 * 68]) == draw.PRED          # frame 2: predicted
    assert tuple(img[68 + 30, 2 * 68 + 30]) == (90, 0, 0)      # row 1 (sample), frame 2 interior
    assert tuple(img[30, 3 * 68 + 30]) == (40, 40, 40)         # row 0 (truth), frame 3 interior
    assert np.all(img[2 * 68:2 * 68 + 6] == 255)              # the gap between the two pairs
    plain = draw.strip([truth], num_cond=0)
    assert np.all(plain[0, 0] == 255)                          # no conditioning: white frame
    with pytest.raises(ValueError, match="all clips"):
        draw.strip([truth, truth[:, :4, :4]])




def test_given_frames_have_one_colour_in_every_picture_and_stand_out_from_predicted_ones(tmp_path):
    """The clip beside its truth (render), the report's strips (evaluation) and the trainer's sample
    strips (preview.write_strip) frame a given frame in the same colour, read back from the pixels
    and files they produce: a green that no predicted-frame border comes near."""
    from evaluation import report
    from sid2video import preview

    clips = np.stack([_clip([(90, 90, 90)] * 4), _clip([(20, 20, 20)] * 4)])  # [2, 4, 8, 8, 3]
    num_cond = 2
    given, pred = [], []
    # render: the sample panel's border, frame 0 (given) and frame 3 (predicted).
    frames = draw.side_by_side(clips[0], clips[1], num_cond)
    y, x, _, _ = draw.clip_layout(8, 8).panels["sample"]
    given.append(frames[0, y - 1, x])
    pred.append(frames[3, y - 1, x])
    # evaluation report: samples_<tag>.png, the corner of frame 0 and of frame 3 (68 px per frame).
    report.write_report(tmp_path / "report", {"metric": "fvd", "checkpoints": []},
                        strips={"s": (clips[:1], clips[1:])}, num_cond=num_cond)
    # the trainer's periodic sample strip.
    preview.write_strip(tmp_path / "train" / "strip.png", clips, num_cond=num_cond)
    for path in (tmp_path / "report" / "samples_s.png", tmp_path / "train" / "strip.png"):
        with Image.open(path) as im:
            pixels = np.asarray(im.convert("RGB"))
        given.append(pixels[0, 0])
        pred.append(pixels[0, 3 * 68])
    given, pred = np.array(given, int), np.array(pred, int)
    assert (given == given[0]).all() and (pred == pred[0]).all(), (given, pred)
    g = given[0]
    assert g[1] - max(g[0], g[2]) >= 100  # green
    assert np.abs(given[0] - pred[0]).max() >= 100  # predicted frames look different
    # Nothing else in the drawings uses the given colour: a strip without conditioning has none.
    plain = draw.strip(list(clips), num_cond=0)
    assert not (plain == given[0]).all(axis=-1).any()
