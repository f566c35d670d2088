"""The workflow with targets apart from sources, external bank members and protocol fine-tuning
(ccfv.workflow's checks, rules/common.smk's bank, rules/{bank,features,finetune}.smk; docs/real-study.md): a tiny
synthetic source task pretrained, a second task the only target, read as an MSD task at 1 mm (MeshNets take
1 mm voxels only), a tiny MeshNet written here as the external member, run end to end; bad external members
refused before any job. The same run carries a pretraining snapshot as a bank member (tests/test_snapshots.py
holds the snapshot's DAG and config checks)."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml

from ccfv.bank.model_card import MODEL_CARD
from tests.models.test_meshnet import tiny_weights, write_tiny_model
from tests.test_workflow import ROOT, dry_run, snakemake

TINY = ROOT / "tests/configs/tiny.yaml"
TARGET = "Task94_SynthSpleen"


def write_one_mm_task(root: Path, task: str = TARGET, n_cases: int = 5) -> Path:
    """A synthetic task in MSD layout with every file's voxels set to 1 mm (the MeshNet convention)."""
    from ccfv.data.synthetic import write_task

    write_task(task, root, n_cases=n_cases, seed=0, shape=[40, 36, 16])
    folder = root / task
    for path in sorted(folder.glob("*/*.nii.gz")):
        image = nib.load(str(path))
        nib.save(nib.Nifti1Image(np.asarray(image.dataobj), np.diag([1.0, 1.0, 1.0, 1.0])), str(path))
    return folder


def layer(tmp_path: Path, **external) -> Path:
    """The config layer over tests/configs/tiny.yaml: Task91 a synthetic source only, Task94 (MSD at 1 mm) the
    only target, one U-Net architecture, the given external members, protocol fine-tuning of 2 iterations."""
    config = {
        "targets": [TARGET],
        "data": {"sources": {TARGET: "msd"}, "msd": {"local": str(tmp_path / "msd"), "root": str(tmp_path / "fetched")}},
        "architectures": ["unet"],
        "sampling": {"layer_ratios": {"unet": [0.5, 1.0]}},
        "bank": {"external": external},
        "finetune": {"method": "protocol", "protocol": {"iterations": 2, "batch_size": 2, "checkpoint_every": 1}},
    }
    path = tmp_path / "external.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.slow
