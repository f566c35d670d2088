"""Can the fine-tuned Dice rank the bank's models? The ground-truth health check (docs/report.md).

Every correlation of Tables 1 and 2 compares the transferability scores with the bank models' fine-tuned
Dice on a target. When that Dice cannot tell the models apart (fine-tuning failed for most of them, the
best ones are tied, or the choice of source moves the Dice less than re-running fine-tuning with another
seed does) the correlations measure noise, and a reader must be told. Per target, with the Dice of model
m the mean over its defined fine-tuning seeds:

- **near zero**: the models whose mean Dice is below ``zero_dice`` (default 0.05); the target fails when
  more than ``max_zero_share`` of its models are (default 0.34: more than a third);
- **nothing learned**: the target fails when even the best model's mean Dice is below ``min_best_dice``
  (default 0.1): a one-iteration fine-tuning leaves every model at a few hundredths of Dice, above
  ``zero_dice`` but far from a segmentation;
- **tied at the top**: the models whose mean Dice is within ``tie_tolerance`` (default 0.01) of the best
  (the best included); the target fails when more than ``max_tied_share`` of its models are (default
  0.5: more than half of the bank cannot be told apart from the best);
- **source spread against seed noise** (only when every model has at least 2 defined seeds): the
  standard deviation over models of the mean Dice (ddof=1) against the seed noise of the noise ceiling
  (:func:`ccfv.results.measures.pooled_seed_variance`: the square root of the mean over models of each model's
  variance over seeds, ddof=1); the target fails when the spread is below ``min_spread_ratio`` (default
  1.0) times the seed noise;
- fewer than 3 models: no rank correlation is defined, the target fails.

Beside the verdict, with 2 or more seeds, the **reliability** of the mean Dice (shown, not part of the
rule): the share of the variance of the models' mean Dice that is not seed noise, 1 - E / SD(means)^2
with E the mean over models of (variance over seeds / number of seeds), the squared standard error of a
model's mean. It says how far the ranking by mean Dice can be trusted when the spread rule fails: more
seeds shrink E, while the spread rule compares with a single seed's noise and cannot be passed by adding
seeds. 1: no seed noise; 0.5: half the variance is noise; at or below 0: the means differ no more than
noise alone would make them.

A target that fails any of these "cannot rank": its values stay in every table, marked with a dagger and
a footnote saying why (:mod:`ccfv.results`).
"""
from __future__ import annotations

import csv
import html
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from ..io import write_text
from .formatting import FLAG_MARK, fmt_number, short_task
from .measures import dice_matrix, pooled_seed_variance
from .tables import seed_dice

#: A rank correlation needs at least this many models.
MIN_MODELS = 3


@dataclass(frozen=True)
class HealthRule:
    """The thresholds of the check (the ``ground_truth`` section of the workflow config).

    - ``zero_dice``: a model whose mean Dice is below this counts as near zero (Dice, 0-1).
    - ``max_zero_share``: fail when more than this share of the models is near zero.
    - ``min_best_dice``: fail when the best model's mean Dice is below this.
    - ``tie_tolerance``: models within this Dice of the best are tied with it.
    - ``max_tied_share``: fail when more than this share of the models is tied at the top.
    - ``min_spread_ratio``: with 2 or more seeds, fail when SD(mean Dice over models) is below this times
      the pooled seed SD.
    """

    zero_dice: float = 0.05
    max_zero_share: float = 0.34
    min_best_dice: float = 0.1
    tie_tolerance: float = 0.01
    max_tied_share: float = 0.5
    min_spread_ratio: float = 1.0

    @classmethod
    def from_config(cls, section: Mapping | None) -> "HealthRule":
        """The rule from a config section (missing keys: the defaults); unknown keys and values outside
        their range are errors naming them."""
        section = dict(section or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(section) - known)
        if unknown:
            raise ValueError(f"ground_truth: unknown setting(s) {unknown}; known: {sorted(known)}")
        rule = cls(**{k: float(v) for k, v in section.items()})
        for name in ("zero_dice", "max_zero_share", "min_best_dice", "max_tied_share", "tie_tolerance"):
            value = getattr(rule, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"ground_truth.{name} must lie in [0, 1], got {value}")
        if not (rule.min_spread_ratio >= 0.0 and math.isfinite(rule.min_spread_ratio)):
            raise ValueError(f"ground_truth.min_spread_ratio must be a finite number >= 0, got {rule.min_spread_ratio}")
        return rule


