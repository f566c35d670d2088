"""``ccfv finetune`` (and ``ccfv rank --confirm``): models fine-tuned by one protocol on a split of a user's
labelled cases, and their held-out Dice (docs/finetune.md).

For every model: load it (:mod:`ccfv.models`, nothing of its files runs), preprocess the cases in its own
input convention (:class:`ccfv.models.preprocessing.Preprocessor`), give it a head with the dataset's classes
and fine-tune it on the training cases by :mod:`ccfv.finetune.protocol`, then score it on the held-out cases in
the original image space (:func:`ccfv.finetune.evaluation.score_held_out`). The split is made once and
recorded as the workflow records its splits (:mod:`ccfv.preprocess.splits`): a rerun into the same folder
reuses it, and data that changed since is an error. A killed run continues: each model's training from its
last checkpoint, and models already scored are not trained again.

Outputs (``out``): ``finetune.json`` (settings, split, every model's Dice per class and case, losses,
timings, failures), ``dice.csv`` (one line per model, columns ``model`` and ``dice`` first: it is a
``ccfv rank --dice`` file), ``split.json`` and ``split.record.json``, ``models/<model>-seed<N>.json`` (each
model's result, written as soon as it is scored).
"""
from __future__ import annotations

import copy
import csv
import io
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .. import __version__
from ..io import write_json, write_text
from ..models.base import LoadedModel, ModelError
from ..models.preprocessing import Preprocessor, safe_name
from ..preprocess.dataset import Dataset
from .protocol import CHECKPOINT_FORMAT, FinetuneProtocol, PatchSampler, replace_head, train, weights_digest

#: The workflow's split: 80 % of the cases to fine-tune on, 20 % held out (config/msd.yaml).
DEFAULT_TEST_FRACTION = 0.2
#: What a model's fine-tuning may raise that ends only that model's run (the others still run).
MODEL_ERRORS = (ModelError, ValueError, FileNotFoundError, RuntimeError, TypeError)


@dataclass
class FinetuneRun:
    """What :func:`finetune_models` did: one row per fine-tuned model, the failures, and the run's settings."""

    rows: list[dict]
    failed: list[dict]
    meta: dict

    @property
    def exit_status(self) -> int:
        """0 every model fine-tuned, 1 some failed (each named), 2 none."""
        if not self.rows:
            return 2
        return 1 if self.failed else 0


# ----------------------------------------------------------------------------------------------
# The split
# ----------------------------------------------------------------------------------------------


def files_digest(dataset: Dataset) -> str:
    """SHA-256 over the dataset's training image and label files: the workflow's
    (:func:`ccfv.data.checksums.training_files`) for an MSD task, the same over the cases for an nnU-Net raw
    dataset. A split records it; data that changed later no longer matches."""
    from ..data.checksums import digest_of, sha256_file, training_files

    if Path(dataset.source).resolve() != Path(dataset.raw).resolve():  # an MSD task, converted
        return training_files(dataset.source)["digest"]
    return digest_of({case: {"images": [sha256_file(f) for f in files["images"]], "label": sha256_file(files["label"])}
                      for case, files in dataset.cases.items()})


def dataset_split(dataset: Dataset, folder: Path, test_fraction: float = DEFAULT_TEST_FRACTION, seed: int = 0,
                  split_file: Path | None = None, digest: str | None = None) -> dict:
    """The train/held-out split of ``dataset``'s labelled cases.

    With ``split_file`` (e.g. the workflow's ``results/splits/<task>.json``): that split, checked against the
    dataset's cases (:func:`ccfv.preprocess.splits.read_split`) and copied to ``folder/split.json``. Otherwise the split recorded in
    ``folder/split.record.json`` (:func:`ccfv.preprocess.splits.split_task`: made with ``seed`` at the first
    run, reproduced later, an error naming the record when the cases, their files or the settings changed),
    written to ``folder/split.json`` as the workflow writes its splits.

    Raises:
        ValueError: fewer than 2 cases, a split file of other cases, or one without a training or held-out
            case; :class:`ccfv.preprocess.splits.SplitError` for a record of other data or settings.
    """
    from ..preprocess.splits import read_split, split_task, write_split

    cases = list(dataset.cases)
    if split_file is not None:
        split = read_split(Path(split_file), cases)
        unknown = sorted((set(split["train"]) | set(split["test"])) - set(cases))
        if unknown:
            raise ValueError(f"{split_file}: cases {unknown[:5]} are not labelled cases of {dataset.raw}")
        if split["train"] and split["test"]:
            write_split(split, Path(folder) / "split.json")  # the split used, beside the results
    else:
        if len(cases) < 2:
            raise ValueError(f"{dataset.source}: {len(cases)} labelled case(s); fine-tuning needs at least 2 (one to "
                             "train on, one held out)")
        split = split_task(dataset.name, cases, digest or files_digest(dataset), float(test_fraction), int(seed),
                           Path(folder) / "split.record.json")
        write_split(split, Path(folder) / "split.json")
    if not split["train"] or not split["test"]:
        raise ValueError(f"{split_file or folder}: the split needs a training and a held-out case "
                         f"({len(split['train'])} and {len(split['test'])})")
    return split


