"""The fine-tuning protocol (ccfv.finetune.protocol) on a tiny network and tiny arrays: the new head, frozen
batch norm, nnU-Net's patch sampling, the loss falling, determinism per seed, and resuming after a kill to
the weights of an uninterrupted run."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from ccfv.bank.checkpoints import read_checkpoint
from ccfv.finetune.protocol import (
    CHECKPOINT_FORMAT,
    FinetuneProtocol,
    PatchSampler,
    normalisation_with_statistics,
    replace_head,
    set_training_mode,
    train,
    weights_digest,
)

from .conftest import TinyNet

CPU = torch.device("cpu")


def blob_cases(n: int = 4, shape=(20, 20, 12), seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """(image [1, *shape], seg) pairs: a bright cube of label 1 and a dimmer one of label 2 in noise."""
    rng = np.random.default_rng(seed)
    cases = []
    for _ in range(n):
        seg = np.zeros(shape, dtype=np.int16)
        a = rng.integers(0, [s - 5 for s in shape])
        seg[a[0]:a[0] + 5, a[1]:a[1] + 5, a[2]:a[2] + 4] = 1
        b = rng.integers(0, [s - 4 for s in shape])
        box = seg[b[0]:b[0] + 4, b[1]:b[1] + 4, b[2]:b[2] + 3]
        box[box == 0] = 2
        image = rng.standard_normal(shape).astype(np.float32) + 3.0 * (seg == 1) + 1.5 * (seg == 2)
        cases.append((image[None], seg))
    return cases


def fresh_network(seed: int = 0) -> tuple[nn.Module, list[str]]:
    torch.manual_seed(seed)
    network = TinyNet()
    with torch.no_grad():
        network.enc[1].running_mean.fill_(0.5)
        network.enc[1].running_var.fill_(2.0)
    return network, replace_head(network, "head", 3, "zero")


FAST = dict(learning_rate=1e-2, head_learning_rate=1e-2)


def run(network, head, protocol, seed, tmp_path, cases=None, name="ck.pth", identity=None):
    sampler = PatchSampler(cases or blob_cases(), [1, 2], [8, 8, 8], protocol, seed)
    return train(network, head, sampler, protocol, seed, tmp_path / name, identity or {"run": 1}, CPU)


# --- the head ------------------------------------------------------------------------------------------------

def test_the_head_gets_the_target_class_count_and_keeps_its_geometry():
    network = TinyNet(classes=5)
    names = replace_head(network, "head", 3, "zero")
    assert isinstance(network.head, nn.Conv3d) and network.head.out_channels == 3 and network.head.in_channels == 8
    assert network.head.kernel_size == (1, 1, 1)
    assert names == ["head.weight", "head.bias"]
    assert not network.head.weight.any() and not network.head.bias.any()
    assert network(torch.zeros(1, 1, 8, 8, 8)).shape == (1, 3, 8, 8, 8)
    # a random head: PyTorch's initialisation drawn from the seed, the caller's random state untouched
    a, b, c = TinyNet(), TinyNet(), TinyNet()
    state = torch.get_rng_state()
    replace_head(a, "head", 4, "random", seed=1)
    replace_head(b, "head", 4, "random", seed=1)
    replace_head(c, "head", 4, "random", seed=2)
    assert torch.equal(a.head.weight, b.head.weight) and not torch.equal(a.head.weight, c.head.weight)
    assert torch.equal(torch.get_rng_state(), state)


def test_heads_of_every_kind_are_replaced_inside_their_module():
    """nnU-Net's seg_layers (a ModuleList of 1x1x1 convolutions), UNETR's UnetOutBlock (a conv inside a
    Convolution), a MeshNet-like dilated 'same' classifier."""
    from monai.networks.nets import UNETR

    class WithSegLayers(nn.Module):
        def __init__(self):
            super().__init__()
            self.decoder = nn.Module()
            self.decoder.seg_layers = nn.ModuleList([nn.Conv3d(8, 2, 1), nn.Conv3d(4, 2, 1)])

    net = WithSegLayers()
    names = replace_head(net, "decoder.seg_layers", 4)
    assert [m.out_channels for m in net.decoder.seg_layers] == [4, 4]
    assert [m.in_channels for m in net.decoder.seg_layers] == [8, 4]
    assert names == ["decoder.seg_layers.0.weight", "decoder.seg_layers.0.bias", "decoder.seg_layers.1.weight",
                     "decoder.seg_layers.1.bias"]

    unetr = UNETR(in_channels=1, out_channels=2, img_size=(16, 16, 16), feature_size=4, hidden_size=24, mlp_dim=48,
                  num_heads=3)
    replace_head(unetr, "out", 3)
    assert unetr.out.conv.conv.out_channels == 3
    assert unetr.eval()(torch.zeros(1, 1, 16, 16, 16)).shape == (1, 3, 16, 16, 16)

    same = nn.Sequential(nn.Conv3d(1, 4, 3, padding="same", dilation=2), nn.Conv3d(4, 7, 3, padding="same",
                                                                                      dilation=2, bias=False))
    replace_head(same, "1", 2)
    assert same[1].padding == "same" and same[1].dilation == (2, 2, 2) and same[1].bias is None
    assert same(torch.zeros(1, 1, 6, 6, 6)).shape == (1, 2, 6, 6, 6)


@pytest.mark.parametrize("head, classes, init, message", [
    (None, 3, "zero", "names no head module"),
    ("nope", 3, "zero", "'nope' is not a module of TinyNet"),
    ("enc.2", 3, "zero", "holds no 3-d convolution"),
    ("head", 1, "zero", "at least one class"),
    ("head", 3, "xavier", "head init 'xavier'"),
])
def test_bad_heads_are_errors_naming_the_model(head, classes, init, message):
    with pytest.raises(ValueError, match=message) as info:
        replace_head(TinyNet(), head, classes, init, where="mine (/models/mine)")
    assert str(info.value).startswith("mine (/models/mine)")


def test_a_grouped_head_is_refused():
    network = nn.Sequential(nn.Conv3d(4, 4, 1, groups=2))
    with pytest.raises(ValueError, match="grouped"):
        replace_head(network, "0", 3)


# --- settings and patches -------------------------------------------------------------------------------------

@pytest.mark.parametrize("field, value", [("iterations", 0), ("batch_size", -1), ("learning_rate", 0.0),
                                          ("head_learning_rate", float("nan")), ("oversample_foreground", 1.5),
                                          ("head_init", "ones"), ("checkpoint_every", 2.5), ("poly_exponent", -1)])
def test_bad_settings_are_errors_naming_the_setting(field, value):
    with pytest.raises(ValueError, match=f"fine-tuning {field}: "):
        FinetuneProtocol(**{field: value})


@pytest.mark.parametrize("settings, message", [
    (dict(learning_rate_grid=[1e-3]), "two or more different rates"),
    (dict(learning_rate_grid=[1e-3, 1e-3]), "two or more different rates"),
    (dict(learning_rate_grid=[1e-3, -1.0]), "-1.0 is not a positive number"),
    (dict(learning_rate_grid="1e-3"), "is not a list of rates"),
    (dict(learning_rate_grid=[1e-3, 1e-4], iterations=25, selection_iterations=25), "is not in \\[2, iterations"),
    (dict(learning_rate_grid=[1e-3, 1e-4], selection_iterations=1), "is not in \\[2, iterations"),
])
def test_a_bad_learning_rate_grid_is_an_error_naming_it(settings, message):
    with pytest.raises(ValueError, match=message):
        FinetuneProtocol(**settings)


def test_the_rate_with_the_lowest_loss_over_the_pilots_second_half_goes_on():
    protocol = FinetuneProtocol(iterations=10, learning_rate_grid=[3e-3, 1e-3, 1e-4], selection_iterations=4)
    assert protocol.learning_rate_grid == (3e-3, 1e-3, 1e-4)
    # the window is iterations 2 and 3: the first half (and anything after the pilot) does not count
    losses = {3e-3: [0.1, 0.1, 1.0, 1.0, 0.0], 1e-3: [5.0, 5.0, 0.6, 0.9], 1e-4: [0.0, 0.0, 0.7, 0.7]}
    assert protocol.select_rate(losses) == 1e-4
    assert protocol.select_rate({**losses, 1e-3: [9, 9, 0.7, 0.7]}) == 1e-3  # a tie keeps the rate listed first
    assert protocol.at_rate(1e-4) == FinetuneProtocol(iterations=10, learning_rate=1e-4, selection_iterations=4)
    # without a grid the identity is what it was before grids existed (earlier results stay reused)
    assert set(FinetuneProtocol().identity()) == {"iterations", "batch_size", "learning_rate", "head_learning_rate",
                                                  "poly_exponent", "oversample_foreground", "head_init",
                                                  "gradient_clip"}
    assert protocol.identity()["learning_rate_grid"] == [3e-3, 1e-3, 1e-4]
    assert protocol.identity()["selection_iterations"] == 4


def test_a_pilot_stops_where_asked_and_its_run_continues_to_the_weights_of_an_uninterrupted_one(tmp_path):
    protocol = FinetuneProtocol(iterations=9, checkpoint_every=4, **FAST)
    cases = blob_cases()
    start, head = fresh_network()

    def sampler():
        return PatchSampler(cases, [1, 2], [8, 8, 8], protocol, 2)

    whole = copy.deepcopy(start)
    expected = train(whole, head, sampler(), protocol, 2, tmp_path / "whole.pth", {"run": 1}, CPU)
    pilot = train(copy.deepcopy(start), head, sampler(), protocol, 2, tmp_path / "run.pth", {"run": 1}, CPU,
                  stop_at=5)
    assert len(pilot["losses"]) == 5 and pilot["iteration"] == 5 and pilot["losses"] == expected["losses"][:5]
    assert read_checkpoint(tmp_path / "run.pth")["iteration"] == 5
    again = train(copy.deepcopy(start), head, sampler(), protocol, 2, tmp_path / "run.pth", {"run": 1}, CPU,
                  stop_at=5)
    assert again["iterations_run"] == 0 and again["losses"] == pilot["losses"]
    resumed = copy.deepcopy(start)
    rest = train(resumed, head, sampler(), protocol, 2, tmp_path / "run.pth", {"run": 1}, CPU)
    assert rest["resumed_from"] == 5 and rest["losses"] == expected["losses"]
    assert all(torch.equal(v, whole.state_dict()[k]) for k, v in resumed.state_dict().items())


def test_poly_schedule_and_foreground_oversampling_follow_nnunet():
    protocol = FinetuneProtocol(iterations=10, batch_size=2)
    assert protocol.learning_rate_factor(0) == 1.0
    assert protocol.learning_rate_factor(5) == pytest.approx(0.5 ** 0.9)
    # nnU-Net's _oversample_last_XX_percent with 0.33: in a batch of 2 the second patch, of 3 the third
    assert [protocol.forced_foreground(j) for j in range(2)] == [False, True]
    assert [FinetuneProtocol(batch_size=3).forced_foreground(j) for j in range(3)] == [False, False, True]
    assert [FinetuneProtocol(batch_size=4).forced_foreground(j) for j in range(4)] == [False, False, False, True]


def test_patches_are_drawn_from_the_seed_and_iteration_alone_and_forced_ones_hold_foreground():
    cases = blob_cases(n=5)
    protocol = FinetuneProtocol(batch_size=4, oversample_foreground=0.5)
    sampler = PatchSampler(cases, [1, 2], [8, 8, 8], protocol, seed=3)
    images, targets = sampler.batch(7)
    assert images.shape == (4, 1, 8, 8, 8) and images.dtype == np.float32
    assert targets.shape == (4, 1, 8, 8, 8) and targets.dtype == np.int64
    again_images, again_targets = PatchSampler(cases, [1, 2], [8, 8, 8], protocol, seed=3).batch(7)
    assert np.array_equal(images, again_images) and np.array_equal(targets, again_targets)
    assert not np.array_equal(images, sampler.batch(8)[0])
    for iteration in range(30):
        _, targets = sampler.batch(iteration)
        assert all(targets[j].max() > 0 for j in (2, 3)), iteration  # the forced half
        assert set(np.unique(targets)) <= {0, 1, 2}
    # other grids (another model's convention) draw the same cases and decisions: same case list, other patch
    other = PatchSampler([(i[:, ::-1].copy(), s[::-1].copy()) for i, s in cases], [1, 2], [6, 10, 8], protocol, 3)
    rng = np.random.default_rng([3, 7])
    assert list(rng.integers(0, 5, size=4)) == list(np.random.default_rng([3, 7]).integers(0, 5, size=4))
    assert other.batch(7)[0].shape == (4, 1, 6, 10, 8)


def test_patches_follow_nnunet_bounds_and_pad_outside_the_case():
    image = np.arange(4 * 4 * 4, dtype=np.float32).reshape(1, 4, 4, 4) + 1
    seg = np.zeros((4, 4, 4), dtype=np.int16)
    seg[3, 3, 3] = 1
    sampler = PatchSampler([(image, seg)], [1], [8, 4, 2], FinetuneProtocol(), seed=0)
    # axis 0: patch 8 > size 4: corner in [-2, -2]; axis 1: [0, 0]; axis 2: [0, 2]
    assert sampler._bounds((4, 4, 4)) == ([-2, 0, 0], [-2, 0, 2])
    assert sampler.corner(0, False, np.array([0.0, 0.0, 0.99, 0.99, 0.99])) == [-2, 0, 2]
    # forced: centred on the foreground voxel (3, 3, 3), clipped at the lower bound only
    assert sampler.corner(0, True, np.array([0.0, 0.0, 0.5, 0.5, 0.5])) == [-1, 1, 2]
    patch, target = sampler.crop(0, [-2, 0, 2])
    assert np.all(patch[0, :2] == 0) and np.all(patch[0, 6:] == 0)  # zero outside the case
    assert np.array_equal(patch[0, 2:6], image[0, :, :, 2:4])
    assert target[5, 3, 1] == 1 and target.sum() == 1
    # a label value that is not a class (nnU-Net's -1 outside the non-zero region) is background
    seg[0, 0, 0] = -1
    assert PatchSampler([(image, seg)], [1], [4, 4, 4], FinetuneProtocol(), 0).crop(0, [0, 0, 0])[1][0, 0, 0] == 0


def test_sampler_input_errors():
    cases = blob_cases(n=1)
    with pytest.raises(ValueError, match="no training case"):
        PatchSampler([], [1], [8, 8, 8], FinetuneProtocol(), 0)
    with pytest.raises(ValueError, match="foreground label values"):
        PatchSampler(cases, [0, 1], [8, 8, 8], FinetuneProtocol(), 0)
    with pytest.raises(ValueError, match="training case 0: image"):
        PatchSampler([(cases[0][0], cases[0][1][:-1])], [1], [8, 8, 8], FinetuneProtocol(), 0)


# --- training -------------------------------------------------------------------------------------------------

def test_batch_norm_statistics_stay_frozen_while_the_rest_trains(tmp_path):
    network, head = fresh_network()
    bn = network.enc[1]
    before = {k: v.clone() for k, v in network.state_dict().items()}
    result = run(network, head, FinetuneProtocol(iterations=6, **FAST), 0, tmp_path)
    after = network.state_dict()
    for key in ("enc.1.running_mean", "enc.1.running_var", "enc.1.num_batches_tracked"):
        assert torch.equal(before[key], after[key]), key
    assert not torch.equal(before["enc.1.weight"], after["enc.1.weight"])  # its affine weights train
    assert not torch.equal(before["enc.0.weight"], after["enc.0.weight"])
    assert result["frozen_normalisation"] == ["enc.1"] and not network.training
    set_training_mode(network)
    assert network.training and network.enc[0].training and not bn.training
    assert normalisation_with_statistics(nn.Sequential(nn.InstanceNorm3d(4), nn.BatchNorm3d(4))) == ["1"]


def test_the_loss_falls(tmp_path):
    network, head = fresh_network()
    losses = run(network, head, FinetuneProtocol(iterations=40, **FAST), 0, tmp_path)["losses"]
    assert len(losses) == 40 and all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < 0.75 * np.mean(losses[:5]), losses


def test_same_seed_same_weights_other_seed_other_weights(tmp_path):
    protocol = FinetuneProtocol(iterations=8, **FAST)
    nets = []
    for i, seed in enumerate((0, 0, 1)):
        network, head = fresh_network()
        losses = run(network, head, protocol, seed, tmp_path, name=f"{i}.pth")["losses"]
        nets.append((network.state_dict(), losses))
    (a, la), (b, lb), (c, _) = nets
    assert all(torch.equal(a[k], b[k]) for k in a) and la == lb
    assert not all(torch.equal(a[k], c[k]) for k in a)


class Killed(Exception):
    pass


class KillAfter(PatchSampler):
    """A sampler whose process 'dies' when asked for iteration ``kill_at`` (after the checkpoint before it)."""

    kill_at = 6

    def batch(self, iteration):
        if iteration == self.kill_at:
            raise Killed
        return super().batch(iteration)


def test_a_killed_run_resumes_from_its_checkpoint_to_the_weights_of_an_uninterrupted_one(tmp_path):
    protocol = FinetuneProtocol(iterations=10, checkpoint_every=4, **FAST)
    cases = blob_cases()
    start, head = fresh_network()
    identity = {"weights": weights_digest(start)}

    whole = copy.deepcopy(start)
    expected = train(whole, head, PatchSampler(cases, [1, 2], [8, 8, 8], protocol, 5), protocol, 5,
                     tmp_path / "whole.pth", identity, CPU)

    killed = copy.deepcopy(start)
    with pytest.raises(Killed):
        train(killed, head, KillAfter(cases, [1, 2], [8, 8, 8], protocol, 5), protocol, 5, tmp_path / "run.pth",
              identity, CPU)
    state = read_checkpoint(tmp_path / "run.pth")  # weights_only: tensors and plain data
    assert state["format"] == CHECKPOINT_FORMAT and state["iteration"] == 4 and len(state["losses"]) == 4

    messages = []
    resumed = train(copy.deepcopy(start), head, PatchSampler(cases, [1, 2], [8, 8, 8], protocol, 5), protocol, 5,
                    tmp_path / "run.pth", identity, CPU, log=messages.append)
    assert resumed["resumed_from"] == 4 and resumed["iterations_run"] == 6
    assert any("resuming from" in m and "at iteration 4 of 10" in m for m in messages)
    assert resumed["losses"] == expected["losses"]
    final = read_checkpoint(tmp_path / "run.pth")["network"]
    reference = whole.state_dict()
    assert all(torch.equal(final[k], reference[k]) for k in reference)

    # a checkpoint of other settings is not resumed: the run starts over, and says why
    messages.clear()
    other = train(copy.deepcopy(start), head, PatchSampler(cases, [1, 2], [8, 8, 8], protocol, 5), protocol, 5,
                  tmp_path / "run.pth", {"weights": "something else"}, CPU, log=messages.append)
    assert other["resumed_from"] == 0 and any("not resuming" in m for m in messages)


def test_a_network_whose_output_does_not_fit_is_an_error(tmp_path):
    network, head = fresh_network()
    network.head = nn.Conv3d(8, 3, 3, stride=2)  # halves the grid
    with pytest.raises(ValueError, match=r"fine-tuning needs logits \[B, 3, \*patch\]"):
        run(network, ["head.weight", "head.bias"], FinetuneProtocol(iterations=1), 0, tmp_path)
    with pytest.raises(ValueError, match="not trainable parameters"):
        run(fresh_network()[0], ["nothing.weight"], FinetuneProtocol(iterations=1), 0, tmp_path)
