"""The workflow's own bank models (``results/bank/<model>/``): ``model.json`` and ``weights.safetensors``.

safetensors holds tensors only, so nothing in the file can execute; the network is built from the card's
architecture entry (``ccfv.bank.networks.build``: nnU-Net's U-Net behind the allowlist, or MONAI's UNETR). A bank
model is applied to the target with nnU-Net plans planned on the target itself, as the workflow does.
"""
from __future__ import annotations

from pathlib import Path

from ..bank.model_card import card_modalities, load_bank_model
from .base import LoadedModel, ModelError


def is_bank_model(path: Path) -> bool:
    from ..bank.model_card import MODEL_CARD

    return Path(path).is_dir() and (Path(path) / MODEL_CARD).is_file()


def load(name: str, path: Path) -> LoadedModel:
    """A bank model as :class:`LoadedModel` (preprocessing: the target's own nnU-Net plans).

    ``modalities``: the card's, i.e. the channels of the source task it was pretrained on, which ``ccfv rank``
    compares with the target's. None for a random member (its card records the channels of the dataset it was
    planned on, but a network never trained expects no modality: a warning would be noise) and for a card
    written before cards recorded them (no warning possible). Raises :class:`ModelError` naming the file for a
    card or weights that cannot be used."""
    from ..bank import networks
    from ..bank.model_card import MODEL_CARD, WEIGHTS
    from ..data.checksums import sha256_file

    path = Path(path)
    try:
        network, card = load_bank_model(path)
        modalities = card_modalities(card, path / MODEL_CARD)
        if card.get("source_task") is None:  # a random member: trained on nothing
            modalities = None
    except (ValueError, FileNotFoundError) as err:
        raise ModelError(str(err)) from None
    kind = card.get("network", networks.UNET)
    try:
        stages = networks.decoder_stages(kind, card["architecture"])
    except (KeyError, ValueError):
        stages = None
    return LoadedModel(
        name=name, path=path, kind="ccfv", architecture=kind, network=network,
        layers=networks.decoder_layers(network), patch_size=[int(p) for p in card["patch_size"]],
        num_input_channels=int(card["num_input_channels"]), checkpoint=path / WEIGHTS,
        sha256=sha256_file(path / WEIGHTS), stages=stages, modalities=modalities,
        details={"source_dataset": card.get("source_task"), "model_id": card["model_id"],
                 "head": networks.HEADS[kind]},
    )
