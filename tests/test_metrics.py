"""Tests for ccfv.metrics: each fast function against a slow, obviously-correct reference written
here (explicit loops, scipy.linalg.sqrtm, explicit inverses and determinants), plus properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg

import ccfv.scores.metrics.gaussian as gaussian_module
from ccfv.scores.metrics.baselines import GBC_VARIANCE_FLOOR, gbc, hscore, leep, nce, transrate
from ccfv.scores.metrics.ccfv import HSE_DISTANCE_FLOOR, ccfv_score, class_consistency, feature_variety, hyperspherical_energy
from ccfv.scores.metrics.gaussian import RIDGE_EPS, bhattacharyya_gaussian, gaussian_w2, gaussian_w2_matrix, kl_gaussian
from ccfv.scores.metrics.released import ccfv_score_released, class_consistency_released, feature_variety_released, gaussian_w2_released
from ccfv.scores.metrics.logme import logme

RTOL = 1e-6


@pytest.fixture
def rng():
    return np.random.default_rng(20230613)


# --------------------------------------------------------------------------------------------------
# Slow references
# --------------------------------------------------------------------------------------------------


def slow_moments(x):
    """Mean and ddof=1 covariance with explicit loops."""
    x = np.asarray(x, dtype=np.float64)
    n, d = x.shape
    mean = np.array([sum(x[r, c] for r in range(n)) / n for c in range(d)])
    cov = np.zeros((d, d))
    for r in range(n):
        diff = x[r] - mean
        cov += np.outer(diff, diff)
    return mean, cov / (n - 1)


def slow_w2(a, b):
    """Equation 1 with the product-matrix square root computed by scipy.linalg.sqrtm."""
    mu_a, cov_a = slow_moments(a)
    mu_b, cov_b = slow_moments(b)
    cross = np.real(scipy.linalg.sqrtm(cov_a @ cov_b))
    squared = np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(cross)
    return math.sqrt(max(squared, 0.0))


def nuclear_w2(a, b):
    """Equation 1 for rank-deficient sample covariances: with centred data A, B,
    Tr((S_a S_b)^{1/2}) = ||A B^T||_* / sqrt((n-1)(m-1)) (nonzero eigenvalues of S_a S_b are the
    squared singular values of A B^T / sqrt((n-1)(m-1)))."""
    mu_a, cov_a = slow_moments(a)
    mu_b, cov_b = slow_moments(b)
    centred_a, centred_b = a - mu_a, b - mu_b
    nuclear = np.linalg.svd(centred_a @ centred_b.T, compute_uv=False).sum()
    cross = nuclear / math.sqrt((len(a) - 1) * (len(b) - 1))
    squared = np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2 * cross
    return math.sqrt(max(squared, 0.0))


def slow_ridge(cov_a, cov_b):
    d = cov_a.shape[0]
    scale = (np.trace(cov_a) + np.trace(cov_b)) / (2 * d)
    return RIDGE_EPS * (scale if scale > 0 else 1.0) * np.eye(d)


def slow_kl(a, b):
    mu_a, cov_a = slow_moments(a)
    mu_b, cov_b = slow_moments(b)
    ridge = slow_ridge(cov_a, cov_b)
    cov_a, cov_b = cov_a + ridge, cov_b + ridge
    inv_b = np.linalg.inv(cov_b)
    diff = mu_b - mu_a
    return 0.5 * (
        np.trace(inv_b @ cov_a)
        + diff @ inv_b @ diff
        - len(mu_a)
        + math.log(np.linalg.det(cov_b) / np.linalg.det(cov_a))
    )


def slow_bhattacharyya(a, b):
    mu_a, cov_a = slow_moments(a)
    mu_b, cov_b = slow_moments(b)
    ridge = slow_ridge(cov_a, cov_b)
    cov_a, cov_b = cov_a + ridge, cov_b + ridge
    cov = (cov_a + cov_b) / 2
    diff = mu_a - mu_b
    return diff @ np.linalg.inv(cov) @ diff / 8 + 0.5 * math.log(
        np.linalg.det(cov) / math.sqrt(np.linalg.det(cov_a) * np.linalg.det(cov_b))
    )


def slow_hse(v, s):
    """Equation 3 with a double loop over ordered pairs."""
    total = 0.0
    for i in range(len(v)):
        for j in range(len(v)):
            if i == j:
                continue
            dist = max(float(np.linalg.norm(v[i] - v[j])), HSE_DISTANCE_FLOOR)
            total += math.log(1 / dist) if s == 0 else dist ** (-s)
    return total


def slow_feature_variety(cases_global, s=1):
    """Equation 4."""
    return sum(1 / slow_hse(v, s) for v in cases_global) / len(cases_global)


SLOW_DISTANCES = {"w2": slow_w2, "kl": slow_kl, "bhattacharyya": slow_bhattacharyya}


def slow_class_consistency_eq2(cases, distance="w2"):
    """Equation 2 literally: 1/(N(N-1)) sum_k sum_{i != j}; every case must hold every class."""
    dist = SLOW_DISTANCES[distance]
    n = len(cases)
    total = 0.0
    for k in cases[0]:
        for i in range(n):
            for j in range(n):
                if i != j:
                    total += dist(cases[i][k], cases[j][k])
    return total / (n * (n - 1))


def slow_ccfv(layers, distance="w2"):
    """Equation 5."""
    terms = []
    for layer in layers:
        fv = slow_feature_variety(layer["global"])
        cc = slow_class_consistency_eq2(layer["cases"], distance)
        terms.append(math.log(fv / cc))
    return sum(terms) / len(terms)


def slow_logme(features, labels):
    """LogME from the paper's equations with explicit d x d matrices.

    A = alpha I + beta F^T F, m = beta A^{-1} F^T y, gamma = sum_i beta s_i / (alpha + beta s_i)
    over all d eigenvalues s_i of F^T F; the authors' updates alpha = gamma / (m^T m + 1e-5),
    beta = (n - gamma) / (||F m - y||^2 + 1e-5) and stopping rule (11 steps, 0.1 % change of
    alpha/beta); then the explicit evidence
    n/2 ln beta + d/2 ln alpha - n/2 ln 2pi - beta/2 ||Fm - y||^2 - alpha/2 m^T m - 1/2 ln det A.
    """
    f = np.asarray(features, dtype=np.float64)
    n, d = f.shape
    gram = f.T @ f
    eig = np.clip(np.linalg.eigvalsh(gram), 0, None)
    evidences = []
    for c in sorted(set(labels.tolist())):
        y = (labels == c).astype(np.float64)
        alpha, beta = 1.0, 1.0
        for _ in range(11):
            a_mat = alpha * np.eye(d) + beta * gram
            m = beta * np.linalg.inv(a_mat) @ f.T @ y
            gamma = sum(beta * e / (alpha + beta * e) for e in eig)
            m2 = float(m @ m)
            res2 = float(np.sum((f @ m - y) ** 2))
            old_ratio = alpha / beta
            alpha = gamma / (m2 + 1e-5)
            beta = (n - gamma) / (res2 + 1e-5)
            if abs(alpha / beta - old_ratio) / old_ratio <= 1e-3:
                break
        logdet = np.linalg.slogdet(alpha * np.eye(d) + beta * gram)[1]
        evidence = (
            n / 2 * math.log(beta)
            + d / 2 * math.log(alpha)
            - n / 2 * math.log(2 * math.pi)
            - beta / 2 * res2
            - alpha / 2 * m2
            - logdet / 2
        )
        evidences.append(evidence / n)
    return float(np.mean(evidences))


# --------------------------------------------------------------------------------------------------
# Data helpers
# --------------------------------------------------------------------------------------------------


def whitened(rng, n, d):
    """n samples in d dims with sample mean exactly 0 and ddof=1 sample covariance exactly I."""
    z = rng.normal(size=(n, d))
    z -= z.mean(axis=0)
    chol = np.linalg.cholesky(z.T @ z / (n - 1))
    return np.linalg.solve(chol, z.T).T


def random_cases(rng, n_cases, classes, d, n_samples=12, spread=1.0):
    return [
        {
            k: rng.normal(loc=0.5 * k, scale=1.0 + 0.1 * i, size=(n_samples, d)) * spread
            for k in classes
        }
        for i in range(n_cases)
    ]


def random_layers(rng, n_layers=3):
    layers = []
    for layer in range(n_layers):
        d = 3 + layer
        layers.append(
            {
                "cases": random_cases(rng, 4, classes=(1, 2), d=d),
                "global": [rng.normal(size=(10, d)) for _ in range(4)],
            }
        )
    return layers


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
# hyperspherical_energy (eq. 3)
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("s", [1, 2, 0.5, 0])
def test_hse_matches_loop_reference(rng, s):
    v = rng.normal(size=(25, 6))
    assert hyperspherical_energy(v, s) == pytest.approx(slow_hse(v, s), rel=RTOL)


def test_hse_hand_computed_and_log_form():
    two_points = np.array([[0.0, 0.0], [2.0, 0.0]])
    assert hyperspherical_energy(two_points, 1) == pytest.approx(1.0)  # 2 ordered pairs * 1/2
    assert hyperspherical_energy(two_points, 2) == pytest.approx(0.5)
    assert hyperspherical_energy(two_points, 0) == pytest.approx(-2 * math.log(2.0))
    triangle = np.array([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]])  # sides 3, 4, 5
    assert hyperspherical_energy(triangle, 0) == pytest.approx(-2 * math.log(60.0))
    assert hyperspherical_energy(triangle, 1) == pytest.approx(2 * (1 / 3 + 1 / 4 + 1 / 5))


def test_hse_is_invariant_to_row_permutation(rng):
    v = rng.normal(size=(30, 4))
    perm = rng.permutation(30)
    assert hyperspherical_energy(v[perm]) == pytest.approx(hyperspherical_energy(v), rel=1e-12)


def test_hse_lower_for_dispersed_points(rng):
    v = rng.normal(size=(30, 4))
    assert hyperspherical_energy(2.0 * v) == pytest.approx(hyperspherical_energy(v) / 2, rel=1e-12)


def test_hse_coincident_points_are_finite():
    v = np.array([[1.0, 1.0], [1.0, 1.0], [2.0, 1.0]])
    energy = hyperspherical_energy(v, 1)
    assert np.isfinite(energy)
    assert energy == pytest.approx(2 * (1 / HSE_DISTANCE_FLOOR + 1 + 1))


def test_hse_rejects_bad_inputs(rng):
    with pytest.raises(ValueError, match="s >= 0"):
        hyperspherical_energy(rng.normal(size=(5, 2)), -1)
    with pytest.raises(ValueError, match="at least 2"):
        hyperspherical_energy(rng.normal(size=(1, 2)))


# --------------------------------------------------------------------------------------------------
# feature_variety (eq. 4)
# --------------------------------------------------------------------------------------------------


def test_feature_variety_matches_loop_reference(rng):
    cases_global = [rng.normal(size=(L, 5)) for L in (8, 12, 20)]
    assert feature_variety(cases_global) == pytest.approx(
        slow_feature_variety(cases_global), rel=RTOL
    )
    assert feature_variety(cases_global, 2) == pytest.approx(
        slow_feature_variety(cases_global, 2), rel=RTOL
    )


def test_feature_variety_hand_computed():
    near = np.array([[0.0], [2.0]])  # E_1 = 1
    far = np.array([[0.0], [4.0]])  # E_1 = 1/2
    assert feature_variety([near, far]) == pytest.approx((1.0 + 2.0) / 2)


def test_feature_variety_higher_when_features_spread(rng):
    cases_global = [rng.normal(size=(10, 3)) for _ in range(3)]
    spread = [3.0 * v for v in cases_global]
    assert feature_variety(spread) == pytest.approx(3.0 * feature_variety(cases_global), rel=1e-12)


def test_feature_variety_rejects_empty():
    with pytest.raises(ValueError, match="at least one case"):
        feature_variety([])


# --------------------------------------------------------------------------------------------------
# class_consistency (eq. 2)
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("distance", ["w2", "kl", "bhattacharyya"])
def test_class_consistency_matches_equation_2_when_all_classes_present(rng, distance):
    cases = random_cases(rng, n_cases=4, classes=(1, 2, 3), d=3)
    assert class_consistency(cases, distance=distance) == pytest.approx(
        slow_class_consistency_eq2(cases, distance), rel=RTOL
    )


def test_class_consistency_default_is_w2(rng):
    cases = random_cases(rng, n_cases=3, classes=(1,), d=2)
    assert class_consistency(cases) == class_consistency(cases, distance="w2")


def test_class_consistency_skips_missing_classes_with_per_class_normaliser():
    # One-dimensional sets [mu - h, mu + h] have mean mu and ddof=1 std h * sqrt(2); in 1-D,
    # W2 = sqrt((mu_a - mu_b)^2 + (std_a - std_b)^2).
    def col(*values):
        return np.array(values, dtype=float)[:, None]

    cases = [
        {1: col(0, 2), 2: col(10, 12), 3: col(5.0)},  # class 3: one sample, invalid
        {1: col(3, 5), 2: col(10, 14)},  # class 3 absent
        {1: col(0, 4), 3: col(1, 2, 3)},  # class 2 absent
    ]
    # class 1: W2(0,1) = 3, W2(0,2) = sqrt(1 + 2), W2(1,2) = sqrt(4 + 2); 6 ordered pairs
    class_1 = (3 + math.sqrt(3) + math.sqrt(6)) / 3
    # class 2: only cases 0 and 1 are valid: W2 = sqrt(1 + 2); 2 ordered pairs
    class_2 = math.sqrt(3)
    # class 3: only case 2 is valid -> no pair -> contributes nothing
    assert class_consistency(cases) == pytest.approx(class_1 + class_2, rel=1e-9)
    # the literal 1/(N(N-1)) normaliser would give this different number instead
    naive = (2 * (3 + math.sqrt(3) + math.sqrt(6)) + 2 * math.sqrt(3)) / 6
    assert abs(class_consistency(cases) - naive) > 0.5


def test_class_consistency_lower_for_consistent_features(rng):
    base = rng.normal(size=(15, 3))
    consistent = [{1: base + 0.01 * rng.normal(size=base.shape)} for _ in range(4)]
    inconsistent = [{1: base * (1 + i) + i} for i in range(4)]
    assert class_consistency(consistent) < class_consistency(inconsistent)


def test_class_consistency_errors(rng):
    with pytest.raises(ValueError, match="no valid pair"):
        class_consistency([{1: rng.normal(size=(5, 2))}, {2: rng.normal(size=(5, 2))}])
    with pytest.raises(ValueError, match="no valid pair"):
        class_consistency([{1: rng.normal(size=(5, 2))}])
    with pytest.raises(ValueError, match="distance"):
        class_consistency(random_cases(rng, 2, (1,), 2), distance="euclid")
    with pytest.raises(ValueError, match="dimensions"):
        class_consistency([{1: rng.normal(size=(5, 2))}, {1: rng.normal(size=(5, 3))}])
    with pytest.raises(TypeError, match="mapping"):
        class_consistency([rng.normal(size=(5, 2)), rng.normal(size=(5, 2))])


# --------------------------------------------------------------------------------------------------
# ccfv_score (eq. 5)
# --------------------------------------------------------------------------------------------------


def test_ccfv_score_matches_equation_5(rng):
    layers = random_layers(rng)
    score = ccfv_score(layers)
    assert isinstance(score, float)
    assert score == pytest.approx(slow_ccfv(layers), rel=RTOL)


def test_ccfv_score_ablation_switches(rng):
    layers = random_layers(rng)
    log_fv = [math.log(slow_feature_variety(layer["global"])) for layer in layers]
    log_cc = [math.log(slow_class_consistency_eq2(layer["cases"])) for layer in layers]
    full = ccfv_score(layers)
    assert full == pytest.approx(np.mean(log_fv) - np.mean(log_cc), rel=RTOL)
    assert ccfv_score(layers, use_consistency=False) == pytest.approx(np.mean(log_fv), rel=RTOL)
    assert ccfv_score(layers, use_variety=False) == pytest.approx(-np.mean(log_cc), rel=RTOL)
    assert ccfv_score(layers, single_scale=True) == pytest.approx(log_fv[-1] - log_cc[-1], rel=RTOL)
    assert ccfv_score(layers, single_scale=True) == ccfv_score(layers[-1:])
    for distance in ("kl", "bhattacharyya"):
        expected = slow_ccfv(layers, distance)
        assert ccfv_score(layers, distance=distance) == pytest.approx(expected, rel=RTOL)
        assert abs(expected - full) > 1e-3
    with pytest.raises(ValueError, match="at least one"):
        ccfv_score(layers, use_consistency=False, use_variety=False)


def test_ccfv_score_reads_only_needed_keys(rng):
    layers = random_layers(rng)
    only_global = [{"global": layer["global"]} for layer in layers]
    only_cases = [{"cases": layer["cases"]} for layer in layers]
    assert ccfv_score(only_global, use_consistency=False) == ccfv_score(
        layers, use_consistency=False
    )
    assert ccfv_score(only_cases, use_variety=False) == ccfv_score(layers, use_variety=False)
    with pytest.raises(ValueError, match="'cases'"):
        ccfv_score(only_global)


def test_ccfv_score_is_invariant_to_feature_scale_with_s1_w2(rng):
    layers = random_layers(rng, n_layers=2)
    scaled = [
        {
            "cases": [{k: 5.0 * x for k, x in case.items()} for case in layer["cases"]],
            "global": [5.0 * v for v in layer["global"]],
        }
        for layer in layers
    ]
    assert ccfv_score(scaled) == pytest.approx(ccfv_score(layers), rel=1e-9)


def test_ccfv_score_higher_for_consistent_classes(rng):
    global_feats = [rng.normal(size=(10, 3)) for _ in range(4)]
    base = rng.normal(size=(12, 3))
    good = {"cases": [{1: base + 0.05 * rng.normal(size=base.shape)} for _ in range(4)]}
    bad = {"cases": [{1: base * (1 + i) + 2 * i} for i in range(4)]}
    assert ccfv_score([{**good, "global": global_feats}]) > ccfv_score(
        [{**bad, "global": global_feats}]
    )


def test_ccfv_score_rejects_nonpositive_variety():
    # s = 0 with far-apart points gives a negative energy, so F_v < 0 and log F_v is undefined.
    layer = {"global": [np.array([[0.0], [10.0]])] * 2}
    with pytest.raises(ValueError, match="F_v"):
        ccfv_score([layer], use_consistency=False, s=0)


# --------------------------------------------------------------------------------------------------
# logme (You et al., 2021)
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n, d, n_classes", [(120, 8, 3), (60, 15, 2), (20, 50, 3), (30, 30, 4)])
def test_logme_matches_explicit_evidence_reference(rng, n, d, n_classes):
    features = rng.normal(size=(n, d))
    labels = rng.integers(0, n_classes, size=n)
    features[:, 0] += labels  # some signal, so alpha and beta move
    assert logme(features, labels) == pytest.approx(slow_logme(features, labels), rel=RTOL)


def test_logme_rank_deficient_tall_features(rng):
    # n > d but rank(f) < d: the zero eigenvalues of f^T f still count in ln det A.
    base = rng.normal(size=(80, 4))
    features = np.hstack([base, base[:, :2] + base[:, 2:]])
    labels = rng.integers(0, 2, size=80)
    assert logme(features, labels) == pytest.approx(slow_logme(features, labels), rel=RTOL)


def test_logme_separable_features_score_higher(rng):
    n, d = 300, 10
    labels = rng.integers(0, 3, size=n)
    separable = rng.normal(size=(n, d))
    separable[:, :3] += 4.0 * np.eye(3)[labels]
    random = rng.normal(size=(n, d))
    assert logme(separable, labels) > logme(random, labels) + 0.1


def test_logme_labels_are_used_by_value_not_by_position(rng):
    features = rng.normal(size=(50, 6))
    labels = rng.integers(0, 3, size=50)
    relabelled = np.array([7, 2, 11])[labels]  # non-contiguous ids, permuted order
    assert logme(features, relabelled) == pytest.approx(logme(features, labels), rel=1e-12)


def test_logme_rejects_bad_inputs(rng):
    with pytest.raises(ValueError, match="labels"):
        logme(rng.normal(size=(10, 3)), np.zeros(9, dtype=int))
    with pytest.raises(ValueError, match="all zero"):
        logme(np.zeros((10, 3)), np.zeros(10, dtype=int))


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


def test_class_consistency_rank_deficient_cases_match_nuclear_reference(rng):
    cases = [{1: rng.normal(loc=0.3 * i, size=(4, 12))} for i in range(5)]  # n = 4 < d = 12
    expected = sum(
        nuclear_w2(cases[i][1], cases[j][1]) for i in range(5) for j in range(5) if i != j
    ) / 20
    assert class_consistency(cases) == pytest.approx(expected, rel=1e-10)


def test_class_consistency_constant_channel_is_finite_and_changes_nothing(rng):
    cases = random_cases(rng, n_cases=4, classes=(1, 2), d=3)
    padded = [
        {k: np.hstack([x, np.full((len(x), 1), 7.0)]) for k, x in case.items()} for case in cases
    ]
    value = class_consistency(padded)
    assert np.isfinite(value)
    assert value == pytest.approx(class_consistency(cases), rel=1e-10)
    for distance in ("kl", "bhattacharyya"):
        assert np.isfinite(class_consistency(padded, distance=distance))


def test_class_consistency_duplicated_channel_matches_nuclear_reference(rng):
    cases = []
    for i in range(4):
        x = rng.normal(loc=0.2 * i, size=(10, 3))
        cases.append({1: np.hstack([x, x[:, :1]])})  # rank 3 covariance in 4 dimensions
    expected = sum(
        nuclear_w2(cases[i][1], cases[j][1]) for i in range(4) for j in range(4) if i != j
    ) / 12
    value = class_consistency(cases)
    assert np.isfinite(value)
    assert value == pytest.approx(expected, rel=1e-10)


def test_class_consistency_zero_covariance_class(rng):
    # every sample of the class identical within a case: covariance 0, W2 = distance of means
    cases = [{1: np.tile(rng.normal(size=(1, 3)), (5, 1))} for _ in range(3)]
    means = [case[1][0] for case in cases]
    expected = sum(
        np.linalg.norm(means[i] - means[j]) for i in range(3) for j in range(3) if i != j
    ) / 6
    assert class_consistency(cases) == pytest.approx(expected, rel=1e-12)


def test_single_case_raises_everywhere(rng):
    one = random_cases(rng, n_cases=1, classes=(1, 2), d=3)
    with pytest.raises(ValueError, match="no valid pair"):
        class_consistency(one)
    with pytest.raises(ValueError, match="no valid pair"):
        ccfv_score([{"cases": one, "global": [rng.normal(size=(6, 3))]}])
    with pytest.raises(ValueError, match="at least 2 cases"):
        class_consistency_released(one)
    with pytest.raises(ValueError, match="at least 2 cases"):
        feature_variety_released(rng.normal(size=(1, 3)))


def test_class_consistency_invariant_to_case_order_and_channel_permutation(rng):
    cases = random_cases(rng, n_cases=6, classes=(1, 2), d=5)
    cases[4].pop(1)
    value = class_consistency(cases)
    order = rng.permutation(6)
    assert class_consistency([cases[i] for i in order]) == pytest.approx(value, rel=1e-12)
    channels = rng.permutation(5)
    permuted = [{k: x[:, channels] for k, x in case.items()} for case in cases]
    assert class_consistency(permuted) == pytest.approx(value, rel=1e-10)
    assert class_consistency([{k: 4.0 * x for k, x in c.items()} for c in cases]) == pytest.approx(
        4.0 * value, rel=1e-10
    )


def test_ccfv_score_invariant_to_case_order_and_channel_permutation(rng):
    layers = random_layers(rng, n_layers=2)
    value = ccfv_score(layers)
    shuffled = []
    for layer in layers:
        order = rng.permutation(len(layer["cases"]))
        d = layer["global"][0].shape[1]
        channels = rng.permutation(d)
        shuffled.append(
            {
                "cases": [
                    {k: x[:, channels] for k, x in layer["cases"][i].items()} for i in order
                ],
                "global": [layer["global"][i][:, channels] for i in order],
            }
        )
    assert ccfv_score(shuffled) == pytest.approx(value, rel=1e-10)


@pytest.mark.parametrize("s", [2.0, 0.5])
def test_ccfv_score_common_scaling_shifts_by_s_minus_1_log_c(rng, s):
    layers = random_layers(rng, n_layers=2)
    c = 3.0
    scaled = [
        {
            "cases": [{k: c * x for k, x in case.items()} for case in layer["cases"]],
            "global": [c * v for v in layer["global"]],
        }
        for layer in layers
    ]
    log_c = math.log(c)
    assert ccfv_score(scaled, s=s) == pytest.approx(ccfv_score(layers, s=s) + (s - 1) * log_c)
    assert ccfv_score(scaled, s=s, use_consistency=False) == pytest.approx(
        ccfv_score(layers, s=s, use_consistency=False) + s * log_c
    )
    assert ccfv_score(scaled, use_variety=False) == pytest.approx(
        ccfv_score(layers, use_variety=False) - log_c
    )


# --------------------------------------------------------------------------------------------------
# LEEP (Nguyen et al., 2020)
# --------------------------------------------------------------------------------------------------


def slow_leep(probs, labels):
    n, n_source = probs.shape
    target = sorted(set(labels.tolist()))
    joint = {(y, z): 0.0 for y in target for z in range(n_source)}
    for i in range(n):
        for z in range(n_source):
            joint[(labels[i], z)] += probs[i, z] / n
    marginal = [sum(joint[(y, z)] for y in target) for z in range(n_source)]
    total = 0.0
    for i in range(n):
        inner = 0.0
        for z in range(n_source):
            if marginal[z] > 0:
                inner += joint[(labels[i], z)] / marginal[z] * probs[i, z]
        total += math.log(inner)
    return total / n


def test_leep_matches_loop_reference(rng):
    probs = rng.dirichlet(np.ones(5), size=40)
    labels = rng.integers(0, 3, size=40)
    assert leep(probs, labels) == pytest.approx(slow_leep(probs, labels), rel=1e-12)


def test_leep_hand_computed():
    assert leep(np.eye(2), np.array([0, 1])) == pytest.approx(0.0, abs=1e-15)
    # uniform source predictions: P(y|z) = 1/2, inner sum = 1/2
    assert leep(np.full((4, 2), 0.5), np.array([0, 1, 0, 1])) == pytest.approx(math.log(0.5))
    # a source class with no mass is ignored
    probs = np.array([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    # P(y=0|z=0) = 1/2, P(y=1|z=0) = 1/2, P(y=1|z=1) = 1
    expected = (math.log(0.5) + math.log(0.5) + 0.0) / 3
    assert leep(probs, np.array([0, 1, 1])) == pytest.approx(expected)


def test_leep_properties_and_errors(rng):
    probs = rng.dirichlet(np.ones(4), size=30)
    labels = rng.integers(0, 3, size=30)
    value = leep(probs, labels)
    assert value <= 0.0
    order = rng.permutation(30)
    assert leep(probs[order], labels[order]) == pytest.approx(value, rel=1e-12)
    assert leep(probs[:, ::-1], labels) == pytest.approx(value, rel=1e-12)
    with pytest.raises(ValueError, match="negative"):
        leep(probs - 0.5, labels)
    with pytest.raises(ValueError, match="sum to 1"):
        leep(probs * 2, labels)
    with pytest.raises(ValueError, match="shape"):
        leep(probs, labels[:-1])
    with pytest.raises(ValueError, match="integer"):
        leep(probs, labels + 0.5)


# --------------------------------------------------------------------------------------------------
# NCE (Tran et al., 2019)
# --------------------------------------------------------------------------------------------------


def slow_nce(z, y):
    n = len(z)
    total = 0.0
    for zv in set(z.tolist()):
        n_z = sum(1 for a in z if a == zv)
        for yv in set(y.tolist()):
            n_zy = sum(1 for a, b in zip(z, y) if a == zv and b == yv)
            if n_zy:
                total += n_zy / n * math.log(n_zy / n_z)
    return total


def test_nce_matches_loop_reference_and_hand_cases(rng):
    z = rng.integers(0, 5, size=50)
    y = rng.integers(0, 3, size=50)
    assert nce(z, y) == pytest.approx(slow_nce(z, y), rel=1e-12)
    assert nce(np.array([0, 0, 1, 1]), np.array([3, 3, 7, 7])) == 0.0
    assert nce(np.zeros(4, dtype=int), np.array([0, 1, 0, 1])) == pytest.approx(-math.log(2))
    # z = (0,0,0,1), y = (0,0,1,1): H(Y|Z) = 3/4 * H(2/3, 1/3)
    h = -(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3))
    assert nce(np.array([0, 0, 0, 1]), np.array([0, 0, 1, 1])) == pytest.approx(-0.75 * h)


def test_nce_is_relabelling_invariant_and_checks_shapes(rng):
    z = rng.integers(0, 4, size=40)
    y = rng.integers(0, 3, size=40)
    assert nce(np.array([9, 2, 5, 1])[z], np.array([4, 0, 8])[y]) == pytest.approx(nce(z, y))
    with pytest.raises(ValueError, match="shape"):
        nce(z, y[:-1])


# --------------------------------------------------------------------------------------------------
# GBC (Pándy et al., 2022)
# --------------------------------------------------------------------------------------------------


def slow_gbc(features, labels, gaussian):
    """The released TensorFlow code, transcribed with loops over classes and dimensions."""
    stats = {}
    for c in sorted(set(labels.tolist())):
        rows = features[labels == c]
        mean = [sum(rows[:, k]) / len(rows) for k in range(features.shape[1])]
        var = [
            max(sum((rows[r, k] - mean[k]) ** 2 for r in range(len(rows))) / len(rows), 1e-4)
            for k in range(features.shape[1])
        ]
        if gaussian == "spherical":
            var = [sum(var) / len(var)]
        stats[c] = (mean, var)
    total = 0.0
    for c1 in stats:
        for c2 in stats:
            if c1 == c2:
                continue
            (m1, v1), (m2, v2) = stats[c1], stats[c2]
            avg = [(a + b) / 2 for a, b in zip(v1, v2)]
            first = 0.0
            for k in range(len(m1)):
                first += (m1[k] - m2[k]) ** 2 / avg[k if len(avg) > 1 else 0]
            first /= 8
            second = sum(math.log(a) for a in avg)
            second -= 0.5 * sum(math.log(a) for a in v1)
            second -= 0.5 * sum(math.log(a) for a in v2)
            total += math.exp(-(first + 0.5 * second))
    return -total


@pytest.mark.parametrize("gaussian", ["spherical", "diagonal"])
def test_gbc_matches_loop_transcription_of_released_code(rng, gaussian):
    labels = rng.integers(0, 3, size=45)
    features = rng.normal(size=(45, 4)) * np.array([1.0, 0.5, 2.0, 0.01])
    features[:, 0] += labels
    assert gbc(features, labels, gaussian) == pytest.approx(
        slow_gbc(features, labels, gaussian), rel=1e-12
    )


def test_gbc_hand_computed():
    # 1-D: class 0 = {0, 2} (mean 1, var 1), class 1 = {4, 6} (mean 5, var 1): D_B = 16/8 = 2
    features = np.array([[0.0], [2.0], [4.0], [6.0]])
    labels = np.array([0, 0, 1, 1])
    for gaussian in ("spherical", "diagonal"):
        assert gbc(features, labels, gaussian) == pytest.approx(-2 * math.exp(-2))
    # 2-D, equal means: only the log term. Class 0 variances (1, 9), class 1 variances (9, 1).
    a = np.array([[1.0, 3.0], [-1.0, -3.0]])
    b = np.array([[3.0, 1.0], [-3.0, -1.0]])
    features = np.vstack([a, b])
    labels = np.array([0, 0, 1, 1])
    # diagonal: averaged variances (5, 5); D_B = 1/2 [2 log 5 - 1/2 log 9 - 1/2 log 9] = log(5/3)
    diag_db = 0.5 * (2 * math.log(5) - 0.5 * math.log(9) - 0.5 * math.log(9))
    assert diag_db == pytest.approx(math.log(5 / 3))
    assert gbc(features, labels, "diagonal") == pytest.approx(-2 * math.exp(-diag_db))
    # spherical: both classes have mean variance 5, so D_B = 0 and each coefficient is 1
    assert gbc(features, labels, "spherical") == pytest.approx(-2.0)


def test_gbc_spherical_counts_log_term_once_like_the_released_code():
    # class variances 1 and 4 (isotropic, d = 3), equal means: exact isotropic Bhattacharyya
    # would be d/2 * log(2.5 / 2); the released code (and we) use 1/2 * log(2.5 / 2).
    unit = np.array([[1.0, 1.0, 1.0], [-1.0, -1.0, -1.0]])
    features = np.vstack([unit, 2 * unit])
    labels = np.array([0, 0, 1, 1])
    assert gbc(features, labels) == pytest.approx(-2 * math.exp(-0.5 * math.log(2.5 / 2)))


def test_gbc_properties_and_robustness(rng):
    labels = rng.integers(0, 3, size=40)
    features = rng.normal(size=(40, 5)) + labels[:, None]
    value = gbc(features, labels)
    perm = rng.permutation(5)
    order = rng.permutation(40)
    assert gbc(features[:, perm], labels) == pytest.approx(value, rel=1e-12)
    assert gbc(features[order], labels[order]) == pytest.approx(value, rel=1e-12)
    assert value < 0
    constant = np.hstack([features, np.ones((40, 1))])  # zero variance -> floored
    assert np.isfinite(gbc(constant, labels, "diagonal"))
    single_sample_class = np.append(labels[:-1], 9)
    assert np.isfinite(gbc(features, single_sample_class))
    with pytest.raises(ValueError, match="2 classes"):
        gbc(features, np.zeros(40, dtype=int))
    with pytest.raises(ValueError, match="gaussian"):
        gbc(features, labels, "full")
    assert GBC_VARIANCE_FLOOR == 1e-4


@pytest.mark.parametrize("gaussian", ["spherical", "diagonal"])
def test_gbc_default_reduces_to_64_principal_components_like_the_released_pipeline(rng, gaussian):
    from sklearn.decomposition import PCA

    labels = rng.integers(0, 3, size=150)
    features = rng.normal(size=(150, 80)) @ rng.normal(size=(80, 80)) + 0.5 * labels[:, None]
    # stable_transfer's features_targets_utils.pca_reduction: PCA(64, svd_solver="full").fit_transform
    # (its cast to float32 left out: we compute in float64)
    reduced = PCA(n_components=64, svd_solver="full").fit_transform(features)
    assert gbc(features, labels, gaussian) == pytest.approx(slow_gbc(reduced, labels, gaussian), rel=1e-9)
    assert gbc(features, labels, gaussian, pca_components=64) == gbc(features, labels, gaussian)
    assert gbc(features, labels, gaussian, pca_components=None) == pytest.approx(
        slow_gbc(features, labels, gaussian), rel=1e-12)
    assert gbc(features, labels, gaussian, pca_components=None) != pytest.approx(gbc(features, labels, gaussian))


def test_gbc_pca_leaves_64_or_fewer_dimensions_as_given(rng):
    labels = rng.integers(0, 3, size=60)
    features = rng.normal(size=(60, 16)) + labels[:, None]
    for gaussian in ("spherical", "diagonal"):
        assert gbc(features, labels, gaussian) == gbc(features, labels, gaussian, pca_components=None)
    wide = rng.normal(size=(40, 100)) + labels[:40, None]  # n < 64 < d: at most n components
    assert np.isfinite(gbc(wide, labels[:40]))
    assert gbc(wide, labels[:40], pca_components=8) != pytest.approx(gbc(wide, labels[:40]))
    for bad in (0, -1, 2.5, True, "64"):
        with pytest.raises(ValueError, match="pca_components"):
            gbc(features, labels, pca_components=bad)


# --------------------------------------------------------------------------------------------------
# TransRate (Huang et al., 2022)
# --------------------------------------------------------------------------------------------------


def slow_transrate(features, labels, eps=1e-4, rank_normalise=True):
    """Released-code formula with explicit determinants and numpy.linalg.matrix_rank."""
    n, d = features.shape
    z = features - features.mean(axis=0)

    def rate(rows):
        return 0.5 * math.log(np.linalg.det(np.eye(d) + rows.T @ rows / (len(rows) * eps)))

    conditional = 0.0
    for c in sorted(set(labels.tolist())):
        rows = z[labels == c]
        conditional += len(rows) / n * rate(rows)
    score = rate(z) - conditional
    if rank_normalise:
        score /= np.linalg.matrix_rank(z.T @ z / n)
    return score


@pytest.mark.parametrize("rank_normalise", [True, False])
def test_transrate_matches_explicit_determinant_reference(rng, rank_normalise):
    labels = rng.integers(0, 3, size=50)
    features = rng.normal(size=(50, 4)) + 0.5 * labels[:, None]
    assert transrate(features, labels, 1e-2, rank_normalise=rank_normalise, row_normalise=False) == pytest.approx(
        slow_transrate(features, labels, 1e-2, rank_normalise), rel=1e-10
    )


def test_transrate_hand_computed():
    # 1-D, mean 0: Z^T Z / n = 5; class 0 = {-1, 1}: 1; class 1 = {-3, 3}: 9; rank 1; eps = 1
    features = np.array([[-1.0], [1.0], [-3.0], [3.0]])
    labels = np.array([0, 0, 1, 1])
    expected = 0.5 * math.log(6) - 0.5 * (0.5 * math.log(2) + 0.5 * math.log(10))
    assert transrate(features, labels, eps=1.0, row_normalise=False) == pytest.approx(expected)
    assert transrate(features, labels, eps=1.0, rank_normalise=False, row_normalise=False) == pytest.approx(expected)
    # row_normalise (the default): rows become +-1, every second moment is 1, TransRate is 0
    assert transrate(features, labels, eps=1.0, row_normalise=True) == pytest.approx(0.0)
    assert transrate(features, labels, eps=1.0) == pytest.approx(0.0)


def test_transrate_rank_division_uses_the_feature_rank(rng):
    base = rng.normal(size=(60, 3))
    features = np.hstack([base, base[:, :1] + base[:, 1:2]])  # rank 3 in 4 dimensions
    labels = rng.integers(0, 2, size=60)
    undivided = transrate(features, labels, rank_normalise=False, row_normalise=False)
    assert transrate(features, labels, row_normalise=False) == pytest.approx(undivided / 3, rel=1e-12)
    assert transrate(features, labels, row_normalise=False) == pytest.approx(
        slow_transrate(features, labels), rel=1e-6)
    # normalised rows stay in the same 3-dimensional subspace: the released default divides by 3 too
    assert transrate(features, labels) == pytest.approx(transrate(features, labels, rank_normalise=False) / 3)


def test_transrate_properties_and_robustness(rng):
    labels = rng.integers(0, 3, size=30)
    features = rng.normal(size=(30, 6)) + labels[:, None]
    value = transrate(features, labels)
    assert transrate(features[:, rng.permutation(6)], labels) == pytest.approx(value, rel=1e-10)
    order = rng.permutation(30)
    assert transrate(features[order], labels[order]) == pytest.approx(value, rel=1e-10)
    wide = rng.normal(size=(8, 40))  # n < d
    assert np.isfinite(transrate(wide, rng.integers(0, 2, size=8)))
    duplicated = np.hstack([features, features[:, :2], np.ones((30, 1))])
    assert np.isfinite(transrate(duplicated, labels))
    for row_normalise in (True, False):
        with pytest.raises(ValueError, match="constant"):
            transrate(np.ones((10, 3)), rng.integers(0, 2, size=10), row_normalise=row_normalise)
    with pytest.raises(ValueError, match="eps"):
        transrate(features, labels, eps=0.0)
    with pytest.raises(ValueError, match="zero"):  # rows normalise to 1, 1, 1: every centred row is 0
        transrate(np.array([[1.0], [2.0], [3.0]]), np.array([0, 1, 1]), row_normalise=True)
    # the released pipeline's first normalisation keeps a zero row zero (torch's normalize), no error
    assert np.isfinite(transrate(np.vstack([np.zeros((1, 6)), features]), np.append(0, labels)))


def released_transrate_pipeline(features, labels, eps=1e-4):
    """Long-Kai/TransRate (commit 5b59b64) step by step, with explicit loops, for raw features:

    experiment_builder_get_eigens.py: ``torch.nn.functional.normalize`` of every feature row (norm
    clamped at 1e-12), then centring with the mean row; transrate.py ``pre_transrate(normalize=True)``:
    every centred row divided by its L2 norm, then the singular values and ``matrix_rank`` of Z^T Z / n
    and of each class's Z_k^T Z_k / n_k for k in range(max(y) + 1);
    extract_result_utils.py ``process_transrate_logs`` with its defaults (reg=1, every eigenvalue,
    residuals 'weight' (nothing left over when every eigenvalue is used), normalize_opt='rank'):
    rz = sum log(1 + e / eps) / rank, rzc_k likewise per class, score = rz / 2 - sum_k (n_k / n) rzc_k / 2
    (extra_result_model_selection.py: transrate = rz - rzc).
    """
    n, d = features.shape
    unit = []
    for row in features:
        norm = math.sqrt(sum(float(v) ** 2 for v in row))
        unit.append([float(v) / max(norm, 1e-12) for v in row])
    mean = [sum(row[k] for row in unit) / n for k in range(d)]
    centred = [[row[k] - mean[k] for k in range(d)] for row in unit]
    z = np.array([[v / math.sqrt(sum(w * w for w in row)) for v in row] for row in centred])

    def eigens_and_rank(m):
        return np.linalg.svd(m, compute_uv=False), np.linalg.matrix_rank(m)

    eig_z, rank_z = eigens_and_rank(z.T @ z / n)
    class_eigs, class_counts = [], []
    for k in range(int(labels.max()) + 1):
        rows = z[labels == k]
        class_eigs.append(eigens_and_rank(rows.T @ rows / len(rows))[0])
        class_counts.append(len(rows))
    normal_r = min(rank_z, d)
    rz = sum(math.log(1.0 + e / eps) for e in eig_z) / normal_r
    rzc = [sum(math.log(1.0 + e / eps) for e in eigs) / normal_r for eigs in class_eigs]
    return rz / 2.0 - sum(r * c / n for r, c in zip(rzc, class_counts)) / 2.0


def test_transrate_default_is_the_released_pipeline_on_raw_features(rng):
    labels = np.repeat([0, 1, 2], 30)
    # raw decoder-like features: a small activation scale (eps is then large against it), an offset,
    # class-dependent means
    features = 0.3 + 0.01 * (rng.normal(size=(90, 5)) + 0.8 * np.eye(5)[labels])
    expected = released_transrate_pipeline(features, labels)
    assert transrate(features, labels) == pytest.approx(expected, rel=1e-10)
    assert transrate(features, labels, eps=1e-4, rank_normalise=True, row_normalise=True) == pytest.approx(
        expected, rel=1e-10)
    # switched off, the score is that of the raw features, which the released code never computes
    assert transrate(features, labels, row_normalise=False) != pytest.approx(expected, rel=0.1)
    # the released normalisation makes the score independent of each row's activation scale
    scales = rng.uniform(0.01, 100.0, size=(90, 1))
    assert transrate(features * scales, labels) == pytest.approx(
        released_transrate_pipeline(features * scales, labels), rel=1e-10)
    assert transrate(1000.0 * features, labels) == pytest.approx(expected, rel=1e-10)


# --------------------------------------------------------------------------------------------------
# H-score (Bao et al., 2019)
# --------------------------------------------------------------------------------------------------


def slow_hscore(features, labels):
    """The authors' getHscore: ddof=1 covariances, per-sample class means, pinv(rcond=1e-15)."""
    def cov(x):
        centred = x - x.mean(axis=0, keepdims=True)
        return centred.T @ centred / (len(x) - 1)

    g = np.zeros_like(features)
    for c in set(labels.tolist()):
        g[labels == c] = features[labels == c].mean(axis=0)
    return float(np.trace(np.linalg.pinv(cov(features), rcond=1e-15) @ cov(g)))


