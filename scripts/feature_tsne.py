"""Snakemake script: the paper's Fig. 3, a t-SNE of one class's features of every model of one bank."""
from ccfv.workflow import log_to, start_job

# nnU-Net's "spawn" workers import this file again as __mp_main__, where `snakemake` is not defined: only the
# job itself pins (its workers inherit the variables the pin sets) and runs.
if __name__ == "__main__":
    start_job(snakemake)  # first: pins the CPU numerics before numpy or torch loads (docs/reproducibility.md)

from pathlib import Path

from ccfv.results.figures import feature_tsne

if __name__ == "__main__":
    with log_to(snakemake.log[0]):
        p = snakemake.params
        feature_tsne(dict(zip(p.models, snakemake.input.features)), p.target, Path(snakemake.output.png).with_suffix(""),
                     class_id=p.class_id, per_case=p.per_case, seed=p.seed)
