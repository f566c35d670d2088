"""Rankings that need no features: pretrained first, same architecture first, larger source dataset first,
larger model first, random (docs/report.md): the bar a transferability metric must clear."""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from ..bank.model_ids import is_external_source, model_architecture, model_source
from ..models.members import MEMBER_CARD
from .formatting import short_task

#: The static rankers: scores every target could get without looking at its data.
BASELINE_LABELS = {
    "random": "Random ranking (expected)",
    "pretrained_first": "Pretrained first",
    "same_architecture_first": "Same architecture first",
    "larger_source_first": "Larger source dataset first",
    "larger_model_first": "Larger model first",
}


def reference_architecture(models: list[str]) -> str:
    """The bank's most common architecture (alphabetically first on a tie)."""
    archs = [model_architecture(m) for m in models]
    return sorted(set(archs), key=lambda a: (-archs.count(a), a))[0]


def baseline_scores(models: list[str], source_sizes: Mapping[str, int], architecture: str | None = None,
                    parameter_counts: Mapping[str, int] | None = None) -> dict:
    """Scores of the static rankers for one bank (higher ranks first; ties stay ties).

    - ``pretrained_first``: 1 for a pretrained model (snapshots included), 0 for a randomly initialised one.
    - ``same_architecture_first``: 1 for a model of ``architecture`` (default: the bank's most common
      one, :func:`reference_architecture`), else 0. Constant on a one-architecture bank.
    - ``larger_source_first``: the number of training cases of the source task (0 for random models).
    - ``larger_model_first`` (only with ``parameter_counts``, {model id: number of weights,
      :func:`ccfv.bank.model_card.parameter_count`}): the model's number of weights, heads excluded. The
      model-size ranker of Singh et al. (ICLR 2026), which they found to beat most transferability scores
      on some benchmarks. Models of one architecture tie.

    External members (``<name>-released``, ``<name>-random``; ``bank.external``): a released model is
    pretrained, its random copy is not; each external name is an architecture of its own; the released model's
    source size is ``source_sizes[<model id>]`` (the authors' training cases, ``bank.external.<name>.source_cases``)
    and when a released member has none, ``larger_source_first`` is left out (the ranker does not apply to that
    bank: a source of unknown size cannot be placed).

    The random ranking has no scores: its expected values are filled in by :func:`analyse`. A source task
    without a size, or a model without a parameter count, is a ValueError naming it.
    """
    architecture = architecture or reference_architecture(models)
    if parameter_counts is not None:
        missing = [m for m in models if m not in parameter_counts]
        if missing:
            raise ValueError(f"no parameter count for the bank model(s) {missing}")
    out = {"pretrained_first": [], "same_architecture_first": [], "larger_source_first": []}
    unknown_external = False
    for m in models:
        source = model_source(m)
        out["pretrained_first"].append(0.0 if source is None else 1.0)
        out["same_architecture_first"].append(1.0 if model_architecture(m) == architecture else 0.0)
        if is_external_source(source):
            unknown_external = unknown_external or m not in source_sizes
            out["larger_source_first"].append(float(source_sizes.get(m, 0)))
            continue
        if source is not None and source not in source_sizes:
            raise ValueError(f"no training-case count for source task {source} of {m}")
        out["larger_source_first"].append(0.0 if source is None else float(source_sizes[source]))
    if unknown_external:
        del out["larger_source_first"]
    if parameter_counts is not None:
        out["larger_model_first"] = [float(parameter_counts[m]) for m in models]
    return out