def test_hscore_matches_authors_formula_on_full_rank_features(rng):
    labels = rng.integers(0, 4, size=80)
    features = rng.normal(size=(80, 6)) @ rng.normal(size=(6, 6)) + labels[:, None]
    assert hscore(features, labels) == pytest.approx(slow_hscore(features, labels), rel=1e-9)


def test_hscore_hand_computed():
    labels = np.array([0, 0, 1, 1])
    assert hscore(np.array([[0.0], [0.0], [2.0], [2.0]]), labels) == pytest.approx(1.0)
    # cov f = 20/3, cov g (class means 1, 5) = 16/3
    assert hscore(np.array([[0.0], [2.0], [4.0], [6.0]]), labels) == pytest.approx(0.8)
    assert hscore(np.array([[0.0], [2.0], [4.0], [6.0]]), np.zeros(4, dtype=int)) == 0.0
    assert hscore(np.ones((4, 2)), labels) == 0.0


def test_hscore_invariances_and_degenerate_channels(rng):
    labels = rng.integers(0, 3, size=50)
    features = rng.normal(size=(50, 5)) + labels[:, None] * np.array([1, 0, 2, 0, 0])
    value = hscore(features, labels)
    assert hscore(features[:, rng.permutation(5)], labels) == pytest.approx(value, rel=1e-10)
    assert hscore(7.0 * features, labels) == pytest.approx(value, rel=1e-10)
    order = rng.permutation(50)
    assert hscore(features[order], labels[order]) == pytest.approx(value, rel=1e-10)
    degenerate = np.hstack([features, features[:, :2], np.full((50, 1), 3.0)])
    assert hscore(degenerate, labels) == pytest.approx(value, rel=1e-8)
    wide = rng.normal(size=(6, 20))  # n < d: finite, at most (classes - 1)
    wide_value = hscore(wide, np.array([0, 0, 1, 1, 2, 2]))
    assert np.isfinite(wide_value) and wide_value <= 2 + 1e-8


