"""The real study's pre-registered verdict (issue 25; docs/preregistration.md, "What counts as success"):
does CC-FV, or a variant, pick better than the static rankers on Task04_Hippocampus?

    python analysis/realstudy.py results-realstudy --out docs/benchmark/real

Committed before the real bank's first fine-tuned Dice existed, so the verdict is the rule written down
in advance, applied as written. Reads the finished results folder's ``tables/statistics.csv`` (weighted
Kendall's tau per method with its 95 % bootstrap interval over models), ``tables/selection.csv`` (Rel@1,
Kendall's tau-b, top-3 hit, with intervals), ``tables/regret.csv`` (first pick and its Dice) and
``tables/ground_truth.csv`` (the health check), for the one real target (``--target``), and writes into
``--out``:

- ``summary.csv``: one row per method (metrics and static rankers): weighted tau, Rel@1 and tau-b with their
  intervals, top-3 hit, first pick, its Dice and regret (best Dice minus the pick's);
- ``summary.md``: the same as a table, the health check's verdict, and the criteria's verdicts;
- ``finetuning.csv``, and a per-member table at the end of ``summary.md``: one row per protocol fine-tuning (member, seed): held-out Dice, the body's rate (chosen
  by the protocol's selection when it has a grid, with each rate's mean pilot loss), iterations, CPU-bound
  seconds of training and evaluation, from ``finetune-protocol/<target>/<member>/seed<N>/finetune.json``;
- the run's tables as the workflow wrote them, its figures (PNG, as 256-colour palettes) and its provenance.json.

The criteria (docs/preregistration.md): "CC-FV works on real data" if CC-FV's (``ccfv``, the mean energy)
weighted tau *and* Rel@1 exceed the best static ranker's on each measure (the best of the static rankers,
the expected random ranking excluded, taken per measure). ``ccfv_disc`` and ``ccfv_varied`` are checked by
the same rule and, if only they pass, reported as a variant passing among three tried. A difference inside both
methods' bootstrap intervals (each value inside the other's interval) is called "not distinguishable". A
ground truth that cannot rank is reported, and no verdict is drawn from it.

Exit 2, nothing written, when a table is missing (an unfinished run) or the target is not in it.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd
from _common import copy_run_outputs

PRIMARY = "ccfv"
VARIANTS = ("ccfv_disc", "ccfv_varied")
TARGET = "Task04_Hippocampus"
#: The expected random ranking is a reference, not a static ranker a user could apply.
NOT_STATIC = ("random",)
COPIED = ("statistics.csv", "selection.csv", "regret.csv", "stability.csv", "table1.csv", "table2.csv",
          "table3.csv", "ground_truth.csv", "scores_and_dice.csv", "costs_per_stage.csv", "costs_per_pair.csv",
          "noise_ceiling.csv", "architecture.csv", "records.json")


def read_tables(results: Path) -> dict[str, pd.DataFrame]:
    """The four tables the verdict needs; FileNotFoundError names a missing one."""
    frames = {}
    for name in ("statistics.csv", "selection.csv", "regret.csv", "ground_truth.csv"):
        path = results / "tables" / name
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing; is the run of {results} finished?")
        frames[name.removesuffix(".csv")] = pd.read_csv(path)
    return frames


def summarise(tables: dict[str, pd.DataFrame], target: str) -> pd.DataFrame:
    """One row per method on ``target``: kind, tau, tau_low, tau_high, rel_at_1 (+ interval), kendall (+ interval),
    top3, picked, picked_dice, regret; sorted by weighted tau. KeyError when the target is in no table."""
    stats = tables["statistics"]
    tau = stats[(stats["statistic"] == "tau") & (stats["target"] == target)]
    if tau.empty:
        raise KeyError(f"target {target} is not in statistics.csv (targets: "
                       f"{', '.join(sorted(set(stats['target']) - {'Avg'}))})")
    out = tau[["method", "metric", "kind", "value", "ci_low", "ci_high"]].rename(
        columns={"value": "tau", "ci_low": "tau_low", "ci_high": "tau_high"})
    selection = tables["selection"]
    selection = selection[selection["target"] == target]
    for statistic in ("rel_at_1", "kendall", "top3"):
        part = selection[selection["statistic"] == statistic][["metric", "value", "ci_low", "ci_high"]]
        part = part.rename(columns={"value": statistic, "ci_low": f"{statistic}_low", "ci_high": f"{statistic}_high"})
        if statistic == "top3":
            part = part[["metric", "top3"]]
        out = out.merge(part, on="metric", how="left", validate="one_to_one")
    regret = tables["regret"]
    regret = regret[regret["target"] == target][["metric", "picked", "picked_dice", "best", "best_dice", "regret"]]
    out = out.merge(regret, on="metric", how="left", validate="one_to_one")
    return out.sort_values("tau", ascending=False, ignore_index=True)


def _compare(row: pd.Series, other: pd.Series, measure: str) -> tuple[bool, bool]:
    """(exceeds, distinguishable): row's value above other's, and not both inside each other's interval."""
    a, b = row[measure], other[measure]
    inside = (other[f"{measure}_low"] <= a <= other[f"{measure}_high"]) and (row[f"{measure}_low"] <= b <= row[f"{measure}_high"])
    return bool(a > b), not inside


