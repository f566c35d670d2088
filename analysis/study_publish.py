"""Publish a finished run of the 20-model study (config/study.yaml) into docs/benchmark/ and print the figures
docs/benchmark.md quotes, so that every number of that page can be traced to a file:

    python analysis/study_publish.py results-study --out docs/benchmark [--previous <folder>]

Copies the run's tables as the workflow wrote them (``tables/*.csv``, ``table1.md``-``table3.md``), its figures
(PNG, as 256-colour palettes) and its ``provenance.json`` into ``--out``, and writes ``summary.md`` there:

- the health check of each target's ground truth (``ground_truth.csv``);
- per method (metrics and static rankers): weighted Kendall's tau per target with its 95 % bootstrap interval
  and the average, mean Rel@1, Kendall's tau-b and top-3 hit over the targets, mean top-1 regret;
- per metric and target, the weighted tau within each architecture's members (U-Net, UNETR; from
  ``scores_and_dice.csv``, ``ccfv.results.measures.statistic``), which a between-architecture split hides;
- the cost of each stage (job wall and CPU seconds, ``costs_per_stage.csv``) and estimation against
  fine-tuning;
- with ``--previous`` (a folder holding an earlier run's ``scores_and_dice.csv`` and ``table1.csv``, read
  before ``--out`` is overwritten when it is the same folder): how far this run's Dice and Table 1 averages
  moved from it (Pearson and mean absolute difference of the mean Dice per (target, model)).

Exit 2, nothing written, when the run is unfinished (a table missing).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from _common import copy_run_outputs  # first: puts the repository on sys.path

from ccfv.bank.model_ids import model_architecture
from ccfv.results.measures import statistic

NEEDED = ("statistics.csv", "selection.csv", "regret.csv", "ground_truth.csv", "scores_and_dice.csv",
          "costs_per_stage.csv", "table1.csv")
COPIED = NEEDED + ("stability.csv", "table2.csv", "table3.csv", "noise_ceiling.csv", "architecture.csv",
                   "costs_per_pair.csv", "table1.md", "table2.md", "table3.md", "statistics.md", "ground_truth.md")
#: Stages whose jobs estimate transferability (features and scores) and the one they stand in for.
ESTIMATION, FINE_TUNING = ("features", "scores"), "finetune"


def read_run(results: Path) -> dict[str, pd.DataFrame]:
    """The run's tables by stem; raises FileNotFoundError naming the first one missing."""
    tables = {}
    for name in NEEDED:
        path = results / "tables" / name
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing (is the run finished?)")
        tables[name.removesuffix(".csv")] = pd.read_csv(path)
    return tables


def _cell(one: pd.DataFrame) -> str:
    """"value [low, high]" of a statistics.csv row; the value alone without an interval (the random ranking)."""
    if not len(one):
        return ""
    if one["ci_low"].isna().iloc[0]:
        return f"{one['value'].iloc[0]:.2f}"
    return f"{one['value'].iloc[0]:.2f} [{one['ci_low'].iloc[0]:.2f}, {one['ci_high'].iloc[0]:.2f}]"


