"""The workflow's own bank models (``results/bank/<model>/``): ``model.json`` and ``weights.safetensors``.

safetensors holds tensors only, so nothing in the file can execute; the network is built from the card's
architecture entry (``ccfv.networks.build``: nnU-Net's U-Net behind the allowlist, or MONAI's UNETR). A bank
model is applied to the target with nnU-Net plans planned on the target itself, as the workflow does.
"""
from __future__ import annotations

import json
import math
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


def parameter_count(model_dir: Path, include_heads: bool = False) -> int:
    """The number of weights of a bank model: the elements of every tensor in its ``weights.safetensors``,
    the segmentation heads excluded unless ``include_heads`` (:func:`ccfv.networks.is_head`: nnU-Net's
    ``decoder.seg_layers.*``, UNETR's ``out.*``).

    The heads are left out because fine-tuning replaces them (their size follows the source task's number
    of classes, not the network): two models of one architecture count the same. Tensors that the network
    aliases (nnU-Net's encoder, also reachable as ``decoder.encoder``) are stored once in the file
    (``ccfv.training.save_bank_model``) and so counted once.

    Only the file's header is read: 8 bytes (little-endian unsigned length N), then N bytes of JSON
    ``{name: {"dtype", "shape", "data_offsets"}, "__metadata__": {...}}`` (the safetensors format,
    https://github.com/huggingface/safetensors#format). No tensor is loaded and neither torch nor
    safetensors is needed, so the results stage's env can count. Raises FileNotFoundError for a missing
    file and ValueError naming the file for a header that is not that format.
    """
    from .. import networks
    from ..training import WEIGHTS

    path = Path(model_dir) / WEIGHTS
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; {model_dir} is not a ccfv bank model")
    with path.open("rb") as handle:
        prefix = handle.read(8)
        size = int.from_bytes(prefix, "little") if len(prefix) == 8 else -1
        if not 0 < size <= path.stat().st_size - 8:
            raise ValueError(f"{path}: not a safetensors file (header length {size}, file of {path.stat().st_size} "
                             "bytes)")
        try:
            header = json.loads(handle.read(size))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"{path}: not a safetensors file (header is not JSON: {err})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path}: not a safetensors file (header is not a JSON object)")
    total = 0
    for name, entry in header.items():
        if name == "__metadata__" or (not include_heads and networks.is_head(name)):
            continue
        shape = entry.get("shape") if isinstance(entry, dict) else None
        if not isinstance(shape, list) or not all(isinstance(s, int) and s >= 0 for s in shape):
            raise ValueError(f"{path}: tensor {name!r} has no valid shape in the header ({entry!r})")
        total += math.prod(shape)
    return total
