"""Fréchet distance and streaming feature statistics (SPEC §7)."""

import numpy as np
import pytest
import scipy.linalg

from evaluation import frechet


def _random_cov(rng, d, n=None):
    n = n or 3 * d
    x = rng.standard_normal((n, d)) @ rng.standard_normal((d, d))
    return np.cov(x, rowvar=False)


def test_diagonal_closed_form():
    rng = np.random.default_rng(0)
    d = 32
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    a, b = rng.uniform(0.1, 5.0, d), rng.uniform(0.1, 5.0, d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    got = frechet.distance(mu1, np.diag(a), mu2, np.diag(b))
    assert isinstance(got, float)
    assert got == pytest.approx(expected, rel=1e-10)


def test_singular_diagonal_closed_form():
    # Zero variances in either Gaussian: (Σ1 Σ2)^{1/2} is singular, the formula still holds.
    a = np.array([1.0, 0.0, 4.0, 0.0, 2.0])
    b = np.array([0.0, 0.0, 9.0, 1.0, 2.0])
    mu1, mu2 = np.zeros(5), np.arange(5.0)
    expected = np.sum(mu2**2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet.distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10)


def test_matches_scipy_sqrtm_on_full_covariances():
    rng = np.random.default_rng(1)
    for d in (3, 17, 64):
        mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
        c1, c2 = _random_cov(rng, d), _random_cov(rng, d)
        covmean = scipy.linalg.sqrtm(c1 @ c2)
        expected = np.sum((mu1 - mu2) ** 2) + np.trace(c1) + np.trace(c2) - 2 * np.trace(covmean).real
        assert frechet.distance(mu1, c1, mu2, c2) == pytest.approx(expected, rel=1e-7, abs=1e-8)


def test_translation_gives_squared_shift():
    rng = np.random.default_rng(2)
    c = _random_cov(rng, 10)
    mu, shift = rng.standard_normal(10), rng.standard_normal(10)
    assert frechet.distance(mu + shift, c, mu, c) == pytest.approx(shift @ shift, rel=1e-7)


def test_identical_sets_give_zero():
    rng = np.random.default_rng(3)
    feats = rng.standard_normal((500, 48)) * 3 + 1
    mu, cov = frechet.statistics(feats)
    assert abs(frechet.distance(mu, cov, mu, cov)) < 1e-8 * np.trace(cov)


def test_rank_deficient_sets_are_finite_and_non_negative():
    rng = np.random.default_rng(4)
    d = 64
    a = rng.standard_normal((10, d))          # 10 samples in 64 dims: rank 9
    b = rng.standard_normal((12, d)) + 0.5
    sa, sb = frechet.statistics(a), frechet.statistics(b)
    assert np.linalg.matrix_rank(sa[1]) < d
    for s1, s2 in ((sa, sb), (sb, sa), (sa, sa)):
        value = frechet.distance(*s1, *s2)
        assert np.isfinite(value) and value >= 0.0
    assert frechet.distance(*sa, *sa) < 1e-8 * np.trace(sa[1])
    # Symmetric in its two arguments even when both covariances are singular.
    assert frechet.distance(*sa, *sb) == pytest.approx(frechet.distance(*sb, *sa), rel=1e-8)
    # And clearly positive between different sets.
    assert frechet.distance(*sa, *sb) > 1.0


def test_statistics_equal_numpy():
    rng = np.random.default_rng(5)
    feats = rng.standard_normal((300, 20)).astype(np.float32)
    mu, cov = frechet.statistics(feats)
    assert mu.dtype == np.float64 and cov.dtype == np.float64
    np.testing.assert_allclose(mu, feats.astype(np.float64).mean(0), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(cov, np.cov(feats.astype(np.float64), rowvar=False), rtol=1e-10, atol=1e-13)


def test_streaming_and_merged_statistics_equal_one_shot():
    rng = np.random.default_rng(6)
    d = 24
    # A large common offset: the parallel update must not lose the small spread to cancellation.
    feats = (1000.0 + rng.standard_normal((1003, d)) * np.linspace(0.1, 3, d)).astype(np.float32)
    ref = feats.astype(np.float64)
    ref_mu, ref_cov = ref.mean(0), np.cov(ref, rowvar=False)

    acc = frechet.RunningStatistics(d)
    sizes = [1, 7, 64, 0, 300, 1, 130]
    bounds = np.cumsum([0] + sizes + [len(feats) - sum(sizes)])
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        acc.update(feats[lo:hi])
    assert acc.count == len(feats)
    mu, cov = acc.result()
    np.testing.assert_allclose(mu, ref_mu, rtol=1e-12)
    np.testing.assert_allclose(cov, ref_cov, rtol=1e-9, atol=1e-12)

    # Accumulators of disjoint shards (e.g. one per host), one of them empty, merged.
    parts = [frechet.RunningStatistics() for _ in range(4)]
    for i, chunk in enumerate(np.array_split(feats, 3)):
        for sub in np.array_split(chunk, 5):
            parts[i].update(sub)
    merged = frechet.RunningStatistics()
    for p in parts:
        merged.merge(p)
    np.testing.assert_allclose(merged.result()[0], ref_mu, rtol=1e-12)
    np.testing.assert_allclose(merged.result()[1], ref_cov, rtol=1e-9, atol=1e-12)

    # Shipped between processes as arrays and rebuilt.
    rebuilt = frechet.RunningStatistics.from_arrays(*parts[0].to_arrays())
    rebuilt.merge(frechet.RunningStatistics.from_arrays(*parts[1].to_arrays())).merge(parts[2])
    np.testing.assert_allclose(rebuilt.result()[1], ref_cov, rtol=1e-9, atol=1e-12)
    assert frechet.distance(*merged.result(), ref_mu, ref_cov) < 1e-9


def test_shape_errors_are_clear():
    mu, cov = np.zeros(4), np.eye(4)
    with pytest.raises(ValueError, match="different feature dimensions"):
        frechet.distance(mu, cov, np.zeros(5), np.eye(5))
    with pytest.raises(ValueError, match=r"cov1 must have shape \(4, 4\)"):
        frechet.distance(mu, np.eye(3), mu, cov)
    with pytest.raises(ValueError, match="mu2 must be a 1-D"):
        frechet.distance(mu, cov, np.zeros((4, 1)), cov)
    with pytest.raises(ValueError, match="non-finite"):
        frechet.distance(mu, cov, mu, np.full((4, 4), np.nan))
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        frechet.statistics(np.zeros(7))
    with pytest.raises(ValueError, match="at least 2"):
        frechet.statistics(np.zeros((1, 3)))
    acc = frechet.RunningStatistics(3)
    with pytest.raises(ValueError, match="dimension 4"):
        acc.update(np.zeros((2, 4)))
    acc.update(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="does not match"):
        acc.merge(frechet.RunningStatistics().update(np.ones((2, 5))))
