"""Correlation between transferability scores and fine-tuned Dice: the paper's Table 1.

Per target and metric: weighted Kendall's tau (``scipy.stats.weightedtau`` with its defaults, as in the
transferability literature) and Pearson's r between the bank models' scores and their fine-tuned Dice
(mean over fine-tuning seeds). The table has one tau row and one Pearson row per metric, one column per
target task and an ``Avg`` column, as in the paper.
"""
from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from scipy import stats

from .atomic import write_text

#: How the tables name the default metrics (the paper's names); a metric's ``label`` in the config wins.
METRIC_LABELS = {
    "ccfv": "CC-FV", "logme": "LogME", "leep": "LEEP", "gbc": "GBC", "transrate": "TransRate",
    "nce": "NCE", "hscore": "H-score", "ccfv_released": "CC-FV (released code)",
    "ccfv_wo_ccons": "CC-FV w/o C_cons", "ccfv_wo_fv": "CC-FV w/o F_v", "ccfv_single_scale": "Single-scale",
    "ccfv_kl": "KL-divergence", "ccfv_bhattacharyya": "Bha-distance",
}


def correlations(scores: list[float], dice: list[float]) -> dict[str, float]:
    """Weighted tau and Pearson of two equally long sequences (NaN when either is constant)."""
    x = np.asarray(scores, dtype=float)
    y = np.asarray(dice, dtype=float)
    if x.shape != y.shape or x.size < 2:
        raise ValueError(f"need two equally long sequences of at least 2 values, got {x.size} and {y.size}")
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return {"tau": math.nan, "pearson": math.nan}
    return {"tau": float(stats.weightedtau(x, y).statistic), "pearson": float(stats.pearsonr(x, y).statistic)}


def table1(records: list[Mapping], metrics: list[str], targets: list[str],
           labels: Mapping[str, str] | None = None) -> list[dict]:
    """Rows of a Table-1-shaped table from records {target, model, dice, scores: {metric: value}}."""
    labels = {**METRIC_LABELS, **(labels or {})}
    rows = []
    for metric in metrics:
        per_stat: dict[str, dict[str, float]] = {"tau": {}, "pearson": {}}
        for target in targets:
            mine = [r for r in records if r["target"] == target]
            result = correlations([r["scores"][metric] for r in mine], [r["dice"] for r in mine])
            for stat in per_stat:
                per_stat[stat][target] = result[stat]
        for stat, values in per_stat.items():
            finite = [v for v in values.values() if math.isfinite(v)]
            rows.append({
                "method": labels.get(metric, metric), "metric": metric, "statistic": stat, **values,
                "Avg": float(np.mean(finite)) if finite else math.nan,
            })
    return rows


def _short(task: str) -> str:
    return task.split("_")[0]


def to_csv(rows: list[dict], targets: list[str]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["method", "statistic", *targets, "Avg"])
    for row in rows:
        writer.writerow([row["method"], row["statistic"], *(f"{row[t]:.4f}" for t in targets), f"{row['Avg']:.4f}"])
    return out.getvalue()


def to_markdown(rows: list[dict], targets: list[str]) -> str:
    header = ["Method", "Metric", *(_short(t) for t in targets), "Avg"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        name = row["method"] if row["statistic"] == "tau" else ""
        stat = "τ" if row["statistic"] == "tau" else "pearson"
        cells = [name, stat, *(f"{row[t]:.4f}" for t in targets), f"{row['Avg']:.4f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def records_to_csv(records: list[Mapping], metrics: list[str]) -> str:
    """The numbers behind the table, one line per (target, model): for auditing."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["target", "model", "dice_mean_over_seeds", "n_seeds", *metrics])
    for r in records:
        writer.writerow([r["target"], r["model"], f"{r['dice']:.6f}", r["n_seeds"],
                         *(f"{r['scores'][m]:.6g}" for m in metrics)])
    return out.getvalue()


def build_tables(score_files: Mapping[tuple[str, str], Path], dice_files: Mapping[tuple[str, str], list[Path]],
                 tables: Mapping[str, list[str]], targets: list[str], out_dir: Path,
                 labels: Mapping[str, str] | None = None) -> dict[str, list[dict]]:
    """Read every (target, model) score and Dice file; write each table as ``<out_dir>/<name>.{csv,md}``
    and the numbers behind them as ``<out_dir>/scores_and_dice.csv``.

    ``tables`` maps a table name to its metrics, e.g. {"table1": ["logme", ..., "ccfv"], "table2": [...]}.
    Everything is read and checked before anything is written.
    """
    from .evaluation import read_mean_dice
    from .scoring import read_scores

    records = []
    for (target, model), score_file in sorted(score_files.items()):
        dice_values = [read_mean_dice(f) for f in dice_files[(target, model)]]
        finite = [d for d in dice_values if math.isfinite(d)]
        if not finite:
            raise ValueError(f"no defined Dice for {model} on {target}: {dice_files[(target, model)]}")
        records.append({"target": target, "model": model, "dice": float(np.mean(finite)),
                        "n_seeds": len(finite), "scores": read_scores(score_file)})
    used = list(dict.fromkeys(m for metrics in tables.values() for m in metrics))
    for record in records:
        missing = [m for m in used if m not in record["scores"]]
        if missing:
            raise ValueError(f"{score_files[(record['target'], record['model'])]}: no score for {missing}")
    out = {name: table1(records, list(metrics), targets, labels) for name, metrics in tables.items()}
    out_dir = Path(out_dir)
    write_text(out_dir / "scores_and_dice.csv", records_to_csv(records, used))
    for name, rows in out.items():
        write_text(out_dir / f"{name}.csv", to_csv(rows, targets))
        write_text(out_dir / f"{name}.md", to_markdown(rows, targets))
    return out
