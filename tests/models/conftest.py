"""Where the tests of real released models find them: the shared material (never part of the repository).

Root: the environment variable ``CCFV_SHARED`` if set, else ``<repository root>/../shared``. A test that
needs a file from it skips, saying where it looked, when the file is absent (a user's clone has none).
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def shared_root() -> Path:
    """``$CCFV_SHARED``, else ``<repo>/../shared``."""
    return Path(os.environ["CCFV_SHARED"]) if os.environ.get("CCFV_SHARED") else REPO.parent / "shared"


def shared_path(relative: str) -> Path:
    """``shared_root() / relative``, or a skip naming where it was looked for."""
    path = shared_root() / relative
    if not path.exists():
        pytest.skip(f"shared material {relative} not found at {path} (set CCFV_SHARED to the folder holding "
                    "models/ and data/)")
    return path


@pytest.fixture
def brainchop_dir() -> Path:
    """models/brainchop: brainchop's six MeshNet folders and its example head t1_crop.nii.gz."""
    return shared_path("models/brainchop")


@pytest.fixture
def hippodeep_weights() -> Path:
    """models/hippodeep/hippodeep.pt: hippodeep's released state dict."""
    return shared_path("models/hippodeep/hippodeep.pt")


@pytest.fixture
def task04_dir() -> Path:
    """data/Task04_Hippocampus: the MSD hippocampus task (imagesTr/, labelsTr/)."""
    return shared_path("data/Task04_Hippocampus")
