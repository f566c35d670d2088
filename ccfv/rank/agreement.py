"""With ``--dice``: how each metric's ranking, and the static rankers', agree with the known Dice, and whether
that Dice can rank the models at all (docs/rank.md)."""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np


def read_dice(path: Path, targets: Sequence[str] | None = None) -> dict[str, float]:
    """``--dice FILE``: known fine-tuned Dice per model, a CSV with a header naming a ``model`` column and a
    ``dice`` (or ``dice_mean_over_seeds``) column. With a ``target`` column (the workflow's
    ``results/tables/scores_and_dice.csv``) only the rows whose target is one of ``targets`` are read
    (``targets=None``: every row is checked, for a file read before the dataset is known)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing")
    reader = csv.DictReader(io.StringIO(path.read_text()))
    columns = reader.fieldnames or []
    dice_column = next((c for c in ("dice", "dice_mean_over_seeds") if c in columns), None)
    if "model" not in columns or dice_column is None:
        raise ValueError(f"{path}: the first line must name the columns 'model' and 'dice' (found {columns})")
    out: dict[str, float] = {}
    keys: set[tuple[str | None, str]] = set()
    seen_targets = set()
    for row in reader:
        line = reader.line_num
        if "target" in columns and targets is not None:
            seen_targets.add(row["target"])
            if row["target"] not in targets:
                continue
        model = (row["model"] or "").strip()
        try:
            value = float(row[dice_column])
        except (TypeError, ValueError):
            raise ValueError(f"{path}: line {line}: {dice_column} {row[dice_column]!r} is not a number") from None
        if not model or not math.isfinite(value):
            raise ValueError(f"{path}: line {line}: needs a model name and a finite {dice_column}")
        if (row.get("target"), model) in keys:
            raise ValueError(f"{path}: line {line}: model {model!r} appears twice"
                             + (" (add a 'target' column to tell datasets apart)" if "target" not in columns else ""))
        keys.add((row.get("target"), model))
        out[model] = value
    if not out:
        where = f" for the target {' or '.join(targets)} (targets in the file: {sorted(seen_targets)})" \
            if seen_targets else ""
        raise ValueError(f"{path}: no rows{where}")
    return out


def ranks(values: Sequence[float]) -> list[int]:
    """1 for the highest score; equal scores share the better rank."""
    from scipy.stats import rankdata

    return [int(r) for r in rankdata(-np.asarray(values, dtype=float), method="min")]


#: Bootstrap of the agreement with ``--dice``: resamples of the models with replacement, seeded.
AGREEMENT_BOOTSTRAP = {"n_resamples": 1000, "seed": 0}


def _finite_or_none(value) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def agreement(scores: Sequence[float], dice: Sequence[float], models: Sequence[str]) -> dict[str, Any]:
    """How one ranking of the models with a known Dice agrees with that Dice (docs/rank.md), JSON-ready
    (undefined values are None): weighted Kendall's tau and Pearson (as Table 1), Kendall's tau-b, Rel@1 and
    the top-3 hit (:mod:`ccfv.results`), each with a 95% percentile bootstrap interval under ``<name>_ci``
    (:data:`AGREEMENT_BOOTSTRAP`, the same resamples for every method), the top-1 regret, and the
    leave-one-out stability of the weighted tau (``loo_tau_min``, ``loo_tau_max``, ``loo_max_change``,
    ``most_influential``: the model whose removal moves it most). Needs at least 3 models (else only the
    regret and a ``note``)."""
    from ..results.measures import (
        SELECTION_MEASURES,
        STATISTICS,
        bootstrap_interval,
        loo_stability,
        statistic,
        top1_regret,
    )

    entry: dict[str, Any] = {"n": len(dice)}
    if len(dice) < 3:
        entry.update({name: None for name in (*STATISTICS, *SELECTION_MEASURES)})
        entry["note"] = "needs the Dice of at least 3 ranked models"
        if dice:
            entry["top1_regret"] = top1_regret(scores, dice)["regret"]
        return entry
    indices = np.random.default_rng(AGREEMENT_BOOTSTRAP["seed"]).integers(
        0, len(dice), size=(AGREEMENT_BOOTSTRAP["n_resamples"], len(dice)))
    for name in (*STATISTICS, *SELECTION_MEASURES):
        entry[name] = _finite_or_none(statistic(name, scores, dice))
        ci = bootstrap_interval(scores, dice, name, indices=indices)
        entry[f"{name}_ci"] = None if not math.isfinite(ci["low"]) else [ci["low"], ci["high"]]
    entry["top1_regret"] = top1_regret(scores, dice)["regret"]
    stable = loo_stability(scores, dice)
    entry.update({k: _finite_or_none(stable[k]) for k in ("loo_tau_min", "loo_tau_max", "loo_max_change")})
    entry["most_influential"] = None if stable["most_influential"] is None else models[stable["most_influential"]]
    return entry


def agreement_per_metric(rows: list[dict], metrics: Sequence[str]) -> dict[str, dict]:
    """{metric: :func:`agreement` of its scores with the known Dice}, over the models with a Dice:
    weighted tau, Pearson, Kendall's tau-b, Rel@1, top-3 hit with bootstrap intervals, top-1 regret (Dice of
    the best model minus Dice of the one the metric ranks first) and the leave-one-out stability."""
    known = [r for r in rows if r.get("dice") is not None]
    dice = [r["dice"] for r in known]
    models = [r["model"] for r in known]
    return {metric: agreement([r["scores"][metric] for r in known], dice, models) for metric in metrics}


#: The static rankers ``ccfv rank --dice`` compares the metrics with. Pretrained-first and larger-source-first
#: need what a user's model does not say (every model given is pretrained; its source's size is unknown).
RANK_BASELINES = {"larger_model_first": "Larger model first", "random": "Random ranking (expected)"}


def baseline_agreement(rows: list[dict]) -> dict[str, dict]:
    """:func:`agreement` of the static rankers with the known Dice: ``larger_model_first`` (the models'
    weights, ``parameters``, heads excluded; when every model with a Dice has a count) and ``random``
    (every model tied: Rel@1 and the top-3 hit are their expectations over random orders; the correlations
    are 0 in expectation and have no interval)."""
    known = [r for r in rows if r.get("dice") is not None]
    dice = [r["dice"] for r in known]
    models = [r["model"] for r in known]
    out = {}
    if known and all(r.get("parameters") is not None for r in known):
        out["larger_model_first"] = agreement([float(r["parameters"]) for r in known], dice, models)
    random = agreement([0.0] * len(known), dice, models)
    if len(known) >= 3:
        for name in ("tau", "pearson", "kendall"):
            random[name], random[f"{name}_ci"] = 0.0, None
        random.update({"loo_tau_min": None, "loo_tau_max": None, "loo_max_change": None, "most_influential": None})
    out["random"] = random
    return out


def methods_ranking_stability(correlations_: dict[str, dict], baselines: dict[str, dict], rows: list[dict]) -> float | None:
    """Mean Kendall's tau-b between the order of the metrics and ``larger_model_first`` by weighted tau on
    all models with a Dice and with one of them left out (:func:`ccfv.results.measures.method_ranking_stability`);
    None when undefined (fewer than 2 methods with a weighted tau, or fewer than 4 models)."""
    from ..results.measures import leave_one_out, statistic
    from ..results.measures import method_ranking_stability as stability

    known = [r for r in rows if r.get("dice") is not None]
    if len(known) < 4:
        return None
    dice = [r["dice"] for r in known]
    scores = {m: [r["scores"][m] for r in known] for m in correlations_}
    if "larger_model_first" in baselines:
        scores["larger_model_first"] = [float(r["parameters"]) for r in known]
    full = {m: statistic("tau", s, dice) for m, s in scores.items()}
    loo = {m: leave_one_out(s, dice) for m, s in scores.items()}
    return _finite_or_none(stability(full, loo))


def dice_health(rows: list[dict], dataset: str = "") -> dict:
    """The ground-truth health check (:func:`ccfv.results.ground_truth.check_target`, default thresholds) on the
    ``--dice`` values of the ranked models: can this Dice rank them at all? JSON-ready (NaN as None), with
    the thresholds under ``rule``. One value per model, so the seed-noise criterion does not apply."""
    from dataclasses import asdict

    from ..results.ground_truth import HealthRule, check_target

    known = [r for r in rows if r.get("dice") is not None]
    rule = HealthRule()
    result = check_target([r["model"] for r in known], [[r["dice"]] for r in known], rule, target=dataset)
    clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in result.items()}
    return {**clean, "rule": asdict(rule)}
