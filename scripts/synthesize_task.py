"""Snakemake script: generate one synthetic demo task in MSD layout."""
from ccfv.workflow import log_to, start_job

# nnU-Net's "spawn" workers import this file again as __mp_main__, where `snakemake` is not defined: only the
# job itself pins (its workers inherit the variables the pin sets) and runs.
if __name__ == "__main__":
    start_job(snakemake)  # first: pins the CPU numerics before numpy or torch loads (docs/reproducibility.md)

from pathlib import Path

from ccfv.data.synthetic import write_task

if __name__ == "__main__":
    with log_to(snakemake.log[0]):
        write_task(snakemake.wildcards.task, Path(snakemake.output.dataset).parent.parent,
                   n_cases=snakemake.params.n_cases, seed=snakemake.params.seed,
                   shape=snakemake.params.shape, overwrite=True)
