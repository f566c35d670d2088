"""``ccfv rank`` on real nnU-Net v2 model folders: two tiny models trained by nnU-Net's own trainer on two
synthetic tasks, ranked on a third; unsafe and unusable models refused while the others are ranked."""
from __future__ import annotations

import csv
import io
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console
from scipy import stats

from ccfv.cli import main
from ccfv.features.settings import default_layer_ratios
from ccfv.models import model_names
from ccfv.rank.agreement import (
    agreement_per_metric,
    baseline_agreement,
    dice_health,
    methods_ranking_stability,
    read_dice,
)
from ccfv.rank.outputs import Ranking, agreement_csv, print_ranking, ranking_json
from ccfv.rank.run import metric_definitions

from ..conftest import TINY_NETWORK

#: The two source tasks: Liver is prepared here, Spleen is conftest's session dataset (already preprocessed).
SOURCES = ("Task91_SynthLiver", "Task94_SynthSpleen")
TARGET = "Task93_SynthPancreas"


def _train_nnunet_model(preprocessed: Path, results: Path, seed: int) -> Path:
    """A real nnU-Net v2 trained model folder (nnUNetTrainer, a few iterations on the CPU)."""
    from ccfv.preprocess.paths import nnunet_environment

    plans = json.loads((preprocessed / "ccfvPlans.json").read_text())
    dataset_json = json.loads((preprocessed / "dataset.json").read_text())
    plans["continue_training"] = False  # what nnUNetv2_train passes; the trainer pops it
    with nnunet_environment(preprocessed=preprocessed.parent, results=results, n_proc=1, n_proc_da=0):
        from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

        torch.manual_seed(seed)
        trainer = nnUNetTrainer(plans=plans, configuration="3d_fullres", fold=0, dataset_json=dataset_json,
                                device=torch.device("cpu"))
        trainer.num_epochs = 1
        trainer.num_iterations_per_epoch = 4
        trainer.num_val_iterations_per_epoch = 1
        trainer.run_training()
    return Path(trainer.output_folder_base)


@pytest.fixture(scope="module")
def bank(tmp_path_factory, tiny_dataset):
    """Two nnU-Net model folders, a ccfv bank model, and the target task in MSD layout."""
    from ccfv.bank.training import random_model
    from ccfv.data.synthetic import write_task
    from ccfv.preprocess.nnunet import convert_msd_task, plan_and_preprocess

    root = tmp_path_factory.mktemp("rank")
    liver = write_task(SOURCES[0], root / "msd", n_cases=5, seed=0, shape=(32, 32, 16))
    liver = plan_and_preprocess(convert_msd_task(liver, root / "raw"), root / "preprocessed", TINY_NETWORK)
    # nnU-Net's trainer writes its 5-fold splits_final.json into the preprocessed folder: train on a copy of
    # the shared session dataset, not on it.
    spleen = root / "preprocessed" / tiny_dataset.preprocessed.name
    shutil.copytree(tiny_dataset.preprocessed, spleen)
    (spleen / "splits_final.json").unlink(missing_ok=True)
    models = {task: _train_nnunet_model(folder, root / "results", seed)
              for seed, (task, folder) in enumerate(zip(SOURCES, (liver, spleen)))}
    target = write_task(TARGET, root / "target", n_cases=4, seed=7, shape=(32, 32, 16))
    # a ccfv bank model (a randomly initialised member) on the first source's shared plans
    ccfv_model = random_model(liver, "unet-random", root / "bank" / "unet-random", seed=0)
    return {"root": root, "models": models, "target": target, "ccfv": ccfv_model}


def _rank_in_subprocess(args: list[str]) -> subprocess.CompletedProcess:
    """``ccfv rank`` in a fresh interpreter where Snakemake cannot be imported (a plain package install)."""
    code = ("import sys; sys.modules['snakemake'] = None; from ccfv.cli import main; "
            f"sys.exit(main({args!r}))")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)


def test_nnunet_model_folders_are_real(bank):
    for folder in bank["models"].values():
        assert (folder / "plans.json").is_file() and (folder / "dataset.json").is_file()
        assert (folder / "fold_0" / "checkpoint_final.pth").is_file()