def check_target(models: Sequence[str], dice_per_seed: Sequence[Sequence[float | None]],
                 rule: HealthRule = HealthRule(), target: str = "") -> dict:
    """The health of one target's ground truth.

    Args:
        models: the bank's model ids, [M].
        dice_per_seed: per model, its fine-tuned mean Dice per seed (None or NaN where undefined), [M][S];
            a known Dice without seeds is a list of one value.
        rule: the thresholds.
        target: the target's name, for the row and the error messages.

    Returns:
        A row: ``target``, ``n_models``, ``n_seeds`` (fewest defined seeds of any model), ``dice_min``,
        ``dice_median``, ``dice_max`` (over the models' mean Dice), ``best``, ``n_near_zero``,
        ``near_zero_share``, ``near_zero``, ``n_tied_top``, ``tied_top`` (models, ``;``-separated),
        ``source_spread``, ``seed_sd``, ``spread_ratio``, ``reliability`` (NaN with fewer than 2 seeds;
        see the module docstring), ``can_rank`` and ``reasons`` (a list of sentences, empty when it can rank).

    Raises:
        ValueError: models and Dice of different lengths, a model without any defined Dice.
    """
    if len(models) != len(dice_per_seed):
        raise ValueError(f"{target}: {len(models)} models but {len(dice_per_seed)} Dice lists")
    d = dice_matrix([list(row) for row in dice_per_seed])
    n_defined = np.sum(np.isfinite(d), axis=1)
    empty = [m for m, n in zip(models, n_defined) if n == 0]
    if empty:
        raise ValueError(f"{target}: no defined fine-tuned Dice for {empty}")
    n = len(models)
    means = np.array([float(np.mean(row[np.isfinite(row)])) for row in d]) if n else np.zeros(0)
    row = {"target": target, "n_models": n, "n_seeds": int(n_defined.min()) if n else 0}
    if n == 0:
        return {**row, "dice_min": math.nan, "dice_median": math.nan, "dice_max": math.nan, "best": "",
                "n_near_zero": 0, "near_zero_share": math.nan, "near_zero": "", "n_tied_top": 0, "tied_top": "",
                "source_spread": math.nan, "seed_sd": math.nan, "spread_ratio": math.nan, "reliability": math.nan,
                "can_rank": False,
                "reasons": [f"no models (a rank correlation needs at least {MIN_MODELS})"]}
    near_zero = [m for m, v in zip(models, means) if v < rule.zero_dice]
    best = float(means.max())
    tied = [m for m, v in sorted(zip(models, means), key=lambda x: -x[1]) if v >= best - rule.tie_tolerance]
    spread = float(np.std(means, ddof=1)) if n >= 2 else math.nan
    seed_sd = math.sqrt(pooled_seed_variance(d)) if d.shape[1] >= 2 else math.nan
    if not math.isfinite(seed_sd) or not math.isfinite(spread):
        ratio = math.nan
    else:
        ratio = spread / seed_sd if seed_sd > 0 else math.inf
    reliability = _reliability(d, spread) if math.isfinite(seed_sd) and math.isfinite(spread) else math.nan
    reasons = []
    if n < MIN_MODELS:
        reasons.append(f"only {n} model(s) (a rank correlation needs at least {MIN_MODELS})")
    if len(near_zero) > rule.max_zero_share * n:
        reasons.append(f"{len(near_zero)} of {n} models fine-tune to a mean Dice below {rule.zero_dice:g} "
                       f"(more than {rule.max_zero_share:.0%} of the bank)")
    if best < rule.min_best_dice:
        reasons.append(f"no model learnt the target: the best mean Dice is {best:.3f}, below {rule.min_best_dice:g}")
    if len(tied) > rule.max_tied_share * n:
        reasons.append(f"{len(tied)} of {n} models are tied at the top, within {rule.tie_tolerance:g} Dice of the "
                       f"best ({best:.3f}): more than {rule.max_tied_share:.0%} of the bank")
    if math.isfinite(ratio) and ratio < rule.min_spread_ratio:
        reasons.append(f"the spread of mean Dice across models (SD {spread:.3f}) is below "
                       f"{rule.min_spread_ratio:g} times the spread across fine-tuning seeds (SD {seed_sd:.3f})")
    return {**row, "dice_min": float(means.min()), "dice_median": float(np.median(means)), "dice_max": best,
            "best": models[int(np.argmax(means))], "n_near_zero": len(near_zero),
            "near_zero_share": len(near_zero) / n, "near_zero": ";".join(near_zero), "n_tied_top": len(tied),
            "tied_top": ";".join(tied), "source_spread": spread, "seed_sd": seed_sd, "spread_ratio": ratio,
            "reliability": reliability, "can_rank": not reasons, "reasons": reasons}


