"""Tests for ccfv.scores.metrics.gaussian: W2 (eq. 1), KL and Bhattacharyya against slow references, the
batched W2 matrix, its chunking and the torch backend."""
from __future__ import annotations

import math

import numpy as np
import pytest

import ccfv.scores.metrics.gaussian as gaussian_module
from ccfv.scores.metrics.ccfv import ccfv_score, class_consistency
from ccfv.scores.metrics.gaussian import bhattacharyya_gaussian, gaussian_w2, gaussian_w2_matrix, kl_gaussian

from .references import RTOL, nuclear_w2, random_cases, random_layers, slow_bhattacharyya, slow_kl, slow_w2, whitened

# --------------------------------------------------------------------------------------------------
# gaussian_w2 (eq. 1)
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n, m, d", [(40, 30, 4), (25, 60, 7), (10, 10, 1)])
def test_w2_matches_sqrtm_reference(rng, n, m, d):
    a = rng.normal(size=(n, d)) @ rng.normal(size=(d, d))
    b = rng.normal(loc=0.7, size=(m, d)) @ rng.normal(size=(d, d))
    assert gaussian_w2(a, b) == pytest.approx(slow_w2(a, b), rel=RTOL)


@pytest.mark.parametrize("n, m, d", [(5, 7, 20), (3, 3, 50), (12, 40, 12)])
def test_w2_rank_deficient_matches_nuclear_norm_reference(rng, n, m, d):
    a = rng.normal(size=(n, d))
    b = rng.normal(loc=0.3, size=(m, d))
    assert gaussian_w2(a, b) == pytest.approx(nuclear_w2(a, b), rel=1e-10)


@pytest.mark.parametrize("n, d", [(30, 5), (4, 16), (8, 1)])
def test_w2_self_is_zero_and_symmetric(rng, n, d):
    a = rng.normal(size=(n, d))
    b = rng.normal(loc=1.0, scale=2.0, size=(n + 3, d))
    scale = math.sqrt(np.trace(np.atleast_2d(np.cov(a.T))))
    assert gaussian_w2(a, a) <= 1e-6 * scale
    assert gaussian_w2(a, b) == pytest.approx(gaussian_w2(b, a), rel=1e-12)
    assert gaussian_w2(a, b) > 0.1


def test_w2_translation_invariance_and_homogeneity(rng):
    a = rng.normal(size=(20, 3))
    b = rng.normal(loc=0.5, size=(25, 3))
    shift = rng.normal(size=3)
    assert gaussian_w2(a + shift, b + shift) == pytest.approx(gaussian_w2(a, b), rel=1e-9)
    assert gaussian_w2(3.0 * a, 3.0 * b) == pytest.approx(3.0 * gaussian_w2(a, b), rel=1e-9)


def test_w2_identity_covariances_equals_distance_of_means(rng):
    d = 6
    mu_a, mu_b = rng.normal(size=d), rng.normal(size=d)
    a = whitened(rng, 40, d) + mu_a
    b = whitened(rng, 55, d) + mu_b
    assert gaussian_w2(a, b) == pytest.approx(np.linalg.norm(mu_a - mu_b), rel=1e-9)


def test_w2_one_dimensional_closed_form(rng):
    a = rng.normal(1.0, 2.0, size=(30, 1))
    b = rng.normal(-1.0, 0.5, size=(17, 1))
    expected = math.hypot(a.mean() - b.mean(), a.std(ddof=1) - b.std(ddof=1))
    assert gaussian_w2(a, b) == pytest.approx(expected, rel=1e-9)


def test_w2_rejects_bad_inputs(rng):
    with pytest.raises(ValueError, match="at least 2"):
        gaussian_w2(rng.normal(size=(1, 3)), rng.normal(size=(5, 3)))
    with pytest.raises(ValueError, match="at least 2"):
        gaussian_w2(rng.normal(size=(5, 3)), rng.normal(size=(1, 3)))
    with pytest.raises(ValueError, match="2-D"):
        gaussian_w2(rng.normal(size=5), rng.normal(size=5))
    with pytest.raises(ValueError, match="dimensions"):
        gaussian_w2(rng.normal(size=(5, 3)), rng.normal(size=(5, 4)))
    with pytest.raises(ValueError, match="NaN"):
        gaussian_w2(np.full((3, 2), np.nan), rng.normal(size=(5, 2)))


