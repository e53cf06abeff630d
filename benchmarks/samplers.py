"""Sampler accuracy against a known distribution (SPEC §4).

Each sampler is driven by the exact denoiser E[x | z_t] of a 2-D diagonal Gaussian mixture (in
closed form), so every deviation from the mixture is the sampler's discretisation error plus
Monte-Carlo noise. Distances are taken to the exact distribution, not to a second sample: every
1-D projection of the mixture is itself a 1-D Gaussian mixture with a known CDF, and
W1 = ∫ |F_n(x) − F(x)| dx is integrated on a fine grid. The "floor" row is the same distance for
samples drawn from the true mixture (mean of 5 draws): the Monte-Carlo noise level. Tables:

  * W1: the 1-D Wasserstein distance per coordinate, averaged over the two coordinates;
  * sliced W1: the same averaged over 64 random unit directions;
  * mode error: total variation between the sampled and the true mode weights π.

    .venv/bin/python benchmarks/samplers.py [--samples 20000] [--sampler_steps 16 32 64 128 256]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from scipy.stats import norm

from sid2video.diffusion import samplers, schedules

PI = np.array([0.5, 0.3, 0.2])
MU = np.array([[-0.5, -0.4], [0.5, 0.0], [0.0, 0.55]])
STD = np.array([[0.10, 0.15], [0.12, 0.08], [0.10, 0.10]])

METHODS = [
    ("ddpm (γ=0.3)", dict(method="ddpm", logvar_interp=0.3)),
    ("ddpm (γ=1.0)", dict(method="ddpm", logvar_interp=1.0)),
    ("ddim", dict(method="ddim")),
    ("addim", dict(method="addim")),
]


def denoiser(z, logsnr):
    """E[x | z] for x ~ Σ π_k N(μ_k, diag s_k²) and z = α x + σ ε."""
    batch = z.shape[0]
    zf = z.reshape(batch, 1, -1)
    a2 = jax.nn.sigmoid(logsnr)[:, None, None]
    var = a2 * STD**2 + jax.nn.sigmoid(-logsnr)[:, None, None]
    a = jnp.sqrt(a2)
    logp = jnp.log(PI) - 0.5 * jnp.sum(jnp.log(var) + (zf - a * MU) ** 2 / var, -1)
    resp = jax.nn.softmax(logp, axis=-1)[..., None]
    return jnp.sum(resp * (MU + a * STD**2 / var * (zf - a * MU)), axis=1).reshape(z.shape)


def draw_mixture(rng: np.random.Generator, n: int) -> np.ndarray:
    k = rng.choice(len(PI), size=n, p=PI)
    return MU[k] + STD[k] * rng.standard_normal((n, 2))


def modes(x: np.ndarray) -> np.ndarray:
    logp = np.log(PI) - 0.5 * np.sum(np.log(STD**2)[None] + (x[:, None] - MU[None]) ** 2 / STD[None] ** 2, -1)
    return np.bincount(logp.argmax(1), minlength=len(PI)) / len(x)


def w1_to_mixture(samples: np.ndarray, direction: np.ndarray) -> float:
    """W1 between the projected samples and the exact projected mixture Σ π_k N(μ_k·d, Σ_j s_kj² d_j²)."""
    proj = np.sort(samples @ direction)
    means, stds = MU @ direction, np.sqrt(STD**2 @ direction**2)
    lo = min(proj[0], (means - 8 * stds).min())
    hi = max(proj[-1], (means + 8 * stds).max())
    grid = np.linspace(lo, hi, 20001)
    f_n = np.searchsorted(proj, grid, side="right") / len(proj)
    f = norm.cdf((grid[:, None] - means) / stds) @ PI
    return float(np.trapezoid(np.abs(f_n - f), grid))


def metrics(x: np.ndarray, directions: np.ndarray) -> tuple[float, float, float]:
    w1 = np.mean([w1_to_mixture(x, e) for e in np.eye(2)])
    sliced = np.mean([w1_to_mixture(x, d) for d in directions])
    tv = 0.5 * np.abs(modes(x) - PI).sum()
    return float(w1), float(sliced), float(tv)


def table(title: str, steps: list[int], rows: dict[str, list[float]]) -> str:
    lines = [f"**{title}**", "", "| sampler | " + " | ".join(f"{s} steps" for s in steps) + " |",
             "|---|" + "---:|" * len(steps)]
    for name, values in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{v:.4f}" for v in values) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=20000)
    parser.add_argument("--sampler_steps", type=int, nargs="+", default=[16, 32, 64, 128, 256])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--schedule", default="cosine", help="schedule name (cosine: λ ∈ [−15, 15])")
    args = parser.parse_args()

    schedule = schedules.get(args.schedule)
    rng = np.random.default_rng(args.seed)
    angles = rng.uniform(0, np.pi, 64)
    directions = np.stack([np.cos(angles), np.sin(angles)], 1)
    shape = (args.samples, 1, 1, 1, 2)

    results = {k: {name: [] for name, _ in METHODS} for k in ("w1", "sliced", "tv")}
    start = time.time()
    for name, kw in METHODS:
        for steps in args.sampler_steps:
            fn = jax.jit(lambda key, kw=kw, steps=steps: samplers.sample(
                denoiser, key, shape, schedule=schedule, num_steps=steps, **kw))
            x = np.asarray(fn(jax.random.key(args.seed + 1))).reshape(-1, 2).astype(np.float64)
            for key, value in zip(("w1", "sliced", "tv"), metrics(x, directions)):
                results[key][name].append(value)
    floor = np.mean([metrics(draw_mixture(rng, args.samples), directions) for _ in range(5)], axis=0)
    for i, key in enumerate(("w1", "sliced", "tv")):
        results[key]["floor (true mixture samples)"] = [floor[i]] * len(args.sampler_steps)

    print(f"Exact Gaussian-mixture denoiser, {args.schedule} schedule, {args.samples} samples, clip=True, "
          f"{jax.default_backend()}, {time.time() - start:.0f} s\n")
    print(table("mean per-coordinate W1 to the mixture", args.sampler_steps, results["w1"]))
    print()
    print(table("sliced W1 (64 directions)", args.sampler_steps, results["sliced"]))
    print()
    print(table("mode-weight total variation", args.sampler_steps, results["tv"]))


if __name__ == "__main__":
    main()
