"""Transferability metrics: CC-FV (paper section 2.2, equations 1-5), the baselines LogME, LEEP,
NCE, GBC, TransRate and H-score, and a reproduction of the arithmetic of the CC-FV authors'
released code (``*_released``).

Every function here is a pure function of numpy arrays. Inputs are converted to float64 and every
computation runs in float64. Shapes follow the paper: a set of sampled voxel features is an array
``[n, d]`` (n voxels, d feature channels).

Conventions shared by all functions (see ``docs/metrics.md`` for the reasons):

* Gaussians are fitted with the sample mean and the unbiased sample covariance (ddof=1), so every
  sample set needs at least 2 rows.
* Logarithms are natural logarithms.
* ``ccfv_score`` and all baselines (``logme``, ``leep``, ``nce``, ``gbc``, ``transrate``,
  ``hscore``) are "higher is better"; ``class_consistency`` and the Gaussian distances are "lower is
  more consistent"; ``feature_variety`` is "higher is more varied".
* ``class_consistency`` / ``gaussian_w2_matrix`` / ``ccfv_score`` accept ``backend="torch"`` (and
  ``device=``) to run the pairwise W2 on a GPU when one is present; torch is imported lazily.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import scipy.linalg
from scipy.spatial.distance import pdist

__all__ = [
    "gaussian_w2",
    "gaussian_w2_matrix",
    "kl_gaussian",
    "bhattacharyya_gaussian",
    "hyperspherical_energy",
    "class_consistency",
    "feature_variety",
    "ccfv_score",
    "logme",
    "leep",
    "nce",
    "gbc",
    "transrate",
    "hscore",
    "gaussian_w2_released",
    "class_consistency_released",
    "feature_variety_released",
    "ccfv_score_released",
    "BACKENDS",
    "DISTANCES",
    "HSE_DISTANCE_FLOOR",
    "RIDGE_EPS",
]

#: Names accepted by ``class_consistency(distance=...)`` and ``ccfv_score(distance=...)``.
DISTANCES = ("w2", "kl", "bhattacharyya")

#: Names accepted by ``backend=`` of ``gaussian_w2_matrix``, ``class_consistency``, ``ccfv_score``.
BACKENDS = ("numpy", "torch")

# Upper bound on the bytes of the temporaries of one batch of pairs in the batched W2 kernel
# (numpy / torch on CPU, and torch on a GPU). Only the speed and peak memory depend on it.
_W2_CHUNK_BYTES_CPU = 64 * 2**20
_W2_CHUNK_BYTES_GPU = 1024 * 2**20

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

    Works row-wise on a stack ``[..., k]`` of spectra. For a rank-deficient PSD matrix the zero
    eigenvalues come out of eigh as +-(round-off); dividing by them (pseudo-inverse in
    ``hscore``) would amplify noise. The cutoff is the one ``numpy.linalg.matrix_rank`` uses.
    """
    if eigval.shape[-1] == 0:
        return eigval
    top = np.maximum(eigval.max(axis=-1, keepdims=True), 0.0)
    cutoff = top * eigval.shape[-1] * np.finfo(np.float64).eps
    return np.where(eigval > cutoff, eigval, 0.0)


# --------------------------------------------------------------------------------------------------
# Distances between fitted Gaussians (equation 1 and the Table 2 ablation)
# --------------------------------------------------------------------------------------------------
#
# Batched W2 (used by gaussian_w2, gaussian_w2_matrix and class_consistency):
#
#   1. every case-class sample set X_i [n_i, d] is factorised ONCE: thin QR of the centred data,
#      X_i - mean_i = Q_i R_i, and F_i = R_i^T / sqrt(n_i - 1) [d, min(n_i, d)], so that
#      S_i = F_i F_i^T exactly (S_i the ddof=1 covariance). Widths are zero-padded to the largest
#      one in the batch (zero columns change nothing);
#   2. a pair (i, j) then costs one product B = F_j^T F_i and the singular values of B:
#      S_i S_j = F_i F_i^T F_j F_j^T has the same nonzero eigenvalues as F_i^T F_j F_j^T F_i =
#      B^T B (cyclic permutation), so Tr((S_i S_j)^{1/2}) = sum_k sqrt(eig_k(B^T B)) = ||B||_*,
#      the sum of the singular values of B;
#   3. W2^2 = ||mu_i - mu_j||^2 + Tr S_i + Tr S_j - 2 ||B||_*, clamped at 0.
#
# Why QR + singular values rather than an eigendecomposition of S_i and an eigvalsh of the
# symmetric product S_i^{1/2} S_j S_i^{1/2}: the eigenvalues of that product are squares of the
# singular values of B, so an eigensolver (absolute error ~ eps * largest eigenvalue) resolves a
# small one only to ~sqrt(eps) * largest singular value, and any threshold that cleans up
# round-off for rank-deficient covariances also discards genuinely small eigenvalues. On
# ill-conditioned covariances (condition ~1e10, typical of decoder features) that left W2 off
# by ~1e-8 relative. QR and the SVD are backward stable on the data scale (absolute error ~ eps *
# largest singular value), need no threshold at all, and handle rank-deficient sets (n <= d,
# constant or duplicated channels) exactly. A pair costs one d x d SVD (values only) instead of
# one eigvalsh: about 1.5-2x slower per pair, for ~1e-11 agreement with sqrtm.
#
# Pairs are processed in batches (numpy: one row i against a block of j's in one GEMM; torch:
# blocks of the upper-triangular pair list) so that no Python-level loop runs per pair.


