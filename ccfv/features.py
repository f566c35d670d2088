"""Sample a bank model's decoder features over a target dataset's training split (one features file).

Which layers are hooked (every decoder stage; the last one is the layer before the final convolution) is
documented, with channels and scales, in ``ccfv/networks.py`` and docs/models.md:

- U-Net (nnU-Net's PlainConvUNet): ``decoder.stages.0`` (lowest resolution, next to the bottleneck) to
  ``decoder.stages.<n-2>`` (full resolution, feeds the final 1x1x1 convolution ``decoder.seg_layers.<n-2>``).
- UNETR (MONAI): ``decoder5`` (1/8), ``decoder4`` (1/4), ``decoder3`` (1/2), ``decoder2`` (full resolution,
  feeds the final convolution ``out``).

``sampling.layer_ratios`` is either one list (every architecture, one ratio per stage) or a mapping
architecture -> list, since the two architectures hook different numbers of stages.
"""
from __future__ import annotations

import json
from pathlib import Path

from .models.bank import load_bank_model
from .networks import decoder_layers, layer_ratios_for
from .preprocessing import load_case
from .splits import read_split
from .training import pick_device

__all__ = ["decoder_layers", "sample_target"]


def sample_target(model_dir: Path, preprocessed_dataset: Path, split_file: Path, out_file: Path, *,
                  target: str, sampling: dict, threads: int = 1, device: str = "auto") -> Path:
    """Write the features file of (bank model, target) from the target's training cases only."""
    import torch

    torch.set_num_threads(threads)
    from .sampling import sample_dataset

    network, card = load_bank_model(Path(model_dir), device=str(pick_device(device)))
    layers = decoder_layers(network)
    try:
        ratios = layer_ratios_for(sampling["layer_ratios"], card.get("network", "unet"), len(layers))
    except ValueError as err:
        raise ValueError(f"{card['model_id']}: {err} {layers}") from None
    dataset_json = json.loads((Path(preprocessed_dataset) / "dataset.json").read_text())
    class_ids = sorted(int(v) for v in dataset_json["labels"].values() if int(v) > 0)
    train_cases = read_split(split_file)["train"]

    def cases():
        for case in train_cases:
            image, seg, _ = load_case(Path(preprocessed_dataset), case)
            yield case, image, seg

    return sample_dataset(
        network, layers, cases(), out_file, class_ids=class_ids,
        budgets={k: sampling[k] for k in ("total", "minimum", "n_global", "n_background")},
        patch_size=card["patch_size"], model_id=card["model_id"], architecture=card.get("network", "unet"),
        target=target, seed=sampling["seed"], step_size=sampling["step_size"],
        batch_size=sampling["batch_size"], layer_ratios=ratios, device=pick_device(device),
        num_cases=len(train_cases), progress=True,
    )
