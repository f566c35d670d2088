"""What the study analyses share: reading the config's metric definitions and a results folder's images."""
from __future__ import annotations

import sys
from functools import lru_cache
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def metric_definitions(config: Path, names=None) -> dict:
    """The config's ``scoring.metrics`` (layers over config/config.yaml), without table labels."""
    metrics = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())["scoring"]["metrics"]
    if config != ROOT / "config" / "config.yaml":
        metrics.update((yaml.safe_load(Path(config).read_text()).get("scoring") or {}).get("metrics") or {})
    chosen = {k: {kk: vv for kk, vv in v.items() if kk != "label"} for k, v in metrics.items()}
    return {k: chosen[k] for k in names} if names else chosen


def image_reader(results: Path):
    """image_of(target)(case) -> the preprocessed image [C, D, H, W] of a case of a results folder."""
    from ccfv.preprocess.nnunet import load_case
    from ccfv.preprocess.paths import dataset_folder

    @lru_cache(maxsize=64)
    def load(target: str, case: str):
        return load_case(dataset_folder(results / "nnunet" / target / "preprocessed", target), case)[0]

    return lambda target: (lambda case: load(target, case))
