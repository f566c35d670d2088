"""Snakemake script: the correlation tables (weighted tau and Pearson per metric and target) as CSV,
Markdown and LaTeX, ours beside the paper's values, and the records behind them; the targets whose ground
truth cannot rank (ground_truth.csv) marked."""
from ccfv.workflow import log_to, start_job

# nnU-Net's "spawn" workers import this file again as __mp_main__, where `snakemake` is not defined: only the
# job itself pins (its workers inherit the variables the pin sets) and runs.
if __name__ == "__main__":
    start_job(snakemake)  # first: pins the CPU numerics before numpy or torch loads (docs/reproducibility.md)

from pathlib import Path

from ccfv.results.ground_truth import flags, read_csv
from ccfv.results.tables import build_tables

if __name__ == "__main__":
    with log_to(snakemake.log[0]):
        p = snakemake.params
        pairs = [tuple(pair) for pair in p.pairs]
        dice = list(snakemake.input.dice)
        build_tables(
            score_files=dict(zip(pairs, snakemake.input.scores)),
            dice_files={pair: dice[i * p.n_seeds:(i + 1) * p.n_seeds] for i, pair in enumerate(pairs)},
            tables={name: list(metrics) for name, metrics in dict(p.tables).items()},
            targets=list(p.targets), out_dir=Path(snakemake.output.records).parent, labels=dict(p.labels),
            flags=flags(read_csv(snakemake.input.ground_truth)),
        )
