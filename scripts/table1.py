"""Snakemake script: Table 1 (weighted tau and Pearson per metric and target)."""
from ccfv.results import build_table1
from ccfv.workflow import log_to

# nnU-Net starts "spawn" worker processes, which import this file again: the guard keeps them from
# running the job a second time.
if __name__ == "__main__":
    with log_to(snakemake.log[0]):
        p = snakemake.params
        pairs = [tuple(pair) for pair in p.pairs]
        dice = list(snakemake.input.dice)
        build_table1(
            score_files=dict(zip(pairs, snakemake.input.scores)),
            dice_files={pair: dice[i * p.n_seeds:(i + 1) * p.n_seeds] for i, pair in enumerate(pairs)},
            metrics=list(p.metrics), targets=list(p.targets),
            out_csv=snakemake.output.csv, out_md=snakemake.output.md, out_records=snakemake.output.records,
        )
