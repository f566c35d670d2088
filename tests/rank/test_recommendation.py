"""Tests for ccfv.rank.recommendation: the top pick's case bootstrap and the sentence ccfv rank prints."""
from __future__ import annotations

import numpy as np
import pytest

from ccfv.features.file import write_features
from ccfv.rank.recommendation import recommend, top_pick_confidence

from ..scores.test_scoring import _meta, _record


def features(tmp_path, name, seed):
    """A features file of six cases whose class-k features sit around k (test_scoring's helpers)."""
    rng = np.random.default_rng(seed)
    return write_features(tmp_path / f"{name}.h5", _meta(), [_record(f"c{i}", rng) for i in range(6)])


def test_a_clearly_better_model_stays_first_and_ties_share(tmp_path):
    files = {"wide": features(tmp_path, "wide", 0), "narrow": features(tmp_path, "narrow", 1)}
    # the same files twice: every resample ties, and each model gets half
    same = top_pick_confidence({"a": files["wide"], "b": files["wide"]}, {"method": "logme"}, 20)
    assert same["first"] == {"a": 0.5, "b": 0.5} and same["n_valid"] == 20
    confident = top_pick_confidence(files, {"method": "logme"}, 30, seed=1)
    assert sum(confident["first"].values()) == pytest.approx(1.0)
    assert confident == top_pick_confidence(files, {"method": "logme"}, 30, seed=1)  # seeded


def test_recommend_says_how_sure_the_pick_is():
    rows = [{"model": "A", "scores": {"logme": 2.0}}, {"model": "B", "scores": {"logme": 1.5}},
            {"model": "C", "scores": {"logme": 0.1}}]
    sure = recommend(rows, "logme", {"first": {"A": 0.93, "B": 0.07, "C": 0.0}, "n_valid": 200})
    assert sure["model"] == "A" and sure["confidence"] == 0.93 and sure["within_noise"] == []
    assert sure["sentence"] == ("Fine-tune A: first by logme in 93% of 200 case resamples; no other model is "
                                "first in 10% of them.")
    close = recommend(rows, "logme", {"first": {"A": 0.55, "B": 0.45, "C": 0.0}, "n_valid": 100})
    assert close["within_noise"] == ["B"] and close["sentence"].endswith("B (45%) is within noise of it.")
    none = recommend(rows, "logme", None)
    assert none["confidence"] is None and "not computed" in none["sentence"]


def test_bad_input(tmp_path):
    path = features(tmp_path, "a", 0)
    with pytest.raises(ValueError, match="at least 2 models"):
        top_pick_confidence({"a": path}, {"method": "logme"}, 5)
    with pytest.raises(ValueError, match="n_resamples"):
        top_pick_confidence({"a": path, "b": path}, {"method": "logme"}, 0)
