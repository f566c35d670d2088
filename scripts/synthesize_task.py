"""Snakemake script: generate one synthetic demo task in MSD layout."""
from pathlib import Path

from ccfv.data.synthetic import write_task
from ccfv.workflow import log_to

with log_to(snakemake.log[0]):
    write_task(snakemake.wildcards.task, Path(snakemake.output.dataset).parent.parent,
               n_cases=snakemake.params.n_cases, seed=snakemake.params.seed)
