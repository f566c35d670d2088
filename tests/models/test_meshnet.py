"""ccfv.models.meshnet: brainchop's TensorFlow.js MeshNet format.

A tiny hand-written model.json and weights (written here) check the parser, the strict loading and every
bad-input error, and the torch network against a slow NumPy transcription of TensorFlow's Conv3D ("same"
padding, dilation, channels-last, kernel (D, H, W, in, out)). A synthetic NIfTI of known orientation checks
the preprocessing's LIA reordering. With the shared material: every brainchop model loads strictly, and
model18cls finds the right hippocampus in a crop of brainchop's own example head.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import ndimage
from scipy.special import erf

from ccfv.models import ModelError, load_model, random_copy
from ccfv.models.bank import is_bank_model
from ccfv.models.meshnet import (
    PERCENTILES,
    MeshNetPreprocessing,
    hooked_blocks,
    is_meshnet,
    load,
    parse_topology,
    scale_to_unit,
)

#: The tiny model: (name, filters, kernel, dilation, own activation, activation layer or None, use_bias).
TINY = [
    ("c0", 3, 3, 1, "linear", "relu", True),
    ("c1", 4, 3, 2, "linear", "elu", True),
    ("c2", 3, 2, 1, "gelu", None, False),   # an even kernel: TensorFlow pads it asymmetrically
    ("out", 2, 1, 1, "linear", None, True),
]


def tiny_topology(spec=TINY) -> dict:
    """A Keras functional model config, as TensorFlow.js's converter writes it."""
    layers = [{"class_name": "InputLayer", "name": "input", "inbound_nodes": [],
               "config": {"batch_input_shape": [None, 64, 64, 64, 1], "dtype": "float32", "name": "input"}}]
    previous = "input"
    for name, filters, kernel, dilation, own, after, bias in spec:
        layers.append({"class_name": "Conv3D", "name": name, "inbound_nodes": [[[previous, 0, 0, {}]]],
                       "config": {"name": name, "filters": filters, "kernel_size": [kernel] * 3,
                                  "strides": [1, 1, 1], "dilation_rate": [dilation] * 3, "padding": "same",
                                  "data_format": "channels_last", "activation": own, "use_bias": bias}})
        previous = name
        if after:
            layers.append({"class_name": "Activation", "name": f"{name}_act", "config": {"activation": after},
                           "inbound_nodes": [[[previous, 0, 0, {}]]]})
            previous = f"{name}_act"
    return {"class_name": "Functional", "config": {"name": "tiny", "layers": layers,
                                                   "input_layers": [["input", 0, 0]],
                                                   "output_layers": [[previous, 0, 0]]}}


def tiny_weights(spec=TINY, seed=0) -> list[tuple[str, np.ndarray]]:
    """(manifest name, float32 array in TensorFlow layout) in file order."""
    rng = np.random.default_rng(seed)
    out, channels = [], 1
    for name, filters, kernel, _, _, _, bias in spec:
        out.append((f"{name}/kernel", rng.normal(0, 0.5, (kernel, kernel, kernel, channels, filters)).astype("<f4")))
        if bias:
            out.append((f"{name}/bias", rng.normal(0, 0.1, filters).astype("<f4")))
        channels = filters
    return out


