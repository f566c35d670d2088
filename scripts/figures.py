"""Snakemake script: the paper's Fig. 2 (standardised score vs Dice) and the source x target Dice heatmap, the
targets whose ground truth cannot rank (ground_truth.csv) marked."""
from ccfv.workflow import log_to, start_job

# nnU-Net's "spawn" workers import this file again as __mp_main__, where `snakemake` is not defined: only the
# job itself pins (its workers inherit the variables the pin sets) and runs.
if __name__ == "__main__":
    start_job(snakemake)  # first: pins the CPU numerics before numpy or torch loads (docs/reproducibility.md)

import json
from pathlib import Path

from ccfv.results.figures import dice_heatmap, scores_vs_dice
from ccfv.results.ground_truth import flags, read_csv

if __name__ == "__main__":
    with log_to(snakemake.log[0]):
        p = snakemake.params
        records = json.loads(Path(snakemake.input.records).read_text())
        flagged = flags(read_csv(snakemake.input.ground_truth))
        scores_vs_dice(records, list(p.metrics), list(p.targets), Path(snakemake.output.scores_vs_dice).with_suffix(""),
                       labels=dict(p.labels), flags=flagged)
        dice_heatmap(records, list(p.targets), Path(snakemake.output.heatmap).with_suffix(""), flags=flagged)
