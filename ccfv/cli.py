"""The ``ccfv`` command line: the library's stages without Snakemake.

    ccfv synthesize --out DIR [--n-cases N] [--seed S] [--task NAME ...]   demo tasks in MSD layout
    ccfv msd download TASK [TASK ...] --dest DIR [--base-url URL | --local DIR]   fetch MSD tasks
    ccfv msd validate DIR [DIR ...]                                        check tasks in MSD layout
    ccfv score FEATURES.h5 [--metric ccfv --metric logme ...]              scores of one features file
    ccfv report RESULTS_DIR [--ground-truth]                               the result tables in the terminal
    ccfv rank --data DIR --model SPEC [--model SPEC ...] [--metric ...]     rank my own models on my own data
    ccfv finetune --data DIR --model SPEC [--model SPEC ...] [--iterations N]   fine-tune them and measure Dice
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import __version__


def _synthesize(args) -> int:
    from .data.synthetic import DEMO_TASKS, write_task

    names = args.task or [t.folder_name for t in DEMO_TASKS]
    for name in names:
        path = write_task(name, args.out, n_cases=args.n_cases, seed=args.seed, overwrite=args.overwrite)
        print(path)
    return 0


def _msd_download(args) -> int:
    from .data.msd import fetch_task

    for task in args.tasks:
        print(fetch_task(task, args.dest, base_url=args.base_url, local=args.local))
    return 0


def _msd_validate(args) -> int:
    from .data.validate import validate_command

    return validate_command([str(d) for d in args.dirs])


def _score(args) -> int:
    from .reproducibility import pin_or_warn

    pin_or_warn(threads=1)  # before numpy loads: the same scores on any machine of the level
    from .scores.scoring import DEFAULT_METRICS, EXTRA_METRICS, METHODS, compute_scores, features_as_given

    known = {**{m: {"method": m} for m in METHODS}, **DEFAULT_METRICS, **EXTRA_METRICS}
    names = args.metric or list(DEFAULT_METRICS)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; known: {sorted(known)}")
    definitions = {n: known[n] for n in names}
    if args.features_as_given:
        definitions = features_as_given(definitions)
    scores = compute_scores(args.features, definitions)
    print(json.dumps(scores, indent=2))
    return 0


def _report(args) -> int:
    from .results.console import print_ground_truth, print_reference_comparison, print_report

    if args.write_reference is not None:
        from .results.reference import write_reference

        write_reference(args.results, args.write_reference)
        print(f"wrote the reference of {args.results} into {args.write_reference}")
    elif args.reference is not None:
        print_reference_comparison(args.results, args.reference)
    elif args.ground_truth:
        print_ground_truth(args.results)
    else:
        print_report(args.results)
    return 0


def rank_sampling(args) -> dict:
    """``ccfv rank``'s sampling settings from its options: ``--window-budget 0`` is no budget, no option the
    default of ``SamplingSettings``."""
    sampling = {"seed": args.seed, "total": args.samples}
    if args.window_budget is not None:
        sampling["window_budget"] = args.window_budget or None
    return sampling


def _protocol(args, iterations: int):
    from .finetune.settings import FinetuneProtocol

    rates = args.learning_rate
    grid = dict(learning_rate_grid=rates) if len(rates) > 1 else dict(learning_rate=rates[0])
    return FinetuneProtocol(iterations=iterations, batch_size=args.batch_size, head_learning_rate=args.head_learning_rate,
                            head_init=args.head_init, selection_iterations=args.selection_iterations, **grid)


def _rank(args) -> int:
    from .reproducibility import pin_or_warn

    # Before numpy or torch loads: the same ranking on any x86-64 machine of the level (docs/reproducibility.md).
    pin_or_warn(threads=args.threads)
    from .rank.outputs import print_ranking
    from .rank.run import rank_models

    ranking = rank_models(args.data, args.model, args.out, metrics=args.metric, device=args.device,
                          dice_file=args.dice, max_cases=args.max_cases or None, threads=args.threads,
                          sampling=rank_sampling(args),
                          features_as_given=args.features_as_given, trust_bundle_code=args.trust_bundle_code,
                          confidence_resamples=args.confidence_resamples,
                          # bars redraw with carriage returns and escape codes: only for a terminal, not a log file
                          progress=sys.stderr.isatty(), confirm=args.confirm,
                          confirm_protocol=_protocol(args, args.confirm_iterations))
    print_ranking(ranking, args.out)
    return ranking.exit_status


def _finetune(args) -> int:
    from .reproducibility import pin_or_warn

    # Before numpy or torch loads, as ccfv rank: the same Dice on any x86-64 machine of the level.
    pin_or_warn(threads=args.threads)
    from .finetune.run import finetune_models, print_finetune

    run = finetune_models(args.data, args.model, args.out, seed=args.seed, protocol=_protocol(args, args.iterations),
                          test_fraction=args.test_fraction, split_seed=args.split_seed, split_file=args.split,
                          device=args.device, threads=args.threads, trust_bundle_code=args.trust_bundle_code)
    print_finetune(run, args.out)
    return run.exit_status


def _add_protocol_options(p: argparse.ArgumentParser) -> None:
    """The protocol's settings a user may change (docs/finetune.md says why each default)."""
    from .finetune.settings import HEAD_INITS, FinetuneProtocol

    defaults = FinetuneProtocol()
    p.add_argument("--batch-size", type=int, default=defaults.batch_size, help="patches per iteration (default 2)")
    p.add_argument("--learning-rate", type=float, nargs="+", default=[defaults.learning_rate], metavar="RATE",
                   help="Adam's rate for the pre-trained weights, poly-decayed; several rates: each trains a pilot of "
                        "--selection-iterations iterations and, per model and seed, the one with the lowest mean "
                        "training loss over the pilot's second half goes on (successive halving; docs/finetune.md) "
                        f"(default {defaults.learning_rate:g})")
    p.add_argument("--selection-iterations", type=int, default=defaults.selection_iterations, metavar="N",
                   help="with several --learning-rate: the pilot every rate trains before one goes on "
                        f"(default {defaults.selection_iterations})")
    p.add_argument("--head-learning-rate", type=float, default=defaults.head_learning_rate,
                   help=f"Adam's rate for the new head, poly-decayed (default {defaults.head_learning_rate:g})")
    p.add_argument("--head-init", choices=HEAD_INITS, default=defaults.head_init,
                   help="the new head's start: zero (every seed the same network) or random (default zero)")


