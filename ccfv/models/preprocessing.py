"""Each case of a user's dataset preprocessed as a model expects it, once per distinct preprocessing (the
model's nnU-Net plans, nnU-Net's plans for the dataset itself for ccfv bank models, or the model's own
callable), and a prediction on that grid brought back onto the label file's grid (:meth:`Preprocessor.restore`).
Used by ``ccfv rank`` (sampling) and ``ccfv finetune`` (training patches, held-out Dice)."""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import re
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from ..io import write_json
from ..preprocess.dataset import Dataset
from .base import LoadedModel


def _dataset_plans(dataset: Dataset, work: Path) -> dict:
    """nnU-Net's own plans for the dataset (fingerprint + default planner), for ccfv bank models: the
    workflow preprocesses every target with its own spacing and normalisation."""
    from ..preprocess.paths import nnunet_environment

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


#: What nnU-Net's export needs of a case's preprocessing properties to bring a prediction back onto the
#: original grid (``convert_predicted_logits_to_segmentation_with_correct_shape``); kept as JSON beside the
#: arrays (nnU-Net keeps them as a pickle, which ccfv never reads).
EXPORT_PROPERTIES = ("spacing", "shape_before_cropping", "bbox_used_for_cropping",
                     "shape_after_cropping_and_before_resampling")


