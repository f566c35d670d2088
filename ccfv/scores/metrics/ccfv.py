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

#: How the hyperspherical energy reduces its pair terms: eq. 3's sum, or their mean (CC-FV's default here).
ENERGY_REDUCTIONS = ("sum", "mean")

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


def hyperspherical_energy(v: np.ndarray, s: float = 1.0, reduction: str = "sum") -> float:
    """Hyperspherical (Riesz s-) energy E_s of a set of feature vectors (paper eq. 3).

        E_s(v) = sum_{i != j} ||v_i - v_j||^{-s}          for s > 0
        E_0(v) = sum_{i != j} log(1 / ||v_i - v_j||)      for s = 0

    ``reduction="mean"`` divides by the L(L-1) ordered pairs: the mean pair term, whose expectation does
    not depend on how many vectors were sampled (the sum grows like L^2, so ``log 1/E`` carries
    ``-log L(L-1)``; docs/metrics.md, "Comparable across architectures").

    Conventions:
        * The sum is over *ordered* pairs i != j (each unordered pair counted twice), on the rows
          of ``v`` exactly as given: no normalisation onto the unit sphere. Euclidean distance.
        * Distances below ``HSE_DISTANCE_FLOOR`` (1e-12) are raised to it, so coincident points
          give a large finite energy instead of ``inf``.
        * Natural log for s = 0 (then E_0 can be negative). Lower energy = more dispersed.

    Args:
        v: feature vectors, shape [L, d], L >= 2.
        s: energy exponent, s >= 0 (the paper uses s = 1).
        reduction: ``"sum"`` (eq. 3 as written) or ``"mean"`` (over the L(L-1) ordered pairs).

    Returns:
        E_s as a Python float.

    Raises:
        ValueError: if ``s < 0``, ``reduction`` is unknown, ``v`` is not 2-D and finite, or has fewer
            than 2 rows.
    """
    if not s >= 0:
        raise ValueError(f"hyperspherical energy is defined for s >= 0, got s={s}")
    if reduction not in ENERGY_REDUCTIONS:
        raise ValueError(f"reduction must be one of {ENERGY_REDUCTIONS}, got {reduction!r}")
    v = as_matrix(v, "v")
    if v.shape[0] < 2:
        raise ValueError(f"hyperspherical energy needs at least 2 vectors, got {v.shape[0]}")
    distances = np.maximum(pdist(v, metric="euclidean"), HSE_DISTANCE_FLOOR)
    if s == 0:
        terms = -np.log(distances)
    else:
        terms = distances ** (-float(s))
    if reduction == "mean":
        return float(terms.mean())  # each unordered pair twice over L(L-1) ordered pairs: the same mean
    return float(2.0 * terms.sum())


