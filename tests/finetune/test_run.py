"""``ccfv finetune`` (ccfv.finetune.run) end to end on tiny data: a tiny module with its own input convention and
a tiny bank U-Net (the workflow's own members) fine-tuned by the protocol, their held-out Dice in the original
image space (the preprocessing undone exactly), determinism, resuming a killed command, bad input."""
from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from ccfv.cli import main
from ccfv.finetune.evaluation import score_held_out
from ccfv.finetune.protocol import FinetuneProtocol, replace_head
from ccfv.finetune.run import dataset_split, finetune_model, finetune_models
from ccfv.models.preprocessing import Preprocessor
from ccfv.preprocess.dataset import open_dataset
from ccfv.rank.agreement import read_dice

from .conftest import RASPreprocessing, tiny_model

CPU = torch.device("cpu")
FAST = FinetuneProtocol(iterations=40, learning_rate=1e-2, head_learning_rate=1e-2)


@pytest.fixture(scope="module")
def bank_unet(tmp_path_factory, tiny_dataset) -> Path:
    """A randomly initialised member of the workflow's bank (nnU-Net's U-Net, the tests' tiny plans)."""
    from ccfv.bank.training import random_model

    return random_model(tiny_dataset.preprocessed, "unet-random", tmp_path_factory.mktemp("bank") / "unet-random",
                        seed=0)


def one_hot_logits(seg: np.ndarray, class_ids: list[int]) -> torch.Tensor:
    values = [0, *class_ids]
    return torch.stack([torch.from_numpy((seg == v).astype(np.float32)) for v in values]) * 10


# --- the original image space ---------------------------------------------------------------------------------

def test_a_prediction_is_brought_back_onto_the_label_files_grid(blobs, tmp_path):
    """The perfect prediction on the model's grid (the one-hot of its preprocessed label) restored: exactly the
    label file, for a callable with restore() (a flip of the LPS volumes) and for nnU-Net's route (a bank
    model: the dataset's own plans, nnU-Net's export)."""

    dataset = open_dataset(blobs, tmp_path / "d")
    preprocessor = Preprocessor(dataset, tmp_path / "w")
    model = tiny_model().load()
    cases = list(dataset.cases)[:2]
    for case, image, seg in preprocessor.cases(model, cases):
        label = np.asarray(nib.load(dataset.cases[case]["label"]).dataobj)
        assert not np.array_equal(seg, label)  # the convention flips two axes
        prediction, reference, space = preprocessor.restore(model, case, one_hot_logits(seg, dataset.class_ids))
        assert space == "original" and np.array_equal(reference, label) and np.array_equal(prediction, label)
    with pytest.raises(ValueError, match=r"logits of shape \(2, "):
        preprocessor.restore(model, cases[0], torch.zeros(2, *seg.shape))


def test_the_nnunet_route_undoes_resampling_cropping_and_transposing(bank_unet, tiny_dataset, tmp_path):
    """A bank model on the synthetic task (voxels of 1.5 x 1.5 x 3 mm, jittered: nnU-Net resamples each case
    to the median spacing): the perfect prediction on nnU-Net's grid, exported back, matches the
    label files (nearest to exact: the export resamples logits)."""
    from ccfv.finetune.evaluation import dice_per_class
    from ccfv.models.bank import load as load_bank

    dataset = open_dataset(tiny_dataset.raw, tmp_path / "d")
    preprocessor = Preprocessor(dataset, tmp_path / "w")
    # nnU-Net's own plans for this dataset, as Preprocessor plans them (fingerprint and default planner), taken
    # from the session's planning instead of planning again
    (tmp_path / "w").mkdir()
    shutil.copy(tiny_dataset.preprocessed / "nnUNetPlans.json", tmp_path / "w" / "dataset_plans.json")
    model = load_bank("unet", bank_unet)
    for case, image, seg in preprocessor.cases(model, list(dataset.cases)[:3]):
        prediction, reference, space = preprocessor.restore(model, case, one_hot_logits(seg, dataset.class_ids))
        assert space == "original" and prediction.shape == reference.shape
        assert all(d > 0.97 for d in dice_per_class(prediction, reference, dataset.class_ids).values()), case


