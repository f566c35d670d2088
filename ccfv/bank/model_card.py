"""The model bank's file format: a folder with ``weights.safetensors`` (tensors only: loading it can never run
code) and ``model.json``, the model card (what network to build: nnU-Net's architecture entry of the shared
plans or UNETR's, the number of input channels and classes, the source task and what its channels were:
``channel_names`` and ``modalities``). Written by pretraining and the random members, read by fine-tuning,
feature sampling, ``ccfv rank`` and the results stage."""
from __future__ import annotations

import json
import math
import shutil
import tempfile
from pathlib import Path

from ..preprocess.paths import CONFIGURATION
from . import networks

WEIGHTS = "weights.safetensors"
MODEL_CARD = "model.json"


def build_network(card: dict, deep_supervision: bool = False):
    """Build the (untrained) network a model card describes (``network``: unet, the default, or unetr)."""
    from . import networks

    return networks.build(card.get("network", networks.UNET), card["architecture"], card["num_input_channels"],
                          card["num_classes"], deep_supervision=deep_supervision)


def read_model_card(model_dir: Path) -> dict:
    """``model.json`` of a bank model; a missing file or required key is an error naming the file."""

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

    from .networks import pick_device

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


def save_bank_model(network, card: dict, out_dir: Path) -> Path:
    """Write weights and card into ``out_dir`` atomically (a scratch folder renamed into place)."""
    import torch
    from safetensors.torch import save_model

    out_dir = Path(out_dir)
    broken = [k for k, v in network.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if broken:
        raise ValueError(f"{card['model_id']}: training produced non-finite weights ({broken[:5]}); "
                         f"nothing written to {out_dir}")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}-"))
    try:
        # save_model stores tensors that nnU-Net aliases (the encoder is reachable as ``decoder.encoder``)
        # once; load_model restores the aliases.
        save_model(network, str(scratch / WEIGHTS))
        (scratch / MODEL_CARD).write_text(json.dumps(card, indent=2))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        scratch.rename(out_dir)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return out_dir


def network_spec(plans: dict, network: str = networks.UNET, options: dict | None = None) -> tuple[str, dict]:
    """(network name, architecture entry) of a bank network on the shared plans: the plans' own U-Net, or
    a UNETR whose img_size is the plans' patch size (``options``: its config section)."""
    conf = plans["configurations"][CONFIGURATION]
    if network == networks.UNET:
        return network, conf["architecture"]
    if network == networks.UNETR:
        return network, networks.unetr_architecture(conf["patch_size"], options)
    raise ValueError(f"unknown network {network!r}; known: {list(networks.ARCHITECTURES)}")


def channel_modalities(channel_names: dict) -> list[str]:
    """nnU-Net's ``channel_names`` ({"0": "CT"} or {"0": "T2", "1": "ADC"}) as a list in channel order."""
    return [str(channel_names[k]) for k in sorted(channel_names, key=int)]


def card_modalities(card: dict, where: Path | str = MODEL_CARD) -> list[str] | None:
    """What a bank model was trained on, one modality per input channel in order (``["CT"]``), from its card's
    ``modalities``; None for cards written before the card recorded them (nothing to compare, so no modality
    warning is possible). A ``modalities`` that is not a list of ``num_input_channels`` strings is a ValueError
    naming ``where``."""
    modalities = card.get("modalities")
    if modalities is None:
        return None
    if not (isinstance(modalities, list) and all(isinstance(m, str) for m in modalities)
            and len(modalities) == card["num_input_channels"]):
        raise ValueError(f"{where}: 'modalities' must list one name per input channel "
                         f"({card['num_input_channels']}), got {modalities!r}")
    return list(modalities)


def make_model_card(model_id: str, plans: dict, dataset_json: dict, source_task: str | None,
          spec: tuple[str, dict] | None = None, **extra) -> dict:
    """The card of a bank model planned with ``plans`` on the preprocessed dataset whose nnU-Net ``dataset.json``
    is ``dataset_json``: the network, its input channels and classes, and the channels it was trained on
    (``channel_names`` as nnU-Net has them, ``modalities`` in channel order; for a random member the dataset it
    was planned on), which ``ccfv rank`` compares with the target's."""
    conf = plans["configurations"][CONFIGURATION]
    name, architecture = spec or network_spec(plans)
    return {
        "model_id": model_id,
        "architecture": architecture,
        "network": name,
        "patch_size": list(conf["patch_size"]),
        "num_input_channels": len(dataset_json["channel_names"]),
        "channel_names": dict(dataset_json["channel_names"]),
        "modalities": channel_modalities(dataset_json["channel_names"]),
        "num_classes": len(dataset_json["labels"]),
        "labels": dataset_json["labels"],
        "source_task": source_task,
        **extra,
    }


def parameter_count(model_dir: Path, include_heads: bool = False) -> int:
    """The number of weights of a bank model: the elements of every tensor in its ``weights.safetensors``,
    the segmentation heads excluded unless ``include_heads`` (:func:`ccfv.bank.networks.is_head`: nnU-Net's
    ``decoder.seg_layers.*``, UNETR's ``out.*``).

    The heads are left out because fine-tuning replaces them (their size follows the source task's number
    of classes, not the network): two models of one architecture count the same. Tensors that the network
    aliases (nnU-Net's encoder, also reachable as ``decoder.encoder``) are stored once in the file
    (``ccfv.bank.model_card.save_bank_model``) and so counted once.

    Only the file's header is read: 8 bytes (little-endian unsigned length N), then N bytes of JSON
    ``{name: {"dtype", "shape", "data_offsets"}, "__metadata__": {...}}`` (the safetensors format,
    https://github.com/huggingface/safetensors#format). No tensor is loaded and neither torch nor
    safetensors is needed, so the results stage's env can count. Raises FileNotFoundError for a missing
    file and ValueError naming the file for a header that is not that format.
    """
    from . import networks

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