def write_tiny_model(folder: Path, spec=TINY, weights=None, manifest=None, topology=None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    weights = tiny_weights(spec) if weights is None else weights
    (folder / "model.bin").write_bytes(b"".join(w.tobytes() for _, w in weights))
    if manifest is None:
        manifest = [{"paths": ["model.bin"],
                     "weights": [{"name": n, "shape": list(w.shape), "dtype": "float32"} for n, w in weights]}]
    model_json = {"format": "layers-model", "generatedBy": "test", "convertedBy": "test",
                  "modelTopology": {"keras_version": "2.7.0", "backend": "tensorflow",
                                    "model_config": topology or tiny_topology(spec)},
                  "weightsManifest": manifest}
    (folder / "model.json").write_text(json.dumps(model_json))
    return folder


# -- A slow, obviously correct reference: TensorFlow's Conv3D in NumPy ------------------------------------


def tf_conv3d_same(x: np.ndarray, kernel: np.ndarray, bias, dilation: int) -> np.ndarray:
    """x [D, H, W, C_in], kernel [k, k, k, C_in, C_out] -> [D, H, W, C_out]; "same" padding as TensorFlow:
    total (k - 1) * dilation per axis, the smaller half before."""
    k = kernel.shape[0]
    total = (k - 1) * dilation
    before = total // 2
    padded = np.pad(x, [(before, total - before)] * 3 + [(0, 0)])
    d, h, w = x.shape[:3]
    out = np.zeros((d, h, w, kernel.shape[-1]), dtype=np.float64)
    for a in range(k):
        for b in range(k):
            for c in range(k):
                window = padded[a * dilation:a * dilation + d, b * dilation:b * dilation + h,
                                c * dilation:c * dilation + w]
                out += window @ kernel[a, b, c]
    return out + (0 if bias is None else bias)


TF_ACTIVATIONS = {"linear": lambda v: v, "relu": lambda v: np.maximum(v, 0),
                  "elu": lambda v: np.where(v > 0, v, np.expm1(np.minimum(v, 0))),
                  "gelu": lambda v: 0.5 * v * (1 + erf(v / np.sqrt(2)))}


def tf_reference(x: np.ndarray, spec=TINY, weights=None) -> np.ndarray:
    """The tiny model's logits [D, H, W, K] for x [D, H, W, 1], as TensorFlow computes them."""
    arrays = dict(tiny_weights(spec) if weights is None else weights)
    for name, _, _, dilation, own, after, bias in spec:
        x = tf_conv3d_same(x, arrays[f"{name}/kernel"].astype(np.float64),
                           arrays.get(f"{name}/bias") if bias else None, dilation)
        x = TF_ACTIVATIONS[own](x)
        if after:
            x = TF_ACTIVATIONS[after](x)
    return x


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths")
def test_tiny_model_matches_tensorflows_convolution(tmp_path):
    model = load("tiny", write_tiny_model(tmp_path / "tiny"))
    assert model.kind == "meshnet" and model.num_input_channels == 1 and model.modalities == ["T1"]
    assert model.details["head"] == "classifier" and model.details["num_classes"] == 2
    assert model.layers == ["blocks.1", "blocks.2"]  # 3 blocks: the middle one (1) is also 3/4 in
    x = np.random.default_rng(1).random((7, 8, 9, 1))
    with torch.no_grad():
        ours = model.network(torch.from_numpy(x.transpose(3, 0, 1, 2)[None].astype(np.float32)))[0]
    reference = tf_reference(x).transpose(3, 0, 1, 2)
    assert ours.shape == reference.shape == (2, 7, 8, 9)
    np.testing.assert_allclose(ours.numpy(), reference, rtol=1e-4, atol=1e-4)
    assert not model.network.training


def test_hooked_layers_output_full_resolution_features(tmp_path):
    model = load("tiny", write_tiny_model(tmp_path / "tiny"), patch_size=(8, 12, 16))
    modules = dict(model.network.named_modules())
    seen = {}

    def hook(name):
        def record(module, inputs, output):
            seen[name] = tuple(output.shape)
        return record

    handles = [modules[n].register_forward_hook(hook(n)) for n in model.layers]
    with torch.no_grad():
        model.network(torch.zeros(2, 1, 8, 12, 16))
    for h in handles:
        h.remove()
    assert seen == {"blocks.1": (2, 4, 8, 12, 16), "blocks.2": (2, 3, 8, 12, 16)}
    assert model.stages == [("blocks.1", 4, (1, 1, 1)), ("blocks.2", 3, (1, 1, 1))]
    assert model.patch_size == [8, 12, 16]


@pytest.mark.parametrize("n_blocks, expected", [
    (9, [4, 6, 8]),      # model18cls: dilations 1 2 4 8 16 8 4 2 1, the widest in the middle
    (8, [3, 5, 7]),      # model21_104class
    (25, [12, 18, 24]),  # mindgrab
    (2, [0, 1]),
    (1, [0]),
])
def test_hooked_blocks_middle_three_quarters_last(n_blocks, expected):
    assert hooked_blocks(n_blocks) == [f"blocks.{i}" for i in expected]


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths")
def test_softmax_after_the_classifier_is_dropped(tmp_path):
    topology = tiny_topology()
    topology["config"]["layers"].append({"class_name": "Activation", "name": "sm",
                                         "config": {"activation": "softmax"},
                                         "inbound_nodes": [[["out", 0, 0, {}]]]})
    topology["config"]["output_layers"] = [["sm", 0, 0]]
    model = load("tiny", write_tiny_model(tmp_path / "tiny", topology=topology))
    x = np.random.default_rng(2).random((5, 5, 5, 1))
    with torch.no_grad():
        ours = model.network(torch.from_numpy(x.transpose(3, 0, 1, 2)[None].astype(np.float32)))[0]
    np.testing.assert_allclose(ours.numpy(), tf_reference(x).transpose(3, 0, 1, 2), rtol=1e-4, atol=1e-4)


# -- Bad input: every error names the file and the problem --------------------------------------------------


def _break(folder: Path, what: str) -> tuple[Path, str]:
    """Write a tiny model broken in one way; return (the file the error must name, a pattern of the reason)."""
    weights = tiny_weights()
    if what == "no model.json":
        folder.mkdir()
        return folder / "model.json", "missing"
    if what == "broken JSON":
        write_tiny_model(folder)
        (folder / "model.json").write_text('{"modelTopology": ')
        return folder / "model.json", "not valid JSON"
    if what == "no topology":
        write_tiny_model(folder)
        (folder / "model.json").write_text(json.dumps({"weightsManifest": []}))
        return folder / "model.json", "no 'modelTopology'"
    if what == "unknown layer":
        topology = tiny_topology()
        topology["config"]["layers"][3]["class_name"] = "MaxPooling3D"
        write_tiny_model(folder, topology=topology)
        return folder / "model.json", "'MaxPooling3D'.*only InputLayer, Conv3D and Activation"
    if what == "unknown activation":
        topology = tiny_topology()
        topology["config"]["layers"][2]["config"]["activation"] = "swish"
        write_tiny_model(folder, topology=topology)
        return folder / "model.json", "activation 'swish'"
    if what == "stride":
        topology = tiny_topology()
        topology["config"]["layers"][3]["config"]["strides"] = [2, 2, 2]
        write_tiny_model(folder, topology=topology)
        return folder / "model.json", "strides"
    if what == "branch":
        topology = tiny_topology()
        topology["config"]["layers"][3]["inbound_nodes"] = [[["input", 0, 0, {}]]]
        write_tiny_model(folder, topology=topology)
        return folder / "model.json", "plain chain"
    if what == "weights file too short":
        write_tiny_model(folder)
        data = (folder / "model.bin").read_bytes()
        (folder / "model.bin").write_bytes(data[:-4])
        return folder / "model.bin", f"{len(data) - 4} bytes, but the weightsManifest .* lists {len(data)} bytes"
    if what == "weights file too long":
        write_tiny_model(folder)
        (folder / "model.bin").write_bytes((folder / "model.bin").read_bytes() + b"\0" * 8)
        return folder / "model.bin", "bytes, but the weightsManifest"
    if what == "weights file missing":
        write_tiny_model(folder)
        (folder / "model.bin").unlink()
        return folder / "model.bin", "missing \\(named by"
    if what == "missing tensor":
        write_tiny_model(folder, weights=[w for w in weights if w[0] != "c1/bias"])
        return folder / "model.json", r"missing \['c1/bias'\]"
    if what == "extra tensor":
        write_tiny_model(folder, weights=weights + [("c2/bias", np.zeros(3, "<f4"))])
        return folder / "model.json", r"unexpected \['c2/bias'\]"
    if what == "mis-shaped tensor":
        swapped = [(n, w.reshape(3, 3, 3, 4, 3) if n == "c1/kernel" else w) for n, w in weights]  # 3->4 as 4->3
        write_tiny_model(folder, weights=swapped)
        return folder / "model.json", r"mis-shaped \['c1/kernel \[3, 3, 3, 4, 3\] \(topology needs \[3, 3, 3, 3, 4\]"
    if what == "float16 weights":
        write_tiny_model(folder)
        model_json = json.loads((folder / "model.json").read_text())
        model_json["weightsManifest"][0]["weights"][0]["dtype"] = "float16"
        (folder / "model.json").write_text(json.dumps(model_json))
        return folder / "model.json", "float16; only float32"
    if what == "quantised weights":
        write_tiny_model(folder)
        model_json = json.loads((folder / "model.json").read_text())
        model_json["weightsManifest"][0]["weights"][1]["quantization"] = {"dtype": "uint8"}
        (folder / "model.json").write_text(json.dumps(model_json))
        return folder / "model.json", "quantised"
    raise AssertionError(what)


BROKEN = ["no model.json", "broken JSON", "no topology", "unknown layer", "unknown activation", "stride", "branch",
          "weights file too short", "weights file too long", "weights file missing", "missing tensor",
          "extra tensor", "mis-shaped tensor", "float16 weights", "quantised weights"]


@pytest.mark.parametrize("what", BROKEN)
def test_bad_input_is_a_model_error_naming_the_file(tmp_path, what):
    named, reason = _break(tmp_path / "m", what)
    with pytest.raises(ModelError, match=reason) as caught:
        load("m", tmp_path / "m")
    assert str(caught.value).startswith(str(named)), caught.value


def test_strict_loading_uses_every_byte_once(tmp_path):
    """Each manifest tensor lands in its torch parameter, transposed from (D, H, W, in, out)."""
    model = load("tiny", write_tiny_model(tmp_path / "tiny"))
    arrays = dict(tiny_weights())
    state = model.network.state_dict()
    assert set(state) == {"blocks.0.0.weight", "blocks.0.0.bias", "blocks.1.0.weight", "blocks.1.0.bias",
                          "blocks.2.0.weight", "classifier.weight", "classifier.bias"}
    np.testing.assert_array_equal(state["blocks.1.0.weight"].numpy(), arrays["c1/kernel"].transpose(4, 3, 0, 1, 2))
    np.testing.assert_array_equal(state["classifier.bias"].numpy(), arrays["out/bias"])
    assert sum(v.numel() for v in state.values()) * 4 == (tmp_path / "tiny" / "model.bin").stat().st_size


def test_load_model_tells_a_meshnet_from_a_bank_model_card(tmp_path):
    folder = write_tiny_model(tmp_path / "tiny")
    assert is_meshnet(folder) and is_bank_model(folder)  # both keep a model.json: load_model asks meshnet first
    assert load_model("tiny", folder).kind == "meshnet"
    card = tmp_path / "bank"
    card.mkdir()
    (card / "model.json").write_text(json.dumps({"model_id": "unet-x", "architecture": {}}))
    assert not is_meshnet(card) and not is_meshnet(tmp_path / "nope")
    (card / "model.json").write_text("{broken")
    assert not is_meshnet(card)


def test_random_copy_is_seeded_and_differs_from_the_weights(tmp_path):
    model = load("tiny", write_tiny_model(tmp_path / "tiny"))
    before = copy.deepcopy(model.network.state_dict())
    state = torch.get_rng_state()
    a, b, c = random_copy(model, 3), random_copy(model, 3), random_copy(model, 4)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's random stream is untouched
    for key, value in model.network.state_dict().items():
        assert torch.equal(value, before[key])  # the pretrained model is unchanged
        assert torch.equal(a.network.state_dict()[key], b.network.state_dict()[key])
        if key.endswith("weight"):
            assert not torch.equal(a.network.state_dict()[key], value)
            assert not torch.equal(a.network.state_dict()[key], c.network.state_dict()[key])
        else:
            assert torch.count_nonzero(a.network.state_dict()[key]) == 0  # biases start at zero
    assert a.name == "tiny-random3" and a.sha256 is None and a.checkpoint is None
    assert a.details["random_copy_of"] == "tiny" and a.details["seed"] == 3 and "xavier" in a.details["init"]
    assert a.layers == model.layers and a.preprocess is model.preprocess and a.patch_size == model.patch_size


# -- Preprocessing ------------------------------------------------------------------------------------------


def test_preprocessing_reorders_any_orientation_to_lia(tmp_path):
    """A volume known in LIA order, stored as RAS (a permutation and two flips, written out by hand), comes
    back in LIA order, its label with it."""
    rng = np.random.default_rng(0)
    lia = rng.integers(1, 200, size=(4, 5, 6)).astype(np.float32)  # LIA voxel (i, j, k) is at world (-i, k, -j)
    ras = np.zeros((4, 6, 5), np.float32)                           # RAS voxel (a, b, c) is at (a - 3, b, c - 4)
    for i in range(4):
        for j in range(5):
            for k in range(6):
                ras[3 - i, k, 4 - j] = lia[i, j, k]
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    affine[:3, 3] = [-3, 0, -4]
    nib.save(nib.Nifti1Image(ras, affine), tmp_path / "t1.nii.gz")
    nib.save(nib.Nifti1Image((ras % 3).astype(np.uint8), affine), tmp_path / "seg.nii.gz")
    image, seg = MeshNetPreprocessing()([tmp_path / "t1.nii.gz"], tmp_path / "seg.nii.gz")
    assert image.shape == (1, 4, 5, 6) and image.dtype == np.float32 and seg.shape == (4, 5, 6)
    np.testing.assert_array_equal(seg, lia % 3)
    lo, hi = lia.min(), np.percentile(lia, 99.9)
    np.testing.assert_allclose(image[0], np.clip((lia - lo) / (hi - lo), 0, 1), atol=1e-6)
    assert image.min() == 0 and image.max() == 1


def test_scaling_ignores_zeros_for_the_upper_percentile():
    data = np.zeros((10, 10, 10), np.float32)
    data[:5] = np.arange(500).reshape(5, 10, 10)  # half background (0), half 0..499
    scaled = scale_to_unit(data, (0.0, 99.9), Path("x"))
    hi = np.percentile(np.arange(1, 500), 99.9)
    np.testing.assert_allclose(scaled[4, 9, 8], min(498 / hi, 1.0), rtol=1e-6)
    with pytest.raises(ValueError, match="x: constant intensities"):
        scale_to_unit(np.ones((3, 3, 3)), (0.0, 99.9), Path("x"))


def test_preprocessing_refuses_what_it_cannot_take(tmp_path):
    data = np.random.default_rng(0).random((6, 6, 6)).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.diag([1.2, 1, 1, 1])), tmp_path / "coarse.nii.gz")
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "t1.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((6, 6, 5), np.uint8), np.eye(4)), tmp_path / "small_seg.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((6, 6, 6), np.uint8), np.eye(4)), tmp_path / "seg.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((6, 6, 6, 2), np.float32), np.eye(4)), tmp_path / "4d.nii.gz")
    prep = MeshNetPreprocessing()
    with pytest.raises(ValueError, match=r"coarse.nii.gz: voxels of \[1.2, 1.0, 1.0\] mm; the model expects 1 mm"):
        prep([tmp_path / "coarse.nii.gz"], tmp_path / "seg.nii.gz")
    with pytest.raises(ValueError, match="small_seg.nii.gz: not on the grid"):
        prep([tmp_path / "t1.nii.gz"], tmp_path / "small_seg.nii.gz")
    with pytest.raises(ValueError, match="4d.nii.gz: a 3-d image expected"):
        prep([tmp_path / "4d.nii.gz"], tmp_path / "seg.nii.gz")
    with pytest.raises(ValueError, match="one T1 image per case"):
        prep([tmp_path / "t1.nii.gz"] * 2, tmp_path / "seg.nii.gz")
    with pytest.raises(ValueError, match="percentiles"):
        MeshNetPreprocessing((99, 2))