def _w2_factors(sets: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Means [m, d], covariance factors F [m, d, w] (S_i = F_i F_i^T) and traces Tr S_i [m]."""
    d = sets[0].shape[1]
    width = max(min(x.shape[0], d) for x in sets)
    means = np.empty((len(sets), d))
    factors = np.zeros((len(sets), d, width))
    traces = np.empty(len(sets))
    for index, x in enumerate(sets):
        means[index] = x.mean(axis=0)
        centred = x - means[index]
        r_factor = np.linalg.qr(centred, mode="r")  # [min(n, d), d]
        scale = 1.0 / np.sqrt(x.shape[0] - 1)
        factors[index, :, : r_factor.shape[0]] = r_factor.T * scale
        traces[index] = np.einsum("nd,nd->", centred, centred) * scale * scale
    return means, factors, traces


def _w2_matrix_numpy(sets: Sequence[np.ndarray]) -> np.ndarray:
    """Symmetric [m, m] matrix of W2 between the Gaussians fitted to the sample sets."""
    means, factors, traces = _w2_factors(sets)
    m, d, width = factors.shape
    factors_t = np.ascontiguousarray(factors.transpose(0, 2, 1))  # [m, w, d]
    chunk = max(1, _W2_CHUNK_BYTES_CPU // (8 * (3 * width * width + 2 * d + 4)))
    out = np.zeros((m, m))
    for i in range(m - 1):
        for start in range(i + 1, m, chunk):
            stop = min(m, start + chunk)
            k = stop - start
            # B_j = F_j^T F_i for the whole block in one GEMM: [k*w, d] @ [d, w].
            b = (factors_t[start:stop].reshape(k * width, d) @ factors[i]).reshape(k, width, width)
            cross = np.linalg.svd(b, compute_uv=False).sum(axis=-1)
            diff = means[start:stop] - means[i]
            squared = np.einsum("kd,kd->k", diff, diff) + traces[i] + traces[start:stop]
            w2 = np.sqrt(np.maximum(squared - 2.0 * cross, 0.0))
            out[i, start:stop] = w2
            out[start:stop, i] = w2
    return out


def _torch_device(torch: Any, device: Any) -> Any:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _w2_matrix_torch(sets: Sequence[np.ndarray], device: Any) -> np.ndarray:
    """``_w2_matrix_numpy`` with the pair step in torch float64 (batched ``svdvals``) on ``device``.

    The per-set QR factors are computed with numpy (m small QRs); the O(m^2) pair work runs on the
    device.
    """
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - torch is a dependency of the workflow
        raise ImportError("backend='torch' needs PyTorch; use backend='numpy'") from exc

    dev = _torch_device(torch, device)
    means_np, factors_np, traces_np = _w2_factors(sets)
    m, d, width = factors_np.shape
    means = torch.as_tensor(means_np, device=dev)
    factors = torch.as_tensor(factors_np, device=dev)
    factors_t = factors.transpose(1, 2).contiguous()
    traces = torch.as_tensor(traces_np, device=dev)

    rows, cols = torch.triu_indices(m, m, offset=1, device=dev)
    budget = _W2_CHUNK_BYTES_GPU if dev.type == "cuda" else _W2_CHUNK_BYTES_CPU
    chunk = max(1, budget // (8 * (2 * width * d + 3 * width * width + 2 * d + 4)))
    out = torch.zeros((m, m), dtype=torch.float64, device=dev)
    for start in range(0, rows.numel(), chunk):
        i = rows[start : start + chunk]
        j = cols[start : start + chunk]
        b = torch.matmul(factors_t[j], factors[i])  # F_j^T F_i  [p, w, w]
        cross = torch.linalg.svdvals(b).sum(dim=-1)
        diff = means[j] - means[i]
        squared = (diff * diff).sum(dim=-1) + traces[i] + traces[j] - 2.0 * cross
        w2 = squared.clamp(min=0.0).sqrt()
        out[i, j] = w2
        out[j, i] = w2
    return out.cpu().numpy()


def _check_backend(backend: str, device: Any) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if device is not None and backend != "torch":
        raise ValueError("device= is only used with backend='torch'")


def _w2_matrix(sets: Sequence[np.ndarray], backend: str, device: Any) -> np.ndarray:
    if backend == "torch":
        return _w2_matrix_torch(sets, device)
    return _w2_matrix_numpy(sets)


def gaussian_w2(a: np.ndarray, b: np.ndarray) -> float:
    """2-Wasserstein distance between the Gaussians fitted to two sample sets (paper eq. 1).

    Equation 1 gives the *squared* distance

        W2^2 = ||mu_a - mu_b||^2 + Tr(S_a) + Tr(S_b) - 2 Tr((S_a S_b)^{1/2});

    this function returns ``W2`` itself (the square root), which is what equation 2 sums.

    Conventions:
        * mean = sample mean, S = unbiased sample covariance (ddof=1).
        * ``Tr((S_a S_b)^{1/2})`` is computed without forming a matrix square root: with the
          thin QR of the centred data, ``S = F F^T`` where ``F = R^T / sqrt(n - 1)``, and
          ``Tr((S_a S_b)^{1/2}) = ||F_b^T F_a||_*``, the sum of the singular values of a
          ``min(n_b, d) x min(n_a, d)`` matrix. Both steps are backward stable, so no threshold
          is needed and rank-deficient covariances (n <= d, constant or duplicated channels) and
          ill-conditioned ones are accurate to machine precision on the scale of the data.
        * The squared distance is clamped at 0 before the square root, so identical sets give 0
          up to round-off (about ``sqrt(machine eps) * sqrt(Tr S)``, since it is a difference).
        * Works for d = 1. Lower = more similar. ``gaussian_w2(c*a, c*b) = |c| gaussian_w2(a, b)``.

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
    return float(_w2_matrix_numpy([a, b])[0, 1])


def gaussian_w2_matrix(
    sample_sets: Sequence[np.ndarray], *, backend: str = "numpy", device: Any = None
) -> np.ndarray:
    """All pairwise ``gaussian_w2`` distances between m sample sets, batched (paper eq. 1).

    Each set is factorised once (thin QR of its centred data); each unordered pair then costs one
    product of the two factors and its singular values (size <= d). Same conventions as
    ``gaussian_w2``.

    Args:
        sample_sets: m >= 1 arrays [n_i, d] with n_i >= 2 and a common d.
        backend: ``"numpy"`` (default) or ``"torch"`` (float64; the pair step uses batched
            ``torch.linalg.svdvals``). The torch backend runs on ``device``; ``device=None``
            means ``"cuda"`` when ``torch.cuda.is_available()`` and ``"cpu"`` otherwise.
        device: torch device (only with ``backend="torch"``).

    Returns:
        float64 array [m, m]: symmetric, zero diagonal, entry (i, j) = W2(set_i, set_j).

    Raises:
        ValueError: invalid sets (see ``gaussian_w2``), different dimensions, no sets, or an
            unknown backend.
    """
    _check_backend(backend, device)
    sets = [_as_sample_set(x, f"sample_sets[{index}]") for index, x in enumerate(sample_sets)]
    if not sets:
        raise ValueError("gaussian_w2_matrix needs at least one sample set")
    for other in sets[1:]:
        _check_same_dim(sets[0], other)
    return _w2_matrix(sets, backend, device)


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
    cases: Sequence[Mapping[Any, np.ndarray]],
    *,
    distance: str = "w2",
    backend: str = "numpy",
    device: Any = None,
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
        * W2 is batched per class (``gaussian_w2_matrix``): each case-class sample set is
          factorised once (QR of its centred data), each pair costs one SVD (values only) of
          size <= d.
        * Invariant to the order of the cases and to a common permutation of the feature
          channels; ``C_cons(c * features) = |c| * C_cons(features)`` for W2 (the KL and
          Bhattacharyya distances are scale-invariant up to their ridge).
        * Rank-deficient covariances (n_k <= d), constant or duplicated channels give finite,
          accurate values (W2 needs no threshold; KL/Bhattacharyya add a ridge).
        * Lower = more consistent.

    Args:
        cases: N cases; each maps a class id to that class's sampled features [n_k, d]. The
            feature dimension d must agree within a class.
        distance: one of ``DISTANCES``.
        backend: ``"numpy"`` (default) or ``"torch"`` (float64, batched ``torch.linalg.svdvals``;
            only for ``distance="w2"``). See ``gaussian_w2_matrix``.
        device: torch device for ``backend="torch"``; ``None`` = CUDA when available, else CPU.

    Returns:
        C_cons as a Python float.

    Raises:
        ValueError: unknown ``distance`` or ``backend``, ``backend="torch"`` with a distance other
            than W2, inconsistent feature dimensions within a class, or no class with a valid pair
            at all (for example a single case).
    """
    if distance not in DISTANCES:
        raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}")
    _check_backend(backend, device)
    if backend == "torch" and distance != "w2":
        raise ValueError("backend='torch' is implemented for distance='w2' only")
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
        sets = []
        for index, case in enumerate(cases):
            if class_id not in case:
                continue
            features = _as_matrix(case[class_id], f"cases[{index}][{class_id!r}]")
            if features.shape[0] >= 2:
                sets.append(features)
        if len(sets) < 2:
            continue
        dims = {x.shape[1] for x in sets}
        if len(dims) != 1:
            raise ValueError(f"class {class_id!r} has features of different dimensions {dims}")

        n_valid = len(sets)
        if distance == "w2":
            pair_sum = float(_w2_matrix(sets, backend, device).sum())  # ordered pairs
        elif distance == "kl":
            fits = [_fit_gaussian(x) for x in sets]
            pair_sum = sum(
                _kl_from_moments(fits[i], fits[j], RIDGE_EPS)
                for i in range(n_valid)
                for j in range(n_valid)
                if i != j
            )
        else:
            fits = [_fit_gaussian(x) for x in sets]
            pair_sum = 2.0 * sum(
                _bhattacharyya_from_moments(fits[i], fits[j], RIDGE_EPS)
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
    backend: str = "numpy",
    device: Any = None,
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

    Conventions: natural log; mean (not sum) over layers.

    Common scaling of the features (every feature of every layer multiplied by c > 0), for s > 0
    and distance "w2": C_cons scales by c and E_s by c^{-s}, so F_v scales by c^s and

        T(c * features) = T(features) + (s - 1) * log c        (both terms)
        T(c * features) = T(features) + s * log c              (use_consistency=False)
        T(c * features) = T(features) - log c                  (use_variety=False)

    In particular, the paper's choice s = 1 makes T invariant to the scale of the features. (For
    s = 0, E_0 shifts additively instead, and the KL / Bhattacharyya distances are scale-invariant
    up to their ridge.) T is also invariant to the order of the cases and to a common permutation
    of the feature channels.

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
        backend: backend of the W2 computation in ``class_consistency`` ("numpy" or "torch").
        device: torch device for ``backend="torch"`` (``None`` = CUDA when available).

    Returns:
        T as a Python float.

    Raises:
        ValueError: both terms disabled, no layers, a missing key, or F_v <= 0 / C_cons <= 0
            (log undefined).
    """
    if not (use_consistency or use_variety):
        raise ValueError("at least one of use_consistency and use_variety must be True")
    _check_backend(backend, device)
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
            consistency = class_consistency(
                layer["cases"], distance=distance, backend=backend, device=device
            )
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


# --------------------------------------------------------------------------------------------------
# Label-based and feature-based baselines: LEEP, NCE, GBC, TransRate, H-score
# --------------------------------------------------------------------------------------------------

#: Rows of ``probs`` in ``leep`` must sum to 1 within this absolute tolerance.
PROB_SUM_ATOL = 1e-4

#: Per-dimension variance floor of ``gbc`` (google-research/stable_transfer ``gbc.py``).
GBC_VARIANCE_FLOOR = 1e-4

#: Principal components ``gbc`` keeps by default: the authors' experiment configurations
#: (google-research/stable_transfer ``config_transferability_source_selection*.py``,
#: ``gbc.pca_reduction = 64``).
GBC_PCA_COMPONENTS = 64

#: ``torch.nn.functional.normalize``'s default eps: a row norm below it is raised to it.
_TORCH_NORMALIZE_EPS = 1e-12


def _as_labels(labels: Any, n: int, name: str = "labels") -> tuple[np.ndarray, np.ndarray]:
    """Validate a label vector of length n; return (sorted unique values, index of each row)."""
    arr = np.asarray(labels)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError(f"{name} must have shape [{n}], got {arr.shape}")
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            raise ValueError(f"{name} must hold integer class ids")
    elif arr.dtype.kind not in "iub":
        raise ValueError(f"{name} must hold integer class ids, got dtype {arr.dtype}")
    values, index = np.unique(arr, return_inverse=True)
    return values, index.reshape(-1)


def leep(probs: np.ndarray, labels: np.ndarray) -> float:
    """LEEP, the Log Expected Empirical Prediction (Nguyen et al., "LEEP: A New Measure to Evaluate
    Transferability of Learned Representations", ICML 2020, section 3).

    With theta(x_i) = ``probs[i]`` the source model's softmax over its Z source classes:

        P(y, z) = (1/n) sum_{i: y_i = y} theta(x_i)_z        (empirical joint, soft counts)
        P(z)    = sum_y P(y, z),     P(y | z) = P(y, z) / P(z)
        LEEP    = (1/n) sum_i log( sum_z P(y_i | z) theta(x_i)_z )

    Conventions:
        * Natural log. LEEP <= 0; higher = more transferable.
        * Target classes are the values present in ``labels``; a source class z that receives no
          probability mass (P(z) = 0) has P(y|z) := 0 and contributes nothing (its theta is 0
          for every sample).
        * ``probs`` is used as given (no renormalisation); each row must be >= 0 and sum to 1
          within ``PROB_SUM_ATOL``. The result is then always finite: every inner sum is
          >= sum_z theta_z^2 / n > 0.
        * Invariant to the order of the samples and to a permutation of the source classes.

    Args:
        probs: [n, Z] source-model class probabilities, n >= 1.
        labels: [n] integer target labels.

    Returns:
        LEEP as a Python float.

    Raises:
        ValueError: bad shapes, negative or non-finite probabilities, rows not summing to 1.
    """
    p = _as_matrix(probs, "probs")
    n = p.shape[0]
    if n == 0 or p.shape[1] == 0:
        raise ValueError(f"probs must be non-empty, got shape {p.shape}")
    if np.any(p < 0.0):
        raise ValueError("probs has negative entries; pass softmax probabilities, not logits")
    if np.any(np.abs(p.sum(axis=1) - 1.0) > PROB_SUM_ATOL):
        raise ValueError(f"each row of probs must sum to 1 (within {PROB_SUM_ATOL})")
    classes, index = _as_labels(labels, n)
    one_hot = np.zeros((n, classes.size))
    one_hot[np.arange(n), index] = 1.0
    joint = one_hot.T @ p / n  # [C, Z]
    marginal = joint.sum(axis=0)  # [Z]
    conditional = np.divide(
        joint, marginal, out=np.zeros_like(joint), where=marginal[None, :] > 0.0
    )
    expected = np.einsum("iz,iz->i", p, conditional[index])
    return float(np.mean(np.log(expected)))


def nce(source_labels: np.ndarray, labels: np.ndarray) -> float:
    """NCE, Negative Conditional Entropy -H(Y | Z) (Tran et al., "Transferability and Hardness
    of Supervised Classification Tasks", ICCV 2019).

    With hard source labels z_i (e.g. the argmax of the source model's prediction) and target
    labels y_i, using the empirical joint distribution P(y, z) = #{i: y_i = y, z_i = z} / n:

        NCE = -H(Y | Z) = sum_{y, z: P(y,z) > 0} P(y, z) log( P(y, z) / P(z) ).

    Conventions: natural log; NCE <= 0 (0 when y is a function of z); higher = more
    transferable; label values are used only as identities (invariant to relabelling).

    Args:
        source_labels: [n] integer hard labels in the source label space, n >= 1.
        labels: [n] integer target labels.

    Returns:
        NCE as a Python float.
    """
    source = np.asarray(source_labels)
    if source.ndim != 1 or source.shape[0] == 0:
        raise ValueError(f"source_labels must be a non-empty 1-D array, got shape {source.shape}")
    n = source.shape[0]
    z_values, z_index = _as_labels(source, n, "source_labels")
    y_values, y_index = _as_labels(labels, n)
    joint = np.zeros((z_values.size, y_values.size))
    np.add.at(joint, (z_index, y_index), 1.0)
    joint /= n
    marginal = joint.sum(axis=1, keepdims=True)
    nz = joint > 0.0
    return float(np.sum(joint[nz] * np.log((joint / marginal)[nz])))


def _pca_reduce(f: np.ndarray, n_components: int) -> np.ndarray:
    """Project [n, d] onto its top ``n_components`` principal axes (centred, exact SVD), as
    ``sklearn.decomposition.PCA(n_components, svd_solver="full").fit_transform`` does up to the sign of
    each component; nothing to reduce (returned as given) when d <= n_components."""
    n, d = f.shape
    if d <= n_components:
        return f
    centred = f - f.mean(axis=0, keepdims=True)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return centred @ vt[: min(n_components, vt.shape[0])].T


def gbc(
    features: np.ndarray,
    labels: np.ndarray,
    gaussian: str = "spherical",
    pca_components: int | None = GBC_PCA_COMPONENTS,
) -> float:
    """GBC, Gaussian Bhattacharyya Coefficient (Pándy et al., "Transferability Estimation using
    Bhattacharyya Class Separability", CVPR 2022), computed as
    the authors' released code does (google-research ``stable_transfer/transferability/gbc.py``).

    Per target class c: mean mu_c and *population* variance (ddof=0) per dimension, each
    floored at ``GBC_VARIANCE_FLOOR`` = 1e-4. Then

        D_B(c1, c2) = 1/8 sum_d (mu1_d - mu2_d)^2 / s_d + 1/2 [ sum log s - 1/2 sum log v1
                                                                - 1/2 sum log v2 ],
        s = (v1 + v2) / 2,
        GBC = - sum_{c1} sum_{c2 != c1} exp(-D_B(c1, c2))    (ordered pairs: each pair twice).

    ``gaussian="diagonal"``: v is the floored variance vector and the log sums run over the d
    dimensions. ``gaussian="spherical"`` (the default of the authors' source-selection configuration
    for classification; their segmentation configuration uses "diagonal", see docs/metrics.md): v is the
    *mean* of the floored
    variance vector, a scalar, and -- exactly as in the released code -- the log sums run over
    that single scalar, i.e. the log-determinant term is counted once, not d times as the exact
    Bhattacharyya distance between isotropic Gaussians would have it (the Mahalanobis term does
    sum over all d dimensions). We reproduce this; see ``docs/metrics.md``.

    **PCA first** (``pca_components=64``, default): the authors' pipeline reduces the features to
    64 dimensions with PCA before GBC (``pca_reduction = 64`` in ``config_transferability_source_
    selection*.py``, applied by ``TransferExperiment.model_output_on_target_train_dataset`` through
    ``features_targets_utils.pca_reduction``: ``sklearn.decomposition.PCA(64, svd_solver="full")``).
    We project onto the top ``pca_components`` principal axes of the centred features (exact SVD);
    with d <= ``pca_components`` there is nothing to reduce and the features are used as given (the
    released code would raise there); with n < ``pca_components`` < d at most n axes are kept.
    ``pca_components=None`` uses the features as given.

    Conventions: natural log; GBC <= 0, higher (closer to 0) = classes more separable = more
    transferable; float64 (the released code casts the PCA output to float32 and runs in
    TensorFlow float32). Invariant to the order of samples and to a permutation of the feature
    channels. Not scale-invariant (the floor).

    Args:
        features: [n, d] target features from the source model.
        labels: [n] integer target labels; at least 2 distinct classes.
        gaussian: ``"spherical"`` (default) or ``"diagonal"``.
        pca_components: reduce to this many principal components first (default 64, as the
            authors' pipeline); None: no reduction.

    Returns:
        GBC as a Python float.

    Raises:
        ValueError: fewer than 2 classes, bad shapes, non-finite features, unknown ``gaussian``,
            ``pca_components`` not a positive integer or None.
    """
    if gaussian not in ("spherical", "diagonal"):
        raise ValueError(f"gaussian must be 'spherical' or 'diagonal', got {gaussian!r}")
    if pca_components is not None and (
        isinstance(pca_components, bool)
        or not isinstance(pca_components, (int, np.integer))
        or pca_components < 1
    ):
        raise ValueError(f"pca_components must be a positive integer or None, got {pca_components!r}")
    f = _as_matrix(features, "features")
    classes, index = _as_labels(labels, f.shape[0])
    if classes.size < 2:
        raise ValueError("gbc needs at least 2 classes (it measures separability between classes)")
    if pca_components is not None:
        f = _pca_reduce(f, int(pca_components))
    counts = np.bincount(index, minlength=classes.size).astype(np.float64)
    means = np.zeros((classes.size, f.shape[1]))
    np.add.at(means, index, f)
    means /= counts[:, None]
    centred = f - means[index]
    variances = np.zeros_like(means)
    np.add.at(variances, index, centred * centred)
    variances = np.maximum(variances / counts[:, None], GBC_VARIANCE_FLOOR)
    if gaussian == "spherical":
        variances = variances.mean(axis=1, keepdims=True)  # [C, 1]: one scalar per class

    avg = 0.5 * (variances[:, None, :] + variances[None, :, :])  # [C, C, 1 or d]
    diff2 = (means[:, None, :] - means[None, :, :]) ** 2  # [C, C, d]
    mahalanobis = (diff2 / avg).sum(axis=-1) / 8.0
    log_var = np.log(variances).sum(axis=-1)  # [C]
    log_term = np.log(avg).sum(axis=-1) - 0.5 * (log_var[:, None] + log_var[None, :])
    distance = mahalanobis + 0.5 * log_term
    coefficient = np.exp(-distance)
    np.fill_diagonal(coefficient, 0.0)
    return float(-coefficient.sum())


def _transrate_rate(z: np.ndarray, eps: float) -> tuple[float, np.ndarray]:
    """0.5 * sum log(1 + |eig(Z^T Z / n)| / eps) and the eigenvalues (as in Long-Kai/TransRate)."""
    gram = z.T @ z / z.shape[0]
    eigval = np.abs(np.linalg.eigvalsh(0.5 * (gram + gram.T)))
    return 0.5 * float(np.log1p(eigval / eps).sum()), eigval


def transrate(
    features: np.ndarray,
    labels: np.ndarray,
    eps: float = 1e-4,
    *,
    rank_normalise: bool = True,
    row_normalise: bool = True,
) -> float:
    """TransRate (Huang et al., "Frustratingly Easy Transferability Estimation", ICML 2022) as the
    authors' released pipeline computes it
    (github.com/Long-Kai/TransRate at 5b59b64: ``generate_transrate/experiment_builder_get_eigens.py``
    extracts and normalises the features, ``generate_transrate/transrate.py`` stores the eigenvalues,
    ``extract_result_utils.process_transrate_logs`` turns them into the score with its defaults reg=1,
    all eigenvalues, normalize_opt="rank").

        X      = features with every row L2-normalised            (row_normalise, default)
        Z      = X - mean(X)                                       (centred with the global mean)
        Z      = Z with every row L2-normalised again              (row_normalise, default)
        R(A)   = 1/2 log det(I_d + A^T A / (n_A * eps)) = 1/2 sum_i log(1 + lambda_i / eps),
                 lambda_i = eigenvalues of A^T A / n_A           (rate-distortion coding rate)
        TrR    = [ R(Z) - sum_k (n_k / n) R(Z_k) ] / rank(Z^T Z / n)

    where Z_k are the rows of Z with label k (not re-centred: the class-conditional rates use the
    global mean, as in the released code) and the rank is ``numpy.linalg.matrix_rank``'s (cutoff
    largest eigenvalue * d * machine eps).

    Conventions and where they come from:
        * **Row normalisation** (``row_normalise=True``, default): the released feature extraction
          L2-normalises every feature row (``torch.nn.functional.normalize``: a norm below 1e-12
          is raised to 1e-12, so a zero row stays zero), centres, and ``pre_transrate(...,
          normalize=True)`` L2-normalises every centred row again (the released path of the
          formula; only the projection variant ``use_proj_Z``, not implemented here, skips it).
          Without it ``eps`` is measured against the model's arbitrary activation scale. ``row_normalise=False`` centres the features as given (the default of
          ccfv before issue 13).
        * ``eps`` multiplies n directly: the released code's ``eps`` *is* the paper's eps^2 (its
          docstring: "value of eps^2 in transrate"); there is no extra factor d (the factor d/n of
          MCR^2's coding rate does not appear in the TransRate code).
        * Class rates are weighted by n_k / n (released code). The unofficial snippet that
          circulates as "TransRate" (and the paper's appendix code) uses ``R(Z) - (1/K) sum_k
          R(Z_k)`` with K = max label + 1 and no rank division; that is *not* what we compute.
        * **Rank division** (``rank_normalise=True``, default): the released evaluation divides
          both rates by rank(Z^T Z / n) (``normalize_opt='rank'``, used for every reported number);
          ``rank_normalise=False`` returns the undivided ``R(Z) - sum_k (n_k/n) R(Z_k)``.
        * Not implemented: the released code's projection variant (``use_proj_Z``) and the
          per-experiment choices of eps and ``normalize_eigz``.
        * Natural log; higher = more transferable. With ``row_normalise=True`` invariant to the
          scale of each feature row; without it, depends on the feature scale (through eps).
          Invariant to the order of samples and to a permutation of the feature channels.

    Args:
        features: [n, d], n >= 2.
        labels: [n] integer target labels.
        eps: distortion (the paper's eps^2), > 0. Default 1e-4 as in the released code.
        rank_normalise: divide by rank(Z^T Z / n) (released code's default).
        row_normalise: L2-normalise the rows, centre, L2-normalise the centred rows (released
            pipeline, default); False: centre only.

    Returns:
        TransRate as a Python float.

    Raises:
        ValueError: eps <= 0, bad shapes, non-finite features, constant features (rank 0, or with
            ``row_normalise=True`` a centred row that is zero and cannot be normalised).
    """
    if not eps > 0.0:
        raise ValueError(f"eps must be > 0, got {eps}")
    f = _as_sample_set(features, "features")
    n, d = f.shape
    classes, index = _as_labels(labels, n)
    if row_normalise:
        f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), _TORCH_NORMALIZE_EPS)
    z = f - f.mean(axis=0, keepdims=True)
    if row_normalise:
        norms = np.linalg.norm(z, axis=1, keepdims=True)
        # The mean of n unit rows carries round-off of ~n * eps: a centred row below that is zero,
        # and normalising it would blow the round-off up to a unit vector.
        if np.any(norms <= n * d * np.finfo(np.float64).eps):
            raise ValueError("a centred feature row is zero (it equals the mean row; constant features?); "
                             "it cannot be L2-normalised")
        z = z / norms
    rate, eigval = _transrate_rate(z, eps)
    rank = int(np.count_nonzero(eigval > eigval.max() * d * np.finfo(np.float64).eps))
    if rank == 0:
        raise ValueError("features are constant (rank 0 after centring); TransRate is undefined")
    conditional = 0.0
    for k in range(classes.size):
        rows = z[index == k]
        conditional += rows.shape[0] / n * _transrate_rate(rows, eps)[0]
    score = rate - conditional
    return float(score / rank if rank_normalise else score)


