"""The paper's published values (Yang et al., MICCAI 2023, Tables 1 and 2) and ours beside them."""
from __future__ import annotations

import csv
import io
from collections.abc import Mapping

from .formatting import flag_cell, flag_footnote, flagged_header

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
            cells.append("" if r["target"] == "Avg" else flag_cell(r["target"], flags))
        writer.writerow(cells)
    return out.getvalue()


def paper_comparison_markdown(rows: list[dict], flags: Mapping[str, str] | None = None) -> str:
    if not rows:
        return ("No published values for these targets: the paper (Yang et al., MICCAI 2023, Tables 1 "
                f"and 2) reports {', '.join(PAPER_TARGETS)} only.\n")
    lines = ["| Table | Method | Metric | Target | Ours | Paper | Ours − paper |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        stat = "weighted τ" if r["statistic"] == "tau" else "Pearson"
        target = r["target"] if r["target"] == "Avg" else flagged_header(r["target"], flags)
        lines.append(f"| {r['table']} | {r['method']} | {stat} | {target} | {r['ours']:.4f} | "
                     f"{r['paper']:.4f} | {r['difference']:+.4f} |")
    targets = list(dict.fromkeys(r["target"] for r in rows if r["target"] != "Avg"))
    return "\n".join(lines) + "\n" + flag_footnote(flags, targets, avg=any(r["target"] == "Avg" for r in rows))
