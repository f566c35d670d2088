"""How many target cases does a ranking need (issue 24, item 5)? From a finished study's features: per metric,
the Kendall tau-b between the models' ranking from n of a target's cases and from all of them, and the weighted
tau with the fine-tuned Dice, for n from 2 to all (``ccfv.results.study.case_count_agreement``).

    python analysis/study_cases.py results-study docs/benchmark/scores_and_dice.csv docs/benchmark/cases.csv \
        --metrics logme ccfv knn --counts 2 3 4 6 8 --repeats 10
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from _common import ROOT, metric_definitions

from ccfv.features.file import read_features
from ccfv.io import write_text
from ccfv.results.study import case_count_agreement, features_files, read_study_dice

COLUMNS = ["target", "metric", "n", "repeats", "failed", "kendall_to_all", "kendall_to_all_min", "tau_with_dice"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("dice", type=Path)
    parser.add_argument("out", type=Path, help="the CSV to write")
    parser.add_argument("--metrics", nargs="+", default=["logme", "ccfv", "knn"])
    parser.add_argument("--counts", nargs="+", type=int, default=[2, 3, 4, 6, 8])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--targets", nargs="*", help="default: every target of the study")
    args = parser.parse_args(argv)

    definitions = metric_definitions(ROOT / "config" / "config.yaml", args.metrics)
    dice = read_study_dice(args.dice)
    files = features_files(args.results)
    targets = args.targets or sorted({t for t, _ in files})
    rows = []
    for target in targets:
        by_model = {m: read_features(p) for (t, m), p in files.items() if t == target and (t, m) in dice}
        for row in case_count_agreement(by_model, definitions, args.counts, args.repeats, seed=0,
                                        dice={m: dice[(target, m)] for m in by_model}):
            rows.append({"target": target, **row})
    lines = [",".join(COLUMNS)] + [",".join(str(round(r[c], 4)) if isinstance(r[c], float) else str(r[c])
                                            for c in COLUMNS) for r in rows]
    write_text(args.out, "\n".join(lines) + "\n")
    print(f"{'metric':<12} {'n':>3}  Kendall tau-b to all cases (mean over targets)   weighted tau with Dice")
    for metric in args.metrics:
        for n in sorted({r["n"] for r in rows}):
            mine = [r for r in rows if r["metric"] == metric and r["n"] == n]
            print(f"{metric:<12} {n:>3}  {np.nanmean([r['kendall_to_all'] for r in mine]):>6.3f}"
                  f"{'':<38}{np.nanmean([r['tau_with_dice'] for r in mine]):>6.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
