"""The seeded train/test split of a task, made once, recorded, and read by every later stage.

The split is made on the case identifiers of the preprocessed dataset, with a Generator seeded by the
config, and stored with a checksum of the case list and one over the image and label files, so that a
dataset whose cases changed cannot be silently paired with an old split.

Snakemake reruns a rule whenever its inputs change, and deletes the rule's outputs first, so an output
alone cannot keep a split stable. ``split_task`` therefore also keeps a *record*
(``results/splits/<task>.record.json``) that no rule declares as output: the first run writes it, later
runs reproduce the recorded split from it, and a dataset or split setting that no longer matches the
record is an error until the user deletes the record to ask for a new split.
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np

from ..io import write_json


def _case_list_digest(cases: list[str]) -> str:
    return hashlib.sha256("\n".join(sorted(cases)).encode()).hexdigest()


class SplitError(ValueError):
    """The data or the split settings no longer match a task's recorded split."""


def make_split(cases: list[str], test_fraction: float, seed: int) -> dict:
    """Seeded split; at least one test case and one training case whenever there are two cases."""
    cases = sorted(cases)
    if len(cases) < 2:
        raise ValueError(f"need at least 2 cases to split, got {len(cases)}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    n_test = min(len(cases) - 1, max(1, math.floor(len(cases) * test_fraction + 0.5)))
    order = np.random.default_rng(seed).permutation(len(cases))
    test = sorted(cases[i] for i in order[:n_test])
    train = sorted(cases[i] for i in order[n_test:])
    return {
        "seed": seed, "test_fraction": test_fraction, "train": train, "test": test,
        "cases_sha256": _case_list_digest(cases),
    }


def write_split(split: dict, path: Path, nnunet_splits: Path | None = None) -> None:
    """Our split file and, optionally, the same split as nnU-Net's ``splits_final.json`` (one fold,
    the held-out test cases as its "val"), for tools that read nnU-Net's format."""
    write_json(path, split)
    if nnunet_splits is not None:
        write_json(nnunet_splits, [{"train": list(split["train"]), "val": list(split["test"])}])


def read_split(path: Path, cases: list[str] | None = None) -> dict:
    path = Path(path)
    try:
        split = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: split file missing") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    for key in ("train", "test", "cases_sha256"):
        if key not in split:
            raise ValueError(f"{path}: required key {key!r} is missing")
    if set(split["train"]) & set(split["test"]):
        raise ValueError(f"{path}: cases in both train and test: {sorted(set(split['train']) & set(split['test']))}")
    if cases is not None and _case_list_digest(list(cases)) != split["cases_sha256"]:
        raise ValueError(
            f"{path}: the dataset's cases changed since this split was made; delete the split file "
            f"to make a new one on purpose"
        )
    return split


def split_task(task: str, cases: list[str], files_digest: str, test_fraction: float, seed: int,
               record_path: Path) -> dict:
    """The task's split: the recorded one if a record exists and still matches, else a new recorded one.

    ``files_digest`` is the digest over the task's training image and label files
    (``ccfv.data.checksums.training_files``). Raises ``SplitError`` naming the record and every difference
    when the cases, their files or the split settings changed since the record was written.
    """
    record_path = Path(record_path)
    wanted = {"task": task, **make_split(cases, test_fraction, seed), "files_sha256": files_digest}
    if not record_path.exists():
        write_json(record_path, wanted)
        return wanted
    try:
        recorded = json.loads(record_path.read_text())
    except json.JSONDecodeError as err:
        raise SplitError(f"{record_path}: not valid JSON ({err}); delete it to make a new split") from None
    changes = []
    old_cases = set(recorded.get("train", [])) | set(recorded.get("test", []))
    if old_cases != set(cases):
        added, removed = sorted(set(cases) - old_cases), sorted(old_cases - set(cases))
        changes.append(f"cases added {added[:5]}{'...' if len(added) > 5 else ''}, "
                       f"removed {removed[:5]}{'...' if len(removed) > 5 else ''}")
    elif recorded.get("files_sha256") != files_digest:
        changes.append("the image or label files changed (same case names, different content)")
    for key, value in (("seed", seed), ("test_fraction", test_fraction)):
        if recorded.get(key) != value:
            changes.append(f"split.{key} is {value} in the config but {recorded.get(key)} in the record")
    if changes:
        raise SplitError(
            f"{record_path}: the split of {task} was recorded for other data or settings: "
            + "; ".join(changes)
            + ". Everything downstream was computed on the recorded split. To make a new split on purpose, "
            f"delete {record_path} and rerun."
        )
    return recorded


def split_preprocessed_task(task: str, preprocessed_dataset: Path, files_checksums: Path, test_fraction: float,
                            seed: int, record_path: Path, out: Path, nnunet_out: Path | None = None) -> dict:
    """The workflow's split step: split the preprocessed cases (``split_task``) and write the split files."""
    from .nnunet import case_identifiers

    cases = case_identifiers(Path(preprocessed_dataset))
    files = json.loads(Path(files_checksums).read_text())
    missing = sorted(set(cases) - set(files["cases"]))
    if missing:
        raise SplitError(f"{files_checksums}: no checksum for preprocessed case(s) {missing}; "
                         f"the preprocessed data does not come from the validated files")
    split = split_task(task, cases, files["digest"], test_fraction, seed, record_path)
    write_split(split, out, nnunet_out)
    return split
