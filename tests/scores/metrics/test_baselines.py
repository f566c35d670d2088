"""Tests for ccfv.scores.metrics.baselines: LEEP, NCE, GBC, TransRate and H-score, each against a slow
reference or a transcription of its released code, hand-computed cases and properties."""
from __future__ import annotations

import math

import numpy as np
import pytest

from ccfv.scores.metrics.baselines import GBC_VARIANCE_FLOOR, gbc, hscore, leep, nce, transrate

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
