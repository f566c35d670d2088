"""Bank model ids: ``<architecture>-<source task>``, ``<architecture>-<source task>@<iteration>`` (a snapshot
of the pretraining after that many iterations) or ``<architecture>-random``; for an external member of the
config's ``bank.external`` (a released model, e.g. a brainchop MeshNet), ``<name>-released`` and its randomly
initialised copy ``<name>-random``: the config's name is its architecture (each released network is its own),
``released`` its source. One home for the format: the workflow's rules, training and the results stage all
name models through it."""
from __future__ import annotations

import math
import re
from collections.abc import Sequence

#: The source of a randomly initialised bank member: ``<architecture>-random``.
RANDOM_SOURCE = "random"
#: The source of an external bank member as its authors released it: ``<name>-released``.
RELEASED_SOURCE = "released"
#: An MSD task name as the workflow's wildcards accept it (``Task09_Spleen``).
TASK_PATTERN = "Task[0-9]+_[A-Za-z0-9]+"
#: The name of an external bank member (``bank.external``): letters, digits and underscores, a letter first
#: (no ``-`` or ``@``, which separate the parts of a model id).
EXTERNAL_NAME_PATTERN = "[A-Za-z][A-Za-z0-9_]*"


def pretrained_model_id(architecture: str, source_task: str) -> str:
    """``unet-Task91_SynthLiver``: a network of ``architecture`` pretrained on ``source_task``."""
    return f"{architecture}-{source_task}"


def random_model_id(architecture: str) -> str:
    """``unet-random``: the bank's randomly initialised member of ``architecture``."""
    return f"{architecture}-{RANDOM_SOURCE}"


def released_model_id(name: str) -> str:
    """``model18cls-released``: the external bank member ``name`` (``bank.external``) with its authors' weights."""
    return f"{name}-{RELEASED_SOURCE}"


def is_external_source(source: str | None) -> bool:
    """Whether a model's source (:func:`model_source`) is an external member's released weights rather than a
    source task of the workflow (whose training cases the results stage can count)."""
    return source == RELEASED_SOURCE


def snapshot_model_id(model_id: str, iteration: int) -> str:
    """``unet-Task91_SynthLiver@150``: the bank id of ``model_id``'s snapshot after 150 iterations."""
    return f"{model_id}@{iteration}"


def model_id_pattern(architectures: Sequence[str], external: Sequence[str] = ()) -> str:
    """A regular expression matching exactly the bank model ids of ``architectures`` (the workflow's
    ``model`` wildcard): pretrained, snapshot or random; with ``external`` (the names of ``bank.external``)
    also ``<name>-released`` and ``<name>-random``."""
    archs = "|".join(re.escape(a) for a in architectures)
    pattern = f"({archs})-({RANDOM_SOURCE}|{TASK_PATTERN}(@[0-9]+)?)"
    if external:
        pattern = f"{pattern}|{external_model_id_pattern(external)}"
    return pattern


def external_model_id_pattern(external: Sequence[str]) -> str:
    """A regular expression matching exactly the ids of the external members ``external`` (names of
    ``bank.external``): ``<name>-released`` and ``<name>-random``."""
    names = "|".join(re.escape(n) for n in external)
    return f"({names})-({RELEASED_SOURCE}|{RANDOM_SOURCE})"


def parse_model_id(model_id: str) -> tuple[str, str | None, int | None]:
    """(architecture, source task or None, snapshot iteration or None) of a bank model id:
    ``<architecture>-<source task>``, ``<architecture>-<source task>@<iteration>`` (a snapshot of the
    pretraining, saved after that many iterations) or ``<architecture>-random``; an external member's
    ``<name>-released`` gives (name, ``released``, None)."""
    arch, sep, rest = model_id.partition("-")
    source, at, iteration = rest.partition("@")
    if not sep or not arch or not source:
        raise ValueError(f"model id {model_id!r} is not <architecture>-<source task or random>[@<iteration>]")
    if at:
        if source in (RANDOM_SOURCE, RELEASED_SOURCE) or not iteration.isdigit() or int(iteration) < 1:
            raise ValueError(f"model id {model_id!r}: a snapshot is <architecture>-<source task>@<iteration>, "
                             "the iteration a positive integer (a random model has no snapshots)")
        return arch, source, int(iteration)
    return arch, (None if source == RANDOM_SOURCE else source), None


def model_architecture(model_id: str) -> str:
    """``unet`` of ``unet-Task91_SynthLiver`` (and of its snapshot ``unet-Task91_SynthLiver@150``): bank model
    ids are ``<architecture>-<source task or random>[@<iteration>]``; anything else is a ValueError."""
    return parse_model_id(model_id)[0]


def model_source(model_id: str) -> str | None:
    """The source task a bank model was pretrained on (``Task91_SynthLiver`` of ``unet-Task91_SynthLiver``
    and of its snapshot ``unet-Task91_SynthLiver@150``); None for a randomly initialised model."""
    return parse_model_id(model_id)[1]


def model_snapshot(model_id: str) -> int | None:
    """The pretraining iteration after which a snapshot bank member was saved (150 of
    ``unet-Task91_SynthLiver@150``); None for a fully pretrained or a random model."""
    return parse_model_id(model_id)[2]


def model_order(model_id: str) -> tuple:
    """A sort key for bank model ids: pretrained before random, then architecture, source task, and a
    source's snapshots by iteration before the fully pretrained model (``@150`` before ``@1000``, not as
    strings)."""
    arch, source, snapshot = parse_model_id(model_id)
    return (source is None, arch, source or "", math.inf if snapshot is None else snapshot)

