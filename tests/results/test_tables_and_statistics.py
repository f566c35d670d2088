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
from scipy import stats

from ccfv.results.tables import build_tables, correlations, table1, to_csv, to_markdown

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
    assert [c[:2] for c in cells] == [["CC-FV", "weighted τ"], ["", "Pearson"], ["LogME", "weighted τ"], ["", "Pearson"]]
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
        "paper_comparison.csv", "paper_comparison.md", "records.json", "scores_and_dice.csv", "table1.csv",
        "table1.md", "table1.tex", "table2.csv", "table2.md", "table2.tex"]
    saved = json.loads((tmp_path / "t" / "records.json").read_text())
    first = next(r for r in saved if (r["target"], r["model"]) == (targets[0], models[0]))
    assert first["dice_per_seed"][-1] is None and len(first["dice_per_seed"]) == 4
    assert first["dice"] == pytest.approx(np.mean(first["dice_per_seed"][:3]))
    # no MSD target in common with the paper but Task03 and Task09: compared per target, no Avg
    comparison = list(csv.DictReader(io.StringIO((tmp_path / "t" / "paper_comparison.csv").read_text())))
    assert {r["target"] for r in comparison} == {"Task03_Liver", "Task09_Spleen"}


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


# --------------------------------------------------------------------------------------------------
# The paper's values, LaTeX
# --------------------------------------------------------------------------------------------------

from ccfv.bank.model_ids import model_architecture, model_source
from ccfv.results.measures import bootstrap_interval, noise_ceiling, permutation_pvalue, statistic, top1_regret
from ccfv.results.paper import PAPER_TARGETS, PAPER_VALUES, paper_comparison
from ccfv.results.static_rankers import baseline_scores
from ccfv.results.statistics import analyse
from ccfv.results.tables import to_latex


def test_paper_values_are_the_published_tables():
    # Table 1 and Table 2 of Yang et al. (MICCAI 2023): spot checks and their own averages
    assert PAPER_VALUES["table1"]["ccfv"]["pearson"] == [0.8608, 0.0903, 0.9609, 0.7491, 0.8406, 0.7003]
    assert PAPER_VALUES["table2"]["ccfv_kl"]["tau"][0] == -0.5658
    assert PAPER_VALUES["table1"]["ccfv"]["tau"] == PAPER_VALUES["table2"]["ccfv"]["tau"]
    for table in PAPER_VALUES.values():
        for metric, stats_ in table.items():
            for values in stats_.values():
                assert len(values) == len(PAPER_TARGETS) + 1
                # the published Avg is the rounded mean, except the paper's own Single-scale row
                # (mean of its five values 0.4350, printed Avg 0.4341): transcribed as printed
                tolerance = 1e-3 if metric == "ccfv_single_scale" else 1e-4
                assert np.mean(values[:5]) == pytest.approx(values[5], abs=tolerance)


def test_paper_comparison_with_the_msd_targets():
    records = _records(np.random.default_rng(5), targets=PAPER_TARGETS)
    rows = table1(records, ["ccfv", "logme"], PAPER_TARGETS)
    comparison = paper_comparison({"table1": rows}, PAPER_TARGETS)
    assert len(comparison) == 4 * 6  # 2 metrics x 2 statistics x (5 targets + Avg)
    liver = next(r for r in comparison if r["metric"] == "ccfv" and r["statistic"] == "tau" and r["target"] == "Task03_Liver")
    assert liver["paper"] == 0.6374 and liver["difference"] == pytest.approx(rows[0]["Task03_Liver"] - 0.6374)
    assert paper_comparison({"table1": rows}, ["Task91_SynthLiver"]) == []


def test_to_latex_has_every_number_and_the_papers_in_parentheses():
    records = _records(np.random.default_rng(6), targets=PAPER_TARGETS)
    rows = table1(records, ["ccfv"], PAPER_TARGETS)
    tex = to_latex(rows, PAPER_TARGETS, caption="Table 1 & more")
    assert tex.startswith("\\begin{table}") and "\\caption{Table 1 \\& more}" in tex
    assert f"{rows[0]['Task03_Liver']:.4f} (0.6374)" in tex and f"{rows[1]['Avg']:.4f} (0.7003)" in tex
    assert tex.count("\\\\") == 1 + len(rows)


# --------------------------------------------------------------------------------------------------
# Statistics beyond the paper
# --------------------------------------------------------------------------------------------------


