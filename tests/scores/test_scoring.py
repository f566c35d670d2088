"""Tests for ccfv.scores.scoring: every method read from a features file equals the metrics function applied to
the right samples; metric definitions are checked; the workflow's score file."""
from __future__ import annotations

import json

import numpy as np
import pytest

from ccfv.features.file import CaseRecord, read_features, subset_cases, write_features
from ccfv.scores import metrics
from ccfv.scores.scoring import (
    DEFAULT_METRICS,
    METHODS,
    check_metric,
    choose_cases,
    compute_scores,
    features_as_given,
    method_options,
    read_scores,
    score_features,
    score_pair,
)
from ccfv.scores.views import ccfv_layers, head_samples, released_layers

CHANNELS = [5, 4]
K = 3  # the source model's output classes


def _record(case_id, rng, present=(1, 2), probs=True):
    """A case whose class-k features sit around k (so that the scores are informative, not noise)."""
    sizes = {f"class_{k}": int(rng.integers(8, 15)) for k in present}
    sizes.update({"global": 20, "background": 16})
    labels = {key: np.full(n, int(key.split("_")[1]) if key.startswith("class_") else 0) for key, n in sizes.items()}
    features = []
    for c in CHANNELS:
        features.append({key: (rng.normal(size=(n, c)) + labels[key][:, None]).astype(np.float32)
                         for key, n in sizes.items()})
    out_probs = {}
    if probs:
        for key, n in sizes.items():
            if key != "global":
                p = rng.random((n, K)) + np.eye(K)[np.minimum(labels[key], K - 1)] * 2
                out_probs[key] = (p / p.sum(axis=1, keepdims=True)).astype(np.float32)
    return CaseRecord(case_id, [1, 2], [k for k in (1, 2) if k not in present],
                      {key: rng.integers(0, 30, (n, 3)) for key, n in sizes.items()}, labels, features, out_probs)


def _meta():
    return {"model_id": "m", "architecture": "PlainConvUNet", "target": "T", "seed": 0,
            "layers": ["decoder.stages.0", "decoder.stages.1"], "channels": CHANNELS, "layer_ratios": [1.0, 1.0],
            "budgets": {"total": 30, "minimum": 8, "n_global": 20, "n_background": 16},
            "patch_size": [8, 8, 8], "step_size": 0.5, "source_num_classes": K}


@pytest.fixture
def features_path(tmp_path):
    rng = np.random.default_rng(0)
    records = [_record("c0", rng), _record("c1", rng, present=(1,)), _record("c2", rng), _record("c3", rng)]
    return write_features(tmp_path / "f.h5", _meta(), records)


def test_every_default_metric_equals_the_metrics_function(features_path):
    scores = compute_scores(features_path, DEFAULT_METRICS)
    assert list(scores) == list(DEFAULT_METRICS)
    ff = read_features(features_path)
    layers = ccfv_layers(ff)
    features, labels, probs = head_samples(ff)
    assert scores["ccfv"] == metrics.ccfv_score(layers)
    assert scores["ccfv_kl"] == metrics.ccfv_score(layers, distance="kl")
    assert scores["ccfv_wo_ccons"] == metrics.ccfv_score(layers, use_consistency=False)
    assert scores["ccfv_single_scale"] == metrics.ccfv_score(layers[-1:])
    assert scores["logme"] == metrics.logme(features, labels)
    assert scores["gbc"] == metrics.gbc(features, labels, gaussian="diagonal")  # the authors' segmentation setting
    assert scores["transrate"] == metrics.transrate(features, labels)
    assert scores["leep"] == metrics.leep(probs, labels)
    # the baselines read the last layer at the class and background voxels of every case
    assert features.shape == (sum(n for r in ff.cases.values() for k, n in
                                  ((k, len(v)) for k, v in r.features[-1].items()) if k != "global"), CHANNELS[-1])
    assert set(np.unique(labels)) == {0, 1, 2}


def test_extra_methods(features_path):
    scores = compute_scores(features_path, {"nce": {"method": "nce"}, "hscore": {"method": "hscore"},
                                            "released": {"method": "ccfv_released"}})
    ff = read_features(features_path)
    features, labels, probs = head_samples(ff)
    assert scores["nce"] == metrics.nce(np.argmax(probs, axis=1), labels)
    assert scores["hscore"] == metrics.hscore(features, labels)
    assert scores["released"] == metrics.ccfv_score_released(released_layers(ff))


