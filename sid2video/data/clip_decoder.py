"""Clips of a video: sampling a clip, decoding it with decord, the crop and flip, a decoded-video cache.

A clip is `num_frames` frames `frame_stride` apart (`ClipSpec`). Training takes a random start, a
random crop after resizing the short side, and a random horizontal flip; evaluation takes the
centred clip and the centre crop. Clips come out as uint8 `[T, H, W, 3]`.

Small datasets (the demo's, tests') can keep whole decoded videos in memory
(`config.data.cache_mb`): each video is then decoded once per process at its resized size, and
every later clip of it is a slice of the cached frames, the same frames the decoder would return.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
from typing import Any, Mapping, Sequence

import numpy as np

from sid2video.data import video_io


@dataclasses.dataclass(frozen=True)
class ClipSpec:
    """`num_frames` frames, `frame_stride` apart: a clip spans `(num_frames - 1) * stride + 1` frames."""

    num_frames: int = 16
    frame_stride: int = 1

    def __post_init__(self):
        if self.num_frames < 1:
            raise ValueError(f"data.num_frames must be >= 1, got {self.num_frames}")
        if self.frame_stride < 1:
            raise ValueError(f"data.frame_stride must be >= 1, got {self.frame_stride}")

    @property
    def span(self) -> int:
        return (self.num_frames - 1) * self.frame_stride + 1

    def indices(self, start: int) -> list[int]:
        return [start + i * self.frame_stride for i in range(self.num_frames)]

    def start(self, video_frames: int, rng: np.random.Generator | None) -> int:
        """A uniformly random start (rng given) or the centred start (rng None)."""
        room = video_frames - self.span
        if room < 0:
            raise ValueError(f"a video of {video_frames} frames is shorter than a clip of {self.span}")
        return int(rng.integers(0, room + 1)) if rng is not None else room // 2


def as_size(resolution: int | Sequence[int]) -> tuple[int, int]:
    """`resolution` (an int for square frames, or (height, width)) as (height, width)."""
    if isinstance(resolution, (int, np.integer)):
        return int(resolution), int(resolution)
    h, w = (int(v) for v in resolution)
    return h, w


def crop_flip(frames_THWC: np.ndarray, size: tuple[int, int], rng: np.random.Generator | None,
              flip: bool = True) -> np.ndarray:
    """Crops `[T, H, W, C]` frames to `size`: random offsets and (with `flip`) a coin-flip mirror
    with an rng, the centre crop without."""
    th, tw = size
    h, w = frames_THWC.shape[1:3]
    if h < th or w < tw:
        raise ValueError(f"frames {h}x{w} are smaller than the crop {th}x{tw}")
    if rng is not None:
        y = int(rng.integers(0, h - th + 1))
        x = int(rng.integers(0, w - tw + 1))
        mirror = flip and bool(rng.random() < 0.5)
    else:
        y, x, mirror = (h - th) // 2, (w - tw) // 2, False
    crop_THWC = frames_THWC[:, y : y + th, x : x + tw]
    if mirror:
        crop_THWC = crop_THWC[:, :, ::-1]
    return np.ascontiguousarray(crop_THWC)


class DecodedCache:
    """Whole decoded videos, least recently used out first once `max_bytes` would be passed.

    Thread-safe (grain decodes with several read threads). A copy sent to a worker process starts
    empty: each process fills its own.
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = int(max_bytes)
        self._frames: collections.OrderedDict[Any, np.ndarray] = collections.OrderedDict()
        self._lock = threading.Lock()
        self.nbytes = 0
        self.hits = 0
        self.misses = 0

    def __getstate__(self):
        return {"max_bytes": self.max_bytes}

    def __setstate__(self, state):
        self.__init__(state["max_bytes"])

    def __len__(self) -> int:
        return len(self._frames)

    def get(self, key) -> np.ndarray | None:
        with self._lock:
            frames = self._frames.get(key)
            if frames is None:
                self.misses += 1
            else:
                self.hits += 1
                self._frames.move_to_end(key)
            return frames

    def put(self, key, frames: np.ndarray) -> None:
        if frames.nbytes > self.max_bytes:
            return  # larger than the whole cache: not kept
        with self._lock:
            if key in self._frames:
                return
            while self.nbytes + frames.nbytes > self.max_bytes:
                _, old = self._frames.popitem(last=False)
                self.nbytes -= old.nbytes
            self._frames[key] = frames
            self.nbytes += frames.nbytes