def hscore(features: np.ndarray, labels: np.ndarray) -> float:
    """H-score (Bao et al., "An Information-Theoretic Approach to Transferability in Task
    Transfer Learning", ICIP 2019): H(f) = tr( cov(f)^+ cov(E[f | y]) ).

    Covariance conventions (those of the authors' code, YaojieBao/An-Information-theoretic-
    Metric-of-Transferability ``getCov``/``getHscore``): both covariances are sample covariances
    over the n samples with the same 1/(n-1) normaliser (which cancels in the ratio, so ddof does
    not matter); E[f | y] is the per-sample class mean (so cov(E[f|y]) = sum_k n_k/(n-1)
    (mu_k - mu)(mu_k - mu)^T, the between-class covariance).

    The pseudo-inverse is taken through ``eigh`` of the symmetric cov(f) with the
    ``matrix_rank`` cutoff (eigenvalues <= largest * d * machine eps count as 0), instead of the
    authors' ``pinv(rcond=1e-15)``: with constant, duplicated or otherwise collinear channels or
    n <= d, the 1e-15 cutoff keeps round-off eigenvalues and returns noise; ours returns the
    value on the column space of the features, so the score is exactly invariant to adding
    duplicated or constant channels.

    Conventions: higher = more transferable; 0 <= H <= number of classes - 1 (0 for a single
    class or constant features). Invariant to any invertible linear map of the features (scale,
    channel permutation) and to the order of samples.

    Args:
        features: [n, d], n >= 2.
        labels: [n] integer target labels.

    Returns:
        H-score as a Python float.
    """
    f = _as_sample_set(features, "features")
    n, d = f.shape
    classes, index = _as_labels(labels, n)
    mean = f.mean(axis=0)
    centred = f - mean
    cov_f = centred.T @ centred / (n - 1)
    counts = np.bincount(index, minlength=classes.size).astype(np.float64)
    class_means = np.zeros((classes.size, d))
    np.add.at(class_means, index, f)
    class_means /= counts[:, None]
    g = class_means[index] - mean
    cov_g = g.T @ g / (n - 1)
    eigval, eigvec = np.linalg.eigh(0.5 * (cov_f + cov_f.T))
    eigval = _psd_eigvals_floor(eigval)
    keep = eigval > 0.0
    projected = np.einsum("dk,de,ek->k", eigvec[:, keep], cov_g, eigvec[:, keep])
    return float(np.sum(projected / eigval[keep]))


