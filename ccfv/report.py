"""What the benchmark cost, from Snakemake's benchmark files, and the results in a terminal.

Every rule writes ``results/benchmarks/<stage>/....tsv`` (Snakemake's ``benchmark:``): one header line
and one line per repetition with ``s`` (wall-clock seconds), ``max_rss`` (peak resident memory, MB),
``cpu_time`` (seconds) and more; a value Snakemake could not measure is ``NA`` or ``-``.

- :func:`stage_costs`: per stage (the first folder under ``benchmarks/``): jobs, total and longest wall
  time, CPU time and the peak memory of any job.
- :func:`pair_costs`: per (target, model): transferability estimation (``sample_features`` + ``score``)
  against fine-tuning (every seed) and the ratio of the two.
- :func:`print_report`: ``ccfv report RESULTS_DIR``, the ground-truth verdict and the result tables
  rendered with rich; :func:`print_ground_truth`: ``ccfv report RESULTS_DIR --ground-truth``, the verdict
  alone (``make demo`` prints it).
"""
from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Iterable
from pathlib import Path

from .atomic import write_text

__all__ = ["read_benchmark", "stage_costs", "pair_costs", "build_costs", "print_report", "print_ground_truth",
           "REPORT_TABLES"]


def _number(text: str) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return math.nan
    return value


def read_benchmark(path: str | Path) -> dict[str, float]:
    """The first repetition of a Snakemake benchmark file as {column: value} (NaN where not measured)."""
    lines = Path(path).read_text().splitlines()
    if len(lines) < 2:
        raise ValueError(f"{path}: not a Snakemake benchmark file (needs a header and a line)")
    header = lines[0].split("\t")
    values = lines[1].split("\t")
    return {k: _number(v) for k, v in zip(header, values) if k != "h:m:s"}


