"""Tests for ccfv.scores.metrics.logme against an explicit evidence reference."""
from __future__ import annotations

import numpy as np
import pytest

from ccfv.scores.metrics.logme import logme

from .references import RTOL, slow_logme

# --------------------------------------------------------------------------------------------------
# logme (You et al., 2021)
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n, d, n_classes", [(120, 8, 3), (60, 15, 2), (20, 50, 3), (30, 30, 4)])
def test_logme_matches_explicit_evidence_reference(rng, n, d, n_classes):
    features = rng.normal(size=(n, d))
    labels = rng.integers(0, n_classes, size=n)
    features[:, 0] += labels  # some signal, so alpha and beta move
    assert logme(features, labels) == pytest.approx(slow_logme(features, labels), rel=RTOL)


def test_logme_rank_deficient_tall_features(rng):
    # n > d but rank(f) < d: the zero eigenvalues of f^T f still count in ln det A.
    base = rng.normal(size=(80, 4))
    features = np.hstack([base, base[:, :2] + base[:, 2:]])
    labels = rng.integers(0, 2, size=80)
    assert logme(features, labels) == pytest.approx(slow_logme(features, labels), rel=RTOL)


def test_logme_separable_features_score_higher(rng):
    n, d = 300, 10
    labels = rng.integers(0, 3, size=n)
    separable = rng.normal(size=(n, d))
    separable[:, :3] += 4.0 * np.eye(3)[labels]
    random = rng.normal(size=(n, d))
    assert logme(separable, labels) > logme(random, labels) + 0.1


def test_logme_labels_are_used_by_value_not_by_position(rng):
    features = rng.normal(size=(50, 6))
    labels = rng.integers(0, 3, size=50)
    relabelled = np.array([7, 2, 11])[labels]  # non-contiguous ids, permuted order
    assert logme(features, relabelled) == pytest.approx(logme(features, labels), rel=1e-12)


def test_logme_rejects_bad_inputs(rng):
    with pytest.raises(ValueError, match="labels"):
        logme(rng.normal(size=(10, 3)), np.zeros(9, dtype=int))
    with pytest.raises(ValueError, match="all zero"):
        logme(np.zeros((10, 3)), np.zeros(10, dtype=int))
