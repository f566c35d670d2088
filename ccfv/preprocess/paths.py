"""Where nnU-Net v2 keeps its data inside one workflow run, and how a task maps to an nnU-Net dataset.

nnU-Net v2.8 reads ``nnUNet_raw``, ``nnUNet_preprocessed`` and ``nnUNet_results`` from the environment each
time it needs them, so pointing them at a folder of ours just before a call is enough; we never touch the
user's global nnU-Net folders.
"""
from __future__ import annotations

import os
import re
from contextlib import contextmanager
from pathlib import Path

#: The name of the plans every dataset of the benchmark is preprocessed with (see ``ccfv.preprocess.nnunet``).
PLANS_NAME = "ccfvPlans"
CONFIGURATION = "3d_fullres"

_TASK = re.compile(r"^Task(\d{2,3})_([A-Za-z0-9]+)$")


def parse_task(task: str) -> tuple[int, str]:
    """``"Task03_Liver"`` -> ``(3, "Liver")``; a name nnU-Net's MSD converter cannot take is an error."""
    m = _TASK.match(task)
    if not m:
        raise ValueError(
            f"task name {task!r} is not in MSD form 'TaskNN_Name' (digits, one underscore, letters/digits)"
        )
    return int(m.group(1)), m.group(2)


def dataset_name(task: str) -> str:
    """The nnU-Net dataset folder that ``nnUNetv2_convert_MSD_dataset`` makes of an MSD task."""
    number, name = parse_task(task)
    return f"Dataset{number:03d}_{name}"


@contextmanager
def nnunet_environment(raw: Path | None = None, preprocessed: Path | None = None,
                       results: Path | None = None, n_proc: int = 1, n_proc_da: int | None = None):
    """Point nnU-Net at our folders for the duration of a block and restore the caller's environment.

    ``n_proc_da=0`` makes the training data loader run in-process: on a 2-core laptop the worker
    processes cost more than they give, and a single-threaded loader is what makes CPU runs repeatable.
    (Only for training: nnU-Net's planner passes the same variable to ``torch.set_num_threads``.)
    """
    new = {
        "nnUNet_raw": raw, "nnUNet_preprocessed": preprocessed, "nnUNet_results": results,
    }
    saved = {k: os.environ.get(k) for k in (*new, "nnUNet_def_n_proc", "nnUNet_n_proc_DA")}
    try:
        for key, value in new.items():
            if value is not None:
                Path(value).mkdir(parents=True, exist_ok=True)
                os.environ[key] = str(Path(value).resolve())
        os.environ["nnUNet_def_n_proc"] = str(n_proc)
        if n_proc_da is not None:
            os.environ["nnUNet_n_proc_DA"] = str(n_proc_da)
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def dataset_folder(nnunet_root: str | os.PathLike, task: str) -> Path:
    """``<root>/DatasetXXX_Name`` for a task, inside one of our per-task nnU-Net roots."""
    return Path(nnunet_root) / dataset_name(task)
