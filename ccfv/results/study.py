"""Analyses of a finished study from its features files and its fine-tuned Dice (issue 24): re-scoring with
other metric definitions, what drives CC-FV's feature variety, and how many target cases a ranking needs.
The scripts under ``analysis/`` call these; docs/benchmark.md reports what they printed.

A study here is a results folder of the workflow (``<results>/features/<target>/<model>.h5`` and
``<results>/nnunet/<target>/preprocessed``) and a CSV of the mean Dice per (target, model)
(``scores_and_dice.csv``: columns ``target``, ``model``, ``dice_mean_over_seeds``).
"""
from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..bank.model_ids import model_architecture
from ..features.file import GLOBAL_KEY, FeaturesFile, read_features, subset_cases
from ..scores.scoring import check_metric, score_features
from ..scores.views import ccfv_layers
from .measures import eta_squared, kendall_tau, statistic

#: Input values within this of a case's minimum count as the case's floor (CT air clipped to the window).
FLOOR_TOLERANCE = 1e-6


def read_study_dice(path: str | Path) -> dict[tuple[str, str], float]:
    """{(target, model): mean fine-tuned Dice} from a ``scores_and_dice.csv``; errors name the file."""
    path = Path(path)
    rows = list(csv.DictReader(io.StringIO(path.read_text())))
    if not rows or not {"target", "model", "dice_mean_over_seeds"} <= set(rows[0]):
        raise ValueError(f"{path}: needs the columns target, model, dice_mean_over_seeds")
    return {(r["target"], r["model"]): float(r["dice_mean_over_seeds"]) for r in rows}


def features_files(results_dir: str | Path) -> dict[tuple[str, str], Path]:
    """{(target, model): features file} of a results folder."""
    return {(p.parent.name, p.stem): p for p in sorted(Path(results_dir, "features").glob("*/*.h5"))}


def add_input_std(ff: FeaturesFile, image_of: Callable[[str], np.ndarray]) -> dict[str, np.ndarray]:
    """Record each case's global voxels' input standard deviation (``ccfv.features.voxels.local_input_std``)
    into a file sampled before the sampler recorded it, from the preprocessed images (``image_of(case_id)``
    -> [C, D, H, W]), in memory; return {case id: [L] bool}, True where the voxel's input is the case's
    minimum on every channel (CT's air clipped to the window's floor)."""
    from ..features.voxels import local_input_std

    floors = {}
    for case_id, record in ff.cases.items():
        image = image_of(case_id.split("#")[0])
        coords = np.asarray(record.coords[GLOBAL_KEY], dtype=np.int64)
        record.input_std = {**record.input_std, GLOBAL_KEY: local_input_std(image, coords)}
        values = image[:, coords[:, 0], coords[:, 1], coords[:, 2]]
        minimum = image.reshape(image.shape[0], -1).min(axis=1)[:, None]
        floors[case_id] = np.all(values <= minimum + FLOOR_TOLERANCE, axis=0)
    return floors


def score_study(files: Mapping[tuple[str, str], Path], definitions: Mapping[str, Mapping[str, Any]],
                dice: Mapping[tuple[str, str], float],
                prepare: Callable[[str, FeaturesFile], FeaturesFile] | None = None) -> list[dict]:
    """Records {target, model, dice, scores} (as ``ccfv.results.tables.table1`` takes them) of every
    (target, model) with a Dice, scored with ``definitions``; ``prepare(target, ff)`` may add to a file first
    (``add_input_std``)."""
    checked = {name: check_metric(name, d) for name, d in definitions.items()}
    records = []
    for (target, model), path in sorted(files.items()):
        if (target, model) not in dice:
            continue
        ff = read_features(path)
        if prepare is not None:
            ff = prepare(target, ff)
        records.append({"target": target, "model": model, "dice": dice[(target, model)],
                        "scores": score_features(ff, checked)})
    return records


def architecture_shares(records: Sequence[Mapping], metrics: Sequence[str], targets: Sequence[str]) -> dict:
    """{target: {"dice": eta^2, metric: eta^2}}: the share of the variance across the bank that the
    architecture explains (:func:`ccfv.results.measures.eta_squared`)."""
    out = {}
    for target in targets:
        mine = [r for r in records if r["target"] == target]
        archs = [model_architecture(r["model"]) for r in mine]
        out[target] = {"dice": eta_squared([r["dice"] for r in mine], archs),
                       **{m: eta_squared([r["scores"][m] for r in mine], archs) for m in metrics}}
    return out