def verdicts(summary: pd.DataFrame, can_rank: bool) -> list[str]:
    """The pre-registered criteria applied to one target's summary, one sentence each."""
    if not can_rank:
        return ["The ground truth cannot rank (the health check's reasons in ground_truth.md): no verdict is drawn."]
    static = summary[(summary["kind"] == "baseline") & ~summary["metric"].isin(NOT_STATIC)]
    by = summary.set_index("metric")
    best = {m: static.loc[static[m].idxmax()] for m in ("tau", "rel_at_1")}
    lines = [f"Best static ranker by weighted tau: {best['tau']['method']} ({best['tau']['tau']:.3f} "
             f"[{best['tau']['tau_low']:.3f}, {best['tau']['tau_high']:.3f}]); by Rel@1: "
             f"{best['rel_at_1']['method']} ({best['rel_at_1']['rel_at_1']:.3f} "
             f"[{best['rel_at_1']['rel_at_1_low']:.3f}, {best['rel_at_1']['rel_at_1_high']:.3f}])."]
    passed = {}
    for metric in (PRIMARY,) + VARIANTS:
        row = by.loc[metric]
        parts, ok = [], True
        for measure, label in (("tau", "weighted tau"), ("rel_at_1", "Rel@1")):
            exceeds, distinct = _compare(row, best[measure], measure)
            ok = ok and exceeds
            parts.append(f"{label} {row[measure]:.3f} [{row[f'{measure}_low']:.3f}, {row[f'{measure}_high']:.3f}] "
                         f"{'above' if exceeds else 'not above'} the best static ranker's"
                         + ("" if distinct else " (not distinguishable: each inside the other's interval)"))
        passed[metric] = ok
        lines.append(f"{row['method']} ({metric}): " + "; ".join(parts) + ": "
                     + ("criterion met." if ok else "criterion not met."))
    if passed[PRIMARY]:
        lines.append("Verdict: CC-FV works on this real target by the pre-registered rule.")
    elif any(passed[v] for v in VARIANTS):
        names = ", ".join(by.loc[v, "method"] for v in VARIANTS if passed[v])
        lines.append(f"Verdict: CC-FV is not shown to work on this real target; a variant passes ({names}), "
                     f"one of three scores tried, which is not CC-FV working.")
    else:
        lines.append("Verdict: neither CC-FV nor a pre-registered variant is shown to work on this real target.")
    return lines


