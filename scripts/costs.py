"""Snakemake script: runtime and peak memory per stage, and estimation vs fine-tuning cost per pair."""
from ccfv.workflow import log_to, start_job

# nnU-Net's "spawn" workers import this file again as __mp_main__, where `snakemake` is not defined: only the
# job itself pins (its workers inherit the variables the pin sets) and runs.
if __name__ == "__main__":
    start_job(snakemake)  # first: pins the CPU numerics before numpy or torch loads (docs/reproducibility.md)

from pathlib import Path

from ccfv.results.costs import build_costs

if __name__ == "__main__":
    with log_to(snakemake.log[0]):
        p = snakemake.params
        # results/benchmarks/features/<target>/<model>.tsv -> results/benchmarks
        build_costs(Path(snakemake.input.features[0]).parents[2], Path(snakemake.output.stages).parent,
                    pairs=[tuple(x) for x in p.pairs], seeds=list(p.seeds))
