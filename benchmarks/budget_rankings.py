"""Does the window budget change the rankings? Resample a finished run's bank with ``sampling.window_budget``,
score it, and compare every metric's ranking and weighted tau with the full pass's (docs/sampling.md,
section 1b).

Inputs (read only): a results folder that ran ``--until score`` at least (``bank/<model>/``,
``nnunet/<target>/preprocessed/`` and, for external members (``bank.external``), ``nnunet/<target>/raw/``,
``splits/<target>.json``, ``scores/<target>/<model>.json``: the full pass), the config layers it ran with (deep-merged in order, as Snakemake merges ``--configfile``), the Dice
per (target, model) (a ``scores_and_dice.csv`` with ``dice_mean_over_seeds``) and the fine-tuning seed noise
per target (a ``noise_ceiling.csv`` with ``seed_sd``: the SD of Dice across fine-tuning seeds, pooled over the
bank).

For every (target, model) whose full-pass scores exist, into ``--scratch`` (resumable: files already there
are kept):

* ``budget<B>/features/<target>/<model>.h5``: ``ccfv.features.target.sample_target`` (an external member:
  ``sample_member``) with the config's ``sampling:`` and ``window_budget: B``, over the training cases the full
  pass's scores used (all of them, or the ``scoring.max_cases`` subset its scores JSON lists);
  ``budget<B>/scores/<target>/<model>.json``: every metric of ``scoring.metrics``
  (``ccfv.scores.scoring.compute_scores``).
* unless ``--no-reference``: the same without a budget but with sampling seed ``--reference-seed`` (``seed<S>/``):
  how much redrawing the voxels alone moves the scores, the yardstick of the sampling's own noise.

Then per metric and target, over the bank's models:

* ``kendall``: Kendall's tau-b between the full pass's scores and the budget's (do they rank the models alike?);
* ``tau_full``, ``tau_budget``: weighted tau with the Dice (``ccfv.results.measures.statistic("tau", ...)``:
  ``scipy.stats.weightedtau``), and ``delta = tau_budget - tau_full``; ``delta_reference`` the same for the
  reference seed;
* ``kendall_committed``, ``delta_committed``: when the Dice file also holds the metrics' scores (the
  workflow's ``scores_and_dice.csv`` does), the same comparison of the full pass with them: how much a
  second run of the whole pipeline (its bank retrained) moves the rankings;
* ``seed_sd_tau``: the spread of the weighted tau across fine-tuning seeds: the SD, over ``--simulations``
  seeded draws, of the weighted tau of the full pass's scores with one seed's Dice, simulated as the mean
  Dice plus Normal noise of the target's ``seed_sd`` (the per-seed Dice are not in the committed tables;
  their pooled SD is).

A metric agrees within the seed noise when the change of its weighted tau averaged over the targets (the
figure Table 1 reports) is at most the SD of that average under the seed noise (the targets' ``seed_sd_tau``
combined as independent: sqrt(sum sd^2) / targets). The table prints both, and per target how many of the
|delta| are within that target's ``seed_sd_tau``.

    nice -n 10 .venv/bin/python benchmarks/budget_rankings.py --results results-study \\
        --configfile config/config.yaml config/study.yaml --dice docs/benchmark/scores_and_dice.csv \\
        --noise docs/benchmark/noise_ceiling.csv --budget 2 --scratch /tmp/ccfv-budget [--json out.json]

The last line is ``budget=<B> pairs=<n> min_kendall=<k> mean_abs_delta=<d> max_abs_delta_avg=<m>
within_noise=<a>/<b>``: the smallest Kendall tau over (metric, target), the mean |delta| over (metric,
target), the largest |change of the average weighted tau| over the metrics, and how many metrics agree
within the seed noise out of how many.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def merged_config(layers: Sequence[Path]) -> dict:
    """The config layers deep-merged in order (a later mapping updates an earlier one key by key)."""
    def merge(base, extra):
        if isinstance(base, dict) and isinstance(extra, dict):
            return {**base, **{k: merge(base.get(k), v) for k, v in extra.items()}}
        return extra

    config: dict = {}
    for path in layers:
        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except (OSError, yaml.YAMLError) as err:
            raise SystemExit(f"budget_rankings: {path}: cannot read the config ({err})") from None
        if not isinstance(loaded, dict):
            raise SystemExit(f"budget_rankings: {path}: not a YAML mapping")
        config = merge(config, loaded)
    for key in ("tasks", "sampling", "scoring"):
        if key not in config:
            raise SystemExit(f"budget_rankings: the config ({', '.join(map(str, layers))}) has no {key!r} section")
    return config


def read_csv(path: Path, needed: Sequence[str]) -> list[dict]:
    try:
        with Path(path).open(newline="") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as err:
        raise SystemExit(f"budget_rankings: {path}: cannot read ({err})") from None
    missing = [c for c in needed if not rows or c not in rows[0]]
    if missing:
        raise SystemExit(f"budget_rankings: {path}: no column(s) {missing}")
    return rows


def bank_of(results: Path, target: str) -> list[str]:
    """The models whose full-pass scores exist for ``target`` (``scores/<target>/<model>.json``), sorted."""
    return sorted(p.stem for p in (results / "scores" / target).glob("*.json"))


def scored_split(results: Path, target: str, model: str, out: Path) -> Path:
    """The split to resample ``model`` on: the run's ``splits/<target>.json``, its training cases narrowed to
    those the full pass's scores were computed on when the run scored a subset (``scoring.max_cases``: the scores
    JSON lists its ``cases``), written to ``out/splits/<target>/<model>.json``. A case's voxels are drawn from
    (seed, case id) alone (``ccfv.features.sampler.case_rng``), so sampling only the scored cases gives them the
    features the full pass gave them: the comparison is the one the workflow's scores see, at a fraction of the
    cost (the real study scores 20 of its 208 training cases)."""
    split_file = results / "splits" / f"{target}.json"
    recorded = json.loads((results / "scores" / target / f"{model}.json").read_text()).get("cases")
    if recorded is None:
        return split_file
    split = json.loads(split_file.read_text())
    unknown = sorted(set(recorded) - set(split["train"]))
    if unknown:
        raise SystemExit(f"budget_rankings: {results / 'scores' / target / f'{model}.json'}: scored case(s) "
                         f"{unknown[:3]} are not training cases of {split_file}")
    if len(recorded) == len(split["train"]):
        return split_file
    narrowed = out / "splits" / target / f"{model}.json"
    narrowed.parent.mkdir(parents=True, exist_ok=True)
    narrowed.write_text(json.dumps({**split, "train": [c for c in split["train"] if c in set(recorded)]}, indent=1))
    return narrowed


def sample_and_score(results: Path, target: str, model: str, out: Path, sampling: dict, definitions: dict,
                     threads: int, config: dict | None = None) -> tuple[dict, float]:
    """(scores, sampling seconds) of one pair into ``out/{features,scores}``; kept when already there.

    A bank model (``bank/<model>/`` a ccfv model folder) is sampled as the ``sample_features`` rule does, from
    the target's preprocessed data; an external member (``bank/<model>/member.json``, ``bank.external`` of
    ``config``) as ``sample_member_features`` does, from the converted raw data in its own input convention,
    with its layer ratios resolved as the rule resolves them."""
    from ccfv.features.settings import model_sampling
    from ccfv.features.target import sample_member, sample_target
    from ccfv.models.members import MEMBER_CARD, external_member
    from ccfv.preprocess.paths import dataset_folder
    from ccfv.scores.scoring import read_scores, score_pair
    from ccfv.workflow import external_members

    features = out / "features" / target / f"{model}.h5"
    scores = out / "scores" / target / f"{model}.json"
    seconds = 0.0
    if not features.is_file():
        split = scored_split(results, target, model, out)
        start = time.perf_counter()
        if (results / "bank" / model / MEMBER_CARD).is_file():
            config = config or {}
            member = external_member(model, external_members(config), config.get("random_init", {}).get("seed", 0))
            sample_member(member, dataset_folder(results / "nnunet" / target / "raw", target), split, features,
                          target=target, sampling=model_sampling(sampling, model), threads=threads, device="cpu")
        else:
            sample_target(results / "bank" / model,
                          dataset_folder(results / "nnunet" / target / "preprocessed", target), split, features,
                          target=target, sampling=sampling, threads=threads, device="cpu")
        seconds = time.perf_counter() - start
    if not scores.is_file():
        score_pair(features, definitions, scores, target=target, model=model)
    return read_scores(scores), seconds


def seed_spread(scores: np.ndarray, dice: np.ndarray, seed_sd: float, simulations: int, seed: int = 0) -> float:
    """SD of the weighted tau of ``scores`` with one fine-tuning seed's Dice, simulated as ``dice`` plus
    Normal(0, seed_sd) per model (``simulations`` seeded draws)."""
    from ccfv.results.measures import statistic

    rng = np.random.default_rng(seed)
    taus = [statistic("tau", scores, dice + rng.normal(0.0, seed_sd, size=dice.shape)) for _ in range(simulations)]
    return float(np.nanstd(taus, ddof=1))


def compare(full: dict, other: dict, dice: dict, seed_sd: dict, metrics: Sequence[str], simulations: int,
            reference: dict | None, committed: dict | None = None) -> list[dict]:
    """One row per (metric, target): Kendall tau of the two score rankings, weighted taus with the Dice; the
    same against the reference seed's resampling and against the scores of the Dice file (another run of
    the whole pipeline) when given."""
    from ccfv.results.measures import kendall_tau, statistic

    rows = []
    for target in full:
        models = sorted(full[target])
        d = np.array([dice[target][m] for m in models])
        for metric in metrics:
            a = np.array([full[target][m][metric] for m in models])
            b = np.array([other[target][m][metric] for m in models])
            row = {"metric": metric, "target": target, "models": len(models), "kendall": kendall_tau(a, b),
                   "tau_full": statistic("tau", a, d), "tau_budget": statistic("tau", b, d),
                   "seed_sd_tau": seed_spread(a, d, seed_sd[target], simulations)}
            row["delta"] = row["tau_budget"] - row["tau_full"]
            if reference is not None:
                r = np.array([reference[target][m][metric] for m in models])
                row["kendall_reference"] = kendall_tau(a, r)
                row["delta_reference"] = statistic("tau", r, d) - row["tau_full"]
            if committed is not None and all(metric in committed[target][m] for m in models):
                c = np.array([committed[target][m][metric] for m in models])
                row["kendall_committed"] = kendall_tau(a, c)
                row["delta_committed"] = statistic("tau", c, d) - row["tau_full"]
            rows.append(row)
    return rows


def summarise(rows: list[dict], metrics: Sequence[str]) -> list[dict]:
    """Per metric: averages over the targets and the verdict (module docstring)."""
    out = []
    for metric in metrics:
        mine = [r for r in rows if r["metric"] == metric]
        n = len(mine)
        avg_full = sum(r["tau_full"] for r in mine) / n
        avg_budget = sum(r["tau_budget"] for r in mine) / n
        sd_avg = math.sqrt(sum(r["seed_sd_tau"] ** 2 for r in mine)) / n
        summary = {
            "metric": metric, "targets": n, "kendall_min": min(r["kendall"] for r in mine),
            "kendall_mean": sum(r["kendall"] for r in mine) / n, "tau_full_avg": avg_full,
            "tau_budget_avg": avg_budget, "delta_avg": avg_budget - avg_full,
            "mean_abs_delta": sum(abs(r["delta"]) for r in mine) / n, "seed_sd_tau_avg": sd_avg,
            "targets_within_seed_sd": sum(abs(r["delta"]) <= r["seed_sd_tau"] for r in mine),
        }
        summary["within_noise"] = abs(summary["delta_avg"]) <= sd_avg
        if all("delta_reference" in r for r in mine):
            summary["kendall_reference_mean"] = sum(r["kendall_reference"] for r in mine) / n
            summary["delta_reference_avg"] = sum(r["delta_reference"] for r in mine) / n
            summary["mean_abs_delta_reference"] = sum(abs(r["delta_reference"]) for r in mine) / n
        if all("delta_committed" in r for r in mine):
            summary["kendall_committed_mean"] = sum(r["kendall_committed"] for r in mine) / n
            summary["delta_committed_avg"] = sum(r["delta_committed"] for r in mine) / n
            summary["mean_abs_delta_committed"] = sum(abs(r["delta_committed"]) for r in mine) / n
        out.append(summary)
    return out


def print_tables(rows: list[dict], summary: list[dict], budget: int, reference_seed: int | None) -> None:
    ref = reference_seed is not None
    print(f"\nPer metric, over the targets (budget {budget} windows per key; full pass = the results' scores):")
    head = (f"  {'metric':20s} {'Kendall min':>11s} {'mean':>6s} {'tau_w full':>10s} {'budget':>7s} {'change':>7s} "
            f"{'seed SD':>7s} {'within':>6s} {'|change| mean':>13s} {'targets <= SD':>13s}")
    if ref:
        head += f" {'seed ' + str(reference_seed) + ': Kendall':>16s} {'change':>7s} {'|change| mean':>13s}"
    print(head)
    for s in summary:
        line = (f"  {s['metric']:20s} {s['kendall_min']:11.3f} {s['kendall_mean']:6.3f} {s['tau_full_avg']:10.3f} "
                f"{s['tau_budget_avg']:7.3f} {s['delta_avg']:+7.3f} {s['seed_sd_tau_avg']:7.3f} "
                f"{'yes' if s['within_noise'] else 'NO':>6s} {s['mean_abs_delta']:13.3f} "
                f"{s['targets_within_seed_sd']:>9d} of {s['targets']}")
        if ref:
            line += (f" {s['kendall_reference_mean']:16.3f} {s['delta_reference_avg']:+7.3f} "
                     f"{s['mean_abs_delta_reference']:13.3f}")
        print(line)
    print("  (tau_w: weighted tau with the Dice, averaged over the targets; change: budget - full; seed SD: the SD of "
          "that average under one fine-tuning seed's noise; within: |change| <= seed SD)")
    if any("kendall_committed_mean" in s for s in summary):
        print("\nThe full pass against the scores of the Dice file (another run of the whole pipeline, bank included):")
        print(f"  {'metric':20s} {'Kendall mean':>12s} {'change':>7s} {'|change| mean':>13s}")
        for s in (s for s in summary if "kendall_committed_mean" in s):
            print(f"  {s['metric']:20s} {s['kendall_committed_mean']:12.3f} {s['delta_committed_avg']:+7.3f} "
                  f"{s['mean_abs_delta_committed']:13.3f}")
    print("\nPer metric and target:")
    print(f"  {'metric':20s} {'target':22s} {'Kendall':>7s} {'tau_w full':>10s} {'budget':>7s} {'change':>7s} "
          f"{'seed SD':>7s}" + (f" {'seed ' + str(reference_seed) + ' change':>14s}" if ref else ""))
    for r in rows:
        print(f"  {r['metric']:20s} {r['target']:22s} {r['kendall']:7.3f} {r['tau_full']:10.3f} {r['tau_budget']:7.3f} "
              f"{r['delta']:+7.3f} {r['seed_sd_tau']:7.3f}" + (f" {r['delta_reference']:+14.3f}" if ref else ""))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, required=True, help="a results folder that ran --until score")
    parser.add_argument("--configfile", type=Path, nargs="+", required=True,
                        help="the config layers the results ran with, lowest precedence first")
    parser.add_argument("--dice", type=Path, required=True, help="scores_and_dice.csv: target, model, "
                        "dice_mean_over_seeds")
    parser.add_argument("--noise", type=Path, required=True, help="noise_ceiling.csv: target, seed_sd")
    parser.add_argument("--budget", type=int, default=2, help="sampling.window_budget to compare (default 2)")
    parser.add_argument("--scratch", type=Path, required=True, help="where the resampled features and scores go")
    parser.add_argument("--reference-seed", type=int, default=1,
                        help="the full pass's sampling seed for the reference (default 1)")
    parser.add_argument("--no-reference", action="store_true", help="skip the reference-seed resampling")
    parser.add_argument("--targets", nargs="+", help="default: the config's targets (its tasks when it names none)")
    parser.add_argument("--metrics", nargs="+", help="default: every metric of the tables (scoring.tables)")
    parser.add_argument("--simulations", type=int, default=1000, help="draws of the seed-noise spread")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the sampling")
    parser.add_argument("--json", type=Path, help="also write every row and the summary here")
    args = parser.parse_args(argv)
    if args.budget < 1 or args.simulations < 2 or args.threads < 1:
        parser.error("--budget >= 1, --simulations >= 2 and --threads >= 1 are needed")
    results = args.results.resolve()
    if args.scratch.resolve().is_relative_to(results):
        parser.error("--scratch must lie outside --results (the results are read only)")
    config = merged_config(args.configfile)
    definitions = config["scoring"]["metrics"]
    tables = config["scoring"].get("tables", {})
    metrics = args.metrics or list(dict.fromkeys(m for names in tables.values() for m in names)) or list(definitions)
    unknown = [m for m in metrics if m not in definitions]
    if unknown:
        parser.error(f"--metrics {unknown}: not in the config's scoring.metrics")
    from ccfv.workflow import targets_of  # a source-only task (the real study's synthetic ones) has no scores

    targets = args.targets or targets_of(config)

    dice: dict[str, dict[str, float]] = {}
    committed: dict[str, dict[str, dict[str, float]]] = {}  # the Dice file's own score columns, if any
    for row in read_csv(args.dice, ["target", "model", "dice_mean_over_seeds"]):
        dice.setdefault(row["target"], {})[row["model"]] = float(row["dice_mean_over_seeds"])
        committed.setdefault(row["target"], {})[row["model"]] = {
            m: float(row[m]) for m in metrics if row.get(m) not in (None, "")}
    seed_sd = {row["target"]: float(row["seed_sd"]) for row in read_csv(args.noise, ["target", "seed_sd"])}
    banks = {}
    for target in targets:
        models = bank_of(results, target)
        if len(models) < 3:
            raise SystemExit(f"budget_rankings: {results / 'scores' / target}: {len(models)} model(s) scored; a "
                             "ranking needs at least 3 (has the run reached --until score?)")
        missing = [m for m in models if m not in dice.get(target, {})]
        if missing or target not in seed_sd or not math.isfinite(seed_sd[target]):
            raise SystemExit(f"budget_rankings: {target}: no Dice for {missing} in {args.dice}" if missing else
                             f"budget_rankings: {target}: no finite seed_sd in {args.noise}")
        banks[target] = models

    from ccfv.features.file import read_features
    from ccfv.scores.scoring import read_scores

    sampling = dict(config["sampling"])
    runs = {"budget": (args.scratch / f"budget{args.budget}", {**sampling, "window_budget": args.budget})}
    if not args.no_reference:
        runs["reference"] = (args.scratch / f"seed{args.reference_seed}",
                             {**sampling, "window_budget": None, "seed": args.reference_seed})
    load_before, start = os.getloadavg(), time.perf_counter()
    full = {t: {m: read_scores(results / "scores" / t / f"{m}.json") for m in banks[t]} for t in targets}
    resampled: dict[str, dict] = {name: {} for name in runs}
    windows: dict[str, list] = {name: [] for name in runs}
    seconds = {name: 0.0 for name in runs}
    pairs = sum(len(m) for m in banks.values())
    done = 0
    for target in targets:
        for model in banks[target]:
            for name, (out, settings) in runs.items():
                scores, spent = sample_and_score(results, target, model, out, settings, definitions, args.threads,
                                                 config)
                resampled[name].setdefault(target, {})[model] = scores
                seconds[name] += spent
                meta = read_features(out / "features" / target / f"{model}.h5").meta
                windows[name] += list(meta.get("windows_run", {}).values())
            done += 1
            print(f"  {done}/{pairs} {target} {model}", file=sys.stderr, flush=True)
    wall = time.perf_counter() - start

    # The full pass's windows, from its own features files when they are there, over the cases resampled.
    full_windows = []
    for target in targets:
        for model in banks[target]:
            path = results / "features" / target / f"{model}.h5"
            if path.is_file():
                run = read_features(path).meta.get("windows_run", {})
                scored = json.loads((results / "scores" / target / f"{model}.json").read_text()).get("cases") or run
                full_windows += [run[case] for case in scored if case in run]
    rows = compare(full, resampled["budget"], dice, seed_sd, metrics, args.simulations,
                   resampled.get("reference"), committed)
    summary = summarise(rows, metrics)
    reference_seed = None if args.no_reference else args.reference_seed
    print(f"budget_rankings: {results} ({pairs} pairs, targets {targets}); config {[str(p) for p in args.configfile]}; "
          f"load average before {', '.join(f'{x:.2f}' for x in load_before)}, after "
          f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}; wall {wall / 60:.1f} min")
    for name in runs:
        run = np.array(windows[name]) if windows[name] else np.zeros((0, 2))
        if len(run):
            print(f"  {name}: windows run per case {run[:, 0].mean():.2f} of {run[:, 1].mean():.2f} on average "
                  f"(max {run[:, 0].max():.0f}); sampling {seconds[name]:.0f} s in this call (files already in "
                  f"{runs[name][0]} were kept)")
    if full_windows:
        run = np.array(full_windows)
        print(f"  full pass: windows run per case {run[:, 0].mean():.2f} of {run[:, 1].mean():.2f} on average")
    print_tables(rows, summary, args.budget, reference_seed)
    if args.json:
        args.json.write_text(json.dumps({"budget": args.budget, "results": str(results), "pairs": pairs,
                                         "reference_seed": reference_seed, "rows": rows, "summary": summary,
                                         "windows": windows, "full_windows": full_windows, "seconds": seconds},
                                        indent=2))
    finite = [r for r in rows if math.isfinite(r["kendall"])]
    print(f"budget={args.budget} pairs={pairs} min_kendall={min(r['kendall'] for r in finite):.4g} "
          f"mean_abs_delta={sum(abs(r['delta']) for r in rows) / len(rows):.4g} "
          f"max_abs_delta_avg={max(abs(s['delta_avg']) for s in summary):.4g} "
          f"within_noise={sum(s['within_noise'] for s in summary)}/{len(summary)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
