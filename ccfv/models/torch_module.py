"""Any PyTorch model, handed over from Python (:func:`ccfv.rank_models`): the caller says which layers are
the decoder stages, how a case is preprocessed and what patch size the network takes."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from .base import CasePreprocessing, LoadedModel, ModelError


@dataclass
class TorchModel:
    """A ready ``torch.nn.Module`` to rank.

    Args:
        name: the model's name in the ranking.
        network: maps [B, C, *patch_size] to logits [B, K, *patch_size] (K: its classes, background first);
            put in eval mode by ccfv.
        layers: names in ``network.named_modules()`` of the decoder stages to hook, deepest first; each must
            output a [B, C_l, d, h, w] tensor once per forward pass.
        preprocess: (image files, one per channel; label file) -> (image [C, D, H, W] float32, label
            [D, H, W] integer), both on one voxel grid, the image as the network expects it.
        patch_size: the sliding-window size (3 ints, voxels).
        modalities: what it was trained on, one per input channel (e.g. ``["CT"]``), for the modality check.
        preprocess_key: models with the same key share one preprocessed copy of the data (default: one
            copy per model).
    """

    name: str
    network: object
    layers: Sequence[str]
    preprocess: CasePreprocessing
    patch_size: Sequence[int]
    modalities: Sequence[str] | None = None
    preprocess_key: str | None = None
    details: dict = field(default_factory=dict)

    @classmethod
    def from_loaded(cls, model: LoadedModel) -> "TorchModel":
        """A loaded model (any format, e.g. a random copy from :func:`ccfv.models.random_copy`, which has no
        file to name) handed to :func:`ccfv.rank_models` as an in-memory model: its network, layers,
        preprocessing (``preprocess`` must be set: MeshNet, hippodeep, bundles), patch size, modalities and
        details."""
        if model.preprocess is None:
            raise ModelError(f"{model.name}: has no preprocess callable (a {model.kind!r} model is preprocessed "
                             "with nnU-Net plans); rank it by its path instead")
        return cls(name=model.name, network=model.network, layers=list(model.layers), preprocess=model.preprocess,
                   patch_size=list(model.patch_size), modalities=model.modalities,
                   preprocess_key=model.preprocess_key, details=dict(model.details))

    def load(self) -> LoadedModel:
        import torch

        if not isinstance(self.network, torch.nn.Module):
            raise ModelError(f"{self.name}: network is a {type(self.network).__name__}, not a torch.nn.Module")
        modules = dict(self.network.named_modules())
        missing = [n for n in self.layers if n not in modules]
        if not self.layers or missing:
            raise ModelError(f"{self.name}: layers {missing or list(self.layers)} are not modules of "
                             f"{type(self.network).__name__} (see network.named_modules())")
        patch = [int(p) for p in self.patch_size]
        if len(patch) != 3 or min(patch) < 1:
            raise ModelError(f"{self.name}: patch_size must be 3 positive ints, got {list(self.patch_size)}")
        if not callable(self.preprocess):
            raise ModelError(f"{self.name}: preprocess must be callable")
        first = next((m for m in self.network.modules() if isinstance(m, (torch.nn.Conv3d, torch.nn.Linear))), None)
        in_channels = first.in_channels if isinstance(first, torch.nn.Conv3d) else None
        self.network.eval()
        return LoadedModel(
            name=self.name, path=Path(self.name), kind="torch", architecture=type(self.network).__name__,
            network=self.network, layers=list(self.layers), patch_size=patch, num_input_channels=in_channels,
            preprocess=self.preprocess, preprocess_key=self.preprocess_key or f"torch-{id(self)}",
            modalities=list(self.modalities) if self.modalities else None, details=dict(self.details),
        )
