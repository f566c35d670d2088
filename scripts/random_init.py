"""Snakemake script: the randomly initialised member of every bank."""
from ccfv.workflow import log_to, start_job

# nnU-Net's "spawn" workers import this file again as __mp_main__, where `snakemake` is not defined: only the
# job itself pins (its workers inherit the variables the pin sets) and runs.
if __name__ == "__main__":
    start_job(snakemake)  # first: pins the CPU numerics before numpy or torch loads (docs/reproducibility.md)

from pathlib import Path

from ccfv.bank.training import random_model

if __name__ == "__main__":
    with log_to(snakemake.log[0]):
        (dataset,) = [p for p in Path(snakemake.input.preprocessed).iterdir() if p.name.startswith("Dataset")]
        random_model(dataset, snakemake.params.model_id, snakemake.output.model, seed=snakemake.params.seed,
                     network=snakemake.params.network["name"], network_options=snakemake.params.network["options"])
