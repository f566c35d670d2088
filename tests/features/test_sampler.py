"""Tests for ccfv.features.sampler: voxel choice, nnU-Net tiling, window assignment, and the sparse decoder
feature sampler checked against a dense, obviously-correct reference on a tiny nnU-Net PlainConvUNet."""

from __future__ import annotations

import hashlib
import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from dynamic_network_architectures.architectures.unet import PlainConvUNet
from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window
from torch import nn

from ccfv.features.file import read_features
from ccfv.features.sampler import case_rng, sample_case, sample_dataset
from ccfv.features.voxels import _draw, _nth_true, choose_voxels, class_sample_counts, layer_sample_count
from ccfv.features.windows import assign_windows, interpolate_at, pad_to_patch, window_starts
from ccfv.scores.views import ccfv_layers, head_samples

torch.set_num_threads(1)  # robust when other jobs share the two cores

PATCH = (16, 24, 16)  # non-cubic, divisible by the total stride 8
LAYERS = ["decoder.stages.0", "decoder.stages.1", "decoder.stages.2"]  # 1/4, 1/2, 1/1 resolution
RATIOS = [0.25, 0.5, 1.0]
BUDGETS = {"total": 240, "minimum": 20, "n_global": 160, "n_background": 120}
CLASS_IDS = [1, 2, 3]  # class 3 never occurs in the synthetic cases


def make_unet(seed: int = 0, deep_supervision: bool = False) -> PlainConvUNet:
    torch.manual_seed(seed)
    return PlainConvUNet(
        input_channels=1, n_stages=4, features_per_stage=[4, 8, 16, 16], conv_op=nn.Conv3d,
        kernel_sizes=3, strides=[[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]], n_conv_per_stage=1,
        num_classes=3, n_conv_per_stage_decoder=1, conv_bias=True, norm_op=nn.InstanceNorm3d,
        norm_op_kwargs={"eps": 1e-5, "affine": True}, nonlin=nn.LeakyReLU,
        nonlin_kwargs={"inplace": True}, deep_supervision=deep_supervision,
    )


