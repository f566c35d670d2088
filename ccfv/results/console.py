"""``ccfv report``: the tables of a results folder, and the ground-truth verdict, in the terminal."""
from __future__ import annotations

import csv
import math
import re
from pathlib import Path

from .formatting import parse_number

#: (file under results/tables, title) in the order ``ccfv report`` prints them; missing files are skipped.
REPORT_TABLES = [
    ("table1.csv", "Table 1: weighted Kendall's tau and Pearson, scores vs fine-tuned Dice"),
    ("table2.csv", "Table 2: ablations"),
    ("table3.csv", "Table 3: pre-registered scores, the k-NN baseline, LogME and CC-FV"),
    ("paper_comparison.csv", "Ours beside the paper's published values"),
    ("regret.csv", "Top-1 regret (best Dice minus Dice of the model ranked first)"),
    ("noise_ceiling.csv", "Noise ceiling from the spread over fine-tuning seeds"),
    ("statistics.csv", "Correlations with 95% bootstrap intervals and one-sided permutation p-values"),
    ("selection.csv", "Kendall's tau-b, Rel@1 and top-3 hit rate with 95% bootstrap intervals (Avg: mean over targets)"),
    ("stability.csv", "Leave-one-out stability of each method's weighted tau and of the methods' ranking"),
    ("architecture.csv", "Share of each score's variance across the bank that the architecture explains (eta squared)"),
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
    return text.lower() == "nan" or not math.isnan(parse_number(text))


def print_reference_comparison(results_dir: str | Path, reference_dir: str | Path, console=None):
    """Print :func:`ccfv.results.reference.compare_with_reference` in words; return the comparison."""
    from rich.console import Console

    from .reference import compare_with_reference

    console = console or Console()
    comparison = compare_with_reference(results_dir, reference_dir)
    lines = comparison.lines()
    style = "bold" if comparison.identical else ("bold red" if comparison.comparable else None)
    console.print(f"Reference {reference_dir}: {lines[0]}", style=style, highlight=False, soft_wrap=True)
    for line in lines[1:]:
        console.print(line, highlight=False, soft_wrap=True)
    return comparison
