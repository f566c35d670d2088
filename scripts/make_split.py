"""Snakemake script: the seeded train/test split of a task, made once and recorded."""
from ccfv.workflow import log_to, start_job

# nnU-Net's "spawn" workers import this file again as __mp_main__, where `snakemake` is not defined: only the
# job itself pins (its workers inherit the variables the pin sets) and runs.
if __name__ == "__main__":
    start_job(snakemake)  # first: pins the CPU numerics before numpy or torch loads (docs/reproducibility.md)

from ccfv.preprocess.paths import dataset_folder
from ccfv.preprocess.splits import split_preprocessed_task

if __name__ == "__main__":
    with log_to(snakemake.log[0]):
        task = snakemake.wildcards.task
        split_preprocessed_task(task, dataset_folder(snakemake.input.preprocessed, task), snakemake.input.files,
                                snakemake.params.test_fraction, snakemake.params.seed, snakemake.params.record,
                                snakemake.output.split, snakemake.output.nnunet)
