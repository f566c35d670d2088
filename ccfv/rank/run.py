"""``ccfv rank``: which of my own pre-trained 3D segmentation models should I fine-tune on my own dataset?

The paper's question for one user, without Snakemake (docs/rank.md). For every model given:

1. load it without executing anything from its files (:mod:`ccfv.models`, one module per format): an
   nnU-Net v2 trained model folder, a ccfv bank model, a MONAI bundle (literal config entries only unless
   ``trust_bundle_code``), or a ``torch.nn.Module`` handed over from Python (:class:`ccfv.models.TorchModel`);
2. preprocess the user's labelled cases as the model expects them (``LoadedModel``: the model's own nnU-Net
   plans, the target's own nnU-Net plans for a bank model, the bundle's own transforms, or the caller's
   callable), once per distinct preprocessing;
3. sample decoder features during sliding-window inference (``ccfv.features.sampler``) and score them
   (``ccfv.scores.scoring``, the metrics of the paper's Table 1).

A model that cannot be applied (missing files, an unsafe or unreadable checkpoint, a bundle needing code,
another number of input channels, a 2D configuration) is reported with the reason while the others are
still ranked; a model trained on another modality (or channel order) than the target's is ranked with a
warning. The output folder receives ``ranking.csv``, ``ranking.json``, ``ranking.png``, the features files
and, with known Dice (``--dice``), ``agreement.csv``, each written atomically.
"""
from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .. import __version__
from ..bank.networks import network_parameter_count
from ..features.settings import SamplingSettings
from ..finetune.protocol import FinetuneProtocol
from ..finetune.run import confirm_ranking
from ..models import load_model, name_models
from ..models.base import ModelError
from ..models.preprocessing import Preprocessor, safe_name
from ..preprocess.dataset import open_dataset
from .agreement import (
    agreement_per_metric,
    baseline_agreement,
    dice_health,
    methods_ranking_stability,
    ranks,
    read_dice,
)
from .modality import modality_warnings
from .outputs import Ranking, write_outputs
from .recommendation import CONFIDENCE_RESAMPLES, RECOMMENDED_METRIC, recommend, top_pick_confidence

#: What ``--metric`` accepts; ``all`` is every one of them.
RANK_METRICS = ("ccfv", "logme", "leep", "gbc", "transrate", "nce", "hscore", "ccfv_released", "knn", "ccfv_disc",
                "ccfv_varied", "rankme")
#: Labelled cases a ranking needs at least: CC-FV's class consistency (eq. 2) compares a class between cases.
MIN_CASES = 2
#: The default: the recommended metric first (the table is ordered by the first metric; docs/rank.md says why
#: it is LogME), then CC-FV and the paper's other baselines.
DEFAULT_RANK_METRICS = (RECOMMENDED_METRIC, "ccfv", "leep", "gbc", "transrate")


