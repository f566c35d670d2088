"""Each case of the user's dataset preprocessed as a model expects it, once per distinct preprocessing: the
model's nnU-Net plans, nnU-Net's plans for the dataset itself (ccfv bank models), or the model's own callable."""
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
from ..models.base import LoadedModel
from .dataset import Dataset

# ----------------------------------------------------------------------------------------------
# Preprocessing
# ----------------------------------------------------------------------------------------------


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
        folder = self.work / "preprocessed" / safe_name(model.preprocess_key or model.name)
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


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "model"
