"""Shared fixtures: one tiny synthetic task run through nnU-Net's real conversion, planning and
preprocessing once per session (used by tests/preprocess/test_nnunet.py, tests/bank/test_training.py and others)."""

from __future__ import annotations

import fcntl
import hashlib
import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

TASK = "Task94_SynthSpleen"
REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------------
# The checkout's scripts/, shared by every Snakemake run of the tests
# --------------------------------------------------------------------------------------------------


def workflow_scripts_lock_path() -> Path:
    """The lock file of :func:`workflow_scripts_lock`, one per checkout."""
    return Path(tempfile.gettempdir()) / f"ccfv-tests-scripts-{hashlib.sha256(str(REPO).encode()).hexdigest()[:16]}.lock"


@contextmanager
def workflow_scripts_lock(exclusive: bool = False):
    """A lock on this checkout's ``scripts/`` across pytest-xdist workers: exclusive while a test changes a
    script's modification time (the whole-DAG test checks that Snakemake reruns a rule whose script changed),
    shared while a test's Snakemake runs read the scripts and then expect "Nothing to be done" (a script newer
    than its outputs would schedule its rule again). A file lock (``flock``) in the temporary folder, keyed by the
    checkout's path: the ``xdist_group`` marks that were to keep these tests on one worker are not honoured by
    pytest 9 with pytest-xdist 3.8 (two of them ran at once, 2026-12-07)."""
    with open(workflow_scripts_lock_path(), "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@pytest.fixture
def reads_workflow_scripts():
    """Holds :func:`workflow_scripts_lock` shared for the whole test."""
    with workflow_scripts_lock(exclusive=False):
        yield


# --------------------------------------------------------------------------------------------------
# The shared material (real data and released models, never part of the repository)
# --------------------------------------------------------------------------------------------------


def shared_root() -> Path:
    """``$CCFV_SHARED``, else ``<repo>/../shared`` (where CI lays it out, read-only)."""
    return Path(os.environ["CCFV_SHARED"]) if os.environ.get("CCFV_SHARED") else REPO.parent / "shared"


def shared_path(relative: str) -> Path:
    """``shared_root() / relative``, or a skip naming where it was looked for (a user's clone has none)."""
    path = shared_root() / relative
    if not path.exists():
        pytest.skip(f"shared material {relative} not found at {path} (set CCFV_SHARED to the folder holding "
                    "models/ and data/)")
    return path


@pytest.fixture
def task04_dir() -> Path:
    """data/Task04_Hippocampus: the MSD hippocampus task (imagesTr/, labelsTr/)."""
    return shared_path("data/Task04_Hippocampus")


#: A tiny shared network. Three stages, not two: with two stages nnU-Net's deep supervision has a single
#: output whose loss weight is zeroed and then normalised (0/0), so training runs on a NaN loss (see
#: test_training.py::test_pretrain_with_two_stages_never_writes_nan_weights).
TINY_NETWORK = {
    "patch_size": [8, 16, 16],
    "batch_size": 2,
    "features_per_stage": [4, 8, 16],
    "kernel_sizes": [[1, 3, 3], [3, 3, 3], [3, 3, 3]],
    "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2]],
    "n_conv_per_stage": [1, 1, 1],
    "n_conv_per_stage_decoder": [1, 1],
}


@dataclass(frozen=True)
class TinyDataset:
    task_dir: Path          # MSD layout, as written by ccfv.data.synthetic
    raw_root: Path          # nnU-Net raw root holding the converted dataset
    raw: Path               # raw_root / Dataset094_SynthSpleen
    preprocessed_root: Path
    preprocessed: Path      # preprocessed_root / Dataset094_SynthSpleen
    network: dict


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> TinyDataset:
    from ccfv.data.synthetic import write_task
    from ccfv.preprocess.nnunet import convert_msd_task, plan_and_preprocess

    root = tmp_path_factory.mktemp("tiny_nnunet")
    task_dir = write_task(TASK, root / "msd", n_cases=5, seed=0, shape=(32, 32, 16))
    raw = convert_msd_task(task_dir, root / "raw")
    preprocessed = plan_and_preprocess(raw, root / "preprocessed", TINY_NETWORK)
    return TinyDataset(task_dir, root / "raw", raw, root / "preprocessed", preprocessed, TINY_NETWORK)


# --------------------------------------------------------------------------------------------------
# Order under `make test` (pytest-xdist, two workers)
# --------------------------------------------------------------------------------------------------


def pytest_collection_modifyitems(config, items):
    """The slow tests first (a stable sort: otherwise collection order). xdist hands tests out in this order,
    and the slow ones sit in the last test files: started last, the whole-DAG test alone would keep one worker
    busy for minutes after the other has run out of work. A slow test stays in place when it shares a module-
    or class-scoped fixture with a test that is not slow: moved apart, they would build that fixture twice."""
    users: dict[tuple, list] = {}
    for item in items:
        for name, defs in getattr(item, "_fixtureinfo").name2fixturedefs.items():
            if defs[-1].scope in ("module", "class", "package"):
                users.setdefault((name, item.module.__name__), []).append(item)

    def first(item) -> bool:
        if item.get_closest_marker("slow") is None:
            return False
        shared = [users[(name, item.module.__name__)] for name, defs in item._fixtureinfo.name2fixturedefs.items()
                  if defs[-1].scope in ("module", "class", "package")]
        return all(other.get_closest_marker("slow") for group in shared for other in group)

    items.sort(key=lambda item: not first(item))
