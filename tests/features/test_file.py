"""Tests for ccfv.features.file: round trip, on-disk schema, the views for the scores, bad files."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

import ccfv
from ccfv.features.file import FILE_MARKER, OPTIONAL_ATTRS, REQUIRED_ATTRS, CaseRecord, read_features, write_features
from ccfv.scores.views import ccfv_layers, head_samples

CHANNELS = [6, 4, 3]
RATIOS = [0.25, 0.5, 1.0]
K = 3


def make_meta() -> dict:
    return {
        "model_id": "unet_task03", "architecture": "PlainConvUNet", "target": "Task09_Spleen", "seed": 7,
        "layers": ["decoder.stages.0", "decoder.stages.1", "decoder.stages.2"], "channels": CHANNELS,
        "layer_ratios": RATIOS, "budgets": {"total": 40, "minimum": 5, "n_global": 30, "n_background": 20},
        "patch_size": [16, 24, 16], "step_size": 0.5, "source_num_classes": K,
    }


def make_record(case_id: str, rng: np.random.Generator, present=(1, 2), with_probs=True, ratios=RATIOS) -> CaseRecord:
    sizes = {f"class_{k}": int(rng.integers(5, 20)) for k in present}
    sizes.update(global_=30, background=20)
    sizes["global"] = sizes.pop("global_")
    coords = {k: rng.integers(0, 40, size=(n, 3)) for k, n in sizes.items()}
    labels = {k: np.full(n, int(k.split("_")[1]) if k.startswith("class_") else 0) for k, n in sizes.items()}
    features = []
    for ratio, c in zip(ratios, CHANNELS):
        features.append({k: rng.normal(size=(max(2, int(np.ceil(ratio * n))), c)).astype(np.float32)
                         for k, n in sizes.items()})
    probs = {}
    if with_probs:
        for k, n in sizes.items():
            if k != "global":
                p = rng.random((n, K)).astype(np.float32)
                probs[k] = p / p.sum(axis=1, keepdims=True)
    return CaseRecord(case_id=case_id, class_ids=[1, 2], absent_classes=[k for k in (1, 2) if k not in present],
                      coords=coords, labels=labels, features=features, probs=probs)


@pytest.fixture
def written(tmp_path):
    rng = np.random.default_rng(0)
    records = [make_record("liver_7", rng), make_record("liver_3", rng, present=(1,)), make_record("liver_12", rng)]
    path = write_features(tmp_path / "m" / "t.h5", make_meta(), records)
    return path, records


def test_round_trip(written):
    path, records = written
    ff = read_features(path)
    assert ff.path == path
    want = {**make_meta(), "ccfv_version": ccfv.__version__}
    assert ff.meta == want
    assert list(ff.cases) == ["liver_7", "liver_3", "liver_12"]  # write order, not alphabetical
    for record in records:
        got = ff.cases[record.case_id]
        assert got.class_ids == [1, 2] and got.absent_classes == record.absent_classes
        assert set(got.coords) == set(record.coords)
        for key in record.coords:
            np.testing.assert_array_equal(got.coords[key], record.coords[key])
            np.testing.assert_array_equal(got.labels[key], record.labels[key])
        for index in range(len(CHANNELS)):
            for key, f in record.features[index].items():
                np.testing.assert_array_equal(got.features[index][key], f)
        for key, p in record.probs.items():
            np.testing.assert_array_equal(got.probs[key], p)


def test_on_disk_schema(written):
    path, records = written
    with h5py.File(path, "r") as h5:
        assert h5.attrs["ccfv_file"] == FILE_MARKER
        for name, kind in REQUIRED_ATTRS.items():
            assert name in h5.attrs
            if kind == "json":
                json.loads(h5.attrs[name])
        assert json.loads(h5.attrs["layers"])[-1] == "decoder.stages.2"
        assert json.loads(h5.attrs["budgets"]) == make_meta()["budgets"]
        g = h5["cases/liver_3"]
        assert json.loads(g.attrs["absent_classes"]) == [2] and json.loads(g.attrs["class_ids"]) == [1, 2]
        assert "class_2" not in g["coords"]
        assert g["coords/global"].dtype == np.int32 and g["coords/global"].shape == (30, 3)
        assert g["labels/global"].dtype == np.int16 and g["labels/global"].shape == (30,)
        assert g["features/0/global"].dtype == np.float32 and g["features/0/global"].shape == (8, 6)
        assert g["features/2/global"].shape == (30, 3)
        assert g["probs/background"].dtype == np.float32 and g["probs/background"].shape == (20, K)
    assert [p.name for p in path.parent.iterdir()] == ["t.h5"]  # the temporary file is gone


def test_optional_provenance_attributes(tmp_path):
    rng = np.random.default_rng(3)
    extra = {"batch_size": 2, "device": "cpu", "software": {"ccfv": ccfv.__version__, "torch": "2.x"},
             "window_budget": 3, "windows_run": {"a": [5, 18]}}
    path = write_features(tmp_path / "p.h5", {**make_meta(), **extra, "not_an_attribute": 1},
                          [make_record("a", rng)])
    ff = read_features(path)
    assert {k: ff.meta[k] for k in OPTIONAL_ATTRS} == extra and "not_an_attribute" not in ff.meta
    with h5py.File(path, "r") as h5:
        assert json.loads(h5.attrs["software"]) == extra["software"] and "not_an_attribute" not in h5.attrs
    with h5py.File(path, "a") as h5:
        h5.attrs["software"] = "{torch"
    with pytest.raises(ValueError, match="'software' is not valid JSON"):
        read_features(path)
    with h5py.File(path, "a") as h5:
        h5.attrs["software"] = "[1, 2]"
    with pytest.raises(ValueError, match="software"):
        read_features(path)
    with h5py.File(path, "a") as h5:
        h5.attrs["software"] = json.dumps(extra["software"])
        h5.attrs["windows_run"] = json.dumps({"a": [19, 18]})
    with pytest.raises(ValueError, match="'windows_run' of case 'a' must be \\[run, total\\]"):
        read_features(path)


def test_ccfv_layers_shapes(written):
    path, records = written
    layers = ccfv_layers(read_features(path))
    assert len(layers) == 3
    for index, layer in enumerate(layers):
        assert [sorted(case) for case in layer["cases"]] == [[1, 2], [1], [1, 2]]
        for case, record in zip(layer["cases"], records):
            for k, f in case.items():
                assert f.shape == record.features[index][f"class_{k}"].shape
                assert f.shape[1] == CHANNELS[index]
        assert [g.shape for g in layer["global"]] == [r.features[index]["global"].shape for r in records]


def test_ccfv_layers_feed_the_score(written):
    metrics = pytest.importorskip("ccfv.scores.metrics")
    score = metrics.ccfv_score(ccfv_layers(read_features(written[0])))
    assert np.isfinite(score)


def test_head_samples(written):
    path, records = written
    ff = read_features(path)
    features, labels, probs = head_samples(ff)
    keys = {"liver_7": ["class_1", "class_2", "background"], "liver_3": ["class_1", "background"],
            "liver_12": ["class_1", "class_2", "background"]}
    n = sum(len(r.features[2][k]) for r in records for k in keys[r.case_id])
    assert features.shape == (n, CHANNELS[-1]) and features.dtype == np.float32
    assert labels.shape == (n,) and probs.shape == (n, K)
    expected_labels = np.concatenate([r.labels[k][: len(r.features[2][k])] for r in records for k in keys[r.case_id]])
    np.testing.assert_array_equal(labels, expected_labels)
    assert set(np.unique(labels)) == {0, 1, 2}
    # "global" has no probabilities, so asking for it gives probs None
    features, labels, probs = head_samples(ff, keys=["global"])
    assert features.shape == (90, CHANNELS[-1]) and probs is None
    with pytest.raises(ValueError, match="nothing"):
        head_samples(ff, keys=["nothing"])


def test_head_samples_take_the_prefix_of_labels_and_probs(tmp_path):
    ratios = [0.25, 0.5, 0.5]  # the last layer keeps only half of each key's voxels
    rng = np.random.default_rng(2)
    record = make_record("a", rng, ratios=ratios)
    path = write_features(tmp_path / "half.h5", {**make_meta(), "layer_ratios": ratios}, [record])
    features, labels, probs = head_samples(read_features(path), keys=["class_1", "background"])
    n1, n0 = len(record.features[2]["class_1"]), len(record.features[2]["background"])
    assert n0 < len(record.coords["background"])
    assert features.shape == (n1 + n0, CHANNELS[-1]) and labels.shape == probs.shape[:1] == (n1 + n0,)
    np.testing.assert_array_equal(probs[n1:], record.probs["background"][:n0])
    np.testing.assert_array_equal(labels[:n1], record.labels["class_1"][:n1])


def test_head_samples_without_probs(tmp_path):
    rng = np.random.default_rng(1)
    path = write_features(tmp_path / "np.h5", make_meta(), [make_record("a", rng, with_probs=False)])
    features, labels, probs = head_samples(read_features(path))
    assert probs is None and len(features) == len(labels) > 0


# --------------------------------------------------------------------------------------------------
# Bad files and bad input
# --------------------------------------------------------------------------------------------------


def test_not_hdf5(tmp_path):
    path = tmp_path / "notes.h5"
    path.write_text("hello")
    with pytest.raises(ValueError, match="notes.h5.*not a ccfv features file"):
        read_features(path)
    with pytest.raises(FileNotFoundError):
        read_features(tmp_path / "missing.h5")


def test_hdf5_without_marker(tmp_path):
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as h5:
        h5.create_dataset("x", data=np.arange(3))
    with pytest.raises(ValueError, match="other.h5.*not a ccfv features file"):
        read_features(path)


@pytest.mark.parametrize("attr", ["layers", "source_num_classes", "ccfv_version"])
def test_missing_required_attribute(written, attr):
    path, _ = written
    with h5py.File(path, "a") as h5:
        del h5.attrs[attr]
    with pytest.raises(ValueError, match=f"t.h5.*'{attr}'"):
        read_features(path)


def test_garbled_attribute_and_missing_layer(written):
    path, _ = written
    with h5py.File(path, "a") as h5:
        h5.attrs["channels"] = "[6, 4"
    with pytest.raises(ValueError, match="'channels' is not valid JSON"):
        read_features(path)
    with h5py.File(path, "a") as h5:
        h5.attrs["channels"] = "[6, 4, 3]"
        del h5["cases/liver_3/features/1"]
    with pytest.raises(ValueError, match="liver_3.*layer 1"):
        read_features(path)


def test_write_rejects_inconsistent_input_and_keeps_old_file(written):
    path, records = written
    before = path.read_bytes()
    bad_meta = {**make_meta(), "channels": [6, 4, 99]}
    with pytest.raises(ValueError, match="channels"):
        write_features(path, bad_meta, records)
    incomplete = {k: v for k, v in make_meta().items() if k != "target"}
    with pytest.raises(ValueError, match="target"):
        write_features(path, incomplete, records)
    with pytest.raises(ValueError, match="'/'"):
        write_features(path, make_meta(), [CaseRecord("a/b", [1], [], {}, {}, [{}, {}, {}])])
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == ["t.h5"]


def test_subset_cases_keeps_the_order_and_renames_repeats(tmp_path):
    from ccfv.features.file import subset_cases

    rng = np.random.default_rng(0)
    path = write_features(tmp_path / "f.h5", make_meta(), [make_record(f"c{i}", rng) for i in range(3)])
    ff = read_features(path)
    sub = subset_cases(ff, ["c2", "c0", "c2"])
    assert list(sub.cases) == ["c2", "c0", "c2#2"] and sub.cases["c2#2"].case_id == "c2#2"
    np.testing.assert_array_equal(sub.cases["c2#2"].features[0]["global"], ff.cases["c2"].features[0]["global"])
    with pytest.raises(KeyError, match="no case 'c9'"):
        subset_cases(ff, ["c9"])
