"""Fréchet Video Distance: I3D features of uint8 clips, streamed into float64 statistics (SPEC §7).

    extractor = fvd.FeatureExtractor(resolution=64, num_cond_frames=5, count_cond_frames=True)
    for batch in batches:                       # this process's rows, uint8 [B, T, H, W, 3]
        extractor.update(batch["video"], batch["mask"])
    stats = extractor.merged()                  # RunningStatistics over all processes
    fvd = fvd.distance(stats, reference_stats)

The protocol (Unterthiner et al.; google-research `frechet_video_distance`): frames optionally
brought to the protocol resolution first (Kinetics600: generated at 128², measured at 64²), then
bilinearly to 224², scaled to [−1, 1]; the features are I3D's 400 Kinetics-400 logits averaged
over time. With count_cond_frames=False the conditioning frames are cut off and I3D sees only the
predicted frames; by default they are part of the clip, as in most papers. I3D needs 9 frames.

Batches are padded to a fixed size (one compilation), placed as one global array sharded over
every device of every process, and the features of this process's real rows are folded into a
float64 `RunningStatistics`. `merged()` combines the processes' accumulators exactly:

Cross-process merge. JAX moves arrays between hosts as JAX arrays, and with x64 disabled (the
default) a float64 array would be cast to float32 on the way. The float64 state (count, mean and
the upper triangle of the co-moment M2) is therefore packed into one float64 vector whose bytes
are reinterpreted as uint32 (`pack_float64`): two 32-bit words per value, moved bit for bit by
`process_allgather`, and viewed back as float64 on arrival (`unpack_float64`). Unlike a hi + lo
float32 split (about 48 bits of mantissa) this is exact, costs the same two 32-bit words per value
(a quarter of a uint8-bytes gather), and carries every bit pattern through unchanged. Every
process merges the gathered accumulators in process order, so all hold the same result.
"""

from __future__ import annotations

import hashlib
from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from evaluation import frechet

__all__ = ["FeatureExtractor", "StreamingExtractor", "check_clip", "distance", "pack_float64", "unpack_float64",
           "allgather_float64", "statistics_to_vector", "statistics_from_vector", "merge_statistics",
           "network_checksum", "FEATURES"]

FEATURES = 400


# ----------------------------------------------------------------------------------------------
# Exact float64 through the cross-process gather.

def pack_float64(x) -> np.ndarray:
    """float64 array -> uint32 vector of its bytes (2 words per value), exactly invertible."""
    a = np.ascontiguousarray(np.asarray(x, np.float64).reshape(-1))
    return a.view(np.uint32).copy()


def unpack_float64(words, shape=None) -> np.ndarray:
    """Inverse of `pack_float64`: uint32 words -> float64 values (reshaped to `shape` if given)."""
    w = np.ascontiguousarray(np.asarray(words))
    if w.dtype != np.uint32 or w.ndim != 1 or w.shape[0] % 2:
        raise ValueError(f"expected an even-length uint32 vector, got {w.dtype} {w.shape}")
    out = w.view(np.float64).copy()
    return out if shape is None else out.reshape(shape)


def allgather_float64(x, *, gather: Callable | None = None) -> np.ndarray:
    """[P, *x.shape] float64: `x` from every process, in process order, bit-exact.

    Single-process runs return x[None] without any communication. `gather` replaces
    `multihost_utils.process_allgather` (for tests); it maps a uint32 vector to [P, n].
    """
    x = np.asarray(x, np.float64)
    if gather is None:
        if jax.process_count() == 1:
            return x[None].copy()
        from jax.experimental import multihost_utils

        gather = multihost_utils.process_allgather
    words = np.asarray(gather(pack_float64(x)))
    return np.stack([unpack_float64(row, x.shape) for row in words])


def statistics_to_vector(acc: frechet.RunningStatistics, dim: int) -> np.ndarray:
    """[count, mean (D), upper triangle of M2 (D(D+1)/2)] as float64 (zeros for an empty accumulator)."""
    iu = np.triu_indices(dim)
    if acc.count == 0:
        return np.zeros(1 + dim + len(iu[0]), np.float64)
    if acc.dim != dim:
        raise ValueError(f"accumulator of dimension {acc.dim}, expected {dim}")
    return np.concatenate([[float(acc.count)], acc.mean, acc.m2[iu]])


