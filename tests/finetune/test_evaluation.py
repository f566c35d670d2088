"""Tests for ccfv.finetune.evaluation: per-class Dice, its NaN conventions, the summary and the Dice file.

``predict_and_score`` needs a trained network and an nnU-Net raw dataset; the workflow's integration
test covers it.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from ccfv.finetune.evaluation import dice, dice_per_class, read_mean_dice, summarise, write_dice


def slow_dice(prediction, reference, label):
    """2|P∩R| / (|P| + |R|) with an explicit loop over voxels; NaN when both are empty."""
    both = p_count = r_count = 0
    for p, r in zip(np.ravel(prediction), np.ravel(reference)):
        p_count += p == label
        r_count += r == label
        both += (p == label) and (r == label)
    return math.nan if p_count + r_count == 0 else 2.0 * both / (p_count + r_count)


def test_dice_hand_computed():
    reference = np.array([[0, 1, 1, 1], [0, 0, 2, 2]])
    prediction = np.array([[1, 1, 1, 0], [0, 2, 2, 0]])
    # label 1: |P| = 3, |R| = 3, overlap 2 -> 4/6; label 2: |P| = 2, |R| = 2, overlap 1 -> 2/4
    assert dice(prediction, reference, 1) == pytest.approx(2 / 3)
    assert dice(prediction, reference, 2) == pytest.approx(1 / 2)
    # background is just another label to dice()
    # (|P| = 3, |R| = 3, overlap 1 -> 2/6)
    assert dice(prediction, reference, 0) == pytest.approx(1 / 3)


def test_dice_perfect_and_disjoint():
    reference = np.zeros((4, 5, 6), dtype=np.int16)
    reference[1:3, 2:4, 1:5] = 1
    assert dice(reference.copy(), reference, 1) == 1.0
    shifted = np.zeros_like(reference)
    shifted[0, 0, 0] = 1
    assert dice(shifted, reference, 1) == 0.0


def test_dice_both_empty_is_nan():
    empty = np.zeros((3, 3, 3), dtype=np.uint8)
    assert math.isnan(dice(empty, empty, 1))


def test_dice_reference_empty_but_predicted_is_zero():
    reference = np.zeros((3, 3, 3), dtype=np.uint8)
    prediction = reference.copy()
    prediction[1, 1, 1] = 2
    assert dice(prediction, reference, 2) == 0.0
    # and the other way round: present in the reference, missed by the prediction
    assert dice(reference, prediction, 2) == 0.0


def test_dice_matches_slow_reference_on_random_maps():
    rng = np.random.default_rng(5)
    for _ in range(5):
        reference = rng.integers(0, 3, size=(4, 5, 6))
        prediction = rng.integers(0, 3, size=(4, 5, 6))
        for label in (0, 1, 2, 3):
            fast, slow = dice(prediction, reference, label), slow_dice(prediction, reference, label)
            if math.isnan(slow):
                assert math.isnan(fast)
            else:
                assert fast == pytest.approx(slow, rel=1e-12)


def test_dice_does_not_overflow_small_integer_types():
    # 300 voxels of a uint8 mask: a sum in uint8 would wrap around.
    reference = np.ones(300, dtype=np.uint8)
    prediction = np.ones(300, dtype=np.uint8)
    prediction[:100] = 0
    assert dice(prediction, reference, 1) == pytest.approx(2 * 200 / 500)


def test_dice_per_class_keys_and_values():
    reference = np.array([0, 1, 1, 2, 0, 0])
    prediction = np.array([0, 1, 0, 0, 2, 0])
    result = dice_per_class(prediction, reference, [1, 2, 3])
    assert list(result) == [1, 2, 3]
    assert result[1] == pytest.approx(2 * 1 / 3)
    assert result[2] == 0.0
    assert math.isnan(result[3])


def test_dice_per_class_shape_mismatch():
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(3, 2\)"):
        dice_per_class(np.zeros((2, 3)), np.zeros((3, 2)), [1])


def test_summarise_hand_computed():
    nan = math.nan
    per_case = {
        "a": {1: 0.8, 2: nan, 3: nan},
        "b": {1: 0.6, 2: 0.2, 3: nan},
        "c": {1: 1.0, 2: 0.0, 3: nan},
    }
    # class 1: (0.8 + 0.6 + 1.0) / 3 = 0.8; class 2: NaN skipped -> (0.2 + 0.0) / 2 = 0.1;
    # class 3: NaN in every case -> NaN and left out; mean over defined classes = (0.8 + 0.1) / 2
    result = summarise(per_case)
    assert result["per_class"][1] == pytest.approx(0.8)
    assert result["per_class"][2] == pytest.approx(0.1)
    assert math.isnan(result["per_class"][3])
    assert result["mean_dice"] == pytest.approx(0.45)
    assert sorted(result["per_class"]) == [1, 2, 3]


def test_summarise_is_mean_of_class_means_not_pooled_mean():
    # Pooled mean over all (case, class) values would be (1 + 0.5 + 0.5) / 3 = 2/3; the convention is the
    # mean over classes of the per-class means: ((1 + 0.5) / 2 + 0.5) / 2 = 0.625.
    per_case = {"a": {1: 1.0, 2: math.nan}, "b": {1: 0.5, 2: 0.5}}
    assert summarise(per_case)["mean_dice"] == pytest.approx(0.625)


def test_summarise_all_nan_gives_nan():
    result = summarise({"a": {1: math.nan}, "b": {1: math.nan}})
    assert math.isnan(result["per_class"][1])
    assert math.isnan(result["mean_dice"])


def test_write_dice_nan_as_null_and_read_back(tmp_path):
    result = summarise({"a": {1: 0.5, 2: math.nan}, "b": {1: 0.7, 2: math.nan}})
    result["per_case"] = {"a": {1: 0.5, 2: math.nan}, "b": {1: 0.7, 2: math.nan}}
    path = tmp_path / "out" / "dice.json"
    write_dice(result, path, model_id="m1", seed=3)
    text = path.read_text()
    assert "NaN" not in text  # strict JSON readers refuse NaN
    data = json.loads(text)
    assert data["model_id"] == "m1" and data["seed"] == 3
    assert data["per_class"] == {"1": pytest.approx(0.6), "2": None}
    assert data["per_case"]["a"] == {"1": 0.5, "2": None}
    assert data["mean_dice"] == pytest.approx(0.6)
    assert read_mean_dice(path) == pytest.approx(0.6)
    assert [p.name for p in path.parent.iterdir()] == ["dice.json"]  # no temporary file left


def test_write_dice_nan_mean_reads_back_as_nan(tmp_path):
    path = tmp_path / "dice.json"
    write_dice(summarise({"a": {1: math.nan}}), path)
    assert json.loads(path.read_text())["mean_dice"] is None
    assert math.isnan(read_mean_dice(path))


def test_write_dice_numpy_floats(tmp_path):
    path = tmp_path / "dice.json"
    write_dice({"mean_dice": np.float64("nan"), "per_class": {1: np.float64(0.25)}}, path)
    data = json.loads(path.read_text())
    assert data["mean_dice"] is None
    assert data["per_class"] == {"1": 0.25}
