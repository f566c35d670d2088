"""External bank members: released models the workflow's config names (``bank.external``), loaded by the same
loaders as ``ccfv rank``'s models (:func:`ccfv.models.load_model`), optionally as a randomly initialised copy
(:func:`ccfv.models.random_copy`) and with another sliding-window patch than the format's default.

The workflow's rules hand one :class:`ExternalMember` (a plain mapping in the rule's params) to the features and
fine-tuning stages; the config check (:func:`ccfv.workflow.check_config`) calls :func:`detect_format` on every
path before any job runs.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from .base import LoadedModel, ModelError

#: The formats an external member may have, as :func:`detect_format` names them (``LoadedModel.kind``).
FORMATS = ("meshnet", "hippodeep", "ccfv", "monai-bundle", "nnunet")
#: The formats with a random copy (:func:`ccfv.models.random_copy`) and a loader that takes a patch size.
RANDOM_COPY_FORMATS = ("meshnet", "hippodeep")


def detect_format(path: Path) -> str | None:
    """The model format of ``path`` (one of :data:`FORMATS`), tried in :func:`ccfv.models.load_model`'s order,
    or None when it is none of them. Reads the folder's JSON files, a ``.pt`` file's tensor names, or looks for
    an nnU-Net checkpoint; builds no network."""
    from . import bank, bundle, meshnet, nnunet

    path = Path(path)
    if not path.exists():
        return None
    if bundle.is_bundle(path):
        return "monai-bundle"
    if meshnet.is_meshnet(path):
        return "meshnet"
    if bank.is_bank_model(path):
        return "ccfv"
    if path.is_file() and path.suffix in (".pt", ".pth"):
        from .hippodeep import is_hippodeep

        if is_hippodeep(path):
            return "hippodeep"
    if path.is_file() and path.suffix != ".pth":
        return None
    try:
        model_dir, _ = nnunet.find_checkpoint(path)
    except (FileNotFoundError, ValueError, ModelError):
        return None
    return "nnunet" if (Path(model_dir) / "plans.json").is_file() else None


@dataclass(frozen=True)
class ExternalMember:
    """One member of ``bank.external`` as a job needs it.

    Attributes:
        name: its model id (``model18cls-released``, ``model18cls-random``).
        path: the released model (a MeshNet folder, hippodeep's ``.pt``, any :data:`FORMATS`).
        random_seed: None for the released weights; else the seed of a randomly initialised copy
            (:func:`ccfv.models.random_copy`: MeshNet and hippodeep only).
        patch_size: None for the format's default sliding-window (and fine-tuning) patch; else 3 voxel counts in
            the model's own axis order (MeshNet: any; hippodeep: multiples of 4). Only MeshNet and hippodeep.
    """

    name: str
    path: Path
    random_seed: int | None = None
    patch_size: tuple[int, ...] | None = None

    @classmethod
    def from_mapping(cls, values: Mapping) -> ExternalMember:
        """From a rule's params (``name``, ``path``, ``random_seed``, ``patch_size``; the last two optional)."""
        patch = values.get("patch_size")
        return cls(name=str(values["name"]), path=Path(values["path"]), random_seed=values.get("random_seed"),
                   patch_size=None if patch is None else tuple(int(p) for p in patch))

    def load(self) -> LoadedModel:
        """The member as :class:`LoadedModel`, named :attr:`name`.

        Raises:
            ModelError: naming the path: an unknown format, a patch size or random copy for a format without
                one, or the format loader's own errors.
        """
        fmt = detect_format(self.path)
        if fmt is None:
            raise ModelError(f"{self.path}: not a model of a known format ({', '.join(FORMATS)})")
        if (self.patch_size is not None or self.random_seed is not None) and fmt not in RANDOM_COPY_FORMATS:
            raise ModelError(f"{self.path}: a {fmt!r} model takes no patch_size or random copy here (only "
                             f"{list(RANDOM_COPY_FORMATS)} do)")
        if self.patch_size is not None:
            if fmt == "meshnet":
                from .meshnet import load
            else:
                from .hippodeep import load
            model = load(self.name, self.path, patch_size=self.patch_size)
        else:
            from . import load_model

            model = load_model(self.name, self.path)
        if self.random_seed is not None:
            from . import random_copy

            model = random_copy(model, int(self.random_seed), self.name)
        return replace(model, name=self.name)


def head_excluded_parameter_count(model: LoadedModel) -> int:
    """The number of weights of ``model``'s network without its head (``details["head"]``, the module that
    fine-tuning replaces), as :func:`ccfv.bank.model_card.parameter_count` counts a bank model: a released
    network and its random copy count the same. Shared tensors are counted once.

    Raises:
        ModelError: the model names no head, or one that is not a module of its network.
    """
    head = model.details.get("head")
    modules = dict(model.network.named_modules())
    if not head or head not in modules:
        raise ModelError(f"{model.name}: no head module {head!r} to leave out of the parameter count")
    head_ids = {id(p) for p in modules[head].parameters()}
    seen: set[int] = set()
    total = 0
    for parameter in model.network.parameters():
        if id(parameter) in seen or id(parameter) in head_ids:
            continue
        seen.add(id(parameter))
        total += int(parameter.numel())
    return total


def member_names(external: Mapping[str, Mapping]) -> list[str]:
    """The model ids of ``bank.external``: ``<name>-released`` for every entry, ``<name>-random`` for every
    entry with ``random_copy`` (default true), in the config's order."""
    from ..bank.model_ids import random_model_id, released_model_id

    ids: list[str] = []
    for name, entry in external.items():
        ids.append(released_model_id(name))
        if (entry or {}).get("random_copy", True):
            ids.append(random_model_id(name))
    return ids


def external_member(model_id: str, external: Mapping[str, Mapping], seed: int) -> dict:
    """The rule params of one external member id (``<name>-released`` or ``<name>-random``) of ``bank.external``:
    ``{"name", "path", "random_seed", "patch_size"}`` (random_seed: ``seed``, the config's ``random_init.seed``,
    for a random copy; else None), JSON-ready for :meth:`ExternalMember.from_mapping`.

    Raises:
        ValueError: an id of no external member.
    """
    from ..bank.model_ids import parse_model_id

    name, source, _ = parse_model_id(model_id)
    if name not in external:
        raise ValueError(f"{model_id!r} is no member of bank.external ({sorted(external)})")
    entry = external[name] or {}
    patch = entry.get("patch_size")
    return {"name": model_id, "path": str(entry["path"]),
            "random_seed": int(seed) if source is None else None,
            "patch_size": None if patch is None else [int(p) for p in patch]}


#: The card of an external member in the workflow's bank (``bank/<model id>/member.json``).
MEMBER_CARD = "member.json"


def write_member_card(member: Mapping, out_file: Path, source_cases: int | None = None) -> dict:
    """Load an external member once and write what the results stage needs of it without torch
    (``bank/<model id>/member.json``): ``model_id``, ``path``, ``format`` (``LoadedModel.kind``),
    ``architecture``, ``layers`` (hooked, deepest first), ``patch_size``, ``parameter_count`` (heads excluded,
    :func:`head_excluded_parameter_count`: for "larger model first"), ``source_cases`` (the authors' training
    cases when the config gives them, for "larger source dataset first"; None for a random copy, which was
    trained on nothing), ``random_copy_of`` and ``random_seed`` (None for the released weights), ``sha256``.

    Raises:
        ModelError: the model cannot be loaded (naming its path).
    """
    from ..io import write_json

    spec = ExternalMember.from_mapping(member)
    model = spec.load()
    card = {"model_id": spec.name, "path": str(spec.path), "format": model.kind, "architecture": model.architecture,
            "layers": list(model.layers), "patch_size": [int(p) for p in model.patch_size],
            "parameter_count": head_excluded_parameter_count(model),
            "source_cases": None if spec.random_seed is not None or source_cases is None else int(source_cases),
            "random_copy_of": None if spec.random_seed is None else str(spec.path),
            "random_seed": spec.random_seed, "sha256": model.sha256}
    write_json(Path(out_file), card)
    return card
