"""Transferability scores of one (bank model, target) pair, computed from its features file.

Every score is "higher means the model should fine-tune better on the target". CC-FV (eq. 5) reads the
class and global samples of every hooked decoder layer; LogME reads the layer before the final convolution
at the class and background voxels with their target labels, as the paper does for its baselines.
"""
from __future__ import annotations

import json
import math
from pathlib import Path


from . import metrics
from .atomic import write_json
from .features_file import ccfv_layers, head_samples, read_features

#: Scores the workflow knows, with what each needs. The ablations of Table 2 are variants of CC-FV.
METRICS = ("ccfv", "logme")


def compute_scores(features_path: Path, names: list[str], *, hse_s: float = 1.0) -> dict[str, float]:
    """{metric: score} for the features file; unknown metric names are an error naming them."""
    unknown = sorted(set(names) - set(METRICS))
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; known: {list(METRICS)}")
    ff = read_features(features_path)
    scores: dict[str, float] = {}
    if "ccfv" in names:
        scores["ccfv"] = metrics.ccfv_score(ccfv_layers(ff), s=hse_s)
    if "logme" in names:
        features, labels, _ = head_samples(ff)
        scores["logme"] = metrics.logme(features, labels)
    for name, value in scores.items():
        if not math.isfinite(value):
            raise ValueError(f"{features_path}: {name} score is not finite ({value})")
    return scores


def write_scores(scores: dict[str, float], path: Path, **meta) -> None:
    write_json(path, {**meta, "scores": scores})


def read_scores(path: Path) -> dict[str, float]:
    return {k: float(v) for k, v in json.loads(Path(path).read_text())["scores"].items()}
