"""Transferability scores of one (bank model, target) pair, computed from its features file.

Every score is "higher means the model should fine-tune better on the target". A *metric* of the
workflow is a named method with options (``scoring.metrics`` in the config), so that the paper's
ablations are metrics too: ``{"method": "ccfv", "distance": "kl"}`` is the "KL-divergence" row of
Table 2. What each method reads from the features file:

- ``ccfv`` (eq. 5 and its ablations): the class and global samples of every hooked decoder layer.
- ``ccfv_released``: the same layers with the background samples, as the authors' released code uses them.
- ``logme``, ``gbc``, ``transrate``, ``hscore``: the layer before the final convolution at the class and
  background voxels, with their target labels (the paper's protocol for its baselines). ``transrate`` and
  ``gbc`` preprocess them as their authors' released pipelines do (TransRate: L2-normalise the rows,
  centre, normalise again; GBC: PCA to 64 dimensions) unless an option switches it off
  (:data:`RELEASED_PREPROCESSING_OFF`, docs/metrics.md).
- ``leep``, ``nce``: the source model's softmax (LEEP) or its argmax (NCE) at the same voxels.
- ``knn``: the last layer at the class and background voxels with their labels and cases (leave one case out).
- ``ccfv_disc`` (CC-FV-D), ``rankme`` (label-free): pre-registered scores (docs/preregistration.md); CC-FV-D
  reads the class and background samples of every layer, RankMe the global samples and no label.
"""
from __future__ import annotations

import inspect
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..features.file import FeaturesFile, read_features, subset_cases
from ..io import write_json
from . import metrics
from .views import ccfv_layers, head_samples, released_layers

#: Methods and the metrics function that computes each; the options of a metric are that function's
#: keyword arguments (checked, so that a typo in the config is an error rather than a default).
METHODS = {
    "ccfv": metrics.ccfv_score,
    "ccfv_disc": metrics.discriminative_ccfv_score,
    "ccfv_released": metrics.ccfv_score_released,
    "rankme": metrics.rankme_score,
    "knn": metrics.knn_accuracy,
    "logme": metrics.logme,
    "leep": metrics.leep,
    "nce": metrics.nce,
    "gbc": metrics.gbc,
    "transrate": metrics.transrate,
    "hscore": metrics.hscore,
}

#: The paper's Table 1 (its baselines and CC-FV) and Table 2 (the ablations) as metric definitions.
DEFAULT_METRICS = {
    "logme": {"method": "logme"},
    "transrate": {"method": "transrate"},
    "leep": {"method": "leep"},
    "gbc": {"method": "gbc", "gaussian": "diagonal"},  # the GBC authors' segmentation setting
    "ccfv": {"method": "ccfv"},
    "ccfv_wo_ccons": {"method": "ccfv", "use_consistency": False},
    "ccfv_wo_fv": {"method": "ccfv", "use_variety": False},
    "ccfv_single_scale": {"method": "ccfv", "single_scale": True},
    "ccfv_kl": {"method": "ccfv", "distance": "kl"},
    "ccfv_bhattacharyya": {"method": "ccfv", "distance": "bhattacharyya"},
}

#: Metrics beyond the paper's tables, by the names the workflow's config, ``ccfv score`` and ``ccfv rank`` give
#: them: eq. 3's literal energy sum, the k-NN baseline and the pre-registered scores (docs/preregistration.md).
EXTRA_METRICS = {
    "ccfv_energy_sum": {"method": "ccfv", "energy": "sum"},
    "knn": {"method": "knn", "k": 5},
    "ccfv_disc": {"method": "ccfv_disc"},
    "ccfv_varied": {"method": "ccfv", "global_voxels": "varied"},
    "rankme": {"method": "rankme"},
}


#: The baselines whose defaults reproduce a preprocessing step of the authors' released pipeline
#: (docs/metrics.md), and the options that switch it off: TransRate's row normalisation
#: (Long-Kai/TransRate), GBC's PCA to 64 dimensions (google-research stable_transfer).
RELEASED_PREPROCESSING_OFF = {"transrate": {"row_normalise": False}, "gbc": {"pca_components": None}}