def static_rankers_note(records: list[Mapping], targets: list[str], source_sizes: Mapping[str, int],
                        parameter_counts: Mapping[str, int] | None = None) -> str:
    """Markdown lines below the statistics, regret and selection tables: what each static ranker of
    :func:`baseline_scores` orders by on these targets' banks, and when one of them cannot differ from
    another (every source of equal size: "Larger source dataset first" is "Pretrained first"; one
    architecture: "Same architecture first" and "Larger model first" tie every model), so that a reader
    does not take two equal rows for two findings."""
    banks = {t: sorted({r["model"] for r in records if r["target"] == t}) for t in targets}
    banks = {t: m for t, m in banks.items() if m}
    if not banks:
        return ""
    references = {t: reference_architecture(m) for t, m in banks.items()}
    if len(set(references.values())) == 1:
        reference = next(iter(references.values()))
    else:  # which architecture goes first on which targets
        reference = ", ".join(f"{a} on {', '.join(short_task(t) for t, r in references.items() if r == a)}"
                              for a in dict.fromkeys(references.values()))
    parts = [f"**{BASELINE_LABELS['pretrained_first']}**: every pretrained model (snapshots included) above the "
             "randomly initialised ones",
             f"**{BASELINE_LABELS['same_architecture_first']}**: the bank's most common architecture first "
             f"({reference}; equally common ones: the alphabetically first)"]
    released = sorted({m for b in banks.values() for m in b if is_external_source(model_source(m))})
    sources = sorted({s for m in banks.values() for s in map(model_source, m)
                      if s is not None and not is_external_source(s)})
    sizes = ", ".join([*(f"{short_task(s)} {source_sizes[s]}" for s in sources if s in source_sizes),
                       *(f"{m} {source_sizes[m]}" for m in released if m in source_sizes)])
    if any(m not in source_sizes for m in released):
        text = (f"**{BASELINE_LABELS['larger_source_first']}**: does not apply (left out): the external member(s) "
                f"{', '.join(m for m in released if m not in source_sizes)} have no training-case count "
                "(bank.external.<name>.source_cases)")
    else:
        text = f"**{BASELINE_LABELS['larger_source_first']}**: by the source task's training cases ({sizes})"
        equal = [t for t, m in banks.items()
                 if len({source_sizes.get(m_ if is_external_source(s) else s) for m_, s in zip(m, map(model_source, m))
                         if s is not None}) == 1]
        if equal:
            text += (f"; on {', '.join(short_task(t) for t in equal)} every source has the same number, so there it "
                     f"orders exactly as {BASELINE_LABELS['pretrained_first']} and its values repeat that row's")
    parts.append(text)
    if parameter_counts:
        counts = {model_architecture(m): parameter_counts[m] for m in (x for b in banks.values() for x in b)
                  if m in parameter_counts}
        parts.append(f"**{BASELINE_LABELS['larger_model_first']}**: by the number of weights, heads excluded ("
                     + ", ".join(f"{a} {n:,}" for a, n in sorted(counts.items())) + "; models of one architecture tie)")
    return "\nStatic rankers (they look at no image): " + "; ".join(parts) + ".\n"


def parameter_counts_of(bank_dirs: Mapping[str, Path]) -> dict[str, int]:
    """{model id: number of weights, heads excluded} of the bank models' folders
    (:func:`ccfv.bank.model_card.parameter_count`) or external members' cards (``member.json``, its
    ``parameter_count``: :func:`ccfv.models.members.write_member_card`)."""
    from ..bank.model_card import parameter_count

    return {model: int(json.loads(Path(path).read_text())["parameter_count"]) if Path(path).name == MEMBER_CARD
            else parameter_count(Path(path)) for model, path in bank_dirs.items()}


def external_source_sizes(bank_files: Mapping[str, Path]) -> dict[str, int]:
    """{model id: the authors' training cases} of the external members among ``bank_files`` whose card
    (``member.json``) gives them (``bank.external.<name>.source_cases``); bank folders are skipped."""
    sizes = {}
    for model, path in bank_files.items():
        if Path(path).name == MEMBER_CARD:
            cases = json.loads(Path(path).read_text()).get("source_cases")
            if cases is not None:
                sizes[model] = int(cases)
    return sizes


def source_sizes_from_splits(split_files: Mapping[str, Path]) -> dict[str, int]:
    """{task: number of training cases} from ``results/splits/<task>.json``."""
    return {task: len(json.loads(Path(path).read_text())["train"]) for task, path in split_files.items()}