@pytest.mark.usefixtures("reads_workflow_scripts")  # expects nothing left to do: never while a script is touched
def test_a_source_task_pretrained_and_one_target_with_an_external_member_run_end_to_end(tmp_path):
    """Every stage for real: the bank of the one target holds the U-Net pretrained on the source, the random
    U-Net, the tiny MeshNet and its random copy; each is sampled, scored, fine-tuned by the protocol, and the
    tables, statistics and static rankers hold all four."""
    write_one_mm_task(tmp_path / "msd")
    mesh = write_tiny_model(tmp_path / "models" / "tinymesh")
    config = layer(tmp_path, tinymesh={"path": str(mesh), "patch_size": [16, 16, 16], "source_cases": 7})
    # the source's pretraining also leaves a snapshot after 2 of its 4 iterations: a bank member of its own
    # (one run serves both, the whole workflow's costliest test otherwise runs twice)
    layered = yaml.safe_load(config.read_text())
    layered["pretrain"] = {"snapshots": [2]}
    config.write_text(yaml.safe_dump(layered))
    counts = dry_run("--configfile", str(TINY), str(config), cwd=tmp_path)
    assert counts["pretrain"] == 1 and counts["finetune_protocol"] == 5 and counts["sample_member_features"] == 2
    assert "finetune" not in counts and counts["describe_member"] == 2 and counts["sample_features"] == 3
    result = snakemake("--cores", "2", "--configfile", str(TINY), str(config), cwd=tmp_path, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    results = tmp_path / "results"
    snapshot = "unet-Task91_SynthLiver@2"
    members = ["tinymesh-random", "tinymesh-released", "unet-Task91_SynthLiver", snapshot, "unet-random"]
    with open(results / "tables/scores_and_dice.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["model"] for r in rows) == members and {r["target"] for r in rows} == {TARGET}
    for model in members:
        record = json.loads((results / f"finetune/{TARGET}/{model}/seed0.json").read_text())
        assert record["method"] == "protocol" and record["model_id"] == model and record["iterations"] == 2
        assert 0.0 <= record["mean_dice"] <= 1.0
        folder = results / f"finetune-protocol/{TARGET}/{model}/seed0"
        assert (folder / "dice.csv").is_file() and (folder / "finetune.json").is_file()
        assert not (folder / ".work").exists()  # removed once the member is scored
    # the snapshot: its own model card, scored and fine-tuned like any bank member
    card = json.loads((results / "bank" / snapshot / MODEL_CARD).read_text())
    assert card["model_id"] == snapshot and card["iterations"] == 2 and card["snapshot_of"] == "unet-Task91_SynthLiver"
    final = json.loads((results / "bank/unet-Task91_SynthLiver" / MODEL_CARD).read_text())
    assert final["iterations"] == 4 and "snapshot_of" not in final
    scores = json.loads((results / f"scores/{TARGET}/{snapshot}.json").read_text())
    assert scores["model"] == snapshot and scores["scores"]
    assert all(math.isfinite(v) for v in scores["scores"].values())
    # the source task was pretrained on, never fine-tuned on
    assert not (results / "finetune/Task91_SynthLiver").exists()
    card = json.loads((results / "bank/tinymesh-released/member.json").read_text())
    assert card["format"] == "meshnet" and card["source_cases"] == 7 and card["parameter_count"] > 0
    assert json.loads((results / "bank/tinymesh-random/member.json").read_text())["source_cases"] is None
    statistics = (results / "tables/statistics.csv").read_text()
    for ranker in ("pretrained_first", "same_architecture_first", "larger_source_first", "larger_model_first"):
        assert ranker in statistics
    # nothing left to do
    again = snakemake("-n", "--configfile", str(TINY), str(config), cwd=tmp_path)
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr

    # The released model re-copied (as a shared folder restored or re-mounted: new mtimes, the same bytes):
    # still nothing to do; the weights changed: every job that read the model reruns, the bank's own do not.
    import os
    import shutil
    import time

    copy = mesh.with_name("copy")
    shutil.copytree(mesh, copy)
    shutil.rmtree(mesh)
    time.sleep(0.05)
    copy.rename(mesh)
    for path in (mesh, *mesh.iterdir()):
        os.utime(path)
    again = snakemake("-n", "--configfile", str(TINY), str(config), cwd=tmp_path)
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr, again.stdout[-2000:]
    write_tiny_model(mesh, weights=tiny_weights(seed=1))
    counts = dry_run("--configfile", str(TINY), str(config), cwd=tmp_path)
    assert counts["describe_member"] == 2 and counts["sample_member_features"] == 2, counts
    assert counts["finetune_protocol"] == 2 and counts["score"] == 2, counts  # the two tinymesh members only


@pytest.mark.parametrize("entry, key, message", [
    ({"path": "does/not/exist"}, "bank.external.ghost.path", "does not exist"),
    ({"path": "README.md"}, "bank.external.ghost.path", "not a model of a known format"),
    ({"path": "MESH", "format": "hippodeep"}, "bank.external.ghost.format", "is a 'meshnet' model"),
    ({"path": "MESH", "format": "tfjs"}, "bank.external.ghost.format", "is not one of"),
])
def test_a_bad_external_member_is_refused_before_any_job_naming_the_file_and_key(tmp_path, entry, key, message):
    mesh = write_tiny_model(tmp_path / "tinymesh")
    entry = {k: (str(mesh) if v == "MESH" else str(ROOT / v) if k == "path" and v == "README.md" else v)
             for k, v in entry.items()}
    config = layer(tmp_path, ghost=entry)
    result = snakemake("-n", "--configfile", str(TINY), str(config), cwd=tmp_path)
    assert result.returncode != 0
    out = result.stdout + result.stderr
    assert f"config ({config}): {key}" in out and message in out, out[-2000:]
    assert not (tmp_path / "results").exists()


def test_external_members_need_protocol_fine_tuning_and_targets_must_be_tasks(tmp_path):
    mesh = write_tiny_model(tmp_path / "tinymesh")
    config = layer(tmp_path, tinymesh={"path": str(mesh)})
    result = snakemake("-n", "--configfile", str(TINY), str(config), "--config", "finetune={'method': 'nnunet'}",
                       cwd=tmp_path)
    assert result.returncode != 0 and "finetune.method: 'nnunet' cannot fine-tune the external members" in \
        result.stdout + result.stderr
    bad = tmp_path / "targets.yaml"
    bad.write_text(yaml.safe_dump({"targets": ["Task04_Hippocampus"]}))
    result = snakemake("-n", "--configfile", str(TINY), str(bad), cwd=tmp_path)
    assert result.returncode != 0
    assert f"config ({bad}): targets: Task04_Hippocampus is not one of tasks" in result.stdout + result.stderr


def test_the_demo_keeps_every_task_a_target_and_no_external_member(tmp_path):
    counts = dry_run("--configfile", "config/config.yaml", cwd=tmp_path)
    assert counts["finetune"] == 18 and "finetune_protocol" not in counts and "sample_member_features" not in counts