def test_parse_topology_reads_brainchop_layer_names(tmp_path):
    """Keras names the tiny model's layers; brainchop's converted models use bare numbers ("19")."""
    spec = [("19", 2, 3, 1, "linear", "relu", True), ("output", 3, 1, 1, "linear", None, True)]
    in_channels, convs = parse_topology({"modelTopology": {"model_config": tiny_topology(spec)}}, tmp_path)
    assert in_channels == 1 and [c.name for c in convs] == ["19", "output"]
    assert convs[0].activations == ("linear", "relu") and convs[1].kernel_size == (1, 1, 1)


# -- The released brainchop models (shared material) -------------------------------------------------------

BRAINCHOP = ["model5_gw_ae", "model18cls", "model30chan18cls", "model21_104class", "model30chan50cls", "mindgrab"]


@pytest.mark.parametrize("name", BRAINCHOP)
def test_every_brainchop_model_loads_strictly(brainchop_dir, name):
    folder = brainchop_dir / name
    model = load_model(name, folder)
    assert model.kind == "meshnet" and model.architecture == "MeshNet"
    labels = json.loads((folder / "colormap.json").read_text())["labels"]
    outputs = model.network.classifier.out_channels
    assert model.details["num_classes"] == outputs
    assert model.details["classes"] == (labels if len(labels) == outputs else None)
    weights = folder / model.details["weights_files"][0]
    assert sum(p.numel() for p in model.network.parameters()) * 4 == weights.stat().st_size
    with torch.no_grad():
        out = model.network(torch.rand(1, 1, 6, 6, 6))
    assert out.shape == (1, outputs, 6, 6, 6) and torch.isfinite(out).all()
    modules = dict(model.network.named_modules())
    assert all(n in modules for n in model.layers) and isinstance(modules["classifier"], torch.nn.Conv3d)


