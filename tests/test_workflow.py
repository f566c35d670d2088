"""The Snakemake workflow: config validation, the DAG of both configs, lint, and the whole DAG run."""
from __future__ import annotations

import csv
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
STAGES = {
    "synthesize_task", "validate_task", "convert_to_nnunet", "plan_and_preprocess", "make_split", "pretrain", "random_init",
    "sample_features", "score", "finetune", "tables",
}


def snakemake(*args, cwd=None, timeout=120):
    """Run snakemake on this repository's Snakefile; by default in a scratch working directory, so that the
    tests neither see nor touch a user's results/."""
    if cwd is None:
        cwd = Path(os.environ.get("PYTEST_SCRATCH", "/tmp")) / f"ccfv-dry-{os.getpid()}"
        cwd.mkdir(parents=True, exist_ok=True)
    args = [a if not str(a).startswith("config/") else str(ROOT / a) for a in args]
    return subprocess.run([SNAKEMAKE, "-s", str(ROOT / "Snakefile"), "--directory", str(cwd), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def job_counts(output: str) -> dict[str, int]:
    block = output.split("Job stats:", 1)[1]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", block, re.M)}


def dry_run(*args, cwd=None):
    result = snakemake("-n", "--quiet", "rules", *args, cwd=cwd)
    assert result.returncode == 0, result.stdout + result.stderr
    return job_counts(result.stdout + result.stderr)


def test_default_config_dry_run_contains_every_stage():
    counts = dry_run("--configfile", "config/config.yaml")
    assert STAGES <= set(counts), STAGES - set(counts)
    tasks = yaml.safe_load((ROOT / "config/config.yaml").read_text())["tasks"]
    n = len(tasks)
    assert counts["pretrain"] == n and counts["random_init"] == 1
    # every target: the other tasks' models plus the random one
    assert counts["sample_features"] == counts["score"] == n * n
    seeds = yaml.safe_load((ROOT / "config/config.yaml").read_text())["finetune"]["seeds"]
    assert counts["finetune"] == n * n * len(seeds)


def test_msd_config_lays_out_the_papers_dag():
    cfg = yaml.safe_load((ROOT / "config/msd.yaml").read_text())
    assert cfg["tasks"] == ["Task03_Liver", "Task06_Lung", "Task07_Pancreas", "Task09_Spleen", "Task10_Colon"]
    assert cfg["pretrain"]["iterations"] == 250_000 and cfg["finetune"]["iterations"] == 100_000
    assert cfg["network"]["batch_size"] == 2
    result = snakemake("-n", "--configfile", "config/msd.yaml")
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    counts = job_counts(out)
    assert counts["fetch_msd_task"] == 5 and counts["pretrain"] == 5 and counts["finetune"] == 25
    assert "synthesize_task" not in counts
    # the Liver bank: the four other tasks and the random model, nothing pretrained on Liver itself
    liver = set(re.findall(r"results/features/Task03_Liver/(unet-[\w]+)\.h5", out))
    assert liver == {"unet-Task06_Lung", "unet-Task07_Pancreas", "unet-Task09_Spleen", "unet-Task10_Colon",
                     "unet-random"}


def test_bad_config_is_refused_with_a_clear_message(tmp_path):
    bad = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    bad["pretrain"]["iterations"] = 0
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    result = snakemake("-n", "--configfile", str(path))
    assert result.returncode != 0
    assert "iterations" in result.stdout + result.stderr


def test_layer_ratios_must_match_decoder_stages(tmp_path):
    bad = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    bad["sampling"]["layer_ratios"] = [1.0]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    result = snakemake("-n", "--configfile", str(path))
    assert result.returncode != 0
    assert "layer_ratios" in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: s["metrics"]["ccfv"].update(distanse="kl"), r"metric 'ccfv': method 'ccfv' has no option\(s\) \['distanse'\]"),
        (lambda s: s["metrics"].update(x={"method": "nonsense"}), "nonsense"),
        (lambda s: s["tables"]["table1"].append("leeep"), r"scoring.tables.table1 names \['leeep'\]"),
    ],
)
def test_bad_scoring_config_fails_before_any_job(tmp_path, change, message):
    bad = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    change(bad["scoring"])
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    result = snakemake("-n", "--configfile", str(path))
    assert result.returncode != 0
    assert re.search(message, result.stdout + result.stderr), (result.stdout + result.stderr)[-2000:]


