"""Snakemake script: MSD task -> nnU-Net v2 raw dataset."""
from ccfv.workflow import log_to, start_job

# nnU-Net's "spawn" workers import this file again as __mp_main__, where `snakemake` is not defined: only the
# job itself pins (its workers inherit the variables the pin sets) and runs.
if __name__ == "__main__":
    start_job(snakemake)  # first: pins the CPU numerics before numpy or torch loads (docs/reproducibility.md)

from pathlib import Path

from ccfv.preprocess.nnunet import convert_msd_task

if __name__ == "__main__":
    with log_to(snakemake.log[0]):
        convert_msd_task(Path(snakemake.input.dataset).parent, Path(snakemake.output.raw))