# --------------------------------------------------------------------------------------------------
# Reproduction of the CC-FV authors' released code (EndoluminalSurgicalVision-IMR/CCFV)
# --------------------------------------------------------------------------------------------------
#
# utils/ccfv.py (commit 71b7f56) and main.py (two stored versions, 4d5ee93 and f034f92, which
# differ only in the final ratio). These functions reproduce that arithmetic; they are slow (one
# scipy.linalg.sqrtm per pair) and exist to compare against, not to score with. Where the released
# code would crash or return NaN, they raise ValueError instead.

#: ``cal_variety``'s additive constant inside the square root of the squared distance.
RELEASED_VARIETY_EPS = 1e-3

#: Accepted values of ``ccfv_score_released(ratio=...)``.
RELEASED_RATIOS = ("variety_over_distance", "distance_over_variety")


def gaussian_w2_released(a: np.ndarray, b: np.ndarray) -> float:
    """W2 exactly as the released ``utils/ccfv.py::cal_w_distance`` computes it.

        w = ||mu_a - mu_b||^2 + Tr S_a + Tr S_b - 2 Tr(sqrtm(S_a @ S_b));   return sqrt(|w|)

    with S = ``np.cov`` (ddof=1) and ``scipy.linalg.sqrtm`` of the non-symmetric product. When
    sqrtm returns a complex matrix (singular or ill-conditioned products), ``|w|`` is the complex
    modulus, as in the released code; a round-off negative ``w`` becomes positive. Differences
    from ``gaussian_w2`` are therefore at round-off level for well-conditioned full-rank
    covariances and can be larger for rank-deficient ones. d = 1 is supported (the released code
    would fail on the 0-d ``np.cov``).

    Raises:
        ValueError: invalid inputs (see ``gaussian_w2``) or a non-finite sqrtm result.
    """
    a = _as_sample_set(a, "a")
    b = _as_sample_set(b, "b")
    _check_same_dim(a, b)
    delta = a.mean(axis=0) - b.mean(axis=0)
    cov_a = np.atleast_2d(np.cov(a.T))
    cov_b = np.atleast_2d(np.cov(b.T))
    cross = scipy.linalg.sqrtm(cov_a.dot(cov_b))
    w = np.sum(delta**2) + cov_a.trace() + cov_b.trace() - 2.0 * cross.trace()
    value = float(np.sqrt(abs(w)))
    if not np.isfinite(value):
        raise ValueError("scipy.linalg.sqrtm(S_a @ S_b) returned a non-finite result")
    return value