def _nansum(values: Iterable[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(sum(finite)) if finite else math.nan


def _nanmax(values: Iterable[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(max(finite)) if finite else math.nan


def stage_costs(benchmark_dir: str | Path) -> list[dict]:
    """Per stage under ``benchmark_dir``: n_jobs, total_s, max_s, cpu_s, peak_rss_mb."""
    root = Path(benchmark_dir)
    by_stage: dict[str, list[dict]] = {}
    for path in sorted(root.rglob("*.tsv")):
        by_stage.setdefault(path.relative_to(root).parts[0], []).append(read_benchmark(path))
    return [{"stage": stage, "n_jobs": len(rows), "total_s": _nansum(r.get("s", math.nan) for r in rows),
             "max_s": _nanmax(r.get("s", math.nan) for r in rows),
             "cpu_s": _nansum(r.get("cpu_time", math.nan) for r in rows),
             "peak_rss_mb": _nanmax(r.get("max_rss", math.nan) for r in rows)} for stage, rows in by_stage.items()]


def pair_costs(benchmark_dir: str | Path, pairs: Iterable[tuple[str, str]] | None = None,
               seeds: Iterable[int] | None = None) -> list[dict]:
    """Per (target, model): seconds and peak memory of transferability estimation
    (``features/<target>/<model>.tsv`` + ``scores/<target>/<model>.tsv``) and of fine-tuning
    (``finetune/<target>/<model>/seed<N>.tsv``, summed over seeds), and fine-tuning / estimation.

    ``pairs`` and ``seeds`` name the jobs of the current DAG; by default every features benchmark and
    every seed found (which may include jobs of an earlier config).
    """
    root = Path(benchmark_dir)
    if pairs is None:
        pairs = [(p.parent.name, p.stem) for p in sorted((root / "features").glob("*/*.tsv"))]
    rows = []
    for target, model in pairs:
        feats = read_benchmark(root / "features" / target / f"{model}.tsv")
        score_path = root / "scores" / target / f"{model}.tsv"
        score = read_benchmark(score_path) if score_path.exists() else {}
        folder = root / "finetune" / target / model
        seed_files = (sorted(folder.glob("seed*.tsv")) if seeds is None
                      else [folder / f"seed{s}.tsv" for s in seeds])
        seed_rows = [read_benchmark(p) for p in seed_files]
        te_s = _nansum([feats.get("s", math.nan), score.get("s", math.nan)])
        ft_s = _nansum(r.get("s", math.nan) for r in seed_rows)
        rows.append({
            "target": target, "model": model,
            "features_s": feats.get("s", math.nan), "score_s": score.get("s", math.nan), "te_s": te_s,
            "te_peak_rss_mb": _nanmax([feats.get("max_rss", math.nan), score.get("max_rss", math.nan)]),
            "n_seeds": len(seed_rows), "finetune_s": ft_s,
            "finetune_peak_rss_mb": _nanmax(r.get("max_rss", math.nan) for r in seed_rows),
            "finetune_over_te": ft_s / te_s if te_s and math.isfinite(te_s) and math.isfinite(ft_s) else math.nan,
        })
    return rows


def _csv(rows: list[dict], columns: list[str]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for r in rows:
        writer.writerow([f"{r[c]:.2f}" if isinstance(r[c], float) else r[c] for c in columns])
    return out.getvalue()


def _markdown(rows: list[dict], columns: list[str], headers: list[str], title: str) -> str:
    lines = [title, "", "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for r in rows:
        lines.append("| " + " | ".join(f"{r[c]:.2f}" if isinstance(r[c], float) else str(r[c]) for c in columns)
                     + " |")
    return "\n".join(lines) + "\n"


STAGE_COLUMNS = ["stage", "n_jobs", "total_s", "max_s", "cpu_s", "peak_rss_mb"]
PAIR_COLUMNS = ["target", "model", "features_s", "score_s", "te_s", "te_peak_rss_mb", "n_seeds", "finetune_s",
                "finetune_peak_rss_mb", "finetune_over_te"]


def build_costs(benchmark_dir: str | Path, out_dir: str | Path, pairs: Iterable[tuple[str, str]] | None = None,
                seeds: Iterable[int] | None = None) -> dict[str, list[dict]]:
    """Write ``costs_per_stage.{csv,md}`` (every benchmark file under ``benchmark_dir``) and
    ``costs_per_pair.{csv,md}`` (see :func:`pair_costs`) under ``out_dir``."""
    stages, pairs = stage_costs(benchmark_dir), pair_costs(benchmark_dir, pairs, seeds)
    out = Path(out_dir)
    write_text(out / "costs_per_stage.csv", _csv(stages, STAGE_COLUMNS))
    write_text(out / "costs_per_stage.md", _markdown(
        stages, STAGE_COLUMNS, ["Stage", "Jobs", "Total s", "Longest s", "CPU s", "Peak RSS MB"],
        "Cost per stage, from Snakemake's benchmark files (wall-clock seconds, peak resident memory)"))
    write_text(out / "costs_per_pair.csv", _csv(pairs, PAIR_COLUMNS))
    write_text(out / "costs_per_pair.md", _markdown(
        pairs, PAIR_COLUMNS, ["Target", "Model", "Features s", "Score s", "TE s", "TE peak MB", "Seeds",
                              "Fine-tune s", "Fine-tune peak MB", "Fine-tune / TE"],
        "Transferability estimation (sample_features + score) against fine-tuning, per (target, model)"))
    return {"stages": stages, "pairs": pairs}


#: (file under results/tables, title) in the order ``ccfv report`` prints them; missing files are skipped.
REPORT_TABLES = [
    ("table1.csv", "Table 1: weighted Kendall's tau and Pearson, scores vs fine-tuned Dice"),
    ("table2.csv", "Table 2: ablations"),
    ("paper_comparison.csv", "Ours beside the paper's published values"),
    ("regret.csv", "Top-1 regret (best Dice minus Dice of the model ranked first)"),
    ("noise_ceiling.csv", "Noise ceiling from the spread over fine-tuning seeds"),
    ("statistics.csv", "Correlations with 95% bootstrap intervals and one-sided permutation p-values"),
    ("selection.csv", "Kendall's tau-b, Rel@1 and top-3 hit rate with 95% bootstrap intervals (Avg: mean over targets)"),
    ("stability.csv", "Leave-one-out stability of each method's weighted tau and of the methods' ranking"),
    ("costs_per_stage.csv", "Cost per stage"),
    ("costs_per_pair.csv", "Transferability estimation vs fine-tuning cost"),
]


def print_ground_truth(results_dir: str | Path, console=None) -> list[dict]:
    """Print the ground-truth verdict of ``<results_dir>/tables/ground_truth.csv`` in words (which targets
    cannot rank their models, and why); returns its rows."""
    from rich.console import Console

    from .ground_truth import read_csv, verdict

    console = console or Console()
    path = Path(results_dir) / "tables" / "ground_truth.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no ground-truth table (run the workflow first)")
    rows = read_csv(path)
    lines = verdict(rows)
    style = "bold" if all(r["can_rank"] for r in rows) else "bold red"
    console.print(lines[0], style=style, highlight=False, soft_wrap=True)
    for line in lines[1:]:
        console.print(line, highlight=False, soft_wrap=True)
    console.print(f"Details: {path.with_suffix('.md')}", highlight=False, soft_wrap=True)
    return rows


def print_report(results_dir: str | Path, console=None) -> int:
    """Print the ground-truth verdict (when the workflow wrote one) and every table of
    ``<results_dir>/tables`` that exists; returns how many tables were printed."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    tables = Path(results_dir) / "tables"
    if not tables.is_dir():
        raise FileNotFoundError(f"{tables}: no tables folder (run the workflow first)")
    if (tables / "ground_truth.csv").is_file():
        print_ground_truth(results_dir, console)
    printed = 0
    for name, title in REPORT_TABLES:
        path = tables / name
        if not path.exists():
            continue
        rows = list(csv.reader(path.open()))
        if not rows:
            continue
        table = Table(title=title, title_justify="left", header_style="bold")
        rows = [[_short_task(cell) for cell in row] for row in rows]
        for column in rows[0]:
            numeric = all(_is_number(r[len(table.columns)]) for r in rows[1:] if len(r) > len(table.columns))
            table.add_column(column, justify="right" if numeric and rows[1:] else "left")
        for row in rows[1:]:
            table.add_row(*row)
        console.print(table)
        printed += 1
    if not printed:
        raise FileNotFoundError(f"{tables}: none of {[n for n, _ in REPORT_TABLES]}")
    return printed


def _short_task(text: str) -> str:
    """``Task03`` for ``Task03_Liver``, so that the tables fit a terminal."""
    return text.split("_")[0] if re.fullmatch(r"Task\d+_\w+", text) else text


def _is_number(text: str) -> bool:
    return text.lower() == "nan" or not math.isnan(_number(text))