def test_model_ids():
    assert model_architecture("unetr-Task91_SynthLiver") == "unetr" and model_source("unetr-random") is None
    assert model_source("unet-Task03_Liver") == "Task03_Liver"
    with pytest.raises(ValueError, match="architecture"):
        model_architecture("random")


def test_one_tau_recomputed_independently():
    # a bank of 5 models: the slow pairwise reference against the fast path used in the statistics
    scores = [0.3, -1.2, 2.5, 0.9, 0.1]
    dice = [0.61, 0.42, 0.77, 0.58, 0.66]
    assert statistic("tau", scores, dice) == pytest.approx(slow_weighted_tau(scores, dice), abs=1e-12)
    assert statistic("pearson", scores, dice) == pytest.approx(np.corrcoef(scores, dice)[0, 1], abs=1e-12)


def test_one_bootstrap_interval_recomputed_independently():
    scores = [0.3, -1.2, 2.5, 0.9, 0.1, 1.7]
    dice = [0.61, 0.42, 0.77, 0.58, 0.66, 0.70]
    got = bootstrap_interval(scores, dice, "tau", n_resamples=300, seed=7)
    # independently: the same seeded draws, the slow tau, ties and all, degenerate resamples dropped
    draws = np.random.default_rng(7).integers(0, 6, size=(300, 6))
    values = []
    for idx in draws:
        x = [scores[i] for i in idx]
        y = [dice[i] for i in idx]
        if len(set(x)) > 1 and len(set(y)) > 1:
            values.append(stats.weightedtau(x, y).statistic)
    assert got["n_valid"] == len(values) < 300 or got["n_valid"] == len(values)
    assert got["low"] == pytest.approx(np.quantile(values, 0.025), abs=1e-12)
    assert got["high"] == pytest.approx(np.quantile(values, 0.975), abs=1e-12)
    assert got == bootstrap_interval(scores, dice, "tau", n_resamples=300, seed=7)  # seeded


def test_bootstrap_degenerate_resamples_are_dropped():
    got = bootstrap_interval([1.0, 2.0], [0.1, 0.2], "pearson", n_resamples=200, seed=0)
    # with 2 models, half of the resamples draw one model twice; the rest have r = 1
    assert 60 < got["n_valid"] < 140 and got["low"] == got["high"] == pytest.approx(1.0)
    assert math.isnan(bootstrap_interval([1.0, 1.0], [0.1, 0.2], "tau", n_resamples=50)["low"])


def test_permutation_pvalue_exact_and_monte_carlo():
    x, y = [1.0, 2.0, 3.0, 4.0], [0.1, 0.2, 0.3, 0.4]
    assert permutation_pvalue(x, y, "tau") == pytest.approx(1 / 24)  # only the identity reaches tau = 1
    assert permutation_pvalue(x, y[::-1], "pearson") == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=9), rng.normal(size=9)  # 9! > 2000: Monte Carlo
    p = permutation_pvalue(x, y, "pearson", n_permutations=2000, seed=3)
    assert p == permutation_pvalue(x, y, "pearson", n_permutations=2000, seed=3)
    exceed = np.mean([np.corrcoef(x, y[rng.permutation(9)])[0, 1] >= np.corrcoef(x, y)[0, 1] for _ in range(4000)])
    assert p == pytest.approx(exceed, abs=0.04)


def test_top1_regret_and_ties():
    assert top1_regret([3, 1, 2], [0.5, 0.9, 0.7]) == {"regret": pytest.approx(0.4), "picked": [0]}
    assert top1_regret([1, 3, 2], [0.5, 0.9, 0.7])["regret"] == 0.0
    tied = top1_regret([1, 1, 0], [0.5, 0.9, 0.7])  # a coin flip between the first two
    assert tied["regret"] == pytest.approx(0.9 - 0.7) and tied["picked"] == [0, 1]


def test_noise_ceiling_one_seed_is_not_available():
    result = noise_ceiling([[0.5], [0.6], [0.7]])
    assert result["available"] is False and math.isnan(result["tau"]) and math.isnan(result["split_half_pearson"])


