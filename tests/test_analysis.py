"""Smoke tests of the study analyses under analysis/ (docs/benchmark.md): each runs end to end on a tiny
results folder made of real features files (three random bank models sampled on conftest.py's tiny task) and a
Dice table, and writes what its docstring says."""
from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

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