# ----------------------------------------------------------------------------------------------
# One model
# ----------------------------------------------------------------------------------------------


def finetune_model(model: LoadedModel, preprocessor: Preprocessor, split: dict, protocol: FinetuneProtocol,
                   seed: int, work: Path, device, log: Callable[[str], None] | None = None,
                   result_file: Path | None = None) -> dict:
    """Fine-tune one loaded model by the protocol on ``split["train"]`` and score it on ``split["test"]``.

    Args:
        model: any format (:class:`ccfv.models.base.LoadedModel`); its network is copied, not changed.
        preprocessor: the dataset's preprocessor (cases in the model's convention, and back).
        split: ``train`` and ``test`` case ids.
        protocol: the recipe (:class:`ccfv.finetune.protocol.FinetuneProtocol`).
        seed: the fine-tuning seed (patches, a ``random`` head).
        work: folder for the resume checkpoint (``<model>-seed<N>.pth``; removed once the model is scored).
        device: a ``torch.device``.
        log: progress messages.
        result_file: when it holds a result of the same identity (a finished earlier run), that result is
            returned without training; the new result is written there.

    Returns:
        A row: ``model``, ``path``, ``kind``, ``architecture``, ``mean_dice``, ``per_class``, ``per_case``,
        ``space`` (``original``: Dice on the label files' grid; ``model``: on the model's grid),
        ``head`` and ``head_parameters`` (what was replaced), ``frozen_normalisation``, ``patch_size``,
        ``losses``, ``resumed_from``, ``seconds_training`` (this process), ``seconds_per_iteration``,
        ``seconds_evaluation``, ``identity``.

    Raises:
        ModelError, ValueError: naming the model: another number of input channels than the dataset, no
            head to replace, a network whose output does not fit, a diverging loss.
    """
    import json

    import torch

    log = log or (lambda message: None)
    dataset = preprocessor.dataset
    where = f"{model.name} ({model.path})"
    if model.num_input_channels is not None and model.num_input_channels != dataset.num_channels:
        raise ModelError(f"{model.path}: expects {model.num_input_channels} input channel(s), the dataset has "
                         f"{dataset.num_channels} {dataset.dataset_json['channel_names']}")
    network = copy.deepcopy(model.network).cpu()
    cases = [(image, seg) for _, image, seg in preprocessor.cases(model, split["train"], mmap=True)]
    identity = {"format": CHECKPOINT_FORMAT, "dataset": dataset.name, "classes": list(dataset.class_ids),
                "train": sorted(str(c) for c in split["train"]), "test": sorted(str(c) for c in split["test"]),
                "protocol": protocol.identity(),
                "seed": int(seed), "weights": weights_digest(network), "head": model.details.get("head"),
                "patch_size": [int(p) for p in model.patch_size],
                "preprocessing": _arrays_digest(cases[:1])}
    if result_file is not None and Path(result_file).is_file():
        try:
            earlier = json.loads(Path(result_file).read_text())
        except ValueError:
            earlier = None
        if isinstance(earlier, dict) and earlier.get("identity") == identity:
            log(f"ccfv finetune: {model.name}: fine-tuned and scored by an earlier run ({result_file})")
            return {**earlier, "model": model.name, "path": str(model.path), "reused": True}
    head_parameters = replace_head(network, model.details.get("head"), 1 + len(dataset.class_ids),
                                   protocol.head_init, seed, where=where)
    sampler = PatchSampler(cases, dataset.class_ids, model.patch_size, protocol, seed)
    checkpoint = Path(work) / f"{safe_name(model.name)}-seed{int(seed)}.pth"
    log(f"ccfv finetune: {model.name}: {protocol.iterations} iterations on {len(split['train'])} case(s), "
        f"patch {list(model.patch_size)}, head {model.details.get('head')!r} -> {1 + len(dataset.class_ids)} outputs")
    selection, checkpoints, pilot_seconds, pilot_iterations = None, [checkpoint], 0.0, 0
    run_protocol, run_identity = protocol, identity
    try:
        if protocol.learning_rate_grid:
            selection, checkpoint, run_protocol, run_identity, pilot_seconds, pilot_iterations, checkpoints = \
                _select_rate(network, head_parameters, sampler, protocol, seed, Path(work), model.name, identity,
                             device, log)
        trained = train(network, head_parameters, sampler, run_protocol, seed, checkpoint, run_identity, device,
                        log)
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None
    seconds_training = pilot_seconds + trained["seconds"]
    iterations_run = pilot_iterations + trained["iterations_run"]
    began = time.perf_counter()
    scored = _score(network, model, preprocessor, split["test"], device)
    row = {
        "model": model.name, "path": str(model.path), "kind": model.kind, "architecture": model.architecture,
        "mean_dice": scored["mean_dice"], "per_class": scored["per_class"], "per_case": scored["per_case"],
        "space": scored["space"], "head": model.details.get("head"), "head_parameters": head_parameters,
        "head_init": protocol.head_init, "frozen_normalisation": trained["frozen_normalisation"],
        "patch_size": [int(p) for p in model.patch_size], "seed": int(seed), "iterations": protocol.iterations,
        "learning_rate": run_protocol.learning_rate, "learning_rate_selection": selection,
        "losses": trained["losses"], "resumed_from": trained["resumed_from"],
        "seconds_training": seconds_training,
        "seconds_per_iteration": seconds_training / iterations_run if iterations_run else None,
        "seconds_evaluation": time.perf_counter() - began, "threads": torch.get_num_threads(),
        "device": str(device), "identity": identity, "reused": False,
    }
    if result_file is not None:
        write_json(result_file, _plain(row))
    for path in checkpoints:
        path.unlink(missing_ok=True)
    return row


