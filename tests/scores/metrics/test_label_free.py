"""Tests for ccfv.scores.metrics.label_free: the effective rank against its closed forms, RankMe's score."""
from __future__ import annotations

import math

import numpy as np
import pytest

from ccfv.scores.metrics.label_free import RANKME_EPS, effective_rank, rankme_score


def slow_effective_rank(z):
    sigma = np.linalg.svd(np.asarray(z, dtype=float), compute_uv=False)
    p = [s / sum(sigma) + RANKME_EPS for s in sigma]
    return math.exp(-sum(q * math.log(q) for q in p))


def test_effective_rank_closed_forms(rng):
    assert effective_rank(np.eye(6)) == pytest.approx(6.0, rel=1e-5)  # six equal directions
    assert effective_rank(np.outer(rng.normal(size=20), rng.normal(size=4))) == pytest.approx(1.0, abs=1e-4)
    z = rng.normal(size=(50, 8)) * np.array([10, 5, 2, 1, 1, 1, 0.1, 0.01])
    assert effective_rank(z) == pytest.approx(slow_effective_rank(z), rel=1e-12)
    assert effective_rank(3.0 * z) == pytest.approx(effective_rank(z), rel=1e-9)  # scale-free
    with pytest.raises(ValueError, match="all-zero"):
        effective_rank(np.zeros((4, 3)))


def test_rankme_score_is_the_mean_share_of_dimensions_used(rng):
    wide = {"global": [rng.normal(size=(40, 16)) for _ in range(3)]}
    collapsed = {"global": [np.outer(rng.normal(size=40), rng.normal(size=16)) for _ in range(3)]}
    share = effective_rank(np.concatenate(wide["global"])) / 16
    assert rankme_score([wide]) == pytest.approx(share, rel=1e-12)
    assert rankme_score([wide, collapsed]) == pytest.approx((share + effective_rank(
        np.concatenate(collapsed["global"])) / 16) / 2, rel=1e-12)
    assert 0 < rankme_score([collapsed]) < rankme_score([wide]) <= 1
    # a wider network with the same structure is not favoured: dividing by min(n, d)
    assert rankme_score([{"global": [np.hstack([v, v]) for v in wide["global"]]}]) == pytest.approx(
        rankme_score([wide]) / 2, rel=0.02)
    with pytest.raises(ValueError, match="'global'"):
        rankme_score([{"cases": []}])
