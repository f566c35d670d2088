"""MONAI bundles and networks (ccfv.models.bundle, ccfv.models.monai_networks): the documented decoder stages
against hooked forward passes, the literal-only config builder, the bundle's own preprocessing against MONAI's
dictionary transforms applied to image and label together, and what is refused without running."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ccfv.models import load_model
from ccfv.models.base import ModelError
from ccfv.models.bundle import BundleCodeRefused, LiteralConfig
from ccfv.models.monai_networks import decoder_stages

#: The bundle preprocessing the tests use: a zoo CT bundle's steps on the synthetic data (1.5 x 1.5 x 3 mm,
#: LPS-like affine): orientation to RAS, 3 mm isotropic spacing, a soft-tissue window scaled to [0, 1].
PREPROCESSING = {
    "_target_": "Compose",
    "transforms": [
        {"_target_": "LoadImaged", "keys": "image"},
        {"_target_": "EnsureChannelFirstd", "keys": "image"},
        {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
        {"_target_": "Spacingd", "keys": "image", "pixdim": "@pixdim", "mode": "bilinear"},
        {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": -57, "a_max": 164, "b_min": 0.0,
         "b_max": 1.0, "clip": True},
        {"_target_": "EnsureTyped", "keys": "image", "device": "@device"},
    ],
}

#: Tiny MONAI networks (network_def entries) and their ROI. SwinUNETR downsamples 32 times: 64 is its least ROI.
NETWORKS = {
    "UNet": ({"_target_": "UNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 3, "channels": [4, 8, 16, 32],
              "strides": [2, 2, 2], "num_res_units": 1}, [16, 16, 16]),
    "SegResNet": ({"_target_": "SegResNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 3,
                   "init_filters": 8, "blocks_down": [1, 1, 1], "blocks_up": [1, 1]}, [16, 16, 16]),
    "SwinUNETR": ({"_target_": "monai.networks.nets.SwinUNETR", "in_channels": 1, "out_channels": 2,
                   "feature_size": 12, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 1, 1]}, [64, 64, 64]),
    "UNETR": ({"_target_": "UNETR", "in_channels": 1, "out_channels": 3, "img_size": [32, 32, 32],
               "feature_size": 4, "hidden_size": 32, "mlp_dim": 32, "num_heads": 2}, [32, 32, 32]),
    "DynUNet": ({"_target_": "DynUNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 3,
                 "kernel_size": [3, 3, 3, 3], "strides": [1, [2, 2, 1], 2, 2], "upsample_kernel_size": [[2, 2, 1], 2, 2],
                 "filters": [4, 8, 16, 32]}, [32, 32, 16]),
}


def build(network_def: dict):
    """A network_def built the way MONAI's ConfigParser would (the short name from monai.networks.nets)."""
    import monai.networks.nets as nets

    kwargs = {k: v for k, v in network_def.items() if k != "_target_"}
    return getattr(nets, network_def["_target_"].rsplit(".", 1)[-1])(**kwargs)


