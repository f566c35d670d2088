"""The Snakemake workflow: config validation, the DAG of both configs, lint, and the whole DAG run."""
from __future__ import annotations

import csv
import html
import io
import json
import math
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from ccfv.results.console import print_ground_truth

from .conftest import workflow_scripts_lock, workflow_scripts_lock_path

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
STAGES = {
    "synthesize_task", "validate_task", "convert_to_nnunet", "plan_and_preprocess", "make_split", "pretrain", "random_init",
    "sample_features", "score", "finetune", "ground_truth", "tables", "statistics", "figures", "feature_tsne", "costs",
    "provenance",
}
# Every table and figure the report must hold (rules/results.smk marks them with report()).
REPORT_FILES = [
    "ground_truth.html", "table1.csv", "table2.csv", "paper_comparison.csv", "statistics.csv", "regret.csv", "noise_ceiling.csv",
    "selection.csv", "stability.csv",
    "costs_per_stage.csv", "costs_per_pair.csv", "scores_vs_dice.png", "dice_heatmap.png", "feature_tsne.png",
    "provenance.json",
]


# What a change upstream of the tables reruns in the results stage, besides its own jobs (feature_tsne only
# when the first target's features change; the ground-truth check only when fine-tuning results change).
RESULTS_RERUN = {"tables": 1, "statistics": 1, "figures": 1, "costs": 1, "provenance": 1}


def with_results(counts: dict[str, int]) -> dict[str, int]:
    """``counts`` plus the results jobs a rerun upstream schedules, and the total."""
    out = {**counts, **RESULTS_RERUN, **({"ground_truth": 1} if counts.get("finetune") else {})}
    return {**out, "total": sum(out.values())}


def flagged_in_tables(tables: Path, targets: list[str]) -> set[str]:
    """The targets marked "cannot rank" in the results tables; every table must agree on them (table1/2.csv hold
    numbers only: their verdict is ground_truth.csv)."""
    found = {"ground_truth.csv": {r["target"] for r in csv.DictReader((tables / "ground_truth.csv").open())
                                  if r["can_rank"] == "False"}}
    for name in ("table1", "table2"):
        found[f"{name}.md"] = {t for t in targets if f"| {t.split('_')[0]}† |" in (tables / f"{name}.md").read_text()}
    for name in ("statistics", "regret", "selection", "stability"):
        found[f"{name}.csv"] = {r["target"] for r in csv.DictReader((tables / f"{name}.csv").open())
                                if r["ground_truth"] == "cannot rank"}
    assert len({frozenset(v) for v in found.values()}) == 1, found
    return next(iter(found.values()))


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
    cfg = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    n, archs = len(cfg["tasks"]), len(cfg["architectures"])
    assert counts["pretrain"] == n * archs and counts["random_init"] == archs
    # every target, per architecture: the other tasks' models plus the random one
    assert counts["sample_features"] == counts["score"] == n * n * archs
    assert counts["finetune"] == n * n * archs * len(cfg["finetune"]["seeds"])


def test_seeds3_config_adds_two_fine_tuning_seeds_to_the_demo():
    # config/seeds3.yaml is layered over the default config (docs/demo-data.md): the same bank, seeds 0-2
    result = snakemake("-n", "--configfile", "config/config.yaml", "config/seeds3.yaml")
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    counts = job_counts(out)
    assert counts["pretrain"] == 6 and counts["finetune"] == 3 * 6 * 3
    seeds = set(re.findall(r"finetune/Task94_SynthSpleen/unet-random/seed(\d+)\.json", out))
    assert seeds == {"0", "1", "2"}


@pytest.mark.parametrize("where", ["pretrain", "pretrain.per_task.Task91_SynthLiver"])
def test_head_init_under_pretrain_is_refused_with_the_reason(tmp_path, where):
    cfg = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    if where == "pretrain":
        cfg["pretrain"]["head_init"] = "zero"
    else:
        cfg["pretrain"]["per_task"] = {"Task91_SynthLiver": {"head_init": "zero"}}
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(cfg))
    result = snakemake("-n", "--configfile", str(bad))
    out = result.stdout + result.stderr
    assert result.returncode != 0
    assert f"{where}.head_init: head_init is for fine-tuning only" in out and str(bad) in out, out[-2000:]