def test_new_methods_read_the_right_samples(tmp_path):
    """k-NN reads the head samples with their cases, CC-FV-D the class and background samples of every layer,
    RankMe the global samples, ``global_voxels="varied"`` the global samples whose recorded input varies."""
    rng = np.random.default_rng(5)
    records = [_record(f"c{i}", rng) for i in range(4)]
    for record in records:
        record.input_std = {"global": np.where(np.arange(20) < 12, 1.0, 0.0).astype(np.float32)}
    path = write_features(tmp_path / "new.h5", _meta(), records)
    scores = compute_scores(path, {"knn": {"method": "knn", "k": 3}, "disc": {"method": "ccfv_disc"},
                                   "rankme": {"method": "rankme"},
                                   "varied": {"method": "ccfv", "global_voxels": "varied"}})
    ff = read_features(path)
    features, labels, _, cases = head_samples(ff, with_cases=True)
    assert sorted(set(cases)) == [0, 1, 2, 3] and len(cases) == len(labels)
    assert scores["knn"] == metrics.knn_accuracy(features, labels, cases, k=3)
    layers = ccfv_layers(ff)
    assert all(len(layer["background"]) == 4 and len(layer["global_input_std"]) == 4 for layer in layers)
    assert scores["disc"] == metrics.discriminative_ccfv_score(layers)
    assert scores["rankme"] == metrics.rankme_score(layers)
    kept = [{**layer, "global": [v[:12] for v in layer["global"]]} for layer in layers]
    assert scores["varied"] == pytest.approx(metrics.ccfv_score(kept), rel=1e-12)
    np.testing.assert_array_equal(ff.cases["c0"].input_std["global"], records[0].input_std["global"])


def test_released_layers_add_background_and_skip_incomplete_cases(features_path):
    ff = read_features(features_path)
    complete = [r for r in ff.cases.values() if not r.absent_classes]
    assert len(complete) == 3  # c1 has no class 2
    for index, released in enumerate(released_layers(ff)):
        assert len(released["cases"]) == 3
        for case_released, record in zip(released["cases"], complete):
            assert set(case_released) == {0, 1, 2}
            np.testing.assert_array_equal(case_released[0], record.features[index]["background"])
            np.testing.assert_array_equal(case_released[2], record.features[index]["class_2"])


def test_released_needs_two_complete_cases(tmp_path):
    rng = np.random.default_rng(2)
    path = write_features(tmp_path / "few.h5", _meta(), [_record("a", rng), _record("b", rng, present=(1,))])
    with pytest.raises(ValueError, match=r"few\.h5: ccfv_released needs at least 2 cases holding every class"):
        compute_scores(path, {"r": {"method": "ccfv_released"}})


def test_options_reach_the_function(features_path):
    a = compute_scores(features_path, {"x": {"method": "gbc", "gaussian": "diagonal"}})["x"]
    ff = read_features(features_path)
    features, labels, _ = head_samples(ff)
    assert a == metrics.gbc(features, labels, gaussian="diagonal")
    assert a != metrics.gbc(features, labels, gaussian="spherical")


def test_baselines_default_to_their_released_pipelines_and_can_take_features_as_given(features_path):
    ff = read_features(features_path)
    features, labels, _ = head_samples(ff)
    released = compute_scores(features_path, DEFAULT_METRICS)
    # TransRate: rows normalised, centred, normalised again (the released pipeline), unless switched off
    assert released["transrate"] == metrics.transrate(features, labels, row_normalise=True)
    raw = compute_scores(features_path, features_as_given(DEFAULT_METRICS))
    assert raw["transrate"] == metrics.transrate(features, labels, row_normalise=False)
    assert raw["transrate"] != released["transrate"]
    assert raw["gbc"] == metrics.gbc(features, labels, gaussian="diagonal", pca_components=None)
    # the other metrics are untouched, and an explicit option wins over nothing else
    assert {k: v for k, v in raw.items() if k not in ("transrate", "gbc")} == {
        k: v for k, v in released.items() if k not in ("transrate", "gbc")}
    assert features_as_given({"t": {"method": "transrate", "eps": 1e-3, "label": "TR"}}) == {
        "t": {"method": "transrate", "eps": 1e-3, "label": "TR", "row_normalise": False}}
    assert check_metric("g", features_as_given({"g": {"method": "gbc"}})["g"]) == ("gbc", {"pca_components": None})


def test_ccfv_score_uses_the_released_pipelines_unless_features_as_given(features_path, capsys):
    from ccfv.cli import main

    ff = read_features(features_path)
    features, labels, _ = head_samples(ff)
    assert main(["score", str(features_path), "--metric", "transrate", "--metric", "gbc"]) == 0
    released = json.loads(capsys.readouterr().out)
    assert released == {"transrate": metrics.transrate(features, labels, row_normalise=True),
                        "gbc": metrics.gbc(features, labels, gaussian="diagonal", pca_components=64)}
    assert main(["score", str(features_path), "--metric", "transrate", "--metric", "gbc", "--features-as-given"]) == 0
    assert json.loads(capsys.readouterr().out) == {"transrate": metrics.transrate(features, labels, row_normalise=False),
                                                   "gbc": metrics.gbc(features, labels, gaussian="diagonal",
                                                                      pca_components=None)}


