"""Snakemake script: bootstrap intervals, permutation p-values, top-1 regret, static baselines (larger model
first from the bank models' weights), the noise ceiling, Kendall's tau-b, Rel@1, the top-3 hit rate and the
leave-one-out stability (ccfv.results.statistics.build_statistics; definitions in docs/report.md); the targets whose
ground truth cannot rank (ground_truth.csv) marked."""
from ccfv.workflow import log_to, start_job

# nnU-Net's "spawn" workers import this file again as __mp_main__, where `snakemake` is not defined: only the
# job itself pins (its workers inherit the variables the pin sets) and runs.
if __name__ == "__main__":
    start_job(snakemake)  # first: pins the CPU numerics before numpy or torch loads (docs/reproducibility.md)

from pathlib import Path

from ccfv.results.ground_truth import flags, read_csv
from ccfv.results.static_rankers import external_source_sizes, parameter_counts_of, source_sizes_from_splits
from ccfv.results.statistics import build_statistics

if __name__ == "__main__":
    with log_to(snakemake.log[0]):
        p = snakemake.params
        splits = {Path(f).stem: f for f in snakemake.input.splits}
        bank = dict(zip(p.models, snakemake.input.bank))
        build_statistics(
            snakemake.input.records, tables={name: list(m) for name, m in dict(p.tables).items()},
            targets=list(p.targets), source_sizes={**source_sizes_from_splits(splits), **external_source_sizes(bank)},
            out_dir=Path(snakemake.output.statistics).parent, labels=dict(p.labels), n_bootstrap=p.n_bootstrap,
            n_permutations=p.n_permutations, n_simulations=p.n_simulations, seed=p.seed,
            flags=flags(read_csv(snakemake.input.ground_truth)),
            parameter_counts=parameter_counts_of(bank),
        )