def features_as_given(definitions: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """The metric definitions with the released pipelines' preprocessing switched off
    (:data:`RELEASED_PREPROCESSING_OFF`): every baseline then scores the decoder features as sampled.
    ``ccfv score --features-as-given`` and ``ccfv rank --features-as-given``; in the workflow, set the
    options in ``scoring.metrics``."""
    return {name: {**d, **RELEASED_PREPROCESSING_OFF.get(d.get("method"), {})} for name, d in definitions.items()}


def method_options(method: str) -> list[str]:
    """The options a method accepts (keyword-only or defaulted arguments of its function)."""
    if method not in METHODS:
        raise ValueError(f"unknown scoring method {method!r}; known: {sorted(METHODS)}")
    parameters = inspect.signature(METHODS[method]).parameters.values()
    return [p.name for p in parameters if p.default is not inspect.Parameter.empty]


def check_metric(name: str, definition: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """(method, options) of a metric definition; an unknown method or option is an error naming both."""
    if "method" not in definition:
        raise ValueError(f"metric {name!r}: no 'method' (one of {sorted(METHODS)})")
    method = definition["method"]
    options = {k: v for k, v in definition.items() if k not in ("method", "label")}
    allowed = method_options(method)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"metric {name!r}: method {method!r} has no option(s) {unknown}; it takes {allowed}")
    return method, options


def _score(ff: FeaturesFile, method: str, options: dict[str, Any], cache: dict) -> float:
    if method in ("ccfv", "ccfv_disc", "rankme", "ccfv_released"):
        key = "released_layers" if method == "ccfv_released" else "layers"
        if key not in cache:
            cache[key] = released_layers(ff) if method == "ccfv_released" else ccfv_layers(ff)
        return METHODS[method](cache[key], **options)
    if "head" not in cache:
        cache["head"] = head_samples(ff, with_cases=True)
    features, labels, probs, cases = cache["head"]
    if method == "knn":
        return METHODS[method](features, labels, cases, **options)
    if method in ("leep", "nce"):
        if probs is None:
            raise ValueError(f"{ff.path}: {method} needs the source model's probabilities, which the file lacks")
        source = probs if method == "leep" else np.argmax(probs, axis=1)
        return METHODS[method](source, labels, **options)
    return METHODS[method](features, labels, **options)


def compute_scores(features_path: Path, definitions: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """{metric: score} for one features file; every metric's definition is checked before any work."""
    checked = {name: check_metric(name, d) for name, d in definitions.items()}
    return score_features(read_features(features_path), checked)


def score_features(ff: FeaturesFile, definitions: Mapping[str, Any]) -> dict[str, float]:
    """{metric: score} of a features file read into memory (or a subset of its cases,
    :func:`ccfv.features.file.subset_cases`: the case bootstrap and the case-count study use it).
    ``definitions``: {name: definition} or {name: (method, options)} as :func:`check_metric` returns them.

    Raises:
        ValueError: a bad definition, or a score that is not finite (naming the file and the metric).
    """
    checked = {name: d if isinstance(d, tuple) else check_metric(name, d) for name, d in definitions.items()}
    cache: dict = {}
    scores = {}
    for name, (method, options) in checked.items():
        value = float(_score(ff, method, options, cache))
        if not math.isfinite(value):
            raise ValueError(f"{ff.path}: metric {name!r} ({method}) is not finite ({value})")
        scores[name] = value
    return scores


def choose_cases(case_ids: Sequence[str], max_cases: int | None, seed: int) -> list[str]:
    """The cases a ranking is scored on: all of ``case_ids`` when ``max_cases`` is None or not below their
    number, else ``max_cases`` of them drawn without replacement by ``numpy.random.default_rng(seed)``, kept in
    the given order. The rule ``ccfv rank --max-cases`` uses, so the workflow's ``scoring.max_cases`` with
    ``sampling.seed`` scores the cases ``ccfv rank`` would sample on the same ordered case list.

    Raises:
        ValueError: ``max_cases`` below 2 (class consistency compares each class across cases).
    """
    if max_cases is None or max_cases >= len(case_ids):
        return list(case_ids)
    if max_cases < 2:
        raise ValueError(f"max_cases {max_cases}: scoring needs at least 2 cases (class consistency compares each "
                         "class across cases)")
    chosen = np.random.default_rng(seed).choice(len(case_ids), size=max_cases, replace=False)
    return [case_ids[i] for i in sorted(chosen)]


def score_pair(features_path: Path, definitions: Mapping[str, Mapping[str, Any]], out: Path,
               max_cases: int | None = None, seed: int = 0, **meta) -> dict:
    """The workflow's scoring step: every configured metric of one (model, target) into one JSON file.

    ``max_cases`` (the config's ``scoring.max_cases``; None: every case of the file) scores a subset of the
    file's training cases chosen by :func:`choose_cases` with ``seed`` (``sampling.seed``), the same subset for
    every model of a target, whose features hold the same cases. CC-FV's class consistency compares every pair
    of cases, so its cost grows with the square of the cases: on the real study's 208 cases one MeshNet's
    scores took 2 059 CPU s. The JSON records the cases scored (``cases``) and their number.
    """
    checked = {name: check_metric(name, d) for name, d in definitions.items()}
    ff = read_features(features_path)
    cases = choose_cases(list(ff.cases), max_cases, seed)
    if len(cases) < len(ff.cases):
        ff = subset_cases(ff, cases)
    scores = score_features(ff, checked)
    write_json(out, {**meta, "metrics": {k: dict(v) for k, v in definitions.items()}, "scores": scores,
                     "n_cases": len(cases), "max_cases": max_cases, "cases": cases})
    return scores


def read_scores(path: Path) -> dict[str, float]:
    return {k: float(v) for k, v in json.loads(Path(path).read_text())["scores"].items()}