def test_without_restore_the_dice_is_on_the_models_grid(blobs, tmp_path):
    class NoRestore:
        def __call__(self, images, label):
            return RASPreprocessing()(images, label)

    dataset = open_dataset(blobs, tmp_path / "d")
    preprocessor = Preprocessor(dataset, tmp_path / "w")
    model = tiny_model(preprocess=NoRestore()).load()
    model.preprocess_key = "no-restore"
    [(case, _, seg)] = list(preprocessor.cases(model, [next(iter(dataset.cases))]))
    prediction, reference, space = preprocessor.restore(model, case, one_hot_logits(seg, dataset.class_ids))
    assert space == "model" and np.array_equal(reference, seg) and np.array_equal(prediction, seg)


# --- one model ------------------------------------------------------------------------------------------------

def test_finetuning_raises_the_dice_above_the_untrained_network_and_leaves_the_model_alone(blobs, tmp_path):
    dataset = open_dataset(blobs, tmp_path / "d")
    preprocessor = Preprocessor(dataset, tmp_path / "w")
    split = dataset_split(dataset, tmp_path, seed=0)
    model = tiny_model(seed=1).load()
    original = {k: v.clone() for k, v in model.network.state_dict().items()}
    row = finetune_model(model, preprocessor, split, FAST, 0, tmp_path / "ck", CPU)
    # the baseline: the same network untrained, its head replaced at random (a zero head predicts nothing)
    baseline = tiny_model(seed=1).load()
    replace_head(baseline.network, "head", 3, "random", seed=0)
    untrained = score_held_out(baseline.network, baseline, preprocessor, split["test"], CPU)
    assert row["space"] == untrained["space"] == "original"
    assert row["mean_dice"] > untrained["mean_dice"] + 0.3, (row["per_class"], untrained["per_class"])
    assert row["per_class"][1] > 0.7, row["per_class"]  # the bright ball
    assert np.mean(row["losses"][-5:]) < np.mean(row["losses"][:5])
    assert row["head"] == "head" and row["head_parameters"] == ["head.weight", "head.bias"]
    assert row["frozen_normalisation"] == ["enc.1"]
    assert set(row["per_case"]) == set(split["test"])
    assert all(torch.equal(original[k], v) for k, v in model.network.state_dict().items())
    assert not (tmp_path / "ck").exists() or not any((tmp_path / "ck").iterdir())  # checkpoint removed once scored


def test_a_model_with_other_input_channels_is_refused(blobs, tmp_path):
    from ccfv.models.base import ModelError

    dataset = open_dataset(blobs, tmp_path / "d")
    model = tiny_model().load()
    model.num_input_channels = 2
    with pytest.raises(ModelError, match="expects 2 input channel"):
        finetune_model(model, Preprocessor(dataset, tmp_path / "w"), dataset_split(dataset, tmp_path), FAST, 0,
                       tmp_path, CPU)


def test_two_runs_with_one_seed_give_the_same_dice_and_losses(blobs, tmp_path):
    protocol = FinetuneProtocol(iterations=6, learning_rate=1e-2, head_learning_rate=1e-2)
    runs = [finetune_models(blobs, [tiny_model(seed=2)], tmp_path / f"run{i}", seed=3, protocol=protocol,
                            device="cpu", log=lambda message: None) for i in range(2)]
    (a,), (b,) = runs[0].rows, runs[1].rows
    assert a["losses"] == b["losses"] and a["per_case"] == b["per_case"] and a["identity"] == b["identity"]
    other = finetune_models(blobs, [tiny_model(seed=2)], tmp_path / "other", seed=4, protocol=protocol,
                            device="cpu", log=lambda message: None)
    assert other.rows[0]["losses"] != a["losses"]


