"""Re-score a finished study's features with the current metric definitions and compare with its committed
scores: Tables 1-3 and the share of each score's variance the architecture explains (eta squared), old
beside new (issue 24, items 1 and 3; docs/benchmark.md).

    python analysis/study_rescore.py results-study docs/benchmark/scores_and_dice.csv docs/benchmark/rescored

Reads ``<results>/features`` and ``<results>/nnunet`` (the global voxels' input standard deviation, which
features files sampled before ccfv recorded it lack, is computed from the preprocessed images); writes
``scores_and_dice.csv``, ``table{1,2,3}.{csv,md}`` and ``architecture.{csv,md}`` into the output folder and
prints the comparison.
"""
from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path

from _common import ROOT, image_reader, metric_definitions

from ccfv.io import write_text
from ccfv.results.study import add_input_std, architecture_shares, features_files, read_study_dice, score_study
from ccfv.results.tables import records_to_csv, table1, to_csv, to_markdown


def old_records(dice_csv: Path) -> list[dict]:
    """The committed study's records: its Dice and the scores it computed then (every other column)."""
    rows = list(csv.DictReader(io.StringIO(dice_csv.read_text())))
    skip = {"target", "model", "dice_mean_over_seeds", "n_seeds"}
    return [{"target": r["target"], "model": r["model"], "dice": float(r["dice_mean_over_seeds"]),
             "n_seeds": int(r["n_seeds"]), "scores": {k: float(v) for k, v in r.items() if k not in skip}}
            for r in rows]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("dice", type=Path, help="the study's scores_and_dice.csv (its Dice and old scores)")
    parser.add_argument("out", type=Path)
    parser.add_argument("--config", type=Path, default=ROOT / "config" / "config.yaml")
    args = parser.parse_args(argv)

    definitions = metric_definitions(args.config)
    tables = __import__("yaml").safe_load((ROOT / "config" / "config.yaml").read_text())["scoring"]["tables"]
    images = image_reader(args.results)
    records = score_study(features_files(args.results), definitions, read_study_dice(args.dice),
                          prepare=lambda target, ff: (add_input_std(ff, images(target)), ff)[1])
    for r in records:
        r["n_seeds"] = 3
    targets = sorted({r["target"] for r in records})
    write_text(args.out / "scores_and_dice.csv", records_to_csv(records, list(definitions)))
    old = old_records(args.dice)
    for name, metrics in tables.items():
        rows = table1(records, list(metrics), targets)
        write_text(args.out / f"{name}.csv", to_csv(rows, targets))
        write_text(args.out / f"{name}.md", to_markdown(rows, targets))
        print(f"\n## {name} (re-scored)\n\n" + to_markdown(rows, targets))
        known = [m for m in metrics if m in old[0]["scores"]]
        if known:
            print(f"## {name}: the committed scores\n\n" + to_markdown(table1(old, known, targets), targets))
    new_shares = architecture_shares(records, ["ccfv", "ccfv_energy_sum", "ccfv_disc", "ccfv_varied", "rankme",
                                               "knn", "logme"], targets)
    old_shares = architecture_shares(old, ["ccfv"], targets)
    lines = ["| eta² (architecture) | " + " | ".join(targets) + " |", "|---" * (len(targets) + 1) + "|"]
    lines.append("| Dice | " + " | ".join(f"{new_shares[t]['dice']:.2f}" for t in targets) + " |")
    lines.append("| CC-FV, committed (eq. 3 sum) | " + " | ".join(f"{old_shares[t]['ccfv']:.2f}" for t in targets)
                 + " |")
    for metric in next(iter(new_shares.values())):
        if metric != "dice":
            lines.append(f"| {metric}, re-scored | " + " | ".join(f"{new_shares[t][metric]:.2f}" for t in targets)
                         + " |")
    write_text(args.out / "architecture.md", "\n".join(lines) + "\n")
    print("\n## Architecture's share of the variance\n\n" + "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
