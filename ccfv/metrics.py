"""Transferability metrics: CC-FV (paper section 2.2, equations 1-5) and the LogME baseline.

Every function here is a pure function of numpy arrays. Inputs are converted to float64 and every
computation runs in float64. Shapes follow the paper: a set of sampled voxel features is an array
``[n, d]`` (n voxels, d feature channels).

Conventions shared by all functions (see ``docs/metrics.md`` for the reasons):

* Gaussians are fitted with the sample mean and the unbiased sample covariance (ddof=1), so every
  sample set needs at least 2 rows.
* Logarithms are natural logarithms.
* ``ccfv_score`` and ``logme`` are "higher is better"; ``class_consistency`` and the Gaussian
  distances are "lower is more consistent"; ``feature_variety`` is "higher is more varied".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
from scipy.spatial.distance import pdist

__all__ = [
    "gaussian_w2",
    "kl_gaussian",
    "bhattacharyya_gaussian",
    "hyperspherical_energy",
    "class_consistency",
    "feature_variety",
    "ccfv_score",
    "logme",
    "DISTANCES",
    "HSE_DISTANCE_FLOOR",
    "RIDGE_EPS",
]

#: Names accepted by ``class_consistency(distance=...)`` and ``ccfv_score(distance=...)``.
DISTANCES = ("w2", "kl", "bhattacharyya")

#: Pairwise distances below this are raised to it in ``hyperspherical_energy`` so that coincident
#: feature vectors give a large but finite energy instead of ``inf``.
HSE_DISTANCE_FLOOR = 1e-12

#: Relative ridge for the KL and Bhattacharyya distances: both covariances get
#: ``RIDGE_EPS * (mean variance of the two fitted Gaussians) * I`` added before any solve/logdet.
RIDGE_EPS = 1e-6

# LogME constants of the authors' fixed-point algorithm (thuml/LogME, LogME._fit_fixed_point):
# denominators are stabilised with 1e-5, at most 11 iterations, stop when alpha/beta moves < 0.1 %.
_LOGME_DENOMINATOR_EPS = 1e-5
_LOGME_MAX_ITER = 11
_LOGME_REL_TOL = 1e-3


class _Gaussian(NamedTuple):
    """Mean [d] and unbiased covariance [d, d] of one sample set."""

    mean: np.ndarray
    cov: np.ndarray


# --------------------------------------------------------------------------------------------------
# Input checking and Gaussian fitting
# --------------------------------------------------------------------------------------------------


def _as_matrix(x: Any, name: str) -> np.ndarray:
    """Return ``x`` as a finite float64 array of shape [n, d]; raise ValueError otherwise."""
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(
            f"{name} must be a 2-D array [n_samples, n_features], got shape {arr.shape}; "
            "reshape one-dimensional features to [n, 1]"
        )
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def _as_sample_set(x: Any, name: str) -> np.ndarray:
    """``_as_matrix`` plus the ddof=1 requirement of at least 2 samples."""
    arr = _as_matrix(x, name)
    if arr.shape[0] < 2:
        raise ValueError(
            f"{name} has {arr.shape[0]} sample(s); fitting a Gaussian with an unbiased (ddof=1) "
            "covariance needs at least 2"
        )
    return arr


def _fit_gaussian(x: np.ndarray) -> _Gaussian:
    """Sample mean and unbiased (ddof=1) covariance of the rows of ``x`` [n, d], n >= 2."""
    mean = x.mean(axis=0)
    centred = x - mean
    cov = centred.T @ centred / (x.shape[0] - 1)
    return _Gaussian(mean, 0.5 * (cov + cov.T))


def _check_same_dim(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"sample sets have different feature dimensions: {a.shape[1]} and {b.shape[1]}"
        )


def _psd_eigvals_floor(eigval: np.ndarray) -> np.ndarray:
    """Set eigenvalues at round-off level (<= max * size * machine eps, negatives included) to 0.

    For a rank-deficient PSD matrix the zero eigenvalues come out of eigh as +-(round-off); their
    square roots (~1e-8 relative) would otherwise leak into W2. The cutoff is the one
    ``numpy.linalg.matrix_rank`` uses.
    """
    cutoff = max(float(eigval.max(initial=0.0)), 0.0) * eigval.size * np.finfo(np.float64).eps
    return np.where(eigval > cutoff, eigval, 0.0)


def _psd_sqrt(sym: np.ndarray) -> np.ndarray:
    """Principal square root of a symmetric positive semi-definite matrix via eigh."""
    eigval, eigvec = np.linalg.eigh(sym)
    return (eigvec * np.sqrt(_psd_eigvals_floor(eigval))) @ eigvec.T


# --------------------------------------------------------------------------------------------------
# Distances between fitted Gaussians (equation 1 and the Table 2 ablation)
# --------------------------------------------------------------------------------------------------


def _w2_from_moments(g1: _Gaussian, g2: _Gaussian, sqrt_cov1: np.ndarray) -> float:
    """Equation 1 on fitted moments; ``sqrt_cov1 = _psd_sqrt(g1.cov)``, reused across pairs."""
    inner = sqrt_cov1 @ g2.cov @ sqrt_cov1
    inner = 0.5 * (inner + inner.T)
    trace_cross = np.sqrt(_psd_eigvals_floor(np.linalg.eigvalsh(inner))).sum()
    diff = g1.mean - g2.mean
    squared = diff @ diff + np.trace(g1.cov) + np.trace(g2.cov) - 2.0 * trace_cross
    return float(np.sqrt(max(squared, 0.0)))


def gaussian_w2(a: np.ndarray, b: np.ndarray) -> float:
    """2-Wasserstein distance between the Gaussians fitted to two sample sets (paper eq. 1).

    Equation 1 gives the *squared* distance

        W2^2 = ||mu_a - mu_b||^2 + Tr(S_a) + Tr(S_b) - 2 Tr((S_a S_b)^{1/2});

    this function returns ``W2`` itself (the square root), which is what equation 2 sums.

    Conventions:
        * mean = sample mean, S = unbiased sample covariance (ddof=1).
        * ``Tr((S_a S_b)^{1/2})`` is computed as ``Tr((S_a^{1/2} S_b S_a^{1/2})^{1/2})`` (same
          eigenvalues, but the inner matrix is symmetric PSD) with symmetric eigendecompositions.
          Eigenvalues at round-off level (negative, or <= largest * size * machine eps) are set
          to 0, which keeps rank-deficient covariances accurate to machine precision.
        * The squared distance is clamped at 0 before the square root, so identical sets give 0
          up to round-off (about ``sqrt(machine eps) * sqrt(Tr S)``, since it is a difference).
        * Works for rank-deficient covariances (n <= d) and for d = 1. Lower = more similar.

    Args:
        a: samples of the first distribution, shape [n, d], n >= 2.
        b: samples of the second distribution, shape [m, d], m >= 2.

    Returns:
        W2 (not squared) as a Python float, >= 0, symmetric in ``a`` and ``b``.

    Raises:
        ValueError: if an input is not 2-D, has fewer than 2 rows, is not finite, or the feature
            dimensions differ.
    """
    a = _as_sample_set(a, "a")
    b = _as_sample_set(b, "b")
    _check_same_dim(a, b)
    g_a = _fit_gaussian(a)
    return _w2_from_moments(g_a, _fit_gaussian(b), _psd_sqrt(g_a.cov))


def _ridge(g0: _Gaussian, g1: _Gaussian, eps: float) -> np.ndarray:
    """``eps * mean variance * I``, the same ridge for both covariances (1 if both are zero)."""
    d = g0.cov.shape[0]
    scale = 0.5 * (np.trace(g0.cov) + np.trace(g1.cov)) / d
    if not scale > 0.0:
        scale = 1.0
    return eps * scale * np.eye(d)


def _logdet(sym: np.ndarray) -> float:
    sign, value = np.linalg.slogdet(sym)
    if sign <= 0:
        raise ValueError("regularised covariance is not positive definite; increase eps")
    return float(value)


def _kl_from_moments(g0: _Gaussian, g1: _Gaussian, eps: float) -> float:
    ridge = _ridge(g0, g1, eps)
    cov0 = g0.cov + ridge
    cov1 = g1.cov + ridge
    d = cov0.shape[0]
    diff = g1.mean - g0.mean
    trace_term = np.trace(np.linalg.solve(cov1, cov0))
    mahalanobis = diff @ np.linalg.solve(cov1, diff)
    return float(0.5 * (trace_term + mahalanobis - d + _logdet(cov1) - _logdet(cov0)))


def _bhattacharyya_from_moments(g0: _Gaussian, g1: _Gaussian, eps: float) -> float:
    ridge = _ridge(g0, g1, eps)
    cov0 = g0.cov + ridge
    cov1 = g1.cov + ridge
    cov_mid = 0.5 * (cov0 + cov1)
    diff = g1.mean - g0.mean
    mahalanobis = diff @ np.linalg.solve(cov_mid, diff)
    log_ratio = _logdet(cov_mid) - 0.5 * (_logdet(cov0) + _logdet(cov1))
    return float(0.125 * mahalanobis + 0.5 * log_ratio)


def kl_gaussian(a: np.ndarray, b: np.ndarray, *, eps: float = RIDGE_EPS) -> float:
    """KL divergence KL(N_a || N_b) between Gaussians fitted to two sample sets (Table 2 ablation).

    The paper's Table 2 replaces W2 in equation 2 by the KL divergence. For fitted Gaussians

        KL(N_a || N_b) = 1/2 [ Tr(S_b^{-1} S_a) + (mu_b - mu_a)^T S_b^{-1} (mu_b - mu_a) - d
                               + ln det S_b - ln det S_a ].

    Conventions:
        * mean = sample mean, S = unbiased sample covariance (ddof=1).
        * Both covariances get the same ridge ``eps * v * I`` where ``v`` is the mean variance
          ``(Tr S_a + Tr S_b) / (2 d)`` (``v = 1`` if both covariances are zero), so the
          divergence is finite for rank-deficient covariances (n <= d). This is not in the paper.
        * Natural log (nats). Uses ``slogdet`` and ``solve``, never an explicit inverse.
        * Not symmetric: the first argument is the reference distribution. Lower = more similar.

    Args:
        a: samples of N_a, shape [n, d], n >= 2.
        b: samples of N_b, shape [m, d], m >= 2.
        eps: relative ridge (default ``RIDGE_EPS`` = 1e-6).

    Returns:
        KL(N_a || N_b) as a Python float (>= 0 up to round-off).
    """
    a = _as_sample_set(a, "a")
    b = _as_sample_set(b, "b")
    _check_same_dim(a, b)
    return _kl_from_moments(_fit_gaussian(a), _fit_gaussian(b), eps)


def bhattacharyya_gaussian(a: np.ndarray, b: np.ndarray, *, eps: float = RIDGE_EPS) -> float:
    """Bhattacharyya distance between Gaussians fitted to two sample sets (Table 2 ablation).

    With S = (S_a + S_b) / 2,

        D_B = 1/8 (mu_a - mu_b)^T S^{-1} (mu_a - mu_b) + 1/2 ln( det S / sqrt(det S_a det S_b) ).

    Conventions:
        * mean = sample mean, S_a, S_b = unbiased sample covariances (ddof=1).
        * The same ridge as ``kl_gaussian`` (``eps * mean variance * I`` on both covariances).
        * Natural log. Uses ``slogdet`` and ``solve``. Symmetric, >= 0. Lower = more similar.

    Args:
        a: samples, shape [n, d], n >= 2.
        b: samples, shape [m, d], m >= 2.
        eps: relative ridge (default ``RIDGE_EPS`` = 1e-6).

    Returns:
        D_B as a Python float.
    """
    a = _as_sample_set(a, "a")
    b = _as_sample_set(b, "b")
    _check_same_dim(a, b)
    return _bhattacharyya_from_moments(_fit_gaussian(a), _fit_gaussian(b), eps)


# --------------------------------------------------------------------------------------------------
# Class consistency (equation 2)
# --------------------------------------------------------------------------------------------------


def class_consistency(
    cases: Sequence[Mapping[Any, np.ndarray]], *, distance: str = "w2"
) -> float:
    """Class consistency C_cons (paper eq. 2): mean distance between same-class feature sets.

    Equation 2 is ``C_cons = 1/(N(N-1)) * sum_k sum_{i != j} W2(F_i^k, F_j^k)``. We compute

        C_cons = sum_k [ (1 / |P_k|) * sum_{(i, j) in P_k} dist(F_i^k, F_j^k) ]

    where ``P_k`` is the set of *valid* ordered pairs (i != j) for class k: both case i and case j
    contain class k with at least 2 samples. When every case contains every class, ``|P_k| =
    N(N-1)`` and this is exactly equation 2. When a class is missing from a case (the key is
    absent or its array has fewer than 2 rows), the pairs involving it are skipped and the class
    is averaged over the pairs that remain, so a class absent from some cases is not down-weighted.
    A class with fewer than 2 valid cases contributes nothing.

    Conventions:
        * ``distance="w2"`` (default): ``gaussian_w2`` (not squared). ``"bhattacharyya"``:
          ``bhattacharyya_gaussian``. Both are symmetric, so each unordered pair is computed
          once and counted twice. ``"kl"``: ``kl_gaussian`` in both orders, since KL is not
          symmetric. KL and Bhattacharyya use the default ridge ``RIDGE_EPS``.
        * The sum runs over every class id found in ``cases`` (ids in order of first appearance);
          pass foreground classes only if background should be excluded, as in the paper.
        * Lower = more consistent.

    Args:
        cases: N cases; each maps a class id to that class's sampled features [n_k, d]. The
            feature dimension d must agree within a class.
        distance: one of ``DISTANCES``.

    Returns:
        C_cons as a Python float.

    Raises:
        ValueError: unknown ``distance``, inconsistent feature dimensions within a class, or no
            class with a valid pair at all.
    """
    if distance not in DISTANCES:
        raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}")
    cases = list(cases)
    for index, case in enumerate(cases):
        if not isinstance(case, Mapping):
            raise TypeError(
                f"cases[{index}] must be a mapping {{class_id: features [n_k, d]}}, "
                f"got {type(case).__name__}"
            )

    class_ids: dict[Any, None] = {}
    for case in cases:
        class_ids.update(dict.fromkeys(case))

    total = 0.0
    any_valid = False
    for class_id in class_ids:
        fits = []
        for index, case in enumerate(cases):
            if class_id not in case:
                continue
            features = _as_matrix(case[class_id], f"cases[{index}][{class_id!r}]")
            if features.shape[0] >= 2:
                fits.append(_fit_gaussian(features))
        if len(fits) < 2:
            continue
        dims = {fit.mean.shape[0] for fit in fits}
        if len(dims) != 1:
            raise ValueError(f"class {class_id!r} has features of different dimensions {dims}")

        n_valid = len(fits)
        if distance == "kl":
            pair_sum = sum(
                _kl_from_moments(fits[i], fits[j], RIDGE_EPS)
                for i in range(n_valid)
                for j in range(n_valid)
                if i != j
            )
        elif distance == "bhattacharyya":
            pair_sum = 2.0 * sum(
                _bhattacharyya_from_moments(fits[i], fits[j], RIDGE_EPS)
                for i in range(n_valid)
                for j in range(i + 1, n_valid)
            )
        else:
            sqrt_covs = [_psd_sqrt(fit.cov) for fit in fits]
            pair_sum = 2.0 * sum(
                _w2_from_moments(fits[i], fits[j], sqrt_covs[i])
                for i in range(n_valid)
                for j in range(i + 1, n_valid)
            )
        total += pair_sum / (n_valid * (n_valid - 1))
        any_valid = True

    if not any_valid:
        raise ValueError(
            "class_consistency needs at least one class present (with >= 2 samples) in at least "
            "two cases; no valid pair was found"
        )
    return float(total)


# --------------------------------------------------------------------------------------------------
# Feature variety (equations 3 and 4)
# --------------------------------------------------------------------------------------------------


def hyperspherical_energy(v: np.ndarray, s: float = 1.0) -> float:
    """Hyperspherical (Riesz s-) energy E_s of a set of feature vectors (paper eq. 3).

        E_s(v) = sum_{i != j} ||v_i - v_j||^{-s}          for s > 0
        E_0(v) = sum_{i != j} log(1 / ||v_i - v_j||)      for s = 0

    Conventions:
        * The sum is over *ordered* pairs i != j (each unordered pair counted twice), on the rows
          of ``v`` exactly as given: no normalisation onto the unit sphere. Euclidean distance.
        * Distances below ``HSE_DISTANCE_FLOOR`` (1e-12) are raised to it, so coincident points
          give a large finite energy instead of ``inf``.
        * Natural log for s = 0 (then E_0 can be negative). Lower energy = more dispersed.

    Args:
        v: feature vectors, shape [L, d], L >= 2.
        s: energy exponent, s >= 0 (the paper uses s = 1).

    Returns:
        E_s as a Python float.

    Raises:
        ValueError: if ``s < 0``, ``v`` is not 2-D and finite, or has fewer than 2 rows.
    """
    if not s >= 0:
        raise ValueError(f"hyperspherical energy is defined for s >= 0, got s={s}")
    v = _as_matrix(v, "v")
    if v.shape[0] < 2:
        raise ValueError(f"hyperspherical energy needs at least 2 vectors, got {v.shape[0]}")
    distances = np.maximum(pdist(v, metric="euclidean"), HSE_DISTANCE_FLOOR)
    if s == 0:
        terms = -np.log(distances)
    else:
        terms = distances ** (-float(s))
    return float(2.0 * terms.sum())


def feature_variety(cases_global: Sequence[np.ndarray], s: float = 1.0) -> float:
    """Feature variety F_v (paper eq. 4): mean over cases of the inverse hyperspherical energy.

        F_v = (1/N) sum_i 1 / E_s(v_i)

    where ``v_i`` [L, d] are features sampled from the whole of case i (all classes together).

    Conventions:
        * ``E_s`` is ``hyperspherical_energy`` (ordered pairs, no normalisation, distance floor).
        * Higher = more varied (more dispersed features). For s > 0 the result is > 0; for s = 0
          it can be negative, which makes ``log F_v`` in equation 5 undefined.

    Args:
        cases_global: N >= 1 arrays, each [L_i, d] with L_i >= 2.
        s: energy exponent, s >= 0 (the paper uses s = 1).

    Returns:
        F_v as a Python float.

    Raises:
        ValueError: no cases, an invalid case, or an energy of exactly 0 (only possible for s=0).
    """
    cases_global = list(cases_global)
    if not cases_global:
        raise ValueError("feature_variety needs at least one case")
    inverse_energies = []
    for index, v in enumerate(cases_global):
        energy = hyperspherical_energy(v, s)
        if energy == 0.0:
            raise ValueError(f"case {index} has zero hyperspherical energy; 1/E_s is undefined")
        inverse_energies.append(1.0 / energy)
    return float(np.mean(inverse_energies))


# --------------------------------------------------------------------------------------------------
# Overall CC-FV score (equation 5)
# --------------------------------------------------------------------------------------------------


def ccfv_score(
    layers: Sequence[Mapping[str, Any]],
    *,
    use_consistency: bool = True,
    use_variety: bool = True,
    single_scale: bool = False,
    distance: str = "w2",
    s: float = 1.0,
) -> float:
    """CC-FV transferability score T_{m->t} (paper eq. 5). Higher = more transferable.

        T = (1/D) sum_{l=1}^{D} log( F_v^l / C_cons^l )

    with ``F_v^l = feature_variety(layer["global"], s)`` and
    ``C_cons^l = class_consistency(layer["cases"], distance=distance)``.

    Ablations (paper Table 2):
        * ``use_consistency=False``: T = (1/D) sum_l log F_v^l.
        * ``use_variety=False``:     T = (1/D) sum_l -log C_cons^l.
        * ``single_scale=True``:     only the last element of ``layers`` is used (D = 1).
        * ``distance="kl"`` / ``"bhattacharyya"``: replaces W2 in C_cons.

    Conventions: natural log; mean (not sum) over layers. With s = 1 and distance "w2" the score
    is invariant to a common rescaling of all features (F_v and C_cons both scale linearly).

    Args:
        layers: decoder layers ordered from the one nearest the bottleneck to the last one (the
            layer before the final convolution). Each is a mapping with ``"cases"`` (the input of
            ``class_consistency``) and ``"global"`` (the input of ``feature_variety``); only the
            keys the enabled terms need are read.
        use_consistency: include -log C_cons.
        use_variety: include log F_v.
        single_scale: use the last layer only.
        distance: one of ``DISTANCES``.
        s: hyperspherical energy exponent (the paper uses 1).

    Returns:
        T as a Python float.

    Raises:
        ValueError: both terms disabled, no layers, a missing key, or F_v <= 0 / C_cons <= 0
            (log undefined).
    """
    if not (use_consistency or use_variety):
        raise ValueError("at least one of use_consistency and use_variety must be True")
    layers = list(layers)
    if not layers:
        raise ValueError("ccfv_score needs at least one layer")
    if single_scale:
        layers = layers[-1:]

    per_layer = []
    for index, layer in enumerate(layers):
        term = 0.0
        if use_variety:
            if "global" not in layer:
                raise ValueError(f"layer {index} has no 'global' entry (needed for F_v)")
            variety = feature_variety(layer["global"], s)
            if not variety > 0.0:
                raise ValueError(f"layer {index}: F_v = {variety} <= 0, log F_v is undefined")
            term += np.log(variety)
        if use_consistency:
            if "cases" not in layer:
                raise ValueError(f"layer {index} has no 'cases' entry (needed for C_cons)")
            consistency = class_consistency(layer["cases"], distance=distance)
            if not consistency > 0.0:
                raise ValueError(
                    f"layer {index}: C_cons = {consistency} <= 0, log C_cons is undefined"
                )
            term -= np.log(consistency)
        per_layer.append(term)
    return float(np.mean(per_layer))


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
    f = _as_sample_set(features, "features")
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
