"""Training snapshots as bank members in the workflow (pretrain.snapshots; docs/models.md): the DAG of the
study config, the empty list changing nothing, a bad list refused, a snapshot in every other target's bank. A
snapshot scored and fine-tuned for real: tests/test_workflow_external.py; the training side (right iterations,
resuming): tests/bank/test_training.py."""
from __future__ import annotations

import re

import pytest
import yaml

from .test_workflow import ROOT, job_counts, snakemake

STUDY = ("config/config.yaml", "config/study.yaml")


def _bank_members(output: str, target: str, seed: int = 0) -> set[str]:
    return set(re.findall(rf"finetune/{target}/([^/\s]+)/seed{seed}\.json", output))


def test_study_config_lays_out_twenty_models_per_target_and_three_seeds():
    # study.yaml is layered over the default config, which the tests' scratch directory does not hold
    result = snakemake("-n", "--configfile", *STUDY, timeout=300)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    targets = ["Task91_SynthLiver", "Task92_SynthLung", "Task93_SynthPancreas", "Task94_SynthSpleen"]
    for target in targets:
        members = _bank_members(out, target)
        assert len(members) >= 20, (target, sorted(members))
        assert {m for m in members if "@" in m} and not any(target in m for m in members)  # never its own data
        for seed in (1, 2):
            assert _bank_members(out, target, seed) == members
    # one pretraining job per (architecture, source) writes the final model and its snapshots
    assert set(re.findall(r"bank/(unet-Task91_SynthLiver@\d+)", out)) == {"unet-Task91_SynthLiver@150",
                                                                         "unet-Task91_SynthLiver@300"}
    counts = job_counts(out)
    assert counts["pretrain"] == 8 and counts["finetune"] == 4 * 20 * 3


def test_an_empty_snapshot_list_changes_nothing(tmp_path):
    cfg = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    cfg["pretrain"]["snapshots"] = []
    (tmp_path / "empty.yaml").write_text(yaml.safe_dump(cfg))
    default = snakemake("-n", "--configfile", "config/config.yaml")
    empty = snakemake("-n", "--configfile", str(tmp_path / "empty.yaml"))
    assert default.returncode == 0 and empty.returncode == 0

    def jobs(result):
        # each job's rule, output and params (a job block), without the dry-run's timestamps and ids
        text = re.sub(r"^\[.*\]$|^\s*jobid: \d+$", "", result.stdout + result.stderr, flags=re.M)
        return sorted(block.strip() for block in text.split("\n\n") if "output:" in block)

    assert jobs(default) == jobs(empty)


@pytest.mark.parametrize("snapshots, message", [
    ([600], r"pretrain.snapshots \[600\] are not before the end of Task91_SynthLiver's pretraining \(600 iterations\)"),
    ([0], r"snapshots.*0 is less than the minimum of 1|0 is less than the minimum of 1"),
])
def test_bad_snapshots_are_refused_before_any_job(tmp_path, snapshots, message):
    cfg = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    cfg["pretrain"]["snapshots"] = snapshots
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(cfg))
    result = snakemake("-n", "--configfile", str(tmp_path / "bad.yaml"))
    assert result.returncode != 0
    assert re.search(message, result.stdout + result.stderr), (result.stdout + result.stderr)[-2000:]


def test_snapshots_are_pretraining_only(tmp_path):
    cfg = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    cfg["finetune"]["snapshots"] = [10]
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(cfg))
    result = snakemake("-n", "--configfile", str(tmp_path / "bad.yaml"))
    assert result.returncode != 0 and "finetune" in result.stdout + result.stderr


def test_a_snapshot_enters_every_other_targets_bank_beside_its_final_model(tmp_path):
    """The DAG of tiny.yaml with one snapshot: per architecture, the other task, its snapshot and a random
    member. A snapshot sampled, scored and fine-tuned for real: tests/test_workflow_external.py's end-to-end run."""
    cfg = yaml.safe_load((ROOT / "tests/configs/tiny.yaml").read_text())
    cfg["pretrain"]["snapshots"] = [2]
    config = tmp_path / "snapshots.yaml"
    config.write_text(yaml.safe_dump(cfg))
    result = snakemake("-n", "--configfile", str(config), cwd=tmp_path)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    for target, source in (("Task91_SynthLiver", "Task94_SynthSpleen"), ("Task94_SynthSpleen", "Task91_SynthLiver")):
        assert _bank_members(out, target) == {
            f"unet-{source}", f"unet-{source}@2", f"unetr-{source}", f"unetr-{source}@2", "unet-random", "unetr-random"}
    assert job_counts(out)["pretrain"] == 4  # one run per (architecture, source) writes its model and snapshot