def test_noise_ceiling_tracks_seed_noise():
    rng = np.random.default_rng(0)
    truth = np.linspace(0.3, 0.9, 6)
    quiet = [[t + e for e in rng.normal(0, 0.001, 4)] for t in truth]
    loud = [[t + e for e in rng.normal(0, 0.3, 4)] for t in truth]
    q, lo = noise_ceiling(quiet, seed=1), noise_ceiling(loud, seed=1)
    assert q["available"] and q["tau"] > 0.99 and q["pearson"] > 0.99 and q["split_half_pearson"] > 0.99
    assert lo["pearson"] < q["pearson"] and lo["tau"] < q["tau"]
    assert q["seed_sd"] == pytest.approx(np.sqrt(np.mean(np.var(quiet, axis=1, ddof=1))))
    # split halves with 2 seeds: exactly the correlation of seed 0 with seed 1
    two = [[0.2, 0.3], [0.5, 0.4], [0.9, 0.7], [0.6, 0.65]]
    assert noise_ceiling(two)["split_half_pearson"] == pytest.approx(np.corrcoef([r[0] for r in two], [r[1] for r in two])[0, 1])


def test_baseline_scores_from_model_ids_and_split_sizes():
    models = ["unet-Task01_A", "unetr-Task02_B", "unet-random", "unet-Task02_B"]
    out = baseline_scores(models, {"Task01_A": 30, "Task02_B": 12})
    assert out["pretrained_first"] == [1, 1, 0, 1]
    assert out["same_architecture_first"] == [1, 0, 1, 1]  # unet is the bank's most common architecture
    assert out["larger_source_first"] == [30, 12, 0, 12]
    with pytest.raises(ValueError, match="Task02_B"):
        baseline_scores(models, {"Task01_A": 30})


def test_analyse_rows_and_baselines():
    records = _records(np.random.default_rng(8), targets=["Task01_A", "Task02_B"],
                       models=("unet-Task03_C", "unet-Task04_D", "unet-random"))
    for r in records:
        r["dice_per_seed"] = [r["dice"]]
    out = analyse(records, ["ccfv", "logme"], ["Task01_A", "Task02_B"], {"Task03_C": 10, "Task04_D": 20},
                  n_bootstrap=50, n_permutations=100, n_simulations=10)
    methods = {r["metric"] for r in out["statistics"]}
    assert methods == {"ccfv", "logme", "random", "pretrained_first", "same_architecture_first", "larger_source_first"}
    assert len(out["statistics"]) == 2 * 6 * 2 and len(out["regret"]) == 2 * 6
    for r in out["regret"]:
        assert 0.0 <= r["regret"] <= r["best_dice"]
    assert all(not r["available"] for r in out["noise_ceiling"])
    again = analyse(records, ["ccfv", "logme"], ["Task01_A", "Task02_B"], {"Task03_C": 10, "Task04_D": 20},
                    n_bootstrap=50, n_permutations=100, n_simulations=10)
    assert json.dumps(again, default=str) == json.dumps(out, default=str)  # seeded


# --------------------------------------------------------------------------------------------------
# Snapshot ids, selection measures (Kendall's tau-b, Rel@1, top-3 hit) and leave-one-out stability
# --------------------------------------------------------------------------------------------------

import itertools  # noqa: E402

from ccfv.bank.model_ids import model_order, model_snapshot
from ccfv.results.measures import (
    SELECTION_MEASURES,
    kendall_tau,
    leave_one_out,
    loo_stability,
    method_ranking_stability,
    relative_top1,
    statistic_batch,
    top_k_hit,
)
from ccfv.results.statistics import build_statistics


def slow_kendall_tau_b(x, y):
    """Kendall's tau-b by counting pairs: (concordant - discordant) / sqrt((n0 - ties in x) (n0 - ties in y))."""
    concordant = discordant = tied_x = tied_y = pairs = 0
    for i in range(len(x)):
        for j in range(i + 1, len(x)):
            pairs += 1
            dx, dy = x[i] - x[j], y[i] - y[j]
            tied_x += dx == 0
            tied_y += dy == 0
            if dx * dy > 0:
                concordant += 1
            elif dx * dy < 0:
                discordant += 1
    if tied_x == pairs or tied_y == pairs:
        return math.nan
    return (concordant - discordant) / math.sqrt((pairs - tied_x) * (pairs - tied_y))


def slow_relative_top1(scores, dice):
    """The models sharing the highest score, their mean Dice, over the best Dice."""
    top = max(scores)
    tied = [d for s, d in zip(scores, dice) if s == top]
    return (sum(tied) / len(tied)) / max(dice)


def slow_top_k_hit(scores, dice, k=3):
    """Every order of the models that sorts the scores from high to low (each tie-break equally likely):
    the share of them with a best-Dice model among the first k."""
    best = {i for i, d in enumerate(dice) if d == max(dice)}
    orders = [order for order in itertools.permutations(range(len(scores)))
              if all(scores[order[i]] >= scores[order[i + 1]] for i in range(len(order) - 1))]
    return sum(bool(best & set(order[:k])) for order in orders) / len(orders)