def write_bundle(folder: Path, network_def: dict, roi: list[int], *, seed: int = 0, extra: dict | None = None,
                 metadata: dict | None = None, weights: str = "pt", yaml: bool = False,
                 weights_of: dict | None = None) -> Path:
    """A MONAI bundle as the Model Zoo lays it out, with ``$`` entries where zoo bundles have them (imports,
    device, network, evaluation), which ranking must neither evaluate nor refuse. The weights are those of
    ``network_def`` (or of ``weights_of``), seeded."""
    torch.manual_seed(seed)
    network = build(weights_of or network_def)
    config = {
        "imports": ["$import glob", "$import os"],
        "bundle_root": ".",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "pixdim": [3.0, 3.0, 3.0],
        "network_def": network_def,
        "network": "$@network_def.to(@device)",
        "preprocessing": PREPROCESSING,
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": roi, "sw_batch_size": 4, "overlap": 0.5},
        "postprocessing": {"_target_": "Compose", "transforms": [{"_target_": "Activationsd", "keys": "pred",
                                                                   "softmax": True}]},
        "evaluator": {"_target_": "SupervisedEvaluator", "device": "@device", "network": "@network",
                      "val_data_loader": "$torch.utils.data.DataLoader([])"},
        "run": ["$@evaluator.run()"],
        **(extra or {}),
    }
    meta = metadata or {"name": f"tiny {network_def['_target_']}", "version": "0.1.0",
                        "network_data_format": {"inputs": {"image": {"type": "image", "modality": "CT",
                                                                     "num_channels": 1, "spatial_shape": roi}},
                                                "outputs": {"pred": {"type": "probabilities"}}}}
    (folder / "configs").mkdir(parents=True)
    (folder / "models").mkdir()
    if yaml:
        import yaml as pyyaml

        (folder / "configs" / "inference.yaml").write_text(pyyaml.safe_dump(config))
    else:
        (folder / "configs" / "inference.json").write_text(json.dumps(config, indent=1))
    (folder / "configs" / "metadata.json").write_text(json.dumps(meta))
    if weights == "pt":
        torch.save(network.state_dict(), folder / "models" / "model.pt")
    else:
        torch.jit.script(network).save(str(folder / "models" / "model.ts"))
    return folder


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    from ccfv.data.synthetic import write_task

    return write_task("Task93_SynthPancreas", tmp_path_factory.mktemp("target"), n_cases=2, seed=7,
                      shape=(32, 32, 16))


def _case(task: Path) -> tuple[Path, Path]:
    dataset = json.loads((task / "dataset.json").read_text())
    entry = dataset["training"][0]
    return task / entry["image"], task / entry["label"]


# ---------------------------------------------------------------------------------------------------------
# Decoder stages
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(NETWORKS))
def test_decoder_stages_are_the_documented_channels_and_scales(kind):
    """Every documented stage, hooked in a forward pass: it runs once and outputs [B, channels,
    patch / scale]; the stages run deepest first; the network's output is the logits at full size."""
    network_def, roi = NETWORKS[kind]
    network = build(network_def).eval()
    stages = decoder_stages(network)
    modules = dict(network.named_modules())
    seen = []
    for name, _, _ in stages:
        modules[name].register_forward_hook(lambda m, i, o, name=name: seen.append((name, tuple(o.shape))))
    with torch.no_grad():
        out = network(torch.zeros(1, 1, *roi))
    assert tuple(out.shape) == (1, network_def["out_channels"], *roi)
    assert [s[0] for s in seen] == [s[0] for s in stages]  # each once, deepest first
    for (name, channels, scale), (_, shape) in zip(stages, seen):
        assert shape == (1, channels, *(r // s for r, s in zip(roi, scale))), name
    scales = [np.prod(s[2]) for s in stages]
    assert scales == sorted(scales, reverse=True)


def test_decoder_stages_of_an_unknown_network_say_what_to_do():
    with pytest.raises(ValueError, match="ccfv.rank_models with the layer names"):
        decoder_stages(torch.nn.Conv3d(1, 1, 1))


# ---------------------------------------------------------------------------------------------------------
# The literal-only config builder
# ---------------------------------------------------------------------------------------------------------


def test_literal_config_builds_classes_and_resolves_references(tmp_path):
    config = {"imports": ["$import os"], "width": 4, "shape": {"channels": ["@width", 8]},
              "net": {"_target_": "torch.nn.Sequential"},
              "layer": {"_target_": "Conv3d", "in_channels": 1, "out_channels": "@shape::channels::0",
                        "kernel_size": "@shape#channels#1", "_desc_": "a comment"},
              "off": {"_target_": "Identity", "_disabled_": "true"}, "device": "$torch.device('cpu')",
              "load": {"_target_": "LoadImaged", "keys": "image", "reader": "NibabelReader"},
              "reader": {"_target_": "monai.data.NibabelReader"}}
    literal = LiteralConfig(config, tmp_path / "inference.json")
    layer = literal.build("layer")
    assert isinstance(layer, torch.nn.Conv3d) and layer.out_channels == 4 and layer.kernel_size == (8, 8, 8)
    assert literal.build("off") is None
    assert literal.literal("shape") == {"channels": [4, 8]}
    assert type(literal.build("load")).__name__ == "LoadImaged"
    assert type(literal.build("reader")).__name__ == "NibabelReader"


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        ({"_target_": "Identity", "x": "$open('MARKER', 'w').close()"}, "the expression"),
        ({"_target_": "Identity", "x": "%other.json::thing"}, "the macro"),
        ({"_target_": "pathlib.Path", "args": "MARKER"}, "outside monai and torch"),
        ({"_target_": "monai.transforms.utils.generate_spatial_bounding_box"}, "a function, not a class"),
        ({"_target_": "Identity", "_requires_": "@touch"}, "_requires_"),
        ({"_target_": "$__import__('pathlib').Path('MARKER').touch()"}, "_target_"),
        ({"_target_": "Identity", "x": "@touch"}, "the expression"),
        ({"_target_": "monai.bundle.ConfigWorkflow", "config_file": "MARKER"}, "outside the modules ranking builds"),
        ({"_target_": "torch.package.PackageImporter", "file_or_buffer": "MARKER"}, "outside the modules ranking"),
        ({"_target_": "LoadImaged", "keys": "image", "reader": "pathlib.Path"}, "not one of MONAI's readers"),
    ],
)
def test_literal_config_refuses_code_and_runs_none_of_it(entry, reason, tmp_path):
    marker = tmp_path / "payload-ran"
    entry = json.loads(json.dumps(entry).replace("MARKER", str(marker)))
    config = {"thing": entry, "touch": f"$open({str(marker)!r}, 'w').close()"}
    with pytest.raises(BundleCodeRefused, match=reason) as err:
        LiteralConfig(config, tmp_path / "inference.json").build("thing")
    assert "'thing" in str(err.value) and "--trust-bundle-code" in str(err.value)
    assert str(tmp_path / "inference.json") in str(err.value)
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------------------
# Bundles
# ---------------------------------------------------------------------------------------------------------


