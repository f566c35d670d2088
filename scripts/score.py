"""Snakemake script: every configured transferability score of one (model, target) pair."""
from ccfv.workflow import log_to, start_job

# nnU-Net's "spawn" workers import this file again as __mp_main__, where `snakemake` is not defined: only the
# job itself pins (its workers inherit the variables the pin sets) and runs.
if __name__ == "__main__":
    start_job(snakemake)  # first: pins the CPU numerics before numpy or torch loads (docs/reproducibility.md)

from ccfv.scores.scoring import score_pair

if __name__ == "__main__":
    with log_to(snakemake.log[0]):
        score_pair(snakemake.input.features, dict(snakemake.params.metrics), snakemake.output.scores,
                   max_cases=snakemake.params.max_cases, seed=snakemake.params.seed,
                   target=snakemake.wildcards.target, model=snakemake.wildcards.model)