def test_msd_config_lays_out_the_papers_dag():
    cfg = yaml.safe_load((ROOT / "config/msd.yaml").read_text())
    assert cfg["tasks"] == ["Task03_Liver", "Task06_Lung", "Task07_Pancreas", "Task09_Spleen", "Task10_Colon"]
    assert cfg["pretrain"]["iterations"] == 250_000 and cfg["finetune"]["iterations"] == 100_000
    assert cfg["network"]["batch_size"] == 2
    result = snakemake("-n", "--configfile", "config/msd.yaml")
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    counts = job_counts(out)
    assert counts["fetch_msd_task"] == 5 and counts["pretrain"] == 10 and counts["finetune"] == 50
    assert "synthesize_task" not in counts
    # the Liver bank: per architecture the four other tasks and the random model, nothing pretrained on Liver
    liver = set(re.findall(r"results/features/Task03_Liver/(unetr?-[\w]+)\.h5", out))
    assert liver == {f"{a}-{m}" for a in ("unet", "unetr") for m in (
        "Task06_Lung", "Task07_Pancreas", "Task09_Spleen", "Task10_Colon", "random")}


def test_hippocampus_layer_lays_out_the_data_path_of_the_real_task(task04_dir, tmp_path):
    """config/hippocampus.yaml: the real Task04_Hippocampus read in place from ../shared/data (relative to the
    working directory: here a scratch one beside a link named shared), validated, converted, preprocessed and
    split, nothing fetched, with at least 50 of its 260 cases held out; the full DAG is refused (one task: no
    bank) with the way to run the data path alone."""
    from ccfv.bank.networks import VIT_PATCH
    from ccfv.preprocess.splits import make_split

    (tmp_path / "shared").symlink_to(task04_dir.parents[1], target_is_directory=True)
    work = tmp_path / "work"
    work.mkdir()
    layers = ("--configfile", "config/config.yaml", "config/hippocampus.yaml")
    result = snakemake("-n", *layers, "--until", "make_split", cwd=work)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    assert job_counts(out) == {"validate_task": 1, "convert_to_nnunet": 1, "plan_and_preprocess": 1, "make_split": 1,
                               "total": 4}
    assert "input: ../shared/data/Task04_Hippocampus/dataset.json" in out  # read in place, never fetched
    for output in ("results-hippocampus/checksums/Task04_Hippocampus/files.json",
                   "results-hippocampus/nnunet/Task04_Hippocampus/preprocessed",
                   "results-hippocampus/splits/Task04_Hippocampus.json"):
        assert output in out, output
    cfg = yaml.safe_load((ROOT / "config/hippocampus.yaml").read_text())
    cases = json.loads((task04_dir / "dataset.json").read_text())["training"]
    split = make_split([c["image"] for c in cases], cfg["split"]["test_fraction"], cfg["split"]["seed"])
    assert len(cases) == 260 and len(split["test"]) >= 50
    assert all(p % VIT_PATCH == 0 for p in cfg["network"]["patch_size"])  # UNETR's img_size

    refused = snakemake("-n", *layers, cwd=work)
    assert refused.returncode != 0
    assert (f"config ({ROOT / 'config/hippocampus.yaml'}): each target's bank would hold 2 models"
            in refused.stdout + refused.stderr)
    assert "add --until make_split" in refused.stdout + refused.stderr


def test_data_path_only_and_a_fetch_root_inside_the_shared_storage():
    from ccfv.workflow import check_config, data_path_only

    assert data_path_only({"make_split"}, set(), "results")
    assert not data_path_only({"make_split", "score"}, set(), "results")
    assert data_path_only(set(), {"results-h/splits/Task04_Hippocampus.json", "validate_task"}, "results-h")
    assert not data_path_only(set(), {"all"}, "results") and not data_path_only(set(), set(), "results")
    assert data_path_only(set(), set(), "results", ["plan_and_preprocess:task=Task04_Hippocampus"])
    assert not data_path_only(set(), set(), "results", ["pretrain:arch=unet,task=Task04_Hippocampus"])

    cfg = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    cfg["data"] = {"source": "msd", "msd": {"root": "../shared/data/fetched", "local": "../shared/data"}}
    with pytest.raises(ValueError, match=r"config \(config\): data\.msd\.root '\.\./shared/data/fetched' lies inside "
                                         r"data\.msd\.local '\.\./shared/data'"):
        check_config(cfg)


