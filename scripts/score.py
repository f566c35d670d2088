"""Snakemake script: transferability scores of one (model, target) pair."""
from ccfv.scoring import compute_scores, write_scores
from ccfv.workflow import log_to

# nnU-Net starts "spawn" worker processes, which import this file again: the guard keeps them from
# running the job a second time.
if __name__ == "__main__":
    with log_to(snakemake.log[0]):
        scores = compute_scores(snakemake.input.features, list(snakemake.params.metrics), hse_s=snakemake.params.hse_s)
        write_scores(scores, snakemake.output.scores, target=snakemake.wildcards.target, model=snakemake.wildcards.model)
