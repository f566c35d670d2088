"""What the study analyses share: reading the config's metric definitions and a results folder's images, and
copying a finished run's tables, figures and provenance into docs/."""
from __future__ import annotations

import shutil
import sys
from collections.abc import Iterable
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


FIGURES = ("scores_vs_dice.png", "dice_heatmap.png", "feature_tsne.png")


def copy_figure(source: Path, destination: Path) -> None:
    """A run's PNG figure for docs/, as a 256-colour palette image: the t-SNE's thousands of antialiased points
    make a 2.9 MB truecolour file, 0.9 MB as a palette (plots have few colours; the quantisation is
    deterministic). Raises PIL.UnidentifiedImageError, naming nothing written, for a file that is no image."""
    from PIL import Image

    with Image.open(source) as image:
        quantized = image.convert("RGB").quantize(256)
    quantized.save(destination, optimize=True)


def copy_run_outputs(results: Path, out: Path, tables: Iterable[str]) -> None:
    """Copy into ``out`` the named files of ``results/tables/`` that exist, the run's :data:`FIGURES` (as palette
    images, :func:`copy_figure`) and its ``provenance.json``."""
    for name in tables:
        if (results / "tables" / name).is_file():
            shutil.copy2(results / "tables" / name, out / name)
    for name in FIGURES:
        if (results / "figures" / name).is_file():
            copy_figure(results / "figures" / name, out / name)
    if (results / "provenance.json").is_file():
        shutil.copy2(results / "provenance.json", out / "provenance.json")
