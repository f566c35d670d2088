"""Smoke tests of the study analyses under analysis/ (docs/benchmark.md): each runs end to end on a tiny
results folder made of real features files (three random bank models sampled on conftest.py's tiny task) and a
Dice table, and writes what its docstring says."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from .conftest import TASK

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_study(tiny_dataset, tmp_path_factory):
    from ccfv.bank.training import random_model
    from ccfv.features.target import sample_target
    from ccfv.preprocess.nnunet import case_identifiers
    from ccfv.preprocess.splits import make_split, write_split

    root = tmp_path_factory.mktemp("tiny_study")
    results = root / "results"
    pre = results / "nnunet" / TASK / "preprocessed"
    pre.mkdir(parents=True)
    (pre / tiny_dataset.preprocessed.name).symlink_to(tiny_dataset.preprocessed, target_is_directory=True)
    split = root / "split.json"
    write_split(make_split(case_identifiers(tiny_dataset.preprocessed), 0.2, seed=0), split)
    sampling = {"total": 60, "minimum": 5, "n_global": 20, "n_background": 20, "step_size": 0.5, "batch_size": 2,
                "seed": 0, "layer_ratios": [0.5, 1.0]}
    dice = {}
    for i, model in enumerate(["unet-random", "unet-Task91_SynthLiver", "unet-Task93_SynthPancreas"]):
        bank = random_model(tiny_dataset.preprocessed, model, root / "bank" / model, seed=i)
        sample_target(bank, tiny_dataset.preprocessed, split, results / "features" / TASK / f"{model}.h5",
                      target=TASK, sampling=sampling, device="cpu")
        dice[model] = 0.2 + 0.3 * i
    table = root / "scores_and_dice.csv"
    with table.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["target", "model", "dice_mean_over_seeds", "n_seeds", "ccfv", "logme"])
        for model, d in dice.items():
            writer.writerow([TASK, model, d, 3, -9.0 + d, d])
    return results, table


def run(script, *args):
    return subprocess.run([sys.executable, str(ROOT / "analysis" / script), *map(str, args)], capture_output=True,
                          text=True, timeout=600, cwd=ROOT)


def test_study_rescore_smoke(tiny_study, tmp_path):
    results, table = tiny_study
    out = tmp_path / "rescored"
    result = run("study_rescore.py", results, table, out)
    assert result.returncode == 0, result.stderr[-3000:]
    assert {"scores_and_dice.csv", "table1.csv", "table3.md", "architecture.md"} <= {p.name for p in out.iterdir()}
    header = (out / "scores_and_dice.csv").read_text().splitlines()[0]
    assert "ccfv_varied" in header and "rankme" in header  # input std added from the preprocessed images
    assert "CC-FV, committed (eq. 3 sum)" in result.stdout


def test_study_variety_smoke(tiny_study, tmp_path):
    results, table = tiny_study
    result = run("study_variety.py", results, table, tmp_path / "variety.md")
    assert result.returncode == 0, result.stderr[-3000:]
    text = (tmp_path / "variety.md").read_text()
    assert "log F_v over varied voxels" in text and "layer 1: -log C_cons" in text


def test_study_cases_smoke(tiny_study, tmp_path):
    results, table = tiny_study
    result = run("study_cases.py", results, table, tmp_path / "cases.csv", "--metrics", "logme", "ccfv",
                 "--counts", "2", "3", "--repeats", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = list(csv.DictReader((tmp_path / "cases.csv").open()))
    assert {(r["metric"], r["n"]) for r in rows} == {(m, n) for m in ("logme", "ccfv") for n in ("2", "3", "4")}


def _write_world(results: Path, taus: dict, rel: dict, can_rank: dict):
    """A results folder's three tables in the workflow's formats (tables/statistics.csv, selection.csv,
    ground_truth.csv), with the given weighted tau and Rel@1 per (metric, target)."""
    kinds = {"ccfv": "metric", "ccfv_disc": "metric", "ccfv_varied": "metric", "rankme": "metric",
             "logme": "metric", "pretrained_first": "baseline", "random": "baseline"}
    tables = results / "tables"
    tables.mkdir(parents=True)
    with (tables / "statistics.csv").open("w", newline="") as s, (tables / "selection.csv").open("w", newline="") as c:
        stat, sel = csv.writer(s), csv.writer(c)
        stat.writerow(["method", "metric", "kind", "target", "statistic", "value", "ci_low", "ci_high", "n_valid",
                       "p_value", "ground_truth"])
        sel.writerow(["method", "metric", "kind", "target", "statistic", "value", "ci_low", "ci_high", "n_valid",
                      "ground_truth"])
        for metric, kind in kinds.items():
            for target in can_rank:
                stat.writerow([metric.upper(), metric, kind, target, "tau", taus[metric][target], -1, 1, 1000, 0.5, "ok"])
                stat.writerow([metric.upper(), metric, kind, target, "pearson", 0.0, -1, 1, 1000, 0.5, "ok"])
                for statistic, value in (("kendall", 0.1), ("rel_at_1", rel[metric][target]), ("top3", 1.0)):
                    sel.writerow([metric.upper(), metric, kind, target, statistic, value, 0, 1, 1000, "ok"])
            stat.writerow([metric.upper(), metric, kind, "Avg", "tau", 9.9, -1, 1, 1000, 0.5, "ok"])
    with (tables / "ground_truth.csv").open("w", newline="") as g:
        writer = csv.writer(g)
        writer.writerow(["target", "can_rank", "reasons"])
        for target, ok in can_rank.items():
            writer.writerow([target, ok, "" if ok else "ties"])


def test_heldout_summary_applies_the_preregistered_criteria(tmp_path):
    t = ("TaskA", "TaskB")
    # World 1: TaskB cannot rank, so only TaskA counts; world 2: both count. Means over the three that can rank.
    tau1 = {"ccfv": {t[0]: 0.0, t[1]: 9}, "ccfv_disc": {t[0]: 0.6, t[1]: 9}, "ccfv_varied": {t[0]: 0.3, t[1]: 9},
            "rankme": {t[0]: 0.2, t[1]: 9}, "logme": {t[0]: 0.1, t[1]: 9}, "pretrained_first": {t[0]: 0.5, t[1]: 9},
            "random": {t[0]: 0.0, t[1]: 0}}
    tau2 = {m: {t[0]: v[t[0]], t[1]: v[t[0]]} for m, v in tau1.items()}
    rel = {m: {t[0]: 0.9, t[1]: 0.9} for m in tau1}
    rel["ccfv_varied"] = {t[0]: 0.5, t[1]: 0.5}  # below the static ranker's 0.9
    _write_world(tmp_path / "results-w1", tau1, rel, {t[0]: True, t[1]: False})
    _write_world(tmp_path / "results-w2", tau2, rel, {t[0]: True, t[1]: True})
    out = tmp_path / "out"
    result = run("heldout.py", tmp_path / "results-w1", tmp_path / "results-w2", "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = {r["metric"]: r for r in csv.DictReader((out / "summary.csv").open())}
    assert summary["ccfv_disc"]["n_targets"] == "3" and float(summary["ccfv_disc"]["mean_tau"]) == pytest.approx(0.6)
    text = (out / "summary.md").read_text()
    assert "left out: w1:TaskB" in text
    assert "CCFV_DISC (ccfv_disc): mean tau 0.600, mean Rel@1 0.900: works" in text
    assert "CCFV_VARIED (ccfv_varied): mean tau 0.300, mean Rel@1 0.500: not shown to work" in text
    assert "not cleared by LOGME (0.100)" in text  # a label-using metric below RankMe's 0.2
    assert (out / "w2" / "selection.csv").is_file()


def test_heldout_refuses_an_unfinished_world(tmp_path):
    (tmp_path / "results-w1" / "tables").mkdir(parents=True)
    result = run("heldout.py", tmp_path / "results-w1", "--out", tmp_path / "out")
    assert result.returncode == 2 and "statistics.csv: missing" in result.stderr
    assert not (tmp_path / "out").exists()


def _write_real(results: Path, values: dict, can_rank: bool = True, target: str = "Task04_Hippocampus"):
    """A real-study results folder's four tables; values[metric] = (kind, tau, tau interval, rel, rel interval)."""
    tables = results / "tables"
    tables.mkdir(parents=True)
    head = ["method", "metric", "kind", "target", "statistic", "value", "ci_low", "ci_high", "n_valid"]
    with (tables / "statistics.csv").open("w", newline="") as s, (tables / "selection.csv").open("w", newline="") as c, \
            (tables / "regret.csv").open("w", newline="") as r:
        stat, sel, reg = csv.writer(s), csv.writer(c), csv.writer(r)
        stat.writerow(head + ["p_value", "ground_truth"])
        sel.writerow(head + ["ground_truth"])
        reg.writerow(["method", "metric", "kind", "target", "picked", "picked_dice", "best", "best_dice", "regret",
                      "ground_truth"])
        for metric, (kind, tau, tau_ci, rel, rel_ci) in values.items():
            stat.writerow([metric.upper(), metric, kind, target, "tau", tau, *tau_ci, 1000, 0.5, "ok"])
            stat.writerow([metric.upper(), metric, kind, "Avg", "tau", tau, *tau_ci, 1000, 0.5, "ok"])
            sel.writerow([metric.upper(), metric, kind, target, "rel_at_1", rel, *rel_ci, 1000, "ok"])
            sel.writerow([metric.upper(), metric, kind, target, "kendall", tau, *tau_ci, 1000, "ok"])
            sel.writerow([metric.upper(), metric, kind, target, "top3", 1.0, 0, 1, 1000, "ok"])
            reg.writerow([metric.upper(), metric, kind, target, "m1", 0.7 * rel, "m2", 0.7, 0.7 - 0.7 * rel, "ok"])
    (results / "figures").mkdir()
    Image.new("RGB", (40, 30), (200, 10, 10)).save(results / "figures" / "scores_vs_dice.png")
    for seed, rate in ((1, 1e-3), (0, 1e-4)):
        folder = results / "finetune-protocol" / target / "m1" / f"seed{seed}"
        folder.mkdir(parents=True)
        selection = {"chosen": rate, "mean_loss": {"0.001": 0.5 - 0.1 * seed, "0.0001": 0.45}}
        (folder / "finetune.json").write_text(json.dumps({"models": [{
            "seed": seed, "mean_dice": 0.6, "learning_rate": rate, "iterations": 75, "seconds_training": 10.0,
            "seconds_evaluation": 2.0, "learning_rate_selection": selection}]}))
    with (tables / "ground_truth.csv").open("w", newline="") as g:
        writer = csv.writer(g)
        writer.writerow(["target", "n_models", "n_seeds", "dice_min", "dice_max", "best", "spread_ratio", "can_rank",
                         "reasons"])
        writer.writerow([target, 12, 3, 0.0, 0.7, "m2", 5.0, can_rank, "" if can_rank else "ties"])


