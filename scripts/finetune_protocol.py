"""Snakemake script: fine-tune one bank member (a bank model or an external one) on a target by ccfv.finetune's
protocol and write its held-out Dice (finetune.method: protocol; docs/finetune.md)."""
from ccfv.workflow import log_to, start_job

# nnU-Net's "spawn" workers import this file again as __mp_main__, where `snakemake` is not defined: only the
# job itself pins (its workers inherit the variables the pin sets) and runs.
if __name__ == "__main__":
    start_job(snakemake)  # first: pins the CPU numerics before numpy or torch loads (docs/reproducibility.md)

from pathlib import Path

from ccfv.finetune.run import finetune_member
from ccfv.preprocess.paths import dataset_folder

if __name__ == "__main__":
    with log_to(snakemake.log[0]):
        target = snakemake.wildcards.target
        protocol = dict(snakemake.params.protocol)
        # not a param (it changes no result, so a new value must not rerun the job): read from the config
        every = (snakemake.config["finetune"].get("protocol") or {}).get("checkpoint_every")
        if every:
            protocol["checkpoint_every"] = int(every)
        finetune_member(dataset_folder(snakemake.input.raw, target), dict(snakemake.params.member),
                        snakemake.input.split, Path(snakemake.output.record).parent, snakemake.output.dice,
                        seed=int(snakemake.wildcards.seed), protocol=protocol, threads=snakemake.threads)