def feature_variety_released(case_vectors: np.ndarray) -> float:
    """``utils/ccfv.py::cal_variety``: mean over unordered pairs of 1/sqrt(||v_i - v_j||^2 + 1e-3).

    ``case_vectors`` [N, d] holds one vector per case (``main.py`` passes each case's mean
    sampled feature). Squared distances use the expansion ``|v_i|^2 + |v_j|^2 - 2 v_i.v_j`` as in
    the released code. This is a normalised hyperspherical energy E_1, *not* its inverse: it grows
    as the case vectors get closer (less varied), unlike the paper's F_v (eq. 4).

    Raises:
        ValueError: fewer than 2 cases (the released code divides by zero), non-finite input, or
            a non-finite result (round-off making ``d^2 + 1e-3`` negative for huge features).
    """
    v = _as_matrix(case_vectors, "case_vectors")
    count = v.shape[0]
    if count < 2:
        raise ValueError(f"feature_variety_released needs at least 2 cases, got {count}")
    row_norms = np.sum(v * v, axis=1)
    squared = row_norms[:, None] + row_norms[None, :] - 2.0 * (v @ v.T)
    with np.errstate(invalid="ignore"):
        inverse = 1.0 / np.sqrt(squared + RELEASED_VARIETY_EPS)
    value = float(np.sum(np.triu(inverse, k=1)) / count / (count - 1) * 2)
    if not np.isfinite(value):
        raise ValueError("released feature variety is not finite (round-off in the distances)")
    return value