def make_case(shape, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A random image and a label map with a big class 1, a small class 2 and a -1 border."""
    rng = np.random.default_rng(seed)
    image = rng.normal(size=(1, *shape)).astype(np.float32)
    seg = np.zeros(shape, dtype=np.int16)
    d, h, w = shape
    seg[d // 4: 3 * d // 4, h // 4: 3 * h // 4, w // 4: 3 * w // 4] = 1
    seg[d // 2: d // 2 + 3, h // 2: h // 2 + 4, w // 2: w // 2 + 2] = 2
    seg[0, :, :] = -1
    return image, seg


@pytest.fixture(scope="module")
def net() -> PlainConvUNet:
    return make_unet(0).eval()


def hooks_left(network: nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in network.modules())


# --------------------------------------------------------------------------------------------------
# The dense reference: every window in full, F.interpolate on whole maps, loops over voxels.
# --------------------------------------------------------------------------------------------------


def reference_window(point, starts, patch):
    """Loop version of the rule: per axis the start whose centre is nearest, ties to the lower."""
    chosen = []
    for axis in range(3):
        best, best_distance = None, None
        for s in starts[axis]:
            distance = abs((point[axis] + 0.5) - (s + patch[axis] / 2))
            if best is None or distance < best_distance:
                best, best_distance = s, distance
        chosen.append(int(best))
    return tuple(chosen)


def dense_reference(network, layer_names, image, coords, patch, step=0.5):
    """{layer: {key: [n, C]}} at every chosen voxel, and {key: probs [n, K]}, the slow way."""
    shape = image.shape[1:]
    pad = [max(p - s, 0) for s, p in zip(shape, patch)]
    below = [q // 2 for q in pad]
    padded = np.pad(image, [(0, 0)] + [(b, q - b) for b, q in zip(below, pad)])
    starts = compute_steps_for_sliding_window(padded.shape[1:], patch, step)
    modules = dict(network.named_modules())
    captured = {}
    handles = [modules[n].register_forward_hook(lambda m, i, o, n=n: captured.__setitem__(n, o.clone()))
               for n in layer_names]
    full = {}
    try:
        with torch.no_grad():
            for window in itertools.product(*starts):
                sl = tuple(slice(s, s + p) for s, p in zip(window, patch))
                x = torch.from_numpy(np.ascontiguousarray(padded[(slice(None), *sl)]))[None]
                logits = network(x)
                maps = {n: F.interpolate(captured[n], size=patch, mode="trilinear", align_corners=False)[0]
                        for n in layer_names}
                maps["probs"] = torch.softmax(logits, dim=1)[0]
                full[window] = maps
    finally:
        for h in handles:
            h.remove()
    out = {n: {} for n in [*layer_names, "probs"]}
    for key, points in coords.items():
        rows = {n: [] for n in out}
        for point in points:
            p = [int(c) + b for c, b in zip(point, below)]
            window = reference_window(p, starts, patch)
            assert all(s <= q < s + size for s, q, size in zip(window, p, patch))
            local = tuple(q - s for q, s in zip(p, window))
            for n in out:
                rows[n].append(full[window][n][(slice(None), *local)].numpy())
        for n in out:
            out[n][key] = np.stack(rows[n]) if rows[n] else np.zeros((0, 1), np.float32)
    return out


# --------------------------------------------------------------------------------------------------
# Sparse sampler == dense reference
# --------------------------------------------------------------------------------------------------


def test_sample_case_matches_dense_reference_on_many_batches(net):
    shape = (37, 50, 21)
    image, seg = make_case(shape, seed=1)
    coords = choose_voxels(seg, CLASS_IDS, rng=np.random.default_rng(5), **BUDGETS)
    keys = list(coords)
    starts = window_starts(shape, PATCH, 0.5)
    batches_seen = []
    samples = sample_case(net, LAYERS, image, coords, patch_size=PATCH, batch_size=2, layer_ratios=RATIOS,
                          probs_keys=keys, progress=lambda done, total: batches_seen.append((done, total)))
    reference = dense_reference(net, LAYERS, image, coords, PATCH)

    n_batches = batches_seen[-1][1]
    assert samples.windows_total == np.prod([len(s) for s in starts]) == 32
    assert n_batches == len(batches_seen) >= 4
    assert samples.channels == [16, 8, 4] and samples.num_output_channels == 3
    for index, name in enumerate(LAYERS):
        for key in keys:
            n_l = layer_sample_count(len(coords[key]), RATIOS[index])
            got = samples.features[index][key]
            assert got.dtype == np.float32 and got.shape == (n_l, samples.channels[index])
            np.testing.assert_allclose(got, reference[name][key][:n_l], atol=1e-5, rtol=0)
    for key in keys:
        assert samples.probs[key].shape == (len(coords[key]), 3)
        np.testing.assert_allclose(samples.probs[key], reference["probs"][key], atol=1e-5, rtol=0)

    # The voxels read in the 4th and later batches were compared too, and are not zeros.
    every = np.concatenate([coords[k] for k in keys])
    owner = assign_windows(every, starts, PATCH)
    flat = np.ravel_multi_index(tuple(owner.T), [len(s) for s in starts])
    batch_of = np.searchsorted(np.unique(flat), flat) // 2
    late = batch_of >= 3
    assert late.sum() > 20
    last_layer = np.concatenate([samples.features[-1][k] for k in keys])
    assert np.all(np.abs(last_layer[late]).sum(axis=1) > 0)
    assert hooks_left(net) == 0


def test_every_window_runs_with_its_hooks_and_a_full_last_batch(net):
    """All 32 windows own a voxel, so all run, in 11 batches of 3; every window's hooked outputs are
    compared with the dense reference (a sampler whose hooks fell off after the first batch, or that
    read a stale batch, fails here). The short last batch is filled up to 3 windows."""
    shape = (37, 50, 21)
    image, seg = make_case(shape, seed=8)
    starts = window_starts(shape, PATCH, 0.5)
    # One voxel near the centre of every window (the rule gives it to that window), plus random ones.
    centres = np.array([[s + p // 2 for s, p in zip(w, PATCH)] for w in itertools.product(*starts)])
    rng = np.random.default_rng(3)
    coords = {"global": np.concatenate([centres, np.stack([rng.integers(0, n, 40) for n in shape], axis=1)])}
    owner = assign_windows(coords["global"], starts, PATCH)
    assert len({tuple(o) for o in owner}) == 32

    seen = {name: [] for name in LAYERS}
    modules = dict(net.named_modules())
    counters = [modules[n].register_forward_hook(lambda m, i, o, n=n: seen[n].append(o.shape[0])) for n in LAYERS]
    try:
        samples = sample_case(net, LAYERS, image, coords, patch_size=PATCH, batch_size=3, probs_keys=["global"])
    finally:
        for h in counters:
            h.remove()
    assert samples.windows_run == samples.windows_total == 32
    assert all(sizes == [3] * 11 for sizes in seen.values())  # 11 forward passes, all full
    reference = dense_reference(net, LAYERS, image, coords, PATCH)
    for index, name in enumerate(LAYERS):
        np.testing.assert_allclose(samples.features[index]["global"], reference[name]["global"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(samples.probs["global"], reference["probs"]["global"], atol=1e-5, rtol=0)
    assert hooks_left(net) == 0

    # A single batch is not filled up: a one-window case runs one window.
    small = {"global": np.array([[1, 2, 3]])}
    seen = []
    h = modules[LAYERS[-1]].register_forward_hook(lambda m, i, o: seen.append(o.shape[0]))
    try:
        sample_case(net, LAYERS, image[:, :16, :24, :16], small, patch_size=PATCH, batch_size=4, probs_keys=[])
    finally:
        h.remove()
    assert seen == [1]


def test_small_case_is_padded_like_nnunet(net):
    shape = (10, 30, 12)  # smaller than the patch in d and w
    image, seg = make_case(shape, seed=2)
    padded, offset = pad_to_patch(image, PATCH)
    assert padded.shape == (1, 16, 30, 16)
    assert offset.tolist() == [3, 0, 2]
    np.testing.assert_array_equal(padded[:, 3:13, :, 2:14], image)
    assert padded[:, :3].sum() == 0 and padded[:, 13:].sum() == 0
    coords = choose_voxels(seg, CLASS_IDS, rng=np.random.default_rng(0), **BUDGETS)
    samples = sample_case(net, LAYERS, image, coords, patch_size=PATCH, layer_ratios=RATIOS,
                          probs_keys=list(coords))
    reference = dense_reference(net, LAYERS, image, coords, PATCH)
    for index, name in enumerate(LAYERS):
        for key in coords:
            n_l = layer_sample_count(len(coords[key]), RATIOS[index])
            np.testing.assert_allclose(samples.features[index][key], reference[name][key][:n_l], atol=1e-5, rtol=0)
    for key in coords:
        np.testing.assert_allclose(samples.probs[key], reference["probs"][key], atol=1e-5, rtol=0)


def test_monai_unetr_decoder_layers():
    """The sampler is generic: MONAI's UNETR, hooked at its decoder blocks, with ROI = img_size."""
    from monai.networks.nets import UNETR

    torch.manual_seed(0)
    roi = (16, 32, 16)
    unetr = UNETR(in_channels=1, out_channels=2, img_size=roi, feature_size=4, hidden_size=48, mlp_dim=96,
                  num_heads=4).eval()
    layers = ["decoder5", "decoder4", "decoder3", "decoder2"]
    image, seg = make_case((20, 40, 18), seed=6)
    coords = choose_voxels(seg, [1, 2], rng=np.random.default_rng(2), total=60, minimum=10, n_global=40,
                           n_background=30)
    samples = sample_case(unetr, layers, image, coords, patch_size=roi, layer_ratios=[0.25, 0.5, 0.75, 1.0],
                          probs_keys=list(coords))
    reference = dense_reference(unetr, layers, image, coords, roi)
    assert samples.channels == [32, 16, 8, 4] and samples.num_output_channels == 2
    for index, name in enumerate(layers):
        for key in coords:
            n_l = samples.features[index][key].shape[0]
            np.testing.assert_allclose(samples.features[index][key], reference[name][key][:n_l], atol=1e-5, rtol=0)
    for key in coords:
        np.testing.assert_allclose(samples.probs[key], reference["probs"][key], atol=1e-5, rtol=0)


def test_deep_supervision_output_uses_full_resolution_head():
    shape = (18, 26, 16)
    image, seg = make_case(shape, seed=3)
    coords = choose_voxels(seg, CLASS_IDS, rng=np.random.default_rng(1), **BUDGETS)
    plain = sample_case(make_unet(7), LAYERS, image, coords, patch_size=PATCH, probs_keys=list(coords))
    deep = sample_case(make_unet(7, deep_supervision=True), LAYERS, image, coords, patch_size=PATCH,
                       probs_keys=list(coords))
    for key in coords:
        np.testing.assert_allclose(deep.probs[key], plain.probs[key], atol=1e-6)
        np.testing.assert_allclose(deep.features[-1][key], plain.features[-1][key], atol=1e-6)


def test_interpolate_at_equals_f_interpolate():
    gen = torch.Generator().manual_seed(0)
    for sizes in [(1, 3, 2), (4, 6, 4), (5, 7, 16), (16, 24, 16)]:
        fmap = torch.randn(3, 5, *sizes, generator=gen)
        dense = F.interpolate(fmap, size=PATCH, mode="trilinear", align_corners=False)
        b = torch.randint(0, 3, (400,), generator=gen)
        local = torch.stack([torch.randint(0, p, (400,), generator=gen) for p in PATCH], dim=1)
        got = interpolate_at(fmap, b, local, PATCH)
        want = dense[b, :, local[:, 0], local[:, 1], local[:, 2]]
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


# --------------------------------------------------------------------------------------------------
# Window assignment
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("patch", [4, 7, 16])
@pytest.mark.parametrize("step", [0.3, 0.5, 1.0])
def test_assigned_window_contains_voxel_and_matches_loop(patch, step):
    for size in range(patch, 4 * patch + 3):
        starts = window_starts((size, patch, patch), (patch, patch, patch), step)
        coords = np.zeros((size, 3), dtype=np.int64)
        coords[:, 0] = np.arange(size)
        got = assign_windows(coords, starts, (patch,) * 3)
        for x in range(size):
            want = reference_window(coords[x], starts, (patch,) * 3)
            start = int(starts[0][got[x, 0]])
            assert start == want[0]
            assert start <= x < start + patch


def test_window_assignment_3d_non_cubic_and_ties():
    shape, patch = (37, 50, 21), PATCH
    starts = window_starts(shape, patch, 0.5)
    rng = np.random.default_rng(0)
    coords = np.stack([rng.integers(0, s, 500) for s in shape], axis=1)
    got = assign_windows(coords, starts, patch)
    for point, index in zip(coords, got):
        window = tuple(int(starts[a][index[a]]) for a in range(3))
        assert window == reference_window(point, starts, patch)
        assert all(s <= q < s + p for s, q, p in zip(window, point, patch))
    # size 5, patch 4 -> starts [0, 1]; voxel 2 (centre 2.5) is equidistant from centres 2 and 3.
    tie = window_starts((5, 5, 5), (4, 4, 4), 0.5)
    assert [s.tolist() for s in tie] == [[0, 1]] * 3
    assert assign_windows(np.array([[2, 2, 2], [3, 1, 0]]), tie, (4, 4, 4)).tolist() == [[0, 0, 0], [1, 0, 0]]


# --------------------------------------------------------------------------------------------------
# Choosing voxels and layer ratios
# --------------------------------------------------------------------------------------------------


def test_class_counts_are_proportional_with_minimum_and_cap():
    counts = class_sample_counts({1: 1000, 2: 30, 3: 0, 4: 5}, total=100, minimum=10)
    assert counts == {1: 97, 2: 10, 4: 5}  # 96.6 -> 97; 2.9 -> min 10; 0.5 -> min 10 -> cap 5
    assert class_sample_counts({1: 10, 2: 30}, total=10, minimum=0) == {1: 3, 2: 8}  # half-up: 2.5, 7.5


def test_choose_voxels_labels_counts_and_order():
    rng = np.random.default_rng(0)
    seg = np.zeros((20, 30, 25), dtype=np.int16)
    seg[2:12, 3:23, 4:14] = 1  # 2000 voxels
    seg[15:18, 5:15, 5:6] = 2  # 30 voxels
    seg[19, 0:5, 0:1] = 4  # 5 voxels
    seg[0] = -1
    coords = choose_voxels(seg, [1, 2, 3, 4], total=100, minimum=10, n_global=400, n_background=300, rng=rng)
    assert sorted(coords) == ["background", "class_1", "class_2", "class_4", "global"]  # class 3 absent
    expected = {"class_1": 98, "class_2": 10, "class_4": 5, "global": 400, "background": 300}
    for key, n in expected.items():
        c = coords[key]
        assert c.dtype == np.int64 and c.shape == (n, 3)
        assert len({tuple(p) for p in c}) == n  # without replacement
    for k in (1, 2, 4):
        c = coords[f"class_{k}"]
        assert np.all(seg[c[:, 0], c[:, 1], c[:, 2]] == k)
    bg = coords["background"]
    assert np.all(seg[bg[:, 0], bg[:, 1], bg[:, 2]] <= 0)
    flat = np.ravel_multi_index(tuple(coords["global"].T), seg.shape)
    assert not np.all(np.diff(flat) > 0)  # random order, not sorted
    # caps: more than the case holds gives every voxel once
    tiny = np.zeros((2, 2, 2), dtype=np.int16)
    capped = choose_voxels(tiny, [1], total=5, minimum=1, n_global=50, n_background=50, rng=rng)
    assert capped["global"].shape == (8, 3) and capped["background"].shape == (8, 3)
    assert len({tuple(p) for p in capped["global"]}) == 8


def test_choose_voxels_draws_the_same_voxels_as_listing_the_pools():
    """Members are found from a boolean mask (``_nth_true``) instead of a list of every member voxel;
    the voxels are the ones ``np.flatnonzero(mask)[draw]`` gives, with the same random stream."""
    rng = np.random.default_rng(0)
    for n, p, chunk in [(1, 0.5, 4), (10, 0.0, 4), (1000, 0.3, 7), (70000, 0.01, 1 << 10), (5, 1.0, 2)]:
        mask = rng.random(n) < p
        members = np.flatnonzero(mask)
        ranks = rng.permutation(members.size)
        np.testing.assert_array_equal(_nth_true(mask, ranks, chunk), members[ranks])
    _, seg = make_case((20, 30, 18), seed=5)
    got = choose_voxels(seg, CLASS_IDS, rng=np.random.default_rng(9), **BUDGETS)
    flat, draw = seg.reshape(-1), np.random.default_rng(9)
    want = {}
    counts = class_sample_counts({k: int((flat == k).sum()) for k in CLASS_IDS}, total=BUDGETS["total"],
                                 minimum=BUDGETS["minimum"])
    for k, n_k in counts.items():
        pool = np.flatnonzero(flat == k)
        want[f"class_{k}"] = pool[_draw(pool.size, n_k, draw)]
    want["global"] = _draw(flat.size, BUDGETS["n_global"], draw)
    pool = np.flatnonzero(flat <= 0)
    want["background"] = pool[_draw(pool.size, BUDGETS["n_background"], draw)]
    assert list(got) == list(want)
    for key, flat_index in want.items():
        np.testing.assert_array_equal(got[key], np.stack(np.unravel_index(flat_index, seg.shape), axis=1))


def test_choose_voxels_is_seeded():
    _, seg = make_case((20, 30, 18), seed=0)
    a = choose_voxels(seg, CLASS_IDS, rng=np.random.default_rng(3), **BUDGETS)
    b = choose_voxels(seg, CLASS_IDS, rng=np.random.default_rng(3), **BUDGETS)
    c = choose_voxels(seg, CLASS_IDS, rng=np.random.default_rng(4), **BUDGETS)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["global"], c["global"])