def slow_leave_one_out(scores, dice):
    """The public weighted tau on each bank with one model left out, by building the lists."""
    out = []
    for left_out in range(len(scores)):
        x = [s for i, s in enumerate(scores) if i != left_out]
        y = [d for i, d in enumerate(dice) if i != left_out]
        out.append(math.nan if len(set(x)) < 2 or len(set(y)) < 2 else stats.weightedtau(x, y).statistic)
    return out


#: Hand-made banks with ties: in the scores at the top, at the third place, in the best Dice, everywhere.
HAND_MADE = [
    ([3, 1, 2, 0, -1], [0.5, 0.9, 0.7, 0.2, 0.3]),           # no ties; the best model ranked 3rd
    ([1, 1, 0, 0, 0], [0.5, 0.9, 0.7, 0.6, 0.1]),             # two tied first
    ([5, 4, 2, 2, 2, 1], [0.3, 0.4, 0.5, 0.9, 0.2, 0.1]),     # three tied for the third place, one best among them
    ([5, 2, 2, 2, 2, 1], [0.3, 0.9, 0.9, 0.2, 0.1, 0.4]),     # two best models, both in a tie for places 2-5
    ([1, 1, 1, 1], [0.2, 0.6, 0.6, 0.4]),                     # every score tied: a random ranking
    ([4, 3, 2, 1, 0, -1, -2], [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]),  # reversed: the best ranked last
    ([0.2, 0.9, 0.9, 0.1], [0.5, 0.5, 0.8, 0.8]),             # ties in both
    ([2.0, 1.0, 3.0], [0.4, 0.6, 0.5]),                       # three models: every top 3 hits
]


@pytest.mark.parametrize(("scores", "dice"), HAND_MADE)
def test_selection_measures_against_slow_references(scores, dice):
    assert relative_top1(scores, dice) == pytest.approx(slow_relative_top1(scores, dice), abs=1e-12)
    assert top_k_hit(scores, dice, 3) == pytest.approx(slow_top_k_hit(scores, dice, 3), abs=1e-12)
    for k in (1, 2, 4):
        assert top_k_hit(scores, dice, k) == pytest.approx(slow_top_k_hit(scores, dice, k), abs=1e-12)
    expected = slow_kendall_tau_b(scores, dice)
    for got in (kendall_tau(scores, dice), statistic("kendall", scores, dice),
                statistic_batch("kendall", np.array([scores], float), np.array([dice], float))[0]):
        assert (math.isnan(got) and math.isnan(expected)) or got == pytest.approx(expected, abs=1e-12)
    loo = leave_one_out(scores, dice)
    np.testing.assert_allclose(loo, slow_leave_one_out(scores, dice), atol=1e-12)


def test_selection_measures_hand_computed():
    # two tied first (Dice 0.5 and 0.9), best 0.9: Rel@1 = 0.7 / 0.9
    assert relative_top1([1, 1, 0], [0.5, 0.9, 0.7]) == pytest.approx(0.7 / 0.9)
    # the best model is one of 3 tied for the third place: a hit with probability 1/3
    assert top_k_hit([5, 4, 2, 2, 2, 1], [0.3, 0.4, 0.5, 0.9, 0.2, 0.1]) == pytest.approx(1 / 3)
    # a random ranking of 4 with one best: 3 of the 4 places are in the top 3
    assert top_k_hit([0, 0, 0, 0], [0.1, 0.2, 0.3, 0.4]) == pytest.approx(0.75)
    assert top_k_hit([4, 3, 2, 1], [0.1, 0.2, 0.3, 0.4]) == 0.0 and top_k_hit([4, 3, 2, 1], [0.4, 0.1, 0.2, 0.3]) == 1.0
    assert top_k_hit([float("nan"), 1, 2, 3], [0.9, 0.1, 0.2, 0.3]) == 0.0  # a missing score ranks last
    assert math.isnan(relative_top1([1, 2], [0.0, 0.0]))  # no best Dice to divide by
    assert math.isnan(kendall_tau([1, 1, 1], [0.1, 0.2, 0.3]))


