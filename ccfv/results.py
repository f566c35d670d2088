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
health check (:mod:`ccfv.ground_truth`): a flagged target keeps its values but is marked with
:data:`FLAG_MARK` in Markdown and LaTeX (with a footnote saying why) and in CSV by a ``ground_truth`` row
(wide tables) or column (long tables).
"""
from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from scipy import stats

from .atomic import write_json, write_text

#: How the tables name the default metrics (the paper's names); a metric's ``label`` in the config wins.
METRIC_LABELS = {
    "ccfv": "CC-FV", "logme": "LogME", "leep": "LEEP", "gbc": "GBC", "transrate": "TransRate",
    "nce": "NCE", "hscore": "H-score", "ccfv_released": "CC-FV (released code)",
    "ccfv_wo_ccons": "CC-FV w/o C_cons", "ccfv_wo_fv": "CC-FV w/o F_v", "ccfv_single_scale": "Single-scale",
    "ccfv_kl": "KL-divergence", "ccfv_bhattacharyya": "Bha-distance",
}


TABLE_CAPTIONS = {
    "table1": "Weighted Kendall's tau and Pearson coefficient between transferability scores and fine-tuned Dice",
    "table2": "Ablations of CC-FV: weighted Kendall's tau and Pearson coefficient",
}


#: The marker of a target whose ground truth cannot rank its models (docs/report.md).
FLAG_MARK = "†"
#: The ``ground_truth`` cell of a target in the CSV tables.
GROUND_TRUTH_OK, GROUND_TRUTH_FLAGGED = "ok", "cannot rank"


def _flag_cell(target: str, flags: Mapping[str, str] | None) -> str:
    return GROUND_TRUTH_FLAGGED if flags and target in flags else GROUND_TRUTH_OK


def _flagged_header(target: str, flags: Mapping[str, str] | None) -> str:
    return _short(target) + (FLAG_MARK if flags and target in flags else "")


def flag_reason(target: str, why: str) -> str:
    """The sentence every table and figure gives for a flagged target: ``<target>: the fine-tuned Dice cannot
    rank the bank's models: <why>``."""
    return f"{target}: the fine-tuned Dice cannot rank the bank's models: {why}"


def flag_footnote(flags: Mapping[str, str] | None, targets: list[str], avg: bool = True) -> str:
    """Markdown lines below a table: one per flagged target of ``targets``, saying why (empty if none), and
    that the table's Avg column includes them (``avg``)."""
    flagged = [t for t in targets if flags and t in flags]
    if not flagged:
        return ""
    lines = [f"{FLAG_MARK} {flag_reason(t, flags[t])}. Its values are shown but do not measure the metrics "
             "(ground_truth.md)." for t in flagged]
    if avg and len(targets) > 1:
        lines.append(f"{FLAG_MARK} Avg includes the flagged target(s).")
    return "\n" + "\n\n".join(lines) + "\n"


def seed_dice(paths: list[Path]) -> list[float | None]:
    """The mean Dice of each fine-tuning seed's result file (``results/finetune/<target>/<model>/seed<N>.json``),
    None where it is undefined; a file that cannot be read is an error naming it."""
    from .evaluation import read_mean_dice

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


def _short(task: str) -> str:
    return task.split("_")[0]


def to_csv(rows: list[dict], targets: list[str], flags: Mapping[str, str] | None = None) -> str:
    """One line per (metric, statistic); with ``flags`` (the health check's verdict, ``{}`` when every
    target passed) a last ``ground_truth`` line: ``ok`` or ``cannot rank`` per target (empty under Avg)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["method", "statistic", *targets, "Avg"])
    for row in rows:
        writer.writerow([row["method"], row["statistic"], *(f"{row[t]:.4f}" for t in targets), f"{row['Avg']:.4f}"])
    if flags is not None:
        writer.writerow(["ground_truth", "verdict", *(_flag_cell(t, flags) for t in targets), ""])
    return out.getvalue()


def to_markdown(rows: list[dict], targets: list[str], flags: Mapping[str, str] | None = None) -> str:
    header = ["Method", "Metric", *(_flagged_header(t, flags) for t in targets), "Avg"]
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
    (:func:`ccfv.ground_truth.flags`), marked in every table. Everything is read and checked before
    anything is written.
    """
    from .scoring import read_scores

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
        write_text(out_dir / f"{name}.csv", to_csv(rows, targets, flags))
        write_text(out_dir / f"{name}.md", to_markdown(rows, targets, flags))
        write_text(out_dir / f"{name}.tex", to_latex(rows, targets, caption=TABLE_CAPTIONS.get(name, name),
                                                     flags=flags))
    comparison = paper_comparison(out, targets)
    write_text(out_dir / "paper_comparison.csv", paper_comparison_csv(comparison, flags))
    write_text(out_dir / "paper_comparison.md", paper_comparison_markdown(comparison, flags))
    return out


# --------------------------------------------------------------------------------------------------
# The paper's published values (Yang et al., MICCAI 2023): Table 1 (weighted tau and Pearson) and
# Table 2 (weighted tau only; its CC-FV row repeats Table 1's tau row), transcribed as printed from
# "Table 1. Pearson coefficient and weighted Kendall's tau for transferability estimation" and "Table 2.
# Ablation on the effectiveness of different parts in our methods". The paper has no NCE, H-score or
# released-code rows. Its Single-scale Avg (0.4341) is not the mean of its row (0.4350); kept as printed.
# --------------------------------------------------------------------------------------------------

PAPER_TARGETS = ["Task03_Liver", "Task06_Lung", "Task07_Pancreas", "Task09_Spleen", "Task10_Colon"]