# --------------------------------------------------------------------------------------------------
# kl_gaussian and bhattacharyya_gaussian (Table 2 ablation)
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n, m, d", [(40, 30, 4), (20, 25, 1)])
def test_kl_and_bhattacharyya_match_explicit_formulas(rng, n, m, d):
    a = rng.normal(size=(n, d)) @ rng.normal(size=(d, d))
    b = rng.normal(loc=0.4, size=(m, d)) @ rng.normal(size=(d, d))
    assert kl_gaussian(a, b) == pytest.approx(slow_kl(a, b), rel=RTOL)
    assert kl_gaussian(b, a) == pytest.approx(slow_kl(b, a), rel=RTOL)
    assert bhattacharyya_gaussian(a, b) == pytest.approx(slow_bhattacharyya(a, b), rel=RTOL)


def test_kl_one_dimensional_closed_form_and_direction(rng):
    a = rng.normal(0.5, 1.0, size=(40, 1))
    b = rng.normal(-0.5, 3.0, size=(40, 1))
    mu0, var0 = a.mean(), a.var(ddof=1)
    mu1, var1 = b.mean(), b.var(ddof=1)
    kl_ab = 0.5 * math.log(var1 / var0) + (var0 + (mu0 - mu1) ** 2) / (2 * var1) - 0.5
    kl_ba = 0.5 * math.log(var0 / var1) + (var1 + (mu0 - mu1) ** 2) / (2 * var0) - 0.5
    assert kl_gaussian(a, b) == pytest.approx(kl_ab, rel=1e-5)
    assert kl_gaussian(b, a) == pytest.approx(kl_ba, rel=1e-5)
    assert abs(kl_ab - kl_ba) > 0.5  # the direction is actually tested


def test_bhattacharyya_one_dimensional_closed_form(rng):
    a = rng.normal(0.5, 1.0, size=(40, 1))
    b = rng.normal(-0.5, 3.0, size=(35, 1))
    mu0, var0 = a.mean(), a.var(ddof=1)
    mu1, var1 = b.mean(), b.var(ddof=1)
    expected = (mu0 - mu1) ** 2 / (4 * (var0 + var1)) + 0.5 * math.log(
        (var0 + var1) / (2 * math.sqrt(var0 * var1))
    )
    assert bhattacharyya_gaussian(a, b) == pytest.approx(expected, rel=1e-5)


def test_kl_and_bhattacharyya_properties(rng):
    a = rng.normal(size=(30, 5))
    b = rng.normal(loc=0.5, size=(20, 5))
    assert abs(kl_gaussian(a, a)) < 1e-10
    assert abs(bhattacharyya_gaussian(a, a)) < 1e-10
    assert kl_gaussian(a, b) > 0
    assert bhattacharyya_gaussian(a, b) == pytest.approx(bhattacharyya_gaussian(b, a), rel=1e-10)


def test_kl_and_bhattacharyya_finite_for_rank_deficient_covariance(rng):
    a = rng.normal(size=(4, 10))
    b = rng.normal(size=(5, 10))
    assert np.isfinite(kl_gaussian(a, b))
    assert np.isfinite(bhattacharyya_gaussian(a, b))
    with pytest.raises(ValueError, match="at least 2"):
        kl_gaussian(a[:1], b)


# --------------------------------------------------------------------------------------------------
# Batched W2: gaussian_w2_matrix, backends, chunking, robustness of class_consistency
# --------------------------------------------------------------------------------------------------


def test_w2_matrix_matches_pairwise_sqrtm_reference(rng):
    sets = [rng.normal(loc=0.2 * i, size=(15 + i, 4)) @ rng.normal(size=(4, 4)) for i in range(6)]
    matrix = gaussian_w2_matrix(sets)
    assert matrix.shape == (6, 6)
    assert np.all(np.diag(matrix) == 0.0)
    for i in range(6):
        for j in range(6):
            if i != j:
                assert matrix[i, j] == pytest.approx(slow_w2(sets[i], sets[j]), rel=1e-9)