@pytest.mark.parametrize(
    ("definition", "message"),
    [
        ({"method": "ccfv", "distanse": "kl"}, r"metric 'bad': method 'ccfv' has no option\(s\) \['distanse'\]"),
        ({"method": "leep2"}, r"unknown scoring method 'leep2'"),
        ({"distance": "kl"}, r"metric 'bad': no 'method'"),
    ],
)
def test_bad_definitions_are_refused_before_reading(tmp_path, definition, message):
    with pytest.raises(ValueError, match=message):
        compute_scores(tmp_path / "does-not-exist.h5", {"bad": definition})


def test_method_options_are_the_keyword_arguments():
    assert {"use_consistency", "use_variety", "single_scale", "distance", "s", "energy", "global_voxels"} <= set(
        method_options("ccfv"))
    assert method_options("logme") == []
    assert check_metric("x", {"method": "transrate", "eps": 1e-3, "label": "TR"}) == ("transrate", {"eps": 1e-3})
    assert set(METHODS) == {"ccfv", "ccfv_released", "logme", "leep", "nce", "gbc", "transrate", "hscore", "ccfv_disc",
                            "rankme", "knn"}


def test_leep_without_probabilities_is_a_clear_error(tmp_path):
    rng = np.random.default_rng(1)
    path = write_features(tmp_path / "np.h5", _meta(), [_record(f"c{i}", rng, probs=False) for i in range(3)])
    with pytest.raises(ValueError, match=r"np\.h5: leep needs the source model's probabilities"):
        compute_scores(path, {"leep": {"method": "leep"}})


def test_score_pair_writes_scores_and_definitions(features_path, tmp_path):
    out = tmp_path / "scores" / "T" / "m.json"
    definitions = {"ccfv": {"method": "ccfv"}, "logme": {"method": "logme"}}
    scores = score_pair(features_path, definitions, out, target="T", model="m")
    data = json.loads(out.read_text())
    assert data["target"] == "T" and data["metrics"] == definitions
    assert read_scores(out) == scores


def test_score_pair_scores_the_seeded_subset_of_max_cases(features_path, tmp_path):
    definitions = {"ccfv": {"method": "ccfv"}, "logme": {"method": "logme"}, "knn": {"method": "knn", "k": 1}}
    out = tmp_path / "m.json"
    scores = score_pair(features_path, definitions, out, max_cases=3, seed=5, target="T", model="m")
    data = json.loads(out.read_text())
    chosen = choose_cases(["c0", "c1", "c2", "c3"], 3, 5)
    assert data["cases"] == chosen and data["n_cases"] == 3 and data["max_cases"] == 3
    ff = read_features(features_path)
    assert scores == score_features(subset_cases(ff, chosen), definitions)
    assert scores != score_features(ff, definitions)  # a subset is not the whole file
    # Every model of a target holds the same cases, so each gets the same subset; the default is every case.
    assert choose_cases(["c0", "c1", "c2", "c3"], 3, 5) == chosen
    everything = score_pair(features_path, definitions, tmp_path / "all.json")
    assert everything == score_features(ff, definitions) and json.loads((tmp_path / "all.json").read_text())["n_cases"] == 4


def test_choose_cases_matches_the_rank_rule_and_refuses_one_case():
    ids = [f"c{i}" for i in range(10)]
    expected = sorted(np.random.default_rng(0).choice(10, size=4, replace=False))
    assert choose_cases(ids, 4, 0) == [ids[i] for i in expected]  # ccfv rank --max-cases's draw
    assert choose_cases(ids, 10, 0) == ids and choose_cases(ids, None, 0) == ids
    with pytest.raises(ValueError, match="at least 2 cases"):
        choose_cases(ids, 1, 0)


def test_ccfv_ranks_a_consistent_model_above_a_noisy_one(tmp_path):
    """Class-consistent features (each class a tight cluster in every case) score higher than features in
    which the classes drift from case to case: the property the whole method rests on."""
    rng = np.random.default_rng(3)

    def model(path, drift):
        records = []
        for i in range(4):
            r = _record(f"c{i}", rng)
            for layer in r.features:
                for key, f in layer.items():
                    if key.startswith("class_"):
                        layer[key] = (f + drift * rng.normal(size=(1, f.shape[1])) * 3).astype(np.float32)
            records.append(r)
        return write_features(path, _meta(), records)

    good = compute_scores(model(tmp_path / "good.h5", 0.0), {"ccfv": {"method": "ccfv"}})["ccfv"]
    bad = compute_scores(model(tmp_path / "bad.h5", 1.0), {"ccfv": {"method": "ccfv"}})["ccfv"]
    assert good > bad