def _reliability(d: np.ndarray, spread: float) -> float:
    """1 - (mean squared standard error of the models' mean Dice) / spread^2; ``d`` is [models, seeds] with
    NaN for undefined seeds, every model with >= 2 defined seeds. 1.0 when neither varies."""
    counts = np.sum(np.isfinite(d), axis=1)
    error = float(np.mean(np.nanvar(d, axis=1, ddof=1) / counts))
    if spread == 0:
        return 1.0 if error == 0 else -math.inf
    return 1.0 - error / spread**2


def check_ground_truth(records: Sequence[Mapping], targets: Sequence[str],
                       rule: HealthRule = HealthRule()) -> list[dict]:
    """:func:`check_target` for every target, from records {target, model, dice_per_seed} (as
    ``records.json`` holds them)."""
    rows = []
    for target in targets:
        mine = sorted((r for r in records if r["target"] == target), key=lambda r: r["model"])
        rows.append(check_target([r["model"] for r in mine], [r["dice_per_seed"] for r in mine], rule, target))
    return rows


def flags(rows: Sequence[Mapping]) -> dict[str, str]:
    """{target: why} of the targets that cannot rank (the ``flags`` of :mod:`ccfv.results`' tables)."""
    return {r["target"]: "; ".join(r["reasons"]) for r in rows if not r["can_rank"]}


def verdict(rows: Sequence[Mapping]) -> list[str]:
    """The check's verdict in words, one line per flagged target after a summary line."""
    bad = [r for r in rows if not r["can_rank"]]
    names = ", ".join(r["target"] for r in rows)
    if not bad:
        return [f"Ground truth: the fine-tuned Dice can rank the bank's models on every target ({names})."]
    lines = [f"Ground truth: on {len(bad)} of {len(rows)} targets the fine-tuned Dice cannot rank the bank's "
             f"models; their correlations are shown but marked {FLAG_MARK} in every table:"]
    lines += [f"  {r['target']}: " + "; ".join(r["reasons"]) for r in bad]
    return lines


CSV_COLUMNS = ["target", "n_models", "n_seeds", "dice_min", "dice_median", "dice_max", "best", "n_near_zero",
               "near_zero_share", "near_zero", "n_tied_top", "tied_top", "source_spread", "seed_sd", "spread_ratio",
               "reliability", "can_rank", "reasons"]