def _released_classes(
    cases: Sequence[Mapping[Any, np.ndarray]], background: Any
) -> list[Any]:
    ids: set[Any] = set()
    for index, case in enumerate(cases):
        if not isinstance(case, Mapping):
            raise TypeError(f"cases[{index}] must be a mapping, got {type(case).__name__}")
        ids.update(case)
    ids.discard(background)
    try:
        return sorted(ids)
    except TypeError as exc:
        raise ValueError("class ids must be sortable (the released code loops over 1..K)") from exc


def class_consistency_released(
    cases: Sequence[Mapping[Any, np.ndarray]],
    *,
    background: Any = 0,
    num_classes: int | None = None,
) -> float:
    """The class-consistency accumulator of the released ``main.py::evaluate`` (per layer).

        w = 0
        for k in foreground classes, ascending:
            w += sum_{i < j} gaussian_w2_released(F_i^k, F_j^k)       (unordered pairs)
            w += w / (N * N / 2) / num_classes

    The second line adds the *running* total (all classes so far) back onto itself, so the result
    is not equation 2: class k's pair sum is multiplied by (1 + 2 / (N^2 K))^(K - k + 1), it is a
    sum (not a mean) over pairs and classes, and it depends on the class order. We reproduce this.

    Args:
        cases: N >= 2 cases mapping class id -> features [n, d]; every case must contain every
            foreground class with >= 2 samples (the released code raises KeyError or returns NaN
            otherwise; we raise ValueError).
        background: the class id skipped (``lb == 0`` in the released code).
        num_classes: ``configs["num_classes"]``; default: the number of foreground ids found.

    Returns:
        The released accumulator as a Python float.
    """
    cases = list(cases)
    if len(cases) < 2:
        raise ValueError(f"class_consistency_released needs at least 2 cases, got {len(cases)}")
    classes = _released_classes(cases, background)
    if not classes:
        raise ValueError("no foreground class found")
    k_classes = len(classes) if num_classes is None else int(num_classes)
    if k_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    sets: dict[Any, list[np.ndarray]] = {}
    for class_id in classes:
        sets[class_id] = []
        for index, case in enumerate(cases):
            if class_id not in case:
                raise ValueError(
                    f"class {class_id!r} is absent from case {index}; the released code needs "
                    "every foreground class in every case (use class_consistency instead)"
                )
            sets[class_id].append(_as_sample_set(case[class_id], f"cases[{index}][{class_id!r}]"))
    count = len(cases)
    w_distance = 0.0
    for class_id in classes:
        feats = sets[class_id]
        for i in range(count):
            for j in range(i + 1, count):
                w_distance += gaussian_w2_released(feats[i], feats[j])
        w_distance += w_distance / (count * count / 2) / k_classes
    return float(w_distance)


