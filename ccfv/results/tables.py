"""Correlation between transferability scores and fine-tuned Dice: the paper's Table 1.

Per target and metric: weighted Kendall's tau (``scipy.stats.weightedtau`` with its defaults, as in the
transferability literature) and Pearson's r between the bank models' scores and their fine-tuned Dice
(mean over fine-tuning seeds). The table has one tau row and one Pearson row per metric, one column per
target task and an ``Avg`` column, as in the paper.

Beyond the paper (:func:`build_statistics`): bootstrap intervals and permutation p-values, top-1 regret,
the noise ceiling, static rankers (larger model first among them), Kendall's tau-b, Rel@1 and the top-3 hit
rate (``selection``) and the leave-one-out stability (``stability``); docs/report.md defines each one. Bank
model ids are ``<architecture>-<source task>[@<snapshot iteration>]`` or ``<architecture>-random``.

Every table takes ``flags``, {target: why its ground truth cannot rank its models} from the ground-truth
health check (:mod:`ccfv.results.ground_truth`): a flagged target keeps its values but is marked with
:data:`FLAG_MARK` in Markdown and LaTeX (with a footnote saying why), and in the long CSV tables
(statistics, regret, ...) by a ``ground_truth`` column. The wide CSV tables (``table1.csv``, ``table2.csv``)
hold numbers only, so that ``pandas.read_csv`` reads every target column as a number: their verdict is
``ground_truth.csv`` beside them (``can_rank`` and ``reasons`` per target), which the tables are built from.
"""
from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from scipy import stats

from ..io import write_json, write_text
from .formatting import flag_footnote, flag_reason, flagged_header, latex_escape, latex_number, short_task
from .paper import PAPER_TARGETS, paper_comparison, paper_comparison_csv, paper_comparison_markdown, paper_value

#: How the tables name the default metrics (the paper's names); a metric's ``label`` in the config wins.
METRIC_LABELS = {
    "ccfv": "CC-FV", "logme": "LogME", "leep": "LEEP", "gbc": "GBC", "transrate": "TransRate",
    "nce": "NCE", "hscore": "H-score", "ccfv_released": "CC-FV (released code)",
    "ccfv_wo_ccons": "CC-FV w/o C_cons", "ccfv_wo_fv": "CC-FV w/o F_v", "ccfv_single_scale": "Single-scale",
    "ccfv_kl": "KL-divergence", "ccfv_bhattacharyya": "Bha-distance", "ccfv_energy_sum": "CC-FV (eq. 3 sum)",
    "knn": "k-NN", "ccfv_disc": "CC-FV-D", "ccfv_varied": "CC-FV (varied voxels)", "rankme": "RankMe (label-free)",
}


TABLE_CAPTIONS = {
    "table1": "Weighted Kendall's tau and Pearson coefficient between transferability scores and fine-tuned Dice",
    "table2": "Ablations of CC-FV: weighted Kendall's tau and Pearson coefficient",
    "table3": "Pre-registered scores, the k-NN baseline, LogME and CC-FV: weighted Kendall's tau and Pearson",
}


def seed_dice(paths: list[Path]) -> list[float | None]:
    """The mean Dice of each fine-tuning seed's result file (``results/finetune/<target>/<model>/seed<N>.json``),
    None where it is undefined; a file that cannot be read is an error naming it."""
    from ..finetune.evaluation import read_mean_dice

    out = []
    for path in paths:
        try:
            value = read_mean_dice(path)
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{path}: not a fine-tuning result with a mean_dice ({err!r})") from None
        out.append(value if math.isfinite(value) else None)
    return out


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


