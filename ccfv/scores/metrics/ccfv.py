"""CC-FV (Yang et al., MICCAI 2023): class consistency (eq. 2), the hyperspherical energy and feature variety
(eq. 3-4) and the score (eq. 5); docs/metrics.md states every convention."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy.spatial.distance import pdist

from .gaussian import (
    DISTANCES,
    RIDGE_EPS,
    as_matrix,
    bhattacharyya_from_moments,
    check_backend,
    fit_gaussian,
    kl_from_moments,
    w2_matrix,
)

#: Pairwise distances below this are raised to it in ``hyperspherical_energy`` so that coincident
#: feature vectors give a large but finite energy instead of ``inf``.
HSE_DISTANCE_FLOOR = 1e-12


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
    check_backend(backend, device)
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
            features = as_matrix(case[class_id], f"cases[{index}][{class_id!r}]")
            if features.shape[0] >= 2:
                sets.append(features)
        if len(sets) < 2:
            continue
        dims = {x.shape[1] for x in sets}
        if len(dims) != 1:
            raise ValueError(f"class {class_id!r} has features of different dimensions {dims}")

        n_valid = len(sets)
        if distance == "w2":
            pair_sum = float(w2_matrix(sets, backend, device).sum())  # ordered pairs
        elif distance == "kl":
            fits = [fit_gaussian(x) for x in sets]
            pair_sum = sum(
                kl_from_moments(fits[i], fits[j], RIDGE_EPS)
                for i in range(n_valid)
                for j in range(n_valid)
                if i != j
            )
        else:
            fits = [fit_gaussian(x) for x in sets]
            pair_sum = 2.0 * sum(
                bhattacharyya_from_moments(fits[i], fits[j], RIDGE_EPS)
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
    v = as_matrix(v, "v")
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
    check_backend(backend, device)
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
