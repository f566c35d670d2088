"""nnU-Net v2 trained model folders (``plans.json``, ``dataset.json``, ``fold_N/checkpoint_final.pth``).

Read without running anything the folder names or holds: the checkpoint with
``torch.load(weights_only=True)`` (numpy scalars admitted, as nnU-Net logs them), the network class and ops
of ``plans.json`` checked against :mod:`ccfv.bank.allowlist` before nnU-Net imports them. Plans in
nnU-Net's older format (``UNet_class_name``, ``UNet_base_num_features`` per configuration) are converted as
nnU-Net's own ``ConfigurationManager`` does, for the two classes it converts (PlainConvUNet,
ResidualEncoderUNet); any other class there (STU-Net's ``STUNet``, say) is refused by name. The target data
is preprocessed with the model's own plans (spacing, transpose, normalisation with the intensity
statistics it was trained with).
"""
from __future__ import annotations

import copy
import warnings
from pathlib import Path

from ..bank.allowlist import check_unet_architecture
from .base import LoadedModel, ModelError, load_weights_strictly, read_json

CHECKPOINT_NAMES = ("checkpoint_final.pth", "checkpoint_best.pth")
#: ``UNet_class_name`` values of older plans that nnU-Net (and so ccfv) converts to an architecture entry.
OLD_PLANS_CLASSES = {
    "PlainConvUNet": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
    "ResidualEncoderUNet": "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet",
}


def find_checkpoint(path: Path) -> tuple[Path, Path]:
    """(model folder, checkpoint) of a model folder, a ``fold_N`` folder or a checkpoint file: the first of
    ``checkpoint_final.pth``, ``checkpoint_best.pth`` over the folds in numeric order."""
    if path.is_file():
        return path.parent.parent, path
    if path.name.startswith("fold_"):
        folds = [path]
        model_dir = path.parent
    else:
        model_dir = path
        folds = sorted((p for p in path.glob("fold_*") if p.is_dir()),
                       key=lambda p: (not p.name[5:].isdigit(), int(p.name[5:]) if p.name[5:].isdigit() else 0))
    for name in CHECKPOINT_NAMES:
        for fold in folds:
            if (fold / name).is_file():
                return model_dir, fold / name
    looked = ", ".join(str(f.relative_to(model_dir)) for f in folds) or "no fold_N folder"
    raise ModelError(f"{path}: no {' or '.join(CHECKPOINT_NAMES)} (looked in: {looked})")


def modernise_plans(plans: dict, configuration: str, where: Path) -> dict:
    """``plans`` with ``configuration`` in the current format (an ``architecture`` entry).

    Older plans (nnU-Net v2 before 2.3: ``UNet_class_name``, ``UNet_base_num_features``, ...) are converted
    by nnU-Net's own ``ConfigurationManager``, only for :data:`OLD_PLANS_CLASSES`.

    Raises:
        ModelError: another ``UNet_class_name`` (nothing is imported), or an older entry missing a key.
    """
    conf = plans["configurations"][configuration]
    if "architecture" in conf or "inherits_from" in conf:
        return plans
    name = conf.get("UNet_class_name")
    if name is None:
        raise ModelError(f"{where}: configuration {configuration!r} has neither 'architecture' (nnU-Net v2 plans) "
                         "nor 'UNet_class_name' (older nnU-Net v2 plans)")
    if name not in OLD_PLANS_CLASSES:
        raise ModelError(f"{where}: plans in nnU-Net's older format with UNet_class_name {name!r}: ccfv (like "
                         f"nnU-Net) converts only {sorted(OLD_PLANS_CLASSES)}; a custom network such as STU-Net "
                         "needs its own code, which ccfv does not import. Re-plan it with a current nnU-Net or "
                         "export it as a MONAI bundle or a torch module (docs/rank.md)")
    from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager

    plans = copy.deepcopy(plans)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # nnU-Net's "Detected old nnU-Net plans format" is expected here
            converted = ConfigurationManager(plans["configurations"][configuration]).configuration
    except KeyError as err:
        raise ModelError(f"{where}: plans in nnU-Net's older format without {err} in configuration "
                         f"{configuration!r}") from None
    converted["architecture"]["network_class_name"] = OLD_PLANS_CLASSES[name]
    plans["configurations"][configuration] = converted
    return plans


def load(name: str, path: Path) -> LoadedModel:
    """An nnU-Net v2 trained model as :class:`LoadedModel` (decoder stages ``decoder.stages.*``)."""
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from ..bank import networks
    from ..bank.checkpoints import read_checkpoint
    from ..data.checksums import sha256_file

    path = Path(path)
    model_dir, checkpoint_path = find_checkpoint(path)
    plans = read_json(model_dir / "plans.json")
    model_json = read_json(model_dir / "dataset.json")
    try:
        checkpoint = read_checkpoint(checkpoint_path, numpy_scalars=True)
    except (ValueError, FileNotFoundError) as err:
        raise ModelError(str(err)) from None
    if not isinstance(checkpoint, dict) or "network_weights" not in checkpoint:
        raise ModelError(f"{checkpoint_path}: not an nnU-Net checkpoint (no 'network_weights')")
    init_args = checkpoint.get("init_args") if isinstance(checkpoint.get("init_args"), dict) else {}
    configuration = init_args.get("configuration") or model_dir.name.split("__")[-1]
    if configuration not in plans.get("configurations", {}):
        raise ModelError(f"{model_dir / 'plans.json'}: no configuration {configuration!r} "
                         f"(has {sorted(plans.get('configurations', {}))})")
    plans = modernise_plans(plans, configuration, model_dir / "plans.json")
    manager = PlansManager(plans)
    conf = manager.get_configuration(configuration)
    if len(conf.patch_size) != 3:
        raise ModelError(f"{model_dir}: configuration {configuration!r} is 2D (patch {conf.patch_size}); "
                         "ccfv ranks 3D models")
    architecture = {"network_class_name": conf.network_arch_class_name, "arch_kwargs": conf.network_arch_init_kwargs,
                    "_kw_requires_import": list(conf.network_arch_init_kwargs_req_import)}
    try:
        check_unet_architecture(architecture, where=str(model_dir / "plans.json"))
    except ValueError as err:
        raise ModelError(str(err)) from None
    in_channels = determine_num_input_channels(manager, conf, model_json)
    num_heads = manager.get_label_manager(model_json).num_segmentation_heads
    network = networks.build(networks.UNET, architecture, in_channels, num_heads, deep_supervision=False)
    load_weights_strictly(network, checkpoint["network_weights"], checkpoint_path,
                          f"the network of {model_dir / 'plans.json'} ({configuration})")
    network.eval()
    channel_names = model_json.get("channel_names") or {}
    modalities = [str(channel_names[k]) for k in sorted(channel_names, key=lambda k: int(k))] \
        if all(str(k).isdigit() for k in channel_names) else None
    return LoadedModel(
        name=name, path=path, kind="nnunet", architecture=architecture["network_class_name"].rsplit(".", 1)[-1],
        network=network, layers=networks.decoder_layers(network), patch_size=[int(p) for p in conf.patch_size],
        num_input_channels=int(in_channels), checkpoint=checkpoint_path, sha256=sha256_file(checkpoint_path),
        plans=plans, configuration=configuration, modalities=modalities or None,
        stages=networks.decoder_stages(networks.UNET, architecture),
        details={"source_dataset": model_json.get("name", plans.get("dataset_name")),
                 "trainer": checkpoint.get("trainer_name"), "epoch": checkpoint.get("current_epoch"),
                 "channel_names": channel_names, "head": networks.HEADS[networks.UNET]},
    )