def metric_definitions(names: Sequence[str] | None, features_as_given: bool = False) -> dict[str, dict]:
    """{name: definition} of ``--metric`` values (``all``: every one of ``RANK_METRICS``), each with the
    options of :data:`ccfv.scores.scoring.DEFAULT_METRICS` (GBC's diagonal Gaussian) or its function's defaults:
    TransRate and GBC preprocess the features as their released pipelines do, unless
    ``features_as_given`` (``--features-as-given``, :func:`ccfv.scores.scoring.features_as_given`)."""
    from ..scores.scoring import DEFAULT_METRICS, EXTRA_METRICS
    from ..scores.scoring import features_as_given as as_given

    names = list(names or DEFAULT_RANK_METRICS)
    if "all" in names:
        names = [n for n in names if n != "all"] + [m for m in RANK_METRICS if m not in names]
    unknown = [n for n in names if n not in RANK_METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; known: {list(RANK_METRICS)} or all")
    # The workflow's defaults where it has one (GBC's diagonal Gaussian), the function's otherwise.
    known = {**DEFAULT_METRICS, **EXTRA_METRICS}
    definitions = {n: dict(known.get(n, {"method": n})) for n in dict.fromkeys(names)}
    return as_given(definitions) if features_as_given else definitions


def rank_models(data: Path, specs: Sequence[Any], out: Path, *, metrics: Sequence[str] | None = None,
                device: str = "auto", dice_file: Path | None = None, max_cases: int | None = None,
                sampling: SamplingSettings | dict | None = None, threads: int | None = None, features_as_given: bool = False,
                trust_bundle_code: bool = False, progress: bool = True,
                confidence_resamples: int = CONFIDENCE_RESAMPLES,
                log: Callable[[str], None] | None = None, confirm: int = 0,
                confirm_protocol: FinetuneProtocol | None = None) -> Ranking:
    """Rank every model of ``specs`` on the labelled cases of ``data`` and write the outputs into ``out``.

    ``specs``: ``[NAME=]PATH`` strings or paths (nnU-Net v2 model folders, ccfv bank models, MONAI bundles;
    ``trust_bundle_code`` lets MONAI evaluate a bundle's code, see :mod:`ccfv.models.bundle`) and/or
    :class:`ccfv.models.TorchModel` objects (any ``torch.nn.Module`` with its decoder layers, preprocessing
    and patch size; docs/rank.md has an example). ``data``: an MSD task folder or an nnU-Net raw dataset.

    The first metric orders the table and makes the recommendation (``ranking.json``'s ``recommendation``): the
    model it ranks first and the share of ``confidence_resamples`` case bootstrap resamples in which it stays
    first (:func:`ccfv.rank.recommendation.top_pick_confidence`; 0: not computed).

    With ``dice_file`` the known Dice is compared with every metric and checked by the ground-truth health
    rule (:func:`dice_health`, ``ground_truth`` in ``ranking.json``). ``features_as_given``: TransRate and
    GBC without their released pipelines' preprocessing (:func:`ccfv.scores.scoring.features_as_given`).

    With ``confirm`` = K > 0 (``--confirm K``), the K best models by the first metric are then fine-tuned by
    the protocol (``confirm_protocol``, default :class:`ccfv.finetune.protocol.FinetuneProtocol`; seed: the
    sampling seed) on a split of the dataset recorded in ``out/confirm/`` and scored on its held-out cases
    (:func:`ccfv.finetune.run.confirm_ranking`): each row's ``finetuned_dice``, and ``confirm`` in
    ``ranking.json``.

    Errors in the arguments, the dataset or ``--dice`` raise (ValueError, FileNotFoundError) before any model is
    loaded, leaving ``out`` as it was; among them a dataset with fewer than :data:`MIN_CASES` labelled cases (after
    ``max_cases``): class consistency compares a class across cases, so one case cannot be ranked on. An error of
    one model is recorded in ``Ranking.failed`` and the others are ranked.
    """
    import torch
    from tqdm.auto import tqdm

    from ..bank.networks import pick_device
    from ..models.torch_module import TorchModel
    from ..scores.scoring import compute_scores

    log = log or (lambda message: print(message, file=sys.stderr, flush=True))
    definitions = metric_definitions(metrics, features_as_given=features_as_given)
    metric_names = list(definitions)
    if not specs:
        raise ValueError("no --model given")
    if max_cases is not None and max_cases < MIN_CASES:
        raise ValueError(f"--max-cases {max_cases}: ranking needs at least {MIN_CASES} labelled cases (class "
                         "consistency compares each class across cases)")
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"--device {device!r}: one of auto, cpu, cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: torch sees no CUDA device here (use --device cpu or auto)")
    torch_device = pick_device(device)
    if threads:
        torch.set_num_threads(int(threads))
    sampling = SamplingSettings.from_mapping(sampling)
    if dice_file is not None:
        read_dice(dice_file)  # a malformed file is an error before any work
    if isinstance(confirm, bool) or not isinstance(confirm, int) or confirm < 0:
        raise ValueError(f"--confirm {confirm!r}: the number of top models to fine-tune, an integer >= 0")
    confirm_protocol = confirm_protocol or FinetuneProtocol()
    named = name_models(specs)

    out = Path(out)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    # Preprocessed arrays can be large: they go beside the outputs (not /tmp) and are removed at the end.
    work = Path(tempfile.mkdtemp(dir=out, prefix=".work-"))
    try:
        dataset = open_dataset(Path(data), work)
        dice = None
        if dice_file is not None:
            dice = read_dice(dice_file, targets=[dataset.source.name, dataset.name])
            unknown = sorted(set(dice) - {n for n, _ in named})
            if len(unknown) == len(dice):
                raise ValueError(f"{dice_file}: none of its models {sorted(dice)} is among the ranked models "
                                 f"{[n for n, _ in named]}")
        case_ids = list(dataset.cases)
        if max_cases is not None and max_cases < len(case_ids):
            chosen = np.random.default_rng(sampling.seed).choice(len(case_ids), size=max_cases, replace=False)
            case_ids = [case_ids[i] for i in sorted(chosen)]
        if len(case_ids) < MIN_CASES:
            raise ValueError(f"{dataset.source}: {len(case_ids)} labelled case(s); ranking needs at least {MIN_CASES} "
                             "(class consistency compares each class across cases, so every model's scores would be "
                             "undefined); add labelled cases to imagesTr/ and labelsTr/")
        log(f"ccfv rank: {len(named)} model(s) on {len(case_ids)} labelled case(s) of {dataset.source} "
            f"(classes {dataset.class_ids}), device {torch_device}")
        preprocessor = Preprocessor(dataset, work)
        features_dir = out / "features"
        features_dir.mkdir(exist_ok=True)
        rows, failed = [], []
        for name, spec in tqdm(named, desc="models", unit="model", disable=not progress):
            path = spec if isinstance(spec, Path) else Path(name)
            try:
                model = spec.load() if isinstance(spec, TorchModel) else \
                    load_model(name, spec, trust_bundle_code=trust_bundle_code)
                if model.num_input_channels is not None and model.num_input_channels != dataset.num_channels:
                    raise ModelError(
                        f"{path}: expects {model.num_input_channels} input channel(s) "
                        f"{model.modalities or ''}, the dataset has {dataset.num_channels} "
                        f"{dataset.dataset_json['channel_names']}")
                model_warnings = modality_warnings(model.modalities, dataset.modalities)
                for warning in model_warnings:
                    log(f"ccfv rank: model {name!r}: {warning}")
                model.network.to(torch_device)
                features = features_dir / f"{safe_name(name)}.h5"
                sampling.sample(
                    model.network, model.layers, preprocessor.cases(model, case_ids), features,
                    class_ids=dataset.class_ids, patch_size=model.patch_size, model_id=name,
                    architecture=model.architecture, target=dataset.name, device=torch_device,
                    num_cases=len(case_ids), progress=progress,
                )
                scores = compute_scores(features, definitions)
            except (ModelError, ValueError, FileNotFoundError, RuntimeError, TypeError) as err:
                message = str(err)
                if not message.startswith(str(path)):
                    message = f"{path}: {message}"
                failed.append({"model": name, "path": str(path), "error": message})
                log(f"ccfv rank: model {name!r} not ranked: {message}")
                continue
            rows.append({"model": name, "path": str(path), "kind": model.kind, "architecture": model.architecture,
                         "checkpoint": None if model.checkpoint is None else str(model.checkpoint),
                         "sha256": model.sha256, "layers": list(model.layers), "patch_size": list(model.patch_size),
                         "features": str(features.relative_to(out)), "scores": scores,
                         "dice": None if dice is None else dice.get(name),
                         "source_dataset": model.source_dataset, "modalities": model.modalities,
                         "parameters": network_parameter_count(model.network, model.details.get("head")),
                         "warnings": model_warnings})
            del model
            if torch_device.type == "cuda":
                torch.cuda.empty_cache()
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        if created:  # a bad dataset (or Ctrl-C) leaves nothing behind
            shutil.rmtree(out, ignore_errors=True)
        raise

    for metric in metric_names:
        for row, r in zip(rows, ranks([row["scores"][metric] for row in rows]) if rows else []):
            row.setdefault("ranks", {})[metric] = r
    rows.sort(key=lambda row: (row["ranks"][metric_names[0]], row["model"]))
    confidence = None
    if len(rows) >= 2 and confidence_resamples:
        log(f"ccfv rank: bootstrap of the top pick by {metric_names[0]} over {len(case_ids)} cases "
            f"({confidence_resamples} resamples)")
        confidence = top_pick_confidence({row["model"]: out / row["features"] for row in rows},
                                         definitions[metric_names[0]], confidence_resamples, seed=sampling.seed)
    confirmed = None
    try:
        if confirm and rows:
            specs_by_name = dict(named)

            def loader(name: str):
                spec = specs_by_name[name]
                return (lambda: spec.load()) if isinstance(spec, TorchModel) else \
                    (lambda: load_model(name, spec, trust_bundle_code=trust_bundle_code))

            confirmed = confirm_ranking(rows[:confirm], {r["model"]: loader(r["model"]) for r in rows[:confirm]},
                                        preprocessor, confirm_protocol, sampling.seed, out / "confirm",
                                        torch_device, log)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    with_dice = dice is not None and bool(rows)
    agreements = agreement_per_metric(rows, metric_names) if with_dice else None
    baselines = baseline_agreement(rows) if with_dice else None
    ranking = Ranking(
        rows=rows, failed=failed, metrics=metric_names, correlations=agreements,
        ground_truth=dice_health(rows, dataset.name) if with_dice else None, baselines=baselines,
        method_ranking_stability=methods_ranking_stability(agreements, baselines, rows) if with_dice else None,
        meta={"data": str(dataset.source), "dataset": dataset.name, "cases": case_ids, "classes": dataset.class_ids,
              "device": str(torch_device), "sampling": sampling.as_dict(), "metrics": definitions,
              "ranked_by": metric_names[0], "ccfv_version": __version__,
              "recommendation": recommend(rows, metric_names[0], confidence) if rows else None,
              "dice_file": None if dice_file is None else str(dice_file), "confirm": confirmed},
    )
    write_outputs(ranking, out)
    return ranking
