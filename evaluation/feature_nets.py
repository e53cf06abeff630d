"""What the feature networks (I3D, Inception) share: the abstract network, its state filled from
arrays, one jitted apply per structure, and parameters placed next to the inputs."""

from __future__ import annotations

import functools

import jax
import numpy as np

__all__ = ["ReplicatedParams", "abstract_network", "jitted_apply", "fill_state"]


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
