"""ccfv.models: the dispatch between formats, model names, the nnU-Net loader's older-plans handling and
the checks of a TorchModel handed over from Python (the formats themselves: tests/models/test_bundle.py, and
test_rank.py on real nnU-Net folders and bank models)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ccfv.models import TorchModel, load_model, model_names
from ccfv.models.base import ModelError
from ccfv.models.monai_networks import decoder_stages
from ccfv.models.nnunet import find_checkpoint, modernise_plans

from .test_bundle import NETWORKS, write_bundle


def test_load_model_says_what_a_path_is_not(tmp_path):
    with pytest.raises(ModelError, match="no such file or folder"):
        load_model("x", tmp_path / "nope")
    (tmp_path / "plans.json").write_text("{}")
    with pytest.raises(ModelError, match=r"no checkpoint_final.pth or checkpoint_best.pth \(looked in: no fold_N"):
        load_model("x", tmp_path)
    odd = tmp_path / "odd"
    (odd / "fold_0").mkdir(parents=True)
    (odd / "fold_0" / "checkpoint_best.pth").write_bytes(b"")
    assert find_checkpoint(odd) == (odd, odd / "fold_0" / "checkpoint_best.pth")
    with pytest.raises(ModelError, match="neither a MONAI bundle, an nnU-Net v2 trained model folder nor a ccfv bank"):
        load_model("x", odd)  # no plans.json


def test_model_names_of_bundles_are_their_folder(tmp_path):
    bundle = write_bundle(tmp_path / "spleen_unet", *NETWORKS["UNet"])
    assert model_names([str(bundle), f"mine={bundle}", str(bundle)]) == [
        ("spleen_unet", bundle), ("mine", bundle), ("spleen_unet#2", bundle)]


def _old_configuration() -> dict:
    return {"patch_size": [16, 16, 16], "UNet_class_name": "PlainConvUNet", "UNet_base_num_features": 4,
            "unet_max_num_features": 16, "n_conv_per_stage_encoder": [1, 1, 1], "n_conv_per_stage_decoder": [1, 1],
            "num_pool_per_axis": [2, 2, 2], "pool_op_kernel_sizes": [[1, 1, 1], [2, 2, 2], [2, 2, 2]],
            "conv_kernel_sizes": [[3, 3, 3]] * 3}


def test_older_plans_are_converted_as_nnunet_does(tmp_path):
    plans = {"configurations": {"3d_fullres": _old_configuration()}}
    new = modernise_plans(plans, "3d_fullres", tmp_path / "plans.json")
    arch = new["configurations"]["3d_fullres"]["architecture"]
    assert arch["network_class_name"] == "dynamic_network_architectures.architectures.unet.PlainConvUNet"
    assert arch["arch_kwargs"]["features_per_stage"] == [4, 8, 16]
    assert arch["arch_kwargs"]["strides"] == [[1, 1, 1], [2, 2, 2], [2, 2, 2]]
    assert "UNet_class_name" in plans["configurations"]["3d_fullres"]  # the caller's dict is left alone
    assert modernise_plans(new, "3d_fullres", tmp_path / "plans.json") is new

    broken = {"configurations": {"3d_fullres": {k: v for k, v in _old_configuration().items()
                                                if k != "conv_kernel_sizes"}}}
    with pytest.raises(ModelError, match=r"plans.json: plans in nnU-Net's older format without 'conv_kernel_sizes'"):
        modernise_plans(broken, "3d_fullres", tmp_path / "plans.json")
    neither = {"configurations": {"3d_fullres": {"patch_size": [16, 16, 16]}}}
    with pytest.raises(ModelError, match="neither 'architecture'"):
        modernise_plans(neither, "3d_fullres", tmp_path / "plans.json")
    stunet = {"configurations": {"3d_fullres": dict(_old_configuration(), UNet_class_name="STUNet")}}
    with pytest.raises(ModelError, match="UNet_class_name 'STUNet'.*does not import"):
        modernise_plans(stunet, "3d_fullres", tmp_path / "plans.json")


def test_torch_model_checks_what_it_is_given():
    from monai.networks.nets import UNet

    net = UNet(3, 2, 3, channels=(4, 8, 16), strides=(2, 2))
    layers = [s[0] for s in decoder_stages(net)]

    def prep(images, label):
        return np.zeros((2, 8, 8, 8), np.float32), np.zeros((8, 8, 8), np.int16)

    loaded = TorchModel("u", net, layers, prep, [16, 16, 16], modalities=["T2", "ADC"]).load()
    assert loaded.kind == "torch" and loaded.num_input_channels == 2 and loaded.layers == ["model.1.submodule.2"]
    assert loaded.modalities == ["T2", "ADC"] and not loaded.network.training
    with pytest.raises(ModelError, match=r"layers \['decoder9'\] are not modules of UNet"):
        TorchModel("u", net, ["decoder9"], prep, [16, 16, 16]).load()
    with pytest.raises(ModelError, match="patch_size must be 3 positive ints"):
        TorchModel("u", net, layers, prep, [16, 16]).load()
    with pytest.raises(ModelError, match="not a torch.nn.Module"):
        TorchModel("u", object(), layers, prep, [16, 16, 16]).load()
    with pytest.raises(ValueError, match="no decoder stage besides the head"):
        decoder_stages(UNet(3, 1, 2, channels=(4, 8), strides=(2,)))


def test_bundle_metadata_modality_and_missing_entries(tmp_path):
    network_def, roi = NETWORKS["UNet"]
    bundle = write_bundle(tmp_path / "mr", network_def, roi, metadata={
        "network_data_format": {"inputs": {"image": {"modality": "MR", "num_channels": 1}}}})
    assert load_model("mr", bundle).modalities == ["MR"]
    config = json.loads((bundle / "configs" / "inference.json").read_text())
    del config["preprocessing"]
    (bundle / "configs" / "inference.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match="no 'preprocessing' entry"):
        load_model("mr", bundle)


def _bank_model(tmp_path, source_task: str | None, channel_names: dict) -> Path:
    """A bank model (a seeded random network on a tiny U-Net) whose card says it was pretrained on
    ``source_task`` (None: a random member), planned on a dataset with ``channel_names``."""
    from ccfv.bank.training import random_model

    from ..bank.test_training import tiny_architecture

    folder = tmp_path / "Dataset009_Spleen"
    folder.mkdir()
    plans = {"configurations": {"3d_fullres": {"architecture": tiny_architecture(), "patch_size": [8, 16, 16]}}}
    (folder / "ccfvPlans.json").write_text(json.dumps(plans))
    (folder / "dataset.json").write_text(json.dumps(
        {"channel_names": channel_names, "labels": {"background": 0, "spleen": 1}, "file_ending": ".nii.gz"}))
    model = random_model(folder, "unet-Task09_Spleen", tmp_path / "bank" / "unet-Task09_Spleen", seed=0)
    card = json.loads((model / "model.json").read_text())
    card["source_task"] = source_task
    (model / "model.json").write_text(json.dumps(card))
    return model


def test_bank_model_modalities_come_from_its_card(tmp_path):
    """A bank model pretrained on CT says so, and ranking it on MR data (Task04_Hippocampus: "MRI") warns."""
    from ccfv.rank.modality import modality_warnings

    model = _bank_model(tmp_path, "Task09_Spleen", {"0": "CT"})
    loaded = load_model("ct", model)
    assert loaded.modalities == ["CT"]
    [warning] = modality_warnings(loaded.modalities, ["MRI"])
    assert warning.startswith("modality mismatch (channel 0: model CT, target MRI)")


def test_bank_model_without_recorded_modalities_loads_without_them(tmp_path):
    """Cards written before the card recorded the channels still load; no warning is possible. A random
    member's channels are not a modality it learnt: no warning either."""
    model = _bank_model(tmp_path, "Task09_Spleen", {"0": "CT"})
    card = json.loads((model / "model.json").read_text())
    for key in ("channel_names", "modalities"):
        del card[key]
    (model / "model.json").write_text(json.dumps(card))
    assert load_model("old", model).modalities is None

    (tmp_path / "random").mkdir()
    random_member = _bank_model(tmp_path / "random", None, {"0": "CT"})
    assert load_model("random", random_member).modalities is None


def test_bank_model_with_malformed_modalities_is_refused_by_name(tmp_path):
    model = _bank_model(tmp_path, "Task09_Spleen", {"0": "CT"})
    card = json.loads((model / "model.json").read_text())
    card["modalities"] = ["CT", "T2"]
    (model / "model.json").write_text(json.dumps(card))
    with pytest.raises(ModelError, match=r"model\.json: 'modalities' must list one name per input channel \(1\)"):
        load_model("bad", model)
