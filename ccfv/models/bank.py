"""The workflow's own bank models (``results/bank/<model>/``): ``model.json`` and ``weights.safetensors``.

safetensors holds tensors only, so nothing in the file can execute; the network is built from the card's
architecture entry (``ccfv.networks.build``: nnU-Net's U-Net behind the allowlist, or MONAI's UNETR). A bank
model is applied to the target with nnU-Net plans planned on the target itself, as the workflow does.
"""
from __future__ import annotations

import json
from pathlib import Path

from .base import LoadedModel, ModelError


def build_network(card: dict, deep_supervision: bool = False):
    """Build the (untrained) network a model card describes (``network``: unet, the default, or unetr)."""
    from .. import networks

    return networks.build(card.get("network", networks.UNET), card["architecture"], card["num_input_channels"],
                          card["num_classes"], deep_supervision=deep_supervision)


def read_model_card(model_dir: Path) -> dict:
    """``model.json`` of a bank model; a missing file or required key is an error naming the file."""
    from ..training import MODEL_CARD

    path = Path(model_dir) / MODEL_CARD
    try:
        card = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: missing; {model_dir} is not a ccfv bank model") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    for key in ("model_id", "architecture", "num_input_channels", "num_classes", "patch_size"):
        if key not in card:
            raise ValueError(f"{path}: required key {key!r} is missing")
    return card


def load_bank_model(model_dir: Path, device: str = "cpu"):
    """(network in eval mode without deep supervision, model card) of a bank model.

    Every tensor of the network must be in the file with its shape, and nothing else may be (a mismatch is
    a ValueError naming the file).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_model

    from ..training import MODEL_CARD, WEIGHTS, pick_device

    card = read_model_card(model_dir)
    network = build_network(card, deep_supervision=False)
    path = Path(model_dir) / WEIGHTS
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing")
    try:
        load_model(network, str(path), strict=True, device="cpu")
    except SafetensorError as err:
        raise ValueError(f"{path}: not a readable safetensors file ({err})") from None
    except RuntimeError as err:  # strict loading: missing/unexpected keys or wrong shapes
        raise ValueError(f"{path}: does not fit the network described by {MODEL_CARD}: {err}") from None
    network.to(pick_device(device)).eval()
    return network, card


def is_bank_model(path: Path) -> bool:
    from ..training import MODEL_CARD

    return Path(path).is_dir() and (Path(path) / MODEL_CARD).is_file()


def load(name: str, path: Path) -> LoadedModel:
    """A bank model as :class:`LoadedModel` (preprocessing: the target's own nnU-Net plans)."""
    from .. import networks
    from ..checksums import sha256_file
    from ..training import WEIGHTS

    path = Path(path)
    try:
        network, card = load_bank_model(path)
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
        sha256=sha256_file(path / WEIGHTS), stages=stages,
        details={"source_dataset": card.get("source_task"), "model_id": card["model_id"]},
    )