class Preprocessor:
    """Each case preprocessed once per distinct preprocessing (``_preprocessing_key`` of the nnU-Net plans,
    or a model's own ``preprocess_key``), kept as .npy in the work folder while the run lasts.

    Three routes, as :class:`ccfv.models.base.LoadedModel` documents: the model's ``preprocess`` callable;
    else nnU-Net's ``DefaultPreprocessor`` with the model's plans; else with nnU-Net's own plans for the
    dataset (ccfv bank models, as the workflow preprocesses a target).
    """

    def __init__(self, dataset: Dataset, work: Path):
        self.dataset, self.work = dataset, Path(work)

    def plans_for(self, model: LoadedModel) -> tuple[dict, str]:
        if model.plans is not None:
            return model.plans, model.configuration
        return _dataset_plans(self.dataset, self.work), "3d_fullres"

    def folder(self, model: LoadedModel) -> Path:
        """Where the cases of ``model``'s preprocessing are kept; its name identifies that preprocessing."""
        if model.preprocess is not None:
            return self.work / "preprocessed" / safe_name(model.preprocess_key or model.name)
        plans, configuration = self.plans_for(model)
        return self.work / "preprocessed" / _preprocessing_key(plans, configuration)

    def cases(self, model: LoadedModel, case_ids: Sequence[str], mmap: bool = False):
        """Yield (case id, image [C, D, H, W] float32, seg [D, H, W] int16) in the model's preprocessing
        (read-only memory maps of the cached arrays with ``mmap``).

        The seg holds the dataset's label values on the image's grid; nnU-Net's route marks voxels outside
        the image's non-zero region, which its cropping removed from the foreground search, with -1
        (background to every use here).

        Raises:
            ValueError: naming the dataset and case: a file that cannot be read, or a callable that returns
                arrays off one grid.
        """
        folder = self.folder(model)
        folder.mkdir(parents=True, exist_ok=True)
        for case in case_ids:
            image_file, seg_file = folder / f"{case}.npy", folder / f"{case}_seg.npy"
            if not (image_file.is_file() and seg_file.is_file()):
                if model.preprocess is not None:
                    image, seg = self._run_callable(model, case)
                else:
                    image, seg, properties = self._run_nnunet(model, case)
                    write_json(folder / f"{case}_properties.json", properties)
                np.save(image_file, image)
                np.save(seg_file, seg)
            mode = "r" if mmap else None
            yield case, np.load(image_file, mmap_mode=mode), np.load(seg_file, mmap_mode=mode)

    def _run_callable(self, model: LoadedModel, case: str) -> tuple[np.ndarray, np.ndarray]:
        files = self.dataset.cases[case]
        image, seg = model.preprocess([Path(f) for f in files["images"]], Path(files["label"]))
        image, seg = np.asarray(image, dtype=np.float32), np.asarray(seg)
        if image.ndim != 4 or seg.shape[-3:] != image.shape[1:]:
            raise ValueError(f"case {case!r}: the preprocessing returned image {image.shape} and label "
                             f"{seg.shape}; expected [C, D, H, W] and [D, H, W] on one grid")
        return image, seg.reshape(image.shape[1:]).astype(np.int16)

    def _nnunet_parts(self, model: LoadedModel):
        from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        plans, configuration = self.plans_for(model)
        manager = PlansManager(plans)
        first = next(iter(self.dataset.cases.values()))["images"][0]
        reader = determine_reader_writer_from_dataset_json(self.dataset.dataset_json, first, verbose=False)()
        return manager, manager.get_configuration(configuration), reader

    def _read(self, reader, case: str):
        files = self.dataset.cases[case]
        try:
            data, properties = reader.read_images(files["images"])
            seg, _ = reader.read_seg(files["label"])
        except Exception as err:  # the readers raise anything from RuntimeError to IndexError
            raise ValueError(f"{self.dataset.raw}: case {case!r}: cannot read {files} ({err})") from None
        return data, seg, properties

    def _run_nnunet(self, model: LoadedModel, case: str) -> tuple[np.ndarray, np.ndarray, dict]:
        from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor

        manager, conf, reader = self._nnunet_parts(model)
        data, seg, properties = self._read(reader, case)
        data, seg, properties = DefaultPreprocessor(verbose=False).run_case_npy(
            data, seg, properties, manager, conf, self.dataset.dataset_json)
        kept = {k: np.asarray(properties[k]).tolist() for k in EXPORT_PROPERTIES}
        return np.asarray(data, dtype=np.float32), np.asarray(seg[0], dtype=np.int16), kept

    def restore(self, model: LoadedModel, case: str, logits) -> tuple[np.ndarray, np.ndarray, str]:
        """A prediction on the model's grid brought back onto the case's label file, with the reference.

        Args:
            model: the model whose preprocessing produced the grid (:meth:`cases` ran for ``case``).
            case: a case id of the dataset.
            logits: torch tensor or array [K, D, H, W] on the preprocessed grid of ``case``; channel k is
                class ``([0] + dataset.class_ids)[k]`` (background first).

        Returns:
            (prediction, reference, space): two integer label maps of the dataset's label values with one
            shape, and where they lie: ``"original"`` (the label file's voxel grid: nnU-Net's own export for
            the nnU-Net routes, which resamples the logits back to the original spacing, undoes the
            cropping and the transpose, in the reader's axis order; the callable's ``restore`` method for the
            others, in nibabel's axis order) or ``"model"`` (a callable without ``restore``: the grid it
            returned, the reference its label output).

        Raises:
            ValueError: naming the case: logits of another class count or grid, a restored prediction
                off the label file's grid.
        """
        import torch

        values = np.asarray([0, *self.dataset.class_ids], dtype=np.int16)
        logits = torch.as_tensor(logits).float().cpu()
        if logits.ndim != 4 or logits.shape[0] != len(values):
            raise ValueError(f"case {case!r}: logits of shape {tuple(logits.shape)}; expected "
                             f"[{len(values)}, D, H, W] (background and the classes {self.dataset.class_ids})")
        folder = self.folder(model)
        grid = tuple(np.load(folder / f"{case}_seg.npy", mmap_mode="r").shape)
        if tuple(logits.shape[1:]) != grid:
            raise ValueError(f"case {case!r}: logits on a {tuple(logits.shape[1:])} grid; its preprocessed "
                             f"grid is {grid}")
        files = self.dataset.cases[case]
        if model.preprocess is None:
            from nnunetv2.inference.export_prediction import (
                convert_predicted_logits_to_segmentation_with_correct_shape,
            )

            manager, conf, reader = self._nnunet_parts(model)
            properties = json.loads((folder / f"{case}_properties.json").read_text())
            label_manager = manager.get_label_manager(self.dataset.dataset_json)
            index = convert_predicted_logits_to_segmentation_with_correct_shape(
                logits, manager, conf, label_manager, properties, num_threads_torch=torch.get_num_threads())
            try:
                reference, _ = reader.read_seg(files["label"])
            except Exception as err:
                raise ValueError(f"{self.dataset.raw}: case {case!r}: cannot read {files['label']} ({err})") from None
            return values[np.asarray(index, dtype=np.int64)], np.rint(reference[0]).astype(np.int16), "original"
        prediction = values[logits.argmax(0).numpy()]
        restore = getattr(model.preprocess, "restore", None)
        if restore is None:
            return prediction, np.load(folder / f"{case}_seg.npy"), "model"
        import nibabel as nib

        restored = np.asarray(restore(prediction, [Path(f) for f in files["images"]], Path(files["label"])))
        reference = np.rint(np.asarray(nib.load(str(files["label"])).dataobj)).astype(np.int16)
        if restored.shape != reference.shape:
            raise ValueError(f"case {case!r}: the model's restore() returned {restored.shape}; the label file "
                             f"{files['label']} is {reference.shape}")
        return restored.astype(np.int16), reference, "original"


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "model"
