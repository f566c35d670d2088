"""nnU-Net v2 conversion, planning and preprocessing with one network architecture shared by every task.

Why one shared architecture: a model pretrained on a source task is fine-tuned on every other task with all
weights but the final convolution transferred, which only works when every dataset is planned with the same
network (same stages, channels, kernels, strides and patch size). nnU-Net's own answer
(``nnUNetv2_move_plans_between_datasets``) also copies the source dataset's target spacing and CT intensity
statistics, which would normalise each target differently depending on which source it was paired with.
We keep nnU-Net's per-dataset decisions (spacing, resampling, CT normalisation from the dataset's own
foreground statistics) and overwrite only the network part of the 3d_fullres configuration with the one
given in the workflow config. The result is a plans file ``ccfvPlans.json`` per dataset whose
``architecture`` and ``patch_size`` are identical across datasets (``shared_architecture`` checks that).
See docs/preprocessing.md.
"""
from __future__ import annotations

import copy
import hashlib
import json
import shutil
import tempfile
from pathlib import Path

from ..data.checksums import digest_of
from .paths import CONFIGURATION, PLANS_NAME, dataset_name, nnunet_environment


def convert_msd_task(task_dir: Path, raw_root: Path, n_proc: int = 1) -> Path:
    """Convert an MSD task folder to nnU-Net raw format (``nnUNetv2_convert_MSD_dataset``); return
    ``raw_root/DatasetNNN_Name``.

    The conversion runs into a scratch folder next to ``raw_root`` that is renamed into place, so an
    interrupted run leaves no half-converted dataset behind. Nothing is written into ``task_dir`` (it may be
    read-only shared storage). A task without ``imagesTs/`` (no unlabelled test images: user-made tasks, copies
    without them) is converted too: nnU-Net's converter asserts that the folder exists, so it is given a view of
    the task in the scratch folder (links to ``dataset.json``, ``imagesTr/``, ``labelsTr/``) with an empty
    ``imagesTs/``. Raises FileNotFoundError when ``task_dir`` has no ``dataset.json``, ``imagesTr/`` or
    ``labelsTr/``.
    """
    task_dir, raw_root = Path(task_dir), Path(raw_root)
    if not (task_dir / "dataset.json").is_file():
        raise FileNotFoundError(f"{task_dir}: no dataset.json, not an MSD task folder")
    for folder in ("imagesTr", "labelsTr"):
        if not (task_dir / folder).is_dir():
            raise FileNotFoundError(f"{task_dir / folder}: folder missing; an MSD task needs imagesTr/ and labelsTr/")
    target = raw_root / dataset_name(task_dir.name)
    raw_root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=raw_root, prefix=".convert-") as scratch:
        scratch = Path(scratch)
        source = task_dir.resolve()
        if not (source / "imagesTs").is_dir():
            source = _view_with_empty_test_folder(source, scratch / "view")
        with nnunet_environment(raw=scratch / "raw", preprocessed=scratch / "pre",
                                results=scratch / "res", n_proc=n_proc):
            from nnunetv2.dataset_conversion.convert_MSD_dataset import convert_msd_dataset

            convert_msd_dataset(str(source), num_processes=n_proc)
        if target.exists():
            shutil.rmtree(target)
        (scratch / "raw" / target.name).rename(target)
    return target


def _view_with_empty_test_folder(task_dir: Path, parent: Path) -> Path:
    """``parent/<task name>``: symbolic links to the task's ``dataset.json``, ``imagesTr/`` and ``labelsTr/``
    beside an empty ``imagesTs/``, for nnU-Net's MSD converter, which asserts ``imagesTs/`` (and reads the task
    number and name from the folder's name, hence the same name)."""
    view = parent / task_dir.name
    (view / "imagesTs").mkdir(parents=True)
    for name in ("dataset.json", "imagesTr", "labelsTr"):
        (view / name).symlink_to(task_dir / name)
    return view


def shared_plans(plans: dict, network: dict) -> dict:
    """Return ``plans`` with its 3d_fullres network replaced by the benchmark's shared one.

    ``network`` is the ``network`` section of the workflow config: ``patch_size``, ``batch_size``,
    ``features_per_stage``, ``kernel_sizes``, ``strides``, ``n_conv_per_stage``,
    ``n_conv_per_stage_decoder``. Everything nnU-Net derived from the data itself is kept.
    """
    n_stages = len(network["features_per_stage"])
    if n_stages < 3:
        # With two stages nnU-Net's deep supervision has a single output whose weight it sets to 0 and then
        # normalises by the sum: the loss is NaN and training silently writes NaN weights.
        raise ValueError(f"network.features_per_stage has {n_stages} stages; at least 3 are needed")
    for key in ("kernel_sizes", "strides", "n_conv_per_stage"):
        if len(network[key]) != n_stages:
            raise ValueError(f"network.{key} has {len(network[key])} entries, expected one per stage ({n_stages})")
    if len(network["n_conv_per_stage_decoder"]) != n_stages - 1:
        raise ValueError("network.n_conv_per_stage_decoder needs one entry per decoder stage (stages - 1)")
    for axis, size in enumerate(network["patch_size"]):
        factor = 1
        for stride in network["strides"]:
            factor *= stride[axis]
        if size % factor:
            raise ValueError(
                f"network.patch_size[{axis}]={size} is not divisible by the product of the strides on that "
                f"axis ({factor}); the U-Net could not skip-connect"
            )
    out = copy.deepcopy(plans)
    base = out["configurations"][CONFIGURATION]
    base["data_identifier"] = f"{PLANS_NAME}_{CONFIGURATION}"
    base["patch_size"] = list(network["patch_size"])
    base["batch_size"] = int(network["batch_size"])
    kwargs = base["architecture"]["arch_kwargs"]
    kwargs.update(
        n_stages=n_stages,
        features_per_stage=list(network["features_per_stage"]),
        kernel_sizes=[list(k) for k in network["kernel_sizes"]],
        strides=[list(s) for s in network["strides"]],
        n_conv_per_stage=list(network["n_conv_per_stage"]),
        n_conv_per_stage_decoder=list(network["n_conv_per_stage_decoder"]),
    )
    out["plans_name"] = PLANS_NAME
    # Only 3d_fullres is used; dropping the others keeps nnU-Net from ever picking a different network.
    out["configurations"] = {CONFIGURATION: base}
    return out


