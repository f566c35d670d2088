"""Tests for ccfv.features.budget: the window cells agree with the sampler's window assignment, the
stratified selection hits each window as often as its share says, voxels drawn under a budget are valid,
bounded in windows, seeded, uniform for "global", and their features equal the dense reference."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import yaml

from ccfv.features.budget import (
    allocate,
    choose_voxels_in_windows,
    owner_windows,
    stratified_hits,
    window_cells,
)
from ccfv.features.file import read_features
from ccfv.features.sampler import sample_case, sample_dataset
from ccfv.features.settings import SamplingSettings
from ccfv.features.voxels import choose_voxels, class_sample_counts
from ccfv.features.windows import assign_windows, pad_to_patch, window_starts

from .test_sampler import BUDGETS, CLASS_IDS, LAYERS, PATCH, RATIOS, dense_reference, make_case, make_unet

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def net():
    return make_unet(0).eval()


def sampler_owners(coords: np.ndarray, shape, patch, step=0.5) -> np.ndarray:
    """The window of each voxel as sample_case finds it: pad, tile, assign_windows."""
    _, offset = pad_to_patch(np.zeros((1, *shape), np.uint8), patch)
    padded = [max(s, p) for s, p in zip(shape, patch)]
    starts = window_starts(padded, patch, step)
    owner = assign_windows(np.asarray(coords) + offset, starts, patch)
    return np.ravel_multi_index(tuple(owner.T), [len(s) for s in starts])


@pytest.mark.parametrize("shape, patch, step", [((37, 50, 21), PATCH, 0.5), ((13, 40, 22), PATCH, 0.5),
                                                ((30, 26, 35), (8, 7, 16), 0.3), ((9, 9, 9), (4, 4, 4), 1.0)])
def test_cells_partition_the_case_as_the_sampler_assigns_windows(shape, patch, step):
    cells = window_cells(shape, patch, step)
    every = np.stack(np.unravel_index(np.arange(np.prod(shape)), shape), axis=1)
    owners = sampler_owners(every, shape, patch, step)
    assert cells.volumes().sum() == np.prod(shape)
    assert np.array_equal(np.bincount(owners, minlength=cells.n_windows), cells.volumes())
    for window in range(cells.n_windows):  # each cell's box is exactly the voxels the sampler reads from it
        member = np.zeros(shape, bool)
        member[cells.box(window)] = True
        assert np.array_equal(member.reshape(-1), owners == window)
    rng = np.random.default_rng(0)
    mask = rng.random(shape) < 0.3
    assert np.array_equal(cells.counts(mask), np.bincount(owners[mask.reshape(-1)], minlength=cells.n_windows))
    sample = {"a": every[rng.choice(len(every), 50)], "b": every[:3]}
    flat = np.ravel_multi_index(tuple(np.concatenate(list(sample.values())).T), shape)
    assert np.array_equal(owner_windows(sample, cells), np.unique(owners[flat]))


def test_stratified_hits_hit_each_window_in_proportion_to_its_weight():
    weights = np.array([0, 5, 1, 0, 7, 2, 0, 9], dtype=float)
    budget = 3
    grid = (np.arange(4000) + 0.5) / 4000  # every stratum point on a fine grid: exact frequencies
    hits = np.stack([stratified_hits(weights, np.full(budget, u)) for u in grid])
    expected = budget * weights / weights.sum()
    got = np.bincount(hits.reshape(-1), minlength=len(weights)) / len(grid)
    np.testing.assert_allclose(got, expected, atol=1e-3)
    assert np.all(np.diff(hits, axis=1) >= 0)  # one hit per stratum, in window order
    with pytest.raises(ValueError, match="no window holds"):
        stratified_hits(np.zeros(4), np.full(2, 0.5))


def test_allocate_shares_in_proportion_with_caps():
    rng = np.random.default_rng(0)
    assert allocate(10, np.array([1.0, 1.0]), np.array([100, 100]), rng).tolist() == [5, 5]
    assert allocate(10, np.array([1.0, 4.0]), np.array([100, 100]), rng).tolist() == [2, 8]
    assert allocate(10, np.array([1.0, 2.0, 7.0]), np.array([100, 100, 100]), rng).tolist() == [1, 2, 7]
    out = allocate(10, np.array([1.0, 1.0, 1.0]), np.array([2, 100, 100]), rng)
    assert out[0] == 2 and out.sum() == 10 and abs(out[1] - out[2]) <= 1
    assert allocate(50, np.array([1.0, 0.0, 2.0]), np.array([3, 9, 4]), rng).tolist() == [3, 0, 4]
    # the one left-over item goes to either tied entry, at random
    firsts = {tuple(allocate(3, np.ones(2), np.array([9, 9]), np.random.default_rng(s))) for s in range(20)}
    assert firsts == {(1, 2), (2, 1)}


def windows_of(coords, cells) -> dict[str, int]:
    return {k: len(owner_windows({k: v}, cells)) for k, v in coords.items()}


@pytest.mark.parametrize("budget", [1, 2, 3])
def test_budgeted_voxels_are_valid_and_bounded_in_windows(budget):
    shape = (37, 50, 21)  # 32 windows of PATCH
    _, seg = make_case(shape, seed=1)
    budgets = {"total": 240, "minimum": 20, "n_global": 160, "n_background": 120}
    rng = np.random.default_rng(3)
    coords = choose_voxels_in_windows(seg, CLASS_IDS, window_budget=budget, patch_size=PATCH, step_size=0.5,
                                      rng=rng, **budgets)
    full = choose_voxels(seg, CLASS_IDS, rng=np.random.default_rng(3), **budgets)
    assert list(coords) == list(full) == ["class_1", "class_2", "global", "background"]
    cells = window_cells(shape, PATCH, 0.5)
    counts = class_sample_counts({k: int((seg == k).sum()) for k in CLASS_IDS}, total=240, minimum=20)
    assert len(coords["global"]) == 160 and len(coords["background"]) == 120
    for k in (1, 2):  # a class's count, or every voxel of the class in the windows it was drawn from
        got = coords[f"class_{k}"]
        available = cells.counts(seg == k)[owner_windows({"k": got}, cells)].sum()
        assert len(got) == counts[k] or len(got) == available < counts[k], (k, len(got), counts[k], available)
    for key, c in coords.items():
        assert c.dtype == np.int64 and len(np.unique(c, axis=0)) == len(c)  # distinct
        labels = seg[tuple(c.T)]
        if key.startswith("class_"):
            assert np.all(labels == int(key.split("_")[1]))
        elif key == "background":
            assert np.all(labels <= 0)
    per_key = windows_of(coords, cells)
    assert all(n <= budget for n in per_key.values())
    run = len(owner_windows(coords, cells))
    foreground = len(owner_windows({k: v for k, v in coords.items() if k.startswith("class_")}, cells))
    assert run <= budget + foreground and run <= budget * (1 + 2)
    assert len(owner_windows({"g": coords["global"], "b": coords["background"]}, cells)) <= budget
    assert run < len(owner_windows(full, cells)) == 32  # without a budget every window runs
    again = choose_voxels_in_windows(seg, CLASS_IDS, window_budget=budget, patch_size=PATCH, step_size=0.5,
                                     rng=np.random.default_rng(3), **budgets)
    assert all(np.array_equal(coords[k], again[k]) for k in coords)  # seeded


def test_a_budget_of_every_window_is_the_full_pass():
    _, seg = make_case((20, 30, 18), seed=2)  # 8 windows of PATCH
    full = choose_voxels(seg, CLASS_IDS, rng=np.random.default_rng(9), **BUDGETS)
    same = choose_voxels_in_windows(seg, CLASS_IDS, window_budget=8, patch_size=PATCH, step_size=0.5,
                                    rng=np.random.default_rng(9), **BUDGETS)
    assert all(np.array_equal(full[k], same[k]) for k in full) and list(full) == list(same)
    fewer = choose_voxels_in_windows(seg, CLASS_IDS, window_budget=7, patch_size=PATCH, step_size=0.5,
                                     rng=np.random.default_rng(9), **BUDGETS)
    assert not np.array_equal(full["global"], fewer["global"])


def test_global_voxels_stay_uniform_over_the_case():
    """Every voxel has the same chance n / N of being a global voxel: per window cell (cells differ in size
    here) the mean count over many seeds matches n x cell / N, and within a cell the draws spread evenly."""
    shape = (30, 41, 23)
    seg = np.zeros(shape, np.int16)
    seg[10:20, 10:30, 5:15] = 1
    cells = window_cells(shape, PATCH, 0.5)
    volumes = cells.volumes()
    assert len(set(volumes[volumes > 0])) > 1
    trials, n = 400, 30
    per_cell = np.zeros(cells.n_windows)
    halves = np.zeros(2)
    for s in range(trials):
        c = choose_voxels_in_windows(seg, [1], window_budget=2, patch_size=PATCH, step_size=0.5,
                                     rng=np.random.default_rng(s), total=10, minimum=2, n_global=n, n_background=0)
        g = c["global"]
        per_cell += np.bincount(sampler_owners(g, shape, PATCH), minlength=cells.n_windows)
        halves += np.bincount((g[:, 2] >= shape[2] // 2).astype(int), minlength=2)
    expected = trials * n * volumes / volumes.sum()
    # each cell's count is a sum of per-trial counts of 0, n/2 or n: its SD is below n * sqrt(trials * p)
    sd = n * np.sqrt(trials * volumes / volumes.sum())
    assert np.all(np.abs(per_cell - expected) < 4 * sd), (per_cell, expected)
    share = shape[2] // 2 / shape[2]
    assert abs(halves[0] / halves.sum() - share) < 0.05


def test_budgeted_sampling_equals_the_dense_reference_and_runs_few_windows(net):
    shape = (37, 50, 21)
    image, seg = make_case(shape, seed=1)
    budget = 2
    coords = choose_voxels_in_windows(seg, CLASS_IDS, window_budget=budget, patch_size=PATCH, step_size=0.5,
                                      rng=np.random.default_rng(5), **BUDGETS)
    keys = list(coords)
    samples = sample_case(net, LAYERS, image, coords, patch_size=PATCH, batch_size=2, layer_ratios=RATIOS,
                          probs_keys=keys)
    reference = dense_reference(net, LAYERS, image, coords, PATCH)
    for index, name in enumerate(LAYERS):
        for key in keys:
            got = samples.features[index][key]
            np.testing.assert_allclose(got, reference[name][key][:len(got)], atol=1e-5, rtol=0)
    for key in keys:
        np.testing.assert_allclose(samples.probs[key], reference["probs"][key], atol=1e-5, rtol=0)
    cells = window_cells(shape, PATCH, 0.5)
    foreground = owner_windows({k: v for k, v in coords.items() if k.startswith("class_")}, cells)
    assert samples.windows_total == 32
    assert samples.windows_run == len(owner_windows(coords, cells)) <= budget + len(foreground)


def test_sample_dataset_records_the_budget_and_the_windows_run(net, tmp_path):
    cases = [(f"case_{i}", *make_case(shape, seed=20 + i)) for i, shape in enumerate([(37, 50, 21), (20, 30, 18)])]
    settings = SamplingSettings(**BUDGETS, seed=1, window_budget=2, layer_ratios=RATIOS)
    path = settings.sample(net, LAYERS, cases, tmp_path / "b.h5", class_ids=CLASS_IDS, patch_size=PATCH,
                           model_id="m", architecture="PlainConvUNet", target="t", device="cpu", progress=False)
    ff = read_features(path)
    assert ff.meta["window_budget"] == 2
    run = ff.meta["windows_run"]
    assert list(run) == ["case_0", "case_1"] and run["case_0"][1] == 32 and run["case_1"][1] == 8
    for case_id, _, seg in cases:
        coords = ff.cases[case_id].coords
        cells = window_cells(seg.shape, PATCH, 0.5)
        assert run[case_id][0] == len(owner_windows(coords, cells)) <= 2 * (1 + 2)
    plain = sample_dataset(net, LAYERS, cases, tmp_path / "p.h5", class_ids=CLASS_IDS, budgets=BUDGETS,
                           patch_size=PATCH, model_id="m", architecture="PlainConvUNet", target="t", seed=1,
                           layer_ratios=RATIOS, progress=False)
    meta = read_features(plain).meta
    assert meta["window_budget"] == 0 and meta["windows_run"]["case_0"] == [32, 32]


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_a_bad_window_budget_is_refused(bad):
    with pytest.raises(ValueError, match="window_budget"):
        SamplingSettings(window_budget=bad)
    with pytest.raises(ValueError, match="window_budget"):
        choose_voxels_in_windows(np.zeros((4, 4, 4), np.int16), [1], window_budget=bad, patch_size=(2, 2, 2),
                                 step_size=0.5, rng=np.random.default_rng(0), **BUDGETS)


def test_the_config_schema_takes_null_or_a_positive_budget():
    import jsonschema

    schema = yaml.safe_load((ROOT / "config" / "schemas" / "config.schema.yaml").read_text())
    sampling = {**schema["properties"]["sampling"], "definitions": schema["definitions"]}
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())["sampling"]
    for good in (None, 1, 6):
        jsonschema.validate({**config, "window_budget": good}, sampling)
    for bad in (0, 2.5, "4"):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({**config, "window_budget": bad}, sampling)
    assert SamplingSettings.from_mapping(config).window_budget == config.get("window_budget")


def test_every_combination_of_budget_and_tiny_case_chooses_voxels():
    """Cases smaller than the patch (padded), keys with no voxel, budgets above and below the windows."""
    for shape, budget in itertools.product([(5, 7, 3), (20, 9, 40)], [1, 3]):
        seg = np.zeros(shape, np.int16)
        seg[: shape[0] // 2] = 1
        coords = choose_voxels_in_windows(seg, [1, 2], window_budget=budget, patch_size=PATCH, step_size=0.5,
                                          rng=np.random.default_rng(0), **BUDGETS)
        assert "class_2" not in coords and len(coords["global"]) > 0
        assert np.all(seg[tuple(coords["background"].T)] <= 0)
