"""The ``statistics`` rule: bootstrap intervals and p-values, regret, selection measures, leave-one-out
stability and the noise ceiling of every metric and static ranker, and the share of each score's variance the
architecture explains, as CSV and Markdown tables."""
from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..io import write_text
from .formatting import flag_cell, flag_footnote, flagged_header, fmt_number, short_task
from .measures import (
    SELECTION_LABELS,
    SELECTION_MEASURES,
    STATISTICS,
    bootstrap_interval,
    eta_squared,
    loo_stability,
    method_ranking_stability,
    noise_ceiling,
    percentile_interval,
    permutation_pvalue,
    permutations_for,
    statistic,
    statistic_batch,
    top1_regret,
)
from .static_rankers import BASELINE_LABELS, baseline_scores, static_rankers_note
from .tables import METRIC_LABELS

#: The column (and CSV target) of the mean over targets.
AVG = "Avg"


def analyse(records: list[Mapping], metrics: list[str], targets: list[str], source_sizes: Mapping[str, int],
            labels: Mapping[str, str] | None = None, n_bootstrap: int = 1000, n_permutations: int = 2000,
            n_simulations: int = 1000, seed: int = 0,
            parameter_counts: Mapping[str, int] | None = None) -> dict[str, list[dict]]:
    """Correlations with bootstrap intervals and permutation p-values, top-1 regret, the noise ceiling,
    the selection measures (Kendall's tau-b, Rel@1, top-3 hit, each with a bootstrap interval; per target
    and their mean over targets) and the leave-one-out stability, per target, for ``metrics`` and the
    static baselines (``larger_model_first`` only with ``parameter_counts``, {model id: weights}).

    Every metric of a target sees the same bootstrap resamples and permutations (seeded by ``seed`` and
    the target's position), so differences between metrics are paired. The interval of a mean over
    targets is the percentile interval of the per-resample means (resample b of every target averaged;
    targets are resampled independently), over the resamples where every target's value is defined.
    """
    labels = {**METRIC_LABELS, **BASELINE_LABELS, **(labels or {})}
    stats_rows, regret_rows, ceiling_rows, selection_rows, stability_rows = [], [], [], [], []
    replicates: dict[tuple[str, str], list[np.ndarray]] = {}  # (method, measure) -> per-target resample values
    for t_index, target in enumerate(targets):
        mine = sorted((r for r in records if r["target"] == target), key=lambda r: r["model"])
        models = [r["model"] for r in mine]
        dice = np.array([r["dice"] for r in mine], dtype=float)
        rng = np.random.default_rng([seed, t_index])
        boot = rng.integers(0, len(models), size=(n_bootstrap, len(models)))
        perms = permutations_for(len(models), n_permutations, int(rng.integers(2**31)))
        candidates = [(m, "metric", [r["scores"][m] for r in mine]) for m in metrics]
        candidates += [(name, "baseline", s) for name, s in
                       baseline_scores(models, source_sizes, parameter_counts=parameter_counts).items()]
        # The random ranking's selection measures are the expectations over random orders: those of a
        # constant score (every model tied), whose ties the measures break at random.
        selection_candidates = candidates + [("random", "baseline", [0.0] * len(models))]
        loo_taus: dict[str, np.ndarray] = {}
        full_taus: dict[str, float] = {}
        for name, kind, scores in candidates:
            for stat in STATISTICS:
                ci = bootstrap_interval(scores, dice, stat, indices=boot)
                stats_rows.append({
                    "method": labels.get(name, name), "metric": name, "kind": kind, "target": target,
                    "statistic": stat, "value": statistic(stat, scores, dice), "ci_low": ci["low"],
                    "ci_high": ci["high"], "n_valid": ci["n_valid"],
                    "p_value": permutation_pvalue(scores, dice, stat, permutations=perms),
                })
            regret = top1_regret(scores, dice)
            regret_rows.append({
                "method": labels.get(name, name), "metric": name, "kind": kind, "target": target,
                "picked": ";".join(models[i] for i in regret["picked"]),
                "picked_dice": float(dice[regret["picked"]].mean()), "best": models[int(np.argmax(dice))],
                "best_dice": float(dice.max()), "regret": regret["regret"],
            })
            stable = loo_stability(scores, dice)
            loo_taus[name], full_taus[name] = stable.pop("loo_tau"), stable["tau"]
            influential = stable.pop("most_influential")
            stability_rows.append({"method": labels.get(name, name), "metric": name, "kind": kind, "target": target,
                                   **stable, "most_influential": "" if influential is None else models[influential]})
        for name, kind, scores in selection_candidates:
            x = np.asarray(scores, dtype=float)
            for measure in SELECTION_MEASURES:
                if name == "random" and measure == "kendall":  # 0 in expectation (a reversed order negates it)
                    value, values = 0.0, np.full(n_bootstrap, 0.0)
                else:
                    value, values = statistic(measure, x, dice), statistic_batch(measure, x[boot], dice[boot])
                replicates.setdefault((name, measure), []).append(values)
                ci = percentile_interval(values) if name != "random" or measure != "kendall" else \
                    {"low": math.nan, "high": math.nan, "n_valid": 0}
                selection_rows.append({"method": labels.get(name, name), "metric": name, "kind": kind,
                                       "target": target, "statistic": measure, "value": value, "ci_low": ci["low"],
                                       "ci_high": ci["high"], "n_valid": ci["n_valid"]})
        for stat in STATISTICS:  # a uniformly random ranking: both correlations are 0 in expectation
            stats_rows.append({"method": labels["random"], "metric": "random", "kind": "baseline", "target": target,
                               "statistic": stat, "value": 0.0, "ci_low": math.nan, "ci_high": math.nan,
                               "n_valid": 0, "p_value": math.nan})
        regret_rows.append({"method": labels["random"], "metric": "random", "kind": "baseline", "target": target,
                            "picked": "any", "picked_dice": float(dice.mean()), "best": models[int(np.argmax(dice))],
                            "best_dice": float(dice.max()), "regret": float(dice.max() - dice.mean())})
        ranking_stability = method_ranking_stability(full_taus, loo_taus)
        for row in stability_rows:
            if row["target"] == target:
                row["method_ranking_stability"] = ranking_stability
        ceiling = noise_ceiling([r.get("dice_per_seed", [r["dice"]]) for r in mine], n_simulations=n_simulations,
                                seed=int(rng.integers(2**31)))
        ceiling_rows.append({"target": target, "n_models": len(models), **ceiling})
    for (name, measure), per_target in replicates.items():
        first = next(r for r in selection_rows if r["metric"] == name and r["statistic"] == measure)
        values = [r["value"] for r in selection_rows if r["metric"] == name and r["statistic"] == measure]
        finite = [v for v in values if math.isfinite(v)]
        with np.errstate(all="ignore"):
            means = np.mean(np.vstack(per_target), axis=0)  # NaN where some target is undefined
        ci = percentile_interval(means) if not (name == "random" and measure == "kendall") else \
            {"low": math.nan, "high": math.nan, "n_valid": 0}
        selection_rows.append({"method": first["method"], "metric": name, "kind": first["kind"], "target": AVG,
                               "statistic": measure, "value": float(np.mean(finite)) if finite else math.nan,
                               "ci_low": ci["low"], "ci_high": ci["high"], "n_valid": ci["n_valid"]})
    return {"statistics": stats_rows, "regret": regret_rows, "noise_ceiling": ceiling_rows,
            "selection": selection_rows, "stability": stability_rows}