@pytest.mark.parametrize("sizes", [(3, 8, 5, 12), (2, 2, 3)])
def test_w2_matrix_rank_deficient_mixed_ranks_match_nuclear_norm(rng, sizes):
    # n < d = 10 for most sets, with different ranks in one batch.
    sets = [rng.normal(loc=0.1 * i, size=(n, 10)) for i, n in enumerate(sizes)]
    matrix = gaussian_w2_matrix(sets)
    for i in range(len(sets)):
        for j in range(i + 1, len(sets)):
            assert matrix[i, j] == pytest.approx(nuclear_w2(sets[i], sets[j]), rel=1e-10)


def test_w2_accurate_for_ill_conditioned_covariances(rng):
    # Channel scales spanning 1 .. 1e-6 in random orientations: covariance condition ~1e12. An
    # eigensolver on the symmetric product S_a^{1/2} S_b S_a^{1/2} resolves the small eigenvalues
    # only to ~sqrt(eps) and was off by ~3e-8 here; QR + singular values are not.
    d = 30

    def ill(n, loc):
        rotation = np.linalg.qr(rng.normal(size=(d, d)))[0]
        return rng.normal(size=(n, d)) * np.logspace(0, -6, d) @ rotation.T + loc

    sets = [ill(200, 0.0), ill(150, 0.01), ill(90, -0.01)]
    matrix = gaussian_w2_matrix(sets)
    for i in range(3):
        for j in range(i + 1, 3):
            expected = nuclear_w2(sets[i], sets[j])
            assert matrix[i, j] == pytest.approx(expected, rel=1e-12)
            assert gaussian_w2(sets[i], sets[j]) == pytest.approx(expected, rel=1e-12)


def test_w2_matrix_chunking_does_not_change_the_result(rng, monkeypatch):
    pytest.importorskip("torch")
    sets = [rng.normal(size=(9, 5)) * (1 + 0.1 * i) for i in range(7)]
    expected = gaussian_w2_matrix(sets)
    monkeypatch.setattr(gaussian_module, "_W2_CHUNK_BYTES_CPU", 1)  # one pair per batch
    np.testing.assert_allclose(gaussian_w2_matrix(sets), expected, rtol=1e-12, atol=0)
    np.testing.assert_allclose(
        gaussian_w2_matrix(sets, backend="torch", device="cpu"), expected, rtol=1e-10, atol=1e-14
    )


def test_torch_backend_matches_numpy(rng):
    pytest.importorskip("torch")
    cases = random_cases(rng, n_cases=5, classes=(1, 2), d=6)
    cases[2].pop(2)  # class 2 absent from one case
    cases[3][1] = rng.normal(size=(4, 6))  # rank-deficient
    expected = class_consistency(cases)
    assert class_consistency(cases, backend="torch", device="cpu") == pytest.approx(
        expected, rel=1e-10
    )
    assert class_consistency(cases, backend="torch") == pytest.approx(expected, rel=1e-10)
    layers = random_layers(rng, n_layers=2)
    assert ccfv_score(layers, backend="torch", device="cpu") == pytest.approx(
        ccfv_score(layers), rel=1e-10
    )


def test_backend_argument_errors(rng):
    cases = random_cases(rng, 3, (1,), 2)
    with pytest.raises(ValueError, match="backend"):
        class_consistency(cases, backend="jax")
    with pytest.raises(ValueError, match="device"):
        class_consistency(cases, device="cpu")
    with pytest.raises(ValueError, match="w2"):
        class_consistency(cases, distance="kl", backend="torch")
    with pytest.raises(ValueError, match="at least one"):
        gaussian_w2_matrix([])
    with pytest.raises(ValueError, match="dimensions"):
        gaussian_w2_matrix([rng.normal(size=(4, 2)), rng.normal(size=(4, 3))])