def test_a_learning_rate_grid_keeps_the_pilots_best_rate_and_ends_as_a_run_at_that_rate(blobs, tmp_path):
    """Successive halving: three body rates train the first 4 of 10 iterations; the rate with the lowest mean loss
    over pilot iterations 2-3 goes on, and the result (weights, losses, Dice) is that of a plain run at that
    rate. 1e-9 cannot move the tiny network's body, so it loses to the others."""
    dataset = open_dataset(blobs, tmp_path / "d")
    preprocessor = Preprocessor(dataset, tmp_path / "w")
    split = dataset_split(dataset, tmp_path, seed=0)
    common = dict(iterations=10, head_learning_rate=1e-2, head_init="random")
    grid = FinetuneProtocol(learning_rate_grid=[1e-9, 1e-2, 3e-3], selection_iterations=4, **common)
    messages = []
    row = finetune_model(tiny_model(seed=1).load(), preprocessor, split, grid, 0, tmp_path / "ck", CPU,
                         log=messages.append)
    selection = row["learning_rate_selection"]
    assert selection["rates"] == [1e-9, 1e-2, 3e-3] and selection["window"] == [2, 4]
    losses = {rate: np.mean(selection["pilot_losses"][f"{rate:g}"][2:4]) for rate in selection["rates"]}
    assert selection["chosen"] == min(losses, key=losses.get) == row["learning_rate"] != 1e-9, losses
    assert any(f"body rate {row['learning_rate']:g} of" in m for m in messages)
    plain = finetune_model(tiny_model(seed=1).load(), preprocessor, split,
                           FinetuneProtocol(learning_rate=row["learning_rate"], **common), 0, tmp_path / "ck2", CPU)
    assert row["losses"] == plain["losses"] and row["per_case"] == plain["per_case"]
    assert row["identity"]["protocol"]["learning_rate_grid"] == [1e-9, 1e-2, 3e-3]
    assert not any((tmp_path / "ck").iterdir())  # every pilot's checkpoint removed once scored


# --- the command ----------------------------------------------------------------------------------------------