def to_csv(rows: Sequence[Mapping]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in rows:
        cells = []
        for c in CSV_COLUMNS:
            value = r[c]
            if c == "reasons":
                value = "; ".join(value)
            elif isinstance(value, float):
                value = fmt_number(value)
            cells.append(value)
        writer.writerow(cells)
    return out.getvalue()


def read_csv(path: str | Path) -> list[dict]:
    """Rows of ``ground_truth.csv`` with ``can_rank`` as a bool and ``reasons`` as a list; a file that is
    not one is an error naming it."""
    path = Path(path)
    try:
        reader = csv.DictReader(io.StringIO(path.read_text()))
        rows = list(reader)
    except OSError as err:
        raise FileNotFoundError(f"{path}: cannot read the ground-truth table ({err.strerror})") from None
    missing = sorted({"target", "can_rank", "reasons"} - set(reader.fieldnames or []))
    if missing:
        raise ValueError(f"{path}: not a ground-truth table (no column {missing})")
    for line, row in enumerate(rows, start=2):
        if row["can_rank"] not in ("True", "False"):
            raise ValueError(f"{path}: line {line}: can_rank must be True or False, got {row['can_rank']!r}")
        row["can_rank"] = row["can_rank"] == "True"
        row["reasons"] = [x for x in row["reasons"].split("; ") if x]
    return rows


def _rule_sentences(rule: HealthRule) -> list[str]:
    return [
        f"more than {rule.max_zero_share:.0%} of its models fine-tune to a mean Dice below {rule.zero_dice:g};",
        f"its best model's mean Dice is below {rule.min_best_dice:g} (nothing learnt);",
        f"more than {rule.max_tied_share:.0%} of its models are tied at the top: within {rule.tie_tolerance:g} "
        "Dice of the best, the best included;",
        f"with 2 or more fine-tuning seeds, the standard deviation of the models' mean Dice is below "
        f"{rule.min_spread_ratio:g} times the pooled standard deviation over seeds;",
        f"it has fewer than {MIN_MODELS} models.",
    ]


def _spread(r: Mapping) -> str:
    if not math.isfinite(r["seed_sd"]):
        return "n/a (one seed)"
    return f"{fmt_number(r['source_spread'], 3)} / {fmt_number(r['seed_sd'], 3)} = {fmt_number(r['spread_ratio'], 2)}"


def _reliability_cell(r: Mapping) -> str:
    value = r.get("reliability", math.nan)
    return "n/a" if not math.isfinite(value) else fmt_number(value, 2)


def to_markdown(rows: Sequence[Mapping], rule: HealthRule) -> str:
    lines = ["Ground truth: can the fine-tuned Dice rank each target's bank? A target cannot rank (its column is "
             f"marked {FLAG_MARK} in every table) when", "", *(f"- {s}" for s in _rule_sentences(rule)), "",
             f"| Target | Models | Seeds | Dice min / median / max | Below {rule.zero_dice:g} | Tied at the top "
             f"(within {rule.tie_tolerance:g}) | Source SD / seed SD | Reliability of the mean Dice | Can rank |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        mark = "" if r["can_rank"] else FLAG_MARK
        lines.append(f"| {short_task(r['target'])}{mark} | {r['n_models']} | {r['n_seeds']} | {fmt_number(r['dice_min'], 3)} / "
                     f"{fmt_number(r['dice_median'], 3)} / {fmt_number(r['dice_max'], 3)} | {r['n_near_zero']} | "
                     f"{r['n_tied_top']} | {_spread(r)} | {_reliability_cell(r)} | "
                     f"{'yes' if r['can_rank'] else 'no'} |")
    return ("\n".join(lines) + "\n\nReliability (shown, not part of the rule): the share of the variance of the "
            "models' mean Dice that is not seed noise, 1 - (mean squared standard error of a model's mean) / "
            "(SD of the means)^2; more seeds raise it.\n\n" + "\n".join(verdict(rows)) + "\n")


def to_html(rows: Sequence[Mapping], rule: HealthRule) -> str:
    """A standalone page for the Snakemake report: the verdict in words, the rule, the table."""
    e = html.escape
    bad = [r for r in rows if not r["can_rank"]]
    if bad:
        summary = (f"<p><strong>On {len(bad)} of {len(rows)} targets the fine-tuned Dice cannot rank the bank's "
                   f"models.</strong> Their correlations in Tables 1 and 2, the statistics and the regret tables are "
                   f"shown but marked {FLAG_MARK}: they do not measure the metrics.</p><ul>"
                   + "".join(f"<li><strong>{e(r['target'])}</strong>: {e('; '.join(r['reasons']))}.</li>" for r in bad)
                   + "</ul>")
    else:
        summary = ("<p><strong>The fine-tuned Dice can rank the bank's models on every target</strong> ("
                   + e(", ".join(r["target"] for r in rows)) + ").</p>")
    head = ["Target", "Models", "Seeds", "Dice min", "median", "max", f"Below {rule.zero_dice:g}",
            f"Tied at the top (within {rule.tie_tolerance:g})", "Source SD / seed SD",
            "Reliability of the mean Dice", "Can rank"]
    body = "".join(
        "<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in (
            r["target"] + ("" if r["can_rank"] else FLAG_MARK), r["n_models"], r["n_seeds"], fmt_number(r["dice_min"], 3),
            fmt_number(r["dice_median"], 3), fmt_number(r["dice_max"], 3), r["n_near_zero"], r["n_tied_top"], _spread(r),
            _reliability_cell(r), "yes" if r["can_rank"] else "no")) + "</tr>" for r in rows)
    return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Ground truth</title></head><body>\n"
            "<h3>Can the fine-tuned Dice rank the models?</h3>\n" + summary + "\n"
            "<p>A target cannot rank when</p><ul>" + "".join(f"<li>{e(s)}</li>" for s in _rule_sentences(rule))
            + "</ul>\n<table border=\"1\" cellpadding=\"4\"><tr>" + "".join(f"<th>{e(h)}</th>" for h in head)
            + "</tr>" + body + "</table>\n</body></html>\n")


def build_ground_truth(dice_files: Mapping[tuple[str, str], Sequence[Path]], targets: Sequence[str],
                       out_dir: Path, rule: HealthRule = HealthRule()) -> list[dict]:
    """The workflow's ``ground_truth`` rule: read every (target, model)'s fine-tuning results (one file per
    seed), check each target and write ``ground_truth.{csv,md,html}`` under ``out_dir``. Everything is read
    and checked before anything is written."""
    records = [{"target": t, "model": m, "dice_per_seed": seed_dice(list(paths))}
               for (t, m), paths in sorted(dice_files.items())]
    missing = [t for t in targets if not any(r["target"] == t for r in records)]
    if missing:
        raise ValueError(f"no fine-tuning results for target(s) {missing}")
    rows = check_ground_truth(records, targets, rule)
    out_dir = Path(out_dir)
    write_text(out_dir / "ground_truth.csv", to_csv(rows))
    write_text(out_dir / "ground_truth.md", to_markdown(rows, rule))
    write_text(out_dir / "ground_truth.html", to_html(rows, rule))
    return rows
