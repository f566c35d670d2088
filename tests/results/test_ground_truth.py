"""Tests for ccfv.results.ground_truth: the health rule on hand-made Dice tables (all zero, ties at the top, healthy,
seed noise), its thresholds and config, and a broken ground truth flagged in every written table."""
from __future__ import annotations

import csv
import io
import json
import math
import statistics
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from ccfv.results.ground_truth import (
    HealthRule,
    build_ground_truth,
    check_ground_truth,
    check_target,
    flags,
    read_csv,
    to_markdown,
    verdict,
)
from ccfv.results.statistics import build_statistics
from ccfv.results.tables import build_tables

ROOT = Path(__file__).resolve().parents[2]
MODELS = ["unet-Task01_A", "unet-Task02_B", "unet-random", "unetr-Task01_A", "unetr-Task02_B", "unetr-random"]


def one_seed(values):
    return [[v] for v in values]


# --------------------------------------------------------------------------------------------------
# The rule on hand-made Dice tables
# --------------------------------------------------------------------------------------------------


def test_all_zero_cannot_rank():
    row = check_target(MODELS, one_seed([0.0] * 6), target="T")
    assert not row["can_rank"]
    assert row["n_near_zero"] == 6 and row["n_tied_top"] == 6
    assert row["dice_min"] == row["dice_median"] == row["dice_max"] == 0.0
    assert len(row["reasons"]) == 3
    assert row["reasons"][0].startswith("6 of 6 models fine-tune to a mean Dice below 0.05")
    assert row["reasons"][1] == "no model learnt the target: the best mean Dice is 0.000, below 0.1"
    assert row["reasons"][2].startswith("6 of 6 models are tied at the top")


def test_nothing_learnt_cannot_rank():
    # measured: Task94 of the tiny integration config after one fine-tuning iteration, every model a few
    # hundredths above zero_dice, none segmenting anything
    row = check_target(MODELS[:4], one_seed([0.0596, 0.0567, 0.0880, 0.0666]))
    assert row["n_near_zero"] == 0 and row["n_tied_top"] == 1
    assert row["reasons"] == ["no model learnt the target: the best mean Dice is 0.088, below 0.1"]
    assert check_target(MODELS[:4], one_seed([0.0596, 0.0567, 0.1, 0.0666]))["can_rank"]


def test_the_issues_measured_task92_cannot_rank():
    # issue 13: five of six bank models at a mean Dice of 0.000, the sixth at 0.326
    row = check_target(MODELS, one_seed([0.0, 0.0, 0.0, 0.0, 0.0, 0.326]))
    assert not row["can_rank"] and row["n_near_zero"] == 5 and row["n_tied_top"] == 1
    assert row["best"] == MODELS[-1] and row["near_zero"] == ";".join(MODELS[:5])


def test_ties_at_the_top_cannot_rank():
    dice = [0.600, 0.605, 0.598, 0.596, 0.30, 0.10]  # four within 0.01 of the best: more than half
    row = check_target(MODELS, one_seed(dice))
    assert not row["can_rank"] and row["n_near_zero"] == 0 and row["n_tied_top"] == 4
    assert row["tied_top"].split(";") == [MODELS[1], MODELS[0], MODELS[2], MODELS[3]]  # best first
    assert row["reasons"] == ["4 of 6 models are tied at the top, within 0.01 Dice of the best (0.605): more "
                              "than 50% of the bank"]
    # three of six tied (exactly half) is still a ranking
    assert check_target(MODELS, one_seed([0.600, 0.605, 0.598, 0.50, 0.30, 0.10]))["can_rank"]


