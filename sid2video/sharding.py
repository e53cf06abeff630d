"""Where arrays live: the ('data', 'fsdp') device mesh shared by training, sampling and evaluation.

    mesh = sharding.make_mesh(fsdp=2)                  # all devices of all processes
    specs = sharding.param_shardings(params, mesh)     # NamedSharding per parameter
    batch = sharding.batch_sharding(mesh)              # leading axis over every device

Data parallel (fsdp = 1): parameters replicated, the batch split over all devices. FSDP: large
matrices and kernels split along 'fsdp' as well. A run's checkpoint can be sampled on another
host: `sampling_mesh` keeps as much of the training run's FSDP split as the devices there allow.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXES = ("data", "fsdp")
DEFAULT_FSDP_MIN_PARAMS = 2**14  # config.train.fsdp_min_params: smaller parameters stay replicated


def make_mesh(fsdp: int = 1, devices: Sequence | None = None) -> Mesh:
    """A ('data', 'fsdp') mesh over `devices` (default: all devices of all processes)."""
    devices = list(jax.devices() if devices is None else devices)
    if fsdp < 1 or len(devices) % fsdp:
        raise ValueError(f"config.train.fsdp={fsdp} must divide the number of devices ({len(devices)}); "
                         f"choose one of {[d for d in range(1, len(devices) + 1) if len(devices) % d == 0]}")
    grid = np.asarray(devices).reshape(len(devices) // fsdp, fsdp)
    return Mesh(grid, AXES)


def sampling_mesh(config, devices: Sequence | None = None) -> Mesh:
    """The mesh to sample a run's model on: the run's FSDP size (config.train.fsdp) where it divides
    the devices here, else the largest common divisor (1: replicated parameters). CPU devices
    always get replicated parameters: a sampler loop full of parameter all-gathers can deadlock
    XLA's CPU runtime when its threads run the gathers in different orders, and no CPU host needs
    FSDP to hold a model for sampling."""
    devices = list(jax.devices() if devices is None else devices)
    fsdp = int(_train_key(config, "fsdp", 1))
    if devices and devices[0].platform == "cpu":
        fsdp = 1
    return make_mesh(math.gcd(fsdp, len(devices)), devices)


def min_params(config) -> int:
    """config.train.fsdp_min_params, or its default where a config does not say."""
    return int(_train_key(config, "fsdp_min_params", DEFAULT_FSDP_MIN_PARAMS))


def param_partition_spec(shape: Sequence[int], mesh_shape: Mapping[str, int],
                         min_size: int = DEFAULT_FSDP_MIN_PARAMS) -> P:
    """PartitionSpec of one parameter for a mesh with axes ('data',) or ('data', 'fsdp').

    Data parallel: every parameter is replicated. FSDP: a matrix or kernel of at least
    `min_size` elements is split along 'fsdp' on the larger of its last two dimensions (the
    input/output features of a Dense or convolution; a leading axis of scanned, stacked blocks
    is never split) when that dimension divides evenly; everything else is replicated.
    """
    n = int(mesh_shape.get("fsdp", 1))
    if n <= 1 or len(shape) < 2 or math.prod(shape) < min_size:
        return P()
    dims = sorted(range(len(shape) - 2, len(shape)), key=lambda d: -shape[d])
    for d in dims:
        if shape[d] % n == 0:
            spec = [None] * len(shape)
            spec[d] = "fsdp"
            return P(*spec)
    return P()


def param_shardings(tree: Any, mesh: Mesh, min_size: int = DEFAULT_FSDP_MIN_PARAMS) -> Any:
    """A NamedSharding for every array (or ShapeDtypeStruct) leaf of `tree`."""
    shape = dict(mesh.shape)
    return jax.tree.map(lambda a: NamedSharding(mesh, param_partition_spec(a.shape, shape, min_size)), tree)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """The leading (batch) axis split over every device of the mesh."""
    return NamedSharding(mesh, P(tuple(mesh.axis_names)))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def put_local_rows(sharding: NamedSharding, *arrays_B: np.ndarray) -> tuple[list[jax.Array], int]:
    """This process's rows of each array as one global array split by `sharding`, padded (with
    copies of the last row) to a multiple of its devices. Returns the arrays and the real row count."""
    n = len(arrays_B[0])
    pad = (-n) % max(1, jax.local_device_count())
    out = []
    for a in arrays_B:
        if pad:
            a = np.concatenate([a, np.repeat(a[-1:], pad, 0)])
        out.append(jax.make_array_from_process_local_data(sharding, a))
    return out, n


def local_rows(array_B: jax.Array, n: int) -> np.ndarray:
    """The first `n` of this process's rows of a batch-split global array (drops `put_local_rows`'s
    padding)."""
    shards = sorted(array_B.addressable_shards, key=lambda s: s.index[0].start or 0)
    return np.concatenate([np.asarray(s.data) for s in shards])[:n]


def any_process(flag: bool) -> bool:
    """Whether `flag` holds on any process (a small all-gather when there are several)."""
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel

    return bool(np.any(multihost_utils.process_allgather(np.asarray(flag, np.int32))))


def _train_key(config, key: str, default):
    train = config.get("train") if hasattr(config, "get") else None
    if train is None:
        return default
    value = train.get(key, default) if hasattr(train, "get") else getattr(train, key, default)
    return default if value is None else value


def initialize_distributed(coordinator: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None, auto: bool = False) -> None:
    """Join a multi-process run through JAX's own runtime (`jax.distributed.initialize`).

    On TPU pods and SLURM/Kubernetes GPU clusters `auto=True` lets JAX discover the peers. On CPU
    (tests, or a cluster of CPU hosts) give the coordinator address, the number of processes and
    this process's id; collectives then run over gloo.
    """
    if (coordinator or auto) and jax.distributed.is_initialized():
        # Already part of the run (e.g. sampling after training in one Python process).
        if num_processes is not None and jax.process_count() != num_processes:
            raise ValueError(f"this process already joined a run of {jax.process_count()} processes, "
                             f"not {num_processes}")
        return
    if coordinator:
        if jax.config.jax_platforms in (None, "", "cpu") or str(jax.config.jax_platforms).startswith("cpu"):
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator, num_processes=num_processes, process_id=process_id)
    elif auto:
        jax.distributed.initialize()


def add_distributed_flags(parser) -> None:
    """The flags that join a multi-process run, for an argparse subcommand (sample, evaluate)."""
    group = parser.add_argument_group("multi-process runs (the same command on every process)")
    group.add_argument("--coordinator_address", default=None,
                       help="host:port of process 0 for multi-process CPU/GPU runs")
    group.add_argument("--num_processes", type=int, default=None, help="number of processes")
    group.add_argument("--process_id", type=int, default=None, help="this process's index")
    group.add_argument("--distributed", action="store_true",
                       help="call jax.distributed.initialize() with auto-detection (TPU pods, SLURM)")


def join_from_flags(args) -> None:
    """`initialize_distributed` from the flags of `add_distributed_flags` (or train's absl flags)."""
    given = [args.coordinator_address, args.num_processes, args.process_id]
    if args.coordinator_address and None in given:
        raise SystemExit("--coordinator_address needs --num_processes and --process_id as well")
    initialize_distributed(args.coordinator_address, args.num_processes, args.process_id, args.distributed)
