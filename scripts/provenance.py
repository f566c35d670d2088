"""Snakemake script: results/provenance.json (ccfv.results.provenance; fields in docs/report.md)."""
from ccfv.workflow import log_to, start_job

# nnU-Net's "spawn" workers import this file again as __mp_main__, where `snakemake` is not defined: only the
# job itself pins (its workers inherit the variables the pin sets) and runs.
if __name__ == "__main__":
    start_job(snakemake)  # first: pins the CPU numerics before numpy or torch loads (docs/reproducibility.md)

from pathlib import Path

from ccfv.results.provenance import write_provenance

if __name__ == "__main__":
    with log_to(snakemake.log[0]):
        p = snakemake.params
        write_provenance(snakemake.output.record, config=dict(p.config), results_dir=Path(snakemake.output.record).parent,
                         source_dir=p.source, rules=dict(p.rules), analysis=dict(p.analysis))
