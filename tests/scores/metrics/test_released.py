"""Tests for ccfv.scores.metrics.released: the authors' released CC-FV arithmetic against transcriptions of
their code and hand-computed cases."""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg

from ccfv.scores.metrics.gaussian import gaussian_w2, gaussian_w2_matrix
from ccfv.scores.metrics.released import (
    ccfv_score_released,
    class_consistency_released,
    feature_variety_released,
    gaussian_w2_released,
)

# --------------------------------------------------------------------------------------------------
# Released-code reproduction (EndoluminalSurgicalVision-IMR/CCFV)
# --------------------------------------------------------------------------------------------------


def released_cal_w_distance(f1, f2):
    """utils/ccfv.py cal_w_distance, verbatim arithmetic."""
    miu_f1 = np.mean(f1, axis=0)
    miu_f2 = np.mean(f2, axis=0)
    cov_f1 = np.cov(f1.T)
    cov_f2 = np.cov(f2.T)
    delta_miu = miu_f1 - miu_f2
    w_d = (
        np.sum(delta_miu**2)
        + cov_f1.trace()
        + cov_f2.trace()
        - 2 * (scipy.linalg.sqrtm(cov_f1.dot(cov_f2))).trace()
    )
    return np.sqrt(abs(w_d))


def test_gaussian_w2_released_matches_released_function_and_ours(rng):
    a = rng.normal(size=(30, 4)) @ rng.normal(size=(4, 4))
    b = rng.normal(loc=0.5, size=(25, 4)) @ rng.normal(size=(4, 4))
    assert gaussian_w2_released(a, b) == released_cal_w_distance(a, b)
    assert gaussian_w2_released(a, b) == pytest.approx(gaussian_w2(a, b), rel=1e-8)
    one_d_a, one_d_b = rng.normal(size=(10, 1)), rng.normal(size=(12, 1))
    assert gaussian_w2_released(one_d_a, one_d_b) == pytest.approx(
        gaussian_w2(one_d_a, one_d_b), rel=1e-10
    )


def test_class_consistency_released_nested_accumulator_hand_computed():
    # 1-D: W2 of N(m1, s1^2), N(m2, s2^2) = hypot(m1 - m2, s1 - s2). Sets {mu - h, mu + h} have
    # ddof=1 std h * sqrt(2).
    def col(*values):
        return np.array(values, dtype=float)[:, None]

    cases = [
        {0: col(0, 1, 2), 1: col(0, 2), 2: col(10, 12)},
        {0: col(5, 6), 1: col(3, 5), 2: col(10, 14)},
    ]
    s1 = 3.0  # class 1: means 1 and 4, equal spread
    s2 = math.sqrt(1 + 2)  # class 2: means 11 and 12, stds sqrt(2) and 2 sqrt(2)
    factor = 1 + 1 / (2 * 2 / 2) / 2  # 1 + 1 / (N^2/2) / K with N = 2, K = 2: 1.25
    expected = (s1 * factor + s2) * factor
    assert class_consistency_released(cases) == pytest.approx(expected, rel=1e-9)
    assert class_consistency_released(cases, num_classes=4) == pytest.approx(
        (s1 * 1.125 + s2) * 1.125, rel=1e-9
    )


def test_class_consistency_released_matches_transcribed_main_loop(rng):
    cases = [{0: rng.normal(size=(9, 3)), 1: rng.normal(size=(8, 3)), 2: rng.normal(size=(7, 3))}
             for _ in range(4)]
    w_distance = 0.0
    for lb in (0, 1, 2):
        if lb == 0:
            continue
        length = len(cases)
        for i in range(length):
            for j in range(i + 1, length):
                w_distance += released_cal_w_distance(cases[i][lb], cases[j][lb])
        w_distance += w_distance / (length * length / 2) / 2
    assert class_consistency_released(cases) == pytest.approx(w_distance, rel=1e-12)
    order = [2, 0, 3, 1]
    assert class_consistency_released([cases[i] for i in order]) == pytest.approx(
        w_distance, rel=1e-9
    )


def test_feature_variety_released_hand_computed_and_direction():
    v = np.array([[0.0, 0.0], [3.0, 4.0]])
    assert feature_variety_released(v) == pytest.approx(1 / math.sqrt(25 + 1e-3))
    three = np.array([[0.0], [1.0], [3.0]])
    expected = (1 / math.sqrt(1.001) + 1 / math.sqrt(9.001) + 1 / math.sqrt(4.001)) / 3
    assert feature_variety_released(three) == pytest.approx(expected)
    # grows when the vectors collapse: the opposite direction to the paper's F_v
    assert feature_variety_released(0.1 * three) > feature_variety_released(three)


def test_ccfv_score_released_sums_layers_and_both_ratio_versions(rng):
    layers = []
    for _ in range(2):
        layers.append({"cases": [{0: rng.normal(size=(10, 3)), 1: rng.normal(size=(6, 3)) + 1}
                                 for _ in range(3)]})
    terms = []
    for layer in layers:
        w = class_consistency_released(layer["cases"])
        means = np.stack([np.vstack([c[0], c[1]]).mean(axis=0) for c in layer["cases"]])
        terms.append(math.log(feature_variety_released(means) / w))
    value = ccfv_score_released(layers)
    assert value == pytest.approx(sum(terms), rel=1e-12)
    assert ccfv_score_released(layers, ratio="distance_over_variety") == pytest.approx(-value)
    with pytest.raises(ValueError, match="ratio"):
        ccfv_score_released(layers, ratio="mean")


def test_released_variant_rejects_absent_class(rng):
    cases = [{0: rng.normal(size=(5, 2)), 1: rng.normal(size=(5, 2))}, {0: rng.normal(size=(5, 2))}]
    with pytest.raises(ValueError, match="absent"):
        class_consistency_released(cases)
    with pytest.raises(ValueError, match="absent"):
        ccfv_score_released([{"cases": cases}])
    with pytest.raises(ValueError, match="at least 2"):
        class_consistency_released(
            [{1: rng.normal(size=(5, 2))}, {1: rng.normal(size=(1, 2))}]
        )


def test_released_w2_agrees_with_batched_w2_on_benchmark_like_data(rng):
    d = 24
    mix = rng.normal(size=(d, d)) / math.sqrt(d)
    sets = [rng.normal(size=(80, d)) @ (mix + 0.1 * rng.normal(size=(d, d))) for _ in range(4)]
    matrix = gaussian_w2_matrix(sets)
    for i in range(4):
        for j in range(i + 1, 4):
            assert matrix[i, j] == pytest.approx(gaussian_w2_released(sets[i], sets[j]), rel=1e-8)
