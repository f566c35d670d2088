"""The check that a model was trained on the target's modality and channel order (``ccfv rank`` warns)."""
from __future__ import annotations

import re
from typing import Sequence

#: Channel names that are all MR (nnU-Net datasets name MR channels by sequence); anything else is its own kind.
MR_NAMES = frozenset({"MR", "MRI", "T1", "T1W", "T1GD", "T1C", "T1CE", "T2", "T2W", "FLAIR", "ADC", "DWI", "PD",
                      "NONCT"})


def _modality_kind(name: str) -> str:
    key = re.sub(r"[^A-Z0-9]", "", str(name).upper())
    return "CT" if key == "CT" else "MR" if key in MR_NAMES or key.startswith("MR") else key


def modality_warnings(model: Sequence[str] | None, target: Sequence[str]) -> list[str]:
    """Warnings when a model was trained on other channels than the target has: another modality (CT against
    MR: CT normalisation of MR intensities makes the features meaningless), or the same channels in another
    order. Empty when the model does not say what it was trained on."""
    if not model or len(model) != len(target):
        return []
    model, target = [str(m) for m in model], [str(t) for t in target]
    if sorted(m.upper() for m in model) == sorted(t.upper() for t in target) and \
            [m.upper() for m in model] != [t.upper() for t in target]:
        return [f"channels in another order: the model was trained on {model}, the target has {target}; "
                "reorder the target's channels"]
    differ = [(i, m, t) for i, (m, t) in enumerate(zip(model, target)) if _modality_kind(m) != _modality_kind(t)]
    if differ:
        pairs = ", ".join(f"channel {i}: model {m}, target {t}" for i, m, t in differ)
        return [f"modality mismatch ({pairs}): the model's intensity normalisation does not fit the target's "
                "intensities, so its features (and scores) mean little"]
    return []
