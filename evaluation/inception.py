"""InceptionV3 pool3 features (2048-d) for FID: the TF 2015-12-05 graph (SPEC §7).

The architecture is InceptionV3 as the FID reference graph computes it, which pytorch-fid
reproduces with its `FIDInception*` blocks:
  * Mixed_5b–5d (A), Mixed_6b–6e (C) and Mixed_7b (E, first) average-pool their pool branch
    without counting the zero padding (count_include_pad=False);
  * Mixed_7c (E, second) max-pools its pool branch instead of average-pooling;
  * batch norm with ε = 1e-3 after every convolution, explicit symmetric padding, VALID pooling.
Images are resized to 299² with half-pixel bilinear interpolation without antialiasing (PyTorch's
`interpolate(mode='bilinear', align_corners=False)`, as pytorch-fid does) and fed in [-1, 1]; the
features are the global average of Mixed_7c, before the 1008-way classifier.

Weights: no package ships them. Download pytorch-fid's `pt_inception-2015-12-05-6726825d.pth`
from https://github.com/mseitzer/pytorch-fid/releases (asset of the `fid_weights` release) and
pass its path to `load`, or set $SID2VIDEO_FID_WEIGHTS. The `.pth` is read without PyTorch: its
zip archive (data.pkl + data/<key> storages) or older sequential format is parsed by a restricted
unpickler that only rebuilds tensors from storages (`weights.read_torch_state_dict`). It is then
converted once to a flat `.npz` under the cache directory, which later calls read directly.
"""

from __future__ import annotations

import functools
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from evaluation import feature_nets, weight_cache, weights
from evaluation.i3d import resize_bilinear, to_unit_range

__all__ = ["InceptionV3", "InceptionFeatures", "load", "random", "convert", "preprocess", "to_torch_state_dict",
           "INPUT_SIZE", "FEATURES", "WEIGHTS_FILE", "WEIGHTS_URL"]

INPUT_SIZE = 299
FEATURES = 2048
WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + WEIGHTS_FILE
# As with torch.hub files, the hex tag in the file name is the start of the file's SHA-256.
WEIGHTS_SHA256_PREFIX = "6726825d"
CACHED_FILE = "inception-2015-12-05-6726825d.npz"
_WHERE = (f"download {WEIGHTS_FILE} from https://github.com/mseitzer/pytorch-fid/releases "
          f"({WEIGHTS_URL}) and pass its path to inception.load(path) or set $SID2VIDEO_FID_WEIGHTS")


# ----------------------------------------------------------------------------------------------
# The network. Attribute names follow the PyTorch state dict, so NNX paths are its keys.

def _pool(x, kind: str, window: int, stride: int, pad: int):
    """Max or average pooling over H, W of [B, H, W, C]; averages exclude the padding."""
    dims, strides = (1, window, window, 1), (1, stride, stride, 1)
    padding = ((0, 0), (pad, pad), (pad, pad), (0, 0))
    if kind == "max":
        return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, dims, strides, padding)
    total = jax.lax.reduce_window(x, 0.0, jax.lax.add, dims, strides, padding)
    count = jax.lax.reduce_window(jnp.ones((1, *x.shape[1:3], 1), x.dtype), 0.0, jax.lax.add, dims,
                                  strides, padding)
    return total / count


class BasicConv2d(nnx.Module):
    """Conv (no bias) -> batch norm (ε = 1e-3, running statistics) -> ReLU."""

    def __init__(self, cin, cout, kernel, stride=1, padding=(0, 0), *, precision=None, rngs):
        kernel = (kernel, kernel) if isinstance(kernel, int) else tuple(kernel)
        padding = (padding, padding) if isinstance(padding, int) else tuple(padding)
        self.conv = nnx.Conv(cin, cout, kernel, stride, padding=[(p, p) for p in padding],
                             use_bias=False, precision=precision, rngs=rngs)
        self.bn = nnx.BatchNorm(cout, use_running_average=True, epsilon=1e-3, rngs=rngs)

    def __call__(self, x):
        return jax.nn.relu(self.bn(self.conv(x)))