def test_selection_measures_random_banks_with_ties():
    rng = np.random.default_rng(11)
    for _ in range(40):
        n = int(rng.integers(4, 8))
        scores = list(rng.integers(0, 4, n).astype(float))  # many ties
        dice = list(np.round(rng.uniform(0.1, 0.9, n), 1))   # some tied, sometimes at the best
        assert top_k_hit(scores, dice) == pytest.approx(slow_top_k_hit(scores, dice), abs=1e-12)
        assert relative_top1(scores, dice) == pytest.approx(slow_relative_top1(scores, dice), abs=1e-12)
        expected = slow_kendall_tau_b(scores, dice)
        got = statistic_batch("kendall", np.array([scores]), np.array([dice]))[0]
        assert (math.isnan(got) and math.isnan(expected)) or got == pytest.approx(expected, abs=1e-12)
        if math.isfinite(expected):
            assert stats.kendalltau(scores, dice).statistic == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("measure", SELECTION_MEASURES)
def test_selection_bootstrap_recomputed_with_the_slow_references(measure):
    scores = [0.3, -1.2, 2.5, 0.9, 0.1, 1.7, 0.9]
    dice = [0.61, 0.42, 0.77, 0.58, 0.66, 0.70, 0.77]
    slow = {"kendall": slow_kendall_tau_b, "rel_at_1": slow_relative_top1, "top3": slow_top_k_hit}[measure]
    got = bootstrap_interval(scores, dice, measure, n_resamples=200, seed=4)
    draws = np.random.default_rng(4).integers(0, 7, size=(200, 7))
    values = [slow([scores[i] for i in idx], [dice[i] for i in idx]) for idx in draws]
    values = [v for v in values if math.isfinite(v)]
    assert got["n_valid"] == len(values)
    assert got["low"] == pytest.approx(np.quantile(values, 0.025), abs=1e-12)
    assert got["high"] == pytest.approx(np.quantile(values, 0.975), abs=1e-12)


def test_leave_one_out_stability_against_a_slow_reference():
    scores = [0.3, -1.2, 2.5, 0.9, 0.1, 1.7]
    dice = [0.61, 0.42, 0.77, 0.58, 0.66, 0.70]
    full = stats.weightedtau(scores, dice).statistic
    loo = slow_leave_one_out(scores, dice)
    changes = [abs(v - full) for v in loo]
    got = loo_stability(scores, dice)
    assert got["tau"] == pytest.approx(full)
    assert got["loo_tau_min"] == pytest.approx(min(loo)) and got["loo_tau_max"] == pytest.approx(max(loo))
    assert got["loo_max_change"] == pytest.approx(max(changes))
    assert got["most_influential"] == changes.index(max(changes))
    # a perfect metric stays perfect without any one model
    perfect = loo_stability([1, 2, 3, 4, 5], [0.1, 0.2, 0.3, 0.4, 0.5])
    assert perfect["loo_max_change"] == pytest.approx(0.0) and perfect["loo_tau_min"] == pytest.approx(1.0)


def test_method_ranking_stability_against_a_slow_reference():
    dice = [0.61, 0.42, 0.77, 0.58, 0.66, 0.70]
    methods = {"a": [0.3, -1.2, 2.5, 0.9, 0.1, 1.7], "b": [1, 2, 3, 4, 5, 6], "c": [6, 1, 5, 2, 4, 3],
               "d": [1, 1, 1, 2, 2, 2], "constant": [0] * 6}
    full = {m: statistic("tau", s, dice) for m, s in methods.items()}
    loo = {m: leave_one_out(s, dice) for m, s in methods.items()}
    # slow: for each left-out model, the methods with a defined tau on both banks, their taus compared by pairs
    taus = []
    for left_out in range(len(dice)):
        mine = [m for m in methods if math.isfinite(full[m]) and math.isfinite(slow_leave_one_out(methods[m], dice)[left_out])]
        taus.append(slow_kendall_tau_b([full[m] for m in mine],
                                       [slow_leave_one_out(methods[m], dice)[left_out] for m in mine]))
    assert method_ranking_stability(full, loo) == pytest.approx(np.mean(taus), abs=1e-12)
    assert -1.0 <= method_ranking_stability(full, loo) <= 1.0
    # one method only: nothing to order
    assert math.isnan(method_ranking_stability({"a": full["a"]}, {"a": loo["a"]}))


