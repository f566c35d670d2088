"""Snakemake script: the seeded train/test split of a task, written once."""
from ccfv.nnunet_paths import dataset_folder
from ccfv.preprocessing import case_identifiers
from ccfv.splits import make_split, write_split
from ccfv.workflow import log_to

# nnU-Net starts "spawn" worker processes, which import this file again: the guard keeps them from
# running the job a second time.
if __name__ == "__main__":
    with log_to(snakemake.log[0]):
        cases = case_identifiers(dataset_folder(snakemake.input.preprocessed, snakemake.wildcards.task))
        split = make_split(cases, snakemake.params.test_fraction, snakemake.params.seed)
        write_split({"task": snakemake.wildcards.task, **split}, snakemake.output.split)