class InceptionA(nnx.Module):
    def __init__(self, cin, pool_features, *, conv):
        self.branch1x1 = conv(cin, 64, 1)
        self.branch5x5_1 = conv(cin, 48, 1)
        self.branch5x5_2 = conv(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = conv(cin, 64, 1)
        self.branch3x3dbl_2 = conv(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = conv(96, 96, 3, padding=1)
        self.branch_pool = conv(cin, pool_features, 1)

    def __call__(self, x):
        return jnp.concatenate([
            self.branch1x1(x),
            self.branch5x5_2(self.branch5x5_1(x)),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            self.branch_pool(_pool(x, "avg", 3, 1, 1)),
        ], axis=-1)


class InceptionB(nnx.Module):
    def __init__(self, cin, *, conv):
        self.branch3x3 = conv(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = conv(cin, 64, 1)
        self.branch3x3dbl_2 = conv(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = conv(96, 96, 3, stride=2)

    def __call__(self, x):
        return jnp.concatenate([
            self.branch3x3(x),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            _pool(x, "max", 3, 2, 0),
        ], axis=-1)


class InceptionC(nnx.Module):
    def __init__(self, cin, c7, *, conv):
        self.branch1x1 = conv(cin, 192, 1)
        self.branch7x7_1 = conv(cin, c7, 1)
        self.branch7x7_2 = conv(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = conv(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = conv(cin, c7, 1)
        self.branch7x7dbl_2 = conv(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = conv(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = conv(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = conv(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = conv(cin, 192, 1)

    def __call__(self, x):
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = x
        for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3,
                      self.branch7x7dbl_4, self.branch7x7dbl_5):
            d = layer(d)
        return jnp.concatenate([self.branch1x1(x), b7, d, self.branch_pool(_pool(x, "avg", 3, 1, 1))],
                               axis=-1)


class InceptionD(nnx.Module):
    def __init__(self, cin, *, conv):
        self.branch3x3_1 = conv(cin, 192, 1)
        self.branch3x3_2 = conv(192, 320, 3, stride=2)
        self.branch7x7x3_1 = conv(cin, 192, 1)
        self.branch7x7x3_2 = conv(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = conv(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = conv(192, 192, 3, stride=2)

    def __call__(self, x):
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return jnp.concatenate([b3, b7, _pool(x, "max", 3, 2, 0)], axis=-1)


class InceptionE(nnx.Module):
    """pool='avg' (padding not counted) for Mixed_7b, pool='max' for Mixed_7c."""

    def __init__(self, cin, pool: str, *, conv):
        self.pool = pool
        self.branch1x1 = conv(cin, 320, 1)
        self.branch3x3_1 = conv(cin, 384, 1)
        self.branch3x3_2a = conv(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = conv(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = conv(cin, 448, 1)
        self.branch3x3dbl_2 = conv(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = conv(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = conv(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = conv(cin, 192, 1)

    def __call__(self, x):
        b3 = self.branch3x3_1(x)
        b3 = jnp.concatenate([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], axis=-1)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        d = jnp.concatenate([self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d)], axis=-1)
        pool = self.branch_pool(_pool(x, self.pool, 3, 1, 1))
        return jnp.concatenate([self.branch1x1(x), b3, d, pool], axis=-1)


class InceptionV3(nnx.Module):
    """[B, H, W, 3] in [-1, 1] (already at 299²) -> [B, 2048] pool3 features."""

    def __init__(self, *, precision=jax.lax.Precision.HIGHEST, rngs: nnx.Rngs | None = None):
        rngs = rngs if rngs is not None else nnx.Rngs(0)
        conv = functools.partial(BasicConv2d, precision=precision, rngs=rngs)
        self.Conv2d_1a_3x3 = conv(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = conv(32, 32, 3)
        self.Conv2d_2b_3x3 = conv(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = conv(64, 80, 1)
        self.Conv2d_4a_3x3 = conv(80, 192, 3)
        self.Mixed_5b = InceptionA(192, 32, conv=conv)
        self.Mixed_5c = InceptionA(256, 64, conv=conv)
        self.Mixed_5d = InceptionA(288, 64, conv=conv)
        self.Mixed_6a = InceptionB(288, conv=conv)
        self.Mixed_6b = InceptionC(768, 128, conv=conv)
        self.Mixed_6c = InceptionC(768, 160, conv=conv)
        self.Mixed_6d = InceptionC(768, 160, conv=conv)
        self.Mixed_6e = InceptionC(768, 192, conv=conv)
        self.Mixed_7a = InceptionD(768, conv=conv)
        self.Mixed_7b = InceptionE(1280, "avg", conv=conv)
        self.Mixed_7c = InceptionE(2048, "max", conv=conv)

    def __call__(self, x):
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = _pool(x, "max", 3, 2, 0)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = _pool(x, "max", 3, 2, 0)
        for name in ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c",
                     "Mixed_6d", "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c"):
            x = getattr(self, name)(x)
        return jnp.mean(x, axis=(1, 2))


# ----------------------------------------------------------------------------------------------
# Input.

def _as_images(images):
    shape = getattr(images, "shape", None)
    if shape is not None and len(shape) == 5 and shape[1] == 1:
        images = images[:, 0]   # an image batch [B, 1, H, W, C]
        shape = images.shape
    if shape is None or len(shape) != 4 or shape[-1] != 3:
        raise ValueError(f"images must have shape [B, H, W, 3] or [B, 1, H, W, 3], got {shape}")
    return images


def preprocess(images) -> jax.Array:
    """Images [B, H, W, 3] or [B, 1, H, W, 3] (uint8, or float in [-1, 1]) -> [B, 299, 299, 3] in [-1, 1]."""
    return resize_bilinear(to_unit_range(_as_images(images)), INPUT_SIZE, half_pixel_centers=True)


# ----------------------------------------------------------------------------------------------
# Weights: PyTorch state-dict names <-> NNX state.

_LEAF_TO_TORCH = {("conv", "kernel"): "conv.weight", ("bn", "scale"): "bn.weight", ("bn", "bias"): "bn.bias",
                  ("bn", "mean"): "bn.running_mean", ("bn", "var"): "bn.running_var"}


def _unused(key: str) -> bool:
    """State-dict entries that the pool3 features do not use: the classifier, auxiliary head, counters."""
    return key.startswith(("fc.", "AuxLogits.")) or key.endswith("num_batches_tracked")


def _path_parts(path) -> list[str]:
    parts = [str(getattr(p, "key", getattr(p, "name", p))) for p in path]
    return parts[:-1] if parts and parts[-1] == "value" else parts


def _torch_key(path) -> str:
    parts = _path_parts(path)
    return ".".join(parts[:-2] + [_LEAF_TO_TORCH[tuple(parts[-2:])]])


def _torch_to_ours(key: str, value: np.ndarray) -> np.ndarray:
    value = np.asarray(value, np.float32)
    if key.endswith("conv.weight"):
        if value.ndim != 4:
            raise ValueError(f"{key}: a conv weight must be 4-D [out, in, kh, kw], got {value.shape}")
        return np.ascontiguousarray(value.transpose(2, 3, 1, 0))   # OIHW -> HWIO
    return value


def convert(src, dst=None, *, check_sha256: bool = True) -> pathlib.Path:
    """Converts pytorch-fid's .pth state dict to a flat .npz of our parameters; returns its path.

    Every parameter of the network must be present with the right shape (`fc.*` and
    `*.num_batches_tracked` are ignored; a missing `bn.weight` means no scale, i.e. ones).
    `dst` defaults to the cache directory. With `check_sha256` the file's SHA-256 must begin with
    the tag in its official name (6726825d).
    """
    src = pathlib.Path(src)
    if not src.is_file():
        raise FileNotFoundError(f"FID Inception weights not found at {src}: {_WHERE}")
    digest = weight_cache.sha256(src)
    if check_sha256:
        if not digest.startswith(WEIGHTS_SHA256_PREFIX):
            raise ValueError(f"{src} has SHA-256 {digest}, which does not start with {WEIGHTS_SHA256_PREFIX}: "
                             f"it is not pytorch-fid's {WEIGHTS_FILE} (corrupt or another file); {_WHERE}")
    state_dict = weights.read_torch_state_dict(src)
    _, state = feature_nets.abstract_network(InceptionV3, jax.lax.Precision.HIGHEST)   # names and shapes only
    arrays, used = {}, set()

    def take(path, leaf):
        tkey = _torch_key(path)
        if tkey not in state_dict:
            if tkey.endswith("bn.weight"):
                value = np.ones(leaf.shape, np.float32)
            else:
                raise KeyError(f"{src}: {tkey!r} is missing; is this the FID Inception state dict? {_WHERE}")
        else:
            value = _torch_to_ours(tkey, state_dict[tkey])
            used.add(tkey)
        if value.shape != tuple(leaf.shape):
            raise ValueError(f"{src}: {tkey!r} converts to shape {value.shape}, the network expects "
                             f"{tuple(leaf.shape)}")
        arrays[".".join(_path_parts(path))] = value
        return leaf

    jax.tree_util.tree_map_with_path(take, state)
    extra = [k for k in state_dict if k not in used and not _unused(k)]
    if extra:
        raise ValueError(f"{src}: unexpected entries {extra[:5]} (not the FID InceptionV3 state dict?)")
    dst = pathlib.Path(dst) if dst is not None else weight_cache.cache_dir() / CACHED_FILE
    return weight_cache.save_cache(dst, arrays, digest)


def to_torch_state_dict(net: "InceptionFeatures") -> dict[str, np.ndarray]:
    """The parameters in pytorch-fid's state-dict layout (names, OIHW kernels): the inverse of `convert`."""
    out = {}

    def put(path, leaf):
        value = np.asarray(leaf)
        tkey = _torch_key(path)
        out[tkey] = np.ascontiguousarray(value.transpose(3, 2, 0, 1)) if tkey.endswith("conv.weight") else value
        return leaf

    jax.tree_util.tree_map_with_path(put, net.params.host)
    return out


class InceptionFeatures:
    """Jitted FID Inception: images [B, H, W, 3] / [B, 1, H, W, 3] in [-1, 1] (or uint8) -> [B, 2048].

    Resizes to 299² inside (as pytorch-fid). Parameters are replicated next to the input, so a
    batch sharded over devices runs data-parallel.
    """

    def __init__(self, graphdef, state):
        self.graphdef = graphdef
        self.params = feature_nets.ReplicatedParams(state)
        self._apply = feature_nets.jitted_apply(graphdef, preprocess)

    def __call__(self, images):
        images = _as_images(images)
        return self._apply(self.params.like(images), images)


def _from_arrays(arrays: dict[str, np.ndarray], origin: str, precision) -> InceptionFeatures:
    arrays = {k: v for k, v in arrays.items() if k not in (weight_cache.SOURCE_KEY, weight_cache.CONTENT_KEY)}
    graphdef, state = feature_nets.abstract_network(InceptionV3, precision)
    state = feature_nets.fill_state(state, arrays, lambda path: ".".join(_path_parts(path)), origin)
    return InceptionFeatures(graphdef, state)


def load(path: str | os.PathLike | None = None, *, precision=jax.lax.Precision.HIGHEST) -> InceptionFeatures:
    """The FID Inception with pytorch-fid's weights.

    `path` is the downloaded .pth (converted to the cache on first use) or an already converted
    .npz. Without `path`: $SID2VIDEO_FID_WEIGHTS, else the converted file in the cache directory.
    """
    cached = weight_cache.cache_dir() / CACHED_FILE
    if path is None:
        path = os.environ.get("SID2VIDEO_FID_WEIGHTS")
    if path is None:
        arrays = weight_cache.load_cache(cached)
        if arrays is None:
            raise FileNotFoundError(f"FID Inception weights are not set up (no valid {cached}): {_WHERE}")
        return _from_arrays(arrays, str(cached), precision)
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"FID Inception weights not found at {path}: {_WHERE}")
    if path.suffix == ".npz":
        arrays = weight_cache.load_npz(path)
        recorded = arrays.get(weight_cache.CONTENT_KEY)
        if recorded is not None and str(recorded) != weight_cache.content_sha256(arrays):
            raise ValueError(f"{path} does not match its content checksum (an array was altered, added or "
                             f"removed); convert it again from the .pth: {_WHERE}")
        return _from_arrays(arrays, str(path), precision)
    # A .pth: reuse the cached conversion only if it is intact and was made from this very file.
    digest = weight_cache.sha256(path)
    arrays = weight_cache.load_cache(cached, digest)
    if arrays is None:
        convert(path, cached)
        arrays = weight_cache.load_cache(cached, digest)
    return _from_arrays(arrays, str(cached), precision)


def random(seed: int = 0, *, precision=jax.lax.Precision.HIGHEST) -> InceptionFeatures:
    """The network with random weights (for tests and shape checks; not for reporting FID)."""
    graphdef, state = feature_nets.abstract_network(InceptionV3, precision)
    rng = np.random.default_rng(seed)

    def init(path, leaf):
        name = _path_parts(path)[-1]
        if name == "kernel":   # He normal: keeps the activation scale through the ReLUs
            fan_in = int(np.prod(leaf.shape[:-1]))
            return (rng.standard_normal(leaf.shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        return np.full(leaf.shape, 1.0 if name in ("scale", "var") else 0.0, np.float32)

    # Filled on the host: initialising ~100 layers eagerly would compile an op per layer.
    return InceptionFeatures(graphdef, jax.tree_util.tree_map_with_path(init, state))
