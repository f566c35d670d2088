"""Does the choice of source model matter more than fine-tuning noise? (the demo's design target)

Reads a finished run's fine-tuning results (results/finetune/<target>/<model>/seed<N>.json, at least two
seeds) and prints, per target: the spread of mean Dice across bank models (standard deviation over models
of the seed-averaged Dice) against the spread across fine-tuning seeds (mean over models of the standard
deviation over seeds), and their ratio. A ratio above 1 means the bank's models are distinguishable
beyond the noise of the ground truth itself.

Standard deviations use ddof=1; a seed whose ``mean_dice`` is null (NaN) is left out of its model's mean
and standard deviation. A target needs at least two seeds for every model.

The last line printed is machine-readable, ``key=value`` separated by spaces, 6 significant digits:
``ratio_<target>=<x>`` per target (sorted by name), then ``min_ratio=<y>`` (the smallest of them). A
missing folder, no results, a malformed result file or a target with fewer than two seeds is an error
(exit status 1, nothing printed on stdout).

    python benchmarks/source_vs_seed_spread.py [RESULTS_DIR]   (default: results)
"""
from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from ccfv.finetune.evaluation import read_mean_dice


def spreads(results: Path) -> dict[str, dict[str, float]]:
    """Per target: models, seeds, ``across_sources``, ``across_seeds`` and their ``ratio`` (see above).

    Raises SystemExit naming the folder or file when the results cannot be read."""
    finetune = Path(results, "finetune")
    if not finetune.is_dir():
        raise SystemExit(f"{finetune}: no such folder (expected <results>/finetune/<target>/<model>/seed<N>.json)")
    dice: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for path in sorted(finetune.glob("*/*/seed*.json")):
        try:
            value = read_mean_dice(path)
        except (ValueError, KeyError, TypeError) as error:  # JSON syntax, no or non-numeric "mean_dice"
            raise SystemExit(f"{path}: not a fine-tuning result with a numeric 'mean_dice' ({error!r})") from None
        dice[path.parent.parent.name][path.parent.name].append(value)
    if not dice:
        raise SystemExit(f"{finetune}: no fine-tuning results (<target>/<model>/seed<N>.json)")
    out = {}
    for target, models in sorted(dice.items()):
        n_seeds = min(len(v) for v in models.values())
        if n_seeds < 2:
            raise SystemExit(f"{target}: only {n_seeds} fine-tuning seed(s); set finetune.seeds to 2 or more")
        means = [float(np.nanmean(v)) for v in models.values()]
        across_sources = float(np.std(means, ddof=1))
        across_seeds = float(np.mean([np.nanstd(v, ddof=1) for v in models.values()]))
        out[target] = {
            "models": len(models), "seeds": n_seeds, "across_sources": across_sources,
            "across_seeds": across_seeds, "ratio": across_sources / across_seeds if across_seeds else float("inf"),
        }
    return out


def main() -> None:
    results = Path(sys.argv[1] if len(sys.argv) > 1 else "results")
    rows = spreads(results)
    print(f"{'target':24s} {'models':>6s} {'seeds':>5s} {'sd(sources)':>12s} {'sd(seeds)':>10s} {'ratio':>7s}")
    for target, r in rows.items():
        print(f"{target:24s} {r['models']:6d} {r['seeds']:5d} {r['across_sources']:12.4f} "
              f"{r['across_seeds']:10.4f} {r['ratio']:7.2f}")
    figures = [f"ratio_{target}={r['ratio']:.6g}" for target, r in rows.items()]
    print(" ".join(figures + [f"min_ratio={min(r['ratio'] for r in rows.values()):.6g}"]))


if __name__ == "__main__":
    main()