def test_bundle_loads_with_its_preprocessing_and_roi(tmp_path, target):
    """A zoo-like bundle ($ in imports, device, network, evaluator): built from literals, weights read,
    stages hooked, and its preprocessing equal to MONAI's dictionary transforms applied to image and
    label together (the label with nearest-neighbour interpolation), the slow and obvious reference."""
    from monai.transforms import (
        Compose,
        EnsureChannelFirstd,
        LoadImaged,
        Orientationd,
        ScaleIntensityRanged,
        Spacingd,
    )

    network_def, roi = NETWORKS["UNet"]
    bundle = write_bundle(tmp_path / "unet_bundle", network_def, roi)
    model = load_model("u", bundle)
    assert model.kind == "monai-bundle" and model.architecture == "UNet"
    assert model.patch_size == roi and model.num_input_channels == 1 and model.modalities == ["CT"]
    assert model.layers == ["model.1.submodule.1.submodule.2", "model.1.submodule.2"]
    assert not model.network.training
    reference = build(network_def)
    reference.load_state_dict(torch.load(bundle / "models" / "model.pt", weights_only=True))
    for a, b in zip(reference.state_dict().values(), model.network.state_dict().values()):
        assert torch.equal(a, b)

    image_file, label_file = _case(target)
    image, seg = model.preprocess([image_file], label_file)
    both = Compose([LoadImaged(keys=["image", "label"]), EnsureChannelFirstd(keys=["image", "label"]),
                    Orientationd(keys=["image", "label"], axcodes="RAS"),
                    Spacingd(keys=["image", "label"], pixdim=[3.0, 3.0, 3.0], mode=["bilinear", "nearest"]),
                    ScaleIntensityRanged(keys="image", a_min=-57, a_max=164, b_min=0.0, b_max=1.0, clip=True)])
    expected = both({"image": str(image_file), "label": str(label_file)})
    assert image.dtype == np.float32 and seg.dtype == np.int16
    np.testing.assert_allclose(image, expected["image"].numpy(), atol=1e-6)
    np.testing.assert_array_equal(seg, expected["label"].numpy()[0].astype(np.int16))
    # 32 x 32 x 16 voxels of about 1.5 x 1.5 x 3 mm at 3 mm
    assert image.shape[0] == 1 and all(16 <= n <= 17 for n in image.shape[1:]) and seg.shape == image.shape[1:]
    assert set(np.unique(seg)) <= {0, 1, 2} and seg.max() > 0


