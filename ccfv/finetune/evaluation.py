"""Dice of a fine-tuned model on the held-out split, in the original image space.

Two routes: :func:`predict_and_score` (the workflow's nnU-Net-trained fine-tunings: nnU-Net's predictor
writes the label files back into the original geometry) and :func:`score_held_out` (the protocol of
:mod:`ccfv.finetune.protocol`, any format: one sliding-window inferer, then the model's preprocessing undone
by :meth:`ccfv.models.preprocessing.Preprocessor.restore`).

Conventions (also in docs/evaluation.md):

- Dice per foreground class and case: 2|P∩R| / (|P| + |R|) on the label map that nnU-Net's predictor
  writes back into the original geometry, against the original reference label.
- A class empty in both prediction and reference has no defined Dice: it is NaN (nnU-Net's own
  convention) and left out of every mean. A class empty in the reference but predicted gets 0.
- ``mean_dice`` (the number correlated with the scores) is the mean over foreground classes of the
  per-class mean over test cases, NaNs skipped; a class that is NaN in every test case is left out.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from ..io import write_json


def dice(prediction: np.ndarray, reference: np.ndarray, label: int) -> float:
    """Dice of one label; NaN when the label is absent from both (see module docstring)."""
    p = prediction == label
    r = reference == label
    denominator = int(p.sum()) + int(r.sum())
    if denominator == 0:
        return math.nan
    return 2.0 * int(np.logical_and(p, r).sum()) / denominator


def dice_per_class(prediction: np.ndarray, reference: np.ndarray, labels: list[int]) -> dict[int, float]:
    if prediction.shape != reference.shape:
        raise ValueError(f"prediction shape {prediction.shape} differs from reference {reference.shape}")
    return {label: dice(prediction, reference, label) for label in labels}


def summarise(per_case: dict[str, dict[int, float]]) -> dict:
    """Per-class means over cases and their mean (NaN-skipping, as documented above)."""
    labels = sorted({label for scores in per_case.values() for label in scores})
    per_class = {}
    for label in labels:
        values = [scores[label] for scores in per_case.values() if not math.isnan(scores[label])]
        per_class[label] = float(np.mean(values)) if values else math.nan
    defined = [v for v in per_class.values() if not math.isnan(v)]
    return {"per_class": per_class, "mean_dice": float(np.mean(defined)) if defined else math.nan}


def predict_and_score(network, plans: dict, dataset_json: dict, raw_dataset: Path, cases: list[str],
                      out_folder: Path, device) -> dict:
    """Predict ``cases`` of an nnU-Net raw dataset with nnU-Net's predictor (no mirroring) and score them."""
    import nibabel as nib
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from ..preprocess.paths import CONFIGURATION

    raw_dataset, out_folder = Path(raw_dataset), Path(out_folder)
    out_folder.mkdir(parents=True, exist_ok=True)
    ending = dataset_json.get("file_ending", ".nii.gz")
    channels = sorted(int(c) for c in dataset_json["channel_names"])
    inputs = [[str(raw_dataset / "imagesTr" / f"{case}_{c:04d}{ending}") for c in channels] for case in cases]
    for files in inputs:
        for f in files:
            if not Path(f).is_file():
                raise FileNotFoundError(f"{f}: image of a held-out case is missing")
    plans_manager = PlansManager(plans)
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                                perform_everything_on_device=device.type == "cuda", device=device,
                                verbose=False, verbose_preprocessing=False, allow_tqdm=False)
    predictor.manual_initialization(network, plans_manager, plans_manager.get_configuration(CONFIGURATION),
                                    [network.state_dict()], dataset_json, "CCFVTrainer", None)
    predictor.predict_from_files_sequential(inputs, [str(out_folder / case) for case in cases],
                                            save_probabilities=False, overwrite=True)
    labels = sorted(int(v) for v in dataset_json["labels"].values() if int(v) > 0)
    per_case = {}
    for case in cases:
        prediction = np.asarray(nib.load(str(out_folder / f"{case}{ending}")).dataobj).astype(np.int16)
        reference = np.asarray(nib.load(str(raw_dataset / "labelsTr" / f"{case}{ending}")).dataobj)
        per_case[case] = dice_per_class(prediction, np.rint(reference).astype(np.int16), labels)
    return {"per_case": per_case, **summarise(per_case)}


def predict_logits(network, image: np.ndarray, patch_size, device, batch_size: int = 2):
    """Logits [K, D, H, W] (float32, on the CPU) of ``network`` over a whole preprocessed case.

    MONAI's ``sliding_window_inference``: windows of ``patch_size`` overlapping by half, blended with a
    Gaussian weight (sigma 1/8 of the window, as nnU-Net's predictor), the case zero-padded where it is
    smaller than a window; no test-time mirroring. ``image``: [C, D, H, W]. ``network`` in eval mode, under
    ``torch.no_grad``.
    """
    import torch
    from monai.inferers import sliding_window_inference

    with torch.no_grad():
        inputs = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None].to(device)
        logits = sliding_window_inference(inputs, roi_size=[int(p) for p in patch_size], sw_batch_size=batch_size,
                                          predictor=network, overlap=0.5, mode="gaussian", sigma_scale=0.125,
                                          padding_mode="constant", cval=0.0)
    return torch.as_tensor(logits)[0].float().cpu()


def score_held_out(network, model, preprocessor, cases: list[str], device) -> dict:
    """Dice of a fine-tuned network on held-out cases, each predicted on the model's grid
    (:func:`predict_logits`) and brought back onto its label file's grid
    (:meth:`ccfv.models.preprocessing.Preprocessor.restore`).

    Args:
        network: the fine-tuned network, logits [B, K, *patch] with K = 1 + the dataset's classes.
        model: the :class:`ccfv.models.base.LoadedModel` it came from (its patch size and preprocessing).
        preprocessor: the dataset's :class:`ccfv.models.preprocessing.Preprocessor`.
        cases: held-out case ids.
        device: a ``torch.device``.

    Returns:
        ``per_case`` ({case: {label: Dice}}), ``per_class``, ``mean_dice`` (:func:`summarise`) and ``space``:
        ``original`` when every case was scored on its label file's grid, ``model`` when the model's
        preprocessing cannot be undone (a callable without ``restore``: Dice on its grid).
    """
    network.eval()
    class_ids = list(preprocessor.dataset.class_ids)
    per_case, spaces = {}, set()
    for case, image, _ in preprocessor.cases(model, cases):
        logits = predict_logits(network, image, model.patch_size, device)
        prediction, reference, space = preprocessor.restore(model, case, logits)
        spaces.add(space)
        per_case[case] = dice_per_class(prediction, reference, class_ids)
    return {"per_case": per_case, **summarise(per_case), "space": "original" if spaces == {"original"} else "model"}


def write_dice(result: dict, path: Path, **meta) -> None:
    """JSON with string keys; NaN written as null so that any JSON reader can take it."""
    def clean(value):
        if isinstance(value, dict):
            return {str(k): clean(v) for k, v in value.items()}
        if isinstance(value, float) and math.isnan(value):
            return None
        return value

    write_json(path, clean({**meta, **result}))


def read_mean_dice(path: Path) -> float:
    value = json.loads(Path(path).read_text())["mean_dice"]
    return math.nan if value is None else float(value)
