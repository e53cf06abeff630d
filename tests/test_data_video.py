"""Video reading and writing: frame order, exact frames, byte input, broken files."""

import numpy as np
import pytest

from sid2video.data import synthetic, video_io

# ffmpeg runs as a subprocess (fork + exec), which JAX's fork warning does not distinguish.
pytestmark = pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")


@pytest.fixture(scope="module")
def pattern_video(tmp_path_factory):
    root = tmp_path_factory.mktemp("video")
    (path,) = synthetic.write_pattern_videos(root, [dict(split="train", label="x", num_frames=30)])
    return path


def test_frames_come_back_in_the_requested_order(pattern_video):
    idx = [0, 7, 29, 3, 14, 15]
    frames = video_io.read_frames(pattern_video, idx)
    assert frames.shape == (6, 32, 40, 3) and frames.dtype == np.uint8
    t, v, x = synthetic.pattern_decode(frames)
    assert t.tolist() == idx
    assert v.tolist() == [0] * 6
    assert (x == np.arange(40)).all()
    # Near-lossless coding: within the RGB <-> YUV rounding of the written pattern.
    written = synthetic.pattern_frames(0, 30, 32, 40)[idx]
    assert np.abs(frames.astype(int) - written).max() <= 2


def test_bytes_and_file_decode_identically(pattern_video):
    data = pattern_video.read_bytes()
    a = video_io.read_frames(pattern_video, [2, 11, 20])
    b = video_io.read_frames(data, [2, 11, 20])
    np.testing.assert_array_equal(a, b)
    assert video_io.probe(data) == video_io.probe(pattern_video) == video_io.VideoInfo(30, 10.0, 32, 40)


@pytest.mark.parametrize("width", [48, 40])
def test_widths_decord_mishandles_are_decoded_correctly(tmp_path, width):
    # decord 0.6 returns 4-channel garbage for some widths (48 is one); 40 takes the direct path.
    frames = np.zeros((3, 16, width, 3), np.uint8)
    frames[:, :, : width // 2] = (200, 40, 90)
    frames[:, :, width // 2 :] = (10, 220, 30)
    video_io.write_mp4(tmp_path / "w.mp4", frames)
    assert video_io.probe(tmp_path / "w.mp4").width == width
    out = video_io.read_frames(tmp_path / "w.mp4", [0, 2])
    assert out.shape == (2, 16, width, 3)
    assert np.abs(out[:, :, 2 : width // 2 - 2].astype(int) - (200, 40, 90)).max() <= 3
    assert np.abs(out[:, :, width // 2 + 2 : -2].astype(int) - (10, 220, 30)).max() <= 3
    small = video_io.read_frames(tmp_path / "w.mp4", [1], size=(8, 24))
    assert small.shape == (1, 8, 24, 3)
    assert np.abs(small[0, :, 1:10].astype(int) - (200, 40, 90)).max() <= 6


def test_broken_files_raise_video_read_error(tmp_path, pattern_video):
    (tmp_path / "noise.mp4").write_bytes(np.random.default_rng(0).bytes(5000))
    data = pattern_video.read_bytes()
    (tmp_path / "truncated.mp4").write_bytes(data[: len(data) // 2])
    for bad in ["noise.mp4", "truncated.mp4", "missing.mp4"]:
        with pytest.raises(video_io.VideoReadError):
            video_io.probe(tmp_path / bad)
    with pytest.raises(video_io.VideoReadError, match="outside"):
        video_io.read_frames(pattern_video, [25, 30])


def test_short_side_size_covers_the_crop():
    assert video_io.short_side_size(360, 640, (128, 128)) == (128, 228)
    assert video_io.short_side_size(640, 360, (128, 128)) == (228, 128)
    assert video_io.short_side_size(100, 100, (64, 96)) == (96, 96)