# --------------------------------------------------------------------------------------------------
# Released-code reproduction (EndoluminalSurgicalVision-IMR/CCFV)
# --------------------------------------------------------------------------------------------------


def released_cal_w_distance(f1, f2):
    """utils/ccfv.py cal_w_distance, verbatim arithmetic."""
    miu_f1 = np.mean(f1, axis=0)
    miu_f2 = np.mean(f2, axis=0)
    cov_f1 = np.cov(f1.T)
    cov_f2 = np.cov(f2.T)
    delta_miu = miu_f1 - miu_f2
    w_d = (
        np.sum(delta_miu**2)
        + cov_f1.trace()
        + cov_f2.trace()
        - 2 * (scipy.linalg.sqrtm(cov_f1.dot(cov_f2))).trace()
    )
    return np.sqrt(abs(w_d))


def test_gaussian_w2_released_matches_released_function_and_ours(rng):
    a = rng.normal(size=(30, 4)) @ rng.normal(size=(4, 4))
    b = rng.normal(loc=0.5, size=(25, 4)) @ rng.normal(size=(4, 4))
    assert gaussian_w2_released(a, b) == released_cal_w_distance(a, b)
    assert gaussian_w2_released(a, b) == pytest.approx(gaussian_w2(a, b), rel=1e-8)
    one_d_a, one_d_b = rng.normal(size=(10, 1)), rng.normal(size=(12, 1))
    assert gaussian_w2_released(one_d_a, one_d_b) == pytest.approx(
        gaussian_w2(one_d_a, one_d_b), rel=1e-10
    )


