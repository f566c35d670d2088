"""Snakemake script: pretrain a bank network (U-Net or UNETR) on a source task through nnU-Net's trainer."""
from ccfv.workflow import log_to, start_job

# nnU-Net's "spawn" workers import this file again as __mp_main__, where `snakemake` is not defined: only the
# job itself pins (its workers inherit the variables the pin sets) and runs.
if __name__ == "__main__":
    start_job(snakemake)  # first: pins the CPU numerics before numpy or torch loads (docs/reproducibility.md)

from ccfv.bank.training import TrainingBudget, pretrain
from ccfv.preprocess.paths import dataset_folder

if __name__ == "__main__":
    with log_to(snakemake.log[0]):
        budget = dict(snakemake.params.budget)
        seed = budget.pop("seed")
        budget = TrainingBudget(**budget)
        # output.snapshots lists one bank folder per snapshot iteration, in the budget's (sorted) order.
        snapshot_dirs = dict(zip(budget.snapshots, snakemake.output.get("snapshots", []), strict=True))
        pretrain(dataset_folder(snakemake.input.preprocessed, snakemake.wildcards.task), snakemake.input.split,
                 source_task=snakemake.wildcards.task, model_id=snakemake.params.model_id,
                 out_dir=snakemake.output.model, budget=budget, seed=seed, snapshot_dirs=snapshot_dirs,
                 threads=snakemake.threads, network=snakemake.params.network["name"],
                 network_options=snakemake.params.network["options"])