#: {table: {metric: {statistic: [Task03, Task06, Task07, Task09, Task10, Avg]}}}
PAPER_VALUES: dict[str, dict[str, dict[str, list[float]]]] = {
    "table1": {
        "logme": {"tau": [-0.1628, -0.0988, 0.3280, 0.2778, -0.2348, 0.0218],
                  "pearson": [0.0412, 0.5713, 0.3236, 0.2725, -0.1674, 0.2082]},
        "transrate": {"tau": [-0.1843, -0.1028, 0.5923, 0.4322, 0.6069, 0.2688],
                      "pearson": [-0.5178, -0.2804, 0.7170, 0.5573, 0.7629, 0.2478]},
        "leep": {"tau": [0.6008, 0.1658, 0.2691, 0.3516, 0.5841, 0.3943],
                 "pearson": [0.6765, -0.0073, 0.7146, 0.1633, 0.4979, 0.4090]},
        "gbc": {"tau": [0.1233, -0.1569, 0.6637, 0.7611, 0.6643, 0.4111],
                "pearson": [-0.2634, -0.3733, 0.7948, 0.7604, 0.7404, 0.3317]},
        "ccfv": {"tau": [0.6374, 0.0735, 0.6569, 0.5700, 0.5550, 0.4986],
                 "pearson": [0.8608, 0.0903, 0.9609, 0.7491, 0.8406, 0.7003]},
    },
    "table2": {
        "ccfv": {"tau": [0.6374, 0.0735, 0.6569, 0.5700, 0.5550, 0.4986]},
        "ccfv_wo_ccons": {"tau": [0.1871, -0.2210, -0.2810, -0.0289, -0.2710, -0.1230]},
        "ccfv_wo_fv": {"tau": [0.6165, 0.3235, 0.6054, 0.2761, 0.5269, 0.4697]},
        "ccfv_single_scale": {"tau": [0.4394, 0.0252, 0.5336, 0.5759, 0.6007, 0.4341]},
        "ccfv_kl": {"tau": [-0.5658, -0.0564, 0.2319, 0.4628, -0.0323, 0.0080]},
        "ccfv_bhattacharyya": {"tau": [0.1808, 0.0723, 0.2295, 0.7866, 0.4650, 0.3468]},
    },
}


def paper_value(metric: str, statistic: str, column: str) -> float | None:
    """The published value of ``metric`` (our metric name) for a target task or "Avg"; None if the
    paper has none. Both tables agree where they overlap (CC-FV tau), so either is looked up."""
    try:
        index = [*PAPER_TARGETS, "Avg"].index(column)
    except ValueError:
        return None
    for table in PAPER_VALUES.values():
        values = table.get(metric, {}).get(statistic)
        if values is not None:
            return values[index]
    return None


def paper_comparison(tables: Mapping[str, list[dict]], targets: list[str]) -> list[dict]:
    """Ours beside the paper's value for every (table row, target or Avg) the paper reports.

    Empty when none of ``targets`` is one of the paper's five MSD tasks (the demo): the Avg of a
    different set of targets is not comparable, so it is only compared when ``targets`` are exactly
    the paper's.
    """
    columns = [t for t in targets if t in PAPER_TARGETS]
    if sorted(targets) == sorted(PAPER_TARGETS):
        columns.append("Avg")
    out = []
    for name, rows in tables.items():
        for row in rows:
            for column in columns:
                paper = paper_value(row["metric"], row["statistic"], column)
                if paper is None:
                    continue
                ours = row[column]
                out.append({"table": name, "method": row["method"], "metric": row["metric"],
                            "statistic": row["statistic"], "target": column, "ours": ours, "paper": paper,
                            "difference": ours - paper})
    return out