def statistics_from_vector(vector, dim: int) -> frechet.RunningStatistics:
    """Inverse of `statistics_to_vector`."""
    v = np.asarray(vector, np.float64)
    iu = np.triu_indices(dim)
    if v.shape != (1 + dim + len(iu[0]),):
        raise ValueError(f"a statistics vector for dimension {dim} has {1 + dim + len(iu[0])} values, got {v.shape}")
    count = int(round(v[0]))
    if count == 0:
        return frechet.RunningStatistics(dim)
    m2 = np.zeros((dim, dim), np.float64)
    m2[iu] = v[1 + dim:]
    m2 = m2 + np.triu(m2, 1).T
    return frechet.RunningStatistics.from_arrays(count, v[1:1 + dim], m2)


def merge_statistics(acc: frechet.RunningStatistics, dim: int, *, gather: Callable | None = None
                     ) -> frechet.RunningStatistics:
    """The accumulators of all processes merged (in process order); `acc` itself is not changed."""
    vectors = allgather_float64(statistics_to_vector(acc, dim), gather=gather)
    out = frechet.RunningStatistics(dim)
    for v in vectors:
        out.merge(statistics_from_vector(v, dim))
    return out


def distance(a: frechet.RunningStatistics, b: frechet.RunningStatistics) -> float:
    """Fréchet distance between two accumulated feature sets."""
    return frechet.distance(*a.result(), *b.result())


# ----------------------------------------------------------------------------------------------
# Feature networks.

_CHECKSUMS: dict[int, tuple[Any, str]] = {}


def network_checksum(net) -> str:
    """SHA-256 of a feature network's parameters (its `checksum` attribute if it has one)."""
    explicit = getattr(net, "checksum", None)
    if explicit:
        return str(explicit)
    if id(net) in _CHECKSUMS and _CHECKSUMS[id(net)][0] is net:
        return _CHECKSUMS[id(net)][1]
    params = getattr(getattr(net, "params", None), "host", None)
    if params is None:
        raise ValueError(f"cannot checksum the feature network {net!r}: give it a `checksum` attribute")
    h = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        a = np.ascontiguousarray(np.asarray(leaf))
        h.update(jax.tree_util.keystr(path).encode())
        h.update(str(a.dtype).encode() + str(a.shape).encode())
        h.update(a.tobytes())
    digest = h.hexdigest()
    _CHECKSUMS[id(net)] = (net, digest)
    return digest