def method_summary(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per method: tau per target ("value [low, high]"), tau_avg, rel_at_1, kendall, top3 (means over
    the targets, the ``Avg`` rows of selection.csv), regret (mean over the targets), and Pearson's r per target
    (``pearson:<target>``) with its average ``pearson_avg``."""
    stats = tables["statistics"]
    tau = stats[stats["statistic"] == "tau"]
    pearson = stats[stats["statistic"] == "pearson"]
    targets = list(dict.fromkeys(tau["target"]))
    rows = []
    selection = tables["selection"]
    regret = tables["regret"]
    for (method, metric, kind), group in tau.groupby(["method", "metric", "kind"], sort=False):
        row = {"method": method, "metric": metric, "kind": kind}
        linear = pearson[pearson["metric"] == metric]
        for target in targets:
            row[target] = _cell(group[group["target"] == target])
            row[f"pearson:{target}"] = _cell(linear[linear["target"] == target])
        row["tau_avg"] = group["value"].mean()
        row["pearson_avg"] = linear["value"].mean() if len(linear) else np.nan
        for measure in ("rel_at_1", "kendall", "top3"):
            avg = selection[(selection["metric"] == metric) & (selection["target"] == "Avg")
                            & (selection["statistic"] == measure)]
            row[measure] = float(avg["value"].iloc[0]) if len(avg) else np.nan
        row["regret"] = regret.loc[regret["metric"] == metric, "regret"].mean()
        rows.append(row)
    return pd.DataFrame(rows)


def within_architecture(scores_and_dice: pd.DataFrame) -> pd.DataFrame:
    """Weighted tau of each metric's score with the mean Dice among one architecture's members, per target:
    rows (metric, target), columns the architectures."""
    metrics = [c for c in scores_and_dice.columns if c not in ("target", "model", "dice_mean_over_seeds", "n_seeds")]
    frame = scores_and_dice.assign(architecture=scores_and_dice["model"].map(model_architecture))
    rows = []
    for metric in metrics:
        for target, group in frame.groupby("target", sort=False):
            row = {"metric": metric, "target": target}
            for architecture, members in group.groupby("architecture"):
                row[architecture] = statistic("tau", members[metric], members["dice_mean_over_seeds"])
            rows.append(row)
    return pd.DataFrame(rows)


def compare_with(previous: dict[str, pd.DataFrame], tables: dict[str, pd.DataFrame]) -> list[str]:
    """Lines saying how far this run's mean Dice and Table 1 averages lie from an earlier run's."""
    keys = ["target", "model"]
    both = tables["scores_and_dice"][keys + ["dice_mean_over_seeds"]].merge(
        previous["scores_and_dice"][keys + ["dice_mean_over_seeds"]], on=keys, suffixes=("", "_previous"))
    new, old = both["dice_mean_over_seeds"], both["dice_mean_over_seeds_previous"]
    lines = [f"Mean Dice of {len(both)} (target, model) pairs against the earlier run: Pearson "
             f"{np.corrcoef(new, old)[0, 1]:.3f}, mean absolute difference {np.mean(np.abs(new - old)):.3f}, largest "
             f"{np.max(np.abs(new - old)):.3f}."]
    table1 = tables["table1"]
    earlier = previous["table1"]
    taus = table1[table1["statistic"] == "tau"].set_index("method")["Avg"]
    earlier_taus = earlier[earlier["statistic"] == "tau"].set_index("method")["Avg"]
    lines.append("Table 1 weighted tau averages, this run (earlier run): " + ", ".join(
        f"{method} {value:.2f} ({earlier_taus[method]:.2f})" for method, value in taus.items()
        if method in earlier_taus.index) + ".")
    return lines


def to_markdown(tables: dict[str, pd.DataFrame], summary: pd.DataFrame, within: pd.DataFrame,
                comparison: list[str]) -> str:
    health = tables["ground_truth"]
    out = ["# The 20-model study: the published run", "", "Written by `analysis/study_publish.py` from the run's tables.",
           "", "## Ground truth", "",
           "| target | models | seeds | Dice min / median / max | best | near 0 | tied at top | spread / seed SD | "
           "reliability | can rank |", "|---|---|---|---|---|---|---|---|---|---|"]
    for _, r in health.iterrows():
        out.append(f"| {r['target']} | {r['n_models']} | {r['n_seeds']} | {r['dice_min']:.2f} / {r['dice_median']:.2f}"
                   f" / {r['dice_max']:.2f} | {r['best']} | {r['n_near_zero']} | {r['n_tied_top']} | "
                   f"{r['source_spread']:.3f} / {r['seed_sd']:.3f} = {r['spread_ratio']:.2f} | {r['reliability']:.2f} "
                   f"| {r['can_rank']} |")
    targets = [c for c in summary.columns if c.startswith("Task")]  # the tau columns; Pearson's are "pearson:..."
    out += ["", "## Every method", "", "Weighted tau per target [95 % bootstrap interval over models]; means over the "
            "targets of weighted tau, Rel@1, Kendall's tau-b, top-3 hit and top-1 regret.", "",
            "| method | " + " | ".join(targets) + " | tau avg | Rel@1 | tau-b | top-3 | regret |",
            "|---" * (len(targets) + 6) + "|"]
    for _, r in summary.sort_values("tau_avg", ascending=False).iterrows():
        out.append(f"| {r['method']} | " + " | ".join(r[t] for t in targets)
                   + f" | {r['tau_avg']:.2f} | {r['rel_at_1']:.2f} | {r['kendall']:.2f} | {r['top3']:.2f} | "
                   f"{r['regret']:.3f} |")
    out += ["", "## Pearson's r (metrics)", "", "| method | " + " | ".join(targets) + " | avg |",
            "|---" * (len(targets) + 2) + "|"]
    for _, r in summary[summary["kind"] == "metric"].iterrows():
        out.append(f"| {r['method']} | " + " | ".join(r[f"pearson:{t}"] for t in targets) + f" | {r['pearson_avg']:.2f} |")
    architectures = [c for c in within.columns if c not in ("metric", "target")]
    out += ["", "## Weighted tau within each architecture", "", f"Per target, {' / '.join(architectures)} members.",
            "", "| metric | " + " | ".join(targets) + " |", "|---" * (len(targets) + 1) + "|"]
    for metric, group in within.groupby("metric", sort=False):
        cells = group.set_index("target")
        out.append(f"| {metric} | " + " | ".join(
            " / ".join(f"{cells.loc[t, a]:.2f}" for a in architectures) if t in cells.index else ""
            for t in targets) + " |")
    costs = tables["costs_per_stage"].set_index("stage")
    out += ["", "## Cost per stage (job seconds from the run's benchmark files)", "",
            "| stage | jobs | wall s | CPU s |", "|---|---|---|---|"]
    for stage, r in costs.iterrows():
        out.append(f"| {stage} | {r['n_jobs']:.0f} | {r['total_s']:.0f} | {r['cpu_s']:.0f} |")
    estimation = costs.loc[[s for s in ESTIMATION if s in costs.index]]
    if FINE_TUNING in costs.index:
        ratio_wall = estimation["total_s"].sum() / costs.loc[FINE_TUNING, "total_s"]
        ratio_cpu = estimation["cpu_s"].sum() / costs.loc[FINE_TUNING, "cpu_s"]
        out += ["", f"Estimation (features and scores) against fine-tuning: {ratio_wall:.3f} of its job wall time, "
                f"{ratio_cpu:.3f} of its CPU seconds; all stages {costs['total_s'].sum():.0f} s job wall time, "
                f"{costs['cpu_s'].sum():.0f} CPU s."]
    if comparison:
        out += ["", "## Against the earlier run", ""] + comparison
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="the study's finished results folder")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--previous", type=Path, help="a folder with an earlier run's scores_and_dice.csv, table1.csv")
    args = parser.parse_args(argv)
    try:
        tables = read_run(args.results)
        previous = ({name: pd.read_csv(args.previous / f"{name}.csv") for name in ("scores_and_dice", "table1")}
                    if args.previous else None)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    summary = method_summary(tables)
    text = to_markdown(tables, summary, within_architecture(tables["scores_and_dice"]),
                       compare_with(previous, tables) if previous else [])
    args.out.mkdir(parents=True, exist_ok=True)
    copy_run_outputs(args.results, args.out, COPIED)
    (args.out / "summary.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
