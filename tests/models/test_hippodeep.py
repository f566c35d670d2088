"""ccfv.models.hippodeep: hippodeep's hippocampus CNN as a ccfv model.

Without shared material: the shape contract the sampler relies on (patch in, same-size logits out; hooked
maps at 1/4, 1/2 and full resolution, covering the patch), the sigmoid-as-two-logits head, strict loading
and its errors, detection by state-dict names, the z-scoring preprocessing's orientation, seeded random
copies. With it: the released weights load strictly and reach Dice > 0.7 zero-shot on real MSD cases.
"""
from __future__ import annotations

import dataclasses
import glob
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ccfv.models import ModelError, TorchModel, load_model, random_copy
from ccfv.models.hippodeep import HOOKED_LAYERS, Hippodeep, HippodeepPreprocessing, hippodeep_model, is_hippodeep, load


def seeded_network(seed: int = 0) -> Hippodeep:
    torch.manual_seed(seed)
    network = Hippodeep()
    with torch.no_grad():  # batch-norm statistics that are not the identity, as trained ones are not
        for bn in (network.bn1, network.bn2):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
    return network.eval()


def save_weights(path: Path, network: Hippodeep | None = None) -> Path:
    torch.save((network or seeded_network()).state_dict(), path)
    return path


def upstream_forward(net: Hippodeep, x: torch.Tensor) -> torch.Tensor:
    """Upstream's HippoModel.forward (hippodeep.py at 310305f), transcribed line by line: valid convolutions,
    input of side 4k+4, sigmoid output 4 voxels smaller."""
    x = F.relu(net.conv0a_0(x))
    x = F.relu(net.conv0a_1(x))
    x = F.relu(net.conv0a(x))
    out_conv_f1 = x = F.relu(net.convf1(x))
    out_maxpool1 = x = net.maxpool1(x)
    x = net.bn1(x)
    x = F.relu(net.convout0(x))
    x = net.convout1(x)
    x = x + out_maxpool1
    x = F.relu(x)
    out_maxpool2 = x = net.maxpool2(x)
    x = net.bn2(x)
    x = F.relu(net.convout2p(x))
    x = net.convout2(x)
    x = x + out_maxpool2
    x = F.relu(x)
    x = F.relu(net.convlx3(x))
    x = F.interpolate(x, scale_factor=2, mode="nearest")
    x = F.relu(net.convlx5(x))
    x = F.interpolate(x, scale_factor=2, mode="nearest")
    x = F.relu(net.convlx7(x))
    out_output1 = x = torch.sigmoid(net.convlx8(x))
    x = torch.sigmoid(net.blur(x))
    x = x * out_conv_f1
    x = F.leaky_relu(net.conv_extract(x))
    x = torch.cat([out_output1, x], dim=1)
    x = F.relu(net.convmix(x))
    return torch.sigmoid(net.convout1x(x))


def test_padded_network_is_upstreams_on_the_replicated_input():
    """softmax of our logits (0, z) is upstream's sigmoid output on the input padded by 2 voxels (edge
    replication), voxel for voxel: same wiring, and the output lies on the input's grid."""
    net = seeded_network()
    x = torch.randn(2, 1, 12, 16, 20)
    with torch.no_grad():
        logits = net(x)
        expected = upstream_forward(net, F.pad(x, (2,) * 6, mode="replicate"))
    assert logits.shape == (2, 2, 12, 16, 20)
    assert torch.count_nonzero(logits[:, 0]) == 0  # background logit 0, hippocampus logit z
    torch.testing.assert_close(torch.softmax(logits, 1)[:, 1:], expected, rtol=1e-5, atol=1e-6)


def test_interior_output_ignores_the_padding():
    """Far from the edges (more than the receptive field's reach, about 30 voxels) the output does not depend
    on the padding: cutting 4 voxels (one 1/4-resolution cell) off one side shifts the interior output by
    exactly 4 voxels, as it would for upstream's valid network on a larger input."""
    net = seeded_network(1)
    x = torch.randn(1, 1, 96, 12, 12)
    with torch.no_grad():
        whole, cut = net(x)[0, 1], net(x[:, :, 4:])[0, 1]
    torch.testing.assert_close(cut[36:56], whole[40:60], rtol=1e-4, atol=1e-5)
    assert not torch.allclose(cut[:4], whole[4:8], rtol=1e-4, atol=1e-5)  # at the cut, the padding shows


