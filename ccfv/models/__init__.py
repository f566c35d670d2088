"""Loading the models ``ccfv rank`` compares, one module per format, all behind :class:`LoadedModel`.

==============================  =========================================  ===============================
module                          a model is                                 preprocessing of the target
==============================  =========================================  ===============================
:mod:`ccfv.models.nnunet`       an nnU-Net v2 trained model folder         the model's own nnU-Net plans
:mod:`ccfv.models.bank`         a ccfv bank model (``model.json``)         nnU-Net plans of the target
:mod:`ccfv.models.bundle`       a MONAI bundle folder (``configs/``)       the bundle's ``preprocessing``
:mod:`ccfv.models.meshnet`      a brainchop MeshNet folder (TensorFlow.js  LIA axes, 1 mm, [0, 1] scaling
                                ``model.json`` + weights)
:mod:`ccfv.models.hippodeep`    hippodeep's state-dict file                z-scored, 1 mm
:mod:`ccfv.models.torch_module` a ``torch.nn.Module`` given from Python    the caller's callable
==============================  =========================================  ===============================

:mod:`ccfv.bank.allowlist` holds the network classes a plans file may name; :mod:`ccfv.models.monai_networks`
the documented decoder stages and heads of MONAI's networks; :mod:`ccfv.models.preprocessing` applies each
model's preprocessing to a dataset's cases (and brings a prediction back onto the label file's grid). Nothing here runs code a model's files name or hold
unless the user opts in (``trust_bundle_code``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from .base import LoadedModel, ModelError

__all__ = ["LoadedModel", "ModelError", "TorchModel", "load_model", "model_names", "name_models", "parse_model_spec", "random_copy"]


def __getattr__(name: str):
    if name == "TorchModel":  # imported lazily: ``import ccfv.models`` stays free of torch
        from .torch_module import TorchModel

        return TorchModel
    raise AttributeError(name)


def load_model(name: str, path: Path, *, trust_bundle_code: bool = False) -> LoadedModel:
    """The model at ``path``: a MONAI bundle folder, a brainchop MeshNet folder (``model.json`` with a
    TensorFlow.js ``modelTopology``), a ccfv bank model (``model.json``, a model card), hippodeep's weights
    file (a ``.pt`` state dict with exactly its tensor names) or an nnU-Net v2 model folder (a ``fold_N``
    folder or a checkpoint file of one too), tried in this order.

    Raises:
        ModelError: naming the file and the reason (missing, unreadable, unsafe, unsupported).
    """
    from . import bank, bundle, meshnet, nnunet

    path = Path(path)
    if not path.exists():
        raise ModelError(f"{path}: no such file or folder")
    try:
        if bundle.is_bundle(path):
            return bundle.load(name, path, trust_bundle_code=trust_bundle_code)
        if meshnet.is_meshnet(path):  # before the bank: both keep a model.json
            return meshnet.load(name, path)
        if bank.is_bank_model(path):
            return bank.load(name, path)
        if path.is_file() and path.suffix in (".pt", ".pth"):
            from . import hippodeep

            if hippodeep.is_hippodeep(path):
                return hippodeep.load(name, path)
        try:
            return nnunet.load(name, path)
        except FileNotFoundError as err:
            raise ModelError(f"{err} ({path} is neither a MONAI bundle, an nnU-Net v2 trained model folder nor a "
                             "ccfv bank model; nor a brainchop MeshNet folder or hippodeep's weights file)") from None
    except ValueError as err:
        raise ModelError(str(err)) from None


def random_copy(model: LoadedModel, seed: int, name: str | None = None) -> LoadedModel:
    """A randomly initialised copy of a loaded MeshNet (:func:`ccfv.models.meshnet.random_copy`) or hippodeep
    (:func:`ccfv.models.hippodeep.random_copy`), for the random members of a bank: same architecture, layers,
    preprocessing and patch, weights drawn from ``seed`` as the format's function documents.

    Raises:
        ModelError: another kind of model (those have their own random members: ``ccfv.bank.training.random_model``).
    """
    if model.kind == "meshnet":
        from .meshnet import random_copy as copy_meshnet

        return copy_meshnet(model, seed, name)
    if model.kind == "hippodeep":
        from .hippodeep import random_copy as copy_hippodeep

        return copy_hippodeep(model, seed, name)
    raise ModelError(f"{model.name}: no random copy for a {model.kind!r} model (MeshNet and hippodeep have one)")


def parse_model_spec(spec: str) -> tuple[str | None, Path]:
    """``NAME=PATH`` or ``PATH``."""
    name, sep, path = spec.partition("=")
    if sep and name and "/" not in name and not Path(spec).exists():
        return name, Path(path)
    return None, Path(spec)


def name_models(specs: Sequence) -> list[tuple[str, object]]:
    """(name, spec) for ``ccfv rank``'s and ``ccfv finetune``'s models: paths named by :func:`model_names`,
    ``TorchModel`` and already loaded :class:`LoadedModel` objects (the workflow's external members,
    :mod:`ccfv.models.members`) by their ``name``, paths first.

    Raises:
        ValueError: two models with one name (a ``TorchModel`` named like a path's model).
    """
    from .torch_module import TorchModel

    objects = (TorchModel, LoadedModel)
    given = [s for s in specs if isinstance(s, objects)]
    named = model_names([str(s) for s in specs if not isinstance(s, objects)]) + [(m.name, m) for m in given]
    taken = [n for n, _ in named]
    if len(set(taken)) != len(taken):
        raise ValueError(f"model names must be unique: {taken}")
    return named


def model_names(specs: Sequence[str]) -> list[tuple[str, Path]]:
    """(name, path) per ``--model``: the given name; else a bank model's or a bundle's folder name
    (``unet-Task91_SynthLiver``) or an nnU-Net model's dataset and folder
    (``Dataset003_Liver/nnUNetTrainer__nnUNetPlans__3d_fullres``); a repeated name gets ``#2``, ``#3``."""
    from .bank import is_bank_model
    from .bundle import is_bundle

    parsed = [parse_model_spec(s) for s in specs]

    def default(path: Path) -> str:
        path = path.resolve() if path.exists() else path
        if path.is_file():
            path = path.parent
        if path.name.startswith("fold_"):
            path = path.parent
        depth = 1 if is_bank_model(path) or is_bundle(path) or not path.exists() else 2
        return "/".join(path.parts[-depth:])

    names = [n or default(p) for n, p in parsed]
    seen: dict[str, int] = {}
    for i, n in enumerate(names):
        seen[n] = seen.get(n, 0) + 1
        if seen[n] > 1:
            names[i] = f"{n}#{seen[n]}"
    return [(n, p) for n, (_, p) in zip(names, parsed)]