def test_snapshot_model_ids():
    snapshot = "unet-Task91_SynthLiver@150"
    assert model_source(snapshot) == "Task91_SynthLiver" and model_architecture(snapshot) == "unet"
    assert model_snapshot(snapshot) == 150
    assert model_snapshot("unet-Task91_SynthLiver") is None and model_snapshot("unetr-random") is None
    for bad in ("unet-random@10", "unet-Task91_SynthLiver@", "unet-Task91_SynthLiver@x", "unet-Task91_SynthLiver@0",
                "unet-", "-Task91_SynthLiver"):
        with pytest.raises(ValueError, match="model id"):
            model_source(bad)
    ids = ["unet-random", "unet-Task92_B", "unet-Task92_B@1000", "unet-Task92_B@150", "unetr-Task92_B"]
    assert sorted(ids, key=model_order) == ["unet-Task92_B@150", "unet-Task92_B@1000", "unet-Task92_B",
                                            "unetr-Task92_B", "unet-random"]
    # snapshots count as pretrained and as their source's size
    out = baseline_scores(["unet-Task92_B@150", "unet-random"], {"Task92_B": 12})
    assert out["pretrained_first"] == [1, 0] and out["larger_source_first"] == [12, 0]


def test_analyse_selection_and_stability_rows():
    models = ("unet-Task03_C", "unet-Task03_C@50", "unetr-Task04_D", "unet-random", "unetr-random")
    targets = ["Task01_A", "Task02_B"]
    records = _records(np.random.default_rng(9), targets=targets, models=models)
    for r in records:
        r["dice_per_seed"] = [r["dice"]]
    counts = {"unet-Task03_C": 100, "unet-Task03_C@50": 100, "unetr-Task04_D": 900, "unet-random": 100,
              "unetr-random": 900}
    out = analyse(records, ["ccfv", "logme"], targets, {"Task03_C": 10, "Task04_D": 20}, n_bootstrap=60,
                  n_permutations=100, n_simulations=10, parameter_counts=counts)
    methods = {"ccfv", "logme", "random", "pretrained_first", "same_architecture_first", "larger_source_first",
               "larger_model_first"}
    assert {r["metric"] for r in out["selection"]} == methods
    assert len(out["selection"]) == len(methods) * len(SELECTION_MEASURES) * (len(targets) + 1)
    for target in targets:
        mine = sorted((r for r in records if r["target"] == target), key=lambda r: r["model"])
        dice = [r["dice"] for r in mine]
        scores = [r["scores"]["ccfv"] for r in mine]
        row = {r["statistic"]: r for r in out["selection"] if r["metric"] == "ccfv" and r["target"] == target}
        assert row["rel_at_1"]["value"] == pytest.approx(slow_relative_top1(scores, dice))
        assert row["top3"]["value"] == pytest.approx(slow_top_k_hit(scores, dice))
        assert row["kendall"]["value"] == pytest.approx(slow_kendall_tau_b(scores, dice))
        size = [counts[r["model"]] for r in mine]
        larger = {r["statistic"]: r["value"] for r in out["selection"]
                  if r["metric"] == "larger_model_first" and r["target"] == target}
        assert larger["top3"] == pytest.approx(slow_top_k_hit(size, dice))
        rand = {r["statistic"]: r for r in out["selection"] if r["metric"] == "random" and r["target"] == target}
        assert rand["rel_at_1"]["value"] == pytest.approx(np.mean(dice) / max(dice))
        assert rand["top3"]["value"] == pytest.approx(1 - math.comb(4, 3) / math.comb(5, 3))  # one best of 5
        assert rand["kendall"]["value"] == 0.0 and math.isnan(rand["kendall"]["ci_low"])
        stable = next(r for r in out["stability"] if r["metric"] == "ccfv" and r["target"] == target)
        loo = slow_leave_one_out(scores, dice)
        assert stable["loo_tau_min"] == pytest.approx(min(loo))
        assert stable["most_influential"] in models
    for measure in SELECTION_MEASURES:
        per_target = [r["value"] for r in out["selection"] if r["metric"] == "ccfv" and r["statistic"] == measure
                      and r["target"] != "Avg"]
        avg = next(r for r in out["selection"] if r["metric"] == "ccfv" and r["statistic"] == measure
                   and r["target"] == "Avg")
        assert avg["value"] == pytest.approx(np.mean(per_target))
        assert avg["ci_low"] <= avg["ci_high"]
    assert {r["metric"] for r in out["stability"]} == methods - {"random"}
    again = analyse(records, ["ccfv", "logme"], targets, {"Task03_C": 10, "Task04_D": 20}, n_bootstrap=60,
                    n_permutations=100, n_simulations=10, parameter_counts=counts)
    assert json.dumps(again, default=str) == json.dumps(out, default=str)  # seeded
    with pytest.raises(ValueError, match="unetr-random"):
        analyse(records, ["ccfv"], targets, {"Task03_C": 10, "Task04_D": 20}, n_bootstrap=5, n_permutations=5,
                n_simulations=2, parameter_counts={m: 1 for m in models if m != "unetr-random"})