def rows_to_csv(rows: list[dict], columns: list[str], flags: Mapping[str, str] | None = None) -> str:
    """The given columns of long-format rows (one per target and method); with ``flags``, a last column
    ``ground_truth``: ``ok`` or ``cannot rank`` for the row's target (empty for a mean over targets,
    target ``Avg``)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*columns, "ground_truth"] if flags is not None else columns)
    for r in rows:
        cells = [fmt_number(r[c]) if isinstance(r[c], float) else r[c] for c in columns]
        if flags is not None:
            cells.append("" if r["target"] == AVG else flag_cell(r["target"], flags))
        writer.writerow(cells)
    return out.getvalue()


STATISTICS_COLUMNS = ["method", "metric", "kind", "target", "statistic", "value", "ci_low", "ci_high", "n_valid",
                      "p_value"]
REGRET_COLUMNS = ["method", "metric", "kind", "target", "picked", "picked_dice", "best", "best_dice", "regret"]
SELECTION_COLUMNS = ["method", "metric", "kind", "target", "statistic", "value", "ci_low", "ci_high", "n_valid"]
STABILITY_COLUMNS = ["method", "metric", "kind", "target", "tau", "loo_tau_min", "loo_tau_max", "loo_max_change",
                     "most_influential", "method_ranking_stability"]
CEILING_COLUMNS = ["target", "n_models", "min_seeds", "seed_sd", "tau", "pearson", "split_half_tau",
                   "split_half_pearson", "available"]


def statistics_markdown(rows: list[dict], targets: list[str], n_bootstrap: int,
                        flags: Mapping[str, str] | None = None) -> str:
    """One table per statistic: value [95% bootstrap interval] and the one-sided p-value per target."""
    parts = []
    for stat in STATISTICS:
        header = ["Method", *(flagged_header(t, flags) for t in targets)]
        lines = [f"**{'Weighted τ' if stat == 'tau' else 'Pearson'}** — value [95% bootstrap interval, "
                 f"{n_bootstrap} resamples over models] (one-sided permutation p)", "",
                 "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        methods = list(dict.fromkeys(r["method"] for r in rows if r["statistic"] == stat))
        for method in methods:
            cells = [method]
            for t in targets:
                r = next(r for r in rows if r["statistic"] == stat and r["method"] == method and r["target"] == t)
                cell = fmt_number(r["value"])
                if math.isfinite(r["ci_low"]):
                    cell += f" [{fmt_number(r['ci_low'], 2)}, {fmt_number(r['ci_high'], 2)}]"
                if math.isfinite(r["p_value"]):
                    cell += f" (p={r['p_value']:.3f})"
                cells.append(cell)
            lines.append("| " + " | ".join(cells) + " |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n" + flag_footnote(flags, targets, avg=False)


def regret_markdown(rows: list[dict], targets: list[str], flags: Mapping[str, str] | None = None) -> str:
    header = ["Method", *(flagged_header(t, flags) for t in targets), "Avg"]
    lines = ["Top-1 regret: Dice of the best model minus Dice of the model ranked first (lower is better; "
             "ties for first: their mean)", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method in dict.fromkeys(r["method"] for r in rows):
        values = [next(r["regret"] for r in rows if r["method"] == method and r["target"] == t) for t in targets]
        lines.append("| " + " | ".join([method, *(fmt_number(v) for v in values), fmt_number(float(np.mean(values)))]) + " |")
    return "\n".join(lines) + "\n" + flag_footnote(flags, targets)


def selection_markdown(rows: list[dict], targets: list[str], n_bootstrap: int,
                       flags: Mapping[str, str] | None = None) -> str:
    """One table per selection measure (Kendall's tau-b, Rel@1, top-3 hit): value [95% bootstrap interval]
    per target and the mean over targets (Avg) with the interval of the mean."""
    parts = []
    explain = {
        "kendall": "unweighted, every swap counts alike",
        "rel_at_1": "Dice of the model ranked first / best Dice; ties for first: their mean Dice",
        "top3": "1 if the best model (mean Dice over seeds) is among the 3 ranked first; ties: expectation over "
                "random tie-breaking",
    }
    for measure in SELECTION_MEASURES:
        header = ["Method", *(flagged_header(t, flags) for t in targets), AVG]
        lines = [f"**{SELECTION_LABELS[measure]}** ({explain[measure]}) — value [95% bootstrap interval, "
                 f"{n_bootstrap} resamples over models]", "",
                 "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        mine = [r for r in rows if r["statistic"] == measure]
        for method in dict.fromkeys(r["method"] for r in mine):
            cells = [method]
            for column in [*targets, AVG]:
                r = next(r for r in mine if r["method"] == method and r["target"] == column)
                cell = fmt_number(r["value"])
                if math.isfinite(r["ci_low"]):
                    cell += f" [{fmt_number(r['ci_low'], 2)}, {fmt_number(r['ci_high'], 2)}]"
                cells.append(cell)
            lines.append("| " + " | ".join(cells) + " |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n" + flag_footnote(flags, targets)


def stability_markdown(rows: list[dict], targets: list[str], flags: Mapping[str, str] | None = None) -> str:
    """Per method and target: the weighted tau, its range over the leave-one-out banks and the model whose
    removal moves it most; a last row with the stability of the methods' ranking per target."""
    header = ["Method", *(flagged_header(t, flags) for t in targets)]
    lines = ["Leave-one-out stability: weighted τ on the whole bank [lowest, highest with one model left out]; "
             "largest change Δ and the model whose removal causes it (docs/report.md)", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method in dict.fromkeys(r["method"] for r in rows):
        cells = [method]
        for t in targets:
            r = next(r for r in rows if r["method"] == method and r["target"] == t)
            if not math.isfinite(r["tau"]):
                cells.append("nan (constant)")
                continue
            cells.append(f"{fmt_number(r['tau'])} [{fmt_number(r['loo_tau_min'], 2)}, {fmt_number(r['loo_tau_max'], 2)}] "
                         f"Δ {fmt_number(r['loo_max_change'], 2)} ({r['most_influential']})")
        lines.append("| " + " | ".join(cells) + " |")
    per_target = [next((r["method_ranking_stability"] for r in rows if r["target"] == t), math.nan) for t in targets]
    lines.append("| " + " | ".join(["*Ranking of the methods by weighted τ: mean Kendall's τ-b, whole bank vs "
                                    "one model left out*", *(fmt_number(v) for v in per_target)]) + " |")
    return "\n".join(lines) + "\n" + flag_footnote(flags, targets, avg=False)


def noise_ceiling_markdown(rows: list[dict]) -> str:
    lines = ["Noise ceiling: the expected correlation of a perfect score with Dice measured from this many "
             "fine-tuning seeds (docs/report.md)", "",
             "| Target | Models | Seeds | Seed SD of Dice | τ ceiling | Pearson ceiling | Split-half τ | "
             "Split-half Pearson |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if not r["available"]:
            lines.append(f"| {short_task(r['target'])} | {r['n_models']} | {r['min_seeds']} | not available (one seed) "
                         "| not available | not available | not available | not available |")
        else:
            lines.append(f"| {short_task(r['target'])} | {r['n_models']} | {r['min_seeds']} | {fmt_number(r['seed_sd'])} | "
                         f"{fmt_number(r['tau'])} | {fmt_number(r['pearson'])} | {fmt_number(r['split_half_tau'])} | "
                         f"{fmt_number(r['split_half_pearson'])} |")
    return "\n".join(lines) + "\n"


def build_statistics(records_file: Path, tables: Mapping[str, list[str]], targets: list[str],
                     source_sizes: Mapping[str, int], out_dir: Path, labels: Mapping[str, str] | None = None,
                     n_bootstrap: int = 1000, n_permutations: int = 2000, n_simulations: int = 1000,
                     seed: int = 0, flags: Mapping[str, str] | None = None,
                     parameter_counts: Mapping[str, int] | None = None) -> dict[str, list[dict]]:
    """Read ``records.json`` (written by :func:`build_tables`) and write ``statistics``, ``regret``,
    ``noise_ceiling``, ``selection`` and ``stability`` as ``.csv`` and ``.md`` under ``out_dir``; the
    targets of ``flags`` ({target: why its ground truth cannot rank}) are marked in every table but the
    noise ceiling (a ``ground_truth`` column in the CSV, a dagger and a footnote in the Markdown).
    ``parameter_counts`` ({model id: weights}) adds the larger-model-first ranker."""
    records = json.loads(Path(records_file).read_text())
    metrics = list(dict.fromkeys(m for names in tables.values() for m in names))
    result = analyse(records, metrics, targets, source_sizes, labels, n_bootstrap=n_bootstrap,
                     n_permutations=n_permutations, n_simulations=n_simulations, seed=seed,
                     parameter_counts=parameter_counts)
    out_dir = Path(out_dir)
    write_text(out_dir / "statistics.csv", rows_to_csv(result["statistics"], STATISTICS_COLUMNS, flags))
    note = static_rankers_note(records, targets, source_sizes, parameter_counts)
    write_text(out_dir / "statistics.md",
               statistics_markdown(result["statistics"], targets, n_bootstrap, flags) + note)
    write_text(out_dir / "regret.csv", rows_to_csv(result["regret"], REGRET_COLUMNS, flags))
    write_text(out_dir / "regret.md", regret_markdown(result["regret"], targets, flags) + note)
    write_text(out_dir / "noise_ceiling.csv", rows_to_csv(result["noise_ceiling"], CEILING_COLUMNS))
    write_text(out_dir / "noise_ceiling.md", noise_ceiling_markdown(result["noise_ceiling"]))
    write_text(out_dir / "selection.csv", rows_to_csv(result["selection"], SELECTION_COLUMNS, flags))
    write_text(out_dir / "selection.md",
               selection_markdown(result["selection"], targets, n_bootstrap, flags) + note)
    write_text(out_dir / "stability.csv", rows_to_csv(result["stability"], STABILITY_COLUMNS, flags))
    write_text(out_dir / "stability.md", stability_markdown(result["stability"], targets, flags))
    result["architecture"] = architecture_effect(records, metrics, targets, labels)
    write_text(out_dir / "architecture.csv", rows_to_csv(result["architecture"], ARCHITECTURE_COLUMNS, flags))
    write_text(out_dir / "architecture.md", architecture_markdown(result["architecture"], targets, flags))
    return result


ARCHITECTURE_COLUMNS = ["method", "metric", "target", "eta_squared", "n_models", "n_architectures"]


def architecture_effect(records: list[Mapping], metrics: list[str], targets: list[str],
                        labels: Mapping[str, str] | None = None) -> list[dict]:
    """Per target and metric (and for the mean Dice itself, metric ``dice``): the share of the variance
    across the bank that the models' architecture explains (:func:`ccfv.results.measures.eta_squared`; bank
    ids name the architecture, ``ccfv.bank.model_ids``). A score whose variance the architecture explains
    far more than the Dice's ranks architectures, not sources (issue 24)."""
    from ..bank.model_ids import model_architecture

    labels = {**METRIC_LABELS, **(labels or {})}
    rows = []
    for target in targets:
        mine = [r for r in records if r["target"] == target]
        archs = [model_architecture(r["model"]) for r in mine]
        columns = [("dice", "Fine-tuned Dice", [r["dice"] for r in mine])]
        columns += [(m, labels.get(m, m), [r["scores"][m] for r in mine]) for m in metrics]
        for metric, label, values in columns:
            rows.append({"method": label, "metric": metric, "target": target,
                         "eta_squared": eta_squared(values, archs), "n_models": len(mine),
                         "n_architectures": len(set(archs))})
    return rows


def architecture_markdown(rows: list[dict], targets: list[str], flags: Mapping[str, str] | None = None) -> str:
    header = ["Method", *(flagged_header(t, flags) for t in targets)]
    lines = ["Share of each score's variance across the bank explained by the architecture (eta squared; the "
             "first row is the fine-tuned Dice's: a score far above it ranks architectures, not sources)", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method in dict.fromkeys(r["method"] for r in rows):
        cells = [method] + [fmt_number(next(r["eta_squared"] for r in rows if r["method"] == method
                                            and r["target"] == t), 2) for t in targets]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n" + flag_footnote(flags, targets, avg=False)
