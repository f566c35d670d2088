"""``ccfv rank``'s recommendation: which model to fine-tune, by the metric the committed evidence supports, and
how sure that pick is: the share of case bootstrap resamples in which it stays first (docs/rank.md).

The metric that orders the table is :data:`RECOMMENDED_METRIC`, chosen from the committed studies
(docs/benchmark.md) and revised when the evidence changes; the user can order by another with ``--metric``.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: The metric that orders ``ccfv rank``'s table by default, and why (docs/benchmark.md, docs/rank.md): on the
#: 20-model synthetic study LogME had the best mean weighted tau with the fine-tuned Dice (0.43, CC-FV -0.26)
#: and the lowest top-1 regret (0.073); the re-scored study and the held-out worlds are in docs/benchmark.md.
RECOMMENDED_METRIC = "logme"
#: Case bootstrap of the top pick: resamples (each draws as many cases as the ranking used, with replacement).
CONFIDENCE_RESAMPLES = 200
#: A model first in at least this share of the resamples is "within noise" of the pick.
WITHIN_NOISE_SHARE = 0.1


def top_pick_confidence(features: Mapping[str, Path], definition: Mapping[str, Any], n_resamples: int,
                        seed: int = 0) -> dict[str, Any]:
    """How often each model comes first by one metric when the target's cases are resampled.

    Each of ``n_resamples`` resamples draws N of the N cases with replacement (``numpy.random.default_rng(seed)``;
    the same resamples for every model) and scores every model's features on them
    (:func:`ccfv.scores.scoring.score_features`); ties for first share the resample. A resample on which some
    model's score cannot be computed (e.g. a class present in fewer than 2 of the drawn cases) is skipped.

    Args:
        features: {model: features file}, every file sampled on the same cases.
        definition: the metric (``{"method": ..., options}``).
        n_resamples: resamples (>= 1).

    Returns:
        {"first": {model: share of the valid resamples in which it is first}, "n_valid", "n_resamples"}.

    Raises:
        ValueError: fewer than 2 models, files sampled on different cases, n_resamples < 1.
    """
    from ..features.file import read_features, subset_cases
    from ..scores.scoring import check_metric, score_features

    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    if len(features) < 2:
        raise ValueError("a top pick needs at least 2 models")
    files = {m: read_features(p) for m, p in features.items()}
    cases = [list(ff.cases) for ff in files.values()]
    if any(c != cases[0] for c in cases):
        raise ValueError("the features files hold different cases; a case bootstrap needs the same cases")
    checked = {"m": check_metric("m", definition)}
    rng = np.random.default_rng(seed)
    first = {m: 0.0 for m in files}
    valid = 0
    for _ in range(n_resamples):
        drawn = [cases[0][i] for i in rng.integers(0, len(cases[0]), size=len(cases[0]))]
        try:
            scores = {m: score_features(subset_cases(ff, drawn), checked)["m"] for m, ff in files.items()}
        except ValueError:
            continue
        best = max(scores.values())
        tied = [m for m, s in scores.items() if s == best]
        for m in tied:
            first[m] += 1.0 / len(tied)
        valid += 1
    return {"first": {m: (v / valid if valid else math.nan) for m, v in first.items()}, "n_valid": valid,
            "n_resamples": n_resamples}


def recommend(rows: Sequence[Mapping], metric: str, confidence: Mapping[str, Any] | None) -> dict[str, Any]:
    """The recommendation of a ranking: the model ``metric`` ranks first, its bootstrap confidence (the share
    of resamples in which it stays first) and the models within noise of it (first in at least
    :data:`WITHIN_NOISE_SHARE` of the resamples), with the sentence ``ccfv rank`` prints. ``rows``: the
    ranking's rows (``model``, ``scores``); ``confidence``: :func:`top_pick_confidence` or None (not computed)."""
    best = max(rows, key=lambda r: r["scores"][metric])["model"]
    out: dict[str, Any] = {"metric": metric, "model": best, "confidence": None, "within_noise": [],
                           "n_resamples": None}
    if confidence is None or not confidence["n_valid"]:
        out["sentence"] = (f"Fine-tune {best} (first by {metric}; its bootstrap confidence was not computed)."
                           if confidence is None else
                           f"Fine-tune {best} (first by {metric}); no case resample could be scored, so how sure "
                           "the pick is cannot be said.")
        return out
    share = confidence["first"]
    out.update(confidence=share[best], n_resamples=confidence["n_valid"],
               within_noise=sorted((m for m, s in share.items() if m != best and s >= WITHIN_NOISE_SHARE),
                                   key=lambda m: -share[m]))
    sentence = (f"Fine-tune {best}: first by {metric} in {share[best]:.0%} of {confidence['n_valid']} case "
                "resamples")
    if out["within_noise"]:
        others = ", ".join(f"{m} ({share[m]:.0%})" for m in out["within_noise"])
        sentence += f"; {others} {'is' if len(out['within_noise']) == 1 else 'are'} within noise of it."
    else:
        sentence += "; no other model is first in 10% of them."
    out["sentence"] = sentence
    return out
