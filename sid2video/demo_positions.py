"""Where the moving digit is in a frame: the demo's position error and digit-shown rate.

Frames are uint8 [B, T, H, W, C] on a black background; a digit is the bright pixels' mass, its
position their brightness centroid (y, x), its spread their distance from it.
"""

from __future__ import annotations

import numpy as np


def _moments(video: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per frame of [B, T, H, W, C] uint8: the bright mass, its centroid (y, x) and its spread
    (root mean squared distance of the bright pixels from the centroid)."""
    v = np.asarray(video, np.float64).max(axis=-1)
    w = np.maximum(v - threshold, 0.0)
    h, wd = v.shape[-2:]
    ys, xs = np.arange(h)[:, None], np.arange(wd)[None, :]
    total = w.sum(axis=(-2, -1))
    safe = np.where(total > 0, total, 1.0)
    cy = np.where(total > 0, (w * ys).sum(axis=(-2, -1)) / safe, (h - 1) / 2)
    cx = np.where(total > 0, (w * xs).sum(axis=(-2, -1)) / safe, (wd - 1) / 2)
    dist2 = (ys - cy[..., None, None]) ** 2 + (xs - cx[..., None, None]) ** 2
    spread = np.sqrt((w * dist2).sum(axis=(-2, -1)) / safe)
    return total, np.stack([cy, cx], axis=-1), spread


def centroids(video: np.ndarray, threshold: float = 48.0) -> np.ndarray:
    """The brightness centroid (y, x) of every frame of [B, T, H, W, C] uint8: where the digit is.

    The background is black; pixels darker than `threshold` (sampling speckle) do not count.
    A frame with no bright pixel gets the frame centre.
    """
    return _moments(video, threshold)[1]


def digit_shown(video: np.ndarray, truth: np.ndarray, threshold: float = 48.0) -> np.ndarray:
    """Whether each frame of `video` shows one digit like the one in the same frame of `truth`
    ([B, T] bool): its bright mass within a factor 2 of the truth's and its bright pixels no more
    spread out than 1.5 times the truth's (+ half a pixel). Noise or an empty frame fails, so a
    centroid that lands near the digit by chance is not mistaken for a prediction."""
    mass, _, spread = _moments(video, threshold)
    mass_true, _, spread_true = _moments(truth, threshold)
    ratio = mass / np.maximum(mass_true, 1e-9)
    return (ratio >= 0.5) & (ratio <= 2.0) & (spread <= 1.5 * spread_true + 0.5)


def true_positions(truth: np.ndarray, top_left: np.ndarray) -> np.ndarray:
    """Positions of the digit from the saved ground truth: its top-left corner in every frame plus
    the glyph's centroid offset, measured once on the first (given) frame. [B, T, 2]."""
    offset = centroids(truth[:, :1])[:, 0] - top_left[:, 0]
    return top_left + offset[:, None, :]
