"""The pre-registered evaluation on held-out worlds (docs/preregistration.md): every method's mean weighted
Kendall's tau and mean Rel@1 over the held-out targets whose ground truth can rank, and the success criteria
fixed in advance, applied as written.

    python analysis/heldout.py results-heldout1 results-heldout2 --out docs/benchmark/heldout

Reads each finished results folder's ``tables/statistics.csv`` (weighted tau per target, every metric and
static ranker), ``tables/selection.csv`` (Kendall's tau-b, Rel@1, top-3 hit) and ``tables/ground_truth.csv``
(which targets can rank), and writes into ``--out``:

- ``summary.csv``: one row per method: kind (metric or baseline), targets averaged, mean weighted tau (the
  primary measure), mean Rel@1 (the secondary), mean tau-b and top-3 hit, and the weighted tau of every
  (world, target);
- ``summary.md``: the same as a table, and the verdicts of the criteria;
- ``<world>/``: the world's tables as the workflow wrote them (statistics, selection, regret, Tables 1-3,
  ground truth, scores and Dice, provenance), per-target values with their bootstrap intervals.

A world whose run is unfinished (a table missing) is an error naming the file; nothing is written then.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import pandas as pd

#: The three pre-registered scores (docs/preregistration.md, "The scores").
NEW_SCORES = ("ccfv_disc", "ccfv_varied", "rankme")
LABEL_FREE = "rankme"
CCFV = "ccfv"
#: What each world's folder keeps (tables/ unless a path is given).
COPIED = ("statistics.csv", "selection.csv", "regret.csv", "table1.csv", "table2.csv", "table3.csv",
          "ground_truth.csv", "scores_and_dice.csv", "records.json")


def read_world(results: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(statistics, selection, ground truth) of one results folder; FileNotFoundError names a missing table."""
    tables = results / "tables"
    frames = []
    for name in ("statistics.csv", "selection.csv", "ground_truth.csv"):
        path = tables / name
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing; is the run of {results} finished?")
        frames.append(pd.read_csv(path))
    return tuple(frames)


def per_target(worlds: dict[str, Path]) -> pd.DataFrame:
    """Long table: world, target, method, metric, kind, can_rank, tau (weighted), kendall, rel_at_1, top3."""
    rows = []
    for world, results in worlds.items():
        statistics, selection, ground_truth = read_world(results)
        can_rank = dict(zip(ground_truth["target"], ground_truth["can_rank"].astype(str) == "True"))
        tau = statistics[statistics["statistic"] == "tau"]
        wide = selection.pivot_table(index=["method", "metric", "kind", "target"], columns="statistic",
                                     values="value").reset_index()
        merged = wide.merge(tau[["metric", "target", "value"]].rename(columns={"value": "tau"}),
                            on=["metric", "target"], how="outer", validate="one_to_one")
        for r in merged.itertuples(index=False):
            if r.target not in can_rank:  # the tables' "Avg" column, not a target
                continue
            rows.append({"world": world, "target": r.target, "method": r.method, "metric": r.metric,
                         "kind": r.kind, "can_rank": can_rank[r.target], "tau": r.tau,
                         "kendall": r.kendall, "rel_at_1": r.rel_at_1, "top3": r.top3})
    return pd.DataFrame(rows)


def summarise(long: pd.DataFrame) -> pd.DataFrame:
    """One row per method, averaged over the (world, target) pairs that can rank; sorted by mean tau."""
    ok = long[long["can_rank"]]
    summary = ok.groupby(["method", "metric", "kind"], as_index=False).agg(
        n_targets=("tau", "size"), mean_tau=("tau", "mean"), mean_rel_at_1=("rel_at_1", "mean"),
        mean_kendall=("kendall", "mean"), mean_top3=("top3", "mean"))
    per = ok.assign(column=ok["world"] + ":" + ok["target"]).pivot_table(index="metric", columns="column",
                                                                          values="tau")
    summary = summary.merge(per.add_prefix("tau ").reset_index(), on="metric")
    return summary.sort_values("mean_tau", ascending=False, ignore_index=True)