def paper_comparison_csv(rows: list[dict], flags: Mapping[str, str] | None = None) -> str:
    """One line per compared value; with ``flags`` a ``ground_truth`` column, ``ok`` or ``cannot rank``
    (empty for Avg)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["table", "method", "statistic", "target", "ours", "paper", "difference"]
                    + (["ground_truth"] if flags is not None else []))
    for r in rows:
        cells = [r["table"], r["method"], r["statistic"], r["target"], f"{r['ours']:.4f}", f"{r['paper']:.4f}",
                 f"{r['difference']:.4f}"]
        if flags is not None:
            cells.append("" if r["target"] == "Avg" else _flag_cell(r["target"], flags))
        writer.writerow(cells)
    return out.getvalue()


def paper_comparison_markdown(rows: list[dict], flags: Mapping[str, str] | None = None) -> str:
    if not rows:
        return ("No published values for these targets: the paper (Yang et al., MICCAI 2023, Tables 1 "
                f"and 2) reports {', '.join(PAPER_TARGETS)} only.\n")
    lines = ["| Table | Method | Metric | Target | Ours | Paper | Ours − paper |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        stat = "weighted τ" if r["statistic"] == "tau" else "Pearson"
        target = r["target"] if r["target"] == "Avg" else _flagged_header(r["target"], flags)
        lines.append(f"| {r['table']} | {r['method']} | {stat} | {target} | {r['ours']:.4f} | "
                     f"{r['paper']:.4f} | {r['difference']:+.4f} |")
    targets = list(dict.fromkeys(r["target"] for r in rows if r["target"] != "Avg"))
    return "\n".join(lines) + "\n" + flag_footnote(flags, targets, avg=any(r["target"] == "Avg" for r in rows))


def _latex_escape(text: str) -> str:
    special = {"\\": r"\textbackslash{}", "_": r"\_", "&": r"\&", "%": r"\%", "#": r"\#", "$": r"\$",
               "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
    return "".join(special.get(c, c) for c in text)


def _latex_number(value: float) -> str:
    return "--" if not math.isfinite(value) else f"{value:.4f}"


def to_latex(rows: list[dict], targets: list[str], caption: str = "", flags: Mapping[str, str] | None = None) -> str:
    """A booktabs ``table`` environment shaped like the paper's tables; with the MSD targets, the
    paper's value follows ours in parentheses where the paper reports one. A flagged target's header
    carries a dagger and a footnote below the tabular says why."""
    columns = [*targets, "Avg"]
    lines = [r"\begin{table}", r"\centering"]
    if caption:
        lines.append(r"\caption{" + _latex_escape(caption) + "}")
    headers = [_latex_escape(_short(t)) + (r"\textsuperscript{\dag}" if flags and t in flags else "") for t in targets]
    lines += [r"\begin{tabular}{ll" + "r" * len(columns) + "}", r"\toprule",
              "Method & Metric & " + " & ".join(headers) + r" & Avg \\",
              r"\midrule"]
    paper_columns = set(t for t in targets if t in PAPER_TARGETS)
    if sorted(targets) == sorted(PAPER_TARGETS):
        paper_columns.add("Avg")
    for row in rows:
        name = _latex_escape(row["method"]) if row["statistic"] == "tau" else ""
        stat = r"weighted $\tau$" if row["statistic"] == "tau" else "Pearson"
        cells = []
        for column in columns:
            cell = _latex_number(row[column])
            paper = paper_value(row["metric"], row["statistic"], column) if column in paper_columns else None
            if paper is not None:
                cell += f" ({paper:.4f})"
            cells.append(cell)
        lines.append(f"{name} & {stat} & " + " & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    for t in (t for t in targets if flags and t in flags):
        lines.append(r"\par\smallskip{\footnotesize\textsuperscript{\dag}" + _latex_escape(
            f" {flag_reason(t, flags[t])}. Its values are shown but do not measure the metrics.") + "}")
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def records_to_json(records: list[Mapping]) -> list[dict]:
    """Every (target, model) record with its per-seed Dice, for the statistics and figures rules."""
    return [{"target": r["target"], "model": r["model"], "dice": r["dice"], "n_seeds": r["n_seeds"],
             "dice_per_seed": r["dice_per_seed"], "scores": r["scores"]} for r in records]


# --------------------------------------------------------------------------------------------------
# Beyond the paper: uncertainty, significance, the noise ceiling, top-1 regret and static baselines
# (docs/report.md defines each one).
# --------------------------------------------------------------------------------------------------

STATISTICS = ("tau", "pearson")
RANDOM_SOURCE = "random"
#: The column (and CSV target) of the mean over targets.
AVG = "Avg"


def _parse_model_id(model_id: str) -> tuple[str, str | None, int | None]:
    """(architecture, source task or None, snapshot iteration or None) of a bank model id:
    ``<architecture>-<source task>``, ``<architecture>-<source task>@<iteration>`` (a snapshot of the
    pretraining, saved after that many iterations) or ``<architecture>-random``."""
    arch, sep, rest = model_id.partition("-")
    source, at, iteration = rest.partition("@")
    if not sep or not arch or not source:
        raise ValueError(f"model id {model_id!r} is not <architecture>-<source task or random>[@<iteration>]")
    if at:
        if source == RANDOM_SOURCE or not iteration.isdigit() or int(iteration) < 1:
            raise ValueError(f"model id {model_id!r}: a snapshot is <architecture>-<source task>@<iteration>, "
                             "the iteration a positive integer (a random model has no snapshots)")
        return arch, source, int(iteration)
    return arch, (None if source == RANDOM_SOURCE else source), None


def model_architecture(model_id: str) -> str:
    """``unet`` of ``unet-Task91_SynthLiver`` (and of its snapshot ``unet-Task91_SynthLiver@150``): bank model
    ids are ``<architecture>-<source task or random>[@<iteration>]``; anything else is a ValueError."""
    return _parse_model_id(model_id)[0]


def model_source(model_id: str) -> str | None:
    """The source task a bank model was pretrained on (``Task91_SynthLiver`` of ``unet-Task91_SynthLiver``
    and of its snapshot ``unet-Task91_SynthLiver@150``); None for a randomly initialised model."""
    return _parse_model_id(model_id)[1]


def model_snapshot(model_id: str) -> int | None:
    """The pretraining iteration after which a snapshot bank member was saved (150 of
    ``unet-Task91_SynthLiver@150``); None for a fully pretrained or a random model."""
    return _parse_model_id(model_id)[2]


def model_order(model_id: str) -> tuple:
    """A sort key for bank model ids: pretrained before random, then architecture, source task, and a
    source's snapshots by iteration before the fully pretrained model (``@150`` before ``@1000``, not as
    strings)."""
    arch, source, snapshot = _parse_model_id(model_id)
    return (source is None, arch, source or "", math.inf if snapshot is None else snapshot)


try:  # the kernel behind scipy.stats.weightedtau, without its ~0.3 ms of argument checks per call
    from scipy.stats._stats import _weightedrankedtau
except ImportError:  # pragma: no cover - a scipy that moved it: the public function gives the same value
    _weightedrankedtau = None


def _weighted_tau(x: np.ndarray, y: np.ndarray) -> float:
    """``scipy.stats.weightedtau(x, y).statistic`` with its defaults (rank=True, hyperbolic additive
    weigher): the mean of the weighted taus ranked by x and by y (float64 input)."""
    if _weightedrankedtau is None:
        return float(stats.weightedtau(x, y).statistic)
    return float((_weightedrankedtau(x, y, None, None, True) + _weightedrankedtau(y, x, None, None, True)) / 2)


def statistic(name: str, scores, dice) -> float:
    """Weighted tau or Pearson of two sequences, as :func:`correlations` computes them (NaN when
    either is constant), for the thousands of calls of the bootstrap and the permutation tests; or one of
    :data:`SELECTION_MEASURES` (:func:`kendall_tau`, :func:`relative_top1`, :func:`top_k_hit` with k = 3)."""
    x = np.ascontiguousarray(scores, dtype=float)
    y = np.ascontiguousarray(dice, dtype=float)
    if name == "kendall":
        return kendall_tau(x, y)
    if name in SELECTION_MEASURES:
        return float(_statistic_batch(name, x[None], y[None])[0])
    if name not in STATISTICS:
        raise ValueError(f"unknown statistic {name!r}; known: {STATISTICS + SELECTION_MEASURES}")
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan
    if name == "tau":
        return _weighted_tau(x, y)
    return float(_batched_pearson(x[None], y[None])[0])


def _batched_pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson's r of each row pair of x, y [B, n]; NaN for rows where either is constant."""
    xc = x - x.mean(axis=1, keepdims=True)
    yc = y - y.mean(axis=1, keepdims=True)
    degenerate = (np.ptp(x, axis=1) == 0) | (np.ptp(y, axis=1) == 0)
    with np.errstate(all="ignore"):
        r = np.sum(xc * yc, axis=1) / np.sqrt(np.sum(xc * xc, axis=1) * np.sum(yc * yc, axis=1))
    r = np.clip(r, -1.0, 1.0)
    r[degenerate] = np.nan
    return r


