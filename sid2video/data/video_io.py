"""Reading and writing video files: decord for decoding, the imageio-ffmpeg binary for encoding.

Frames are uint8 `[T, H, W, 3]` RGB arrays at the edges of the package. Decoding reads only the
requested frames (`VideoReader.get_batch`) and can resize inside the decoder, so a 16-frame clip
out of a 10-second Kinetics video costs 16 decoded frames plus the seek, not 300.

decord ships wheels for x86-64 Linux (and Windows) only; it is imported on first use with an
error that says so, so that everything else in the package imports on any machine.
"""

from __future__ import annotations

import dataclasses
import io
import os
import pathlib
from typing import Sequence, Union

import numpy as np

from sid2video.data import files

VideoSource = Union[str, os.PathLike, bytes, bytearray, memoryview]

_decord = None


class VideoReadError(RuntimeError):
    """A video file that cannot be opened or decoded (corrupt, truncated, not a video)."""


def require_decord():
    """Imports decord, or raises an ImportError that says how to get it."""
    global _decord
    if _decord is None:
        try:
            import decord  # pylint: disable=import-outside-toplevel
        except ImportError as err:  # pragma: no cover - depends on the platform
            raise ImportError(
                "Reading videos needs the `decord` package, which publishes wheels for x86-64 "
                "Linux and Windows only. Install it with `pip install decord` on such a machine, "
                "or build it from source (https://github.com/dmlc/decord) elsewhere. Prepared "
                "array_record datasets also store MP4 bytes and need decord to decode them."
            ) from err
        decord.bridge.set_bridge("native")
        _decord = decord
    return _decord


@dataclasses.dataclass(frozen=True)
class VideoInfo:
    """What the index needs to know about one video file."""

    num_frames: int
    fps: float
    height: int
    width: int


def _open(source: VideoSource, *, width: int = -1, height: int = -1, num_threads: int = 1):
    decord = require_decord()
    if isinstance(source, (bytes, bytearray, memoryview)):
        uri = io.BytesIO(bytes(source))
    else:
        uri = os.fspath(source)
        if not os.path.isfile(uri):
            raise VideoReadError(f"no such file: {uri}")
    try:
        return decord.VideoReader(uri, width=width, height=height, num_threads=num_threads)
    except Exception as err:  # decord raises DECORDError (a RuntimeError) or ValueError
        raise VideoReadError(f"cannot open video: {_short(err)}") from err


