"""Distances between Gaussians fitted to feature sets: the 2-Wasserstein distance (CC-FV's, eq. 2), KL
divergence and Bhattacharyya distance (the paper's Table 2 ablations), with numpy and torch backends."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

#: Names accepted by ``class_consistency(distance=...)`` and ``ccfv_score(distance=...)``.
DISTANCES = ("w2", "kl", "bhattacharyya")

#: Names accepted by ``backend=`` of ``gaussian_w2_matrix``, ``class_consistency``, ``ccfv_score``.
BACKENDS = ("numpy", "torch")

# Upper bound on the bytes of the temporaries of one batch of pairs in the batched W2 kernel
# (numpy / torch on CPU, and torch on a GPU). Only the speed and peak memory depend on it.
_W2_CHUNK_BYTES_CPU = 64 * 2**20
_W2_CHUNK_BYTES_GPU = 1024 * 2**20


#: Relative ridge for the KL and Bhattacharyya distances: both covariances get
#: ``RIDGE_EPS * (mean variance of the two fitted Gaussians) * I`` added before any solve/logdet.
RIDGE_EPS = 1e-6


class _Gaussian(NamedTuple):
    """Mean [d] and unbiased covariance [d, d] of one sample set."""

    mean: np.ndarray
    cov: np.ndarray


# --------------------------------------------------------------------------------------------------
# Input checking and Gaussian fitting
# --------------------------------------------------------------------------------------------------


def as_matrix(x: Any, name: str) -> np.ndarray:
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


def as_sample_set(x: Any, name: str) -> np.ndarray:
    """``as_matrix`` plus the ddof=1 requirement of at least 2 samples."""
    arr = as_matrix(x, name)
    if arr.shape[0] < 2:
        raise ValueError(
            f"{name} has {arr.shape[0]} sample(s); fitting a Gaussian with an unbiased (ddof=1) "
            "covariance needs at least 2"
        )
    return arr


def fit_gaussian(x: np.ndarray) -> _Gaussian:
    """Sample mean and unbiased (ddof=1) covariance of the rows of ``x`` [n, d], n >= 2."""
    mean = x.mean(axis=0)
    centred = x - mean
    cov = centred.T @ centred / (x.shape[0] - 1)
    return _Gaussian(mean, 0.5 * (cov + cov.T))


def check_same_dim(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"sample sets have different feature dimensions: {a.shape[1]} and {b.shape[1]}"
        )


def psd_eigvals_floor(eigval: np.ndarray) -> np.ndarray:
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


def check_backend(backend: str, device: Any) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if device is not None and backend != "torch":
        raise ValueError("device= is only used with backend='torch'")


def w2_matrix(sets: Sequence[np.ndarray], backend: str, device: Any) -> np.ndarray:
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
    a = as_sample_set(a, "a")
    b = as_sample_set(b, "b")
    check_same_dim(a, b)
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
    check_backend(backend, device)
    sets = [as_sample_set(x, f"sample_sets[{index}]") for index, x in enumerate(sample_sets)]
    if not sets:
        raise ValueError("gaussian_w2_matrix needs at least one sample set")
    for other in sets[1:]:
        check_same_dim(sets[0], other)
    return w2_matrix(sets, backend, device)


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


def kl_from_moments(g0: _Gaussian, g1: _Gaussian, eps: float) -> float:
    ridge = _ridge(g0, g1, eps)
    cov0 = g0.cov + ridge
    cov1 = g1.cov + ridge
    d = cov0.shape[0]
    diff = g1.mean - g0.mean
    trace_term = np.trace(np.linalg.solve(cov1, cov0))
    mahalanobis = diff @ np.linalg.solve(cov1, diff)
    return float(0.5 * (trace_term + mahalanobis - d + _logdet(cov1) - _logdet(cov0)))


def bhattacharyya_from_moments(g0: _Gaussian, g1: _Gaussian, eps: float) -> float:
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
    a = as_sample_set(a, "a")
    b = as_sample_set(b, "b")
    check_same_dim(a, b)
    return kl_from_moments(fit_gaussian(a), fit_gaussian(b), eps)


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
    a = as_sample_set(a, "a")
    b = as_sample_set(b, "b")
    check_same_dim(a, b)
    return bhattacharyya_from_moments(fit_gaussian(a), fit_gaussian(b), eps)