def _statistic_batch(name: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The statistic of each row pair of x, y [B, n]."""
    if name == "pearson":
        return _batched_pearson(x, y)
    if name == "kendall":
        return _batched_kendall(x, y)
    if name == "rel_at_1":
        return _batched_relative_top1(x, y)
    if name == "top3":
        return _batched_top_k_hit(x, y, 3)
    return np.array([statistic(name, a, b) for a, b in zip(x, y)])


def bootstrap_interval(scores, dice, name: str, n_resamples: int = 1000, seed: int = 0,
                       level: float = 0.95, indices: np.ndarray | None = None) -> dict:
    """Percentile bootstrap interval of a correlation over the bank's models.

    Each resample draws ``n`` models with replacement (``n`` = bank size) with
    ``numpy.random.default_rng(seed)``, or uses the given ``indices`` [n_resamples, n]. A resample whose
    scores or Dice are all equal (e.g. one model drawn n times) has no defined correlation: it is
    dropped, and ``n_valid`` says how many were left. The interval is NaN when fewer than 2 are left.
    ``name``: "tau", "pearson" or one of :data:`SELECTION_MEASURES` (Rel@1 and the top-3 hit are defined
    on a resample with constant scores or Dice: those resamples count).
    """
    x = np.asarray(scores, dtype=float)
    y = np.asarray(dice, dtype=float)
    if indices is None:
        indices = np.random.default_rng(seed).integers(0, x.size, size=(n_resamples, x.size))
    return _percentile_interval(_statistic_batch(name, x[indices], y[indices]), level)


def _percentile_interval(values: np.ndarray, level: float = 0.95) -> dict:
    """The percentile interval of the finite bootstrap values (NaN when fewer than 2 are finite)."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if values.size < 2:
        return {"low": math.nan, "high": math.nan, "n_valid": int(values.size)}
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(values, [alpha, 1.0 - alpha])
    return {"low": float(low), "high": float(high), "n_valid": int(values.size)}


def _permutations(n: int, n_permutations: int, seed: int) -> tuple[np.ndarray, bool]:
    """Every permutation of n items when there are at most ``n_permutations`` (exact test), else
    ``n_permutations`` seeded random ones."""
    if math.factorial(n) <= n_permutations:
        import itertools
        return np.array(list(itertools.permutations(range(n)))), True
    rng = np.random.default_rng(seed)
    return np.array([rng.permutation(n) for _ in range(n_permutations)]), False


def permutation_pvalue(scores, dice, name: str, n_permutations: int = 2000, seed: int = 0,
                       permutations: tuple[np.ndarray, bool] | None = None) -> float:
    """One-sided p-value of a correlation against "the score carries no information about Dice".

    The Dice values are permuted over the models. Exact when all n! permutations fit in
    ``n_permutations`` (p = share of permutations, identity included, at least as large as observed);
    otherwise Monte Carlo with ``(1 + #{at least as large}) / (1 + n_permutations)``. NaN when the
    observed correlation is undefined.
    """
    x = np.asarray(scores, dtype=float)
    y = np.asarray(dice, dtype=float)
    observed = statistic(name, x, y)
    if not math.isfinite(observed):
        return math.nan
    perms, exact = permutations if permutations is not None else _permutations(x.size, n_permutations, seed)
    values = _statistic_batch(name, np.broadcast_to(x, perms.shape), y[perms])
    at_least = int(np.sum(values >= observed - 1e-12))
    return at_least / len(perms) if exact else (1 + at_least) / (1 + len(perms))


def top1_regret(scores, dice) -> dict:
    """Dice of the best model minus the Dice of the model the score ranks first.

    Ties for the top score are broken uniformly at random: the regret is the expectation over them
    (best Dice minus the mean Dice of the tied models). ``picked`` lists the tied models' indices.
    """
    x = np.asarray(scores, dtype=float)
    y = np.asarray(dice, dtype=float)
    x = np.where(np.isfinite(x), x, -np.inf)
    picked = np.flatnonzero(x == x.max())
    return {"regret": float(y.max() - y[picked].mean()), "picked": picked.tolist()}


# --------------------------------------------------------------------------------------------------
# Model selection beyond the paper's correlations (docs/report.md): unweighted Kendall's tau, relative
# top-1 accuracy and the top-3 hit rate (Agostinelli et al., ECCV 2022, "How stable are transferability
# metrics evaluations?"), and the leave-one-out stability of the verdict.
# --------------------------------------------------------------------------------------------------

#: The selection measures, in the order of the tables; each has a bootstrap interval like tau and Pearson.
SELECTION_MEASURES = ("kendall", "rel_at_1", "top3")
SELECTION_LABELS = {"kendall": "Kendall's τ-b", "rel_at_1": "Rel@1", "top3": "Top-3 hit rate"}


def kendall_tau(scores, dice) -> float:
    """Kendall's tau-b between the scores and the Dice (``scipy.stats.kendalltau``, its default variant
    "b", which corrects for ties in either sequence); NaN when either is constant. Unweighted: a swap at
    the bottom of the ranking counts as much as one at the top."""
    x = np.asarray(scores, dtype=float)
    y = np.asarray(dice, dtype=float)
    if x.shape != y.shape or x.size < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan
    return float(stats.kendalltau(x, y).statistic)


def _batched_kendall(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Kendall's tau-b of each row pair of x, y [B, n]: sum_ij sgn(x_i - x_j) sgn(y_i - y_j) over
    sqrt(sum_ij sgn(x_i - x_j)^2 * sum_ij sgn(y_i - y_j)^2), the pairs tied in x (or y) dropping out of
    the x (or y) factor as in tau-b; NaN where either row is constant. Equal to
    ``scipy.stats.kendalltau`` (tests/test_results.py), vectorised for the bootstrap."""
    sx = np.sign(x[:, :, None] - x[:, None, :])
    sy = np.sign(y[:, :, None] - y[:, None, :])
    with np.errstate(all="ignore"):
        tau = np.sum(sx * sy, axis=(1, 2)) / np.sqrt(np.sum(sx * sx, axis=(1, 2)) * np.sum(sy * sy, axis=(1, 2)))
    return np.clip(tau, -1.0, 1.0)


def relative_top1(scores, dice) -> float:
    """Relative top-1 accuracy, Rel@1 (Agostinelli et al., ECCV 2022): the Dice of the model the
    scores rank first over the best Dice in the bank; 1 when the best model is picked.

    Ties for the top score are broken uniformly at random, so Rel@1 is the mean Dice of the tied models
    over the best Dice (the expectation; the same convention as :func:`top1_regret`, Rel@1 = 1 - regret /
    best Dice). A non-finite score ranks last. NaN when the best Dice is not positive (no ratio).
    """
    return float(_batched_relative_top1(np.asarray(scores, dtype=float)[None], np.asarray(dice, dtype=float)[None])[0])


def _batched_relative_top1(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    x = np.where(np.isfinite(x), x, -np.inf)
    top = x == x.max(axis=1, keepdims=True)
    best = y.max(axis=1)
    with np.errstate(all="ignore"):
        rel = np.sum(np.where(top, y, 0.0), axis=1) / top.sum(axis=1) / best
    # a mean of values equal to the best can round to 1 + 1e-16
    return np.where(best > 0, np.minimum(rel, 1.0), np.nan)


def top_k_hit(scores, dice, k: int = 3) -> float:
    """Top-k hit: 1 if the truly best model (the highest mean Dice over seeds) is among the k models the
    scores rank first, else 0: would a user who fine-tunes the k models a metric ranks first get the best?

    Ties are resolved as the expectation over uniformly random tie-breaking of the scores: with ``a``
    models scoring above the k-th highest score and ``t`` models tied at it, the k - a remaining places
    go to k - a of the t tied models drawn at random. Several models sharing the best Dice are all "the
    best": picking any of them is a hit. The value is therefore the probability of a hit:
    1 if a best model scores above the k-th highest score, else 1 - C(t - b, k - a) / C(t, k - a) with
    ``b`` the best models among the tied. A non-finite score ranks last. On a bank of at most k models
    every ranking hits (1).
    """
    return float(_batched_top_k_hit(np.asarray(scores, dtype=float)[None], np.asarray(dice, dtype=float)[None], k)[0])


def _batched_top_k_hit(x: np.ndarray, y: np.ndarray, k: int) -> np.ndarray:
    from scipy.special import comb

    x = np.where(np.isfinite(x), x, -np.inf)
    if x.shape[1] <= k:
        return np.ones(x.shape[0])
    best = y == y.max(axis=1, keepdims=True)
    kth = -np.sort(-x, axis=1)[:, k - 1:k]
    above, tied = x > kth, x == kth
    slots = k - above.sum(axis=1)
    t = tied.sum(axis=1)
    b = np.sum(best & tied, axis=1)
    miss = comb(t - b, slots) / comb(t, slots)
    return np.where(np.any(best & above, axis=1), 1.0, 1.0 - miss)


def leave_one_out(scores, dice, name: str = "tau") -> np.ndarray:
    """[n] the statistic (:func:`statistic`: weighted tau by default) on the bank without model i, for each
    model i of the n: how much one model's presence moves the verdict on a metric."""
    x = np.asarray(scores, dtype=float)
    y = np.asarray(dice, dtype=float)
    keep = ~np.eye(x.size, dtype=bool)
    return np.array([statistic(name, x[k], y[k]) for k in keep])


def loo_stability(scores, dice) -> dict:
    """Leave-one-out stability of a metric's weighted tau with Dice (docs/report.md).

    ``tau``: on the whole bank; ``loo_tau_min``, ``loo_tau_max``: the lowest and highest weighted tau
    when one model is left out; ``loo_max_change``: max over models of |tau without it - tau| (0: no
    single model decides the verdict); ``most_influential``: the index of that model (None when every
    value is NaN). The metric's own ranking of the remaining models cannot change when a model is left out
    (each model is scored from its own features), so what can change is its agreement with Dice.
    """
    full = statistic("tau", scores, dice)
    loo = leave_one_out(scores, dice, "tau")
    change = np.abs(loo - full)
    defined = np.isfinite(change)
    return {"tau": full, "loo_tau_min": float(np.nanmin(loo)) if np.isfinite(loo).any() else math.nan,
            "loo_tau_max": float(np.nanmax(loo)) if np.isfinite(loo).any() else math.nan,
            "loo_max_change": float(change[defined].max()) if defined.any() else math.nan,
            "most_influential": int(np.flatnonzero(defined)[np.argmax(change[defined])]) if defined.any() else None,
            "loo_tau": loo}


def method_ranking_stability(full: Mapping[str, float], loo: Mapping[str, np.ndarray]) -> float:
    """Mean Kendall's tau-b between the methods' ranking by weighted tau on the whole bank and on the bank
    with one model left out, over the n models left out (the mean Kendall's tau between the full and
    leave-one-out rankings, applied to the verdict that the tables report: which method ranks the models
    best). 1: leaving out any one model keeps the order of the methods.

    ``full``: {method: weighted tau on the whole bank}; ``loo``: {method: [n] weighted taus without each
    model} (:func:`leave_one_out`). For each left-out model, the methods with a finite tau on both banks
    are compared (at least 2 needed); NaN when no left-out bank allows a comparison.
    """
    methods = [m for m in full if math.isfinite(full[m])]
    n = len(next(iter(loo.values()))) if loo else 0
    values = []
    for i in range(n):
        mine = [m for m in methods if math.isfinite(loo[m][i])]
        if len(mine) >= 2:
            values.append(kendall_tau([full[m] for m in mine], [loo[m][i] for m in mine]))
    values = [v for v in values if math.isfinite(v)]
    return float(np.mean(values)) if values else math.nan


def dice_matrix(dice_per_seed: list[list[float | None]]) -> np.ndarray:
    """[models, seeds] float array of per-seed Dice, NaN where undefined (None) or where a model has fewer
    seeds than the longest row."""
    width = max((len(row) for row in dice_per_seed), default=0)
    return np.array([[math.nan if v is None else float(v) for v in row] + [math.nan] * (width - len(row))
                     for row in dice_per_seed], dtype=float).reshape(len(dice_per_seed), width)


def pooled_seed_variance(d: np.ndarray) -> float:
    """The seed variance of the Dice pooled over the bank: the mean over models of each model's variance
    over its defined seeds (ddof=1). ``d`` is [models, seeds] with NaN for undefined seeds. NaN when some
    model has fewer than 2 defined seeds (the noise cannot be estimated)."""
    n_seeds = np.sum(np.isfinite(d), axis=1)
    if d.ndim != 2 or d.shape[0] == 0 or n_seeds.min() < 2:
        return math.nan
    return float(np.mean(np.nanvar(d, axis=1, ddof=1)))


def noise_ceiling(dice_per_seed: list[list[float | None]], n_simulations: int = 1000, seed: int = 0,
                  max_splits: int = 100) -> dict:
    """How well any score could correlate with Dice measured from this many fine-tuning seeds.

    ``dice_per_seed[m]`` holds model m's Dice per seed (None/NaN for undefined ones). Two estimates:

    - ``tau``, ``pearson``: the expected correlation between the mean Dice (taken as the truth) and a
      re-measurement of it with the same seed noise: each model's mean plus Normal noise of variance
      sigma^2 / S_m, sigma^2 the seed variance pooled over the bank (mean of per-model variances,
      ddof=1), S_m the model's number of seeds; ``n_simulations`` seeded draws. A perfect score (one
      that knew the expected Dice) would reach this value on average.
    - ``split_half_tau``, ``split_half_pearson``: the correlation between the mean Dice over one half
      of the seeds and over the other half, averaged over the splits of the seeds (all, or
      ``max_splits`` random ones). It measures the agreement of two half-size experiments, so it is a
      lower bound on the ceiling for the full number of seeds.

    With fewer than 2 seeds for some model the seed noise cannot be estimated: every value is NaN and
    ``available`` is False.
    """
    d = dice_matrix(dice_per_seed)
    n_seeds = np.sum(np.isfinite(d), axis=1)
    nan = {"tau": math.nan, "pearson": math.nan, "split_half_tau": math.nan, "split_half_pearson": math.nan,
           "seed_sd": math.nan, "available": False, "min_seeds": int(n_seeds.min()) if d.size else 0}
    variance = pooled_seed_variance(d)
    if d.shape[0] < 2 or not math.isfinite(variance):
        return nan
    means = np.nanmean(d, axis=1)
    rng = np.random.default_rng(seed)
    noise = rng.normal(size=(n_simulations, d.shape[0])) * np.sqrt(variance / n_seeds)
    simulated = {s: np.nanmean(_statistic_batch(s, np.broadcast_to(means, noise.shape), means + noise))
                 if variance > 0 else 1.0 for s in STATISTICS}
    # split-half: the same seed columns for every model (seeds are shared across the bank)
    n_cols = d.shape[1]
    import itertools
    half = n_cols // 2
    splits = list(itertools.combinations(range(n_cols), half))
    if len(splits) > max_splits:
        splits = [tuple(sorted(rng.choice(n_cols, size=half, replace=False))) for _ in range(max_splits)]
    halves = {s: [] for s in STATISTICS}
    for first in splits:
        second = [c for c in range(n_cols) if c not in first]
        with np.errstate(all="ignore"):
            a = np.nanmean(d[:, list(first)], axis=1)
            b = np.nanmean(d[:, second], axis=1)
        if np.all(np.isfinite(a)) and np.all(np.isfinite(b)):
            for s in STATISTICS:
                halves[s].append(statistic(s, a, b))
    split_half = {s: float(np.nanmean(v)) if np.any(np.isfinite(v)) else math.nan for s, v in halves.items()}
    return {"tau": float(simulated["tau"]), "pearson": float(simulated["pearson"]),
            "split_half_tau": split_half["tau"], "split_half_pearson": split_half["pearson"],
            "seed_sd": math.sqrt(variance), "available": True, "min_seeds": int(n_seeds.min())}


#: The static rankers: scores every target could get without looking at its data.
BASELINE_LABELS = {
    "random": "Random ranking (expected)",
    "pretrained_first": "Pretrained first",
    "same_architecture_first": "Same architecture first",
    "larger_source_first": "Larger source dataset first",
    "larger_model_first": "Larger model first",
}


def reference_architecture(models: list[str]) -> str:
    """The bank's most common architecture (alphabetically first on a tie)."""
    archs = [model_architecture(m) for m in models]
    return sorted(set(archs), key=lambda a: (-archs.count(a), a))[0]


def baseline_scores(models: list[str], source_sizes: Mapping[str, int], architecture: str | None = None,
                    parameter_counts: Mapping[str, int] | None = None) -> dict:
    """Scores of the static rankers for one bank (higher ranks first; ties stay ties).

    - ``pretrained_first``: 1 for a pretrained model (snapshots included), 0 for a randomly initialised one.
    - ``same_architecture_first``: 1 for a model of ``architecture`` (default: the bank's most common
      one, :func:`reference_architecture`), else 0. Constant on a one-architecture bank.
    - ``larger_source_first``: the number of training cases of the source task (0 for random models).
    - ``larger_model_first`` (only with ``parameter_counts``, {model id: number of weights,
      :func:`ccfv.models.bank.parameter_count`}): the model's number of weights, heads excluded. The
      model-size ranker of Singh et al. (ICLR 2026), which they found to beat most transferability scores
      on some benchmarks. Models of one architecture tie.

    The random ranking has no scores: its expected values are filled in by :func:`analyse`. A source task
    without a size, or a model without a parameter count, is a ValueError naming it.
    """
    architecture = architecture or reference_architecture(models)
    if parameter_counts is not None:
        missing = [m for m in models if m not in parameter_counts]
        if missing:
            raise ValueError(f"no parameter count for the bank model(s) {missing}")
    out = {"pretrained_first": [], "same_architecture_first": [], "larger_source_first": []}
    for m in models:
        source = model_source(m)
        out["pretrained_first"].append(0.0 if source is None else 1.0)
        out["same_architecture_first"].append(1.0 if model_architecture(m) == architecture else 0.0)
        if source is not None and source not in source_sizes:
            raise ValueError(f"no training-case count for source task {source} of {m}")
        out["larger_source_first"].append(0.0 if source is None else float(source_sizes[source]))
    if parameter_counts is not None:
        out["larger_model_first"] = [float(parameter_counts[m]) for m in models]
    return out


def static_rankers_note(records: list[Mapping], targets: list[str], source_sizes: Mapping[str, int],
                        parameter_counts: Mapping[str, int] | None = None) -> str:
    """Markdown lines below the statistics, regret and selection tables: what each static ranker of
    :func:`baseline_scores` orders by on these targets' banks, and when one of them cannot differ from
    another (every source of equal size: "Larger source dataset first" is "Pretrained first"; one
    architecture: "Same architecture first" and "Larger model first" tie every model), so that a reader
    does not take two equal rows for two findings."""
    banks = {t: sorted({r["model"] for r in records if r["target"] == t}) for t in targets}
    banks = {t: m for t, m in banks.items() if m}
    if not banks:
        return ""
    references = {t: reference_architecture(m) for t, m in banks.items()}
    if len(set(references.values())) == 1:
        reference = next(iter(references.values()))
    else:  # which architecture goes first on which targets
        reference = ", ".join(f"{a} on {', '.join(_short(t) for t, r in references.items() if r == a)}"
                              for a in dict.fromkeys(references.values()))
    parts = [f"**{BASELINE_LABELS['pretrained_first']}**: every pretrained model (snapshots included) above the "
             "randomly initialised ones",
             f"**{BASELINE_LABELS['same_architecture_first']}**: the bank's most common architecture first "
             f"({reference}; equally common ones: the alphabetically first)"]
    sources = sorted({s for m in banks.values() for s in map(model_source, m) if s is not None})
    sizes = ", ".join(f"{_short(s)} {source_sizes[s]}" for s in sources if s in source_sizes)
    text = f"**{BASELINE_LABELS['larger_source_first']}**: by the source task's training cases ({sizes})"
    equal = [t for t, m in banks.items()
             if len({source_sizes.get(s) for s in map(model_source, m) if s is not None}) == 1]
    if equal:
        text += (f"; on {', '.join(_short(t) for t in equal)} every source has the same number, so there it "
                 f"orders exactly as {BASELINE_LABELS['pretrained_first']} and its values repeat that row's")
    parts.append(text)
    if parameter_counts:
        counts = {model_architecture(m): parameter_counts[m] for m in (x for b in banks.values() for x in b)
                  if m in parameter_counts}
        parts.append(f"**{BASELINE_LABELS['larger_model_first']}**: by the number of weights, heads excluded ("
                     + ", ".join(f"{a} {n:,}" for a, n in sorted(counts.items())) + "; models of one architecture tie)")
    return "\nStatic rankers (they look at no image): " + "; ".join(parts) + ".\n"


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
        perms = _permutations(len(models), n_permutations, int(rng.integers(2**31)))
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
                    value, values = statistic(measure, x, dice), _statistic_batch(measure, x[boot], dice[boot])
                replicates.setdefault((name, measure), []).append(values)
                ci = _percentile_interval(values) if name != "random" or measure != "kendall" else \
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
        ci = _percentile_interval(means) if not (name == "random" and measure == "kendall") else \
            {"low": math.nan, "high": math.nan, "n_valid": 0}
        selection_rows.append({"method": first["method"], "metric": name, "kind": first["kind"], "target": AVG,
                               "statistic": measure, "value": float(np.mean(finite)) if finite else math.nan,
                               "ci_low": ci["low"], "ci_high": ci["high"], "n_valid": ci["n_valid"]})
    return {"statistics": stats_rows, "regret": regret_rows, "noise_ceiling": ceiling_rows,
            "selection": selection_rows, "stability": stability_rows}


def _fmt(value: float, digits: int = 4) -> str:
    return "nan" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def rows_to_csv(rows: list[dict], columns: list[str], flags: Mapping[str, str] | None = None) -> str:
    """The given columns of long-format rows (one per target and method); with ``flags``, a last column
    ``ground_truth``: ``ok`` or ``cannot rank`` for the row's target (empty for a mean over targets,
    target ``Avg``)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*columns, "ground_truth"] if flags is not None else columns)
    for r in rows:
        cells = [_fmt(r[c]) if isinstance(r[c], float) else r[c] for c in columns]
        if flags is not None:
            cells.append("" if r["target"] == AVG else _flag_cell(r["target"], flags))
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
        header = ["Method", *(_flagged_header(t, flags) for t in targets)]
        lines = [f"**{'Weighted τ' if stat == 'tau' else 'Pearson'}** — value [95% bootstrap interval, "
                 f"{n_bootstrap} resamples over models] (one-sided permutation p)", "",
                 "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        methods = list(dict.fromkeys(r["method"] for r in rows if r["statistic"] == stat))
        for method in methods:
            cells = [method]
            for t in targets:
                r = next(r for r in rows if r["statistic"] == stat and r["method"] == method and r["target"] == t)
                cell = _fmt(r["value"])
                if math.isfinite(r["ci_low"]):
                    cell += f" [{_fmt(r['ci_low'], 2)}, {_fmt(r['ci_high'], 2)}]"
                if math.isfinite(r["p_value"]):
                    cell += f" (p={r['p_value']:.3f})"
                cells.append(cell)
            lines.append("| " + " | ".join(cells) + " |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n" + flag_footnote(flags, targets, avg=False)


def regret_markdown(rows: list[dict], targets: list[str], flags: Mapping[str, str] | None = None) -> str:
    header = ["Method", *(_flagged_header(t, flags) for t in targets), "Avg"]
    lines = ["Top-1 regret: Dice of the best model minus Dice of the model ranked first (lower is better; "
             "ties for first: their mean)", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method in dict.fromkeys(r["method"] for r in rows):
        values = [next(r["regret"] for r in rows if r["method"] == method and r["target"] == t) for t in targets]
        lines.append("| " + " | ".join([method, *(_fmt(v) for v in values), _fmt(float(np.mean(values)))]) + " |")
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
        header = ["Method", *(_flagged_header(t, flags) for t in targets), AVG]
        lines = [f"**{SELECTION_LABELS[measure]}** ({explain[measure]}) — value [95% bootstrap interval, "
                 f"{n_bootstrap} resamples over models]", "",
                 "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        mine = [r for r in rows if r["statistic"] == measure]
        for method in dict.fromkeys(r["method"] for r in mine):
            cells = [method]
            for column in [*targets, AVG]:
                r = next(r for r in mine if r["method"] == method and r["target"] == column)
                cell = _fmt(r["value"])
                if math.isfinite(r["ci_low"]):
                    cell += f" [{_fmt(r['ci_low'], 2)}, {_fmt(r['ci_high'], 2)}]"
                cells.append(cell)
            lines.append("| " + " | ".join(cells) + " |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n" + flag_footnote(flags, targets)


def stability_markdown(rows: list[dict], targets: list[str], flags: Mapping[str, str] | None = None) -> str:
    """Per method and target: the weighted tau, its range over the leave-one-out banks and the model whose
    removal moves it most; a last row with the stability of the methods' ranking per target."""
    header = ["Method", *(_flagged_header(t, flags) for t in targets)]
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
            cells.append(f"{_fmt(r['tau'])} [{_fmt(r['loo_tau_min'], 2)}, {_fmt(r['loo_tau_max'], 2)}] "
                         f"Δ {_fmt(r['loo_max_change'], 2)} ({r['most_influential']})")
        lines.append("| " + " | ".join(cells) + " |")
    per_target = [next((r["method_ranking_stability"] for r in rows if r["target"] == t), math.nan) for t in targets]
    lines.append("| " + " | ".join(["*Ranking of the methods by weighted τ: mean Kendall's τ-b, whole bank vs "
                                    "one model left out*", *(_fmt(v) for v in per_target)]) + " |")
    return "\n".join(lines) + "\n" + flag_footnote(flags, targets, avg=False)


def noise_ceiling_markdown(rows: list[dict]) -> str:
    lines = ["Noise ceiling: the expected correlation of a perfect score with Dice measured from this many "
             "fine-tuning seeds (docs/report.md)", "",
             "| Target | Models | Seeds | Seed SD of Dice | τ ceiling | Pearson ceiling | Split-half τ | "
             "Split-half Pearson |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if not r["available"]:
            lines.append(f"| {_short(r['target'])} | {r['n_models']} | {r['min_seeds']} | not available (one seed) "
                         "| not available | not available | not available | not available |")
        else:
            lines.append(f"| {_short(r['target'])} | {r['n_models']} | {r['min_seeds']} | {_fmt(r['seed_sd'])} | "
                         f"{_fmt(r['tau'])} | {_fmt(r['pearson'])} | {_fmt(r['split_half_tau'])} | "
                         f"{_fmt(r['split_half_pearson'])} |")
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
    return result


def parameter_counts_of(bank_dirs: Mapping[str, Path]) -> dict[str, int]:
    """{model id: number of weights, heads excluded} of the bank models' folders
    (:func:`ccfv.models.bank.parameter_count`)."""
    from .models.bank import parameter_count

    return {model: parameter_count(Path(path)) for model, path in bank_dirs.items()}


def source_sizes_from_splits(split_files: Mapping[str, Path]) -> dict[str, int]:
    """{task: number of training cases} from ``results/splits/<task>.json``."""
    return {task: len(json.loads(Path(path).read_text())["train"]) for task, path in split_files.items()}
