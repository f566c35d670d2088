"""``ccfv rank``: which of my own pre-trained 3D segmentation models should I fine-tune on my own dataset?

The paper's question for one user, without Snakemake (docs/rank.md). For every model given:

1. load it without executing anything from its files (:mod:`ccfv.models`, one module per format): an
   nnU-Net v2 trained model folder, a ccfv bank model, a MONAI bundle (literal config entries only unless
   ``trust_bundle_code``), or a ``torch.nn.Module`` handed over from Python (:class:`ccfv.models.TorchModel`);
2. preprocess the user's labelled cases as the model expects them (``LoadedModel``: the model's own nnU-Net
   plans, the target's own nnU-Net plans for a bank model, the bundle's own transforms, or the caller's
   callable), once per distinct preprocessing;
3. sample decoder features during sliding-window inference (``ccfv.sampling``) and score them
   (``ccfv.scoring``, the metrics of the paper's Table 1).

A model that cannot be applied (missing files, an unsafe or unreadable checkpoint, a bundle needing code,
another number of input channels, a 2D configuration) is reported with the reason while the others are
still ranked; a model trained on another modality (or channel order) than the target's is ranked with a
warning. The output folder receives ``ranking.csv``, ``ranking.json``, ``ranking.png``, the features files
and, with known Dice (``--dice``), ``agreement.csv``, each written atomically.
"""
from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import math
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from . import __version__
from .atomic import write_json, write_text
from .models import LoadedModel, ModelError, load_model, model_names, parse_model_spec
from .models.base import read_json as _read_json
from .models.nnunet import CHECKPOINT_NAMES  # noqa: F401  (importable from here as before)

#: What ``--metric`` accepts; ``all`` is every one of them.
RANK_METRICS = ("ccfv", "logme", "leep", "gbc", "transrate", "nce", "hscore", "ccfv_released")
#: The default: CC-FV first (the table is ordered by the first metric), then the paper's main baselines.
DEFAULT_RANK_METRICS = ("ccfv", "logme", "leep", "gbc", "transrate")
#: Sampling as in the demo config (config/config.yaml, docs/sampling.md).
DEFAULT_SAMPLING = {"total": 1000, "minimum": 20, "n_global": 200, "n_background": 400, "step_size": 0.5,
                    "batch_size": 2, "seed": 0}


@dataclass
class Dataset:
    """A labelled dataset in nnU-Net raw form (an MSD task is converted to it first)."""

    name: str
    source: Path                      # what the user gave
    raw: Path                         # the nnU-Net raw folder read
    dataset_json: dict
    cases: dict[str, dict]            # case id -> {"images": [paths], "label": path}
    class_ids: list[int]

    @property
    def num_channels(self) -> int:
        return len(self.dataset_json["channel_names"])

    @property
    def modalities(self) -> list[str]:
        """The channel names in channel order (nnU-Net's ``channel_names``: "CT", "T2", "ADC", ...)."""
        names = self.dataset_json["channel_names"]
        return [str(names[k]) for k in sorted(names, key=lambda k: int(k))]


# ----------------------------------------------------------------------------------------------
# The dataset
# ----------------------------------------------------------------------------------------------


def _class_ids(labels: dict, where: Path) -> list[int]:
    ids = []
    for name, value in labels.items():
        if isinstance(value, (list, tuple)):
            raise ValueError(f"{where}: label {name!r} is a region ({value}); region-based datasets are not "
                             "supported by ccfv rank")
        try:
            ids.append(int(value))
        except (TypeError, ValueError):
            raise ValueError(f"{where}: label {name!r} has the value {value!r}, not an integer") from None
    foreground = sorted(i for i in ids if i > 0)
    if not foreground:
        raise ValueError(f"{where}: no foreground label (a value > 0) in 'labels'")
    return foreground