def _select_rate(network, head_parameters, sampler, protocol: FinetuneProtocol, seed: int, work: Path, name: str,
                 identity: dict, device, log: Callable[[str], None]):
    """Successive halving over ``protocol.learning_rate_grid`` (:class:`FinetuneProtocol` says how): each rate
    trains a copy of ``network`` (its new head in place) for the pilot, checkpointed in ``work`` under its own
    identity, that of a run with the rate fixed; the chosen rate's checkpoint is where its run continues, so the
    result equals an uninterrupted run at that rate.

    Returns:
        (selection record, the chosen rate's checkpoint, its protocol, its identity, the pilots' seconds in this
        process, their iterations in this process, every pilot checkpoint).
    """
    pilots, checkpoints, seconds, iterations = {}, [], 0.0, 0
    for rate in protocol.learning_rate_grid:
        candidate = copy.deepcopy(network)
        at_rate = protocol.at_rate(rate)
        path = Path(work) / f"{safe_name(name)}-seed{int(seed)}-lr{rate:g}.pth"
        checkpoints.append(path)
        trained = train(candidate, head_parameters, sampler, at_rate, seed, path,
                        {**identity, "protocol": at_rate.identity()}, device, log, stop_at=protocol.selection_iterations)
        pilots[rate] = trained
        seconds += trained["seconds"]
        iterations += trained["iterations_run"]
        del candidate
    losses = {rate: pilot["losses"] for rate, pilot in pilots.items()}
    chosen = protocol.select_rate(losses)
    start, end = protocol.selection_window()
    selection = {
        "rates": list(protocol.learning_rate_grid), "chosen": chosen, "window": [start, end],
        "mean_loss": {f"{rate:g}": float(mean) for rate, mean in protocol.pilot_means(losses).items()},
        "pilot_losses": {f"{rate:g}": values[:end] for rate, values in losses.items()},
    }
    log(f"ccfv finetune: {name}: body rate {chosen:g} of {[f'{r:g}' for r in protocol.learning_rate_grid]} "
        f"(mean loss over iterations {start}-{end - 1}: "
        + ", ".join(f"{k} {v:.4f}" for k, v in selection["mean_loss"].items()) + ")")
    at_chosen = protocol.at_rate(chosen)
    chosen_path = checkpoints[protocol.learning_rate_grid.index(chosen)]
    return (selection, chosen_path, at_chosen, {**identity, "protocol": at_chosen.identity()}, seconds, iterations,
            checkpoints)