def test_hooked_layers_cover_the_patch_at_their_scales():
    net = seeded_network()
    modules = dict(net.named_modules())
    shapes = {}

    def hook(name):
        def record(module, inputs, output):
            shapes[name] = tuple(output.shape)
        return record

    handles = [modules[n].register_forward_hook(hook(n)) for n in HOOKED_LAYERS]
    with torch.no_grad():
        net(torch.randn(1, 1, 16, 24, 32))
    for h in handles:
        h.remove()
    assert shapes == {"relu_lx3": (1, 48, 4, 6, 8), "relu_lx5": (1, 48, 8, 12, 16),
                      "relu_lx7": (1, 16, 16, 24, 32), "relu_mix": (1, 16, 16, 24, 32)}


def test_sides_must_be_multiples_of_four():
    with pytest.raises(ValueError, match="multiples of 4"):
        seeded_network()(torch.zeros(1, 1, 12, 16, 18))


def test_a_head_with_several_classes_gives_their_logits():
    net = seeded_network()
    net.convout1x = torch.nn.Conv3d(16, 3, 1)  # what fine-tuning does to details["head"]
    with torch.no_grad():
        assert net(torch.zeros(1, 1, 8, 8, 8)).shape == (1, 3, 8, 8, 8)


def test_loads_strictly_and_is_detected_by_its_names(tmp_path):
    weights = save_weights(tmp_path / "hippo.pt")
    model = load_model("hippo", weights)
    assert model.kind == "hippodeep" and model.checkpoint == weights and model.layers == list(HOOKED_LAYERS)
    assert model.details["head"] == "convout1x" and model.details["frozen_batch_norm"] == ["bn1", "bn2"]
    assert model.network.bn1.momentum == 1 and not model.network.training
    for key, value in torch.load(weights, weights_only=True).items():
        assert torch.equal(model.network.state_dict()[key], value)
    assert is_hippodeep(weights)
    nnunet_named = tmp_path / "checkpoint_final.pth"
    nnunet_named.write_bytes(weights.read_bytes())
    assert not is_hippodeep(nnunet_named)  # nnU-Net's checkpoint names are never read as hippodeep


@pytest.mark.parametrize("change, reason", [
    (lambda s: s.pop("convlx5.bias"), r'Missing key\(s\) in state_dict: "convlx5.bias"'),
    (lambda s: s.update(extra=torch.zeros(1)), r'Unexpected key\(s\) in state_dict: "extra"'),
    (lambda s: s.update({"convmix.weight": torch.zeros(16, 48, 3, 3, 1)}), "size mismatch for convmix.weight"),
])
def test_strict_loading_names_the_file(tmp_path, change, reason):
    state = seeded_network().state_dict()
    change(state)
    torch.save(state, tmp_path / "hippo.pt")
    with pytest.raises(ModelError, match=reason) as caught:
        load("hippo", tmp_path / "hippo.pt")
    assert str(caught.value).startswith(f"{tmp_path / 'hippo.pt'}: does not fit hippodeep's network")
    assert is_hippodeep(tmp_path / "hippo.pt") == reason.startswith("size")  # the names decide detection


def test_unreadable_files_and_bad_patches_are_model_errors(tmp_path):
    (tmp_path / "text.pt").write_text("not a torch file")
    with pytest.raises(ModelError, match="text.pt: not a readable torch state dict"):
        load("x", tmp_path / "text.pt")
    assert not is_hippodeep(tmp_path / "text.pt")
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(ModelError, match="list.pt: not a state dict"):
        load("x", tmp_path / "list.pt")
    with pytest.raises(ModelError, match="missing"):
        load("x", tmp_path / "nope.pt")
    weights = save_weights(tmp_path / "hippo.pt")
    with pytest.raises(ModelError, match="multiples of 4"):
        load("x", weights, patch_size=(48, 62, 48))
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ModelError, match="neither a MONAI bundle"):  # not hippodeep: on to nnU-Net, which fails
        load_model("x", tmp_path / "other.pt")


def test_torch_model_wrapper_ranks_like_the_loader(tmp_path):
    spec = hippodeep_model(save_weights(tmp_path / "hippo.pt"), name="hd")
    assert isinstance(spec, TorchModel)
    loaded = spec.load()
    assert loaded.layers == list(HOOKED_LAYERS) and loaded.patch_size == [48, 64, 48]
    assert loaded.num_input_channels == 1 and loaded.modalities == ["T1"] and loaded.details["head"] == "convout1x"


