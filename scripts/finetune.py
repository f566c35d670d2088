"""Snakemake script: fine-tune a bank model on a target and measure Dice on the held-out split."""
from ccfv.workflow import log_to, start_job

# nnU-Net's "spawn" workers import this file again as __mp_main__, where `snakemake` is not defined: only the
# job itself pins (its workers inherit the variables the pin sets) and runs.
if __name__ == "__main__":
    start_job(snakemake)  # first: pins the CPU numerics before numpy or torch loads (docs/reproducibility.md)

from ccfv.bank.training import TrainingBudget
from ccfv.finetune.nnunet import finetune
from ccfv.preprocess.paths import dataset_folder

if __name__ == "__main__":
    with log_to(snakemake.log[0]):
        budget = dict(snakemake.params.budget)
        target = snakemake.wildcards.target
        finetune(dataset_folder(snakemake.input.preprocessed, target), dataset_folder(snakemake.input.raw, target),
                 snakemake.input.split, snakemake.input.model, snakemake.output.dice, TrainingBudget(**budget),
                 seed=int(snakemake.wildcards.seed), threads=snakemake.threads)
