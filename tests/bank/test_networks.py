"""Tests for ccfv.bank.networks: the two bank architectures, their documented decoder stages (names, channels,
scales, checked by hooking real forward passes), UNETR's patch-size rule, and tiny UNETR training through
nnU-Net's trainer on the preprocessed fixture dataset of conftest.py."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from ccfv.bank import networks
from ccfv.bank.model_card import build_network, load_bank_model, read_model_card
from ccfv.bank.networks import decoder_layers, decoder_stages, unetr_architecture
from ccfv.bank.training import TrainingBudget, pretrain, random_model, train, transfer_weights
from ccfv.features.settings import layer_ratios_for

torch.set_num_threads(1)

TINY_UNETR = {"hidden_size": 48, "mlp_dim": 96, "num_heads": 3, "feature_size": 8}


def unet_architecture(features=(4, 8, 16, 32)):
    n = len(features)
    return {
        "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
        "arch_kwargs": {
            "n_stages": n, "features_per_stage": list(features), "conv_op": "torch.nn.modules.conv.Conv3d",
            "kernel_sizes": [[1, 3, 3]] + [[3, 3, 3]] * (n - 1),
            "strides": [[1, 1, 1], [1, 2, 2]] + [[2, 2, 2]] * (n - 2),
            "n_conv_per_stage": [1] * n, "n_conv_per_stage_decoder": [1] * (n - 1), "conv_bias": True,
            "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
            "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None, "dropout_op_kwargs": None,
            "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True},
        },
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    }


def hooked_shapes(network, layers, x):
    shapes = {}
    hooks = [dict(network.named_modules())[name].register_forward_hook(
        lambda m, i, o, name=name: shapes.__setitem__(name, tuple(o.shape))) for name in layers]
    with torch.no_grad():
        out = network.eval()(x)
    for h in hooks:
        h.remove()
    return shapes, out


@pytest.mark.parametrize(
    ("name", "architecture", "patch"),
    [
        ("unet", unet_architecture(), (16, 32, 32)),
        ("unetr", unetr_architecture((16, 32, 32), TINY_UNETR), (16, 32, 32)),
        ("unetr", unetr_architecture((32, 16, 48), {**TINY_UNETR, "feature_size": 4}), (32, 16, 48)),
    ],
)
def test_documented_decoder_stages_exist_with_their_channels_and_scales(name, architecture, patch):
    network = networks.build(name, architecture, num_input_channels=1, num_classes=3)
    documented = decoder_stages(name, architecture)
    layers = decoder_layers(network)
    assert layers == [n for n, _, _ in documented]
    x = torch.randn(2, 1, *patch)
    shapes, out = hooked_shapes(network, layers, x)
    assert tuple(out.shape) == (2, 3, *patch)
    for layer, channels, scale in documented:
        assert shapes[layer] == (2, channels, *(p // s for p, s in zip(patch, scale))), layer
    # the last stage is the layer before the final convolution: full resolution
    assert documented[-1][2] == (1, 1, 1)


def test_documented_stages_by_name():
    assert [(n, c) for n, c, _ in decoder_stages("unetr", unetr_architecture((16, 16, 16), TINY_UNETR))] == [
        ("decoder5", 64), ("decoder4", 32), ("decoder3", 16), ("decoder2", 8)]
    assert decoder_stages("unet", unet_architecture()) == [
        ("decoder.stages.0", 16, (2, 4, 4)), ("decoder.stages.1", 8, (1, 2, 2)), ("decoder.stages.2", 4, (1, 1, 1))]


@pytest.mark.parametrize("patch", [(8, 32, 32), (16, 24, 32), (128, 128, 100)])
def test_unetr_needs_a_patch_size_divisible_by_16(patch):
    with pytest.raises(ValueError, match=r"patch size .* must be divisible by 16"):
        unetr_architecture(patch, TINY_UNETR)


def test_unetr_options_are_checked():
    with pytest.raises(ValueError, match="hidden_size 50 must be divisible by num_heads 3"):
        unetr_architecture((16, 16, 16), {**TINY_UNETR, "hidden_size": 50})
    with pytest.raises(ValueError, match=r"unknown options \['hiden_size'\]"):
        unetr_architecture((16, 16, 16), {"hiden_size": 48})
    paper = unetr_architecture((128, 128, 128))["arch_kwargs"]
    assert (paper["hidden_size"], paper["mlp_dim"], paper["num_heads"], paper["feature_size"]) == (768, 3072, 12, 16)
    assert paper["img_size"] == [128, 128, 128]


def test_layer_ratios_per_architecture():
    ratios = {"unet": [0.25, 0.5, 1.0], "unetr": [0.125, 0.25, 0.5, 1.0]}
    assert layer_ratios_for(ratios, "unetr", 4) == [0.125, 0.25, 0.5, 1.0]
    assert layer_ratios_for([0.5, 1.0], "unet", 2) == [0.5, 1.0]
    with pytest.raises(ValueError, match="for unet has 3 entries; the network has 4"):
        layer_ratios_for(ratios, "unet", 4)
    with pytest.raises(ValueError, match="no entry for 'unetr'"):
        layer_ratios_for({"unet": [1.0]}, "unetr", 4)


def test_unetr_heads_are_not_transferred_and_the_rest_must_match():
    source = networks.build("unetr", unetr_architecture((16, 16, 16), TINY_UNETR), 1, 3)
    target = networks.build("unetr", unetr_architecture((16, 16, 16), TINY_UNETR), 1, 2)
    kept = transfer_weights(target, {k: v.clone() for k, v in source.state_dict().items()}, "src")
    assert kept == ["out.conv.conv.weight", "out.conv.conv.bias"]
    assert torch.equal(target.state_dict()["vit.patch_embedding.position_embeddings"],
                       source.state_dict()["vit.patch_embedding.position_embeddings"])
    wider = networks.build("unetr", unetr_architecture((16, 16, 16), {**TINY_UNETR, "hidden_size": 60}), 1, 2)
    with pytest.raises(ValueError, match=r"src.*shapes differ.*vit\."):
        transfer_weights(wider, source.state_dict(), "src")
    unet = networks.build("unet", unet_architecture(), 1, 2)
    with pytest.raises(ValueError, match=r"src.*keys missing.*encoder\.stages"):
        transfer_weights(unet, source.state_dict(), "src")


# --------------------------------------------------------------------------------------------------
# UNETR through nnU-Net's trainer (tiny), on the fixture dataset with a 16^3 patch
# --------------------------------------------------------------------------------------------------

BUDGET = TrainingBudget(iterations=2, iterations_per_epoch=2, val_iterations_per_epoch=1)


@pytest.fixture(scope="module")
def unetr_dataset(tiny_dataset, tmp_path_factory):
    """The fixture dataset's preprocessed folder with the plans' patch size set to 16^3 (UNETR needs
    multiples of 16; the data are 16 x 32 x 32 after preprocessing)."""
    from ccfv.preprocess.nnunet import case_identifiers
    from ccfv.preprocess.splits import make_split, write_split

    root = tmp_path_factory.mktemp("unetr")
    folder = root / "preprocessed" / tiny_dataset.preprocessed.name
    shutil.copytree(tiny_dataset.preprocessed, folder)
    plans_file = folder / "ccfvPlans.json"
    plans = json.loads(plans_file.read_text())
    plans["configurations"]["3d_fullres"]["patch_size"] = [16, 16, 16]
    plans_file.write_text(json.dumps(plans))
    split = root / "split.json"
    write_split(make_split(case_identifiers(folder), 0.2, seed=0), split)
    return folder, split


@pytest.fixture(scope="module")
def unetr_pretrained(unetr_dataset, tmp_path_factory):
    folder, split = unetr_dataset
    return pretrain(folder, split, "Task94_SynthSpleen", "unetr-Task94_SynthSpleen",
                    tmp_path_factory.mktemp("bank") / "unetr-Task94_SynthSpleen", BUDGET, seed=0, device="cpu",
                    network="unetr", network_options=TINY_UNETR)


@pytest.mark.slow
def test_unetr_pretrains_through_the_nnunet_trainer(unetr_pretrained):
    assert [p.name for p in unetr_pretrained.parent.iterdir()] == ["unetr-Task94_SynthSpleen"]
    network, card = load_bank_model(unetr_pretrained)
    assert type(network).__name__ == "UNETR" and card["network"] == "unetr"
    assert card["architecture"]["arch_kwargs"]["img_size"] == [16, 16, 16] == card["patch_size"]
    assert card["architecture"]["arch_kwargs"]["hidden_size"] == 48
    with torch.no_grad():
        assert network(torch.randn(1, 1, 16, 16, 16)).shape == (1, 2, 16, 16, 16)


@pytest.mark.slow
def test_unetr_fine_tunes_from_a_bank_model(unetr_dataset, unetr_pretrained, tmp_path):
    folder, split = unetr_dataset
    source, _ = load_bank_model(unetr_pretrained)
    trainer = train(folder, split, tmp_path / "work", BUDGET, seed=1, init_model=unetr_pretrained, device="cpu")
    assert type(trainer.network).__name__ == "UNETR" and not trainer.enable_deep_supervision
    losses = trainer.logger.get_checkpoint()["train_losses"]
    assert len(losses) == 1 and math.isfinite(losses[0])
    trained, before = trainer.network.state_dict(), source.state_dict()
    key = "vit.patch_embedding.position_embeddings"
    moved = float((trained[key] - before[key]).norm())
    assert 0 < moved < 0.5 * float(before[key].norm())  # started from the bank model, then trained


def test_random_unetr_member(unetr_dataset, tmp_path):
    folder, _ = unetr_dataset
    a = random_model(folder, "unetr-random", tmp_path / "a", seed=0, network="unetr", network_options=TINY_UNETR)
    b = random_model(folder, "unetr-random", tmp_path / "b", seed=0, network="unetr", network_options=TINY_UNETR)
    card = read_model_card(a)
    assert card["network"] == "unetr" and card["source_task"] is None
    (na, _), (nb, _) = load_bank_model(a), load_bank_model(b)
    assert all(torch.equal(v, nb.state_dict()[k]) for k, v in na.state_dict().items())
    assert type(build_network(card)).__name__ == "UNETR"


def test_unetr_on_a_patch_size_it_cannot_take(tiny_dataset, tmp_path):
    with pytest.raises(ValueError, match=r"patch size \[8, 16, 16\].*divisible by 16"):
        random_model(tiny_dataset.preprocessed, "unetr-random", tmp_path / "r", seed=0, network="unetr",
                     network_options=TINY_UNETR)


@pytest.mark.slow
def test_unetr_features_from_its_four_documented_stages(unetr_dataset, unetr_pretrained, tmp_path):
    from ccfv.features.file import read_features
    from ccfv.features.target import sample_target

    folder, split = unetr_dataset
    sampling = {"total": 60, "minimum": 5, "n_global": 20, "n_background": 20, "step_size": 0.5,
                "batch_size": 2, "seed": 0,
                "layer_ratios": {"unet": [0.5, 1.0], "unetr": [0.125, 0.25, 0.5, 1.0]}}
    out = sample_target(unetr_pretrained, folder, split, tmp_path / "f.h5", target="Task94_SynthSpleen",
                        sampling=sampling, device="cpu")
    ff = read_features(out)
    case = next(iter(ff.cases.values()))
    channels = [next(iter(layer.values())).shape[1] for layer in case.features]
    assert channels == [64, 32, 16, 8]  # decoder5 .. decoder2 with feature_size 8
    with pytest.raises(ValueError, match=r"unetr-Task94_SynthSpleen.*for unetr has 2 entries.*decoder5"):
        sample_target(unetr_pretrained, folder, split, tmp_path / "g.h5", target="Task94_SynthSpleen",
                      sampling={**sampling, "layer_ratios": [0.5, 1.0]}, device="cpu")


@pytest.mark.parametrize("change, message", [
    ({"network_class_name": "os.system"}, "network class 'os.system' is not one ccfv builds"),
    ({"network_class_name": "dynamic_network_architectures.architectures.primus.Primus"}, "is not one ccfv builds"),
    ({"conv_op": "subprocess.Popen"}, "conv_op 'subprocess.Popen' is not a torch.nn class"),
    ({"nonlin": "torch.nn.modules.activation.LeakyReLU; import os"}, "nonlin .* is not a torch.nn class"),
])
def test_plans_naming_other_code_are_refused_before_any_import(change, message, monkeypatch):
    """nnU-Net resolves the names in a plans file with pydoc.locate (an import); ccfv refuses anything but
    a known U-Net class and torch.nn ops first."""
    import pydoc

    located = []
    monkeypatch.setattr(pydoc, "locate", lambda name, *a, **k: located.append(name))
    architecture = unet_architecture()
    if "network_class_name" in change:
        architecture["network_class_name"] = change["network_class_name"]
    else:
        architecture["arch_kwargs"].update(change)
    with pytest.raises(ValueError, match=message):
        networks.build("unet", architecture, 1, 2)
    assert located == []


def test_known_unet_classes_and_torch_ops_pass_the_check():
    architecture = unet_architecture()
    networks.check_unet_architecture(architecture)
    architecture["arch_kwargs"]["nonlin"] = "torch.nn.modules.activation.ReLU"
    networks.check_unet_architecture(architecture)


def test_parameter_count_leaves_out_a_named_head():
    """A format that names its head (MeshNet's ``classifier``, hippodeep's ``convout1x``) has it excluded,
    as nnU-Net's and UNETR's heads are by their key names."""
    from collections import OrderedDict

    from ccfv.bank.networks import network_parameter_count

    net = torch.nn.Sequential(OrderedDict(body=torch.nn.Conv3d(1, 4, 3), classifier=torch.nn.Conv3d(4, 3, 1)))
    body, head = 1 * 4 * 27 + 4, 4 * 3 + 3
    assert network_parameter_count(net) == body + head
    assert network_parameter_count(net, head="classifier") == body
    assert network_parameter_count(net, head="classif") == body + head  # a module name, not a prefix of one