@pytest.mark.parametrize(
    ("layer", "message"),
    [
        ({"pretrain": {"iterations": 0}}, "pretrain.iterations: 0 is less than the minimum of 1"),
        # a misspelt key is reported at the key, in the file that misspells it
        ({"finetune": {"batchsize": 4}}, "finetune.batchsize: Additional properties are not allowed"),
        ({"finetune": {"seeds": ["a"]}}, "finetune.seeds.0: 'a' is not of type 'integer'"),
    ],
)
def test_bad_config_is_refused_naming_the_file_and_the_key(tmp_path, layer, message):
    # Layered as a user does (--configfile over the demo's), with a correct layer in between: the message
    # must name the file that holds the bad value, not the first or every config file.
    good, bad = tmp_path / "seeds.yaml", tmp_path / "mine.yaml"
    good.write_text(yaml.safe_dump({"finetune": {"seeds": [0, 1]}, "pretrain": {"iterations": 5}}))
    bad.write_text(yaml.safe_dump(layer))
    result = snakemake("-n", "--configfile", "config/config.yaml", str(good), str(bad))
    out = result.stdout + result.stderr
    assert result.returncode != 0
    assert f"config ({bad}): {message}" in out, out[-2000:]


def test_config_origin_names_the_last_layer_that_sets_a_key(tmp_path):
    from ccfv.workflow import config_layers, config_origin

    base, mine = tmp_path / "config.yaml", tmp_path / "mine.yaml"
    base.write_text("finetune: {seeds: [0], batch_size: 2}\ntasks: [a, b]\n")
    mine.write_text("finetune: {seeds: [0, 1]}\n")
    # Snakemake lists the --configfile files in workflow.configfiles too: they must not count twice
    layers = config_layers([mine, base], [mine], {"network": {"patch_size": [8, 8, 8]}})
    assert [name for name, _ in layers] == [str(base), str(mine), "--config"]
    assert config_origin(["finetune", "seeds"], layers) == str(mine)
    assert config_origin(["finetune", "seeds", 1], layers) == str(mine)
    assert config_origin(["finetune", "batch_size"], layers) == str(base)
    assert config_origin(["network", "patch_size"], layers) == "--config"
    # set nowhere (a missing required key): every source, since any of them could add it
    assert config_origin(["finetune", "iterations"], layers) == f"{base} + {mine} + --config"
    # a Snakefile's configfile: that does not exist is no source
    assert [name for name, _ in config_layers([tmp_path / "absent.yaml", mine], [mine])] == [str(mine)]


def test_a_missing_required_key_names_every_config_file(tmp_path):
    cfg = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    del cfg["results"]
    path = tmp_path / "whole.yaml"
    path.write_text(yaml.safe_dump(cfg))
    extra = tmp_path / "extra.yaml"
    extra.write_text("finetune: {seeds: [0, 1]}\n")
    result = snakemake("-n", "--configfile", str(path), str(extra))
    out = result.stdout + result.stderr
    assert result.returncode != 0
    assert f"config ({path} + {extra}): results: 'results' is a required property" in out, out[-2000:]


def test_a_bank_of_fewer_than_three_models_is_refused(tmp_path):
    small = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    small["tasks"], small["architectures"] = small["tasks"][:2], ["unet"]
    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump(small))
    result = snakemake("-n", "--configfile", str(path))
    assert result.returncode != 0
    assert "each target's bank would hold 2 models" in result.stdout + result.stderr
    small["architectures"] = ["unet", "unetr"]  # 2 x (1 source + random) = 4 models: enough
    path.write_text(yaml.safe_dump(small))
    assert snakemake("-n", "--configfile", str(path)).returncode == 0


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
        (lambda s: s.update(max_cases=1), r"max_cases"),
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


def demo_config() -> dict:
    return yaml.safe_load((ROOT / "config" / "config.yaml").read_text())


def test_check_config_passes_the_shipped_configs():
    from ccfv.workflow import check_config, check_config_before_schema

    for layer in ("seeds3.yaml", "study.yaml", None):
        config = demo_config()
        if layer:
            extra = yaml.safe_load((ROOT / "config" / layer).read_text())
            for key, value in extra.items():
                config[key] = {**config[key], **value} if isinstance(value, dict) and key in config else value
        check_config_before_schema(config)
        check_config(config)