def test_healthy_ground_truth_can_rank():
    dice = [0.45, 0.52, 0.61, 0.70, 0.78, 0.03]
    row = check_target(MODELS, one_seed(dice))
    assert row["can_rank"] and row["reasons"] == []
    assert row["dice_median"] == pytest.approx(statistics.median(dice))
    assert (row["dice_min"], row["dice_max"]) == (0.03, 0.78)
    assert row["n_near_zero"] == 1 and row["near_zero_share"] == pytest.approx(1 / 6)
    assert row["source_spread"] == pytest.approx(statistics.stdev(dice))
    assert math.isnan(row["seed_sd"]) and math.isnan(row["spread_ratio"])  # one seed: not applicable


def test_a_third_near_zero_passes_more_fails():
    assert check_target(MODELS, one_seed([0.0, 0.01, 0.5, 0.6, 0.7, 0.8]))["can_rank"]  # 2 of 6
    assert not check_target(MODELS, one_seed([0.0, 0.01, 0.02, 0.6, 0.7, 0.8]))["can_rank"]  # 3 of 6
    assert check_target(MODELS[:3], one_seed([0.0, 0.5, 0.7]))["can_rank"]  # 1 of 3
    assert check_target(MODELS, one_seed([0.049, 0.05, 0.5, 0.6, 0.7, 0.8]))["n_near_zero"] == 1  # strictly below


def test_source_spread_against_seed_noise():
    # independent arithmetic: SD over models of the seed means (ddof=1) against sqrt(mean of per-model
    # seed variances, ddof=1)
    quiet = [[0.30, 0.31], [0.50, 0.52], [0.70, 0.69], [0.40, 0.42]]
    loud = [[0.25, 0.75], [0.60, 0.44], [0.20, 0.88], [0.70, 0.42]]  # means 0.50 ... 0.56
    models = MODELS[:4]
    for table, can_rank in ((quiet, True), (loud, False)):
        row = check_target(models, table)
        means = [sum(s) / len(s) for s in table]
        seed_sd = math.sqrt(sum(statistics.variance(s) for s in table) / len(table))
        assert row["source_spread"] == pytest.approx(statistics.stdev(means))
        assert row["seed_sd"] == pytest.approx(seed_sd)
        assert row["spread_ratio"] == pytest.approx(statistics.stdev(means) / seed_sd)
        assert row["n_seeds"] == 2 and row["can_rank"] is can_rank
    reasons = check_target(models, loud)["reasons"]
    assert len(reasons) == 1 and reasons[0].startswith("the spread of mean Dice across models (SD 0.026) is below 1 "
                                                      "times the spread across fine-tuning seeds")
    # a stricter rule (the demo's design target: twice the seed noise) flags a spread of 1.5x
    borderline = [[0.30, 0.40], [0.45, 0.35], [0.60, 0.50], [0.50, 0.40]]
    ratio = check_target(models, borderline)["spread_ratio"]
    assert 1.0 < ratio < 2.0
    assert not check_target(models, borderline, HealthRule(min_spread_ratio=2.0))["can_rank"]
    # identical seeds: no seed noise, the spread criterion passes
    assert check_target(models, [[v, v] for v in (0.3, 0.5, 0.7, 0.4)])["spread_ratio"] == math.inf
    assert check_target(models, [[v, v] for v in (0.3, 0.5, 0.7, 0.4)])["reliability"] == 1.0