def ccfv_score_released(
    layers: Sequence[Mapping[str, Any]],
    *,
    background: Any = 0,
    num_classes: int | None = None,
    ratio: str = "variety_over_distance",
) -> float:
    """The CC-FV score as the released ``main.py::evaluate`` computes it.

        score = sum over layers of log(var_f / w)      (ratio="variety_over_distance", main.py
                                                        version 4d5ee93)
             or sum over layers of log(w / var_f)      (ratio="distance_over_variety", version
                                                        f034f92)

    with ``w = class_consistency_released(layer["cases"])`` and ``var_f =
    feature_variety_released(case means)``, where each case's vector is the mean of *all* its
    sampled features, background included (the released code concatenates every label's samples
    and averages them). The two stored versions of ``main.py`` differ only in this ratio and we
    could not establish which is the later one, so both are offered. Neither matches equation 5
    (mean over layers of log(F_v / C_cons) with F_v = mean 1/E_s): see ``docs/metrics.md``.

    Args:
        layers: mappings with ``"cases"``: N >= 2 dicts class id -> features [n, d] (background
            included if it should enter the case means).
        background: class id excluded from the consistency term.
        num_classes: ``configs["num_classes"]`` (default: number of foreground ids found).
        ratio: one of ``RELEASED_RATIOS``.

    Returns:
        The released score as a Python float.

    Raises:
        ValueError: no layers, unknown ratio, a layer without ``"cases"``, invalid cases (see
            ``class_consistency_released``) or a non-positive term (log undefined).
    """
    if ratio not in RELEASED_RATIOS:
        raise ValueError(f"ratio must be one of {RELEASED_RATIOS}, got {ratio!r}")
    layers = list(layers)
    if not layers:
        raise ValueError("ccfv_score_released needs at least one layer")
    total = 0.0
    for index, layer in enumerate(layers):
        if "cases" not in layer:
            raise ValueError(f"layer {index} has no 'cases' entry")
        cases = list(layer["cases"])
        w_distance = class_consistency_released(
            cases, background=background, num_classes=num_classes
        )
        means = []
        for case_index, case in enumerate(cases):
            arrays = [_as_matrix(x, f"cases[{case_index}]") for x in case.values()]
            means.append(np.concatenate(arrays, axis=0).mean(axis=0))
        var_f = feature_variety_released(np.stack(means))
        if not (w_distance > 0.0 and var_f > 0.0):
            raise ValueError(f"layer {index}: w = {w_distance}, var_f = {var_f}; log undefined")
        if ratio == "variety_over_distance":
            total += float(np.log(var_f / w_distance))
        else:
            total += float(np.log(w_distance / var_f))
    return total