def variety_variants(ff: FeaturesFile, floors: Mapping[str, np.ndarray]) -> dict[str, list[float]]:
    """Per layer, log F_v (mean energy) over four sets of each case's global voxels: ``all``, ``not_floor``
    (input above the case's minimum: inside the body on CT), ``varied`` (input std > ``MIN_INPUT_STD`` in the
    3x3x3 neighbourhood), ``floor`` (the complement of ``not_floor``); a variant with a case of fewer than 2
    such voxels leaves that case out, and is NaN when no case is left. ``floors``: :func:`add_input_std`'s.
    Also ``share_floor`` and ``share_varied``: the share of the global voxels in each set (one value)."""
    from ..scores.metrics.ccfv import MIN_INPUT_STD, feature_variety

    layers = ccfv_layers(ff)
    masks = {"all": [], "not_floor": [], "varied": [], "floor": []}
    for case_id, record in ff.cases.items():
        floor = np.asarray(floors[case_id], dtype=bool)
        varied = np.asarray(record.input_std[GLOBAL_KEY]) > MIN_INPUT_STD
        masks["all"].append(np.ones_like(floor))
        masks["not_floor"].append(~floor)
        masks["varied"].append(varied)
        masks["floor"].append(floor)
    out: dict[str, list[float]] = {}
    for name, per_case in masks.items():
        values = []
        for layer in layers:
            kept = [v[m[: len(v)]] for v, m in zip(layer["global"], per_case)]
            kept = [v for v in kept if len(v) >= 2]
            values.append(math.log(feature_variety(kept)) if kept else math.nan)
        out[name] = values
    total = sum(len(m) for m in masks["all"])
    out["share_floor"] = [sum(int(m.sum()) for m in masks["floor"]) / total]
    out["share_varied"] = [sum(int(m.sum()) for m in masks["varied"]) / total]
    return out


def case_count_agreement(ff_by_model: Mapping[str, FeaturesFile], definitions: Mapping[str, Mapping[str, Any]],
                         counts: Sequence[int], repeats: int, seed: int = 0,
                         dice: Mapping[str, float] | None = None) -> list[dict]:
    """How well a ranking from ``n`` of a target's cases agrees with the ranking from all of them, per metric:
    for each ``n`` of ``counts`` (those below the number of cases) ``repeats`` subsets of n cases drawn
    without replacement (seeded; the same subsets for every model and metric), Kendall's tau-b between the
    models' scores on the subset and on all cases, and with ``dice`` the weighted tau with the Dice.

    Returns rows {metric, n, repeats, kendall_to_all (mean), kendall_to_all_min, tau_with_dice (mean)}; a
    subset on which a metric cannot be computed (e.g. a class in fewer than 2 cases) is left out of its mean
    and counted in ``failed``.
    """
    checked = {name: check_metric(name, d) for name, d in definitions.items()}
    models = sorted(ff_by_model)
    case_ids = list(next(iter(ff_by_model.values())).cases)
    full = {m: score_features(ff_by_model[m], checked) for m in models}
    rng = np.random.default_rng(seed)
    rows = []
    for n in counts:
        if n >= len(case_ids) or n < 2:
            continue
        subsets = [sorted(rng.choice(len(case_ids), size=n, replace=False)) for _ in range(repeats)]
        per_metric: dict[str, dict[str, list[float]]] = {m: {"kendall": [], "tau": [], "failed": []} for m in checked}
        for subset in subsets:
            ids = [case_ids[i] for i in subset]
            scored = {}
            for model in models:
                sub = subset_cases(ff_by_model[model], ids)
                for name, definition in checked.items():
                    try:
                        scored.setdefault(name, {})[model] = score_features(sub, {name: definition})[name]
                    except ValueError:
                        scored.setdefault(name, {})[model] = math.nan
            for name in checked:
                values = [scored[name][m] for m in models]
                if not all(math.isfinite(v) for v in values):
                    per_metric[name]["failed"].append(1.0)
                    continue
                per_metric[name]["kendall"].append(kendall_tau(values, [full[m][name] for m in models]))
                if dice is not None:
                    per_metric[name]["tau"].append(statistic("tau", values, [dice[m] for m in models]))
        for name, got in per_metric.items():
            kendall = [v for v in got["kendall"] if math.isfinite(v)]
            tau = [v for v in got["tau"] if math.isfinite(v)]
            rows.append({"metric": name, "n": n, "repeats": repeats, "failed": len(got["failed"]),
                         "kendall_to_all": float(np.mean(kendall)) if kendall else math.nan,
                         "kendall_to_all_min": float(np.min(kendall)) if kendall else math.nan,
                         "tau_with_dice": float(np.mean(tau)) if tau else math.nan})
    if dice is not None:
        for name in checked:
            rows.append({"metric": name, "n": len(case_ids), "repeats": 1, "failed": 0, "kendall_to_all": 1.0,
                         "kendall_to_all_min": 1.0,
                         "tau_with_dice": statistic("tau", [full[m][name] for m in models],
                                                    [dice[m] for m in models])})
    return rows
