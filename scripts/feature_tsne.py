"""Snakemake script: the paper's Fig. 3, a t-SNE of one class's features of every model of one bank."""
from pathlib import Path

from ccfv.results.figures import feature_tsne
from ccfv.workflow import log_to

if __name__ == "__main__":
    with log_to(snakemake.log[0]):
        p = snakemake.params
        feature_tsne(dict(zip(p.models, snakemake.input.features)), p.target, Path(snakemake.output.png).with_suffix(""),
                     class_id=p.class_id, per_case=p.per_case, seed=p.seed)
