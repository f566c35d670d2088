"""Tests for ccfv.scores.metrics.knn: leave-one-case-out k-NN against a loop reference and hand cases."""
from __future__ import annotations

import numpy as np
import pytest

from ccfv.scores.metrics.knn import knn_accuracy


def slow_knn(features, labels, groups, k, standardise=True):
    x = np.asarray(features, dtype=float)
    if standardise:
        std = x.std(axis=0)
        x = (x - x.mean(axis=0)) / np.where(std > 0, std, 1.0)
    predicted = []
    for i in range(len(x)):
        others = [j for j in range(len(x)) if groups[j] != groups[i]]
        nearest = sorted(others, key=lambda j: (np.linalg.norm(x[i] - x[j]), j))[:k]
        votes = [labels[j] for j in nearest]
        best = max(set(votes), key=lambda c: (votes.count(c), -c))  # most votes, then the lowest label
        predicted.append(best)
    predicted = np.array(predicted)
    return np.mean([np.mean(predicted[labels == c] == c) for c in np.unique(labels)])


def test_knn_matches_the_loop_reference(rng):
    labels = np.repeat([0, 1, 2], 30)
    x = rng.normal(size=(90, 4)) + labels[:, None] * np.array([1.5, 0, 0, 0])
    groups = np.tile(np.arange(5), 18)
    for k in (1, 3, 5):
        assert knn_accuracy(x, labels, groups, k=k) == pytest.approx(slow_knn(x, labels, groups, k), abs=1e-12)


def test_knn_balanced_accuracy_hand_cases():
    # two cases, two classes, perfectly separated: every sample finds its class in the other case
    x = np.array([[0.0], [10.0], [0.1], [10.1]])
    groups = np.array([0, 0, 1, 1])
    assert knn_accuracy(x, np.array([0, 1, 0, 1]), groups, k=1) == 1.0
    # the same voxels with the labels swapped in the second case: every vote is wrong
    assert knn_accuracy(x, np.array([0, 1, 1, 0]), groups, k=1, standardise=False) == 0.0
    # balanced: 9 background samples right, 1 foreground sample wrong -> (1 + 0) / 2
    many = np.vstack([np.zeros((10, 1)), [[5.0]]])
    assert knn_accuracy(np.vstack([many, many]), np.array(([0] * 10 + [1]) * 2), np.repeat([0, 1], 11),
                        k=3) == pytest.approx(0.5)


def test_knn_errors(rng):
    x, y = rng.normal(size=(10, 2)), np.array([0, 1] * 5)
    with pytest.raises(ValueError, match=">= 2 cases"):
        knn_accuracy(x, y, np.zeros(10))
    with pytest.raises(ValueError, match="differ in length"):
        knn_accuracy(x, y[:9], np.arange(10))
    with pytest.raises(ValueError, match="k must be"):
        knn_accuracy(x, y, np.arange(10) % 2, k=0)
