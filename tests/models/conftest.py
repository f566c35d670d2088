"""Where the tests of real released models find them: the shared material (never part of the repository), through
:func:`tests.conftest.shared_path`, which skips a test, saying where it looked, when the file is absent."""
from __future__ import annotations

from pathlib import Path

import pytest

from ..conftest import shared_path


@pytest.fixture
def brainchop_dir() -> Path:
    """models/brainchop: brainchop's six MeshNet folders and its example head t1_crop.nii.gz."""
    return shared_path("models/brainchop")


@pytest.fixture
def hippodeep_weights() -> Path:
    """models/hippodeep/hippodeep.pt: hippodeep's released state dict."""
    return shared_path("models/hippodeep/hippodeep.pt")
