"""Reading what nnU-Net planned for a preprocessed dataset: the shared plans (``ccfvPlans.json``) and its
``dataset.json``, in one place for every stage that needs them (training, fine-tuning, feature sampling)."""
from __future__ import annotations

import json
from pathlib import Path

from .paths import PLANS_NAME


def load_plans(preprocessed_dataset: Path) -> dict:
    """``<preprocessed dataset>/ccfvPlans.json``: the shared plans every dataset was preprocessed with."""
    return json.loads((Path(preprocessed_dataset) / f"{PLANS_NAME}.json").read_text())


def load_dataset_json(preprocessed_dataset: Path) -> dict:
    """``<preprocessed dataset>/dataset.json`` (nnU-Net v2's: ``channel_names``, ``labels``, ...)."""
    return json.loads((Path(preprocessed_dataset) / "dataset.json").read_text())


def load_plans_and_dataset(preprocessed_dataset: Path) -> tuple[dict, dict]:
    """(:func:`load_plans`, :func:`load_dataset_json`) of a preprocessed dataset."""
    return load_plans(preprocessed_dataset), load_dataset_json(preprocessed_dataset)


def foreground_classes(dataset_json: dict) -> list[int]:
    """The foreground label values of an nnU-Net ``dataset.json`` (every value > 0 of ``labels``), sorted."""
    return sorted(int(v) for v in dataset_json["labels"].values() if int(v) > 0)
