"""Tests for ccfv.results: the correlations of Table 1 against slow references, the table's shape and
files, and ``build_table1`` end to end on small score and Dice files."""

from __future__ import annotations

import csv
import io
import json
import math
import re

import numpy as np
import pytest

from ccfv.results import build_tables, correlations, table1, to_csv, to_markdown

TARGETS = ["Task03_Liver", "Task09_Spleen", "Task10_Colon"]
NUMBER = re.compile(r"^-?\d+\.\d{4}$")


# --------------------------------------------------------------------------------------------------
# Slow references
# --------------------------------------------------------------------------------------------------


def slow_weighted_tau_one_ranking(x, y, rank):
    """Vigna (2015), additive hyperbolic weigher, no ties: sum_{i<j} w_ij sgn(dx) sgn(dy) / sum_{i<j} w_ij
    with w_ij = 1/(rank[i]+1) + 1/(rank[j]+1); rank 0 is the most important element."""
    n = len(x)
    num = den = 0.0
    for i in range(n):
        for j in range(i + 1, n):
            w = 1.0 / (rank[i] + 1) + 1.0 / (rank[j] + 1)
            num += w * np.sign(x[i] - x[j]) * np.sign(y[i] - y[j])
            den += w
    return num / den


def slow_weighted_tau(x, y):
    """scipy.stats.weightedtau defaults (rank=True): the average of the weighted taus obtained with the
    decreasing ranking by x and the decreasing ranking by y (the largest value has rank 0)."""
    x, y = list(map(float, x)), list(map(float, y))
    n = len(x)
    by_x = {i: r for r, i in enumerate(sorted(range(n), key=lambda i: -x[i]))}
    by_y = {i: r for r, i in enumerate(sorted(range(n), key=lambda i: -y[i]))}
    rank_x = [by_x[i] for i in range(n)]
    rank_y = [by_y[i] for i in range(n)]
    return 0.5 * (slow_weighted_tau_one_ranking(x, y, rank_x) + slow_weighted_tau_one_ranking(x, y, rank_y))


# --------------------------------------------------------------------------------------------------
# correlations
# --------------------------------------------------------------------------------------------------


