"""LogME (You et al., ICML 2021): the log maximum evidence of a Bayesian linear model from features to labels."""
from __future__ import annotations

import numpy as np

from .gaussian import as_sample_set

# LogME constants of the authors' fixed-point algorithm (thuml/LogME, LogME._fit_fixed_point):
# denominators are stabilised with 1e-5, at most 11 iterations, stop when alpha/beta moves < 0.1 %.
_LOGME_DENOMINATOR_EPS = 1e-5
_LOGME_MAX_ITER = 11
_LOGME_REL_TOL = 1e-3


# --------------------------------------------------------------------------------------------------
# LogME baseline (You et al., ICML 2021)
# --------------------------------------------------------------------------------------------------


def _logme_spectrum(
    f: np.ndarray, targets: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Eigenvalues ``sigma`` [k] of f^T f with nonzero rank, projections ``x = U^T y`` [k, C] and
    the residual energies ``||y||^2 - ||x||^2`` [C] of the targets outside the span of U."""
    n, d = f.shape
    if n > d:
        # d x d Gram matrix: cheaper than an SVD of the tall matrix f.
        sigma, eigvec = np.linalg.eigh(f.T @ f)
        sigma = np.clip(sigma, 0.0, None)
        keep = sigma > sigma.max() * max(n, d) * np.finfo(np.float64).eps
        sigma, eigvec = sigma[keep], eigvec[:, keep]
        x = (eigvec.T @ (f.T @ targets)) / np.sqrt(sigma)[:, None]
    else:
        u, singular, _ = np.linalg.svd(f, full_matrices=False)
        sigma = singular**2
        x = u.T @ targets
    residual = np.clip((targets**2).sum(axis=0) - (x**2).sum(axis=0), 0.0, None)
    return sigma, x, residual


def _logme_evidence(sigma: np.ndarray, x2: np.ndarray, residual: float, n: int, d: int) -> float:
    """Fixed-point maximisation of the evidence for one target; returns evidence / n."""
    alpha, beta = 1.0, 1.0
    for _ in range(_LOGME_MAX_ITER):
        t = alpha / beta
        gamma = (sigma / (sigma + t)).sum()
        m2 = (sigma * x2 / (sigma + t) ** 2).sum()
        res2 = (x2 * (t / (sigma + t)) ** 2).sum() + residual
        alpha = gamma / (m2 + _LOGME_DENOMINATOR_EPS)
        beta = (n - gamma) / (res2 + _LOGME_DENOMINATOR_EPS)
        if abs(alpha / beta - t) / t <= _LOGME_REL_TOL:
            break
    # log det(alpha I_d + beta f^T f): the d - k zero eigenvalues of f^T f each add log alpha.
    logdet_a = np.log(alpha + beta * sigma).sum() + (d - sigma.size) * np.log(alpha)
    evidence = (
        0.5 * d * np.log(alpha)
        + 0.5 * n * np.log(beta)
        - 0.5 * logdet_a
        - 0.5 * beta * res2
        - 0.5 * alpha * m2
        - 0.5 * n * np.log(2.0 * np.pi)
    )
    return float(evidence / n)


def logme(features: np.ndarray, labels: np.ndarray) -> float:
    """LogME (You et al., ICML 2021): average log marginal evidence of a Bayesian linear model.

    For each class c present in ``labels`` the target is the one-vs-rest indicator y_c [n]. With
    the prior w ~ N(0, alpha^-1 I_d) and noise y ~ N(f w, beta^-1), the log evidence is

        L(alpha, beta) = n/2 ln beta + d/2 ln alpha - n/2 ln 2 pi - beta/2 ||f m - y||^2
                         - alpha/2 m^T m - 1/2 ln det A,
        A = alpha I + beta f^T f,   m = beta A^{-1} f^T y,

    maximised over (alpha, beta) with the authors' default fixed-point iteration (thuml/LogME,
    ``LogME._fit_fixed_point``): with gamma = sum_i sigma_i / (sigma_i + alpha/beta) over the
    eigenvalues sigma_i of f^T f, alpha <- gamma / (m^T m + 1e-5), beta <- (n - gamma) /
    (||f m - y||^2 + 1e-5), at most 11 iterations, stop when alpha/beta changes by <= 0.1 %.
    The returned score is the mean over classes of L / n.

    Conventions:
        * Natural log; higher = features fit the labels better (more transferable).
        * The spectrum comes from the d x d matrix f^T f when n > d and from an SVD of f (the
          n x n side) when n <= d, as in the reference implementation.
        * ln det A counts all d eigenvalues of A, including the d - rank(f) that equal alpha. The
          reference code drops those when n < d (thuml/LogME issue #23); see docs/metrics.md.
        * Classes are those present in ``labels`` (``np.unique``), not ``range(max + 1)``.
        * No feature normalisation is applied.

    Args:
        features: [n, d] features, n >= 2, not all zero.
        labels: [n] integer class labels.

    Returns:
        LogME score as a Python float.
    """
    f = as_sample_set(features, "features")
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.shape[0] != f.shape[0]:
        raise ValueError(
            f"labels must have shape [{f.shape[0]}] to match features, got {labels.shape}"
        )
    if not np.any(f):
        raise ValueError("features are all zero; LogME is undefined")
    n, d = f.shape
    classes = np.unique(labels)
    targets = (labels[:, None] == classes[None, :]).astype(np.float64)
    sigma, x, residual = _logme_spectrum(f, targets)
    evidences = [
        _logme_evidence(sigma, x[:, c] ** 2, residual[c], n, d) for c in range(classes.size)
    ]
    return float(np.mean(evidences))