def test_build_statistics_writes_selection_and_stability_with_flags(tmp_path):
    models = ("unet-Task03_C", "unet-Task03_C@50", "unet-Task04_D", "unet-random")
    targets = ["Task01_A", "Task02_B"]
    records = _records(np.random.default_rng(3), targets=targets, models=models)
    for r in records:
        r["dice_per_seed"] = [r["dice"]]
    (tmp_path / "records.json").write_text(json.dumps(records))
    why = "3 of 4 models fine-tune to a mean Dice below 0.05"
    build_statistics(tmp_path / "records.json", {"table1": ["ccfv", "logme"]}, targets,
                     {"Task03_C": 8, "Task04_D": 9}, tmp_path, n_bootstrap=30, n_permutations=30, n_simulations=5,
                     flags={"Task02_B": why}, parameter_counts={m: 7 for m in models})
    selection = list(csv.DictReader((tmp_path / "selection.csv").open()))
    assert list(selection[0]) == ["method", "metric", "kind", "target", "statistic", "value", "ci_low", "ci_high",
                                  "n_valid", "ground_truth"]
    assert {r["target"]: r["ground_truth"] for r in selection} == {"Task01_A": "ok", "Task02_B": "cannot rank",
                                                                   "Avg": ""}
    assert "Larger model first" in {r["method"] for r in selection}
    stability = list(csv.DictReader((tmp_path / "stability.csv").open()))
    assert {r["target"]: r["ground_truth"] for r in stability} == {"Task01_A": "ok", "Task02_B": "cannot rank"}
    assert {r["most_influential"] for r in stability if r["metric"] == "ccfv"} <= set(models)
    md = (tmp_path / "selection.md").read_text()
    assert md.count("| Method | Task01 | Task02† | Avg |") == 3
    assert f"† Task02_B: the fine-tuned Dice cannot rank the bank's models: {why}." in md
    assert "† Avg includes the flagged target(s)." in md
    stable_md = (tmp_path / "stability.md").read_text()
    assert "| Method | Task01 | Task02† |" in stable_md and "† Task02_B: the fine-tuned Dice" in stable_md
    assert "Ranking of the methods by weighted τ" in stable_md
    # the tables of before keep their columns
    assert list(csv.DictReader((tmp_path / "statistics.csv").open()))[0].keys() == {
        *"method metric kind target statistic value ci_low ci_high n_valid p_value ground_truth".split()}


# --------------------------------------------------------------------------------------------------
# Larger model first: parameter counts of real saved bank models
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_bank_models(tmp_path_factory, tiny_dataset):
    """Two randomly initialised U-Nets saved by the workflow's own code: the tiny plans, and the same plans
    with twice the features per stage."""
    import shutil

    from ccfv.bank.training import random_model
    from ccfv.preprocess.paths import CONFIGURATION, PLANS_NAME

    root = tmp_path_factory.mktemp("params")
    wide = root / "wide_plans"
    wide.mkdir()
    shutil.copy(tiny_dataset.preprocessed / "dataset.json", wide / "dataset.json")
    plans = json.loads((tiny_dataset.preprocessed / f"{PLANS_NAME}.json").read_text())
    kwargs = plans["configurations"][CONFIGURATION]["architecture"]["arch_kwargs"]
    kwargs["features_per_stage"] = [2 * f for f in kwargs["features_per_stage"]]
    (wide / f"{PLANS_NAME}.json").write_text(json.dumps(plans))
    small = random_model(tiny_dataset.preprocessed, "unet-random", root / "bank" / "unet-random", seed=0)
    large = random_model(wide, "wide-random", root / "bank" / "wide-random", seed=0)
    return {"unet-random": small, "wide-random": large}


def test_parameter_count_of_saved_bank_models(two_bank_models):
    from safetensors import safe_open

    from ccfv.bank.model_card import load_bank_model, parameter_count
    from ccfv.bank.networks import is_head
    from ccfv.results.static_rankers import parameter_counts_of

    counts = parameter_counts_of(two_bank_models)
    for model, folder in two_bank_models.items():
        network, _ = load_bank_model(folder)
        # independently: the network's distinct parameters, its segmentation heads left out
        distinct = {id(p): p for name, p in network.named_parameters() if not is_head(name)}
        assert counts[model] == sum(p.numel() for p in distinct.values()) > 0
        # and with the heads: every tensor safetensors itself reads from the file
        with safe_open(str(folder / "weights.safetensors"), framework="numpy") as f:
            everything = sum(int(np.prod(f.get_slice(k).get_shape())) for k in f.keys())
        assert parameter_count(folder, include_heads=True) == everything > counts[model]
    assert counts["wide-random"] > 3 * counts["unet-random"]  # twice the width: about four times the weights
    ranker = baseline_scores(list(two_bank_models), {}, parameter_counts=counts)["larger_model_first"]
    assert ranker == [counts["unet-random"], counts["wide-random"]]
    assert top_k_hit(ranker, [0.3, 0.6], k=1) == 1.0 and relative_top1(ranker, [0.6, 0.3]) == 0.5


