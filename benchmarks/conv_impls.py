"""Which formulation of the temporal conv taps is fastest here: model.conv_impl per conv kind.

A ResBlock-sized convolution (C -> C, 3×3 in space, 3 temporal taps, 'SAME') is timed forward
and forward + backward (the gradients of the input and the kernel: a train step's work) for
each `conv_impl` of sid2video.models.layers.Conv; all three compute the same function with the
same parameters (tests/test_speed_options.py). The fastest per kind is what config.model.conv_impl
should be on this backend.

    python benchmarks/conv_impls.py [--batch 2 --frames 16 --size 32 --channels 64]
        [--dtype bfloat16] [--repeats 5]
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
from flax import nnx

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sid2video.models import layers  # noqa: E402


def timed(fn, *args, repeats: int) -> float:
    """Seconds per call after one compiling call (the best of `repeats`)."""
    jax.block_until_ready(fn(*args))
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - t0)
    return best


def measure(kind: str, impl: str, x, channels: int, dtype, repeats: int) -> tuple[float, float]:
    conv = layers.Conv(channels, channels, kind, impl=impl, dtype=dtype, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(conv)

    def forward(params, x):
        return nnx.merge(graphdef, params)(x)

    def loss(params, x):
        return jnp.sum(forward(params, x).astype(jnp.float32) ** 2)

    fwd = jax.jit(forward)
    grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
    return timed(fwd, params, x, repeats=repeats), timed(grad, params, x, repeats=repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--kinds", default="3d,factorized")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    dtype = jnp.dtype(args.dtype)
    shape = (args.batch, args.frames, args.size, args.size, args.channels)
    x = jax.random.normal(jax.random.key(0), shape, dtype)
    dev = jax.devices()[0]
    print(f"{dev.device_kind} ({dev.platform}), x {shape} {args.dtype}, best of {args.repeats}\n")
    print("| conv | conv_impl | forward ms | forward + backward ms |")
    print("|---|---|---:|---:|")
    for kind in args.kinds.split(","):
        results = {impl: measure(kind, impl, x, args.channels, dtype, args.repeats)
                   for impl in layers.CONV_IMPLS}
        best = min(results, key=lambda k: results[k][1])
        for impl, (f, g) in results.items():
            mark = " (fastest)" if impl == best else ""
            print(f"| {kind} | {impl}{mark} | {f * 1e3:.1f} | {g * 1e3:.1f} |")


if __name__ == "__main__":
    main()
