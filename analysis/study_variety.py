"""What drives CC-FV on a finished study (issue 24, item 2; post hoc, on the design world): CC-FV's feature
variety over all global voxels against the voxels inside the body (input above the case's floor, i.e. not
CT's clipped air) and the voxels whose input varies locally, and each decoder layer's two terms, each
correlated (weighted tau, Table 1's) with the fine-tuned Dice.

    python analysis/study_variety.py results-study docs/benchmark/scores_and_dice.csv docs/benchmark/variety.md
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
from _common import image_reader

from ccfv.features.file import read_features
from ccfv.io import write_text
from ccfv.results.measures import statistic
from ccfv.results.study import add_input_std, features_files, read_study_dice, variety_variants
from ccfv.scores.metrics import ccfv_terms
from ccfv.scores.views import ccfv_layers


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("dice", type=Path)
    parser.add_argument("out", type=Path, help="the Markdown report to write")
    args = parser.parse_args(argv)

    dice = read_study_dice(args.dice)
    images = image_reader(args.results)
    rows: dict[str, list[dict]] = {}
    for (target, model), path in features_files(args.results).items():
        if (target, model) not in dice:
            continue
        ff = read_features(path)
        floors = add_input_std(ff, images(target))
        variants = variety_variants(ff, floors)
        terms = ccfv_terms(ccfv_layers(ff))
        rows.setdefault(target, []).append({"model": model, "dice": dice[(target, model)], **variants,
                                            "terms": terms})
    targets = sorted(rows)
    out = ["# What drives CC-FV (post hoc, design world)", "",
           "Weighted τ with the fine-tuned Dice of the mean over layers of log F_v over each set of global voxels "
           "(mean energy), and of each layer's terms. Share of global voxels on the input's floor / varied.", "",
           "| | " + " | ".join(targets) + " | mean |", "|---" * (len(targets) + 2) + "|"]

    def tau_row(label, values_of):
        taus = []
        for t in targets:
            x = [values_of(r) for r in rows[t]]
            ok = [i for i, v in enumerate(x) if math.isfinite(v)]
            taus.append(statistic("tau", [x[i] for i in ok], [rows[t][i]["dice"] for i in ok])
                        if len(ok) >= 3 else math.nan)
        finite = [v for v in taus if math.isfinite(v)]
        out.append(f"| {label} | " + " | ".join(f"{v:.2f}" for v in taus) + f" | {np.mean(finite):.2f} |")

    out.append("| share of global voxels on the input's floor | " + " | ".join(
        f"{np.mean([r['share_floor'][0] for r in rows[t]]):.2f}" for t in targets) + " | |")
    out.append("| share of global voxels whose input varies | " + " | ".join(
        f"{np.mean([r['share_varied'][0] for r in rows[t]]):.2f}" for t in targets) + " | |")
    for name in ("all", "not_floor", "varied", "floor"):
        tau_row(f"log F_v over {name} voxels", lambda r, n=name: float(np.nanmean(r[n])))
    n_layers = max(len(r["terms"]) for t in targets for r in rows[t])
    for layer in range(n_layers):
        tau_row(f"layer {layer}: log F_v", lambda r, i=layer: r["terms"][i]["log_variety"]
                if i < len(r["terms"]) else math.nan)
        tau_row(f"layer {layer}: -log C_cons", lambda r, i=layer: r["terms"][i]["neg_log_consistency"]
                if i < len(r["terms"]) else math.nan)
    out.append("")
    out.append("Layers are counted from the deepest hooked stage; a model with fewer stages (the U-Net: 3, UNETR: 4) "
               "is left out of the rows it lacks.")
    write_text(args.out, "\n".join(out) + "\n")
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
