"""The seeded train/test split of a task, written once to a file and read by every later stage.

The split is made on the case identifiers of the preprocessed dataset, with a Generator seeded by the
config, and stored with a checksum of the case list, so that a dataset whose cases changed cannot be
silently paired with an old split (``read_split`` checks it against the cases present, when given).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from pathlib import Path

import numpy as np


def _case_list_digest(cases: list[str]) -> str:
    return hashlib.sha256("\n".join(sorted(cases)).encode()).hexdigest()


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


def write_split(split: dict, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    with os.fdopen(fd, "w") as handle:
        json.dump(split, handle, indent=2)
    os.replace(tmp, path)


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