def _arrays_digest(cases) -> str:
    """SHA-256 of preprocessed (image, seg) arrays: what a checkpoint's identity records of the preprocessing
    (a model's preprocessing key need not be stable across processes; its output is)."""
    import hashlib

    digest = hashlib.sha256()
    for image, seg in cases:
        for array in (image, seg):
            digest.update(f"{array.dtype}:{array.shape}".encode())
            digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def _score(network, model, preprocessor, cases, device) -> dict:
    from .evaluation import score_held_out

    return score_held_out(network, model, preprocessor, list(cases), device)


def _plain(value):
    """JSON-ready: string keys, NaN as null."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, np.generic):
        return _plain(value.item())
    return value


def finetune_each(models: Sequence[tuple[str, str, Callable[[], LoadedModel]]], preprocessor: Preprocessor,
                  split: dict, protocol: FinetuneProtocol, seed: int, out: Path, work: Path, device,
                  log: Callable[[str], None]) -> tuple[list[dict], list[dict]]:
    """:func:`finetune_model` for each (name, path, loader) of ``models``; a model that fails is recorded
    (``{"model", "path", "error"}``) and the others still run. Results go to ``out/models/``, checkpoints to
    ``work``. Returns (rows, failed)."""
    rows, failed = [], []
    for name, path, loader in models:
        try:
            model = loader()
            row = finetune_model(model, preprocessor, split, protocol, seed, work, device, log,
                                 result_file=Path(out) / "models" / f"{safe_name(name)}-seed{int(seed)}.json")
        except MODEL_ERRORS as err:
            message = str(err)
            if not message.startswith(str(path)) and not message.startswith(name):
                message = f"{path}: {message}"
            failed.append({"model": name, "path": str(path), "error": message})
            log(f"ccfv finetune: model {name!r} not fine-tuned: {message}")
            continue
        log(f"ccfv finetune: {name}: held-out Dice {_fmt(row['mean_dice'])}")
        rows.append(row)
    return rows, failed


def _fmt(value) -> str:
    return "n/a" if value is None or (isinstance(value, float) and not np.isfinite(value)) else f"{value:.4f}"


# ----------------------------------------------------------------------------------------------
# The command
# ----------------------------------------------------------------------------------------------


def finetune_models(data: Path, specs: Sequence[Any], out: Path, *, seed: int = 0,
                    protocol: FinetuneProtocol | None = None, test_fraction: float = DEFAULT_TEST_FRACTION,
                    split_seed: int = 0, split_file: Path | None = None, device: str = "auto",
                    threads: int | None = None, trust_bundle_code: bool = False,
                    log: Callable[[str], None] | None = None) -> FinetuneRun:
    """Fine-tune every model of ``specs`` by the protocol on ``data`` and write the outputs into ``out``.

    Args:
        data: an MSD task folder or an nnU-Net raw dataset (:func:`ccfv.preprocess.dataset.open_dataset`).
        specs: ``[NAME=]PATH`` strings (any format :func:`ccfv.models.load_model` reads) and/or
            :class:`ccfv.models.TorchModel` objects (whose ``details["head"]`` names the head module) and/or
            already loaded :class:`ccfv.models.LoadedModel` objects (the workflow's members, named by ``name``).
        out: output folder (module docstring); ``out/.work/`` keeps the preprocessed cases and checkpoints
            until every model is done, so that a killed run continues.
        seed: the fine-tuning seed.
        protocol: the recipe (default :class:`ccfv.finetune.protocol.FinetuneProtocol`).
        test_fraction, split_seed: the split's held-out share and seed (used when no record exists yet).
        split_file: a split to use instead (``train``/``test`` lists, :func:`dataset_split`).
        device: ``auto``, ``cpu`` or ``cuda``.
        threads: torch CPU threads (default torch's).
        trust_bundle_code: as ``ccfv rank`` (docs/rank.md).
        log: progress messages (default: stderr).

    Raises:
        ValueError, FileNotFoundError: bad arguments, dataset or split, before any model is loaded (and
            ``out`` is removed if this call created it). One model's error is recorded in
            ``FinetuneRun.failed`` and the others run.
    """
    import torch

    from ..bank.networks import pick_device
    from ..models import load_model, name_models
    from ..models.torch_module import TorchModel
    from ..preprocess.dataset import open_dataset

    log = log or (lambda message: print(message, file=sys.stderr, flush=True))
    protocol = protocol or FinetuneProtocol()
    if not specs:
        raise ValueError("no --model given")
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"--device {device!r}: one of auto, cpu, cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: torch sees no CUDA device here (use --device cpu or auto)")
    if not 0.0 < float(test_fraction) < 1.0:
        raise ValueError(f"--test-fraction {test_fraction}: must lie in (0, 1)")
    torch_device = pick_device(device)
    if threads:
        torch.set_num_threads(int(threads))
    named = name_models(specs)

    out = Path(out)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    work_root = out / ".work"
    try:
        dataset = open_dataset(Path(data), work_root / "dataset")
        digest = files_digest(dataset)
        split = dataset_split(dataset, out, test_fraction, split_seed, split_file, digest=digest)
    except BaseException:
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise
    work = work_root / digest[:16]  # preprocessed cases of other data never mix with these
    log(f"ccfv finetune: {len(named)} model(s) on {dataset.source} (classes {dataset.class_ids}): "
        f"{len(split['train'])} case(s) to fine-tune on, {len(split['test'])} held out; {protocol.iterations} "
        f"iterations, seed {seed}, device {torch_device}")

    def loader(name: str, spec):
        if isinstance(spec, LoadedModel):
            return lambda: spec
        return (lambda: spec.load()) if isinstance(spec, TorchModel) else \
            (lambda: load_model(name, spec, trust_bundle_code=trust_bundle_code))

    def where(name: str, spec) -> str:
        return str(spec.path) if isinstance(spec, LoadedModel) else name if isinstance(spec, TorchModel) else str(spec)

    models = [(name, where(name, spec), loader(name, spec)) for name, spec in named]
    preprocessor = Preprocessor(dataset, work)
    rows, failed = finetune_each(models, preprocessor, split, protocol, seed, out, work / "checkpoints",
                                 torch_device, log)
    run = FinetuneRun(rows=rows, failed=failed, meta={
        "data": str(dataset.source), "dataset": dataset.name, "classes": list(dataset.class_ids),
        "split": {"train": list(split["train"]), "test": list(split["test"]), "seed": split.get("seed"),
                  "test_fraction": split.get("test_fraction"), "file": str(split_file or out / "split.json")},
        "protocol": protocol.as_dict(), "seed": int(seed), "device": str(torch_device),
        "threads": torch.get_num_threads(), "ccfv_version": __version__})
    write_outputs(run, out)
    if not failed:  # a failed model keeps the preprocessed cases for the rerun that fixes it
        shutil.rmtree(work_root, ignore_errors=True)
    return run


def confirm_ranking(rows: list[dict], loaders: dict[str, Callable[[], LoadedModel]], preprocessor: Preprocessor,
                    protocol: FinetuneProtocol, seed: int, folder: Path, device,
                    log: Callable[[str], None]) -> dict:
    """``ccfv rank --confirm K``: fine-tune the ranking's top ``rows`` (best first) by the protocol and score
    them on held-out cases, so that a user can check the pick before committing to it.

    The split is :func:`dataset_split` in ``folder`` (80/20, made with ``seed`` and recorded there: a rerun
    reuses it); results go to ``folder/models/`` and checkpoints to ``folder/.checkpoints/`` (removed when
    every model is done). Each row gets ``finetuned_dice`` (None when its fine-tuning failed).

    Returns:
        ``ranking.json``'s ``confirm``: ``k``, ``protocol``, ``seed``, ``split`` (train/test case lists),
        ``models`` ({model: ``dice``, ``per_class``, ``space``, ``rank``, ``seconds_per_iteration``}) and
        ``failed``.
    """
    folder = Path(folder)
    split = dataset_split(preprocessor.dataset, folder, DEFAULT_TEST_FRACTION, seed)
    log(f"ccfv rank: confirming the top {len(rows)} model(s) by fine-tuning ({protocol.iterations} iterations, "
        f"{len(split['train'])} case(s) to fine-tune on, {len(split['test'])} held out)")
    models = [(r["model"], r["path"], loaders[r["model"]]) for r in rows]
    results, failed = finetune_each(models, preprocessor, split, protocol, seed, folder, folder / ".checkpoints",
                                    device, log)
    by_name = {r["model"]: r for r in results}
    for row in rows:
        result = by_name.get(row["model"])
        row["finetuned_dice"] = None if result is None else _plain(result["mean_dice"])
    position = {row["model"]: i for i, row in enumerate(rows, start=1)}
    if not failed:
        shutil.rmtree(folder / ".checkpoints", ignore_errors=True)
    return _plain({
        "k": len(rows), "protocol": protocol.as_dict(), "seed": int(seed),
        "split": {"train": list(split["train"]), "test": list(split["test"]), "file": str(folder / "split.json")},
        "models": {r["model"]: {"dice": r["mean_dice"], "per_class": r["per_class"], "space": r["space"],
                                "rank": position[r["model"]], "seconds_per_iteration": r.get("seconds_per_iteration")}
                   for r in results},
        "failed": failed})


# ----------------------------------------------------------------------------------------------
# Outputs
# ----------------------------------------------------------------------------------------------


def dice_csv(run: FinetuneRun) -> str:
    """One line per fine-tuned model: ``model``, ``dice`` (the mean over classes of the per-class mean over
    held-out cases), ``dice_<label>`` per class, and the run's facts; readable by ``ccfv rank --dice``."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    classes = [str(c) for c in run.meta["classes"]]
    writer.writerow(["model", "dice", *(f"dice_{c}" for c in classes), "kind", "architecture", "space", "seed",
                     "iterations", "seconds_per_iteration", "path"])
    for row in run.rows:
        per_class = {str(k): v for k, v in row["per_class"].items()}

        def cell(value):
            return "" if value is None or (isinstance(value, float) and not np.isfinite(value)) else repr(float(value))

        writer.writerow([row["model"], cell(row["mean_dice"]), *(cell(per_class.get(c)) for c in classes),
                         row["kind"], row["architecture"], row["space"], row["seed"], row["iterations"],
                         cell(row.get("seconds_per_iteration")), row["path"]])
    return buffer.getvalue()


def write_outputs(run: FinetuneRun, out: Path) -> None:
    """``finetune.json`` and ``dice.csv`` in ``out``, each written atomically."""
    write_json(Path(out) / "finetune.json", _plain({**run.meta, "models": run.rows, "failed": run.failed}))
    write_text(Path(out) / "dice.csv", dice_csv(run))


def print_finetune(run: FinetuneRun, out: Path, console=None) -> None:
    """The fine-tuned models' held-out Dice as a table (best first), the failures, and what was written."""
    from rich.console import Console
    from rich.table import Table

    if console is None:
        console = Console()
        if not console.is_terminal:
            console = Console(width=200)
    split = run.meta["split"]
    table = Table(title=f"Held-out Dice on {run.meta['dataset']} after {run.meta['protocol']['iterations']} "
                        f"iterations (seed {run.meta['seed']}; {len(split['train'])} cases to fine-tune, "
                        f"{len(split['test'])} held out)")
    for column in ("model", "architecture", "Dice", *(f"class {c}" for c in run.meta["classes"]), "s / iteration"):
        table.add_column(column, justify="left" if column in ("model", "architecture") else "right")
    order = sorted(run.rows, key=lambda r: -(r["mean_dice"] if r["mean_dice"] is not None and
                                             np.isfinite(r["mean_dice"]) else -1.0))
    for row in order:
        per_class = {str(k): v for k, v in row["per_class"].items()}
        seconds = row.get("seconds_per_iteration")
        table.add_row(row["model"], row["architecture"], _fmt(row["mean_dice"]),
                      *(_fmt(per_class.get(str(c))) for c in run.meta["classes"]),
                      "" if seconds is None else f"{seconds:.2f}")
    console.print(table)
    for row in run.rows:
        if row["space"] != "original":
            console.print(f"[yellow]note[/yellow] {row['model']}: Dice on the model's grid (its preprocessing has "
                          "no restore(); docs/finetune.md)", highlight=False)
    for failure in run.failed:
        console.print(f"[red]not fine-tuned[/red] {failure['model']}: {failure['error']}", highlight=False)
    console.print(f"written: {out / 'dice.csv'}, {out / 'finetune.json'}, {out / 'split.json'}", highlight=False)


# ----------------------------------------------------------------------------------------------
# The workflow's protocol fine-tuning (rules/finetune.smk, finetune.method: protocol)
# ----------------------------------------------------------------------------------------------


def finetune_member(raw_dataset: Path, member: Any, split_file: Path, out: Path, dice_file: Path, *, seed: int,
                    protocol: Mapping[str, Any], threads: int = 1, device: str = "auto",
                    log: Callable[[str], None] | None = None) -> dict:
    """One workflow job: fine-tune one bank member on a target by the protocol and write the results stage's
    ``dice_file`` (``finetune/<target>/<model>/seed<N>.json``: ``mean_dice``, ``per_class``, ``per_case``, as the
    nnU-Net route writes it, plus ``method: protocol`` and ``space``).

    Args:
        raw_dataset: the target's converted nnU-Net raw dataset (``nnunet/<target>/raw/DatasetNNN_<name>``); its
            case ids are the ones the workflow's split names.
        member: the member's rule params (:class:`ccfv.models.members.ExternalMember` mapping: ``name`` the
            model id, ``path`` a bank model folder or an external model, ``random_seed``, ``patch_size``).
        split_file: the target's recorded split (``splits/<target>.json``).
        out: the job's folder: :func:`finetune_models`'s ``dice.csv``, ``finetune.json``, ``split.json`` and
            ``models/``; its ``.work/`` holds the checkpoints a killed job resumes from (not a declared output,
            so Snakemake leaves it in place).
        dice_file: the results stage's file.
        seed: the fine-tuning seed.
        protocol: :class:`ccfv.finetune.protocol.FinetuneProtocol`'s settings (the config's ``finetune.protocol``).
        threads: torch CPU threads.
        device: ``auto``, ``cpu`` or ``cuda``.
        log: progress messages (default: stderr).

    Returns:
        The model's row (:func:`finetune_model`).

    Raises:
        RuntimeError: the member could not be fine-tuned (the message names it and says why); ValueError,
            FileNotFoundError: bad data, split or protocol settings.
    """
    from ..models.members import ExternalMember
    from .evaluation import write_dice

    spec = ExternalMember.from_mapping(member)
    model = spec.load()
    run = finetune_models(Path(raw_dataset), [model], Path(out), seed=int(seed),
                          protocol=FinetuneProtocol(**dict(protocol)), split_file=Path(split_file), device=device,
                          threads=threads, log=log)
    if run.failed or not run.rows:
        reason = "; ".join(f["error"] for f in run.failed) or "no result"
        raise RuntimeError(f"{spec.name}: not fine-tuned: {reason}")
    row = run.rows[0]
    write_dice({"mean_dice": row["mean_dice"], "per_class": row["per_class"], "per_case": row["per_case"]},
               Path(dice_file), model_id=spec.name, source_task=model.source_dataset, seed=int(seed),
               iterations=int(row["iterations"]), test_cases=list(run.meta["split"]["test"]), method="protocol",
               space=row["space"], seconds_per_iteration=row.get("seconds_per_iteration"))
    return row