def verdicts(summary: pd.DataFrame) -> list[str]:
    """The pre-registered criteria applied to the summary, one sentence each."""
    by = summary.set_index("metric")
    static = summary[(summary["kind"] == "baseline") & (summary["metric"] != "random")]
    best_static = static.loc[static["mean_rel_at_1"].idxmax()]
    ccfv, bar = by.loc[CCFV], by.loc[LABEL_FREE]
    lines = [f"Best static ranker by mean Rel@1: {best_static['method']} ({best_static['mean_rel_at_1']:.3f}); "
             f"CC-FV (mean energy) mean weighted tau {ccfv['mean_tau']:.3f}, RankMe {bar['mean_tau']:.3f}."]
    for name in NEW_SCORES:
        row = by.loc[name]
        checks = {"mean tau above CC-FV's": row["mean_tau"] > ccfv["mean_tau"],
                  "mean Rel@1 not below the best static ranker's": row["mean_rel_at_1"] >= best_static["mean_rel_at_1"]}
        if name != LABEL_FREE:
            checks["mean tau above RankMe's"] = row["mean_tau"] > bar["mean_tau"]
        failed = [c for c, passed in checks.items() if not passed]
        verdict = "works (every criterion met)" if not failed else "not shown to work (criteria not met: " + "; ".join(failed) + ")"
        lines.append(f"{row['method']} ({name}): mean tau {row['mean_tau']:.3f}, mean Rel@1 {row['mean_rel_at_1']:.3f}: "
                     f"{verdict}.")
    labelled = summary[(summary["kind"] == "metric") & (summary["metric"] != LABEL_FREE)]
    below = labelled[labelled["mean_tau"] <= bar["mean_tau"]]
    lines.append("Label-free bar (RankMe's mean tau): " + (
        "every label-using metric clears it." if below.empty else
        "not cleared by " + ", ".join(f"{m} ({t:.3f})" for m, t in zip(below["method"], below["mean_tau"])) + "."))
    return lines


def to_markdown(summary: pd.DataFrame, lines: list[str], worlds: dict[str, Path], long: pd.DataFrame) -> str:
    left_out = long[~long["can_rank"]][["world", "target"]].drop_duplicates()
    out = ["# Held-out worlds: the pre-registered evaluation", "",
           "Worlds: " + ", ".join(f"{w} (its tables and provenance.json in {w}/)" for w in worlds) + ". Targets averaged: those whose "
           "ground-truth check says they can rank" + ("." if left_out.empty else "; left out: " + ", ".join(
               f"{r.world}:{r.target}" for r in left_out.itertuples()) + "."), "",
           "| method | kind | targets | mean weighted tau | mean Rel@1 | mean tau-b | mean top-3 |",
           "|---|---|---|---|---|---|---|"]
    for r in summary.itertuples(index=False):
        out.append(f"| {r.method} | {r.kind} | {r.n_targets} | {r.mean_tau:.3f} | {r.mean_rel_at_1:.3f} | "
                   f"{r.mean_kendall:.3f} | {r.mean_top3:.3f} |")
    out += ["", "## The criteria, as pre-registered", ""] + [f"- {line}" for line in lines]
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, nargs="+", help="finished results folders, one per world")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    worlds = {p.name.removeprefix("results-"): p for p in args.results}
    try:
        long = per_target(worlds)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    summary = summarise(long)
    lines = verdicts(summary)
    args.out.mkdir(parents=True, exist_ok=True)
    summary.to_csv(args.out / "summary.csv", index=False, float_format="%.4f")
    (args.out / "summary.md").write_text(to_markdown(summary, lines, worlds, long))
    for world, results in worlds.items():
        folder = args.out / world
        folder.mkdir(exist_ok=True)
        for name in COPIED:
            if (results / "tables" / name).is_file():
                shutil.copy2(results / "tables" / name, folder / name)
        if (results / "provenance.json").is_file():
            shutil.copy2(results / "provenance.json", folder / "provenance.json")
    print((args.out / "summary.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
