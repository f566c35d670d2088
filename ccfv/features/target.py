"""Sample a bank model's decoder features over a target dataset's training split (one features file).

Which layers are hooked (every decoder stage; the last one is the layer before the final convolution) is
documented, with channels and scales, in ``ccfv/bank/networks.py`` and docs/models.md:

- U-Net (nnU-Net's PlainConvUNet): ``decoder.stages.0`` (lowest resolution, next to the bottleneck) to
  ``decoder.stages.<n-2>`` (full resolution, feeds the final 1x1x1 convolution ``decoder.seg_layers.<n-2>``).
- UNETR (MONAI): ``decoder5`` (1/8), ``decoder4`` (1/4), ``decoder3`` (1/2), ``decoder2`` (full resolution,
  feeds the final convolution ``out``).

``sampling.layer_ratios`` is either one list (every architecture, one ratio per stage) or a mapping
architecture -> list, since the two architectures hook different numbers of stages.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from ..bank.model_card import load_bank_model
from ..bank.networks import decoder_layers, pick_device
from ..preprocess.nnunet import load_case
from ..preprocess.plans import foreground_classes, load_dataset_json
from ..preprocess.splits import read_split
from .settings import SamplingSettings


def sample_target(model_dir: Path, preprocessed_dataset: Path, split_file: Path, out_file: Path, *,
                  target: str, sampling: SamplingSettings | Mapping, threads: int = 1, device: str = "auto") -> Path:
    """Write the features file of (bank model, target) from the target's training cases only.

    ``sampling``: the settings (:class:`SamplingSettings`, or the config's ``sampling:`` section with
    ``layer_ratios`` a list or a mapping architecture -> list)."""
    import torch

    torch.set_num_threads(threads)
    settings = SamplingSettings.from_mapping(sampling)
    network, card = load_bank_model(Path(model_dir), device=str(pick_device(device)))
    layers = decoder_layers(network)
    architecture = card.get("network", "unet")
    try:
        ratios = settings.ratios_for(architecture, len(layers))
    except ValueError as err:
        raise ValueError(f"{card['model_id']}: {err} {layers}") from None
    class_ids = foreground_classes(load_dataset_json(preprocessed_dataset))
    train_cases = read_split(split_file)["train"]

    def cases():
        for case in train_cases:
            image, seg, _ = load_case(Path(preprocessed_dataset), case)
            yield case, image, seg

    return settings.sample(network, layers, cases(), out_file, class_ids=class_ids, patch_size=card["patch_size"],
                           model_id=card["model_id"], architecture=architecture, target=target,
                           device=pick_device(device), num_cases=len(train_cases), progress=True,
                           layer_ratios=ratios)


def sample_member(member: Mapping, raw_dataset: Path, split_file: Path, out_file: Path, *, target: str,
                  sampling: SamplingSettings | Mapping, threads: int = 1, device: str = "auto") -> Path:
    """Write the features file of an external bank member (``bank.external``: a released model or its random
    copy, any format of :mod:`ccfv.models`) over a target's training split, as ``ccfv rank`` samples it: each
    case read from the target's nnU-Net raw dataset and preprocessed in the model's own convention
    (:class:`ccfv.models.preprocessing.Preprocessor`; MeshNet: LIA, 1 mm, [0, 1]; hippodeep: RAS, z-scored),
    then the same sampler and settings as the bank's models (:meth:`SamplingSettings.sample`).

    Args:
        member: the rule params of :class:`ccfv.models.members.ExternalMember` (``name`` is the model id).
        raw_dataset: the target's converted nnU-Net raw dataset (``nnunet/<target>/raw/DatasetNNN_<name>``),
            whose case ids the split names.
        split_file: the target's split (``splits/<target>.json``); only its ``train`` cases are sampled.
        out_file: the features file (:mod:`ccfv.features.file`).
        target: the target task's name, recorded in the file.
        sampling: the settings; ``layer_ratios`` already resolved to one list for this member, or None for
            :func:`ccfv.features.settings.default_layer_ratios` of its number of hooked layers.
        threads: torch CPU threads.
        device: ``auto``, ``cpu`` or ``cuda``.

    Raises:
        ccfv.models.ModelError: the model cannot be loaded; ValueError: layer ratios that do not fit its hooked
            layers, a split of other cases.
    """
    import shutil
    import tempfile

    import torch

    from ..models.members import ExternalMember
    from ..models.preprocessing import Preprocessor
    from ..preprocess.dataset import open_dataset

    torch.set_num_threads(threads)
    settings = SamplingSettings.from_mapping(sampling)
    model = ExternalMember.from_mapping(member).load()
    ratios = settings.layer_ratios
    if ratios is not None and not isinstance(ratios, Mapping) and len(ratios) != len(model.layers):
        raise ValueError(f"{model.name}: sampling.layer_ratios gives {len(ratios)} entries; the model hooks "
                         f"{len(model.layers)} layers {list(model.layers)}")
    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=out_file.parent, prefix=f".{out_file.stem}-work-"))
    try:
        dataset = open_dataset(Path(raw_dataset), work)
        train_cases = read_split(split_file, list(dataset.cases))["train"]
        torch_device = pick_device(device)
        model.network.to(torch_device)
        return settings.sample(model.network, model.layers, Preprocessor(dataset, work).cases(model, train_cases),
                               out_file, class_ids=dataset.class_ids, patch_size=model.patch_size,
                               model_id=model.name, architecture=model.architecture, target=target,
                               device=torch_device, num_cases=len(train_cases), progress=True,
                               layer_ratios=settings.ratios_for(model.architecture, len(model.layers)))
    finally:
        shutil.rmtree(work, ignore_errors=True)
