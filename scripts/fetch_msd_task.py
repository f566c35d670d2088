"""Snakemake script: download, verify and extract one MSD task (or accept a complete copy in place)."""
from ccfv.workflow import log_to, start_job

# nnU-Net's "spawn" workers import this file again as __mp_main__, where `snakemake` is not defined: only the
# job itself pins (its workers inherit the variables the pin sets) and runs.
if __name__ == "__main__":
    start_job(snakemake)  # first: pins the CPU numerics before numpy or torch loads (docs/reproducibility.md)

from pathlib import Path

from ccfv.data.msd import fetch_task

if __name__ == "__main__":
    with log_to(snakemake.log[0]):
        fetch_task(snakemake.wildcards.task, Path(snakemake.output.dataset).parent.parent,
                   base_url=snakemake.params.base_url, local=snakemake.params.local,
                   record=snakemake.output.record)
