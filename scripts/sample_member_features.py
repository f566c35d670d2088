"""Snakemake script: sample decoder features of one external bank member (bank.external) over a target's
training split, in the model's own input convention."""
from ccfv.workflow import log_to, start_job

# nnU-Net's "spawn" workers import this file again as __mp_main__, where `snakemake` is not defined: only the
# job itself pins (its workers inherit the variables the pin sets) and runs.
if __name__ == "__main__":
    start_job(snakemake)  # first: pins the CPU numerics before numpy or torch loads (docs/reproducibility.md)

from ccfv.features.target import sample_member
from ccfv.preprocess.paths import dataset_folder

if __name__ == "__main__":
    with log_to(snakemake.log[0]):
        target = snakemake.wildcards.target
        sample_member(dict(snakemake.params.member), dataset_folder(snakemake.input.raw, target), snakemake.input.split,
                      snakemake.output.features, target=target, sampling=dict(snakemake.params.sampling),
                      threads=snakemake.threads)