class StreamingExtractor:
    """Features of fixed-size, device-sharded batches folded into a float64 RunningStatistics.

    Subclasses define `_prepare(x)` (host-side checks and frame selection, uint8 in and out) and
    `_features(x)` (the jitted network call on a global array). `update(x, mask)` takes this
    process's rows; every process must call it the same number of times (the network runs on
    one array spanning all processes), with mask False on rows that must not count.
    """

    dim: int = 0
    name: str = ""

    def __init__(self, net, *, batch_size: int | None = None, devices=None):
        self.net = net
        self.batch_size = batch_size
        devices = np.asarray(jax.devices() if devices is None else devices).reshape(-1)
        self.mesh = Mesh(devices, ("batch",))
        self.sharding = NamedSharding(self.mesh, PartitionSpec("batch"))
        self.local_devices = sum(d.process_index == jax.process_index() for d in devices)
        self.stats = frechet.RunningStatistics(self.dim)
        self.calls = 0

    # -- subclass hooks ---------------------------------------------------------------------------
    def _prepare(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _features(self, x: jax.Array) -> jax.Array:
        raise NotImplementedError

    def protocol(self) -> dict:
        """What determines the features (for cache keys and reports)."""
        raise NotImplementedError

    # -- host side --------------------------------------------------------------------------------
    @property
    def checksum(self) -> str:
        return network_checksum(self.net)

    def _padded_size(self, n: int) -> int:
        size = max(n, self.batch_size or 0, 1)
        return size + (-size) % max(1, self.local_devices)

    def _local_rows(self, out: jax.Array, local_shape: tuple[int, ...]) -> np.ndarray:
        """This process's rows of a global [B_global, D] output, whatever its sharding."""
        if out.is_fully_addressable:
            full = np.asarray(out)
        elif out.sharding.is_equivalent_to(self.sharding, out.ndim):
            shards = {s.index[0].start or 0: np.asarray(s.data) for s in out.addressable_shards}
            return np.concatenate([shards[k] for k in sorted(shards)])
        else:
            from jax.experimental import multihost_utils

            full = np.asarray(multihost_utils.process_allgather(out, tiled=True))
        global_shape = (out.shape[0], *local_shape[1:])
        index_map = self.sharding.addressable_devices_indices_map(global_shape)
        starts = sorted({(idx[0].start or 0, idx[0].stop) for idx in index_map.values()})
        return np.concatenate([full[a:b] for a, b in starts])

    def features(self, x, mask=None) -> np.ndarray:
        """float32 features [n, D] of this process's rows of `x` (all rows, or those with mask True)."""
        x = self._prepare(np.asarray(x))
        n = x.shape[0]
        keep = np.ones(n, bool) if mask is None else np.asarray(mask, bool).reshape(-1)
        if keep.shape[0] != n:
            raise ValueError(f"mask has {keep.shape[0]} rows, the batch {n}")
        if self.batch_size and n > self.batch_size:
            raise ValueError(f"a batch of {n} rows is larger than the extractor's batch_size={self.batch_size}")
        size = self._padded_size(n)
        if size > n:   # pad with copies of the first row (never counted)
            x = np.concatenate([x, np.repeat(x[:1], size - n, axis=0)])
        g = jax.make_array_from_process_local_data(self.sharding, x)
        out = self._features(g)
        self.calls += 1
        local = self._local_rows(out, x.shape)
        if local.shape[0] != size:
            raise RuntimeError(f"expected {size} local feature rows, got {local.shape[0]}")
        return np.asarray(local[:n][keep], np.float32)

    def update(self, x, mask=None) -> "StreamingExtractor":
        """Folds the features of this process's real rows into the local statistics."""
        feats = self.features(x, mask)
        if len(feats):
            self.stats.update(feats)
        return self

    def reset(self) -> "StreamingExtractor":
        self.stats = frechet.RunningStatistics(self.dim)
        return self

    def merged(self, *, gather: Callable | None = None) -> frechet.RunningStatistics:
        """The statistics of every process's rows (identical on all processes)."""
        return merge_statistics(self.stats, self.dim, gather=gather)


def check_clip(num_frames: int, num_cond_frames: int = 0, count_cond_frames: bool = True) -> int:
    """How many frames of a `num_frames` clip I3D sees under the protocol; raises if fewer than it needs."""
    from evaluation import i3d

    seen = num_frames if count_cond_frames else num_frames - num_cond_frames
    if seen < i3d.MIN_FRAMES:
        what = (f"clips of {num_frames} frames" if count_cond_frames else
                f"the predicted frames ({num_frames} − {num_cond_frames} conditioning frames)")
        hint = ("use clips of at least 9 frames" if count_cond_frames else
                "count the conditioning frames (--cond_frames_in_fvd) or use longer clips")
        raise ValueError(f"FVD's I3D needs at least {i3d.MIN_FRAMES} frames, but {what} give it {seen}; {hint}")
    return seen


class FeatureExtractor(StreamingExtractor):
    """FVD features: uint8 clips [B, T, H, W, 3] -> I3D logits [B, 400], accumulated.

    resolution: the protocol resolution the frames are resized to before I3D's 224² (None: as is).
    num_cond_frames / count_cond_frames: with count_cond_frames=False the first num_cond_frames
    frames are dropped and only the predicted frames are measured.
    net: a callable [B, T, 224, 224, 3] in [−1, 1] -> [B, D] (default: `i3d.load()`); `dim` its D.
    """

    name = "fvd"

    def __init__(self, *, resolution: int | None = None, num_cond_frames: int = 0,
                 count_cond_frames: bool = True, net=None, dim: int = FEATURES,
                 batch_size: int | None = None, devices=None):
        from evaluation import i3d

        self.i3d = i3d
        self.dim = int(dim)
        self.resolution = None if resolution in (None, 0) else int(resolution)
        self.num_cond_frames = int(num_cond_frames or 0)
        self.count_cond_frames = bool(count_cond_frames)
        super().__init__(i3d.load() if net is None else net, batch_size=batch_size, devices=devices)

    def protocol(self) -> dict:
        return {"metric": "fvd", "network": "i3d-kinetics-400 logits (time-averaged)",
                "fvd_resolution": self.resolution, "num_cond_frames": self.num_cond_frames,
                "cond_frames_in_fvd": self.count_cond_frames}

    def check_clip(self, num_frames: int) -> int:
        """Frames I3D sees of a `num_frames` clip; a ValueError when that is too few."""
        return check_clip(num_frames, self.num_cond_frames, self.count_cond_frames)

    def _prepare(self, x: np.ndarray) -> np.ndarray:
        if x.ndim != 5 or x.shape[-1] != 3:
            raise ValueError(f"FVD takes videos [B, T, H, W, 3], got shape {x.shape}")
        if x.dtype != np.uint8:
            raise TypeError(f"FVD takes uint8 videos, got {x.dtype}")
        self.check_clip(x.shape[1])
        return x if self.count_cond_frames else x[:, self.num_cond_frames:]

    def _features(self, x: jax.Array) -> jax.Array:
        return self.net(self.i3d.preprocess(x, resolution=self.resolution))