def test_rank_two_nnunet_models_and_a_bank_model_on_a_third_task(bank, tmp_path):
    out = tmp_path / "ranking"
    liver, spleen = (bank["models"][t] for t in SOURCES)
    dice = tmp_path / "dice.csv"
    dice.write_text("model,dice\nliver,0.71\nspleen,0.55\nrandom,0.40\n")
    result = _rank_in_subprocess(["rank", "--data", str(bank["target"]), "--model", f"liver={liver}",
                                  "--model", f"spleen={spleen}",
                                  "--model", f"random={bank['ccfv']}", "--metric", "ccfv", "--metric", "logme",
                                  "--metric", "leep", "--out", str(out), "--dice", str(dice), "--device", "cpu",
                                  "--threads", "1"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Models ranked on Dataset093_SynthPancreas by ccfv" in result.stdout
    assert "Agreement with the known Dice" in result.stdout
    # stderr is a pipe here, as in a job's log file: messages without progress bars' redraws
    assert "\r" not in result.stderr and "\x1b[" not in result.stderr, result.stderr[-500:]
    assert "ccfv rank: 3 model(s)" in result.stderr

    rows = list(csv.DictReader((out / "ranking.csv").open()))
    assert sorted(r["model"] for r in rows) == ["liver", "random", "spleen"]
    assert {r["kind"] for r in rows} == {"nnunet", "ccfv"}
    ccfv_scores = [float(r["ccfv"]) for r in rows]
    assert ccfv_scores == sorted(ccfv_scores, reverse=True)  # ordered by the first metric
    assert [int(r["rank"]) for r in rows] == [1, 2, 3]

    report = json.loads((out / "ranking.json").read_text())
    assert report["ranked_by"] == "ccfv" and report["failed"] == []
    assert len(report["cases"]) == 4 and report["classes"] == [1, 2]
    for model in report["models"]:
        assert set(model["scores"]) == {"ccfv", "logme", "leep"}
        assert all(np.isfinite(v) for v in model["scores"].values())
        assert (out / model["features"]).is_file()
    # the correlations, recomputed from the written CSV
    known = {"liver": 0.71, "spleen": 0.55, "random": 0.40}
    for metric in ("ccfv", "logme", "leep"):
        scores = [float(r[metric]) for r in rows]
        truth = [known[r["model"]] for r in rows]
        expected = stats.weightedtau(scores, truth).statistic
        assert report["correlations"][metric]["tau"] == pytest.approx(expected)
        assert report["correlations"][metric]["pearson"] == pytest.approx(stats.pearsonr(scores, truth)[0])
    # the known Dice passes the ground-truth health check (0.40 to 0.71, no ties, none near zero)
    assert report["ground_truth"]["can_rank"] is True and report["ground_truth"]["reasons"] == []
    assert report["ground_truth"]["dice_median"] == pytest.approx(0.55)
    assert report["ground_truth"]["rule"]["zero_dice"] == 0.05
    assert "The known Dice can rank the models" in result.stdout
    # larger model first: the weights of each model, heads excluded; the bank model's as counted from its file
    from ccfv.bank.model_card import parameter_count

    params = {r["model"]: int(r["parameters"]) for r in rows}
    assert params["random"] == parameter_count(bank["ccfv"]) and all(v > 0 for v in params.values())
    assert report["baselines"]["larger_model_first"]["n"] == 3 and "random" in report["baselines"]
    agreement = list(csv.DictReader((out / "agreement.csv").open()))
    assert [a["method"] for a in agreement] == ["ccfv", "logme", "leep", "larger_model_first", "random"]
    assert {a["ground_truth"] for a in agreement} == {"ok"}
    for metric in ("ccfv", "logme", "leep"):  # three models: any top 3 holds the best one
        assert report["correlations"][metric]["top3"] == 1.0
        scores = [float(r[metric]) for r in rows]
        assert report["correlations"][metric]["kendall"] == pytest.approx(stats.kendalltau(scores, truth).statistic)
    assert "Rel@1" in result.stdout and "top-3 hit" in result.stdout
    assert (out / "ranking.png").stat().st_size > 1000
    assert not list(out.glob(".work-*"))  # the preprocessed copies are gone


def test_pickle_payload_checkpoint_is_refused_and_nothing_runs(bank, tmp_path):
    """A model folder whose checkpoint would run code when unpickled: refused by name, the marker file
    the payload would create never appears, and the other model is still ranked (exit status 1)."""
    evil = tmp_path / "evil"
    shutil.copytree(bank["models"][SOURCES[0]], evil)
    marker = tmp_path / "payload-ran"

    class Payload:
        def __reduce__(self):
            import os

            return os.mkdir, (str(marker),)

    checkpoint = evil / "fold_0" / "checkpoint_final.pth"
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    state["logging"] = Payload()
    torch.save(state, checkpoint)

    out = tmp_path / "out"
    status = main(["rank", "--data", str(bank["target"]), "--model", f"evil={evil}",
                   "--model", f"spleen={bank['models'][SOURCES[1]]}", "--metric", "logme", "--out", str(out),
                   "--device", "cpu"])
    assert status == 1
    assert not marker.exists()
    report = json.loads((out / "ranking.json").read_text())
    assert [m["model"] for m in report["models"]] == ["spleen"]
    [failure] = report["failed"]
    assert failure["model"] == "evil"
    assert str(checkpoint) in failure["error"] and "refused" in failure["error"]
    assert "mkdir" in failure["error"]


def test_unusable_models_are_named_and_the_rest_ranked(bank, tmp_path, capsys):
    """A plans file naming code to import, a folder without checkpoints, a bank model with another number of
    input channels: each named with its reason; the good model is ranked."""
    from ccfv.bank import networks
    from ccfv.bank.model_card import save_bank_model

    good = bank["models"][SOURCES[0]]
    importer = tmp_path / "importer"
    shutil.copytree(good, importer)
    plans = json.loads((importer / "plans.json").read_text())
    plans["configurations"]["3d_fullres"]["architecture"]["network_class_name"] = "os.system"
    (importer / "plans.json").write_text(json.dumps(plans))
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "plans.json").write_text((good / "plans.json").read_text())
    (empty / "dataset.json").write_text((good / "dataset.json").read_text())
    card = json.loads((bank["ccfv"] / "model.json").read_text())
    two = networks.build("unet", card["architecture"], 2, card["num_classes"])
    two_channels = save_bank_model(two, {**card, "model_id": "two", "num_input_channels": 2, "modalities": ["CT", "PET"],
                                         "channel_names": {"0": "CT", "1": "PET"}}, tmp_path / "two")

    out = tmp_path / "out"
    models = {"good": good, "importer": importer, "empty": empty, "two": two_channels, "gone": tmp_path / "nope"}
    model_args = [a for n, p in models.items() for a in ("--model", f"{n}={p}")]
    status = main(["rank", "--data", str(bank["target"]), *model_args,
                   "--metric", "logme", "--out", str(out), "--device", "cpu"])
    assert status == 1
    report = json.loads((out / "ranking.json").read_text())
    assert [m["model"] for m in report["models"]] == ["good"]
    errors = {f["model"]: f["error"] for f in report["failed"]}
    assert "network class 'os.system' is not one ccfv builds" in errors["importer"]
    assert str(importer / "plans.json") in errors["importer"]
    assert "no checkpoint_final.pth or checkpoint_best.pth" in errors["empty"]
    assert "expects 2 input channel(s)" in errors["two"] and "the dataset has 1" in errors["two"]
    assert "no such file or folder" in errors["gone"]
    printed = capsys.readouterr().out
    assert "not ranked" in printed and "importer" in printed


def test_a_broken_dataset_is_an_error_and_leaves_no_output(bank, tmp_path, capsys):
    broken = tmp_path / "Task95_Broken"
    shutil.copytree(bank["target"], broken)
    (broken / "dataset.json").write_text('{"name": "x", "training": [')
    out = tmp_path / "out"
    status = main(["rank", "--data", str(broken), "--model", str(bank["models"][SOURCES[0]]), "--out", str(out)])
    assert status == 2
    assert f"{broken / 'dataset.json'}: not valid JSON" in capsys.readouterr().err
    assert not out.exists()


def _msd_task(tmp_path: Path, keep: int | None = None, images_ts: bool = True) -> Path:
    """The rank target in MSD layout (4 cases); ``keep``: only that many training cases left; ``images_ts=False``:
    no imagesTs/ (and an empty test list)."""
    from ccfv.data.synthetic import write_task

    task = write_task(TARGET, tmp_path / "msd", n_cases=4, seed=7, shape=(32, 32, 16))
    spec = json.loads((task / "dataset.json").read_text())
    if keep is not None:
        for entry in spec["training"][keep:]:
            (task / entry["image"]).unlink()
            (task / entry["label"]).unlink()
        spec["training"], spec["numTraining"] = spec["training"][:keep], keep
    if not images_ts:
        shutil.rmtree(task / "imagesTs")
        spec["test"], spec["numTest"] = [], 0
    (task / "dataset.json").write_text(json.dumps(spec))
    return task


def test_a_dataset_without_imagesTs_is_opened(tmp_path):
    """User-made tasks and copies without MSD's unlabelled test images (the real Task04_Hippocampus) have no
    imagesTs/; ccfv rank needs only the labelled cases."""
    from ccfv.preprocess.dataset import open_dataset

    task = _msd_task(tmp_path, images_ts=False)
    dataset = open_dataset(task, tmp_path / "work")
    assert len(dataset.cases) == 4 and dataset.class_ids == [1, 2] and dataset.modalities == ["CT"]
    assert not (task / "imagesTs").exists()


@pytest.mark.parametrize("keep, max_cases, message", [
    (1, None, "{task}: 1 labelled case(s); ranking needs at least 2"),
    (None, 1, "--max-cases 1: ranking needs at least 2 labelled cases"),
])
def test_fewer_than_two_labelled_cases_is_refused_before_any_work(keep, max_cases, message, tmp_path, capsys,
                                                                   monkeypatch):
    """Class consistency compares cases: with one case every model would be sampled and then fail. The error
    comes first, exit status 2, no model loaded and nothing written."""
    import ccfv.rank.run

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(ccfv.rank.run, "load_model", no_model)
    task = _msd_task(tmp_path, keep=keep)
    out = tmp_path / "out"
    args = ["rank", "--data", str(task), "--model", str(tmp_path / "some-model"), "--out", str(out)]
    status = main(args + ([] if max_cases is None else ["--max-cases", str(max_cases)]))
    assert status == 2
    err = capsys.readouterr().err
    assert message.format(task=task) in err and "class consistency compares each class across cases" in err
    assert not out.exists()


def test_a_bank_model_pretrained_on_ct_is_warned_about_on_mr_data(tmp_path, monkeypatch):
    """The bank's card records its source task's channels: ranked on MR data, a CT-pretrained bank model gets
    the modality warning that nnU-Net folders and bundles get (said before its features are sampled; the
    sampling itself, minutes of nnU-Net planning here, is replaced by a failure that the run reports)."""
    from ccfv.features.settings import SamplingSettings
    from ccfv.rank.run import rank_models

    from ..models.test_models import _bank_model

    def stop(*args, **kwargs):
        raise RuntimeError("sampling skipped by the test")

    monkeypatch.setattr(SamplingSettings, "sample", stop)
    model = _bank_model(tmp_path, "Task09_Spleen", {"0": "CT"})
    task = _msd_task(tmp_path)
    spec = json.loads((task / "dataset.json").read_text())
    spec["modality"] = {"0": "MRI"}
    (task / "dataset.json").write_text(json.dumps(spec))
    messages = []
    ranking = rank_models(task, [f"ct={model}"], tmp_path / "out", metrics=["logme"], device="cpu", max_cases=2,
                          progress=False, log=messages.append)
    assert ("ccfv rank: model 'ct': modality mismatch (channel 0: model CT, target MRI): the model's intensity "
            "normalisation does not fit the target's intensities, so its features (and scores) mean little") in messages
    assert [f["error"] for f in ranking.failed] == [f"{model}: sampling skipped by the test"]


def test_dice_file_errors_name_the_file_and_line(tmp_path):
    bad = tmp_path / "dice.csv"
    bad.write_text("model,dice\na,0.5\nb,high\n")
    with pytest.raises(ValueError, match=r"dice.csv: line 3: dice 'high' is not a number"):
        read_dice(bad)
    bad.write_text("name,score\na,0.5\n")
    with pytest.raises(ValueError, match="must name the columns 'model' and 'dice'"):
        read_dice(bad)
    bad.write_text("model,dice\na,0.5\na,0.6\n")
    with pytest.raises(ValueError, match="line 3: model 'a' appears twice"):
        read_dice(bad)


def test_model_names_metrics_and_layer_ratios(tmp_path):
    a = tmp_path / "Dataset001_A" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    b = tmp_path / "Dataset002_B" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    a.mkdir(parents=True)
    b.mkdir(parents=True)
    names = [n for n, _ in model_names([str(a), str(b), f"mine={a}"])]
    assert names == ["Dataset001_A/nnUNetTrainer__nnUNetPlans__3d_fullres",
                     "Dataset002_B/nnUNetTrainer__nnUNetPlans__3d_fullres", "mine"]
    assert list(metric_definitions(None)) == ["logme", "ccfv", "leep", "gbc", "transrate"]  # LogME first: docs/rank.md
    # each with the released pipelines' preprocessing (the functions' defaults) and GBC's segmentation
    # setting (a diagonal Gaussian, as the workflow's configs), or the preprocessing switched off
    assert metric_definitions(["transrate", "gbc"]) == {
        "transrate": {"method": "transrate"}, "gbc": {"method": "gbc", "gaussian": "diagonal"}}
    assert metric_definitions(["transrate", "gbc", "logme"], features_as_given=True) == {
        "transrate": {"method": "transrate", "row_normalise": False},
        "gbc": {"method": "gbc", "gaussian": "diagonal", "pca_components": None},
        "logme": {"method": "logme"}}
    assert list(metric_definitions(["logme", "all"]))[:2] == ["logme", "ccfv"]
    with pytest.raises(ValueError, match="unknown metric"):
        metric_definitions(["dice"])
    assert default_layer_ratios(3) == [0.25, 0.5, 1.0]
    assert default_layer_ratios(4) == [0.125, 0.25, 0.5, 1.0]


def _ranking(dice: list[float | None]) -> Ranking:
    rows = [{"model": f"m{i}", "architecture": "unet", "scores": {"ccfv": float(i), "logme": float(-i)},
             "ranks": {"ccfv": len(dice) - i, "logme": i + 1}, "dice": d} for i, d in enumerate(dice)]
    return Ranking(rows=rows, failed=[], metrics=["ccfv", "logme"], correlations=agreement_per_metric(rows, ["ccfv", "logme"]),
                   meta={"dataset": "Dataset093_X", "cases": ["a", "b"]}, ground_truth=dice_health(rows, "Dataset093_X"))


@pytest.mark.parametrize(
    ("dice", "can_rank", "reason"),
    [
        ([0.0, 0.0, 0.01, 0.0, 0.35], False, "4 of 5 models fine-tune to a mean Dice below 0.05"),
        ([0.70, 0.705, 0.698, 0.40, 0.2], False, "3 of 5 models are tied at the top"),
        ([0.30, 0.45, 0.55, 0.62, 0.80], True, None),
        ([0.30, None, 0.80], False, "only 2 model(s)"),
    ],
)
def test_rank_dice_gets_the_ground_truth_check(dice, can_rank, reason, tmp_path):
    ranking = _ranking(dice)
    health = ranking.ground_truth
    assert health["can_rank"] is can_rank
    assert health["n_models"] == sum(d is not None for d in dice)
    assert health["seed_sd"] is None and health["spread_ratio"] is None  # one value per model: JSON null
    if reason:
        assert health["reasons"][0].startswith(reason)
    assert json.loads(json.dumps(ranking_json(ranking)))["ground_truth"]["can_rank"] is can_rank
    console = Console(file=io.StringIO(), width=200, color_system=None)
    print_ranking(ranking, tmp_path, console)
    text = console.file.getvalue()
    if can_rank:
        assert "The known Dice can rank the models (Dice 0.3000 to 0.8000" in text
    else:
        assert "The known Dice cannot rank the models: " + reason in text
        assert "measures noise, not the metrics" in text


# ---------------------------------------------------------------------------------------------------------
# MONAI bundles, torch modules and what users hit (issue 15)
# ---------------------------------------------------------------------------------------------------------


def test_rank_monai_bundles_beside_an_nnunet_folder_and_a_bank_model(bank, tmp_path):
    """Three tiny MONAI networks saved as zoo-like bundles ($ in imports, device, network, evaluator) ranked
    with an nnU-Net folder and a bank model; a bundle whose network_def carries a $ expression that would
    create a marker file is refused by name and nothing of it runs; with --trust-bundle-code it is built."""
    from ..models.test_bundle import NETWORKS, write_bundle

    bundles = {kind.lower(): write_bundle(tmp_path / kind, *NETWORKS[kind], seed=i)
               for i, kind in enumerate(("UNet", "SegResNet", "SwinUNETR"))}
    marker = tmp_path / "payload-ran"
    network_def, roi = NETWORKS["UNet"]
    evil = write_bundle(tmp_path / "evil", dict(network_def, out_channels=f"$open({str(marker)!r}, 'w').close() or 3"),
                        roi, weights_of=network_def)
    out = tmp_path / "ranking"
    models = {**bundles, "liver": bank["models"][SOURCES[0]], "random": bank["ccfv"], "evil": evil}
    model_args = [a for n, p in models.items() for a in ("--model", f"{n}={p}")]
    result = _rank_in_subprocess(["rank", "--data", str(bank["target"]), *model_args, "--metric", "ccfv",
                                  "--metric", "logme", "--out", str(out), "--device", "cpu", "--threads", "1"])
    assert result.returncode == 1, result.stderr[-3000:]
    assert not marker.exists()
    report = json.loads((out / "ranking.json").read_text())
    ranked = {m["model"]: m for m in report["models"]}
    assert set(ranked) == {"unet", "segresnet", "swinunetr", "liver", "random"}
    assert {ranked[k]["kind"] for k in bundles} == {"monai-bundle"}
    assert ranked["swinunetr"]["architecture"] == "SwinUNETR" and ranked["swinunetr"]["patch_size"] == [64, 64, 64]
    assert ranked["segresnet"]["layers"] == ["up_layers.0", "up_layers.1"]
    for model in ranked.values():
        assert all(np.isfinite(v) for v in model["scores"].values()), model["model"]
        assert model["warnings"] == []  # the bundles' metadata say CT, as the target is
    [failure] = report["failed"]
    assert failure["model"] == "evil" and "'network_def::out_channels' needs Python code" in failure["error"]
    assert "not ranked" in result.stdout and "Models ranked on Dataset093_SynthPancreas" in result.stdout
    assert "Warning" not in result.stdout  # the terminal shows the table, not library warnings

    trusted = tmp_path / "trusted"
    status = main(["rank", "--data", str(bank["target"]), "--model", f"evil={evil}", "--metric", "logme",
                   "--out", str(trusted), "--device", "cpu", "--trust-bundle-code", "--max-cases", "2"])
    assert status == 0 and marker.exists()
    assert [m["model"] for m in json.loads((trusted / "ranking.json").read_text())["models"]] == ["evil"]


def test_python_entry_point_ranks_plain_torch_modules(bank, tmp_path):
    """ccfv.rank_models with two torch.nn.Modules, their layers, a preprocessing callable and a patch size;
    the same network given as a bundle and as a module gets the same scores (one ranking machinery)."""
    from monai.networks.nets import SegResNet

    import ccfv
    from ccfv.models.bundle import load as load_bundle

    from ..models.test_bundle import NETWORKS, write_bundle

    network_def, roi = NETWORKS["UNet"]
    bundle = write_bundle(tmp_path / "unet", network_def, roi, seed=3)
    as_bundle = load_bundle("unused", bundle)
    torch.manual_seed(5)
    segresnet = SegResNet(spatial_dims=3, in_channels=1, out_channels=2, init_filters=8, blocks_down=(1, 1, 1),
                          blocks_up=(1, 1))
    models = [
        ccfv.TorchModel(name="unet-module", network=as_bundle.network, layers=as_bundle.layers,
                        preprocess=as_bundle.preprocess, patch_size=roi),
        ccfv.TorchModel(name="segresnet-module", network=segresnet, layers=["up_layers.0", "up_layers.1"],
                        preprocess=as_bundle.preprocess, patch_size=[16, 16, 16], modalities=["MR"]),
        str(bundle),
    ]
    ranking = ccfv.rank_models(bank["target"], models, tmp_path / "out", metrics=["ccfv", "logme"], device="cpu",
                               max_cases=2, progress=False, log=lambda message: None)
    assert ranking.failed == [] and ranking.exit_status == 0
    rows = {r["model"]: r for r in ranking.rows}
    assert set(rows) == {"unet-module", "segresnet-module", "unet"}
    assert rows["unet-module"]["scores"] == rows["unet"]["scores"]
    assert rows["segresnet-module"]["kind"] == "torch"
    assert any("modality mismatch (channel 0: model MR, target CT)" in w for w in rows["segresnet-module"]["warnings"])
    report = json.loads((tmp_path / "out" / "ranking.json").read_text())
    assert [r["model"] for r in report["models"]] == [r["model"] for r in ranking.rows]
    with pytest.raises(ValueError, match="model names must be unique"):
        ccfv.rank_models(bank["target"], [models[0], models[0]], tmp_path / "again", device="cpu")


def test_modality_and_channel_order_warnings(bank, tmp_path):
    """An nnU-Net model trained on MR ranked on CT: ranked, warned by name in the table and ranking.json."""
    from ccfv.rank.modality import modality_warnings

    mr = tmp_path / "mr"
    shutil.copytree(bank["models"][SOURCES[0]], mr)
    dataset_json = json.loads((mr / "dataset.json").read_text())
    dataset_json["channel_names"] = {"0": "MRI"}
    (mr / "dataset.json").write_text(json.dumps(dataset_json))
    out = tmp_path / "out"
    result = _rank_in_subprocess(["rank", "--data", str(bank["target"]), "--model", f"mr={mr}", "--metric", "logme",
                                  "--out", str(out), "--device", "cpu", "--max-cases", "2"])
    assert result.returncode == 0, result.stderr[-3000:]
    [row] = json.loads((out / "ranking.json").read_text())["models"]
    assert row["modalities"] == ["MRI"]
    assert row["warnings"] == ["modality mismatch (channel 0: model MRI, target CT): the model's intensity "
                               "normalisation does not fit the target's intensities, so its features (and scores) "
                               "mean little"]
    assert "modality mismatch" in result.stdout and "warning" in result.stdout
    assert "modality mismatch" in next(csv.DictReader((out / "ranking.csv").open()))["warnings"]

    assert modality_warnings(["T2", "ADC"], ["ADC", "T2"])[0].startswith("channels in another order")
    assert modality_warnings(["T2", "ADC"], ["T2", "ADC"]) == []
    assert modality_warnings(["MR"], ["T1"]) == []  # a bundle's "MR" covers every MR sequence
    assert modality_warnings(["CT"], ["ct"]) == []
    assert modality_warnings(None, ["CT"]) == []


def test_older_nnunet_plans_are_converted_or_refused_by_name(bank, tmp_path):
    """Plans in nnU-Net's older format (UNet_class_name, UNet_base_num_features): a PlainConvUNet is
    converted as nnU-Net does and its weights fit; STU-Net's class is refused naming the key and the file."""
    from ccfv.models import load_model

    source = bank["models"][SOURCES[0]]
    new = load_model("new", source)
    old = tmp_path / "old"
    shutil.copytree(source, old)
    plans = json.loads((old / "plans.json").read_text())
    conf = plans["configurations"]["3d_fullres"]
    arch = conf.pop("architecture")["arch_kwargs"]
    conf.update(UNet_class_name="PlainConvUNet", UNet_base_num_features=arch["features_per_stage"][0],
                unet_max_num_features=arch["features_per_stage"][-1],
                n_conv_per_stage_encoder=arch["n_conv_per_stage"],
                n_conv_per_stage_decoder=arch["n_conv_per_stage_decoder"],
                num_pool_per_axis=[len(arch["strides"]) - 1] * 3, pool_op_kernel_sizes=arch["strides"],
                conv_kernel_sizes=arch["kernel_sizes"])
    (old / "plans.json").write_text(json.dumps(plans))
    converted = load_model("old", old)
    assert converted.layers == new.layers and converted.stages == new.stages
    for a, b in zip(converted.network.state_dict().values(), new.network.state_dict().values()):
        assert torch.equal(a, b)

    conf["UNet_class_name"] = "STUNet"
    (old / "plans.json").write_text(json.dumps(plans))
    with pytest.raises(Exception, match=r"plans.json: plans in nnU-Net's older format with UNet_class_name 'STUNet'"):
        load_model("stunet", old)


def test_a_dataset_nested_in_a_folder_of_its_name_is_pointed_at(bank, tmp_path, capsys):
    outer = tmp_path / bank["target"].name
    shutil.copytree(bank["target"], outer / bank["target"].name)
    out = tmp_path / "out"
    status = main(["rank", "--data", str(outer), "--model", str(bank["ccfv"]), "--out", str(out)])
    assert status == 2
    err = capsys.readouterr().err
    assert f"{outer / 'dataset.json'}: missing; the dataset is one level down: " \
           f"{outer / bank['target'].name / 'dataset.json'}" in err
    assert f"pass --data {outer / bank['target'].name}" in err
    assert not out.exists()


def test_matplotlib_warnings_stay_out_of_the_terminal(tmp_path):
    """nnU-Net's long default model names make matplotlib warn that the layout does not fit; the figure is
    written and no warning escapes (the terminal output is the table)."""
    import warnings

    from ccfv.rank.outputs import plot_ranking

    names = ["Dataset003_Liver/nnUNetTrainer__nnUNetPlans__3d_fullres" * 4, "b", "c"]
    rows = [{"model": n, "architecture": "unet", "scores": {"ccfv": float(i)}, "ranks": {"ccfv": 3 - i}, "dice": None}
            for i, n in enumerate(names)]
    ranking = Ranking(rows=rows, failed=[], metrics=["ccfv"], correlations=None, meta={"dataset": "D", "cases": [1]})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning would fail the test
        path = plot_ranking(ranking, tmp_path / "ranking.png")
    assert path.stat().st_size > 1000


# ---------------------------------------------------------------------------------------------------------
# Agreement with --dice beyond weighted tau: Kendall's tau-b, Rel@1, top-3 hit, intervals, larger model
# first, leave-one-out stability (issue 14)
# ---------------------------------------------------------------------------------------------------------


def test_agreement_with_dice_against_the_slow_references(tmp_path):
    from ..results.test_tables_and_statistics import (
        slow_kendall_tau_b,
        slow_leave_one_out,
        slow_relative_top1,
        slow_top_k_hit,
    )

    dice = [0.30, 0.62, 0.45, 0.62, 0.80, None, 0.51]
    ccfv = [0.1, 0.9, 0.9, 0.3, 0.2, 5.0, 0.4]  # two tied for first, one model without a Dice
    logme = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
    params = [10, 10, 50, 50, 50, 99, 10]
    rows = [{"model": f"m{i}", "architecture": "unet", "scores": {"ccfv": c, "logme": lg}, "dice": d,
             "parameters": n, "ranks": {"ccfv": 1, "logme": 1}, "path": f"m{i}", "kind": "ccfv", "sha256": None}
            for i, (c, lg, d, n) in enumerate(zip(ccfv, logme, dice, params))]
    known = [i for i, d in enumerate(dice) if d is not None]
    truth = [dice[i] for i in known]
    corr = agreement_per_metric(rows, ["ccfv", "logme"])
    baselines = baseline_agreement(rows)
    for name, values, entry in (("ccfv", ccfv, corr["ccfv"]), ("logme", logme, corr["logme"]),
                                ("larger_model_first", params, baselines["larger_model_first"])):
        x = [float(values[i]) for i in known]
        assert entry["n"] == 6
        assert entry["rel_at_1"] == pytest.approx(slow_relative_top1(x, truth)), name
        assert entry["top3"] == pytest.approx(slow_top_k_hit(x, truth)), name
        assert entry["kendall"] == pytest.approx(slow_kendall_tau_b(x, truth)), name
        assert entry["tau"] == pytest.approx(stats.weightedtau(x, truth).statistic), name
        loo = slow_leave_one_out(x, truth)
        assert entry["loo_tau_min"] == pytest.approx(min(loo)) and entry["loo_tau_max"] == pytest.approx(max(loo))
        changes = [abs(v - entry["tau"]) for v in loo]
        assert entry["loo_max_change"] == pytest.approx(max(changes))
        assert entry["most_influential"] == f"m{known[changes.index(max(changes))]}"
        for measure in ("tau", "pearson", "kendall", "rel_at_1", "top3"):
            low, high = entry[f"{measure}_ci"]
            assert -1.0 <= low <= high <= 1.0, (name, measure)
    # ccfv: m1 (0.62) and m2 (0.45) tie for first; the best (m4, 0.80) is 5th: never in the top 3
    assert corr["ccfv"]["rel_at_1"] == pytest.approx((0.62 + 0.45) / 2 / 0.80) and corr["ccfv"]["top3"] == 0.0
    random = baselines["random"]
    assert random["rel_at_1"] == pytest.approx(np.mean(truth) / 0.80)
    assert random["top3"] == pytest.approx(0.5) and random["tau"] == 0.0 and random["tau_ci"] is None
    # the methods' order by weighted tau, all models vs one left out: the slow way
    methods = {"ccfv": ccfv, "logme": logme, "larger_model_first": params}
    full = {m: stats.weightedtau([float(v[i]) for i in known], truth).statistic for m, v in methods.items()}
    per_left_out = []
    for j in range(len(known)):
        loo = {m: slow_leave_one_out([float(v[i]) for i in known], truth)[j] for m, v in methods.items()}
        per_left_out.append(slow_kendall_tau_b([full[m] for m in methods], [loo[m] for m in methods]))
    stability = methods_ranking_stability(corr, baselines, rows)
    assert stability == pytest.approx(np.mean([v for v in per_left_out if not math.isnan(v)]))
    # outputs: agreement.csv with the ground-truth verdict, ranking.json, the printed summary
    ranking = Ranking(rows=rows, failed=[], metrics=["ccfv", "logme"], correlations=corr,
                      meta={"dataset": "Dataset093_X", "cases": ["a"]}, ground_truth=dice_health(rows, "Dataset093_X"),
                      baselines=baselines, method_ranking_stability=stability)
    table = list(csv.DictReader(io.StringIO(agreement_csv(ranking))))
    assert [t["method"] for t in table] == ["ccfv", "logme", "larger_model_first", "random"]
    assert float(table[0]["rel_at_1"]) == pytest.approx(corr["ccfv"]["rel_at_1"])
    assert float(table[0]["top3_low"]) == corr["ccfv"]["top3_ci"][0] and table[3]["tau_low"] == ""
    assert {t["ground_truth"] for t in table} == {"ok" if ranking.ground_truth["can_rank"] else "cannot rank"}
    written = json.loads(json.dumps(ranking_json(ranking)))
    assert written["baselines"]["larger_model_first"]["top3"] == baselines["larger_model_first"]["top3"]
    assert written["method_ranking_stability"] == pytest.approx(stability)
    console = Console(file=io.StringIO(), width=250, color_system=None)
    print_ranking(ranking, tmp_path, console)
    text = console.file.getvalue()
    assert "Rel@1" in text and "Larger model first" in text and "Random ranking (expected)" in text
    assert f"mean Kendall's tau-b of {stability:.2f}" in text


def test_agreement_flags_a_dice_that_cannot_rank():
    rows = [{"model": f"m{i}", "scores": {"ccfv": float(i)}, "dice": d, "parameters": 5}
            for i, d in enumerate([0.0, 0.0, 0.01, 0.0, 0.35])]
    ranking = Ranking(rows=rows, failed=[], metrics=["ccfv"], correlations=agreement_per_metric(rows, ["ccfv"]), meta={},
                      ground_truth=dice_health(rows), baselines=baseline_agreement(rows))
    assert {t["ground_truth"] for t in csv.DictReader(io.StringIO(agreement_csv(ranking)))} == {"cannot rank"}
    # fewer than 3 models with a Dice: no measure, a note; the regret still
    two = agreement_per_metric(rows[:2], ["ccfv"])["ccfv"]
    assert two["rel_at_1"] is None and two["note"].startswith("needs the Dice") and two["top1_regret"] == 0.0


def test_rank_confirm_finetunes_the_top_pick_and_prints_its_dice_beside_the_estimate(tmp_path, capsys):
    """``ccfv rank --confirm 1`` with two tiny MONAI bundles (SegResNet: head ``conv_final``; the bundle's own
    transforms, undone by resampling to the label files) on a tiny labelled task: the first pick is
    fine-tuned by ccfv finetune's protocol, its held-out Dice printed and written; the other is not."""
    from ..finetune.conftest import write_raw_dataset
    from ..models.test_bundle import NETWORKS, write_bundle

    data = write_raw_dataset(tmp_path / "data", n_cases=6)
    network_def, roi = NETWORKS["SegResNet"]
    bundles = [write_bundle(tmp_path / f"seg{i}", network_def, roi, seed=i, extra={"pixdim": [1.0, 1.0, 1.0]})
               for i in range(2)]
    models = [a for i, bundle in enumerate(bundles) for a in ("--model", f"seg{i}={bundle}")]
    out = tmp_path / "ranking"
    status = main(["rank", "--data", str(data), *models, "--metric", "logme", "--out", str(out), "--device", "cpu",
                   "--threads", "1", "--confirm", "1", "--confirm-iterations", "3"])
    printed = capsys.readouterr().out
    assert status == 0
    report = json.loads((out / "ranking.json").read_text())
    first, second = report["models"]
    confirm = report["confirm"]
    assert confirm["k"] == 1 and confirm["protocol"]["iterations"] == 3 and confirm["failed"] == []
    assert list(confirm["models"]) == [first["model"]]
    assert confirm["models"][first["model"]]["space"] == "original" and confirm["models"][first["model"]]["rank"] == 1
    assert first["finetuned_dice"] == confirm["models"][first["model"]]["dice"] and 0 <= first["finetuned_dice"] <= 1
    assert "finetuned_dice" not in second
    assert len(confirm["split"]["test"]) == 1 and len(confirm["split"]["train"]) == 5
    assert (out / "confirm" / "split.json").is_file() and not (out / "confirm" / ".checkpoints").exists()
    rows = list(csv.DictReader((out / "ranking.csv").open()))
    assert float(rows[0]["finetuned_dice"]) == pytest.approx(first["finetuned_dice"])
    assert rows[1]["finetuned_dice"] == ""
    assert "fine-tuned Dice" in printed
    assert "Fine-tuned Dice: the top 1 by logme, each fine-tuned 3 iterations" in printed


def test_confirm_summary_cautions_about_a_model_left_at_background_only():
    """A confirmed Dice near 0 after a short budget is a network that has not yet learnt the structure (the real
    study: hippodeep, a hippocampus model, at 0.00 after 75 iterations, a MeshNet at 0.79): the summary says
    so instead of only naming the other model the best."""
    from ccfv.rank.outputs import UNTRAINED_DICE, Ranking, _confirm_summary

    confirm = {"k": 2, "protocol": {"iterations": 75}, "seed": 0, "split": {"train": ["a"] * 8, "test": ["b"] * 2}}
    rows = [{"model": "hippodeep", "finetuned_dice": 0.0}, {"model": "model30chan18cls", "finetuned_dice": 0.7948},
            {"model": "third"}]
    text = _confirm_summary(Ranking(rows, [], ["logme"], None, {}), confirm)
    assert "The best of them is model30chan18cls (0.7948), not the first pick hippodeep (0.0000)." in text
    assert f"Caution: hippodeep ended below Dice {UNTRAINED_DICE}" in text and "--confirm-iterations" in text
    rows[0]["finetuned_dice"] = 0.61
    text = _confirm_summary(Ranking(rows, [], ["logme"], None, {}), confirm)
    assert "Caution" not in text and "The best of them is model30chan18cls" in text
