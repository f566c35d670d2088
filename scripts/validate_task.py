"""Snakemake script: validate one task in MSD layout and record the checksums of its files."""
from ccfv.workflow import log_to, start_job

# nnU-Net's "spawn" workers import this file again as __mp_main__, where `snakemake` is not defined: only the
# job itself pins (its workers inherit the variables the pin sets) and runs.
if __name__ == "__main__":
    start_job(snakemake)  # first: pins the CPU numerics before numpy or torch loads (docs/reproducibility.md)

from pathlib import Path

from ccfv.data.checksums import validate_and_record

if __name__ == "__main__":
    with log_to(snakemake.log[0]):
        validate_and_record(Path(snakemake.input.dataset).parent, snakemake.output.files)