def test_parameter_count_errors_name_the_file(tmp_path):
    from ccfv.bank.model_card import parameter_count

    with pytest.raises(FileNotFoundError, match="weights.safetensors: missing"):
        parameter_count(tmp_path)
    (tmp_path / "weights.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(ValueError, match=r"weights\.safetensors: not a safetensors file \(header is not JSON"):
        parameter_count(tmp_path)
    (tmp_path / "weights.safetensors").write_bytes(b"\xff" * 12)
    with pytest.raises(ValueError, match="header length"):
        parameter_count(tmp_path)
    header = json.dumps({"w": {"dtype": "F32", "shape": [2, "x"], "data_offsets": [0, 8]}}).encode()
    (tmp_path / "weights.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 8)
    with pytest.raises(ValueError, match="tensor 'w' has no valid shape"):
        parameter_count(tmp_path)


def test_static_rankers_note_says_when_two_rankers_cannot_differ():
    from ccfv.results.static_rankers import static_rankers_note

    def records(target, models):
        return [{"target": target, "model": m} for m in models]

    bank = ["unet-Task02_B", "unet-Task03_C", "unetr-Task02_B", "unet-random", "unetr-random"]
    recs = records("Task01_A", bank) + records("Task04_D", ["unet-Task02_B", "unetr-Task03_C", "unet-random"])
    same = static_rankers_note(recs, ["Task01_A", "Task04_D"], {"Task02_B": 12, "Task03_C": 12})
    assert "Larger source dataset first**: by the source task's training cases (Task02 12, Task03 12)" in same
    assert "on Task01, Task04 every source has the same number, so there it orders exactly as Pretrained first" \
        in same
    assert "most common architecture first (unet;" in same and "Larger model first" not in same
    counts = {m: 1000 if m.startswith("unet-") else 5000 for m in [*bank, "unetr-Task03_C"]}
    differ = static_rankers_note(recs, ["Task01_A", "Task04_D"], {"Task02_B": 30, "Task03_C": 12}, counts)
    assert "exactly as" not in differ
    assert "**Larger model first**: by the number of weights, heads excluded (unet 1,000, unetr 5,000;" in differ
    assert static_rankers_note([], ["Task01_A"], {}) == ""


def test_eta_squared_against_the_anova_decomposition():
    from ccfv.results.measures import eta_squared

    values = [1.0, 2.0, 3.0, 10.0, 11.0, 12.0]
    groups = ["unet"] * 3 + ["unetr"] * 3
    # between: 3 * (2 - 6.5)^2 + 3 * (11 - 6.5)^2 = 121.5; total: 121.5 + 2 * (1 + 0 + 1) = 125.5
    assert eta_squared(values, groups) == pytest.approx(121.5 / 125.5)
    assert eta_squared([1.0, 2.0, 1.0, 2.0], ["a", "a", "b", "b"]) == 0.0
    assert math.isnan(eta_squared([1.0, 1.0], ["a", "b"]))
    with pytest.raises(ValueError, match="equally long"):
        eta_squared([1.0], ["a", "b"])


def test_architecture_effect_rows_start_with_the_dice():
    from ccfv.results.statistics import architecture_effect

    records = [{"target": "T", "model": m, "dice": d, "scores": {"ccfv": s}} for m, d, s in
               [("unet-A", 0.5, 1.0), ("unet-random", 0.3, 1.1), ("unetr-A", 0.6, 5.0), ("unetr-random", 0.2, 5.2)]]
    rows = architecture_effect(records, ["ccfv"], ["T"])
    assert [r["metric"] for r in rows] == ["dice", "ccfv"]
    assert rows[0]["eta_squared"] == pytest.approx(0.0, abs=1e-12)  # 0.4 and 0.4: the architecture explains none
    assert rows[1]["eta_squared"] > 0.99 and rows[1]["n_architectures"] == 2
