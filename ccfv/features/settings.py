"""The sampling settings: one object that the workflow (``sampling:`` of the config, rules/features.smk)
and ``ccfv rank`` both build and hand to the sampler, so that both sample the same way (docs/sampling.md)."""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

#: The keys of :meth:`SamplingSettings.budgets`: how many voxels ``choose_voxels`` draws per case.
BUDGET_KEYS = ("total", "minimum", "n_global", "n_background")


@dataclass(frozen=True)
class SamplingSettings:
    """How decoder features are sampled from one model over a dataset.

    Attributes:
        total: foreground voxels per case, shared among the present classes by their voxel counts.
        minimum: at least this many voxels per present class.
        n_global: voxels drawn uniformly from the whole case (L of the paper's eq. 3-4).
        n_background: background voxels, for the label-based baselines.
        step_size: sliding-window step as a fraction of the patch size (nnU-Net's convention).
        batch_size: windows per forward pass.
        seed: voxels of case ``c`` are drawn with ``ccfv.features.sampler.case_rng(seed, c)``.
        layer_ratios: the share of the voxels each hooked decoder stage keeps, deepest first: one list for
            every architecture, a mapping architecture -> list, or None for :func:`default_layer_ratios`.
        window_budget: None (every key drawn over the whole case: every window may run) or B >= 1: each
            key's voxels are drawn inside at most B windows of the case, so that at most B windows (global
            and background) plus min(B, windows holding class k) per present class run per case
            (:func:`ccfv.features.budget.choose_voxels_in_windows`, docs/sampling.md section 1b).
    """

    total: int = 1000
    minimum: int = 20
    n_global: int = 200
    n_background: int = 400
    step_size: float = 0.5
    batch_size: int = 2
    seed: int = 0
    layer_ratios: Sequence[float] | Mapping[str, Sequence[float]] | None = None
    window_budget: int | None = None

    def __post_init__(self):
        budget = self.window_budget
        if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget < 1):
            raise ValueError(f"sampling.window_budget must be null (no budget) or an integer >= 1, got {budget!r}")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | SamplingSettings | None) -> SamplingSettings:
        """Settings from a config section (``sampling:``) or a partial mapping (the defaults for the rest);
        an unknown key is a ValueError naming it."""
        if isinstance(values, SamplingSettings):
            return values
        values = dict(values or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"sampling: unknown setting(s) {unknown}; known: {sorted(known)}")
        return cls(**values)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, without ``layer_ratios`` when it is None (ranking.json's ``sampling``)."""
        out = asdict(self)
        if self.layer_ratios is None:
            del out["layer_ratios"]
        return out

    @property
    def budgets(self) -> dict[str, int]:
        """{"total", "minimum", "n_global", "n_background"}: the voxel budgets of ``choose_voxels``."""
        return {k: getattr(self, k) for k in BUDGET_KEYS}

    def ratios_for(self, architecture: str, n_layers: int) -> list[float]:
        """The layer ratios of a network with ``n_layers`` hooked stages (:func:`layer_ratios_for`), or
        :func:`default_layer_ratios` when the settings give none. Raises ValueError when they do not fit."""
        if self.layer_ratios is None:
            return default_layer_ratios(n_layers)
        return layer_ratios_for(self.layer_ratios, architecture, n_layers)

    def sample(self, network, layers: Sequence[str], cases: Iterable, out_file: str | Path, *,
               class_ids: Sequence[int], patch_size: Sequence[int], model_id: str, architecture: str,
               target: str, device, num_cases: int | None = None, progress: bool = True,
               layer_ratios: Sequence[float] | None = None) -> Path:
        """Sample every case of ``cases`` (case id, image [C, D, H, W], seg [D, H, W]) with these settings
        into one features file (:func:`ccfv.features.sampler.sample_dataset`). ``layer_ratios``: already
        resolved ratios, else :meth:`ratios_for` of ``architecture``."""
        from .sampler import sample_dataset

        ratios = list(layer_ratios) if layer_ratios is not None else self.ratios_for(architecture, len(layers))
        return sample_dataset(
            network, layers, cases, out_file, class_ids=class_ids, budgets=self.budgets, patch_size=patch_size,
            model_id=model_id, architecture=architecture, target=target, seed=self.seed, step_size=self.step_size,
            batch_size=self.batch_size, layer_ratios=ratios, device=device, num_cases=num_cases, progress=progress,
            window_budget=self.window_budget,
        )


def layer_ratios_for(ratios_by_network: dict, network: str, n_layers: int) -> list[float]:
    """``sampling.layer_ratios`` of one architecture: a mapping network -> one ratio per hooked stage
    (deepest first), or a plain list used for every architecture with that many stages."""
    ratios = ratios_by_network.get(network) if isinstance(ratios_by_network, Mapping) else ratios_by_network
    if ratios is None:
        raise ValueError(f"sampling.layer_ratios has no entry for {network!r}")
    ratios = [float(r) for r in ratios]
    if len(ratios) != n_layers:
        raise ValueError(f"sampling.layer_ratios for {network} has {len(ratios)} entries; the network has "
                         f"{n_layers} hooked decoder stages")
    return ratios


def default_layer_ratios(n_layers: int) -> list[float]:
    """Half as many samples per stage as the next finer one, all of them at full resolution (the demo's
    ``[0.25, 0.5, 1.0]`` for three stages): deep stages hold fewer distinct voxels."""
    return [0.5 ** (n_layers - 1 - i) for i in range(n_layers)]


def model_sampling(sampling: Mapping[str, Any], model: str) -> dict:
    """The workflow's ``sampling`` section for one bank model (``<arch>-<source>`` or an external member's id):
    ``layer_ratios`` resolved for its architecture (``None`` for an external member without an entry: the
    format's :func:`default_layer_ratios`), so that one architecture's ratios never rerun another's sampling;
    a null ``window_budget`` left out, so that features sampled before the setting existed keep their
    parameters. What the ``sample_features`` and ``sample_member_features`` rules pass (``sampling_for`` in
    rules/common.smk) and benchmarks/budget_rankings.py resamples with."""
    from ..bank.model_ids import model_architecture

    ratios = sampling.get("layer_ratios")
    settings = {**sampling, "layer_ratios": ratios.get(model_architecture(model)) if isinstance(ratios, Mapping)
                else ratios}
    if settings.get("window_budget") is None:
        settings.pop("window_budget", None)
    return settings