def feature_variety(cases_global: Sequence[np.ndarray], s: float = 1.0, energy: str = "mean") -> float:
    """Feature variety F_v (paper eq. 4): mean over cases of the inverse hyperspherical energy.

        F_v = (1/N) sum_i 1 / E_s(v_i)

    where ``v_i`` [L, d] are features sampled from the whole of case i (all classes together).

    Conventions:
        * ``E_s`` is ``hyperspherical_energy`` (ordered pairs, no normalisation, distance floor) with
          ``reduction=energy``: ``"mean"`` (default) over the L(L-1) pairs, so that F_v does not depend on
          how many voxels a model's sampling keeps; ``"sum"``: eq. 3 as written (F_v then scales like
          1/L^2).
        * Higher = more varied (more dispersed features). For s > 0 the result is > 0; for s = 0
          it can be negative, which makes ``log F_v`` in equation 5 undefined.

    Args:
        cases_global: N >= 1 arrays, each [L_i, d] with L_i >= 2.
        s: energy exponent, s >= 0 (the paper uses s = 1).
        energy: ``"mean"`` or ``"sum"`` (see above).

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
        value = hyperspherical_energy(v, s, reduction=energy)
        if value == 0.0:
            raise ValueError(f"case {index} has zero hyperspherical energy; 1/E_s is undefined")
        inverse_energies.append(1.0 / value)
    return float(np.mean(inverse_energies))


# --------------------------------------------------------------------------------------------------
# Overall CC-FV score (equation 5)
# --------------------------------------------------------------------------------------------------


#: Which global voxels F_v reads: every one sampled, or only those whose input is not locally constant.
GLOBAL_VOXELS = ("all", "varied")
#: ``global_voxels="varied"``: a voxel counts as varied when the standard deviation of the preprocessed input
#: in its 3x3x3 neighbourhood (``input_std``, recorded by the sampler) exceeds this. Inputs are normalised
#: (CT clipped and z-scored, MR z-scored), so 1e-3 standard deviations separates "constant" (clipped air, a
#: flat background) from anatomy without depending on the modality.
MIN_INPUT_STD = 1e-3


def varied_global(layer: Mapping[str, Any], index: int, min_input_std: float = MIN_INPUT_STD) -> list[np.ndarray]:
    """The global samples of one layer restricted, case by case, to the voxels whose input varies locally
    (``layer["global_input_std"]``: per case [L] from the features file). A case with fewer than 2 such
    voxels is left out.

    Raises:
        ValueError: the layer has no ``global_input_std`` (a features file sampled before ccfv recorded it:
            resample), or no case keeps 2 voxels.
    """
    if "global_input_std" not in layer:
        raise ValueError(f"layer {index} has no 'global_input_std' (the features file predates the input's "
                         "local standard deviation; sample it again to use global_voxels='varied')")
    kept = []
    for features, std in zip(layer["global"], layer["global_input_std"]):
        std = np.asarray(std, dtype=float)[: len(features)]
        rows = np.asarray(features)[std > min_input_std]
        if len(rows) >= 2:
            kept.append(rows)
    if not kept:
        raise ValueError(f"layer {index}: no case has 2 global voxels whose input varies (input std > "
                         f"{min_input_std})")
    return kept


def ccfv_terms(
    layers: Sequence[Mapping[str, Any]],
    *,
    use_consistency: bool = True,
    use_variety: bool = True,
    distance: str = "w2",
    s: float = 1.0,
    energy: str = "mean",
    global_voxels: str = "all",
    backend: str = "numpy",
    device: Any = None,
) -> list[dict[str, float]]:
    """The per-layer terms of eq. 5: ``[{"log_variety": log F_v^l, "neg_log_consistency": -log C_cons^l}]``,
    a term left out when its switch is off. :func:`ccfv_score` is the mean over layers of their sum; the
    terms say what drives it (docs/benchmark.md). Arguments and errors as :func:`ccfv_score`."""
    if global_voxels not in GLOBAL_VOXELS:
        raise ValueError(f"global_voxels must be one of {GLOBAL_VOXELS}, got {global_voxels!r}")
    terms = []
    for index, layer in enumerate(layers):
        term: dict[str, float] = {}
        if use_variety:
            if "global" not in layer:
                raise ValueError(f"layer {index} has no 'global' entry (needed for F_v)")
            samples = layer["global"] if global_voxels == "all" else varied_global(layer, index)
            variety = feature_variety(samples, s, energy=energy)
            if not variety > 0.0:
                raise ValueError(f"layer {index}: F_v = {variety} <= 0, log F_v is undefined")
            term["log_variety"] = float(np.log(variety))
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
            term["neg_log_consistency"] = float(-np.log(consistency))
        terms.append(term)
    return terms


def ccfv_score(
    layers: Sequence[Mapping[str, Any]],
    *,
    use_consistency: bool = True,
    use_variety: bool = True,
    single_scale: bool = False,
    distance: str = "w2",
    s: float = 1.0,
    energy: str = "mean",
    global_voxels: str = "all",
    backend: str = "numpy",
    device: Any = None,
) -> float:
    """CC-FV transferability score T_{m->t} (paper eq. 5). Higher = more transferable.

        T = (1/D) sum_{l=1}^{D} log( F_v^l / C_cons^l )

    with ``F_v^l = feature_variety(layer["global"], s, energy)`` and
    ``C_cons^l = class_consistency(layer["cases"], distance=distance)``.

    Ablations (paper Table 2):
        * ``use_consistency=False``: T = (1/D) sum_l log F_v^l.
        * ``use_variety=False``:     T = (1/D) sum_l -log C_cons^l.
        * ``single_scale=True``:     only the last element of ``layers`` is used (D = 1).
        * ``distance="kl"`` / ``"bhattacharyya"``: replaces W2 in C_cons.

    Comparable across architectures: ``energy="mean"`` (default) takes the hyperspherical energy as the
    mean over voxel pairs, so a model whose sampling keeps fewer voxels per layer (UNETR's four hooked
    stages, ``sampling.layer_ratios``) gets no ``-log L(L-1)`` for free; ``energy="sum"`` is eq. 3 as
    written (docs/metrics.md). ``global_voxels="varied"``: F_v over the voxels whose input is not locally
    constant only (:func:`varied_global`; a pre-registered variant, docs/preregistration.md).

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
            ``class_consistency``) and ``"global"`` (the input of ``feature_variety``; with
            ``global_voxels="varied"`` also ``"global_input_std"``); only the keys the enabled terms
            need are read.
        use_consistency: include -log C_cons.
        use_variety: include log F_v.
        single_scale: use the last layer only.
        distance: one of ``DISTANCES``.
        s: hyperspherical energy exponent (the paper uses 1).
        energy: ``"mean"`` or ``"sum"`` over voxel pairs (see above).
        global_voxels: ``"all"`` or ``"varied"`` (see above).
        backend: backend of the W2 computation in ``class_consistency`` ("numpy" or "torch").
        device: torch device for ``backend="torch"`` (``None`` = CUDA when available).

    Returns:
        T as a Python float.

    Raises:
        ValueError: both terms disabled, no layers, a missing key, an unknown ``energy`` or
            ``global_voxels``, or F_v <= 0 / C_cons <= 0 (log undefined).
    """
    if not (use_consistency or use_variety):
        raise ValueError("at least one of use_consistency and use_variety must be True")
    if energy not in ENERGY_REDUCTIONS:
        raise ValueError(f"energy must be one of {ENERGY_REDUCTIONS}, got {energy!r}")
    check_backend(backend, device)
    layers = list(layers)
    if not layers:
        raise ValueError("ccfv_score needs at least one layer")
    if single_scale:
        layers = layers[-1:]
    terms = ccfv_terms(layers, use_consistency=use_consistency, use_variety=use_variety, distance=distance, s=s,
                       energy=energy, global_voxels=global_voxels, backend=backend, device=device)
    # x - y and x + (-y) are the same float: the score is unchanged by going through the terms.
    per_layer = [0.0 + term.get("log_variety", 0.0) + term.get("neg_log_consistency", 0.0) for term in terms]
    return float(np.mean(per_layer))


# --------------------------------------------------------------------------------------------------
# Discriminative CC-FV (pre-registered, docs/preregistration.md)
# --------------------------------------------------------------------------------------------------


def class_separation(cases: Sequence[Mapping[Any, np.ndarray]], background: Sequence[np.ndarray]) -> float:
    """Within-case separation of the classes from the background: S = sum_k (1/|I_k|) sum_{i in I_k}
    W2(F_i^k, B_i), where I_k are the cases holding class k (>= 2 samples) and >= 2 background samples
    B_i. The counterpart of :func:`class_consistency`, which sums over classes too. Higher = the classes
    stand further out of their own case's background.

    Args:
        cases: N cases, each {class_id: features [n_k, d]} (foreground classes).
        background: N arrays [n_b, d], the background samples of each case.

    Raises:
        ValueError: different numbers of cases, or no (case, class) with enough samples.
    """
    cases, background = list(cases), list(background)
    if len(cases) != len(background):
        raise ValueError(f"{len(cases)} cases but {len(background)} background sets")
    per_class: dict[Any, list[float]] = {}
    for index, (case, bg) in enumerate(zip(cases, background)):
        bg = as_matrix(bg, f"background[{index}]")
        if bg.shape[0] < 2:
            continue
        for class_id, features in case.items():
            features = as_matrix(features, f"cases[{index}][{class_id!r}]")
            if features.shape[0] >= 2:
                per_class.setdefault(class_id, []).append(float(w2_matrix([features, bg], "numpy", None)[0, 1]))
    if not per_class:
        raise ValueError("class_separation needs a case with >= 2 samples of a class and of the background")
    return float(sum(np.mean(values) for values in per_class.values()))


def discriminative_ccfv_score(layers: Sequence[Mapping[str, Any]], *, single_scale: bool = False) -> float:
    """Discriminative CC-FV (CC-FV-D; pre-registered, docs/preregistration.md): eq. 5 with the feature
    variety replaced by the within-case separation of each class from its background:

        T_D = (1/D) sum_l log( S^l / C_cons^l )

    with ``S^l = class_separation(layer["cases"], layer["background"])`` and ``C_cons^l`` eq. 2 (W2). Both
    sum over classes and scale linearly with the features, so T_D is invariant to their scale and to how
    many voxels or layers a model's sampling keeps (a mean over layers, means over cases and pairs).
    Higher = classes consistent across cases *and* apart from the background within each case.

    Raises:
        ValueError: no layers, a layer without ``"cases"`` or ``"background"``, or S or C_cons <= 0.
    """
    layers = list(layers)
    if not layers:
        raise ValueError("discriminative_ccfv_score needs at least one layer")
    if single_scale:
        layers = layers[-1:]
    per_layer = []
    for index, layer in enumerate(layers):
        if "cases" not in layer or "background" not in layer:
            raise ValueError(f"layer {index} needs 'cases' and 'background' (the background samples per case)")
        separation = class_separation(layer["cases"], layer["background"])
        consistency = class_consistency(layer["cases"])
        if not (separation > 0.0 and consistency > 0.0):
            raise ValueError(f"layer {index}: S = {separation}, C_cons = {consistency}; the log is undefined")
        per_layer.append(float(np.log(separation) - np.log(consistency)))
    return float(np.mean(per_layer))