def to_csv(rows: list[dict], targets: list[str]) -> str:
    """One line per (metric, statistic): ``method, statistic, <target>..., Avg``, every target and Avg cell a
    number (``nan`` where undefined), nothing else, so that a script can average the table. Which targets'
    Dice cannot rank their models is ``ground_truth.csv`` beside it (a string row here made pandas read every
    target column as text)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["method", "statistic", *targets, "Avg"])
    for row in rows:
        writer.writerow([row["method"], row["statistic"], *(f"{row[t]:.4f}" for t in targets), f"{row['Avg']:.4f}"])
    return out.getvalue()


def to_markdown(rows: list[dict], targets: list[str], flags: Mapping[str, str] | None = None) -> str:
    header = ["Method", "Metric", *(flagged_header(t, flags) for t in targets), "Avg"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        name = row["method"] if row["statistic"] == "tau" else ""
        stat = "weighted τ" if row["statistic"] == "tau" else "Pearson"
        cells = [name, stat, *(f"{row[t]:.4f}" for t in targets), f"{row['Avg']:.4f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n" + flag_footnote(flags, targets)


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
                 labels: Mapping[str, str] | None = None,
                 flags: Mapping[str, str] | None = None) -> dict[str, list[dict]]:
    """Read every (target, model) score and Dice file; write each table as ``<out_dir>/<name>.{csv,md}``
    and ``.tex``, the numbers behind them as ``<out_dir>/scores_and_dice.csv`` and ``records.json``
    (with the Dice of every seed), and ours beside the paper's values as ``paper_comparison.{csv,md}``.

    ``tables`` maps a table name to its metrics, e.g. {"table1": ["logme", ..., "ccfv"], "table2": [...]}.
    ``flags``: {target: why} of the targets whose ground truth cannot rank its models
    (:func:`ccfv.results.ground_truth.flags`), marked in the Markdown and LaTeX tables (the CSV tables stay
    numeric; the verdict is ``ground_truth.csv``). Everything is read and checked before
    anything is written.
    """
    from ..scores.scoring import read_scores

    records = []
    for (target, model), score_file in sorted(score_files.items()):
        dice_values = seed_dice(dice_files[(target, model)])
        finite = [d for d in dice_values if d is not None]
        if not finite:
            raise ValueError(f"no defined Dice for {model} on {target}: {dice_files[(target, model)]}")
        records.append({"target": target, "model": model, "dice": float(np.mean(finite)),
                        "n_seeds": len(finite), "scores": read_scores(score_file),
                        "dice_per_seed": dice_values})
    used = list(dict.fromkeys(m for metrics in tables.values() for m in metrics))
    for record in records:
        missing = [m for m in used if m not in record["scores"]]
        if missing:
            raise ValueError(f"{score_files[(record['target'], record['model'])]}: no score for {missing}")
    out = {name: table1(records, list(metrics), targets, labels) for name, metrics in tables.items()}
    out_dir = Path(out_dir)
    write_text(out_dir / "scores_and_dice.csv", records_to_csv(records, used))
    write_json(out_dir / "records.json", records_to_json(records))
    unknown = sorted(set(flags or {}) - set(targets))
    if unknown:
        raise ValueError(f"ground-truth flags for {unknown}, which are not among the targets {targets}")
    for name, rows in out.items():
        write_text(out_dir / f"{name}.csv", to_csv(rows, targets))
        write_text(out_dir / f"{name}.md", to_markdown(rows, targets, flags))
        write_text(out_dir / f"{name}.tex", to_latex(rows, targets, caption=TABLE_CAPTIONS.get(name, name),
                                                     flags=flags))
    comparison = paper_comparison(out, targets)
    write_text(out_dir / "paper_comparison.csv", paper_comparison_csv(comparison, flags))
    write_text(out_dir / "paper_comparison.md", paper_comparison_markdown(comparison, flags))
    return out


def to_latex(rows: list[dict], targets: list[str], caption: str = "", flags: Mapping[str, str] | None = None) -> str:
    """A booktabs ``table`` environment shaped like the paper's tables; with the MSD targets, the
    paper's value follows ours in parentheses where the paper reports one. A flagged target's header
    carries a dagger and a footnote below the tabular says why."""
    columns = [*targets, "Avg"]
    lines = [r"\begin{table}", r"\centering"]
    if caption:
        lines.append(r"\caption{" + latex_escape(caption) + "}")
    headers = [latex_escape(short_task(t)) + (r"\textsuperscript{\dag}" if flags and t in flags else "") for t in targets]
    lines += [r"\begin{tabular}{ll" + "r" * len(columns) + "}", r"\toprule",
              "Method & Metric & " + " & ".join(headers) + r" & Avg \\",
              r"\midrule"]
    paper_columns = set(t for t in targets if t in PAPER_TARGETS)
    if sorted(targets) == sorted(PAPER_TARGETS):
        paper_columns.add("Avg")
    for row in rows:
        name = latex_escape(row["method"]) if row["statistic"] == "tau" else ""
        stat = r"weighted $\tau$" if row["statistic"] == "tau" else "Pearson"
        cells = []
        for column in columns:
            cell = latex_number(row[column])
            paper = paper_value(row["metric"], row["statistic"], column) if column in paper_columns else None
            if paper is not None:
                cell += f" ({paper:.4f})"
            cells.append(cell)
        lines.append(f"{name} & {stat} & " + " & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    for t in (t for t in targets if flags and t in flags):
        lines.append(r"\par\smallskip{\footnotesize\textsuperscript{\dag}" + latex_escape(
            f" {flag_reason(t, flags[t])}. Its values are shown but do not measure the metrics.") + "}")
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def records_to_json(records: list[Mapping]) -> list[dict]:
    """Every (target, model) record with its per-seed Dice, for the statistics and figures rules."""
    return [{"target": r["target"], "model": r["model"], "dice": r["dice"], "n_seeds": r["n_seeds"],
             "dice_per_seed": r["dice_per_seed"], "scores": r["scores"]} for r in records]
