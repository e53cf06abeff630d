"""Fréchet distance between Gaussians fitted to feature sets (FVD, FID; SPEC §7).

    d² = ‖μ1 − μ2‖² + tr(Σ1 + Σ2 − 2 (Σ1 Σ2)^{1/2})

Everything is float64 on the host. The trace of the matrix square root is taken as
tr((Σ1 Σ2)^{1/2}) = Σ_i sqrt(max(λ_i, 0)), λ = eig(A Σ2 A) with A = Σ1^{1/2} from `eigh`:
A Σ2 A is symmetric positive semi-definite and similar to Σ1 Σ2, so its eigenvalues are the
eigenvalues of Σ1 Σ2, and a symmetric eigensolver stays well defined where `sqrtm` of a
non-symmetric, singular product does not (fewer samples than feature dimensions).

Statistics are accumulated in float64 over batches with the parallel (Chan et al.) update of
mean and co-moment, so 50 000 feature vectors never sit in memory at once, and accumulators from
different processes or hosts merge exactly.
"""

from __future__ import annotations

import numpy as np

__all__ = ["distance", "statistics", "RunningStatistics", "sqrtm_psd"]


def _as_matrix(x, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} contains non-finite values (NaN or inf)")
    return x


def _check_gaussian(mu, cov, name: str) -> tuple[np.ndarray, np.ndarray]:
    mu = np.asarray(mu, dtype=np.float64)
    if mu.ndim != 1:
        raise ValueError(f"mu{name} must be a 1-D vector of feature means, got shape {mu.shape}")
    cov = _as_matrix(cov, f"cov{name}")
    d = mu.shape[0]
    if cov.shape != (d, d):
        raise ValueError(f"cov{name} must have shape ({d}, {d}) to match mu{name} of shape ({d},), "
                         f"got {cov.shape}")
    if not np.all(np.isfinite(mu)):
        raise ValueError(f"mu{name} contains non-finite values (NaN or inf)")
    return mu, 0.5 * (cov + cov.T)


def sqrtm_psd(cov) -> np.ndarray:
    """The symmetric square root of a symmetric positive semi-definite matrix (eigh, λ clipped at 0)."""
    cov = _as_matrix(cov, "cov")
    w, v = np.linalg.eigh(0.5 * (cov + cov.T))
    return (v * np.sqrt(np.maximum(w, 0.0))) @ v.T


def distance(mu1, cov1, mu2, cov2) -> float:
    """Fréchet distance between N(mu1, cov1) and N(mu2, cov2), in float64.

    Args:
      mu1, mu2: feature means, shape [D].
      cov1, cov2: feature covariances, shape [D, D] (symmetric PSD; may be singular).
    Returns:
      ‖μ1 − μ2‖² + tr(Σ1) + tr(Σ2) − 2 Σ sqrt(max(eig(A Σ2 A), 0)), A = Σ1^{1/2}, as a float.
    """
    mu1, cov1 = _check_gaussian(mu1, cov1, "1")
    mu2, cov2 = _check_gaussian(mu2, cov2, "2")
    if mu1.shape != mu2.shape:
        raise ValueError(f"the two Gaussians have different feature dimensions: "
                         f"mu1 {mu1.shape} vs mu2 {mu2.shape}")
    a = sqrtm_psd(cov1)
    m = a @ cov2 @ a
    eig = np.linalg.eigvalsh(0.5 * (m + m.T))
    tr_sqrt = float(np.sum(np.sqrt(np.maximum(eig, 0.0))))
    diff = mu1 - mu2
    d2 = float(diff @ diff) + float(np.trace(cov1)) + float(np.trace(cov2)) - 2.0 * tr_sqrt
    # The exact value is >= 0 for PSD inputs; what is left below 0 is rounding.
    return max(d2, 0.0)


