"""Frame-prediction metrics: PSNR and SSIM per predicted frame, and the copy-last-frame baseline.

Both metrics compare a predicted frame with the true frame, on uint8 pixels (the range L = 255;
float inputs are taken on the same [0, 255] scale), and give one number per frame:

    PSNR = min(10 log10(L² / MSE), 100 dB),  MSE = mean over H, W, C of (pred − true)²

    The cap (`PSNR_CAP_DB`) gives an exact frame (MSE = 0, PSNR +∞) a finite value, so that a mean
    over frames and clips stays finite: a copy-last-frame prediction of a still shot, or of a digit
    resting against a wall, is exact. 100 dB lies above every inexact uint8 frame of up to 226 × 226
    pixels (its smallest error, one grey level in one channel of one pixel, gives
    10 log10(L² · H W C) dB: 77 dB at 16², 95 dB at 128²), so at these sizes the cap changes only
    exact frames and never reorders inexact ones. Reported PSNRs are means of capped per-frame
    values; `FrameMetrics` also counts the exact frames, which the reports state beside the mean.


    SSIM (Wang, Bovik, Sheikh & Simoncelli 2004): local statistics under an 11×11 Gaussian window
    (σ = 1.5, normalised), evaluated where the window fits inside the frame ('valid', as the
    reference MATLAB code and tf.image.ssim), per channel:
        ssim_map = (2 μx μy + C1)(2 σxy + C2) / ((μx² + μy² + C1)(σx² + σy² + C2)),
        C1 = (0.01 L)², C2 = (0.03 L)²,
    then averaged over positions and channels.

SSIM needs no such rule: with C1, C2 > 0 its denominator is positive, so constant and all-black
frames get finite values (1 for identical frames). `psnr` and `ssim` are jnp functions (jit-able) of arrays [..., H, W, C]. `FrameMetrics`
accumulates them per predicted frame index over batches on the host in float64 (padding rows
excluded through a mask), and its sums merge across processes exactly. The copy-last-frame
baseline predicts every future frame as the last conditioning frame: a model that has learnt
nothing about motion scores about as well as it.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["psnr", "ssim", "gaussian_window", "copy_last_frame", "frame_metrics", "FrameMetrics",
           "MAX_VALUE", "SSIM_WINDOW", "SSIM_SIGMA", "PSNR_CAP_DB", "PSNR_CONVENTION"]

MAX_VALUE = 255.0
PSNR_CAP_DB = 100.0
PSNR_CONVENTION = (f"mean over clips and predicted frames of each frame's PSNR, capped at {PSNR_CAP_DB:g} dB "
                   "(an exact frame would be +∞; no inexact uint8 frame up to 226×226 reaches the cap)")
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03
_HIGHEST = jax.lax.Precision.HIGHEST


def _float(x) -> jax.Array:
    return jnp.asarray(x).astype(jnp.float32)


def _check_pair(pred, true) -> None:
    if pred.shape != true.shape:
        raise ValueError(f"predicted and true frames differ in shape: {pred.shape} vs {true.shape}")
    if pred.ndim < 3:
        raise ValueError(f"frames must have shape [..., H, W, C], got {pred.shape}")


def psnr(pred, true, *, max_value: float = MAX_VALUE, cap: float | None = PSNR_CAP_DB) -> jax.Array:
    """PSNR in dB of each frame of `pred` against `true` ([..., H, W, C] -> [...]), at most `cap`
    (exact frames get the cap; cap=None gives +inf there)."""
    _check_pair(pred, true)
    mse = jnp.mean(jnp.square(_float(pred) - _float(true)), axis=(-3, -2, -1))
    value = 10.0 * jnp.log10(jnp.float32(max_value) ** 2 / mse)
    if cap is None:
        return value
    return jnp.where(mse > 0, jnp.minimum(value, jnp.float32(cap)), jnp.float32(cap))


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
    """The normalised 1-D Gaussian g[i] ∝ exp(−(i − (size−1)/2)² / 2σ²); the 2-D window is g gᵀ."""
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    g = np.exp(-0.5 * (x / sigma) ** 2)
    return g / g.sum()


@functools.lru_cache(maxsize=16)
def _valid_filter_matrix(n: int, size: int, sigma: float) -> np.ndarray:
    """[n − size + 1, n]: row i holds the window at positions i .. i + size − 1 ('valid' filtering)."""
    g = gaussian_window(size, sigma)
    m = np.zeros((n - size + 1, n), np.float64)
    for i in range(n - size + 1):
        m[i, i:i + size] = g
    return m.astype(np.float32)


def ssim(pred, true, *, max_value: float = MAX_VALUE, window: int = SSIM_WINDOW,
         sigma: float = SSIM_SIGMA) -> jax.Array:
    """SSIM of each frame ([..., H, W, C] -> [...]): Gaussian window, 'valid' positions, mean over channels.

    Frames smaller than the window have no valid position: a ValueError says so.
    """
    _check_pair(pred, true)
    h, w = pred.shape[-3], pred.shape[-2]
    if h < window or w < window:
        raise ValueError(f"SSIM with a {window}×{window} window needs frames of at least that size, "
                         f"got {h}×{w}")
    mh = jnp.asarray(_valid_filter_matrix(h, window, float(sigma)))
    mw = jnp.asarray(_valid_filter_matrix(w, window, float(sigma)))

    def blur(x):   # separable Gaussian filter over H then W, 'valid'
        x = jnp.einsum("oh,...hwc->...owc", mh, x, precision=_HIGHEST)
        return jnp.einsum("ow,...hwc->...hoc", mw, x, precision=_HIGHEST)

    x, y = _float(pred), _float(true)
    mu_x, mu_y = blur(x), blur(y)
    # Second moments about the local means; the sample values are centred on the frame mean first
    # so that E[x²] − μ² does not lose digits to cancellation in float32.
    shift = jnp.mean(y, axis=(-3, -2, -1), keepdims=True)
    xs, ys = x - shift, y - shift
    mxs, mys = mu_x - shift, mu_y - shift
    var_x = blur(xs * xs) - mxs * mxs
    var_y = blur(ys * ys) - mys * mys
    cov = blur(xs * ys) - mxs * mys
    c1 = (SSIM_K1 * max_value) ** 2
    c2 = (SSIM_K2 * max_value) ** 2
    num = (2.0 * mu_x * mu_y + c1) * (2.0 * cov + c2)
    den = (mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2)
    return jnp.mean(num / den, axis=(-3, -2, -1))


def copy_last_frame(video, num_cond: int):
    """The copy-last-frame prediction: frames num_cond.. of [B, T, H, W, C] replaced by frame num_cond − 1."""
    if num_cond < 1:
        raise ValueError(f"the copy-last-frame baseline needs at least one conditioning frame, got {num_cond}")
    video = np.asarray(video)
    if video.ndim != 5:
        raise ValueError(f"video must have shape [B, T, H, W, C], got {video.shape}")
    if num_cond >= video.shape[1]:
        raise ValueError(f"num_cond={num_cond} leaves no frame to predict in clips of {video.shape[1]} frames")
    out = video.copy()
    out[:, num_cond:] = video[:, num_cond - 1:num_cond]
    return out


@functools.partial(jax.jit, static_argnames=("num_cond", "with_ssim"))
def _frame_metrics(pred, true, num_cond, with_ssim):
    p, t = pred[:, num_cond:], true[:, num_cond:]
    out = {"psnr": psnr(p, t), "mse": jnp.mean(jnp.square(_float(p) - _float(t)), axis=(-3, -2, -1))}
    if with_ssim:
        out["ssim"] = ssim(p, t)
    return out


def frame_metrics(pred, true, num_cond: int) -> dict[str, np.ndarray]:
    """PSNR, SSIM and MSE of the predicted frames: {'psnr', 'ssim', 'mse'} each [B, T − num_cond].

    SSIM is left out (no 'ssim' key) for frames smaller than the SSIM window.
    """
    pred, true = np.asarray(pred), np.asarray(true)
    _check_pair(pred, true)
    if pred.ndim != 5:
        raise ValueError(f"videos must have shape [B, T, H, W, C], got {pred.shape}")
    with_ssim = min(pred.shape[2:4]) >= SSIM_WINDOW
    out = _frame_metrics(pred, true, int(num_cond), with_ssim)
    return {k: np.asarray(v, np.float64) for k, v in out.items()}


class FrameMetrics:
    """Per-predicted-frame means of PSNR / SSIM / MSE over clips, accumulated in float64.

    `update(pred, true, mask)` adds the clips whose mask is True. The mean PSNR is the mean of
    per-clip, per-frame capped PSNRs (`PSNR_CONVENTION`); 'exact' counts the exact frames.
    `to_array`/`from_array` flatten the sums for a cross-process gather; `merge` adds another
    accumulator; `merged()` is the accumulator of every process.
    """

    NAMES = ("psnr", "ssim", "mse", "exact")

    def __init__(self, num_cond: int, num_pred: int | None = None):
        self.num_cond = int(num_cond)
        self.num_pred = num_pred
        self.count = 0
        self.sums: dict[str, np.ndarray] = {}

    def update(self, pred, true, mask=None) -> "FrameMetrics":
        values = frame_metrics(pred, true, self.num_cond)
        keep = np.ones(len(values["psnr"]), bool) if mask is None else np.asarray(mask, bool)
        if keep.shape != (len(values["psnr"]),):
            raise ValueError(f"mask must have shape [{len(values['psnr'])}], got {keep.shape}")
        values["exact"] = (values["mse"] == 0).astype(np.float64)
        self._add(int(keep.sum()), {k: v[keep].sum(axis=0) for k, v in values.items()})
        return self

    def _add(self, count: int, sums: dict[str, np.ndarray]) -> None:
        if count == 0:
            return
        for k, v in sums.items():
            v = np.asarray(v, np.float64)
            if self.num_pred is None:
                self.num_pred = v.shape[0]
            self.sums[k] = self.sums[k] + v if k in self.sums else v.copy()
        self.count += count

    def merge(self, other: "FrameMetrics") -> "FrameMetrics":
        self._add(other.count, other.sums)
        return self

    def to_array(self) -> np.ndarray:
        """[count, has_ssim, psnr sums, ssim sums, mse sums, exact counts] as one float64 vector."""
        if self.num_pred is None:
            raise ValueError("the accumulator does not know the number of predicted frames yet")
        z = np.zeros(self.num_pred, np.float64)
        return np.concatenate([[float(self.count), float("ssim" in self.sums)],
                               *(self.sums.get(k, z) for k in self.NAMES)])

    @classmethod
    def from_array(cls, array, num_cond: int) -> "FrameMetrics":
        a = np.asarray(array, np.float64)
        n = (a.shape[0] - 2) // len(cls.NAMES)
        out = cls(num_cond, n)
        parts = dict(zip(cls.NAMES, np.split(a[2:], len(cls.NAMES))))
        if not a[1]:
            parts.pop("ssim")
        out._add(int(round(a[0])), parts)
        return out

    def merged(self, *, gather=None) -> "FrameMetrics":
        """The accumulators of every process merged in process order (the same on all processes)."""
        from evaluation import fvd

        out = FrameMetrics(self.num_cond, self.num_pred)
        for row in fvd.allgather_float64(self.to_array(), gather=gather):
            out.merge(FrameMetrics.from_array(row, self.num_cond))
        return out

    def result(self) -> dict:
        """{'count', 'psnr', 'ssim', 'mse' (means over frames and clips), '<name>_per_frame' lists,
        'exact_frames'}: finite numbers, or None where there is nothing to average (no clips; no
        SSIM for frames smaller than its window)."""
        out: dict = {"count": self.count}
        for k in self.NAMES[:3]:
            if k not in self.sums or not self.count:
                out[k], out[f"{k}_per_frame"] = None, None
                continue
            per_frame = self.sums[k] / self.count
            out[k] = float(np.mean(per_frame))
            out[f"{k}_per_frame"] = [float(v) for v in per_frame]
        out["exact_frames"] = int(round(float(np.sum(self.sums["exact"])))) if "exact" in self.sums else 0
        return out