def test_class_consistency_released_nested_accumulator_hand_computed():
    # 1-D: W2 of N(m1, s1^2), N(m2, s2^2) = hypot(m1 - m2, s1 - s2). Sets {mu - h, mu + h} have
    # ddof=1 std h * sqrt(2).
    def col(*values):
        return np.array(values, dtype=float)[:, None]

    cases = [
        {0: col(0, 1, 2), 1: col(0, 2), 2: col(10, 12)},
        {0: col(5, 6), 1: col(3, 5), 2: col(10, 14)},
    ]
    s1 = 3.0  # class 1: means 1 and 4, equal spread
    s2 = math.sqrt(1 + 2)  # class 2: means 11 and 12, stds sqrt(2) and 2 sqrt(2)
    factor = 1 + 1 / (2 * 2 / 2) / 2  # 1 + 1 / (N^2/2) / K with N = 2, K = 2: 1.25
    expected = (s1 * factor + s2) * factor
    assert class_consistency_released(cases) == pytest.approx(expected, rel=1e-9)
    assert class_consistency_released(cases, num_classes=4) == pytest.approx(
        (s1 * 1.125 + s2) * 1.125, rel=1e-9
    )


def test_class_consistency_released_matches_transcribed_main_loop(rng):
    cases = [{0: rng.normal(size=(9, 3)), 1: rng.normal(size=(8, 3)), 2: rng.normal(size=(7, 3))}
             for _ in range(4)]
    w_distance = 0.0
    for lb in (0, 1, 2):
        if lb == 0:
            continue
        length = len(cases)
        for i in range(length):
            for j in range(i + 1, length):
                w_distance += released_cal_w_distance(cases[i][lb], cases[j][lb])
        w_distance += w_distance / (length * length / 2) / 2
    assert class_consistency_released(cases) == pytest.approx(w_distance, rel=1e-12)
    order = [2, 0, 3, 1]
    assert class_consistency_released([cases[i] for i in order]) == pytest.approx(
        w_distance, rel=1e-9
    )