class RunningStatistics:
    """Streaming float64 mean and covariance of feature vectors.

    Keeps the count n, the mean and the co-moment M2 = Σ (x − mean)(x − mean)ᵀ; a batch is
    folded in (and two accumulators are merged) with the pairwise update of Chan, Golub & LeVeque:
        δ = mean_b − mean_a,  n = n_a + n_b,
        mean = mean_a + δ n_b / n,  M2 = M2_a + M2_b + δ δᵀ n_a n_b / n,
    which does not lose precision to cancellation the way raw sums of x xᵀ can.
    `to_arrays`/`from_arrays` move the state between processes (e.g. gathered over hosts).
    """

    def __init__(self, dim: int | None = None):
        self.dim = dim
        self.count = 0
        self.mean = None if dim is None else np.zeros(dim, np.float64)
        self.m2 = None if dim is None else np.zeros((dim, dim), np.float64)

    def _fold(self, count: int, mean: np.ndarray, m2: np.ndarray) -> None:
        if count == 0:
            return
        if self.count == 0:
            self.dim, self.count, self.mean, self.m2 = mean.shape[0], count, mean.copy(), m2.copy()
            return
        if mean.shape[0] != self.dim:
            raise ValueError(f"feature dimension {mean.shape[0]} does not match the accumulator's {self.dim}")
        n = self.count + count
        delta = mean - self.mean
        self.mean = self.mean + delta * (count / n)
        self.m2 = self.m2 + m2 + np.outer(delta, delta) * (self.count * count / n)
        self.count = n

    def update(self, features) -> "RunningStatistics":
        """Adds a batch of feature vectors, shape [N, D] (any float dtype; accumulated in float64)."""
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2:
            raise ValueError(f"features must have shape [N, D], got {x.shape}")
        if self.dim is not None and x.shape[1] != self.dim:
            raise ValueError(f"features have dimension {x.shape[1]}, the accumulator holds {self.dim}")
        if not np.all(np.isfinite(x)):
            raise ValueError("features contain non-finite values (NaN or inf)")
        if x.shape[0] == 0:
            return self
        mean = x.mean(axis=0)
        xc = x - mean
        self._fold(x.shape[0], mean, xc.T @ xc)
        return self

    def merge(self, other: "RunningStatistics") -> "RunningStatistics":
        """Folds another accumulator (e.g. another process's) into this one; returns self."""
        if not isinstance(other, RunningStatistics):
            raise TypeError(f"can only merge a RunningStatistics, got {type(other).__name__}")
        if other.count:
            self._fold(other.count, other.mean, other.m2)
        return self

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(mean [D], unbiased covariance [D, D]) in float64, as numpy's mean and cov (ddof=1)."""
        if self.count < 2:
            raise ValueError(f"a covariance needs at least 2 feature vectors, got {self.count}")
        return self.mean.copy(), self.m2 / (self.count - 1)

    def to_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(count [], mean [D], m2 [D, D]) as float64 arrays, to send to another process."""
        if self.count == 0:
            raise ValueError("the accumulator is empty")
        return np.float64(self.count), self.mean.copy(), self.m2.copy()

    @classmethod
    def from_arrays(cls, count, mean, m2) -> "RunningStatistics":
        """Rebuilds an accumulator from `to_arrays` output."""
        mean = np.asarray(mean, np.float64)
        m2 = np.asarray(m2, np.float64)
        if mean.ndim != 1 or m2.shape != (mean.shape[0], mean.shape[0]):
            raise ValueError(f"inconsistent shapes: mean {mean.shape}, m2 {m2.shape}")
        n = int(round(float(count)))
        if n < 1:
            raise ValueError(f"count must be positive, got {count}")
        acc = cls(mean.shape[0])
        acc._fold(n, mean, m2)
        return acc


def statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """(mean, covariance) of features [N, D] in float64, covariance with ddof=1 like np.cov."""
    x = np.asarray(features)
    if x.ndim != 2:
        raise ValueError(f"features must have shape [N, D], got {x.shape}")
    return RunningStatistics(x.shape[1]).update(x).result()
