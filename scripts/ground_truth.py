"""Snakemake script: can each target's fine-tuned Dice rank its bank's models? (ccfv.results.ground_truth; the rule
and its thresholds in docs/report.md)"""
from ccfv.workflow import log_to, start_job

# nnU-Net's "spawn" workers import this file again as __mp_main__, where `snakemake` is not defined: only the
# job itself pins (its workers inherit the variables the pin sets) and runs.
if __name__ == "__main__":
    start_job(snakemake)  # first: pins the CPU numerics before numpy or torch loads (docs/reproducibility.md)

from pathlib import Path

from ccfv.results.ground_truth import HealthRule, build_ground_truth, verdict

if __name__ == "__main__":
    with log_to(snakemake.log[0]):
        p = snakemake.params
        pairs = [tuple(pair) for pair in p.pairs]
        dice = list(snakemake.input.dice)
        rows = build_ground_truth(
            {pair: dice[i * p.n_seeds:(i + 1) * p.n_seeds] for i, pair in enumerate(pairs)},
            targets=list(p.targets), out_dir=Path(snakemake.output.csv).parent,
            rule=HealthRule.from_config(dict(p.rule)),
        )
        print("\n".join(verdict(rows)))