TRUST_HELP = ("let MONAI evaluate the bundles' configs, Python expressions and imports included, and read "
              "TorchScript model.ts files (default: literal monai/torch classes only; a bundle needing more is refused "
              "with the reason)")
DEVICE_HELP = ("where the networks run: cuda (a GPU torch can see), cpu, or auto: cuda when torch sees "
               "a GPU, else cpu (default auto; CPU results are the ones reproduced bit for bit)")
FEATURES_AS_GIVEN_HELP = ("score the decoder features as sampled: TransRate without its released pipeline's row "
                          "normalisation, GBC without its PCA to 64 dimensions (default: as the authors' released "
                          "pipelines, docs/metrics.md)")


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer >= 0")
    return value


#: ``ccfv rank``'s default ``--max-cases``: cases sampled from a larger dataset (0: all). On the 20-model study
#: (docs/benchmark.md, "How many cases"; analysis/study_cases.py), LogME's ranking from 8 of a target's 12
#: training cases agreed with the all-cases one at Kendall's tau-b 0.95 (CC-FV 0.88), and its weighted tau with
#: the Dice was the same from 2 cases on (0.40-0.43); 20 keeps a margin over what was measured while bounding
#: the cost of a large dataset (one sliding-window pass per case and model).
DEFAULT_MAX_CASES = 20


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ccfv", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"ccfv {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("synthesize", help="write the synthetic demo tasks in MSD layout")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--n-cases", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--task", action="append", help="task name (default: all demo tasks)")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(run=_synthesize)

    msd = sub.add_parser("msd", help="Medical Segmentation Decathlon data").add_subparsers(dest="msd", required=True)
    p = msd.add_parser("download", help="download, verify and extract MSD tasks")
    p.add_argument("tasks", nargs="+")
    p.add_argument("--dest", type=Path, required=True)
    source = p.add_mutually_exclusive_group()
    source.add_argument("--base-url", default=None, help="mirror of the MSD tarballs")
    source.add_argument("--local", type=Path, default=None,
                        help="folder holding TASK.tar (verified and extracted, not downloaded)")
    p.set_defaults(run=_msd_download)

    p = msd.add_parser("validate", help="check tasks in MSD layout; every problem reported, exit status 1 if any")
    p.add_argument("dirs", nargs="+", type=Path)
    p.set_defaults(run=_msd_validate)

    p = sub.add_parser("score", help="transferability scores of one features file")
    p.add_argument("features", type=Path)
    p.add_argument("--metric", action="append",
                   help="a method (ccfv, logme, leep, nce, gbc, transrate, hscore, ccfv_released, knn, "
                        "ccfv_disc, rankme), an ablation (ccfv_wo_ccons, ccfv_wo_fv, ccfv_single_scale, ccfv_kl, "
                        "ccfv_bhattacharyya, ccfv_energy_sum) or ccfv_varied; repeatable; default: the paper's "
                        "Tables 1 and 2")
    p.add_argument("--features-as-given", action="store_true", help=FEATURES_AS_GIVEN_HELP)
    p.set_defaults(run=_score)

    p = sub.add_parser("report", help="print the result tables (Tables 1, 2 and 3, statistics, regret, costs)")
    p.add_argument("results", type=Path, help="the workflow's results folder (holding tables/)")
    p.add_argument("--ground-truth", action="store_true",
                   help="print only the ground-truth verdict: which targets' fine-tuned Dice cannot rank their models, "
                        "and why")
    p.add_argument("--reference", type=Path, metavar="DIR",
                   help="compare the run with a reference run (records.json, provenance.json; the demo's: docs/demo) "
                        "and print whether every number is identical, or which differ, by how much and why")
    p.add_argument("--write-reference", type=Path, metavar="DIR",
                   help="make this run the reference: copy its records.json, provenance.json and Tables 1/3 into DIR "
                        "(docs/demo is refreshed this way, only with a reason: docs/reproducibility.md)")
    p.set_defaults(run=_report)

    p = sub.add_parser(
        "rank", help="rank pre-trained models (nnU-Net v2 model folders, MONAI bundles, ccfv bank models, brainchop "
                     "MeshNets, hippodeep) on a labelled dataset",
        description="Rank pre-trained 3D segmentation models by their expected Dice after fine-tuning on a "
                    "labelled dataset, without fine-tuning them (docs/rank.md). Exit status: 0 every model ranked, "
                    "1 some could not be (each named, with the reason), 2 none or bad arguments/data.")
    p.add_argument("--data", type=Path, required=True,
                   help="an MSD task folder or an nnU-Net raw dataset folder (dataset.json, imagesTr/, labelsTr/)")
    p.add_argument("--model", action="append", required=True, metavar="[NAME=]PATH",
                   help="an nnU-Net v2 trained model folder (plans.json, dataset.json, fold_N/checkpoint_final.pth), "
                        "one of its fold_N folders or checkpoints, a MONAI bundle folder (configs/metadata.json, "
                        "configs/inference.json|yaml, models/model.pt), a ccfv bank model folder, a brainchop MeshNet folder "
                        "(TensorFlow.js model.json + weights) or hippodeep's weights file (hippodeep.pt); repeatable")
    p.add_argument("--metric", action="append", metavar="METRIC",
                   help="ccfv, logme, leep, gbc, transrate, nce, hscore, ccfv_released, knn, ccfv_disc, "
                        "ccfv_varied, rankme or all; repeatable; the "
                        "table is ordered by the first, which also makes the recommendation; default: logme ccfv leep gbc "
                        "transrate (why LogME first: docs/rank.md)")
    p.add_argument("--confidence-resamples", type=int, default=200, metavar="N",
                   help="case bootstrap resamples for the top pick's confidence (default 200; 0: none)")
    p.add_argument("--out", type=Path, default=Path("ccfv-rank"),
                   help="output folder: ranking.csv, ranking.json, ranking.png, features/ (default: ccfv-rank)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help=DEVICE_HELP)
    p.add_argument("--dice", type=Path, default=None, metavar="CSV",
                   help="known fine-tuned Dice per model (columns model,dice): adds weighted tau, Pearson, regret")
    p.add_argument("--max-cases", type=int, default=DEFAULT_MAX_CASES, metavar="N",
                   help=f"use at most N labelled cases, chosen with --seed (default {DEFAULT_MAX_CASES}: enough on the "
                        "study, docs/rank.md; 0: all of them)")
    p.add_argument("--samples", type=int, default=1000, metavar="N",
                   help="foreground voxels sampled per case (default 1000, as the demo)")
    p.add_argument("--seed", type=int, default=0, help="seed of the voxel (and --max-cases) choice")
    p.add_argument("--window-budget", type=_non_negative, default=None, metavar="B",
                   help="draw each case's voxels inside at most B sliding windows per voxel kind, so that large scans "
                        "cost a bounded number of windows (docs/sampling.md, 1b); 0: no budget (default: none)")
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads (default 1; results are reproduced bit for bit with the same count)")
    p.add_argument("--features-as-given", action="store_true", help=FEATURES_AS_GIVEN_HELP)
    p.add_argument("--trust-bundle-code", action="store_true", help=TRUST_HELP)
    p.add_argument("--confirm", type=int, default=0, metavar="K",
                   help="after ranking, fine-tune the top K models by the first metric (ccfv finetune's protocol, "
                        "seed --seed, an 80/20 split recorded in OUT/confirm/) and print their held-out Dice beside "
                        "the estimate (default 0: none)")
    p.add_argument("--confirm-iterations", type=int, default=250, metavar="N",
                   help="fine-tuning iterations of --confirm (default 250)")
    _add_protocol_options(p)
    p.set_defaults(run=_rank)

    p = sub.add_parser(
        "finetune", help="fine-tune models by one protocol on a split of a labelled dataset and report held-out Dice",
        description="Fine-tune each model by one protocol (a new head for the dataset's classes, the same patches, "
                    "iterations, optimiser and loss for every model, each in its own input convention, batch norm "
                    "frozen) on the training part of a recorded split of the labelled cases, then report its Dice on "
                    "the held-out cases in the original image space (docs/finetune.md). A killed run continues "
                    "where it stopped when rerun with the same arguments. Exit status: 0 every model fine-tuned, 1 "
                    "some could not be (each named, with the reason), 2 none or bad arguments/data.")
    p.add_argument("--data", type=Path, required=True,
                   help="an MSD task folder or an nnU-Net raw dataset folder (dataset.json, imagesTr/, labelsTr/)")
    p.add_argument("--model", action="append", required=True, metavar="[NAME=]PATH",
                   help="any model ccfv rank reads (nnU-Net v2 model folder, MONAI bundle, ccfv bank model, brainchop "
                        "MeshNet folder, hippodeep's weights); repeatable")
    p.add_argument("--out", type=Path, default=Path("ccfv-finetune"),
                   help="output folder: dice.csv, finetune.json, split.json, models/ (default: ccfv-finetune)")
    p.add_argument("--iterations", type=int, default=250, help="fine-tuning iterations per model (default 250)")
    p.add_argument("--seed", type=int, default=0, help="fine-tuning seed: the patches drawn (default 0)")
    p.add_argument("--test-fraction", type=float, default=0.2,
                   help="share of the labelled cases held out for the Dice (default 0.2, as the workflow)")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the split (default 0)")
    p.add_argument("--split", type=Path, default=None, metavar="JSON",
                   help="use this split (train/test case lists, e.g. the workflow's results/splits/<task>.json) "
                        "instead of making one")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help=DEVICE_HELP)
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads (default 1; a fine-tuning is reproduced bit for bit with the same count)")
    p.add_argument("--trust-bundle-code", action="store_true", help=TRUST_HELP)
    _add_protocol_options(p)
    p.set_defaults(run=_finetune)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"ccfv: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