def test_reliability_of_the_mean_dice_rises_with_seeds_where_the_spread_rule_cannot():
    # independent arithmetic: 1 - mean over models of (seed variance / seeds) / variance of the means
    def reference(table):
        means = [statistics.fmean(s) for s in table]
        error = statistics.fmean(statistics.variance(s) / len(s) for s in table)
        return 1 - error / statistics.variance(means)

    models = MODELS[:4]
    two = [[0.30, 0.40], [0.45, 0.35], [0.60, 0.50], [0.50, 0.40]]
    # four seeds around the same means with the same sample variance (m +- d: 2 d^2; m-a, m-a, m+a, m+a: 4 a^2 / 3)
    a = 0.05 * math.sqrt(1.5)
    four = [[m - a, m - a, m + a, m + a] for m in (0.35, 0.40, 0.55, 0.45)]
    for table in (two, four):
        assert check_target(models, table)["reliability"] == pytest.approx(reference(table))
    low, high = check_target(models, two), check_target(models, four)
    assert high["reliability"] > low["reliability"]
    assert high["spread_ratio"] == pytest.approx(low["spread_ratio"])  # the spread rule does not see the extra seeds
    # unequal seed counts: each model's squared standard error with its own count; one seed: not defined
    ragged = [[0.30, 0.40, None], [0.45, 0.35, 0.40], [0.60, 0.50, 0.55], [0.50, 0.40, None]]
    defined = [[v for v in s if v is not None] for s in ragged]
    assert check_target(models, ragged)["reliability"] == pytest.approx(reference(defined))
    assert math.isnan(check_target(models, [[0.3], [0.5], [0.7], [0.4]])["reliability"])
    # reported, not part of the verdict
    assert check_target(models, two)["can_rank"] and "Reliability of the mean Dice" in to_markdown([low], HealthRule())


def test_undefined_seeds_and_missing_dice():
    row = check_target(MODELS[:3], [[0.5, None], [0.6, 0.62], [0.7, math.nan]])
    assert row["n_seeds"] == 1 and math.isnan(row["seed_sd"])  # a model with one defined seed: no noise estimate
    assert row["dice_max"] == pytest.approx(0.7) and row["dice_median"] == pytest.approx(0.61)
    with pytest.raises(ValueError, match=r"T: no defined fine-tuned Dice for \['unet-random'\]"):
        check_target(MODELS[:3], [[0.5], [0.6], [None]], target="T")
    with pytest.raises(ValueError, match="3 models but 2 Dice lists"):
        check_target(MODELS[:3], [[0.5], [0.6]])


def test_fewer_than_three_models_cannot_rank():
    row = check_target(MODELS[:2], one_seed([0.3, 0.8]))
    assert not row["can_rank"] and row["reasons"] == ["only 2 model(s) (a rank correlation needs at least 3)"]


def test_rule_thresholds_and_config():
    assert HealthRule.from_config(None) == HealthRule()
    assert HealthRule.from_config({"zero_dice": 0.1}).zero_dice == 0.1
    with pytest.raises(ValueError, match=r"unknown setting\(s\) \['zero'\]"):
        HealthRule.from_config({"zero": 0.1})
    with pytest.raises(ValueError, match=r"max_zero_share must lie in \[0, 1\]"):
        HealthRule.from_config({"max_zero_share": 1.5})
    with pytest.raises(ValueError, match="min_spread_ratio"):
        HealthRule.from_config({"min_spread_ratio": -1})
    # the schema's defaults are the library's, and both shipped configs state exactly them
    schema = yaml.safe_load((ROOT / "config/schemas/config.schema.yaml").read_text())
    properties = schema["properties"]["ground_truth"]["properties"]
    assert {k: v["default"] for k, v in properties.items()} == HealthRule().__dict__
    for name in ("config.yaml", "msd.yaml"):
        section = yaml.safe_load((ROOT / "config" / name).read_text())["ground_truth"]
        assert HealthRule.from_config(section) == HealthRule(), name


def test_verdict_in_words():
    records = [{"target": t, "model": m, "dice_per_seed": [d]}
               for t, values in (("Task01_A", [0.4, 0.5, 0.6, 0.7]), ("Task02_B", [0.0, 0.0, 0.0, 0.3]))
               for m, d in zip(MODELS[:4], values)]
    rows = check_ground_truth(records, ["Task01_A", "Task02_B"])
    assert [r["can_rank"] for r in rows] == [True, False]
    assert flags(rows) == {"Task02_B": "3 of 4 models fine-tune to a mean Dice below 0.05 (more than 34% of the bank)"}
    lines = verdict(rows)
    assert lines[0].startswith("Ground truth: on 1 of 2 targets the fine-tuned Dice cannot rank")
    assert lines[1] == "  Task02_B: 3 of 4 models fine-tune to a mean Dice below 0.05 (more than 34% of the bank)"
    assert verdict(rows[:1]) == ["Ground truth: the fine-tuned Dice can rank the bank's models on every target "
                                 "(Task01_A)."]


