"""Slow, obviously-correct references of the metrics (explicit loops, ``scipy.linalg.sqrtm``, explicit
inverses and determinants) and random test data, shared by the tests of :mod:`ccfv.scores.metrics`."""
from __future__ import annotations

import math

import numpy as np
import scipy.linalg

from ccfv.scores.metrics.ccfv import HSE_DISTANCE_FLOOR
from ccfv.scores.metrics.gaussian import RIDGE_EPS

RTOL = 1e-6


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


def slow_hse(v, s, reduction="sum"):
    """Equation 3 with a double loop over ordered pairs; ``reduction="mean"`` divides by their number."""
    total, pairs = 0.0, 0
    for i in range(len(v)):
        for j in range(len(v)):
            if i == j:
                continue
            dist = max(float(np.linalg.norm(v[i] - v[j])), HSE_DISTANCE_FLOOR)
            total += math.log(1 / dist) if s == 0 else dist ** (-s)
            pairs += 1
    return total / pairs if reduction == "mean" else total


def slow_feature_variety(cases_global, s=1, energy="mean"):
    """Equation 4, the energy reduced as ``energy`` says (CC-FV's default: the mean over pairs)."""
    return sum(1 / slow_hse(v, s, energy) for v in cases_global) / len(cases_global)


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


def slow_ccfv(layers, distance="w2", energy="mean"):
    """Equation 5."""
    terms = []
    for layer in layers:
        fv = slow_feature_variety(layer["global"], energy=energy)
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