def test_lint_is_clean():
    result = snakemake("--lint", "--configfile", "config/config.yaml")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_whole_dag_on_tiny_config(tmp_path):
    """Every stage for real (nnU-Net, training, sampling, scores, Dice) on 3 tiny tasks."""
    result = snakemake("--cores", "2", "--configfile", str(ROOT / "tests/data/tiny.yaml"), cwd=tmp_path,
                       timeout=1500)
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
    rows = list(csv.reader((tmp_path / "results/tables/table1.csv").open()))
    tasks = ["Task91_SynthLiver", "Task93_SynthPancreas", "Task94_SynthSpleen"]
    assert rows[0] == ["method", "statistic", *tasks, "Avg"]
    assert [(r[0], r[1]) for r in rows[1:]] == [("LogME", "tau"), ("LogME", "pearson"), ("LEEP", "tau"),
                                                ("LEEP", "pearson"), ("CC-FV", "tau"), ("CC-FV", "pearson")]
    table2 = list(csv.reader((tmp_path / "results/tables/table2.csv").open()))
    assert [(r[0], r[1]) for r in table2[1:]] == [("CC-FV", "tau"), ("CC-FV", "pearson"),
                                                  ("KL-divergence", "tau"), ("KL-divergence", "pearson")]
    for row in rows[1:] + table2[1:]:
        assert all(math.isfinite(float(v)) for v in row[2:]), row
    assert (tmp_path / "results/tables/table1.md").read_text().startswith("| Method |")
    records = list(csv.DictReader((tmp_path / "results/tables/scores_and_dice.csv").open()))
    assert len(records) == 9
    for stage in ("preprocess", "pretrain", "features", "scores", "finetune", "results"):
        assert any((tmp_path / "logs" / stage).rglob("*.log")), stage
        assert any((tmp_path / "results/benchmarks" / stage).rglob("*.tsv")), stage
    # a second run has nothing to do
    again = snakemake("-n", "--configfile", str(ROOT / "tests/data/tiny.yaml"), cwd=tmp_path)
    assert "Nothing to be done" in again.stdout + again.stderr
    # adding a fine-tuning seed schedules that seed's fine-tunings and the table, nothing upstream
    cfg = yaml.safe_load((ROOT / "tests/data/tiny.yaml").read_text())
    cfg["finetune"]["seeds"] = [0, 1]
    (tmp_path / "two_seeds.yaml").write_text(yaml.safe_dump(cfg))
    more = snakemake("-n", "--configfile", str(tmp_path / "two_seeds.yaml"), cwd=tmp_path)
    out = more.stdout + more.stderr
    assert more.returncode == 0, out
    assert job_counts(out) == {"finetune": 9, "tables": 1, "all": 1, "total": 11}, out[-3000:]
    assert "seed0.json" not in re.sub(r"input:.*", "", out)
    # changing a metric's option reruns scoring and the tables, nothing upstream; a label only the tables
    cfg = yaml.safe_load((ROOT / "tests/data/tiny.yaml").read_text())
    cfg["scoring"]["metrics"]["ccfv_kl"]["label"] = "KL"
    (tmp_path / "label.yaml").write_text(yaml.safe_dump(cfg))
    result = snakemake("-n", "--configfile", str(tmp_path / "label.yaml"), cwd=tmp_path)
    assert job_counts(result.stdout + result.stderr) == {"tables": 1, "all": 1, "total": 2}
    cfg["scoring"]["metrics"]["ccfv_kl"]["s"] = 0
    (tmp_path / "option.yaml").write_text(yaml.safe_dump(cfg))
    result = snakemake("-n", "--configfile", str(tmp_path / "option.yaml"), cwd=tmp_path)
    assert job_counts(result.stdout + result.stderr) == {"score": 9, "tables": 1, "all": 1, "total": 11}
    # one source task's pretraining budget: that source's model, and the targets whose bank holds it
    cfg = yaml.safe_load((ROOT / "tests/data/tiny.yaml").read_text())
    cfg["pretrain"]["per_task"] = {"Task91_SynthLiver": {"iterations": 6}}
    (tmp_path / "budget.yaml").write_text(yaml.safe_dump(cfg))
    result = snakemake("-n", "--configfile", str(tmp_path / "budget.yaml"), cwd=tmp_path)
    out = result.stdout + result.stderr
    assert job_counts(out) == {"pretrain": 1, "sample_features": 2, "score": 2, "finetune": 2, "tables": 1,
                               "all": 1, "total": 9}, out[-3000:]
    assert set(re.findall(r"wildcards: task=(\w+)", out)) == {"Task91_SynthLiver"}
    assert set(re.findall(r"model=(unet-[\w]+)", out)) == {"unet-Task91_SynthLiver"}