# --------------------------------------------------------------------------------------------------
# A broken ground truth, flagged in every written table
# --------------------------------------------------------------------------------------------------


def _write_json(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def broken_run(tmp_path):
    """Hand-made score and fine-tuning files of two targets: Task01_A learnt, Task02_B's fine-tuning failed
    (every model but one at Dice 0, as a 1-iteration budget gives)."""
    rng = np.random.default_rng(5)
    targets = ["Task01_A", "Task02_B"]
    dice = {"Task01_A": [0.41, 0.55, 0.62, 0.70, 0.48, 0.35], "Task02_B": [0.0, 0.0, 0.0, 0.12, 0.0, 0.0]}
    score_files, dice_files, splits = {}, {}, {}
    for target in targets:
        for model, d in zip(MODELS, dice[target]):
            score_files[(target, model)] = _write_json(
                tmp_path / "scores" / target / f"{model}.json",
                {"scores": {"ccfv": float(rng.normal()), "logme": float(rng.normal())}})
            dice_files[(target, model)] = [_write_json(tmp_path / "finetune" / target / model / f"seed{s}.json",
                                                       {"mean_dice": d + 0.01 * s}) for s in range(2)]
        splits[target] = _write_json(tmp_path / "splits" / f"{target}.json", {"train": ["a"] * 8, "test": ["b"] * 2})
    return {"root": tmp_path, "targets": targets, "scores": score_files, "dice": dice_files, "splits": splits}


def test_a_broken_target_is_flagged_in_every_written_table(broken_run):
    out = broken_run["root"] / "tables"
    targets = broken_run["targets"]
    rows = build_ground_truth(broken_run["dice"], targets, out)
    assert [r["can_rank"] for r in rows] == [True, False]
    # what the workflow's scripts do: read ground_truth.csv back and mark the tables with its flags
    written = read_csv(out / "ground_truth.csv")
    assert [r["can_rank"] for r in written] == [True, False]
    assert written[1]["reasons"] == rows[1]["reasons"] == [
        "5 of 6 models fine-tune to a mean Dice below 0.05 (more than 34% of the bank)"]
    marks = flags(written)
    assert list(marks) == ["Task02_B"]
    build_tables(broken_run["scores"], broken_run["dice"], {"table1": ["ccfv", "logme"], "table2": ["ccfv"]},
                 targets, out, flags=marks)
    build_statistics(out / "records.json", {"table1": ["ccfv", "logme"]}, targets,
                     {"Task01_A": 8, "Task02_B": 8}, out, n_bootstrap=20, n_permutations=50, n_simulations=10,
                     flags=marks)
    why = marks["Task02_B"]
    for name in ("table1", "table2", "regret"):
        md = (out / f"{name}.md").read_text()
        header = md.splitlines()[0] if name != "regret" else md.splitlines()[2]
        assert "| Task01 |" in header and "| Task02† |" in header, (name, header)
        assert f"† Task02_B: the fine-tuned Dice cannot rank the bank's models: {why}. Its values" in md, name
        assert "† Avg includes the flagged target(s)." in md, name
    stats_md = (out / "statistics.md").read_text()
    assert stats_md.count("| Task02† |") == 2 and "Task01†" not in stats_md and "Avg includes" not in stats_md
    assert f"† Task02_B: the fine-tuned Dice cannot rank the bank's models: {why}. Its values" in stats_md
    # CSV: the wide tables hold numbers only (the verdict is ground_truth.csv beside them), values still there;
    # a ground_truth column in the long ones
    for name in ("table1", "table2"):
        table = list(csv.reader((out / f"{name}.csv").open()))
        assert table[0] == ["method", "statistic", *targets, "Avg"]
        assert all(math.isfinite(float(v)) for row in table[1:] for v in row[2:])
        numeric = pd.read_csv(out / f"{name}.csv").select_dtypes("number")
        assert list(numeric.columns) == [*targets, "Avg"]  # a script can average every target column
    assert {r["target"]: r["can_rank"] for r in csv.DictReader((out / "ground_truth.csv").open())} == {
        "Task01_A": "True", "Task02_B": "False"}
    for name in ("statistics", "regret"):
        long = list(csv.DictReader((out / f"{name}.csv").open()))
        assert {r["target"]: r["ground_truth"] for r in long} == {"Task01_A": "ok", "Task02_B": "cannot rank"}
    # LaTeX: dagger on the header and the footnote
    tex = (out / "table1.tex").read_text()
    assert r"Task02\textsuperscript{\dag}" in tex and r"Task01\textsuperscript" not in tex
    assert r"\textsuperscript{\dag} Task02\_B: the fine-tuned Dice cannot rank" in tex
    assert tex.index(r"\end{tabular}") < tex.index("Task02\\_B: the") < tex.index(r"\end{table}")
    # the report page and the Markdown say which target and why, in words
    page = (out / "ground_truth.html").read_text()
    assert "On 1 of 2 targets the fine-tuned Dice cannot rank the bank's models." in page
    assert "<strong>Task02_B</strong>: 5 of 6 models fine-tune to a mean Dice below 0.05" in page
    md = (out / "ground_truth.md").read_text()
    assert "| Task02† | 6 | 2 | 0.005 / 0.005 / 0.125 | 5 | 1 | 0.049 / 0.007 = 6.93 | 0.99 | no |" in md and md.rstrip().endswith(
        "  Task02_B: " + why)
    assert "| Task01 | 6 | 2 |" in md and "| yes |" in md


def test_unflagged_tables_carry_no_marker_and_unknown_flags_are_refused(broken_run):
    out = broken_run["root"] / "clean"
    targets = broken_run["targets"]
    build_tables(broken_run["scores"], broken_run["dice"], {"table1": ["ccfv"]}, targets, out, flags={})
    md = (out / "table1.md").read_text()
    assert "†" not in md
    assert [row[0] for row in csv.reader((out / "table1.csv").open())] == ["method", "CC-FV", "CC-FV"]
    with pytest.raises(ValueError, match=r"ground-truth flags for \['Task09_X'\]"):
        build_tables(broken_run["scores"], broken_run["dice"], {"table1": ["ccfv"]}, targets,
                     broken_run["root"] / "bad", flags={"Task09_X": "why"})


def test_ground_truth_errors_name_the_file(broken_run, tmp_path):
    bad = _write_json(tmp_path / "seed0.json", {"dice": 0.5})
    dice = dict(broken_run["dice"])
    dice[("Task01_A", MODELS[0])] = [bad]
    with pytest.raises(ValueError, match=r"seed0\.json: not a fine-tuning result with a mean_dice"):
        build_ground_truth(dice, broken_run["targets"], tmp_path / "out")
    with pytest.raises(ValueError, match=r"no fine-tuning results for target\(s\) \['Task03_C'\]"):
        build_ground_truth(broken_run["dice"], [*broken_run["targets"], "Task03_C"], tmp_path / "out")
    assert not (tmp_path / "out").exists()
    not_a_table = tmp_path / "x.csv"
    not_a_table.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match=r"x\.csv: not a ground-truth table"):
        read_csv(not_a_table)
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        read_csv(tmp_path / "missing.csv")
    text = io.StringIO()
    text.write("target,can_rank,reasons\nT,maybe,\n")
    not_a_table.write_text(text.getvalue())
    with pytest.raises(ValueError, match=r"line 2: can_rank must be True or False"):
        read_csv(not_a_table)