@pytest.mark.parametrize("change, key, message", [
    (lambda c: c["pretrain"].update(snapshots=[10_000]), ("pretrain", "snapshots"), r"pretrain.snapshots \[10000\]"),
    (lambda c: c.update(tasks=c["tasks"][:1], architectures=["unet"]), ("tasks",), "would hold 1 models"),
    (lambda c: c["sampling"].update(layer_ratios={"unet": [1.0], "unetr": [0.5, 1.0]}), ("sampling", "layer_ratios"),
     "gives 1 entries for unet"),
    (lambda c: c["network"].update(patch_size=[24, 32, 32]), ("network", "patch_size"), "multiple of 16"),
    (lambda c: c["scoring"]["tables"].update(table1=["leeep"]), ("scoring", "tables", "table1"), r"\['leeep'\]"),
    (lambda c: c["scoring"]["metrics"]["ccfv"].update(distanse="w2"), ("scoring", "metrics", "ccfv"), "distanse"),
])
def test_check_config_names_the_file_the_key_and_the_problem(change, key, message):
    """The checks a schema cannot express, called as rules/common.smk calls them (the workflow-level
    tests above run the same checks through Snakemake)."""
    from ccfv.workflow import check_config

    config = demo_config()
    change(config)
    asked = []

    def source(*where):
        asked.append(where)
        return "mine.yaml"

    with pytest.raises(ValueError, match=message) as caught:
        check_config(config, source)
    assert str(caught.value).startswith("config (mine.yaml): ") and asked == [key]


def test_check_config_before_schema_refuses_head_init_in_pretraining():
    from ccfv.workflow import check_config_before_schema

    config = demo_config()
    config["pretrain"]["per_task"] = {"Task91_SynthLiver": {"head_init": "zero"}}
    with pytest.raises(ValueError, match=r"config \(config\): pretrain.per_task.Task91_SynthLiver.head_init: "
                                         "head_init is for fine-tuning only"):
        check_config_before_schema(config)


def test_lint_is_clean():
    result = snakemake("--lint", "--configfile", "config/config.yaml")
    assert result.returncode == 0, result.stdout + result.stderr


