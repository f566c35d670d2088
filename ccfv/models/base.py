"""What every model format hands to ``ccfv rank``: :class:`LoadedModel`, and the helpers the loaders share."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..io import read_json  # noqa: F401  (the loaders' reader of plans, metadata, dataset.json)

#: A case preprocessing: (image files, one per channel; label file) -> (image [C, D, H, W] float32,
#: label [D, H, W] integer) on one voxel grid, the image as the network expects it. It may also have a
#: ``restore`` method (:data:`CaseRestoration`), the inverse of its spatial part, with which ``ccfv finetune``
#: scores a prediction on the label file's own grid; without one it scores on the preprocessed grid.
CasePreprocessing = Callable[[list[Path], Path], "tuple[np.ndarray, np.ndarray]"]
#: ``restore(prediction, image files, label file)``: a label map [D, H, W] on the grid the preprocessing
#: returned, brought back onto the label file's voxel grid in nibabel's axis order (``nib.load(label).dataobj``),
#: nearest-neighbour where it resamples. MeshNet's, hippodeep's and the bundles' preprocessings have one.
CaseRestoration = Callable[[np.ndarray, list[Path], Path], np.ndarray]


class ModelError(Exception):
    """A model that cannot be ranked; the message names the model's file and says why."""


@dataclass
class LoadedModel:
    """A model ready to sample: the interface every format in :mod:`ccfv.models` implements.

    ``network`` is in eval mode and returns logits [B, K, *patch_size] for input [B, C, *patch_size];
    ``layers`` are the names (``network.named_modules()``) of its hooked decoder stages, deepest (lowest
    resolution) first, each returning a [B, C_l, *patch_size / scale_l] tensor (``stages`` documents
    channels and scales where the format knows them). How the target data must be preprocessed:

    - ``preprocess`` set: that callable (:data:`CasePreprocessing`) is applied to every case; cases are
      preprocessed once per distinct ``preprocess_key``;
    - else ``plans`` set: nnU-Net's ``DefaultPreprocessor`` with these plans and ``configuration``;
    - else: nnU-Net's plans planned on the target dataset itself (ccfv bank models, as in the workflow).

    ``modalities`` are what the model was trained on, one per input channel in order (e.g. ``["CT"]``),
    or None when the format does not say; ``ccfv rank`` warns when the target's differ.
    """

    name: str
    path: Path
    kind: str                          # "nnunet", "ccfv", "monai-bundle" or "torch"
    architecture: str
    network: Any
    layers: list[str]
    patch_size: list[int]
    num_input_channels: int
    checkpoint: Path | None = None
    sha256: str | None = None
    plans: dict | None = None
    configuration: str = "3d_fullres"
    preprocess: CasePreprocessing | None = None
    preprocess_key: str | None = None
    modalities: list[str] | None = None
    stages: list[tuple[str, int, tuple[int, ...]]] | None = None
    details: dict = field(default_factory=dict)

    @property
    def source_dataset(self) -> str | None:
        return self.details.get("source_dataset")


def strip_prefixes(weights: dict) -> dict:
    """State-dict keys as the plain network names them (torch.compile adds ``_orig_mod.``, DDP ``module.``)."""
    out = {}
    for key, value in weights.items():
        for prefix in ("module.", "_orig_mod."):
            if key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = value
    return out


def load_weights_strictly(network, weights: dict, checkpoint: Path, what: str) -> None:
    """``network.load_state_dict(weights, strict=True)``; a mismatch is a :class:`ModelError` naming the file."""
    try:
        network.load_state_dict(strip_prefixes(weights), strict=True)
    except RuntimeError as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        raise ModelError(f"{checkpoint}: does not fit {what}: {' '.join(lines[:3])[:600]}") from None


def random_copy_of(model: LoadedModel, network, seed: int, init: str, name: str | None = None) -> LoadedModel:
    """``model`` with ``network`` (a randomly initialised copy of its network, built by the format's
    ``random_copy``) in its place: same layers, preprocessing and patch; no checkpoint or checksum; named
    ``<name>-random<seed>`` unless ``name`` is given; ``details`` record ``random_copy_of``, ``seed`` and
    ``init`` (how the weights were drawn), and no source dataset."""
    from dataclasses import replace

    return replace(model, name=name or f"{model.name}-random{seed}", network=network, checkpoint=None, sha256=None,
                   details={**model.details, "random_copy_of": model.name, "seed": int(seed), "init": init,
                            "source_dataset": None})
