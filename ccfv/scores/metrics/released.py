"""CC-FV as the authors' released code computes it (its own W2, variety and ratio), for the "released code"
rows of the tables (docs/metrics.md)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import scipy.linalg

from .gaussian import as_matrix, as_sample_set, check_same_dim

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
    a = as_sample_set(a, "a")
    b = as_sample_set(b, "b")
    check_same_dim(a, b)
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
    v = as_matrix(case_vectors, "case_vectors")
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
            sets[class_id].append(as_sample_set(case[class_id], f"cases[{index}][{class_id!r}]"))
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
            arrays = [as_matrix(x, f"cases[{case_index}]") for x in case.values()]
            means.append(np.concatenate(arrays, axis=0).mean(axis=0))
        var_f = feature_variety_released(np.stack(means))
        if not (w_distance > 0.0 and var_f > 0.0):
            raise ValueError(f"layer {index}: w = {w_distance}, var_f = {var_f}; log undefined")
        if ratio == "variety_over_distance":
            total += float(np.log(var_f / w_distance))
        else:
            total += float(np.log(w_distance / var_f))
    return total
