"""Tests for ccfv.metrics: each fast function against a slow, obviously-correct reference written
here (explicit loops, scipy.linalg.sqrtm, explicit inverses and determinants), plus properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg

from ccfv.metrics import (
    HSE_DISTANCE_FLOOR,
    RIDGE_EPS,
    bhattacharyya_gaussian,
    ccfv_score,
    class_consistency,
    feature_variety,
    gaussian_w2,
    hyperspherical_energy,
    kl_gaussian,
    logme,
)

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