def _short(err: BaseException) -> str:
    """The first line of an exception message (decord appends C++ stack traces)."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:300]


def probe(source: VideoSource) -> VideoInfo:
    """Frame count, frame rate and size of a video; raises VideoReadError if unreadable.

    The first frame is decoded too, which catches files whose header is intact but whose stream
    is not.
    """
    vr = _open(source)
    try:
        num_frames = len(vr)
        if num_frames <= 0:
            raise VideoReadError("video has no frames")
        fps = float(vr.get_avg_fps())
        first = vr[0].asnumpy()
    except VideoReadError:
        raise
    except Exception as err:
        raise VideoReadError(f"cannot decode video: {_short(err)}") from err
    finally:
        del vr
    if first.ndim != 3:
        raise VideoReadError(f"unexpected frame shape {first.shape}")
    # (the channel count is not checked: decord mis-reports it for some widths, see read_frames)
    return VideoInfo(num_frames=num_frames, fps=fps, height=int(first.shape[0]), width=int(first.shape[1]))


class _LayoutError(VideoReadError):
    """decord mis-sized a frame buffer (it infers the channel count from padded rows)."""


def _get_batch(source: VideoSource, idx: list[int], size: tuple[int, int] | None, num_threads: int) -> np.ndarray:
    height, width = size if size is not None else (-1, -1)
    vr = _open(source, width=width, height=height, num_threads=num_threads)
    try:
        n = len(vr)
        if idx and (min(idx) < 0 or max(idx) >= n):
            raise VideoReadError(f"frame indices {min(idx)}..{max(idx)} outside a video of {n} frames")
        frames = vr.get_batch(idx).asnumpy()
    except VideoReadError:
        raise
    except Exception as err:
        if "from_size == to_size" in str(err):
            raise _LayoutError(_short(err)) from err
        raise VideoReadError(f"cannot decode frames: {_short(err)}") from err
    finally:
        del vr
    if frames.ndim == 4 and frames.shape[-1] != 3:
        raise _LayoutError(f"decoder returned {frames.shape[-1]} channels")
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[0] != len(idx):
        raise VideoReadError(f"decoder returned {frames.dtype} {frames.shape} for {len(idx)} frames")
    if size is not None and frames.shape[1:3] != tuple(size):
        raise _LayoutError(f"decoder returned frames of {frames.shape[1:3]}, asked for {tuple(size)}")
    return frames


def read_frames(
    source: VideoSource,
    indices: Sequence[int],
    *,
    size: tuple[int, int] | None = None,
    num_threads: int = 1,
) -> np.ndarray:
    """Decodes the frames at `indices` (in that order) as uint8 `[len(indices), H, W, 3]`.

    `size=(height, width)` resizes inside the decoder (ffmpeg's scaler); None keeps the stored size.
    Raises VideoReadError for unreadable files and indices past the end.

    decord 0.6 returns garbage for a few frame widths (16, 24, 48, 72, ...: it derives the channel
    count from the padded row length). For those the frames are decoded at a safe width (a
    multiple of 64, at least 128) and resized to the requested size with PIL.
    """
    idx = [int(i) for i in indices]
    try:
        return _get_batch(source, idx, size, num_threads)
    except _LayoutError:
        pass
    from PIL import Image  # pylint: disable=import-outside-toplevel

    if size is None:
        vr = _open(source, num_threads=num_threads)
        try:
            size = tuple(int(v) for v in vr[0].shape[:2])
        except Exception as err:
            raise VideoReadError(f"cannot decode video: {_short(err)}") from err
        finally:
            del vr
    th, tw = size
    safe_w = 64 * -(-max(tw, 128) // 64)
    safe_h = max(2, int(round(th * safe_w / tw)))
    frames = _get_batch(source, idx, (safe_h, safe_w), num_threads)
    return np.stack([np.asarray(Image.fromarray(f).resize((tw, th), Image.BILINEAR)) for f in frames])


def ffmpeg_exe() -> str:
    """Path of the ffmpeg binary shipped with imageio-ffmpeg."""
    import imageio_ffmpeg  # pylint: disable=import-outside-toplevel

    return imageio_ffmpeg.get_ffmpeg_exe()


def write_mp4(
    path: str | os.PathLike,
    frames: np.ndarray,
    *,
    fps: float = 25.0,
    crf: int = 0,
    pix_fmt: str = "yuv444p",
    preset: str = "veryfast",
    keyframe_interval: int | None = None,
) -> None:
    """Writes uint8 `[T, H, W, 3]` frames as an H.264 MP4 (written to a temporary name, then renamed).

    The defaults (crf 0, 4:4:4 chroma) are lossless up to the RGB <-> YUV rounding, so decoded
    frames differ from the written ones by a level or two. `pix_fmt="yuv420p"` needs even sizes and
    plays everywhere, at the price of halved chroma resolution.
    """
    import imageio_ffmpeg  # pylint: disable=import-outside-toplevel

    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}")
    _, h, w, _ = frames.shape
    if pix_fmt == "yuv420p" and (h % 2 or w % 2):
        raise ValueError(f"yuv420p needs even height and width, got {h}x{w}")
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = files.part_path(path)
    params = ["-crf", str(int(crf)), "-preset", preset]
    if keyframe_interval:
        params += ["-g", str(int(keyframe_interval))]
    writer = imageio_ffmpeg.write_frames(
        str(tmp),
        (w, h),
        fps=fps,
        codec="libx264",
        pix_fmt_in="rgb24",
        pix_fmt_out=pix_fmt,
        output_params=params,
        macro_block_size=1,
        ffmpeg_log_level="error",
    )
    writer.send(None)
    try:
        for frame in frames:
            writer.send(np.ascontiguousarray(frame))
    finally:
        writer.close()
    os.replace(tmp, path)


def short_side_size(height: int, width: int, target: tuple[int, int]) -> tuple[int, int]:
    """The smallest aspect-preserving size that covers a `target=(h, w)` crop.

    For a square target this resizes the short side to the target side.
    """
    th, tw = target
    scale = max(th / height, tw / width)
    return max(th, int(round(height * scale))), max(tw, int(round(width * scale)))