def test_yaml_bundle_and_metadata_roi(tmp_path):
    network_def, roi = NETWORKS["SegResNet"]
    bundle = write_bundle(tmp_path / "b", network_def, roi, yaml=True,
                          extra={"inferer": {"_target_": "SimpleInferer"}})
    model = load_model("s", bundle)
    assert model.patch_size == roi  # from the metadata's spatial_shape
    assert model.layers == ["up_layers.0", "up_layers.1"]


def test_code_in_network_def_is_refused_unless_trusted(tmp_path):
    marker = tmp_path / "payload-ran"
    network_def, roi = NETWORKS["UNet"]
    evil = dict(network_def, out_channels=f"$open({str(marker)!r}, 'w').close() or 3")
    bundle = write_bundle(tmp_path / "evil", evil, roi, weights_of=network_def)
    with pytest.raises(BundleCodeRefused, match=r"'network_def::out_channels' needs Python code"):
        load_model("evil", bundle)
    assert not marker.exists()
    model = load_model("evil", bundle, trust_bundle_code=True)
    assert marker.exists() and model.architecture == "UNet"


def test_torchscript_only_with_trust_and_unsafe_weights_refused(tmp_path):
    network_def, roi = NETWORKS["UNet"]
    scripted = write_bundle(tmp_path / "ts", network_def, roi, weights="ts")
    with pytest.raises(BundleCodeRefused, match="model.ts: refused: the bundle has only a TorchScript model"):
        load_model("ts", scripted)
    model = load_model("ts", scripted, trust_bundle_code=True)
    reference = torch.jit.load(str(scripted / "models" / "model.ts"))
    for (k, a), b in zip(reference.state_dict().items(), model.network.state_dict().values()):
        assert torch.equal(a, b), k

    marker = tmp_path / "payload-ran"

    class Payload:
        def __reduce__(self):
            import os

            return os.mkdir, (str(marker),)

    pickled = write_bundle(tmp_path / "pickled", network_def, roi)
    torch.save({"model": build(network_def).state_dict(), "extra": Payload()}, pickled / "models" / "model.pt")
    with pytest.raises(ModelError, match="refused"):
        load_model("p", pickled)
    assert not marker.exists()


def test_weights_that_do_not_fit_and_unknown_networks_are_named(tmp_path):
    network_def, roi = NETWORKS["UNet"]
    bundle = write_bundle(tmp_path / "b", network_def, roi)
    other = build(dict(network_def, channels=[4, 8, 16, 64]))
    torch.save(other.state_dict(), bundle / "models" / "model.pt")
    with pytest.raises(ModelError, match=r"model.pt: does not fit the network_def of .*inference.json"):
        load_model("b", bundle)
    basic = write_bundle(tmp_path / "basic", {"_target_": "BasicUNet", "spatial_dims": 3, "in_channels": 1,
                                              "out_channels": 2, "features": [4, 4, 8, 16, 32, 4]}, [16, 16, 16])
    with pytest.raises(ModelError, match="ccfv knows the decoder stages of MONAI's UNet, SegResNet"):
        load_model("basic", basic)
    (basic / "configs" / "metadata.json").unlink()
    with pytest.raises(ModelError, match="needs configs/metadata.json"):
        load_model("basic", basic)