def test_feature_variety_released_hand_computed_and_direction():
    v = np.array([[0.0, 0.0], [3.0, 4.0]])
    assert feature_variety_released(v) == pytest.approx(1 / math.sqrt(25 + 1e-3))
    three = np.array([[0.0], [1.0], [3.0]])
    expected = (1 / math.sqrt(1.001) + 1 / math.sqrt(9.001) + 1 / math.sqrt(4.001)) / 3
    assert feature_variety_released(three) == pytest.approx(expected)
    # grows when the vectors collapse: the opposite direction to the paper's F_v
    assert feature_variety_released(0.1 * three) > feature_variety_released(three)


def test_ccfv_score_released_sums_layers_and_both_ratio_versions(rng):
    layers = []
    for _ in range(2):
        layers.append({"cases": [{0: rng.normal(size=(10, 3)), 1: rng.normal(size=(6, 3)) + 1}
                                 for _ in range(3)]})
    terms = []
    for layer in layers:
        w = class_consistency_released(layer["cases"])
        means = np.stack([np.vstack([c[0], c[1]]).mean(axis=0) for c in layer["cases"]])
        terms.append(math.log(feature_variety_released(means) / w))
    value = ccfv_score_released(layers)
    assert value == pytest.approx(sum(terms), rel=1e-12)
    assert ccfv_score_released(layers, ratio="distance_over_variety") == pytest.approx(-value)
    with pytest.raises(ValueError, match="ratio"):
        ccfv_score_released(layers, ratio="mean")


def test_released_variant_rejects_absent_class(rng):
    cases = [{0: rng.normal(size=(5, 2)), 1: rng.normal(size=(5, 2))}, {0: rng.normal(size=(5, 2))}]
    with pytest.raises(ValueError, match="absent"):
        class_consistency_released(cases)
    with pytest.raises(ValueError, match="absent"):
        ccfv_score_released([{"cases": cases}])
    with pytest.raises(ValueError, match="at least 2"):
        class_consistency_released(
            [{1: rng.normal(size=(5, 2))}, {1: rng.normal(size=(1, 2))}]
        )


def test_released_w2_agrees_with_batched_w2_on_benchmark_like_data(rng):
    d = 24
    mix = rng.normal(size=(d, d)) / math.sqrt(d)
    sets = [rng.normal(size=(80, d)) @ (mix + 0.1 * rng.normal(size=(d, d))) for _ in range(4)]
    matrix = gaussian_w2_matrix(sets)
    for i in range(4):
        for j in range(i + 1, 4):
            assert matrix[i, j] == pytest.approx(gaussian_w2_released(sets[i], sets[j]), rel=1e-8)