# One xdist worker runs this and the snapshot test in turn: this test touches scripts/score.py, which Snakemake
# reads as a code change of every score job, and the snapshot test runs score jobs of its own.
@pytest.mark.slow
def test_whole_dag_on_tiny_config(tmp_path):
    """Every stage for real (nnU-Net, training, sampling, scores, Dice) on 2 tiny tasks."""
    result = snakemake("--cores", "2", "--configfile", str(ROOT / "tests/configs/tiny.yaml"), cwd=tmp_path,
                       timeout=1500)
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
    rows = list(csv.reader((tmp_path / "results/tables/table1.csv").open()))
    tasks = ["Task91_SynthLiver", "Task94_SynthSpleen"]
    assert rows[0] == ["method", "statistic", *tasks, "Avg"]
    assert [(r[0], r[1]) for r in rows[1:]] == [("LogME", "tau"), ("LogME", "pearson"), ("LEEP", "tau"),
                                                ("LEEP", "pearson"), ("CC-FV", "tau"), ("CC-FV", "pearson")]
    table2 = list(csv.reader((tmp_path / "results/tables/table2.csv").open()))
    assert [(r[0], r[1]) for r in table2[1:]] == [("CC-FV", "tau"), ("CC-FV", "pearson"),
                                                  ("KL-divergence", "tau"), ("KL-divergence", "pearson")]
    for row in rows[1:] + table2[1:]:
        assert all(math.isfinite(float(v)) for v in row[2:]), row
    assert (tmp_path / "results/tables/table1.md").read_text().startswith("| Method |")
    # the ground-truth check ran first and every table marks exactly the targets it flags (tiny.yaml's one
    # fine-tuning iteration learns next to nothing, so it flags them all today; which, is the demo's business)
    tables_dir = tmp_path / "results/tables"
    health = {h["target"]: h for h in csv.DictReader((tables_dir / "ground_truth.csv").open())}
    assert list(health) == tasks
    assert flagged_in_tables(tables_dir, tasks) == {t for t, h in health.items() if h["can_rank"] == "False"}
    # a deliberately broken ground truth: Task94's fine-tuning "failed" for three of its four models, Task91's
    # learnt (hand-made Dice written into the fine-tuning results); the results stage reruns from them
    broken = {"Task91_SynthLiver": [0.31, 0.52, 0.64, 0.70], "Task94_SynthSpleen": [0.0, 0.0, 0.01, 0.42]}
    for target, values in broken.items():
        for path, value in zip(sorted((tmp_path / "results/finetune" / target).glob("*/seed0.json")), values):
            result_json = json.loads(path.read_text())
            result_json["mean_dice"] = value
            path.write_text(json.dumps(result_json))
    assert dry_run("--configfile", str(ROOT / "tests/configs/tiny.yaml"), cwd=tmp_path) == with_results(
        {"ground_truth": 1, "all": 1})
    rerun = snakemake("--cores", "2", "--configfile", str(ROOT / "tests/configs/tiny.yaml"), cwd=tmp_path, timeout=600)
    assert rerun.returncode == 0, (rerun.stdout + rerun.stderr)[-5000:]
    health = {h["target"]: h for h in csv.DictReader((tables_dir / "ground_truth.csv").open())}
    assert health["Task91_SynthLiver"]["can_rank"] == "True" and health["Task91_SynthLiver"]["reasons"] == ""
    why = health["Task94_SynthSpleen"]["reasons"]
    assert health["Task94_SynthSpleen"]["can_rank"] == "False"
    assert why == "3 of 4 models fine-tune to a mean Dice below 0.05 (more than 34% of the bank)"
    assert flagged_in_tables(tables_dir, tasks) == {"Task94_SynthSpleen"}
    rows = list(csv.reader((tables_dir / "table1.csv").open()))
    for row in rows[1:]:  # the values stay, numbers only
        assert all(math.isfinite(float(v)) for v in row[2:]), row
    for name in ("table1.md", "table2.md", "statistics.md", "regret.md", "selection.md", "stability.md"):
        text = (tables_dir / name).read_text()
        assert "| Task91 | Task94† |" in text, name
        assert f"† Task94_SynthSpleen: the fine-tuned Dice cannot rank the bank's models: {why}." in text, name
    for name in ("statistics.md", "regret.md", "selection.md"):
        # one source per bank: "Larger source dataset first" cannot differ from "Pretrained first", and says so
        assert "exactly as Pretrained first" in (tables_dir / name).read_text(), name
    assert r"Task94\textsuperscript{\dag}" in (tables_dir / "table1.tex").read_text()
    console = Console(file=io.StringIO(), width=300, color_system=None)
    print_ground_truth(tmp_path / "results", console)
    verdict = console.file.getvalue()
    assert verdict.startswith("Ground truth: on 1 of 2 targets the fine-tuned Dice cannot rank"), verdict
    assert f"  Task94_SynthSpleen: {why}" in verdict and "Task91_SynthLiver:" not in verdict
    records = list(csv.DictReader((tmp_path / "results/tables/scores_and_dice.csv").open()))
    assert len(records) == 8  # 2 targets x 2 architectures x (1 source + random)
    for stage in ("preprocess", "pretrain", "features", "scores", "finetune", "results"):
        assert any((tmp_path / "logs" / stage).rglob("*.log")), stage
        assert any((tmp_path / "results/benchmarks" / stage).rglob("*.tsv")), stage
    # beyond the paper's tables: LaTeX, statistics, figures, costs and provenance
    for name in ("table1.tex", "table2.tex", "statistics.md", "regret.md", "noise_ceiling.md", "costs_per_pair.md"):
        assert (tmp_path / "results/tables" / name).stat().st_size > 0, name
    for stem in ("scores_vs_dice", "dice_heatmap", "feature_tsne"):
        for ext in ("png", "svg"):
            assert (tmp_path / f"results/figures/{stem}.{ext}").stat().st_size > 0, (stem, ext)
    # beyond weighted tau: Kendall's tau-b, Rel@1 and the top-3 hit per target and Avg, larger model first
    selection = list(csv.DictReader((tmp_path / "results/tables/selection.csv").open()))
    assert {r["target"] for r in selection} == {*tasks, "Avg"}
    assert {r["statistic"] for r in selection} == {"kendall", "rel_at_1", "top3"}
    assert "larger_model_first" in {r["metric"] for r in selection}
    assert all(0.0 <= float(r["value"]) <= 1.0 for r in selection if r["statistic"] != "kendall")
    ceiling = list(csv.DictReader((tmp_path / "results/tables/noise_ceiling.csv").open()))
    assert [r["available"] for r in ceiling] == ["False"] * 2  # one fine-tuning seed: not available
    pairs = list(csv.DictReader((tmp_path / "results/tables/costs_per_pair.csv").open()))
    assert len(pairs) == 8 and all(float(p["te_s"]) > 0 and float(p["finetune_s"]) > 0 for p in pairs)
    provenance = json.loads((tmp_path / "results/provenance.json").read_text())
    assert provenance["config"]["tasks"] == tasks and len(provenance["config_sha256"]) == 64
    assert provenance["times"]["start"] < provenance["times"]["end"]
    assert set(provenance["data_checksums"]) == set(tasks)
    # the report holds every table and figure, each with its caption
    report = snakemake("--report", "results/report.zip", "--configfile", str(ROOT / "tests/configs/tiny.yaml"),
                       cwd=tmp_path, timeout=300)
    assert report.returncode == 0, (report.stdout + report.stderr)[-3000:]
    with zipfile.ZipFile(tmp_path / "results/report.zip") as archive:
        names = archive.namelist()
        text = "".join(archive.read(n).decode("utf-8", "replace") for n in names if n.endswith((".html", ".js")))
    for wanted in REPORT_FILES:
        assert any(n.endswith("/" + wanted) for n in names), (wanted, names[:50])
    assert "The paper's Fig. 2" in text and "Top-1 regret" in text
    # the report says in words which targets cannot rank and why (its Ground truth page), and the captions of
    # the tables and the workflow's description point to it
    with zipfile.ZipFile(tmp_path / "results/report.zip") as archive:
        page = next(archive.read(n).decode() for n in names if n.endswith("/ground_truth.html"))
    assert "On 1 of 2 targets the fine-tuned Dice cannot rank the bank's models." in page, page
    assert f"<strong>Task94_SynthSpleen</strong>: {html.escape(why)}." in page, page
    assert "<strong>Task91_SynthLiver</strong>" not in page
    assert "Read this first: whether each target's fine-tuned Dice can rank" in text
    assert "cannot rank its models (see Ground truth)" in text and "Read <strong>Tables / Ground truth</strong>" in text
    # a second run has nothing to do
    again = snakemake("-n", "--configfile", str(ROOT / "tests/configs/tiny.yaml"), cwd=tmp_path)
    assert "Nothing to be done" in again.stdout + again.stderr
    # adding a fine-tuning seed schedules that seed's fine-tunings and the results, nothing upstream
    cfg = yaml.safe_load((ROOT / "tests/configs/tiny.yaml").read_text())
    cfg["finetune"]["seeds"] = [0, 1]
    (tmp_path / "two_seeds.yaml").write_text(yaml.safe_dump(cfg))
    more = snakemake("-n", "--configfile", str(tmp_path / "two_seeds.yaml"), cwd=tmp_path)
    out = more.stdout + more.stderr
    assert more.returncode == 0, out
    assert job_counts(out) == with_results({"finetune": 8, "all": 1}), out[-3000:]
    assert "seed0.json" not in re.sub(r"input:.*", "", out)
    # changing a metric's option reruns scoring and the results, nothing upstream; a label only the results
    cfg = yaml.safe_load((ROOT / "tests/configs/tiny.yaml").read_text())
    cfg["scoring"]["metrics"]["ccfv_kl"]["label"] = "KL"
    (tmp_path / "label.yaml").write_text(yaml.safe_dump(cfg))
    result = snakemake("-n", "--configfile", str(tmp_path / "label.yaml"), cwd=tmp_path)
    assert job_counts(result.stdout + result.stderr) == with_results({"all": 1})
    cfg["scoring"]["metrics"]["ccfv_kl"]["s"] = 0
    (tmp_path / "option.yaml").write_text(yaml.safe_dump(cfg))
    result = snakemake("-n", "--configfile", str(tmp_path / "option.yaml"), cwd=tmp_path)
    assert job_counts(result.stdout + result.stderr) == with_results({"score": 8, "all": 1})
    # one source task's pretraining budget: that source's model, and the targets whose bank holds it
    cfg = yaml.safe_load((ROOT / "tests/configs/tiny.yaml").read_text())
    cfg["pretrain"]["per_task"] = {"Task91_SynthLiver": {"iterations": 6}}
    (tmp_path / "budget.yaml").write_text(yaml.safe_dump(cfg))
    result = snakemake("-n", "--configfile", str(tmp_path / "budget.yaml"), cwd=tmp_path)
    out = result.stdout + result.stderr
    assert job_counts(out) == with_results(
        {"pretrain": 2, "sample_features": 2, "score": 2, "finetune": 2, "all": 1}
    ), out[-3000:]
    assert set(re.findall(r"task=(\w+)", out)) == {"Task91_SynthLiver"}
    assert set(re.findall(r"model=(unetr?-[\w]+)", out)) == {"unet-Task91_SynthLiver", "unetr-Task91_SynthLiver"}
    # a touched script reruns its rule and what follows (Snakemake's "code has changed"), nothing upstream;
    # the script's timestamp is put back afterwards so that the checkout's own results are not affected
    script = ROOT / "scripts" / "score.py"
    with workflow_scripts_lock(exclusive=True):
        _rerun_on_changed_script(script, tmp_path)