def shared_architecture(plans: dict) -> dict:
    """The part of a plans file that must be equal across datasets for weights to transfer."""
    conf = plans["configurations"][CONFIGURATION]
    return {"patch_size": list(conf["patch_size"]), "architecture": conf["architecture"]}


def plan_and_preprocess(raw_dataset: Path, preprocessed_root: Path, network: dict, n_proc: int = 1,
                        checksums: Path | None = None) -> Path:
    """Fingerprint, plan and preprocess one nnU-Net raw dataset with the shared ``ccfvPlans``.

    Runs nnU-Net's own fingerprint extraction (with ``--verify_dataset_integrity``), its default
    experiment planner, then writes ``ccfvPlans.json`` (see module docstring) and preprocesses the
    3d_fullres configuration with it. Everything is built in a scratch folder and renamed into
    ``preprocessed_root/DatasetXXX_Name`` at the end. ``checksums``, when given, receives the SHA-256 of
    every preprocessed case (``ccfv.preprocess.nnunet.preprocessed_cases``).
    """
    raw_dataset, preprocessed_root = Path(raw_dataset), Path(preprocessed_root)
    name = raw_dataset.name
    number = int(name[len("Dataset"):len("Dataset") + 3])
    target = preprocessed_root / name
    preprocessed_root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=preprocessed_root, prefix=".preprocess-") as scratch:
        scratch = Path(scratch)
        with nnunet_environment(raw=raw_dataset.parent, preprocessed=scratch, results=scratch / "res",
                                n_proc=n_proc):
            from nnunetv2.experiment_planning.plan_and_preprocess_api import (
                extract_fingerprints,
                plan_experiments,
                preprocess,
            )

            extract_fingerprints([number], num_processes=n_proc, check_dataset_integrity=True,
                                 verbose=False, show_progress_bar=False)
            plan_experiments([number])
            plans_dir = scratch / name
            default = json.loads((plans_dir / "nnUNetPlans.json").read_text())
            (plans_dir / f"{PLANS_NAME}.json").write_text(json.dumps(shared_plans(default, network), indent=2))
            preprocess([number], plans_identifier=PLANS_NAME, configurations=[CONFIGURATION],
                       num_processes=[n_proc], show_progress_bar=False)
        shutil.rmtree(scratch / "res", ignore_errors=True)
        if target.exists():
            shutil.rmtree(target)
        (scratch / name).rename(target)
    if checksums is not None:
        from ..io import write_json

        write_json(checksums, preprocessed_cases(target))
    return target


def case_identifiers(preprocessed_dataset: Path) -> list[str]:
    """Case ids of a preprocessed dataset, sorted (nnU-Net's own file naming, e.g. ``liver_3``)."""
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

    folder = Path(preprocessed_dataset) / f"{PLANS_NAME}_{CONFIGURATION}"
    return sorted(infer_dataset_class(str(folder)).get_identifiers(str(folder)))


def load_case(preprocessed_dataset: Path, identifier: str):
    """(image [C, D, H, W] float32, segmentation [D, H, W] int16 with -1 outside the body crop, properties)."""
    import numpy as np
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

    folder = Path(preprocessed_dataset) / f"{PLANS_NAME}_{CONFIGURATION}"
    dataset = infer_dataset_class(str(folder))(str(folder), [identifier])
    data, seg, _, properties = dataset.load_case(identifier)
    return np.asarray(data, dtype=np.float32), np.asarray(seg[0], dtype=np.int16), properties


def preprocessed_cases(preprocessed_dataset: str | Path) -> dict:
    """SHA-256 of each preprocessed case's image and segmentation arrays."""

    cases = {}
    for identifier in case_identifiers(Path(preprocessed_dataset)):
        image, seg, _ = load_case(Path(preprocessed_dataset), identifier)
        digest = hashlib.sha256()
        for array in (image, seg):
            digest.update(f"{array.dtype.str}{array.shape}".encode())
            digest.update(array.tobytes())
        cases[identifier] = digest.hexdigest()
    return {"cases": cases, "digest": digest_of(cases)}
