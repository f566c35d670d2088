"""Snakemake script: MSD task -> nnU-Net v2 raw dataset."""
from ccfv.workflow import log_to, start_job

start_job(snakemake)  # first: pins the CPU numerics before numpy or torch loads (docs/reproducibility.md)

from pathlib import Path

from ccfv.preprocess.nnunet import convert_msd_task

# nnU-Net starts "spawn" worker processes, which import this file again: the guard keeps them from
# running the job a second time.
if __name__ == "__main__":
    with log_to(snakemake.log[0]):
        convert_msd_task(Path(snakemake.input.dataset).parent, Path(snakemake.output.raw))