def _rerun_on_changed_script(script: Path, tmp_path: Path) -> None:
    before = script.stat()
    try:
        os.utime(script)
        result = snakemake("-n", "--configfile", str(ROOT / "tests/configs/tiny.yaml"), cwd=tmp_path)
        out = result.stdout + result.stderr
        assert job_counts(out) == with_results({"score": 8, "all": 1}), out[-3000:]
        assert "Code has changed since last execution" in out
    finally:
        os.utime(script, ns=(before.st_atime_ns, before.st_mtime_ns))


def test_a_script_is_touched_only_while_no_other_test_reads_the_scripts():
    """workflow_scripts_lock across processes (as across xdist workers): readers share it, a writer excludes."""
    import fcntl

    holder = ("import sys, time\nsys.path.insert(0, {root!r})\nfrom tests.conftest import workflow_scripts_lock\n"
              "with workflow_scripts_lock(exclusive={exclusive}):\n    print('held', flush=True)\n    time.sleep(60)\n")
    for exclusive in (False, True):
        process = subprocess.Popen([sys.executable, "-c", holder.format(root=str(ROOT), exclusive=exclusive)],
                                   stdout=subprocess.PIPE, text=True)
        try:
            assert process.stdout.readline().strip() == "held"
            for mine in (fcntl.LOCK_SH, fcntl.LOCK_EX):
                with open(workflow_scripts_lock_path(), "a+") as handle:
                    try:
                        fcntl.flock(handle, mine | fcntl.LOCK_NB)
                        got = True
                        fcntl.flock(handle, fcntl.LOCK_UN)
                    except BlockingIOError:
                        got = False
                assert got == (not exclusive and mine == fcntl.LOCK_SH), (exclusive, mine)
        finally:
            process.kill()
            process.wait()