def test_several_learning_rates_on_the_command_line_are_a_grid(blobs, bank_unet, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["finetune", "--data", str(blobs), "--model", f"unet={bank_unet}", "--iterations", "4",
            "--learning-rate", "1e-2", "1e-9", "--selection-iterations", "2", "--out", str(out), "--device", "cpu"]
    assert main(args) == 0, capsys.readouterr()
    report = json.loads((out / "finetune.json").read_text())
    assert report["protocol"]["learning_rate_grid"] == [1e-2, 1e-9] and report["protocol"]["selection_iterations"] == 2
    [row] = report["models"]
    assert row["learning_rate_selection"]["chosen"] == row["learning_rate"] in (1e-2, 1e-9)
    assert main([*args[:-4], "--learning-rate", "1e-2", "1e-2", "--out", str(tmp_path / "bad")]) == 2
    assert "two or more different rates" in capsys.readouterr().err and not (tmp_path / "bad").exists()


def test_ccfv_finetune_end_to_end_with_a_bank_unet(blobs, bank_unet, tmp_path, capsys):
    """The workflow's bank member through the same protocol: nnU-Net's plans for the target, its
    seg_layers replaced by a 3-class head, Dice on the label files; dice.csv is a --dice file; a rerun
    reuses the recorded split and the finished result."""
    out = tmp_path / "out"
    args = ["finetune", "--data", str(blobs), "--model", f"unet={bank_unet}", "--model", f"gone={tmp_path / 'nope'}",
            "--iterations", "4", "--out", str(out), "--device", "cpu", "--threads", "1"]
    assert main(args) == 1  # one model fine-tuned, one could not be
    printed = capsys.readouterr()
    assert "Held-out Dice on Dataset990_TinyBlobs after 4 iterations" in printed.out
    assert "not fine-tuned gone" in printed.out and "no such file or folder" in printed.out
    report = json.loads((out / "finetune.json").read_text())
    [row] = report["models"]
    assert row["model"] == "unet" and row["kind"] == "ccfv" and row["space"] == "original"
    assert row["head"] == "decoder.seg_layers"
    assert row["head_parameters"] == ["decoder.seg_layers.0.weight", "decoder.seg_layers.0.bias",
                                      "decoder.seg_layers.1.weight", "decoder.seg_layers.1.bias"]
    assert report["classes"] == [1, 2] and report["protocol"]["iterations"] == 4 and len(row["losses"]) == 4
    assert report["failed"][0]["model"] == "gone"
    split = json.loads((out / "split.json").read_text())
    assert split["test"] == report["split"]["test"] == sorted(row["per_case"]) and len(split["test"]) == 2
    assert (out / "split.record.json").is_file()
    assert read_dice(out / "dice.csv") == {"unet": pytest.approx(row["mean_dice"])}
    with (out / "dice.csv").open() as handle:
        line = next(csv.DictReader(handle))
    assert set(line) >= {"model", "dice", "dice_1", "dice_2", "space", "seconds_per_iteration"}
    assert (out / ".work").is_dir()  # kept: a model failed, a rerun will need the cases

    assert main(args[:5] + args[7:]) == 0  # without the missing model: the finished one is reused
    assert "fine-tuned and scored by an earlier run" in capsys.readouterr().err
    again = json.loads((out / "finetune.json").read_text())["models"][0]
    assert again["reused"] is True and again["per_case"] == row["per_case"]
    assert not (out / ".work").exists()  # every model done: the scratch folder is gone


KILLED_AFTER_FIRST_CHECKPOINT = """
import os, signal, sys
sys.path.insert(0, {root!r})
import ccfv.finetune.protocol as protocol
from ccfv.finetune.run import finetune_models
from tests.finetune.conftest import tiny_model
save = protocol._save_atomically
def save_then_die(state, path):
    save(state, path)
    os.kill(os.getpid(), signal.SIGKILL)
protocol._save_atomically = save_then_die
finetune_models({data!r}, [tiny_model(seed=2)], {out!r}, seed=1, device="cpu", threads=1,
                protocol=protocol.FinetuneProtocol(iterations=6, checkpoint_every=2, learning_rate=1e-2))
"""


def test_a_killed_finetuning_resumes_where_it_stopped(blobs, tmp_path):
    """The process is SIGKILLed right after its first checkpoint (iteration 2 of 6); the same call again
    (checkpointing at other intervals) continues from it and ends with the losses and Dice of an
    uninterrupted run."""
    root = Path(__file__).resolve().parents[2]
    protocol = FinetuneProtocol(iterations=6, learning_rate=1e-2)

    def finetune(out):
        return finetune_models(blobs, [tiny_model(seed=2)], out, seed=1, protocol=protocol, device="cpu",
                               log=lambda message: None).rows[0]

    whole = finetune(tmp_path / "whole")
    killed = tmp_path / "killed"
    code = KILLED_AFTER_FIRST_CHECKPOINT.format(root=str(root), data=str(blobs), out=str(killed))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=root)
    assert result.returncode == -9, result.stderr[-2000:]
    assert len(list((killed / ".work").rglob("*.pth"))) == 1 and not (killed / "finetune.json").exists()
    resumed = finetune(killed)
    assert resumed["resumed_from"] == 2
    assert resumed["losses"] == whole["losses"] and resumed["per_case"] == whole["per_case"]


def test_bad_input_is_an_error_and_leaves_nothing(blobs, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["finetune", "--data", str(tmp_path / "nothing"), "--model", "x=y", "--out", str(out)]) == 2
    assert "no such dataset folder" in capsys.readouterr().err and not out.exists()
    assert main(["finetune", "--data", str(blobs), "--model", "x=y", "--out", str(out), "--iterations", "0"]) == 2
    assert "fine-tuning iterations: 0 is not a positive integer" in capsys.readouterr().err and not out.exists()
    assert main(["finetune", "--data", str(blobs), "--model", "x=y", "--out", str(out), "--test-fraction", "1"]) == 2
    assert "--test-fraction 1.0: must lie in (0, 1)" in capsys.readouterr().err and not out.exists()
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": ["a"], "test": ["b"], "cases_sha256": "0"}))
    assert main(["finetune", "--data", str(blobs), "--model", "x=y", "--out", str(out), "--split", str(split)]) == 2
    assert "the dataset's cases changed since this split was made" in capsys.readouterr().err and not out.exists()