def open_dataset(path: Path, work: Path) -> Dataset:
    """The labelled cases of an MSD task folder (validated, then converted with nnU-Net's converter into
    ``work``) or of an nnU-Net raw dataset folder (read in place)."""
    from .nnunet_paths import parse_task

    from .data.validate import nested_dataset_json

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such dataset folder")
    if not (path / "dataset.json").exists() and (nested := nested_dataset_json(path)) is not None:
        raise FileNotFoundError(f"{path / 'dataset.json'}: missing; the dataset is one level down: {nested} (the "
                                f"folder holds a nested copy of itself); pass --data {nested.parent}")
    dataset_json = _read_json(path / "dataset.json")
    if "channel_names" in dataset_json or "file_ending" in dataset_json:  # nnU-Net v2 raw
        missing = [k for k in ("channel_names", "labels", "file_ending") if k not in dataset_json]
        if missing:
            raise ValueError(f"{path / 'dataset.json'}: nnU-Net raw dataset without {missing}")
        raw = path
    elif "modality" in dataset_json or "training" in dataset_json:  # MSD
        from .data.validate import validate_or_raise
        from .preprocessing import convert_msd_task

        try:
            parse_task(path.name)
        except ValueError as err:
            raise ValueError(f"{path}: an MSD task folder must be named TaskNN_Name ({err})") from None
        validate_or_raise(path, test_images=False)
        raw = convert_msd_task(path, work / "raw")
        dataset_json = _read_json(raw / "dataset.json")
    else:
        raise ValueError(f"{path / 'dataset.json'}: neither an MSD task ('modality', 'training') nor an nnU-Net "
                         "raw dataset ('channel_names', 'labels', 'file_ending')")
    class_ids = _class_ids(dataset_json["labels"], path / "dataset.json")
    from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets

    try:
        cases = get_filenames_of_train_images_and_targets(str(raw), dataset_json)
    except (OSError, KeyError) as err:
        raise ValueError(f"{raw}: cannot list the training cases ({err})") from None
    if not cases:
        raise ValueError(f"{raw}: no labelled training cases (imagesTr/, labelsTr/)")
    for case, files in cases.items():
        absent = [f for f in [*files["images"], files["label"]] if not Path(f).is_file()]
        if absent:
            raise FileNotFoundError(f"{raw}: case {case!r}: missing {absent}")
        if len(files["images"]) != len(dataset_json["channel_names"]):
            raise ValueError(f"{raw}: case {case!r} has {len(files['images'])} image file(s) for "
                             f"{len(dataset_json['channel_names'])} channel(s)")
    return Dataset(name=raw.name, source=path, raw=raw, dataset_json=dataset_json, cases=dict(sorted(cases.items())),
                   class_ids=class_ids)


# ----------------------------------------------------------------------------------------------
# The models
# ----------------------------------------------------------------------------------------------


#: Channel names that are all MR (nnU-Net datasets name MR channels by sequence); anything else is its own kind.
MR_NAMES = frozenset({"MR", "MRI", "T1", "T1W", "T1GD", "T1C", "T1CE", "T2", "T2W", "FLAIR", "ADC", "DWI", "PD",
                      "NONCT"})


def _modality_kind(name: str) -> str:
    key = re.sub(r"[^A-Z0-9]", "", str(name).upper())
    return "CT" if key == "CT" else "MR" if key in MR_NAMES or key.startswith("MR") else key


def modality_warnings(model: Sequence[str] | None, target: Sequence[str]) -> list[str]:
    """Warnings when a model was trained on other channels than the target has: another modality (CT against
    MR: CT normalisation of MR intensities makes the features meaningless), or the same channels in another
    order. Empty when the model does not say what it was trained on."""
    if not model or len(model) != len(target):
        return []
    model, target = [str(m) for m in model], [str(t) for t in target]
    if sorted(m.upper() for m in model) == sorted(t.upper() for t in target) and \
            [m.upper() for m in model] != [t.upper() for t in target]:
        return [f"channels in another order: the model was trained on {model}, the target has {target}; "
                "reorder the target's channels"]
    differ = [(i, m, t) for i, (m, t) in enumerate(zip(model, target)) if _modality_kind(m) != _modality_kind(t)]
    if differ:
        pairs = ", ".join(f"channel {i}: model {m}, target {t}" for i, m, t in differ)
        return [f"modality mismatch ({pairs}): the model's intensity normalisation does not fit the target's "
                "intensities, so its features (and scores) mean little"]
    return []


# ----------------------------------------------------------------------------------------------
# Preprocessing
# ----------------------------------------------------------------------------------------------


def _dataset_plans(dataset: Dataset, work: Path) -> dict:
    """nnU-Net's own plans for the dataset (fingerprint + default planner), for ccfv bank models: the
    workflow preprocesses every target with its own spacing and normalisation."""
    from .nnunet_paths import nnunet_environment

    cached = work / "dataset_plans.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    match = re.fullmatch(r"Dataset(\d{3})_.+", dataset.raw.name)
    number, name = (int(match.group(1)), dataset.raw.name) if match else (999, f"Dataset999_{dataset.raw.name}")
    raw_root = work / "plans-raw"
    raw_root.mkdir(parents=True, exist_ok=True)
    link = raw_root / name
    if not link.exists():
        link.symlink_to(dataset.raw.resolve(), target_is_directory=True)
    chatter = io.StringIO()  # nnU-Net prints every plan it considers; shown only if planning fails
    try:
        with nnunet_environment(raw=raw_root, preprocessed=work / "plans", results=work / "plans-results", n_proc=1), \
                contextlib.redirect_stdout(chatter):
            from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprints, plan_experiments

            extract_fingerprints([number], num_processes=1, check_dataset_integrity=True, verbose=False,
                                 show_progress_bar=False)
            plan_experiments([number])
    except BaseException:
        sys.stderr.write(chatter.getvalue())
        raise
    plans = json.loads((work / "plans" / name / "nnUNetPlans.json").read_text())
    write_json(cached, plans)
    return plans