def test_preprocessing_z_scores_in_ras_order(tmp_path):
    """A volume known in RAS order, stored as LPI (three flips, written out by hand), comes back in RAS
    order and z-scored; its label with it."""
    rng = np.random.default_rng(0)
    ras = rng.normal(100, 20, size=(4, 5, 6)).astype(np.float32)
    lpi = ras[::-1, ::-1, ::-1].copy()           # LPI voxel (a, b, c) is RAS voxel (3 - a, 4 - b, 5 - c)
    affine = np.diag([-1.0, -1.0, -1.0, 1.0])
    affine[:3, 3] = [3, 4, 5]
    nib.save(nib.Nifti1Image(lpi, affine), tmp_path / "t1.nii.gz")
    nib.save(nib.Nifti1Image((lpi > 100).astype(np.uint8), affine), tmp_path / "seg.nii.gz")
    image, seg = HippodeepPreprocessing()([tmp_path / "t1.nii.gz"], tmp_path / "seg.nii.gz")
    np.testing.assert_allclose(image[0], (ras - ras.mean()) / ras.std(), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(seg, ras > 100)
    image_las, _ = HippodeepPreprocessing(("L", "A", "S"))([tmp_path / "t1.nii.gz"], tmp_path / "seg.nii.gz")
    np.testing.assert_allclose(image_las[0], image[0][::-1], rtol=1e-6)
    with pytest.raises(ValueError, match="axes must be"):
        HippodeepPreprocessing(("A", "R", "S"))


def test_random_copy_is_seeded_and_leaves_the_random_state_alone(tmp_path):
    model = load("hd", save_weights(tmp_path / "hippo.pt"))
    state = torch.get_rng_state()
    a, b, c = random_copy(model, 7), random_copy(model, 7), random_copy(model, 8)
    assert torch.equal(torch.get_rng_state(), state)
    sa, sb, sc, s0 = (m.network.state_dict() for m in (a, b, c, model))
    for key in s0:
        assert torch.equal(sa[key], sb[key])
        if key.endswith(("conv0a.weight", "convf1.weight", "convmix.weight", "convout1x.bias")):
            assert not torch.equal(sa[key], s0[key]) and not torch.equal(sa[key], sc[key])
    assert torch.equal(sa["bn1.running_mean"], torch.zeros(48)) and torch.equal(sa["bn1.running_var"], torch.ones(48))
    assert a.details["random_copy_of"] == "hd" and a.sha256 is None and not a.network.training
    with pytest.raises(ModelError, match="random copy"):
        random_copy(dataclasses.replace(model, kind="nnunet"), 0)


# -- The released weights on real data (shared material) ----------------------------------------------------


def test_released_weights_load_strictly(hippodeep_weights):
    model = load_model("hippodeep", hippodeep_weights)
    assert model.kind == "hippodeep" and is_hippodeep(hippodeep_weights)
    released = torch.load(hippodeep_weights, map_location="cpu", weights_only=True)
    assert set(released) == set(model.network.state_dict())


def test_zero_shot_dice_on_real_hippocampus_crops(hippodeep_weights, task04_dir):
    """hippodeep as loaded (RAS, z-scored) on the first three MSD cases, each padded to multiples of 4
    around its centre: Dice of its hippocampus against anterior + posterior above 0.7 (measured 0.79-0.84)."""
    model = load_model("hippodeep", hippodeep_weights)
    images = sorted(glob.glob(str(task04_dir / "imagesTr" / "hippocampus_*.nii.gz")))[:3]
    assert len(images) == 3
    for image_file in images:
        image, seg = model.preprocess([Path(image_file)], task04_dir / "labelsTr" / Path(image_file).name)
        pads = [(0, 0)] + [((-s % 4) // 2, (-s % 4) - (-s % 4) // 2) for s in image.shape[1:]]
        with torch.no_grad():
            labels = model.network(torch.from_numpy(np.pad(image, pads))[None])[0].argmax(0).numpy()
        labels = labels[tuple(slice(p[0], p[0] + s) for p, s in zip(pads[1:], image.shape[1:]))]
        predicted, truth = labels == 1, seg > 0
        dice = 2 * (predicted & truth).sum() / (predicted.sum() + truth.sum())
        assert dice > 0.7, (image_file, dice)


def test_a_random_copy_can_be_ranked_from_python(tmp_path):
    """ccfv.rank_models takes in-memory models as TorchModel: a random copy (no file) becomes one."""
    copy_ = random_copy(load("hd", save_weights(tmp_path / "hippo.pt")), 5)
    spec = TorchModel.from_loaded(copy_)
    loaded = spec.load()
    assert spec.name == "hd-random5" and loaded.network is copy_.network and loaded.layers == copy_.layers
    assert loaded.preprocess_key == copy_.preprocess_key and loaded.details["seed"] == 5
    with pytest.raises(ModelError, match="no preprocess callable"):
        TorchModel.from_loaded(dataclasses.replace(copy_, preprocess=None))
