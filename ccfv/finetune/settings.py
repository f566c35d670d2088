"""The fine-tuning protocol's settings (:class:`FinetuneProtocol`), apart from the recipe itself
(:mod:`ccfv.finetune.protocol`, which re-exports them) because they import neither numpy nor torch: ``ccfv rank``
and ``ccfv finetune`` build their options from these defaults before they pin the CPU numerics, which must
happen before numpy loads (docs/reproducibility.md).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

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
        learning_rate_grid: empty (the body's rate is ``learning_rate``), or two or more body rates of which
            each model and seed keeps one by successive halving (Jamieson and Talwalkar, AISTATS 2016, one rung):
            every rate trains the first ``selection_iterations`` iterations from the same start on the same
            batches, and the rate whose losses over the second half of them have the lowest mean goes on to
            ``iterations`` (:meth:`select_rate`). Each loss is computed on a batch before the step on it, so the
            criterion is a held-out estimate that reads no held-out case. The head's rate stays
            ``head_learning_rate``.
        selection_iterations: the pilot's length, with ``learning_rate_grid``.
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
    learning_rate_grid: tuple = ()
    selection_iterations: int = 25

    def __post_init__(self):
        for name in ("iterations", "batch_size", "checkpoint_every", "selection_iterations"):
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
        grid = self.learning_rate_grid
        if isinstance(grid, (str, bytes)) or not isinstance(grid, (list, tuple)):
            raise ValueError(f"fine-tuning learning_rate_grid (several --learning-rate): {grid!r} is not a list of "
                             "rates")
        # a tuple, so that the settings stay hashable and compare equal however they were given
        object.__setattr__(self, "learning_rate_grid", tuple(grid))
        if grid:
            if len(grid) < 2 or len(set(grid)) != len(grid):
                raise ValueError(f"fine-tuning learning_rate_grid (several --learning-rate): {list(grid)} needs two "
                                 "or more different rates; for one rate set learning_rate (one --learning-rate)")
            for rate in grid:
                if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not math.isfinite(rate) \
                        or rate <= 0:
                    raise ValueError(f"fine-tuning learning_rate_grid (several --learning-rate): {rate!r} is not a "
                                 "positive number")
            if not 2 <= self.selection_iterations < self.iterations:
                raise ValueError(f"fine-tuning selection_iterations: {self.selection_iterations} is not in [2, "
                                 f"iterations = {self.iterations}): the pilot needs a second half and must leave "
                                 "iterations to continue")

    def as_dict(self) -> dict:
        out = asdict(self)
        out["learning_rate_grid"] = list(self.learning_rate_grid)
        return out

    def identity(self) -> dict:
        """The settings a fine-tuning's result depends on, as plain JSON data (``checkpoint_every`` does not: a
        run killed under one value resumes under another; without a grid, neither the grid nor
        ``selection_iterations``)."""
        out = {k: v for k, v in self.as_dict().items() if k != "checkpoint_every"}
        if not self.learning_rate_grid:  # the identity of a run before the grid existed: its results stay reused
            out.pop("selection_iterations")
            out.pop("learning_rate_grid")
        return out

    def at_rate(self, rate: float) -> "FinetuneProtocol":
        """These settings with the body's rate fixed at ``rate`` and no grid: one candidate of the selection."""
        return replace(self, learning_rate=float(rate), learning_rate_grid=())

    def selection_window(self) -> tuple[int, int]:
        """The pilot iterations whose losses decide, ``[start, end)``: the second half of the pilot."""
        return self.selection_iterations - self.selection_iterations // 2, self.selection_iterations

    def pilot_means(self, pilot_losses: dict) -> dict:
        """rate -> the mean of its losses over :meth:`selection_window`. ``pilot_losses``: rate -> that rate's
        losses (at least ``selection_iterations``, one per iteration)."""
        start, end = self.selection_window()
        return {rate: sum(pilot_losses[rate][start:end]) / (end - start) for rate in self.learning_rate_grid}

    def select_rate(self, pilot_losses: dict) -> float:
        """The rate of the grid that goes on: the lowest of :meth:`pilot_means`; a tie keeps the rate listed first."""
        means = self.pilot_means(pilot_losses)
        return min(self.learning_rate_grid, key=lambda rate: (means[rate], self.learning_rate_grid.index(rate)))

    def learning_rate_factor(self, iteration: int) -> float:
        """nnU-Net's poly schedule at ``iteration`` (0-based): ``(1 - iteration / iterations) ** poly_exponent``."""
        return (1.0 - iteration / self.iterations) ** self.poly_exponent

    def forced_foreground(self, index: int) -> bool:
        """Whether patch ``index`` of a batch must hold foreground (nnU-Net's ``_oversample_last_XX_percent``)."""
        return not index < round(self.batch_size * (1 - self.oversample_foreground))