def test_model18cls_finds_the_right_hippocampus_in_a_head_crop(brainchop_dir, tmp_path):
    """brainchop's example head (LIA, 1 mm, conformed) cut to the right hippocampus with 20 voxels around it
    and stored as RAS: after the preprocessing, model18cls labels a hippocampus-sized blob in the subject's
    right hemisphere, with the amygdala in front of it and the temporal horn of the ventricle lateral to it."""
    head = nib.load(brainchop_dir / "t1_crop.nii.gz")
    assert nib.aff2axcodes(head.affine) == ("L", "I", "A")
    start = np.array([72, 113, 74])                  # LIA voxel box of the right hippocampus, 20 voxels around
    box = tuple(slice(s, s + n) for s, n in zip(start, (66, 69, 79)))
    crop = head.slicer[box]
    ras = crop.as_reoriented(nib.orientations.ornt_transform(nib.io_orientation(crop.affine),
                                                             nib.orientations.axcodes2ornt("RAS")))
    assert nib.aff2axcodes(ras.affine) == ("R", "A", "S")
    nib.save(ras, tmp_path / "t1.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros(ras.shape, np.uint8), ras.affine), tmp_path / "seg.nii.gz")
    model = load_model("model18cls", brainchop_dir / "model18cls")
    image, _ = model.preprocess([tmp_path / "t1.nii.gz"], tmp_path / "seg.nii.gz")
    lia = np.asarray(head.dataobj)[box].astype(np.float32)
    np.testing.assert_array_equal(image[0], scale_to_unit(lia, PERCENTILES, Path("crop")))  # back in LIA order
    with torch.no_grad():
        labels = model.network(torch.from_numpy(image)[None])[0].argmax(0).numpy()
    classes = model.details["classes"]

    def largest_blob(name):
        mask = labels == classes.index(name)
        components, n = ndimage.label(mask)
        assert n > 0, f"no {name} at all"
        sizes = ndimage.sum(mask, components, range(1, n + 1))
        k = int(np.argmax(sizes)) + 1
        centre = np.array(ndimage.center_of_mass(components == k)) + start
        return int(sizes[k - 1]), (head.affine @ np.r_[centre, 1])[:3]  # mm^3, world RAS mm

    volume, hippocampus = largest_blob("Hippocampus")
    assert 2000 <= volume <= 5000, volume                       # a hippocampus is about 3-4.5 ml
    assert 15 <= hippocampus[0] <= 35, hippocampus              # right hemisphere (RAS x > 0), off the midline
    _, amygdala = largest_blob("Amygdala")
    assert 5 <= amygdala[1] - hippocampus[1] <= 25, (amygdala, hippocampus)  # in front of it
    assert abs(amygdala[0] - hippocampus[0]) <= 10 and abs(amygdala[2] - hippocampus[2]) <= 10
    _, horn = largest_blob("Inferior-Lateral-Ventricle")
    assert horn[0] > hippocampus[0], (horn, hippocampus)       # the temporal horn lies lateral to it