def test_the_recorded_split_is_kept_and_changed_settings_are_refused(blobs, tmp_path):
    from ccfv.preprocess.splits import SplitError

    dataset = open_dataset(blobs, tmp_path / "d")
    first = dataset_split(dataset, tmp_path, 0.25, seed=1)
    assert len(first["test"]) == 2 and dataset_split(dataset, tmp_path, 0.25, seed=1) == first
    with pytest.raises(SplitError, match="split.seed is 2 in the config but 1 in the record"):
        dataset_split(dataset, tmp_path, 0.25, seed=2)


# --- the released models' conventions, undone (shared material) ----------------------------------------------

@pytest.mark.parametrize("which", ["meshnet", "hippodeep"])
def test_the_released_models_preprocessing_is_undone_exactly(which, task04_dir, brainchop_dir, hippodeep_weights,
                                                             tmp_path):
    """MeshNet's LIA and hippodeep's RAS reorientation on a real Task04 case: the preprocessed label, restored,
    is the label file (a test of restore(), no network runs)."""
    from ccfv.models import load_model

    path = brainchop_dir / "model18cls" if which == "meshnet" else hippodeep_weights
    model = load_model(which, path)
    image = task04_dir / "imagesTr" / "hippocampus_001.nii.gz"
    label = task04_dir / "labelsTr" / "hippocampus_001.nii.gz"
    _, seg = model.preprocess([image], label)
    restored = model.preprocess.restore(seg, [image], label)
    assert np.array_equal(restored, np.asarray(nib.load(str(label)).dataobj))
    if which == "meshnet":  # LIA from RAS: a real permutation and flip, not the identity
        assert seg.shape != restored.shape


def test_a_given_split_is_used_as_it_is(blobs, tmp_path):
    """--split: the workflow's split file (ccfv.preprocess.splits) instead of a new one."""
    from ccfv.preprocess.splits import make_split, write_split

    dataset = open_dataset(blobs, tmp_path / "d")
    split = make_split(list(dataset.cases), 0.5, seed=9)
    write_split(split, tmp_path / "task.json")
    run = finetune_models(blobs, [tiny_model()], tmp_path / "out", split_file=tmp_path / "task.json", device="cpu",
                          protocol=FinetuneProtocol(iterations=2), log=lambda message: None)
    assert run.meta["split"]["test"] == split["test"] and len(split["test"]) == 4
    assert sorted(run.rows[0]["per_case"]) == split["test"]
    assert json.loads((tmp_path / "out" / "split.json").read_text())["train"] == split["train"]
    assert not (tmp_path / "out" / "split.record.json").exists()


def test_a_bank_unetr_goes_through_the_same_protocol(blobs, tmp_path):
    """The workflow's other architecture: a randomly initialised bank UNETR (MONAI's, patch 16^3) on plans of
    the target, its head ``out`` replaced, scored on the label files."""
    from ccfv.bank.training import random_model
    from ccfv.models.bank import load as load_bank
    from ccfv.preprocess.nnunet import plan_and_preprocess

    from ..conftest import TINY_NETWORK

    preprocessed = plan_and_preprocess(blobs, tmp_path / "preprocessed", {**TINY_NETWORK, "patch_size": [16, 16, 16]})
    unetr = random_model(preprocessed, "unetr-random", tmp_path / "bank" / "unetr-random", seed=0, network="unetr",
                         network_options={"hidden_size": 24, "mlp_dim": 48, "num_heads": 3, "feature_size": 4})
    dataset = open_dataset(blobs, tmp_path / "d")
    (tmp_path / "w").mkdir()  # nnU-Net's plans for the target, as Preprocessor would plan them: planned above
    shutil.copy(preprocessed / "nnUNetPlans.json", tmp_path / "w" / "dataset_plans.json")
    row = finetune_model(load_bank("unetr", unetr), Preprocessor(dataset, tmp_path / "w"),
                         dataset_split(dataset, tmp_path), FinetuneProtocol(iterations=2), 0, tmp_path / "ck", CPU)
    assert row["architecture"] == "unetr" and row["head"] == "out" and row["space"] == "original"
    assert row["head_parameters"] == ["out.conv.conv.weight", "out.conv.conv.bias"]
    assert row["patch_size"] == [16, 16, 16] and len(row["losses"]) == 2 and 0 <= row["mean_dice"] <= 1
