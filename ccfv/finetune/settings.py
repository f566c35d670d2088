"""The fine-tuning protocol's settings (:class:`FinetuneProtocol`), apart from the recipe itself
(:mod:`ccfv.finetune.protocol`, which re-exports them) because they import neither numpy nor torch: ``ccfv rank``
and ``ccfv finetune`` build their options from these defaults before they pin the CPU numerics, which must
happen before numpy loads (docs/reproducibility.md).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

#: Head initialisations :func:`replace_head` knows.
HEAD_INITS = ("zero", "random")


@dataclass(frozen=True)
class FinetuneProtocol:
    """The recipe's settings, the same for every member (module docstring says why each default).

    Attributes:
        iterations: optimiser steps.
        batch_size: patches per step.
        learning_rate: Adam's rate for every weight but the new head's, at iteration 0.
        head_learning_rate: Adam's rate for the new head, at iteration 0.
        poly_exponent: the learning rates at iteration i are ``rate * (1 - i / iterations) ** poly_exponent``.
        oversample_foreground: fraction of each batch (its last ``round(batch_size * fraction)`` patches) forced
            to hold foreground, as nnU-Net's ``oversample_foreground_percent``.
        head_init: ``zero`` or ``random`` (:func:`replace_head`).
        gradient_clip: largest gradient norm (over all weights) before a step.
        checkpoint_every: iterations between checkpoints (one is always written at the end).

    Raises:
        ValueError: naming the setting and the value when one is out of range.
    """

    iterations: int = 250
    batch_size: int = 2
    learning_rate: float = 1e-3
    head_learning_rate: float = 1e-2
    poly_exponent: float = 0.9
    oversample_foreground: float = 0.33
    head_init: str = "zero"
    gradient_clip: float = 12.0
    checkpoint_every: int = 25

    def __post_init__(self):
        for name in ("iterations", "batch_size", "checkpoint_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"fine-tuning {name}: {value!r} is not a positive integer")
        for name in ("learning_rate", "head_learning_rate", "gradient_clip"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"fine-tuning {name}: {value!r} is not a positive number")
        if not isinstance(self.poly_exponent, (int, float)) or not math.isfinite(self.poly_exponent) \
                or self.poly_exponent < 0:
            raise ValueError(f"fine-tuning poly_exponent: {self.poly_exponent!r} is not a number >= 0")
        if not isinstance(self.oversample_foreground, (int, float)) or not 0 <= self.oversample_foreground <= 1:
            raise ValueError(f"fine-tuning oversample_foreground: {self.oversample_foreground!r} is not in [0, 1]")
        if self.head_init not in HEAD_INITS:
            raise ValueError(f"fine-tuning head_init: {self.head_init!r} is not one of {list(HEAD_INITS)}")

    def as_dict(self) -> dict:
        return asdict(self)

    def identity(self) -> dict:
        """The settings a fine-tuning's result depends on (``checkpoint_every`` does not: a run killed under
        one value resumes under another)."""
        return {k: v for k, v in asdict(self).items() if k != "checkpoint_every"}

    def learning_rate_factor(self, iteration: int) -> float:
        """nnU-Net's poly schedule at ``iteration`` (0-based): ``(1 - iteration / iterations) ** poly_exponent``."""
        return (1.0 - iteration / self.iterations) ** self.poly_exponent

    def forced_foreground(self, index: int) -> bool:
        """Whether patch ``index`` of a batch must hold foreground (nnU-Net's ``_oversample_last_XX_percent``)."""
        return not index < round(self.batch_size * (1 - self.oversample_foreground))