def test_realstudy_verdict_applies_the_preregistered_rule(tmp_path):
    values = {"ccfv": ("metric", 0.2, (-0.3, 0.6), 0.95, (0.9, 1.0)),
              "ccfv_disc": ("metric", 0.7, (0.5, 0.9), 0.99, (0.97, 1.0)),
              "ccfv_varied": ("metric", -0.1, (-0.5, 0.3), 0.5, (0.4, 0.9)),
              "pretrained_first": ("baseline", 0.4, (0.1, 0.6), 0.9, (0.85, 0.95)),
              "larger_model_first": ("baseline", 0.1, (-0.2, 0.4), 0.96, (0.9, 1.0)),
              "random": ("baseline", 0.0, (0.0, 0.0), 0.99, (0.9, 1.0))}  # the expected random ranking: no ranker
    _write_real(tmp_path / "results-real", values)
    out = tmp_path / "out"
    result = run("realstudy.py", tmp_path / "results-real", "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    text = (out / "summary.md").read_text()
    assert "Health check: can rank; 12 models, 3 seeds" in text
    # Best static per measure: tau from pretrained_first (0.4), Rel@1 from larger_model_first (0.96), not random.
    assert "by weighted tau: PRETRAINED_FIRST (0.400" in text and "by Rel@1: LARGER_MODEL_FIRST (0.960" in text
    assert ("CCFV (ccfv): weighted tau 0.200 [-0.300, 0.600] not above the best static ranker's (not distinguishable"
            in text)
    assert "CCFV_DISC (ccfv_disc): weighted tau 0.700 [0.500, 0.900] above the best static ranker's;" in text
    assert "a variant passes (CCFV_DISC)" in text
    rows = {r["metric"]: r for r in csv.DictReader((out / "summary.csv").open())}
    assert float(rows["ccfv_disc"]["regret"]) == pytest.approx(0.7 - 0.693)
    assert (out / "statistics.csv").is_file()
    with Image.open(out / "scores_vs_dice.png") as figure:  # copied as a palette image, the same pixels
        assert figure.mode == "P" and figure.size == (40, 30)
        assert figure.convert("RGB").getpixel((5, 5)) == (200, 10, 10)
    finetuning = list(csv.DictReader((out / "finetuning.csv").open()))
    assert [(r["member"], r["seed"], r["learning_rate"], r["pilot_loss_0.001"]) for r in finetuning] == [
        ("m1", "0", "0.0001", "0.5000"), ("m1", "1", "0.001", "0.4000")]
    assert "| m1 | 2 | 0.600 | 0.600-0.600 | 0.0001 x 1, 0.001 x 1 |" in text + (out / "summary.md").read_text()


def test_realstudy_draws_no_verdict_from_a_ground_truth_that_cannot_rank(tmp_path):
    values = {m: ("metric", 0.9, (0.8, 1.0), 1.0, (1.0, 1.0)) for m in ("ccfv", "ccfv_disc", "ccfv_varied")}
    values["pretrained_first"] = ("baseline", 0.0, (-0.5, 0.5), 0.5, (0.3, 0.7))
    _write_real(tmp_path / "results-real", values, can_rank=False)
    result = run("realstudy.py", tmp_path / "results-real", "--out", tmp_path / "out")
    assert result.returncode == 0, result.stderr[-3000:]
    text = (tmp_path / "out" / "summary.md").read_text()
    assert "cannot rank" in text and "no verdict is drawn" in text and "works" not in text


def test_realstudy_refuses_an_unfinished_run_or_a_missing_target(tmp_path):
    (tmp_path / "results-real" / "tables").mkdir(parents=True)
    result = run("realstudy.py", tmp_path / "results-real", "--out", tmp_path / "out")
    assert result.returncode == 2 and "statistics.csv: missing" in result.stderr
    _write_real(tmp_path / "results-other", {"ccfv": ("metric", 0.1, (0, 1), 1.0, (1, 1))}, target="TaskX")
    result = run("realstudy.py", tmp_path / "results-other", "--out", tmp_path / "out")
    assert result.returncode == 2 and "Task04_Hippocampus is not in statistics.csv (targets: TaskX)" in result.stderr
    assert not (tmp_path / "out").exists()


def test_protocol_probe_fine_tunes_one_member_on_a_runs_split(tiny_dataset, tmp_path):
    """analysis/protocol_probe.py on a run's layout (nnunet/<target>/raw, splits/<target>.json) with a random
    bank U-Net: the changed settings reach the fine-tuning (2 iterations, a random head), the held-out Dice is
    printed and written; a setting the protocol does not have is refused, naming the keys it has."""
    import json
    import re

    from ccfv.bank.training import random_model
    from ccfv.preprocess.nnunet import case_identifiers
    from ccfv.preprocess.splits import make_split, write_split

    results = tmp_path / "results"
    (results / "nnunet" / TASK).mkdir(parents=True)
    (results / "nnunet" / TASK / "raw").symlink_to(tiny_dataset.raw_root, target_is_directory=True)
    write_split(make_split(case_identifiers(tiny_dataset.preprocessed), 0.4, seed=0),
                results / "splits" / f"{TASK}.json")
    model = random_model(tiny_dataset.preprocessed, "unet-random", tmp_path / "unet-random", seed=0)
    out = tmp_path / "probe"
    result = run("protocol_probe.py", results, TASK, model, "--set", "iterations=2", "--set", "checkpoint_every=1",
                 "--set", "head_init=random", "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    line = result.stdout.strip().splitlines()[-1]
    match = re.fullmatch(r"unet-random patch=None protocol=\{(.*)\} seed=0 dice=(\d\.\d{4}) losses=\[([\d.]+)\]", line)
    assert match, line
    assert "'iterations': 2" in match.group(1) and "'head_init': 'random'" in match.group(1)
    written = json.loads((out / "dice.json").read_text())
    assert written["mean_dice"] == pytest.approx(float(match.group(2)), abs=1e-4) and written["method"] == "protocol"
    bad = run("protocol_probe.py", results, TASK, model, "--set", "speed=3", "--out", out)
    assert bad.returncode != 0 and "--set 'speed=3'" in bad.stderr and "head_init" in bad.stderr


def _write_study_run(results: Path, dice_shift: float = 0.0):
    """A finished study run's tables: 2 targets, a U-Net and a UNETR pretrained and random each, LogME and CC-FV."""
    tables = results / "tables"
    tables.mkdir(parents=True)
    targets = ("Task91_SynthLiver", "Task92_SynthLung")
    models = ("unet-random", "unet-Task93_SynthPancreas", "unetr-random", "unetr-Task93_SynthPancreas")
    dice = dict(zip(models, (0.2, 0.6, 0.3, 0.5)))
    with (tables / "scores_and_dice.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["target", "model", "dice_mean_over_seeds", "n_seeds", "logme", "ccfv"])
        for target in targets:
            for model in models:  # LogME follows the Dice; CC-FV follows it across, not within, architectures
                ccfv = {"unet-random": 2, "unet-Task93_SynthPancreas": 1, "unetr-random": 4,
                        "unetr-Task93_SynthPancreas": 3}[model]
                writer.writerow([target, model, dice[model] + dice_shift, 3, dice[model], ccfv])
    head = ["method", "metric", "kind", "target", "statistic", "value", "ci_low", "ci_high", "n_valid"]
    with (tables / "statistics.csv").open("w", newline="") as s, (tables / "selection.csv").open("w", newline="") as c, \
            (tables / "regret.csv").open("w", newline="") as r, (tables / "table1.csv").open("w", newline="") as t:
        stat, sel, reg, tab = csv.writer(s), csv.writer(c), csv.writer(r), csv.writer(t)
        stat.writerow(head + ["p_value", "ground_truth"])
        sel.writerow(head + ["ground_truth"])
        reg.writerow(["method", "metric", "kind", "target", "picked", "picked_dice", "best", "best_dice", "regret",
                      "ground_truth"])
        tab.writerow(["method", "statistic", *targets, "Avg"])
        for method, metric, tau, rel in (("LogME", "logme", 0.8, 1.0), ("CC-FV", "ccfv", -0.4, 0.5)):
            for target in targets:
                stat.writerow([method, metric, "metric", target, "tau", tau, tau - 0.2, tau + 0.1, 1000, 0.1, "ok"])
                stat.writerow([method, metric, "metric", target, "pearson", tau / 2, tau / 2 - 0.2, tau / 2 + 0.1,
                               1000, 0.1, "ok"])
                reg.writerow([method, metric, "metric", target, "m", 0.6 * rel, "m", 0.6, 0.6 - 0.6 * rel, "ok"])
            for measure, value in (("rel_at_1", rel), ("kendall", tau), ("top3", 1.0)):
                sel.writerow([method, metric, "metric", "Avg", measure, value, 0, 1, 1000, "ok"])
            tab.writerow([method, "tau", tau, tau, tau + dice_shift])
    (tables / "ground_truth.csv").write_text(
        "target,n_models,n_seeds,dice_min,dice_median,dice_max,best,n_near_zero,n_tied_top,source_spread,seed_sd,"
        "spread_ratio,reliability,can_rank\n" + "".join(
            f"{t},4,3,0.2,0.4,0.6,unet-Task93_SynthPancreas,0,1,0.15,0.05,3.0,0.95,True\n" for t in targets))
    (tables / "costs_per_stage.csv").write_text("stage,n_jobs,total_s,max_s,cpu_s,peak_rss_mb\n"
                                                "features,8,30,5,20,500\nscores,8,10,2,5,90\nfinetune,24,400,20,200,900\n")


def test_study_publish_summarises_a_run_and_compares_it_with_an_earlier_one(tmp_path):
    _write_study_run(tmp_path / "run")
    _write_study_run(tmp_path / "earlier", dice_shift=0.1)
    out = tmp_path / "docs"
    result = run("study_publish.py", tmp_path / "run", "--out", out, "--previous", tmp_path / "earlier" / "tables")
    assert result.returncode == 0, result.stderr[-3000:]
    text = (out / "summary.md").read_text()
    assert "| Task91_SynthLiver | 4 | 3 | 0.20 / 0.40 / 0.60 | unet-Task93_SynthPancreas | 0 | 1 | 0.150 / 0.050 = 3.00" \
        in text
    assert "| LogME | 0.80 [0.60, 0.90] | 0.80 [0.60, 0.90] | 0.80 | 1.00 | 0.80 | 1.00 | 0.000 |" in text
    # within one architecture CC-FV ranks the random member first: -1 in both; LogME +1 in both
    assert "| ccfv | -1.00 / -1.00 | -1.00 / -1.00 |" in text and "| logme | 1.00 / 1.00 | 1.00 / 1.00 |" in text
    assert "| CC-FV | -0.20 [-0.40, -0.10] | -0.20 [-0.40, -0.10] | -0.20 |" in text  # Pearson's r
    assert "0.100 of its job wall time, 0.125 of its CPU seconds" in text
    assert "Pearson 1.000, mean absolute difference 0.100" in text and "LogME 0.80 (0.90)" in text
    assert (out / "scores_and_dice.csv").read_text() == (tmp_path / "run" / "tables" / "scores_and_dice.csv").read_text()


def test_study_publish_refuses_an_unfinished_run(tmp_path):
    _write_study_run(tmp_path / "run")
    (tmp_path / "run" / "tables" / "regret.csv").unlink()
    result = run("study_publish.py", tmp_path / "run", "--out", tmp_path / "docs")
    assert result.returncode == 2 and "regret.csv: missing (is the run finished?)" in result.stderr
    assert not (tmp_path / "docs").exists()