def test_layer_sample_count():
    assert layer_sample_count(100, 0.07) == 7  # not 8 from 7.000000000000001
    assert layer_sample_count(10, 0.25) == 3
    assert layer_sample_count(10, 0.01) == 2  # at least 2
    assert layer_sample_count(1, 0.01) == 1
    assert layer_sample_count(0, 0.5) == 0
    assert layer_sample_count(7, 1.0) == 7
    with pytest.raises(ValueError):
        layer_sample_count(5, 0.0)


# --------------------------------------------------------------------------------------------------
# Hooks
# --------------------------------------------------------------------------------------------------


def test_hooks_removed_and_mode_restored_even_on_error(net):
    image, seg = make_case((30, 40, 20), seed=4)
    coords = choose_voxels(seg, CLASS_IDS, rng=np.random.default_rng(0), **BUDGETS)
    net.train()
    sample_case(net, LAYERS, image, coords, patch_size=PATCH)
    assert hooks_left(net) == 0 and net.training

    def stop(done, total):
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        sample_case(net, LAYERS, image, coords, patch_size=PATCH, progress=stop)
    assert hooks_left(net) == 0 and net.training
    with pytest.raises(TypeError, match="encoder"):  # the encoder returns a list of skips
        sample_case(net, ["encoder", *LAYERS], image, coords, patch_size=PATCH)
    assert hooks_left(net) == 0 and net.training
    with pytest.raises(ValueError, match="not modules"):
        sample_case(net, ["decoder.stages.9"], image, coords, patch_size=PATCH)
    net.eval()


