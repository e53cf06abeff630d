"""Fréchet Inception Distance: InceptionV3 pool3 features of uint8 images, streamed (SPEC §7).

    extractor = fid.FeatureExtractor()            # needs pytorch-fid's weights (inception.load)
    for batch in batches:
        extractor.update(batch["video"], batch["mask"])   # [B, 1, H, W, 3] or [B, H, W, 3]
    fid = fid.distance(extractor.merged(), reference_stats)

The network resizes to 299² (half-pixel bilinear, as pytorch-fid) and returns the 2048-d pool3
features. Batching, device sharding, masking and the exact float64 merge across processes are
those of `fvd.StreamingExtractor`.
"""

from __future__ import annotations

import jax
import numpy as np

from evaluation import fvd

__all__ = ["FeatureExtractor", "distance", "FEATURES"]

FEATURES = 2048
distance = fvd.distance


class FeatureExtractor(fvd.StreamingExtractor):
    """FID features: uint8 images [B, H, W, 3] or [B, 1, H, W, 3] -> Inception pool3 [B, 2048].

    net: a callable on uint8 images (default `inception.load(weights)`, which raises a clear
    FileNotFoundError when the weights file is not set up); `dim` its feature size.
    """

    name = "fid"

    def __init__(self, *, weights=None, net=None, dim: int = FEATURES, batch_size: int | None = None,
                 devices=None):
        self.dim = int(dim)
        if net is None:
            from evaluation import inception

            net = inception.load(weights)
        super().__init__(net, batch_size=batch_size, devices=devices)

    def protocol(self) -> dict:
        return {"metric": "fid", "network": "inception-v3 pool3 (TF 2015-12-05 graph)"}

    def _prepare(self, x: np.ndarray) -> np.ndarray:
        if x.ndim == 5:
            if x.shape[1] != 1:
                raise ValueError(f"FID takes images; got videos of {x.shape[1]} frames (use FVD for video)")
            x = x[:, 0]
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"FID takes images [B, H, W, 3] or [B, 1, H, W, 3], got shape {x.shape}")
        if x.dtype != np.uint8:
            raise TypeError(f"FID takes uint8 images, got {x.dtype}")
        return x

    def _features(self, x: jax.Array) -> jax.Array:
        return self.net(x)
