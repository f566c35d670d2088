"""Snakemake script: the card of one external bank member (bank.external): its format, hooked layers, patch,
parameter count and the authors' training cases (ccfv.models.members.write_member_card)."""
from ccfv.workflow import log_to, start_job

# nnU-Net's "spawn" workers import this file again as __mp_main__, where `snakemake` is not defined: only the
# job itself pins (its workers inherit the variables the pin sets) and runs.
if __name__ == "__main__":
    start_job(snakemake)  # first: pins the CPU numerics before numpy or torch loads (docs/reproducibility.md)

from ccfv.models.members import write_member_card

if __name__ == "__main__":
    with log_to(snakemake.log[0]):
        write_member_card(dict(snakemake.params.member), snakemake.output.card, snakemake.params.source_cases)
