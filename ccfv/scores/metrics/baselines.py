"""The other baselines of the paper's Table 1 and two more: LEEP, NCE, GBC, TransRate and H-score."""
from __future__ import annotations

from typing import Any

import numpy as np

from .gaussian import as_matrix, as_sample_set, psd_eigvals_floor

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
    p = as_matrix(probs, "probs")
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
    f = as_matrix(features, "features")
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
    f = as_sample_set(features, "features")
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
    f = as_sample_set(features, "features")
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
    eigval = psd_eigvals_floor(eigval)
    keep = eigval > 0.0
    projected = np.einsum("dk,de,ek->k", eigvec[:, keep], cov_g, eigvec[:, keep])
    return float(np.sum(projected / eigval[keep]))
