"""Table cells and the ground-truth flag, in one place for every table the results stage and ``ccfv rank``
write: numbers, CSV and Markdown tables, LaTeX escaping, a flagged target's mark and footnote."""
from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping

#: The marker of a target whose ground truth cannot rank its models (docs/report.md).
FLAG_MARK = "†"
#: The ``ground_truth`` cell of a target in the CSV tables.
GROUND_TRUTH_OK, GROUND_TRUTH_FLAGGED = "ok", "cannot rank"


def flag_cell(target: str, flags: Mapping[str, str] | None) -> str:
    return GROUND_TRUTH_FLAGGED if flags and target in flags else GROUND_TRUTH_OK


def flagged_header(target: str, flags: Mapping[str, str] | None) -> str:
    return short_task(target) + (FLAG_MARK if flags and target in flags else "")


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


def short_task(task: str) -> str:
    return task.split("_")[0]


def fmt_number(value: float | None, digits: int = 4, missing: str = "nan") -> str:
    """A table cell: ``value`` with ``digits`` decimals, or ``missing`` when it is None, NaN or infinite."""
    return missing if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def parse_number(text: str) -> float:
    """A table cell as a number; NaN for text that is not one."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        return math.nan
    return value


def latex_escape(text: str) -> str:
    special = {"\\": r"\textbackslash{}", "_": r"\_", "&": r"\&", "%": r"\%", "#": r"\#", "$": r"\$",
               "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
    return "".join(special.get(c, c) for c in text)


def latex_number(value: float) -> str:
    return "--" if not math.isfinite(value) else f"{value:.4f}"


def csv_table(rows: list[dict], columns: list[str]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for r in rows:
        writer.writerow([f"{r[c]:.2f}" if isinstance(r[c], float) else r[c] for c in columns])
    return out.getvalue()


def markdown_table(rows: list[dict], columns: list[str], headers: list[str], title: str) -> str:
    lines = [title, "", "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for r in rows:
        lines.append("| " + " | ".join(f"{r[c]:.2f}" if isinstance(r[c], float) else str(r[c]) for c in columns)
                     + " |")
    return "\n".join(lines) + "\n"
