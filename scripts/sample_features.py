"""Snakemake script: sample decoder features of one bank model over a target's training split."""
from ccfv.workflow import log_to, start_job

# nnU-Net's "spawn" workers import this file again as __mp_main__, where `snakemake` is not defined: only the
# job itself pins (its workers inherit the variables the pin sets) and runs.
if __name__ == "__main__":
    start_job(snakemake)  # first: pins the CPU numerics before numpy or torch loads (docs/reproducibility.md)

from ccfv.features.settings import SamplingSettings
from ccfv.features.target import sample_target
from ccfv.preprocess.paths import dataset_folder

if __name__ == "__main__":
    with log_to(snakemake.log[0]):
        sample_target(snakemake.input.model, dataset_folder(snakemake.input.preprocessed, snakemake.wildcards.target),
                      snakemake.input.split, snakemake.output.features, target=snakemake.wildcards.target,
                      sampling=SamplingSettings.from_mapping(snakemake.params.sampling), threads=snakemake.threads)
