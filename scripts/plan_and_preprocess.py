"""Snakemake script: nnU-Net fingerprint, planning with the shared architecture, preprocessing."""
from ccfv.workflow import log_to, start_job

# nnU-Net's "spawn" workers import this file again as __mp_main__, where `snakemake` is not defined: only the
# job itself pins (its workers inherit the variables the pin sets) and runs.
if __name__ == "__main__":
    start_job(snakemake)  # first: pins the CPU numerics before numpy or torch loads (docs/reproducibility.md)

from pathlib import Path

from ccfv.preprocess.nnunet import plan_and_preprocess
from ccfv.preprocess.paths import dataset_folder

if __name__ == "__main__":
    with log_to(snakemake.log[0]):
        plan_and_preprocess(dataset_folder(snakemake.input.raw, snakemake.wildcards.task),
                            Path(snakemake.output.preprocessed), dict(snakemake.params.network),
                            checksums=Path(snakemake.output.checksums))