# --------------------------------------------------------------------------------------------------
# A dataset into a features file
# --------------------------------------------------------------------------------------------------


def dataset_cases():
    return [(f"case_{i}", *make_case(shape, seed=10 + i)) for i, shape in enumerate([(20, 30, 18), (17, 26, 20)])]


def run_dataset(net, path, seed, cases=None):
    return sample_dataset(
        net, LAYERS, cases if cases is not None else dataset_cases(), path, class_ids=CLASS_IDS,
        budgets=BUDGETS, patch_size=PATCH, model_id="m0", architecture="PlainConvUNet", target="t0",
        seed=seed, layer_ratios=RATIOS, progress=False,
    )


def test_sample_dataset_writes_a_reproducible_file(net, tmp_path):
    a = run_dataset(net, tmp_path / "a.h5", seed=1)
    b = run_dataset(net, tmp_path / "b.h5", seed=1)
    c = run_dataset(net, tmp_path / "c.h5", seed=2)
    assert hashlib.sha256(a.read_bytes()).digest() == hashlib.sha256(b.read_bytes()).digest()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.h5", "b.h5", "c.h5"]  # no temp files left

    fa, fc = read_features(a), read_features(c)
    assert fa.meta["layers"] == LAYERS and fa.meta["channels"] == [16, 8, 4]
    assert fa.meta["source_num_classes"] == 3 and fa.meta["budgets"] == BUDGETS
    assert list(fa.cases) == ["case_0", "case_1"]
    for case_id, record in fa.cases.items():
        assert record.absent_classes == [3] and "class_3" not in record.coords
        assert set(record.probs) == {"class_1", "class_2", "background"}
        seg = dict((cid, s) for cid, _, s in dataset_cases())[case_id]
        for key, c in record.coords.items():
            want = seg[c[:, 0], c[:, 1], c[:, 2]]
            np.testing.assert_array_equal(record.labels[key], np.where(want < 0, 0, want))
        assert not np.array_equal(record.coords["global"], fc.cases[case_id].coords["global"])

    # The voxels of a case depend on (seed, case id), not on the order of the cases.
    d = run_dataset(net, tmp_path / "d.h5", seed=1, cases=dataset_cases()[::-1])
    fd = read_features(d)
    assert list(fd.cases) == ["case_1", "case_0"]
    for case_id in fa.cases:
        for key in fa.cases[case_id].coords:
            np.testing.assert_array_equal(fa.cases[case_id].coords[key], fd.cases[case_id].coords[key])
            np.testing.assert_array_equal(fa.cases[case_id].features[0][key], fd.cases[case_id].features[0][key])
    assert not np.array_equal(case_rng(1, "case_0").integers(1 << 30, size=4),
                              case_rng(1, "case_1").integers(1 << 30, size=4))