def _preprocessing_key(plans: dict, configuration: str) -> str:
    """What of a plans file the preprocessed arrays depend on (not the network): models that agree on it
    share one preprocessed copy of the dataset."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    conf = PlansManager(plans).get_configuration(configuration).configuration
    relevant = {k: conf.get(k) for k in ("spacing", "normalization_schemes", "use_mask_for_norm", "preprocessor_name",
                                         "resampling_fn_data", "resampling_fn_data_kwargs", "resampling_fn_seg",
                                         "resampling_fn_seg_kwargs")}
    relevant["transpose_forward"] = plans.get("transpose_forward")
    relevant["intensity"] = plans.get("foreground_intensity_properties_per_channel")
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


class Preprocessor:
    """Each case preprocessed once per distinct preprocessing (``_preprocessing_key`` of the nnU-Net plans,
    or a model's own ``preprocess_key``), kept as .npy in the work folder while the ranking runs."""

    def __init__(self, dataset: Dataset, work: Path):
        self.dataset, self.work = dataset, work

    def plans_for(self, model: LoadedModel) -> tuple[dict, str]:
        if model.plans is not None:
            return model.plans, model.configuration
        return _dataset_plans(self.dataset, self.work), "3d_fullres"

    def cases(self, model: LoadedModel, case_ids: Sequence[str]):
        """Yield (case id, image [C, D, H, W] float32, seg [D, H, W] int16) in the model's preprocessing."""
        if model.preprocess is not None:
            yield from self._callable_cases(model, case_ids)
            return
        from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json
        from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        plans, configuration = self.plans_for(model)
        folder = self.work / "preprocessed" / _preprocessing_key(plans, configuration)
        folder.mkdir(parents=True, exist_ok=True)
        manager = PlansManager(plans)
        conf = manager.get_configuration(configuration)
        first = next(iter(self.dataset.cases.values()))["images"][0]
        reader = determine_reader_writer_from_dataset_json(self.dataset.dataset_json, first, verbose=False)()
        preprocessor = DefaultPreprocessor(verbose=False)
        for case in case_ids:
            image_file, seg_file = folder / f"{case}.npy", folder / f"{case}_seg.npy"
            if not (image_file.is_file() and seg_file.is_file()):
                files = self.dataset.cases[case]
                try:
                    data, properties = reader.read_images(files["images"])
                    seg, _ = reader.read_seg(files["label"])
                except Exception as err:  # the readers raise anything from RuntimeError to IndexError
                    raise ValueError(f"{self.dataset.raw}: case {case!r}: cannot read {files} ({err})") from None
                data, seg, _ = preprocessor.run_case_npy(data, seg, properties, manager, conf,
                                                         self.dataset.dataset_json)
                np.save(image_file, np.asarray(data, dtype=np.float32))
                np.save(seg_file, np.asarray(seg[0], dtype=np.int16))
            yield case, np.load(image_file), np.load(seg_file)

    def _callable_cases(self, model: LoadedModel, case_ids: Sequence[str]):
        folder = self.work / "preprocessed" / _safe_name(model.preprocess_key or model.name)
        folder.mkdir(parents=True, exist_ok=True)
        for case in case_ids:
            image_file, seg_file = folder / f"{case}.npy", folder / f"{case}_seg.npy"
            if not (image_file.is_file() and seg_file.is_file()):
                files = self.dataset.cases[case]
                image, seg = model.preprocess([Path(f) for f in files["images"]], Path(files["label"]))
                image, seg = np.asarray(image, dtype=np.float32), np.asarray(seg)
                if image.ndim != 4 or seg.shape[-3:] != image.shape[1:]:
                    raise ValueError(f"case {case!r}: the preprocessing returned image {image.shape} and label "
                                     f"{seg.shape}; expected [C, D, H, W] and [D, H, W] on one grid")
                np.save(image_file, image)
                np.save(seg_file, seg.reshape(image.shape[1:]).astype(np.int16))
            yield case, np.load(image_file), np.load(seg_file)


# ----------------------------------------------------------------------------------------------
# Ranking
# ----------------------------------------------------------------------------------------------


def default_layer_ratios(n_layers: int) -> list[float]:
    """Half as many samples per stage as the next finer one, all of them at full resolution (the demo's
    ``[0.25, 0.5, 1.0]`` for three stages): deep stages hold fewer distinct voxels."""
    return [0.5 ** (n_layers - 1 - i) for i in range(n_layers)]


def metric_definitions(names: Sequence[str] | None, features_as_given: bool = False) -> dict[str, dict]:
    """{name: definition} of ``--metric`` values (``all``: every one of ``RANK_METRICS``), each with the
    options of :data:`ccfv.scoring.DEFAULT_METRICS` (GBC's diagonal Gaussian) or its function's defaults:
    TransRate and GBC preprocess the features as their released pipelines do, unless
    ``features_as_given`` (``--features-as-given``, :func:`ccfv.scoring.features_as_given`)."""
    from .scoring import DEFAULT_METRICS, features_as_given as as_given

    names = list(names or DEFAULT_RANK_METRICS)
    if "all" in names:
        names = [n for n in names if n != "all"] + [m for m in RANK_METRICS if m not in names]
    unknown = [n for n in names if n not in RANK_METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; known: {list(RANK_METRICS)} or all")
    # The workflow's defaults where it has one (GBC's diagonal Gaussian), the function's otherwise.
    definitions = {n: dict(DEFAULT_METRICS.get(n, {"method": n})) for n in dict.fromkeys(names)}
    return as_given(definitions) if features_as_given else definitions


def read_dice(path: Path, targets: Sequence[str] | None = None) -> dict[str, float]:
    """``--dice FILE``: known fine-tuned Dice per model, a CSV with a header naming a ``model`` column and a
    ``dice`` (or ``dice_mean_over_seeds``) column. With a ``target`` column (the workflow's
    ``results/tables/scores_and_dice.csv``) only the rows whose target is one of ``targets`` are read
    (``targets=None``: every row is checked, for a file read before the dataset is known)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing")
    reader = csv.DictReader(io.StringIO(path.read_text()))
    columns = reader.fieldnames or []
    dice_column = next((c for c in ("dice", "dice_mean_over_seeds") if c in columns), None)
    if "model" not in columns or dice_column is None:
        raise ValueError(f"{path}: the first line must name the columns 'model' and 'dice' (found {columns})")
    out: dict[str, float] = {}
    keys: set[tuple[str | None, str]] = set()
    seen_targets = set()
    for row in reader:
        line = reader.line_num
        if "target" in columns and targets is not None:
            seen_targets.add(row["target"])
            if row["target"] not in targets:
                continue
        model = (row["model"] or "").strip()
        try:
            value = float(row[dice_column])
        except (TypeError, ValueError):
            raise ValueError(f"{path}: line {line}: {dice_column} {row[dice_column]!r} is not a number") from None
        if not model or not math.isfinite(value):
            raise ValueError(f"{path}: line {line}: needs a model name and a finite {dice_column}")
        if (row.get("target"), model) in keys:
            raise ValueError(f"{path}: line {line}: model {model!r} appears twice"
                             + (" (add a 'target' column to tell datasets apart)" if "target" not in columns else ""))
        keys.add((row.get("target"), model))
        out[model] = value
    if not out:
        where = f" for the target {' or '.join(targets)} (targets in the file: {sorted(seen_targets)})" \
            if seen_targets else ""
        raise ValueError(f"{path}: no rows{where}")
    return out


def ranks(values: Sequence[float]) -> list[int]:
    """1 for the highest score; equal scores share the better rank."""
    from scipy.stats import rankdata

    return [int(r) for r in rankdata(-np.asarray(values, dtype=float), method="min")]


#: Bootstrap of the agreement with ``--dice``: resamples of the models with replacement, seeded.
AGREEMENT_BOOTSTRAP = {"n_resamples": 1000, "seed": 0}


def _finite_or_none(value) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def agreement(scores: Sequence[float], dice: Sequence[float], models: Sequence[str]) -> dict[str, Any]:
    """How one ranking of the models with a known Dice agrees with that Dice (docs/rank.md), JSON-ready
    (undefined values are None): weighted Kendall's tau and Pearson (as Table 1), Kendall's tau-b, Rel@1 and
    the top-3 hit (:mod:`ccfv.results`), each with a 95% percentile bootstrap interval under ``<name>_ci``
    (:data:`AGREEMENT_BOOTSTRAP`, the same resamples for every method), the top-1 regret, and the
    leave-one-out stability of the weighted tau (``loo_tau_min``, ``loo_tau_max``, ``loo_max_change``,
    ``most_influential``: the model whose removal moves it most). Needs at least 3 models (else only the
    regret and a ``note``)."""
    from .results import SELECTION_MEASURES, STATISTICS, bootstrap_interval, loo_stability, statistic, top1_regret

    entry: dict[str, Any] = {"n": len(dice)}
    if len(dice) < 3:
        entry.update({name: None for name in (*STATISTICS, *SELECTION_MEASURES)})
        entry["note"] = "needs the Dice of at least 3 ranked models"
        if dice:
            entry["top1_regret"] = top1_regret(scores, dice)["regret"]
        return entry
    indices = np.random.default_rng(AGREEMENT_BOOTSTRAP["seed"]).integers(
        0, len(dice), size=(AGREEMENT_BOOTSTRAP["n_resamples"], len(dice)))
    for name in (*STATISTICS, *SELECTION_MEASURES):
        entry[name] = _finite_or_none(statistic(name, scores, dice))
        ci = bootstrap_interval(scores, dice, name, indices=indices)
        entry[f"{name}_ci"] = None if not math.isfinite(ci["low"]) else [ci["low"], ci["high"]]
    entry["top1_regret"] = top1_regret(scores, dice)["regret"]
    stable = loo_stability(scores, dice)
    entry.update({k: _finite_or_none(stable[k]) for k in ("loo_tau_min", "loo_tau_max", "loo_max_change")})
    entry["most_influential"] = None if stable["most_influential"] is None else models[stable["most_influential"]]
    return entry


def correlations(rows: list[dict], metrics: Sequence[str]) -> dict[str, dict]:
    """{metric: :func:`agreement` of its scores with the known Dice}, over the models with a Dice:
    weighted tau, Pearson, Kendall's tau-b, Rel@1, top-3 hit with bootstrap intervals, top-1 regret (Dice of
    the best model minus Dice of the one the metric ranks first) and the leave-one-out stability."""
    known = [r for r in rows if r.get("dice") is not None]
    dice = [r["dice"] for r in known]
    models = [r["model"] for r in known]
    return {metric: agreement([r["scores"][metric] for r in known], dice, models) for metric in metrics}


#: The static rankers ``ccfv rank --dice`` compares the metrics with. Pretrained-first and larger-source-first
#: need what a user's model does not say (every model given is pretrained; its source's size is unknown).
RANK_BASELINES = {"larger_model_first": "Larger model first", "random": "Random ranking (expected)"}


def baseline_agreement(rows: list[dict]) -> dict[str, dict]:
    """:func:`agreement` of the static rankers with the known Dice: ``larger_model_first`` (the models'
    weights, ``parameters``, heads excluded; when every model with a Dice has a count) and ``random``
    (every model tied: Rel@1 and the top-3 hit are their expectations over random orders; the correlations
    are 0 in expectation and have no interval)."""
    known = [r for r in rows if r.get("dice") is not None]
    dice = [r["dice"] for r in known]
    models = [r["model"] for r in known]
    out = {}
    if known and all(r.get("parameters") is not None for r in known):
        out["larger_model_first"] = agreement([float(r["parameters"]) for r in known], dice, models)
    random = agreement([0.0] * len(known), dice, models)
    if len(known) >= 3:
        for name in ("tau", "pearson", "kendall"):
            random[name], random[f"{name}_ci"] = 0.0, None
        random.update({"loo_tau_min": None, "loo_tau_max": None, "loo_max_change": None, "most_influential": None})
    out["random"] = random
    return out


def method_ranking_stability(correlations_: dict[str, dict], baselines: dict[str, dict], rows: list[dict]) -> float | None:
    """Mean Kendall's tau-b between the order of the metrics and ``larger_model_first`` by weighted tau on
    all models with a Dice and with one of them left out (:func:`ccfv.results.method_ranking_stability`);
    None when undefined (fewer than 2 methods with a weighted tau, or fewer than 4 models)."""
    from .results import leave_one_out, statistic
    from .results import method_ranking_stability as stability

    known = [r for r in rows if r.get("dice") is not None]
    if len(known) < 4:
        return None
    dice = [r["dice"] for r in known]
    scores = {m: [r["scores"][m] for r in known] for m in correlations_}
    if "larger_model_first" in baselines:
        scores["larger_model_first"] = [float(r["parameters"]) for r in known]
    full = {m: statistic("tau", s, dice) for m, s in scores.items()}
    loo = {m: leave_one_out(s, dice) for m, s in scores.items()}
    return _finite_or_none(stability(full, loo))


def network_parameter_count(network) -> int:
    """The number of weights of a loaded network: the elements of its distinct state-dict tensors (a tensor
    reachable under two names, as nnU-Net's encoder is, counts once) without the segmentation heads
    (:func:`ccfv.networks.is_head`: nnU-Net's ``seg_layers``, UNETR's ``out``; another network's head is
    counted). For a ccfv bank model this equals :func:`ccfv.models.bank.parameter_count` of its folder."""
    from .networks import is_head

    seen, total = set(), 0
    for name, tensor in network.state_dict().items():
        key = (tensor.data_ptr(), tuple(tensor.shape), tensor.dtype)
        if is_head(name) or key in seen:
            continue
        seen.add(key)
        total += tensor.numel()
    return total


def dice_health(rows: list[dict], dataset: str = "") -> dict:
    """The ground-truth health check (:func:`ccfv.ground_truth.check_target`, default thresholds) on the
    ``--dice`` values of the ranked models: can this Dice rank them at all? JSON-ready (NaN as None), with
    the thresholds under ``rule``. One value per model, so the seed-noise criterion does not apply."""
    from dataclasses import asdict

    from .ground_truth import HealthRule, check_target

    known = [r for r in rows if r.get("dice") is not None]
    rule = HealthRule()
    result = check_target([r["model"] for r in known], [[r["dice"]] for r in known], rule, target=dataset)
    clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in result.items()}
    return {**clean, "rule": asdict(rule)}


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "model"


@dataclass
class Ranking:
    rows: list[dict]
    failed: list[dict]
    metrics: list[str]
    correlations: dict | None
    meta: dict
    #: :func:`dice_health` of the ``--dice`` values (None without ``--dice``).
    ground_truth: dict | None = None
    #: :func:`baseline_agreement` with ``--dice`` (None without).
    baselines: dict | None = None
    #: :func:`method_ranking_stability` with ``--dice`` (None without, or when undefined).
    method_ranking_stability: float | None = None

    @property
    def exit_status(self) -> int:
        if not self.rows:
            return 2
        return 1 if self.failed else 0


def rank_models(data: Path, specs: Sequence[Any], out: Path, *, metrics: Sequence[str] | None = None,
                device: str = "auto", dice_file: Path | None = None, max_cases: int | None = None,
                sampling: dict | None = None, threads: int | None = None, features_as_given: bool = False,
                trust_bundle_code: bool = False, progress: bool = True,
                log: Callable[[str], None] | None = None) -> Ranking:
    """Rank every model of ``specs`` on the labelled cases of ``data`` and write the outputs into ``out``.

    ``specs``: ``[NAME=]PATH`` strings or paths (nnU-Net v2 model folders, ccfv bank models, MONAI bundles;
    ``trust_bundle_code`` lets MONAI evaluate a bundle's code, see :mod:`ccfv.models.bundle`) and/or
    :class:`ccfv.models.TorchModel` objects (any ``torch.nn.Module`` with its decoder layers, preprocessing
    and patch size; docs/rank.md has an example). ``data``: an MSD task folder or an nnU-Net raw dataset.

    With ``dice_file`` the known Dice is compared with every metric and checked by the ground-truth health
    rule (:func:`dice_health`, ``ground_truth`` in ``ranking.json``). ``features_as_given``: TransRate and
    GBC without their released pipelines' preprocessing (:func:`ccfv.scoring.features_as_given`).

    Errors in the arguments, the dataset or ``--dice`` raise before any model is loaded; an error of one
    model is recorded in ``Ranking.failed`` and the others are ranked.
    """
    import torch
    from tqdm.auto import tqdm

    from .models.torch_module import TorchModel
    from .sampling import sample_dataset
    from .scoring import compute_scores
    from .training import pick_device

    log = log or (lambda message: print(message, file=sys.stderr, flush=True))
    definitions = metric_definitions(metrics, features_as_given=features_as_given)
    metric_names = list(definitions)
    if not specs:
        raise ValueError("no --model given")
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"--device {device!r}: one of auto, cpu, cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: torch sees no CUDA device here (use --device cpu or auto)")
    torch_device = pick_device(device)
    if threads:
        torch.set_num_threads(int(threads))
    sampling = {**DEFAULT_SAMPLING, **(sampling or {})}
    if dice_file is not None:
        read_dice(dice_file)  # a malformed file is an error before any work
    given = [s for s in specs if isinstance(s, TorchModel)]
    paths = [str(s) for s in specs if not isinstance(s, TorchModel)]
    named: list[tuple[str, Any]] = model_names(paths) + [(m.name, m) for m in given]
    taken = [n for n, _ in named]
    if len(set(taken)) != len(taken):
        raise ValueError(f"model names must be unique: {taken}")

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
            chosen = np.random.default_rng(sampling["seed"]).choice(len(case_ids), size=max_cases, replace=False)
            case_ids = [case_ids[i] for i in sorted(chosen)]
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
                features = features_dir / f"{_safe_name(name)}.h5"
                sample_dataset(
                    model.network, model.layers, preprocessor.cases(model, case_ids), features,
                    class_ids=dataset.class_ids, budgets={k: sampling[k] for k in ("total", "minimum", "n_global",
                                                                                   "n_background")},
                    patch_size=model.patch_size, model_id=name, architecture=model.architecture,
                    target=dataset.name, seed=sampling["seed"], step_size=sampling["step_size"],
                    batch_size=sampling["batch_size"], layer_ratios=default_layer_ratios(len(model.layers)),
                    device=torch_device, num_cases=len(case_ids), progress=progress,
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
                         "parameters": network_parameter_count(model.network), "warnings": model_warnings})
            del model
            if torch_device.type == "cuda":
                torch.cuda.empty_cache()
    except BaseException:
        if created:  # a bad dataset (or Ctrl-C) leaves nothing behind
            shutil.rmtree(out, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)

    for metric in metric_names:
        for row, r in zip(rows, ranks([row["scores"][metric] for row in rows]) if rows else []):
            row.setdefault("ranks", {})[metric] = r
    rows.sort(key=lambda row: (row["ranks"][metric_names[0]], row["model"]))
    with_dice = dice is not None and bool(rows)
    agreements = correlations(rows, metric_names) if with_dice else None
    baselines = baseline_agreement(rows) if with_dice else None
    ranking = Ranking(
        rows=rows, failed=failed, metrics=metric_names, correlations=agreements,
        ground_truth=dice_health(rows, dataset.name) if with_dice else None, baselines=baselines,
        method_ranking_stability=method_ranking_stability(agreements, baselines, rows) if with_dice else None,
        meta={"data": str(dataset.source), "dataset": dataset.name, "cases": case_ids, "classes": dataset.class_ids,
              "device": str(torch_device), "sampling": sampling, "metrics": definitions,
              "ranked_by": metric_names[0], "ccfv_version": __version__,
              "dice_file": None if dice_file is None else str(dice_file)},
    )
    write_outputs(ranking, out)
    return ranking


# ----------------------------------------------------------------------------------------------
# Outputs
# ----------------------------------------------------------------------------------------------


def ranking_csv(ranking: Ranking) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    header = ["rank", "model", "kind", "architecture"]
    for metric in ranking.metrics:
        header += [metric, f"{metric}_rank"]
    header += ["dice", "parameters", "path", "checkpoint_sha256", "warnings"]
    writer.writerow(header)
    for row in ranking.rows:
        line = [row["ranks"][ranking.metrics[0]], row["model"], row["kind"], row["architecture"]]
        for metric in ranking.metrics:
            line += [repr(row["scores"][metric]), row["ranks"][metric]]
        line += ["" if row["dice"] is None else repr(row["dice"]),
                 "" if row.get("parameters") is None else row["parameters"], row["path"], row["sha256"] or "",
                 "; ".join(row.get("warnings") or [])]
        writer.writerow(line)
    return buffer.getvalue()


def ranking_json(ranking: Ranking) -> dict:
    return {**ranking.meta, "models": ranking.rows, "failed": ranking.failed,
            "correlations": ranking.correlations, "baselines": ranking.baselines,
            "method_ranking_stability": ranking.method_ranking_stability,
            "agreement_bootstrap": AGREEMENT_BOOTSTRAP if ranking.correlations else None,
            "ground_truth": ranking.ground_truth}


#: The measures of ``agreement.csv``, each a value and, but for the regret, a 95% bootstrap interval.
AGREEMENT_MEASURES = ("tau", "pearson", "kendall", "rel_at_1", "top3")


def agreement_csv(ranking: Ranking) -> str:
    """With ``--dice``: one line per method (the metrics, then the static rankers) with every agreement
    measure, its interval, the top-1 regret, the leave-one-out stability, the stability of the methods'
    ranking (the same on every line) and ``ground_truth``: ``ok`` or ``cannot rank`` (the health check of
    the known Dice, as in the workflow's tables)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    header = ["method", "kind", "n"]
    for name in AGREEMENT_MEASURES:
        header += [name, f"{name}_low", f"{name}_high"]
    header += ["top1_regret", "loo_tau_min", "loo_tau_max", "loo_max_change", "most_influential",
               "method_ranking_stability", "ground_truth"]
    writer.writerow(header)
    verdict = "ok" if ranking.ground_truth is None or ranking.ground_truth["can_rank"] else "cannot rank"
    methods = [(m, "metric", c) for m, c in (ranking.correlations or {}).items()]
    methods += [(m, "baseline", c) for m, c in (ranking.baselines or {}).items()]

    def cell(value):
        return "" if value is None else repr(value) if isinstance(value, float) else value

    for name, kind, c in methods:
        line = [name, kind, c["n"]]
        for measure in AGREEMENT_MEASURES:
            ci = c.get(f"{measure}_ci")
            line += [cell(c.get(measure)), *(cell(v) for v in (ci or [None, None]))]
        line += [cell(c.get(k)) for k in ("top1_regret", "loo_tau_min", "loo_tau_max", "loo_max_change",
                                          "most_influential")]
        line += [cell(ranking.method_ranking_stability), verdict]
        writer.writerow(line)
    return buffer.getvalue()


def plot_ranking(ranking: Ranking, path: Path) -> Path:
    """One panel per metric: standardised score per model (bars, best on top), or against the known Dice
    (scatter) when ``--dice`` gave it. Matplotlib's warnings (a layout that does not fit, a glyph a font
    lacks) are kept out of the terminal, where the ranked table is the output: the figure is drawn anyway."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _plot_ranking(ranking, path)


def _plot_ranking(ranking: Ranking, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .figures import standardise

    rows = ranking.rows
    n = len(ranking.metrics)
    with_dice = ranking.correlations is not None and sum(r["dice"] is not None for r in rows) >= 2
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, max(3.4, 0.45 * len(rows) + 2.2) if not with_dice else 3.4),
                             squeeze=False)
    for ax, metric in zip(axes[0], ranking.metrics):
        z = standardise([r["scores"][metric] for r in rows])
        if with_dice:
            known = [(zi, r["dice"], r["model"]) for zi, r in zip(z, rows) if r["dice"] is not None]
            ax.scatter([k[0] for k in known], [k[1] for k in known], color="tab:blue")
            for x, y, label in known:
                ax.annotate(label, (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
            c = ranking.correlations[metric]
            tau = "n/a" if c["tau"] is None else f"{c['tau']:.2f}"
            ax.set_title(f"{metric} (τw {tau})", fontsize=9)
            ax.set_xlabel("standardised score")
            ax.set_ylabel("known Dice")
        else:
            order = np.argsort(z)
            ax.barh([rows[i]["model"] for i in order], z[order], color="tab:blue")
            ax.set_title(metric, fontsize=9)
            ax.set_xlabel("standardised score")
            ax.tick_params(axis="y", labelsize=7)
    fig.suptitle(f"ccfv rank on {ranking.meta['dataset']} ({len(ranking.meta['cases'])} cases)", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    scratch = path.with_name(f".{path.name}.partial.png")
    fig.savefig(scratch, dpi=150)
    plt.close(fig)
    scratch.replace(path)
    return path


def write_outputs(ranking: Ranking, out: Path) -> None:
    out = Path(out)
    write_text(out / "ranking.csv", ranking_csv(ranking))
    write_json(out / "ranking.json", ranking_json(ranking))
    if ranking.correlations:
        write_text(out / "agreement.csv", agreement_csv(ranking))
    else:  # a rerun without --dice into the same folder: no agreement from an earlier run stays behind
        (out / "agreement.csv").unlink(missing_ok=True)
    if ranking.rows:
        plot_ranking(ranking, out / "ranking.png")


def _fmt(value) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def _with_interval(entry: dict, name: str) -> str:
    """``0.4000 [0.10, 0.80]``: a measure and its bootstrap interval, when it has one."""
    ci = entry.get(f"{name}_ci")
    return _fmt(entry.get(name)) + ("" if not ci else f" [{ci[0]:.2f}, {ci[1]:.2f}]")


def print_ranking(ranking: Ranking, out: Path, console=None) -> None:
    """The ranked table (rich), the models that could not be ranked, and the correlations with ``--dice``."""
    from rich.console import Console
    from rich.table import Table

    if console is None:
        console = Console()
        if not console.is_terminal:  # a log file or a pipe: do not cut the table at 80 columns
            console = Console(width=200)
    table = Table(title=f"Models ranked on {ranking.meta['dataset']} by {ranking.metrics[0]} (higher is better)")
    table.add_column("#", justify="right")
    table.add_column("model", no_wrap=True)
    table.add_column("architecture")
    for metric in ranking.metrics:
        table.add_column(metric, justify="right")
    has_dice = any(r["dice"] is not None for r in ranking.rows)
    if has_dice:
        table.add_column("known Dice", justify="right")
    has_warnings = any(r.get("warnings") for r in ranking.rows)
    if has_warnings:
        table.add_column("warning")
    for row in ranking.rows:
        cells = [str(row["ranks"][ranking.metrics[0]]), row["model"], row["architecture"]]
        cells += [f"{row['scores'][m]:.4g} ({row['ranks'][m]})" for m in ranking.metrics]  # score (its rank)
        if has_dice:
            cells.append("" if row["dice"] is None else f"{row['dice']:.4f}")
        if has_warnings:
            cells.append("; ".join(w.split(":")[0] for w in row.get("warnings") or []))
        table.add_row(*cells)
    console.print(table)
    for row in ranking.rows:
        for warning in row.get("warnings") or []:
            console.print(f"[yellow]warning[/yellow] {row['model']}: {warning}", highlight=False)
    if ranking.correlations:
        corr = Table(title="Agreement with the known Dice (95% bootstrap interval over the models)")
        for column in ("metric", "weighted tau", "Pearson", "Kendall tau-b", "Rel@1", "top-3 hit", "top-1 regret",
                       "LOO max change", "models"):
            corr.add_column(column, justify="right" if column != "metric" else "left")
        methods = [(m, c) for m, c in ranking.correlations.items()]
        methods += [(RANK_BASELINES.get(m, m), c) for m, c in (ranking.baselines or {}).items()]
        for name, c in methods:
            corr.add_row(name, *(_with_interval(c, k) for k in ("tau", "pearson", "kendall", "rel_at_1", "top3")),
                         _fmt(c.get("top1_regret")), _fmt(c.get("loo_max_change")), str(c["n"]))
        console.print(corr)
        if ranking.method_ranking_stability is not None:
            console.print(f"Leave one model out: the methods' order by weighted tau agrees with the full one at a "
                          f"mean Kendall's tau-b of {ranking.method_ranking_stability:.2f} (1: no single model "
                          "decides which method looks best; docs/rank.md).", highlight=False)
    health = ranking.ground_truth
    if health is not None:
        if health["can_rank"]:
            console.print(f"The known Dice can rank the models (Dice {_fmt(health['dice_min'])} to "
                          f"{_fmt(health['dice_max'])}; docs/report.md, ground truth).", highlight=False)
        else:
            console.print("[red]The known Dice cannot rank the models[/red]: " + "; ".join(health["reasons"])
                          + ". The agreement above measures noise, not the metrics.", highlight=False)
    for failure in ranking.failed:
        console.print(f"[red]not ranked[/red] {failure['model']}: {failure['error']}", highlight=False)
    console.print(f"written: {out / 'ranking.csv'}, {out / 'ranking.json'}"
                  + (f", {out / 'agreement.csv'}" if ranking.correlations else "")
                  + (f", {out / 'ranking.png'}" if ranking.rows else "") + f", features in {out / 'features'}/")


__all__ = ["RANK_METRICS", "DEFAULT_RANK_METRICS", "ModelError", "rank_models", "print_ranking", "read_dice",
           "dice_health", "agreement", "baseline_agreement", "network_parameter_count", "open_dataset", "load_model", "model_names", "parse_model_spec", "default_layer_ratios",
           "metric_definitions", "modality_warnings", "Ranking"]