def test_slow_reference_is_not_plain_kendall():
    # Sanity of the reference itself: agreeing on the top, disagreeing at the bottom scores higher than
    # the mirror image, which an unweighted tau could not tell apart.
    top_right = slow_weighted_tau([5, 4, 3, 2, 1], [5, 4, 3, 1, 2])
    bottom_right = slow_weighted_tau([5, 4, 3, 2, 1], [4, 5, 3, 2, 1])
    assert top_right > bottom_right
    assert slow_weighted_tau([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert slow_weighted_tau([1, 2, 3, 4], [40, 30, 20, 10]) == pytest.approx(-1.0)


@pytest.mark.parametrize("n", [2, 3, 5, 8, 13])
def test_correlations_against_slow_references(n):
    rng = np.random.default_rng(100 + n)
    for _ in range(10):
        x = rng.permutation(n) + rng.uniform(0, 0.5, n)  # distinct values: no ties
        y = rng.normal(size=n)
        result = correlations(list(x), list(y))
        assert result["tau"] == pytest.approx(slow_weighted_tau(x, y), rel=1e-10, abs=1e-12)
        assert result["pearson"] == pytest.approx(np.corrcoef(x, y)[0, 1], rel=1e-10, abs=1e-12)


def test_correlations_perfect_orders():
    assert correlations([1, 2, 3], [0.1, 0.5, 0.9]) == {"tau": pytest.approx(1.0), "pearson": pytest.approx(1.0)}
    result = correlations([1, 2, 3], [0.9, 0.5, 0.1])
    assert result["tau"] == pytest.approx(-1.0)
    assert result["pearson"] == pytest.approx(-1.0)


@pytest.mark.parametrize(("x", "y"), [([1.0, 1.0, 1.0], [0.1, 0.2, 0.3]), ([1.0, 2.0, 3.0], [0.5, 0.5, 0.5])])
def test_correlations_constant_input_is_nan(x, y):
    result = correlations(x, y)
    assert math.isnan(result["tau"]) and math.isnan(result["pearson"])


@pytest.mark.parametrize(("x", "y"), [([1.0, 2.0], [1.0, 2.0, 3.0]), ([1.0], [2.0]), ([], [])])
def test_correlations_length_errors(x, y):
    with pytest.raises(ValueError, match="equally long"):
        correlations(x, y)


# --------------------------------------------------------------------------------------------------
# table1, to_csv, to_markdown
# --------------------------------------------------------------------------------------------------


def _records(rng, targets=TARGETS, models=("m1", "m2", "m3", "m4")):
    return [
        {"target": t, "model": m, "dice": float(rng.uniform(0.3, 0.9)),
         "scores": {"ccfv": float(rng.normal()), "logme": float(rng.normal())}}
        for t in targets for m in models
    ]


def test_table1_shape_and_values():
    records = _records(np.random.default_rng(1))
    rows = table1(records, ["ccfv", "logme"], TARGETS)
    assert [(r["method"], r["statistic"]) for r in rows] == [
        ("CC-FV", "tau"), ("CC-FV", "pearson"), ("LogME", "tau"), ("LogME", "pearson"),
    ]
    for row in rows:
        assert set(row) == {"method", "metric", "statistic", *TARGETS, "Avg"}
        assert row["Avg"] == pytest.approx(np.mean([row[t] for t in TARGETS]))
    for target in TARGETS:
        mine = [r for r in records if r["target"] == target]
        x = [r["scores"]["logme"] for r in mine]
        y = [r["dice"] for r in mine]
        assert rows[2][target] == pytest.approx(slow_weighted_tau(x, y))
        assert rows[3][target] == pytest.approx(np.corrcoef(x, y)[0, 1])


def test_table1_unknown_metric_keeps_its_name():
    records = [{"target": "T", "model": m, "dice": d, "scores": {"my_metric": s}}
               for m, d, s in [("a", 0.1, 1.0), ("b", 0.2, 3.0), ("c", 0.3, 2.0)]]
    rows = table1(records, ["my_metric"], ["T"])
    assert [r["method"] for r in rows] == ["my_metric", "my_metric"]


def test_table1_avg_skips_undefined_targets():
    rng = np.random.default_rng(2)
    records = _records(rng)
    for r in records:
        if r["target"] == "Task09_Spleen":
            r["dice"] = 0.5  # constant Dice: correlations undefined for this target
    rows = table1(records, ["ccfv"], TARGETS)
    for row in rows:
        assert math.isnan(row["Task09_Spleen"])
        assert row["Avg"] == pytest.approx((row["Task03_Liver"] + row["Task10_Colon"]) / 2)


def test_table1_avg_nan_when_no_target_defined():
    records = [{"target": "T", "model": m, "dice": 0.5, "scores": {"ccfv": s}} for m, s in [("a", 1.0), ("b", 2.0)]]
    rows = table1(records, ["ccfv"], ["T"])
    assert all(math.isnan(r["Avg"]) for r in rows)


def test_to_csv_contents():
    rows = table1(_records(np.random.default_rng(3)), ["ccfv", "logme"], TARGETS)
    text = to_csv(rows, TARGETS)
    table = list(csv.reader(io.StringIO(text)))
    assert table[0] == ["method", "statistic", *TARGETS, "Avg"]
    assert len(table) == 1 + len(rows)
    for line, row in zip(table[1:], rows):
        assert line[:2] == [row["method"], row["statistic"]]
        for cell, key in zip(line[2:], [*TARGETS, "Avg"]):
            assert NUMBER.match(cell), cell
            assert math.isfinite(float(cell))
            assert float(cell) == pytest.approx(row[key], abs=5e-5)


def test_to_markdown_contents():
    rows = table1(_records(np.random.default_rng(4)), ["ccfv", "logme"], TARGETS)
    lines = to_markdown(rows, TARGETS).splitlines()
    assert lines[0] == "| Method | Metric | Task03 | Task09 | Task10 | Avg |"
    assert lines[1] == "|---|---|---|---|---|---|"
    assert len(lines) == 2 + len(rows)
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
    assert [c[:2] for c in cells] == [["CC-FV", "τ"], ["", "pearson"], ["LogME", "τ"], ["", "pearson"]]
    for row_cells, row in zip(cells, rows):
        for cell, key in zip(row_cells[2:], [*TARGETS, "Avg"]):
            assert NUMBER.match(cell), cell
            assert float(cell) == pytest.approx(row[key], abs=5e-5)


# --------------------------------------------------------------------------------------------------
# build_table1
# --------------------------------------------------------------------------------------------------


def _write_json(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def test_build_table1_end_to_end(tmp_path):
    targets = ["Task03_Liver", "Task09_Spleen"]
    models = ["m1", "m2", "m3"]
    rng = np.random.default_rng(11)
    score_files, dice_files, expected = {}, {}, {}
    for target in targets:
        for model in models:
            scores = {"ccfv": float(rng.normal()), "logme": float(rng.normal())}
            seeds = [float(v) for v in rng.uniform(0.2, 0.9, 3)]
            score_files[(target, model)] = _write_json(tmp_path / "scores" / target / f"{model}.json",
                                                       {"model_id": model, "scores": scores})
            dice_values = [*seeds, None]  # a seed with no defined Dice is skipped in the mean
            dice_files[(target, model)] = [
                _write_json(tmp_path / "dice" / target / model / f"seed{i}.json", {"mean_dice": d})
                for i, d in enumerate(dice_values)
            ]
            expected[(target, model)] = (scores, float(np.mean(seeds)))

    out_csv, out_md, out_records = tmp_path / "t" / "table1.csv", tmp_path / "t" / "table1.md", tmp_path / "t" / "scores_and_dice.csv"
    tables = build_tables(score_files, dice_files, {"table1": ["ccfv", "logme"], "table2": ["logme"]}, targets,
                          tmp_path / "t", labels={"logme": "LogME (ours)"})
    rows = tables["table1"]
    assert tables["table2"] == rows[2:]
    assert rows[2]["method"] == "LogME (ours)"

    assert len(rows) == 4
    for row, (metric, stat) in zip(rows, [("ccfv", "tau"), ("ccfv", "pearson"), ("logme", "tau"), ("logme", "pearson")]):
        for target in targets:
            x = [expected[(target, m)][0][metric] for m in models]
            y = [expected[(target, m)][1] for m in models]
            want = slow_weighted_tau(x, y) if stat == "tau" else np.corrcoef(x, y)[0, 1]
            assert row[target] == pytest.approx(want, rel=1e-9, abs=1e-12)
    assert out_csv.read_text() == to_csv(rows, targets)
    assert out_md.read_text() == to_markdown(rows, targets)

    audit = list(csv.DictReader(io.StringIO(out_records.read_text())))
    assert [(r["target"], r["model"]) for r in audit] == [(t, m) for t in targets for m in models]
    for r in audit:
        scores, dice_mean = expected[(r["target"], r["model"])]
        assert float(r["dice_mean_over_seeds"]) == pytest.approx(dice_mean, abs=1e-6)
        assert r["n_seeds"] == "3"
        assert float(r["ccfv"]) == pytest.approx(scores["ccfv"], rel=1e-5)
    assert (tmp_path / "t" / "table2.md").read_text() == to_markdown(rows[2:], targets)
    assert sorted(p.name for p in (tmp_path / "t").iterdir()) == [
        "scores_and_dice.csv", "table1.csv", "table1.md", "table2.csv", "table2.md"]


def test_build_table1_pair_without_defined_dice(tmp_path):
    score_files, dice_files = {}, {}
    for model, dice in [("m1", 0.5), ("m2", None), ("m3", 0.7)]:
        score_files[("T", model)] = _write_json(tmp_path / f"{model}.scores.json", {"scores": {"ccfv": 1.0}})
        dice_files[("T", model)] = [_write_json(tmp_path / f"{model}.dice.json", {"mean_dice": dice})]
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"no defined Dice for m2 on T.*m2\.dice\.json"):
        build_tables(score_files, dice_files, {"table1": ["ccfv"]}, ["T"], out)
    assert not out.exists()  # nothing half-written


def test_build_tables_metric_missing_from_a_score_file(tmp_path):
    score_files, dice_files = {}, {}
    for model, scores in [("m1", {"ccfv": 1.0, "leep": 2.0}), ("m2", {"ccfv": 2.0})]:
        score_files[("T", model)] = _write_json(tmp_path / f"{model}.scores.json", {"scores": scores})
        dice_files[("T", model)] = [_write_json(tmp_path / f"{model}.dice.json", {"mean_dice": 0.5})]
    with pytest.raises(ValueError, match=r"m2\.scores\.json: no score for \['leep'\]"):
        build_tables(score_files, dice_files, {"table1": ["ccfv", "leep"]}, ["T"], tmp_path / "out")
    assert not (tmp_path / "out").exists()