class CopyNet(nn.Module):
    """Hooked layers that copy their input: channel 0 is the label map, channel 1 the flat voxel index,
    so a stored feature says which voxel it was read from and what its label is."""

    def __init__(self):
        super().__init__()
        self.copy_half = nn.Identity()
        self.copy = nn.Identity()
        self.head = nn.Conv3d(2, 3, kernel_size=1)

    def forward(self, x):
        return self.head(self.copy(self.copy_half(x)))


def test_features_line_up_with_labels_and_coords_through_the_file(tmp_path):
    """Non-cubic cases (one smaller than the patch, so padded; one without class 2) written by
    ``sample_dataset`` and read back: every stored feature comes from the voxel at its coordinate and
    carries that voxel's label; the views the scores read keep them aligned."""
    cases = []
    for case_id, shape, with_class_2 in [("a", (13, 40, 22), True), ("b", (30, 26, 35), False)]:
        _, seg = make_case(shape, seed=len(case_id) + len(shape))
        if not with_class_2:
            seg[seg == 2] = 1
        index = np.arange(seg.size, dtype=np.float32).reshape(shape)
        cases.append((case_id, np.stack([seg.astype(np.float32), index]), seg))
    path = sample_dataset(
        CopyNet(), ["copy_half", "copy"], cases, tmp_path / "copy.h5", class_ids=[1, 2], budgets=BUDGETS,
        patch_size=PATCH, model_id="copy", architecture="CopyNet", target="t", seed=4, layer_ratios=[0.5, 1.0],
        progress=False,
    )
    ff = read_features(path)
    assert ff.meta["layers"] == ["copy_half", "copy"] and ff.meta["channels"] == [2, 2]
    assert ff.meta["source_num_classes"] == 3 and ff.meta["seed"] == 4 and ff.meta["budgets"] == BUDGETS
    assert ff.meta["batch_size"] == 2 and ff.meta["device"] == "cpu"
    assert ff.meta["software"]["ccfv"] == ff.meta["ccfv_version"] and "torch" in ff.meta["software"]
    assert [ff.cases[c].absent_classes for c in "ab"] == [[], [2]]
    assert "class_2" not in ff.cases["b"].coords and "class_2" not in ff.cases["b"].probs
    for case_id, _, seg in cases:
        record = ff.cases[case_id]
        for key, c in record.coords.items():
            raw = seg[c[:, 0], c[:, 1], c[:, 2]]
            np.testing.assert_array_equal(record.labels[key], np.maximum(raw, 0))
            if key.startswith("class_"):
                assert np.all(raw == int(key.split("_")[1]))
            for layer, ratio in enumerate([0.5, 1.0]):
                f = record.features[layer][key]
                n_l = layer_sample_count(len(c), ratio)
                assert f.shape == (n_l, 2)
                np.testing.assert_array_equal(f[:, 0], raw[:n_l])
                np.testing.assert_array_equal(f[:, 1], np.ravel_multi_index(tuple(c[:n_l].T), seg.shape))
    layers = ccfv_layers(ff)
    assert [sorted(case) for case in layers[1]["cases"]] == [[1, 2], [1]]
    for layer in layers:
        for case in layer["cases"]:
            for k, f in case.items():
                assert np.all(f[:, 0] == k)
    features, labels, probs = head_samples(ff)
    np.testing.assert_array_equal(features[:, 0].clip(min=0), labels)
    assert probs.shape == (len(labels), 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1, atol=1e-6)


def test_sample_dataset_failure_leaves_no_file(net, tmp_path):
    cases = dataset_cases()
    bad = [cases[0], ("case_bad", cases[1][1], cases[1][2][:5])]  # seg smaller than the image
    with pytest.raises(ValueError, match="case_bad"):
        run_dataset(net, tmp_path / "x.h5", seed=0, cases=bad)
    assert list(tmp_path.iterdir()) == []


def test_local_input_std_is_the_neighbourhood_standard_deviation():
    from ccfv.features.voxels import local_input_std

    rng = np.random.default_rng(3)
    image = rng.normal(size=(2, 6, 7, 5)).astype(np.float32)
    image[:, :3] = 0.0  # a flat region
    coords = np.array([[1, 3, 2], [0, 0, 0], [4, 3, 2], [5, 6, 4]])
    out = local_input_std(image, coords)
    for i, (d, h, w) in enumerate(coords):
        block = image[:, max(d - 1, 0):d + 2, max(h - 1, 0):h + 2, max(w - 1, 0):w + 2].reshape(2, -1)
        assert out[i] == pytest.approx(block.std(axis=1).max(), rel=1e-6)
    assert out[0] == 0.0 and out[1] == 0.0 and out[2] > 0.5