def test_start_job_pins_the_numerics_of_a_fresh_job_process():
    """What every script does first: the job's process is pinned at its thread count before numpy loads."""
    code = ("import json, os, types\nfrom ccfv.workflow import start_job\n"
            "start_job(types.SimpleNamespace(threads=1))\nimport numpy\n"
            "print(json.dumps({k: os.environ.get(k) for k in ('CCFV_NUMERICS_PIN', 'OMP_NUM_THREADS')}))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    env = json.loads(result.stdout.strip().splitlines()[-1])
    assert env == {"CCFV_NUMERICS_PIN": "x86-64-v3,threads=1", "OMP_NUM_THREADS": "1"}


def test_every_script_pins_before_it_imports_anything_else():
    import ast

    for script in sorted((ROOT / "scripts").glob("*.py")):
        body = ast.parse(script.read_text()).body
        body = body[1:] if isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) else body
        assert ast.unparse(body[0]) == "from ccfv.workflow import log_to, start_job", script.name
        assert ast.unparse(body[1]) == "if __name__ == '__main__':\n    start_job(snakemake)", script.name


def test_every_script_can_be_imported_again_by_a_spawned_worker():
    """nnU-Net's conversion and preprocessing start "spawn" workers, which run the job's script again as
    ``__mp_main__`` without the ``snakemake`` object: a script that touches it outside its ``__main__`` guard
    crashes every worker, and the job then waits for them forever (CI's whole-DAG test hung on this)."""
    code = ("import runpy, sys\n"
            "for path in sys.argv[1:]:\n"
            "    runpy.run_path(path, run_name='__mp_main__')\n"
            "print('imported', len(sys.argv) - 1)")
    scripts = sorted(str(s) for s in (ROOT / "scripts").glob("*.py"))
    result = subprocess.run([sys.executable, "-c", code, *scripts], capture_output=True, text=True, timeout=300,
                            cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == f"imported {len(scripts)}"