@dataclasses.dataclass(frozen=True)
class ClipDecoder:
    """Turns an index record into a training/eval example, inside grain's worker processes.

    A record holds either `path` (a file) or `video` (MP4 bytes from a prepared dataset) and the
    probed `num_frames`, `height`, `width`. The result is {"video": uint8 [T, H, W, 3],
    "label": int32} (evaluation adds "index", the record's position in the source, and "start",
    the clip's first frame in the video), or {"_skip": "<key>: <reason>"} when the file cannot be
    decoded, so that the batching step can drop it and report it (see batching.py).

    cache_mb > 0 keeps up to that many MB of whole decoded videos per process (see module docs).
    """

    spec: ClipSpec
    size: tuple[int, int]
    train: bool
    decode_threads: int = 1
    cache_mb: float = 0.0
    flip: bool = True  # training clips mirrored left-right with probability ½ (config.data.random_flip)
    cache: DecodedCache | None = dataclasses.field(default=None, compare=False, repr=False)

    def __post_init__(self):
        if self.cache_mb < 0:
            raise ValueError(f"config.data.cache_mb={self.cache_mb} must be >= 0 (0 turns the cache off)")
        if self.cache_mb > 0 and self.cache is None:
            object.__setattr__(self, "cache", DecodedCache(int(self.cache_mb * 2**20)))

    def __call__(self, record: Mapping[str, Any], rng: np.random.Generator) -> dict:
        key = str(record.get("key", record.get("path", "?")))
        try:
            clip_THWC, start = self.decode(record, rng)
        except (video_io.VideoReadError, ValueError) as err:
            return {"_skip": f"{key}: {err}"}
        out = {"video": clip_THWC, "label": np.int32(record.get("label", -1))}
        if not self.train:  # evaluation: which clip this is (for ground truth and reports)
            out["index"] = np.int32(record.get("index", -1))
            out["start"] = np.int32(start)
        return out

    def decode(self, record: Mapping[str, Any], rng: np.random.Generator | None) -> tuple[np.ndarray, int]:
        """(clip uint8 [T, H, W, 3], index of its first frame in the video)."""
        rng = rng if self.train else None
        source = record["video"] if "video" in record else record["path"]
        start = self.spec.start(int(record["num_frames"]), rng)
        h, w = int(record["height"]), int(record["width"])
        resized = video_io.short_side_size(h, w, self.size)
        size = None if resized == (h, w) else resized
        indices = self.spec.indices(start)
        video_THWC = self._cached(record, source, size) if self.cache is not None else None
        if video_THWC is not None:
            frames_THWC = video_THWC[indices]
        else:
            frames_THWC = video_io.read_frames(source, indices, size=size, num_threads=self.decode_threads)
        return crop_flip(frames_THWC, self.size, rng, self.flip), start

    def _cached(self, record: Mapping[str, Any], source, size) -> np.ndarray | None:
        """The whole decoded video from the cache, decoding it on a miss; None when it cannot be
        cached (no name to key it by, or fewer frames than probed: then clips are decoded alone)."""
        name = source if isinstance(source, str) else record.get("key")
        if not name:
            return None
        key = (str(name), size)
        video = self.cache.get(key)
        if video is None:
            try:
                video = video_io.read_frames(source, range(int(record["num_frames"])), size=size,
                                             num_threads=self.decode_threads)
            except video_io.VideoReadError:
                return None
            self.cache.put(key, video)
        return video