def to_markdown(summary: pd.DataFrame, lines: list[str], target: str, health: pd.Series) -> str:
    def interval(r, m):
        return f"{getattr(r, m):.3f} [{getattr(r, m + '_low'):.2f}, {getattr(r, m + '_high'):.2f}]"

    out = [f"# The real study: {target}, the pre-registered verdict", "",
           f"Health check: {'can rank' if health['can_rank'] else 'cannot rank'}; {int(health['n_models'])} models, "
           f"{int(health['n_seeds'])} seeds, mean Dice {health['dice_min']:.3f} to {health['dice_max']:.3f} "
           f"(best {health['best']}), models' spread {health['spread_ratio']:.1f} times the seed SD.", "",
           "| method | kind | weighted tau [95 % CI] | Rel@1 [95 % CI] | tau-b [95 % CI] | top-3 | first pick | "
           "its Dice | regret |", "|---|---|---|---|---|---|---|---|---|"]
    for r in summary.itertuples(index=False):
        pick = "" if pd.isna(r.picked) else r.picked
        out.append(f"| {r.method} | {r.kind} | {interval(r, 'tau')} | {interval(r, 'rel_at_1')} | "
                   f"{interval(r, 'kendall')} | {r.top3:.2f} | {pick} | {r.picked_dice:.3f} | {r.regret:.3f} |")
    out += ["", "## The criteria, as pre-registered", ""] + [f"- {line}" for line in lines]
    return "\n".join(out) + "\n"


def finetuning_rows(results: Path, target: str) -> pd.DataFrame:
    """One row per finished protocol fine-tuning of ``target`` (empty when the run fine-tuned with nnU-Net):
    member, seed, dice, learning_rate, pilot_loss_<rate> per rate of a grid, iterations, seconds_training,
    seconds_evaluation; sorted by member and seed."""
    import json

    rows = []
    for path in sorted((results / "finetune-protocol" / target).glob("*/seed*/finetune.json")):
        for model in json.loads(path.read_text()).get("models", []):
            row = {"member": path.parent.parent.name, "seed": int(model["seed"]), "dice": model["mean_dice"],
                   "learning_rate": f"{model['learning_rate']:g}" if model.get("learning_rate") else None, "iterations": model["iterations"],
                   "seconds_training": model["seconds_training"], "seconds_evaluation": model["seconds_evaluation"]}
            selection = model.get("learning_rate_selection") or {}
            row |= {f"pilot_loss_{rate}": loss for rate, loss in selection.get("mean_loss", {}).items()}
            rows.append(row)
    frame = pd.DataFrame(rows)
    return frame.sort_values(["member", "seed"]) if rows else frame


def members_markdown(finetuning: pd.DataFrame) -> str:
    """The per-member ground truth of ``finetuning_rows``: seeds, mean Dice over them, its range and the body's
    rates chosen (``rate x seeds``), best mean first."""
    out = ["## The ground truth per member", "",
           "| member | seeds | mean Dice | range | body rate chosen |", "|---|---|---|---|---|"]
    grouped = finetuning.groupby("member")
    order = grouped["dice"].mean().sort_values(ascending=False).index
    for member in order:
        rows = grouped.get_group(member)
        rates = rows["learning_rate"].dropna().value_counts()
        chosen = ", ".join(f"{rate} x {count}" for rate, count in sorted(rates.items())) or "fixed"
        out.append(f"| {member} | {len(rows)} | {rows['dice'].mean():.3f} | {rows['dice'].min():.3f}-"
                   f"{rows['dice'].max():.3f} | {chosen} |")
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="the real study's finished results folder")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--target", default=TARGET)
    args = parser.parse_args(argv)
    try:
        tables = read_tables(args.results)
        summary = summarise(tables, args.target)
        ground_truth = tables["ground_truth"].set_index("target")
        if args.target not in ground_truth.index:
            raise KeyError(f"target {args.target} is not in ground_truth.csv")
    except (FileNotFoundError, KeyError) as err:
        print(f"error: {err.args[0]}", file=sys.stderr)
        return 2
    health = ground_truth.loc[args.target]
    can_rank = str(health["can_rank"]) == "True"
    lines = verdicts(summary, can_rank)
    args.out.mkdir(parents=True, exist_ok=True)
    summary.to_csv(args.out / "summary.csv", index=False, float_format="%.4f")
    (args.out / "summary.md").write_text(to_markdown(summary, lines, args.target, health.to_dict() | {
        "can_rank": can_rank}))
    copy_run_outputs(args.results, args.out, COPIED)
    finetuning = finetuning_rows(args.results, args.target)
    if len(finetuning):
        finetuning.to_csv(args.out / "finetuning.csv", index=False, float_format="%.4f")
        with (args.out / "summary.md").open("a") as handle:
            handle.write("\n" + members_markdown(finetuning))
    print((args.out / "summary.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
