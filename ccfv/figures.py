"""The report's figures (matplotlib, Agg backend; each saved as PNG and SVG).

- :func:`scores_vs_dice`: the paper's Fig. 2, standardised score against mean fine-tuned Dice, one panel
  per (metric, target).
- :func:`dice_heatmap`: fine-tuned Dice of every source (bank model) on every target.
- :func:`feature_tsne`: the paper's Fig. 3, a t-SNE of one class's voxel features per bank model on one
  target, coloured by case; subsampled so that it stays cheap.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .results import METRIC_LABELS, model_architecture, model_order, model_snapshot, model_source  # noqa: E402

#: The formats every figure is written in.
FORMATS = ("png", "svg")


def save(fig, stem: str | Path) -> list[Path]:
    """Write ``<stem>.png`` and ``<stem>.svg`` (deterministic SVG ids) and close the figure."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in FORMATS:
        path = stem.with_suffix(f".{ext}")
        kwargs = {"dpi": 150} if ext == "png" else {"metadata": {"Date": None}}
        fig.savefig(path, bbox_inches="tight", **kwargs)
        paths.append(path)
    plt.close(fig)
    return paths


def standardise(values: Sequence[float]) -> np.ndarray:
    """(x - mean) / sd (ddof=0); zeros for a constant sequence (as the paper's Fig. 2, "standardized")."""
    x = np.asarray(values, dtype=float)
    sd = x.std()
    return np.zeros_like(x) if sd == 0 or not np.isfinite(sd) else (x - x.mean()) / sd


def _short(task: str) -> str:
    return task.split("_")[0]


def _model_label(model: str) -> str:
    """``unet:Task91`` for ``unet-Task91_SynthLiver``, ``unet:Task91@150`` for its snapshot."""
    source, snapshot = model_source(model), model_snapshot(model)
    label = f"{model_architecture(model)}:{'random' if source is None else _short(source)}"
    return label if snapshot is None else f"{label}@{snapshot}"


#: Banks up to this size get every point labelled in Fig. 2.
LABEL_ALL_UP_TO = 8


def scores_vs_dice(records: list[Mapping], metrics: list[str], targets: list[str], stem: str | Path,
                   labels: Mapping[str, str] | None = None) -> list[Path]:
    """Fig. 2: one panel per (metric row, target column), standardised score on x, mean Dice on y.

    Points are labelled beside the marker. In a bank of more than ``LABEL_ALL_UP_TO`` models only the three
    best by Dice and the metric's first pick are labelled: twenty labels per panel overlap into noise.
    """
    labels = {**METRIC_LABELS, **(labels or {})}
    fig, axes = plt.subplots(len(metrics), len(targets), figsize=(2.4 * len(targets), 2.0 * len(metrics)),
                             squeeze=False, sharey="col")
    for j, target in enumerate(targets):
        mine = sorted((r for r in records if r["target"] == target), key=lambda r: r["model"])
        dice = [r["dice"] for r in mine]
        for i, metric in enumerate(metrics):
            ax = axes[i, j]
            x = standardise([r["scores"][metric] for r in mine])
            ax.scatter(x, dice, s=18)
            if np.ptp(x) > 0 and len(x) > 1:
                slope, intercept = np.polyfit(x, dice, 1)
                xs = np.array([x.min(), x.max()])
                ax.plot(xs, slope * xs + intercept, lw=0.8, color="grey")
            if len(mine) <= LABEL_ALL_UP_TO:
                shown = range(len(mine))
            else:
                shown = {*np.argsort(dice)[::-1][:3].tolist(), int(np.argmax(x))}
            for k in shown:
                ax.annotate(_model_label(mine[k]["model"]), (x[k], dice[k]), xytext=(3, 2),
                            textcoords="offset points", fontsize=5, alpha=0.8)
            if i == 0:
                ax.set_title(_short(target), fontsize=9)
            if j == 0:
                ax.set_ylabel(f"{labels.get(metric, metric)}\nDice", fontsize=7)
            if i == len(metrics) - 1:
                ax.set_xlabel("standardised score", fontsize=7)
            ax.tick_params(labelsize=6)
    fig.tight_layout()
    return save(fig, stem)


def dice_heatmap(records: list[Mapping], targets: list[str], stem: str | Path) -> list[Path]:
    """Source (bank model) x target heatmap of the mean fine-tuned Dice on a fixed 0-1 colour scale; blank
    where a model is not in the target's bank (a task is never its own source)."""
    models = sorted({r["model"] for r in records}, key=model_order)
    grid = np.full((len(models), len(targets)), np.nan)
    for r in records:
        if r["target"] in targets:
            grid[models.index(r["model"]), targets.index(r["target"])] = r["dice"]
    fig, ax = plt.subplots(figsize=(1.3 * len(targets) + 2.5, 0.45 * len(models) + 1.5))
    # The colour scale is Dice's own range: scaled to the data, the worst model of a healthy bank (say 0.25)
    # would be drawn in the colour of a Dice of 0.
    image = ax.imshow(np.ma.masked_invalid(grid), cmap="viridis", aspect="auto", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(len(targets)), [_short(t) for t in targets], fontsize=8)
    ax.set_yticks(range(len(models)), models, fontsize=7)
    ax.set_xlabel("target")
    ax.set_ylabel("bank model (source)")
    for (i, j), value in np.ndenumerate(grid):
        if math.isfinite(value):
            ax.text(j, i, f"{value:.3f}", ha="center", va="center", fontsize=7,
                    color="white" if value < 0.5 else "black")  # viridis is dark below the middle
    fig.colorbar(image, ax=ax, label="mean fine-tuned Dice")
    fig.tight_layout()
    return save(fig, stem)


def class_features(features_path: str | Path, class_id: int, layer: int = -1, per_case: int = 40,
                   seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``per_case`` voxel features of ``class_id`` per case from one features file (the layer
    before the final convolution by default) and the case index of each row."""
    from .features_file import class_key, read_features

    ff = read_features(features_path)
    rng = np.random.default_rng(seed)
    rows, cases = [], []
    for index, case in enumerate(ff.cases.values()):
        feats = case.features[layer].get(class_key(class_id))
        if feats is None or len(feats) == 0:
            continue
        take = rng.choice(len(feats), size=min(per_case, len(feats)), replace=False)
        rows.append(np.asarray(feats[np.sort(take)], dtype=np.float64))
        cases.append(np.full(len(take), index))
    if not rows:
        raise ValueError(f"{features_path}: no voxel of class {class_id} in any case")
    return np.concatenate(rows), np.concatenate(cases)


#: Panels per row of the t-SNE figure.
TSNE_COLUMNS = 6


def feature_tsne(features_files: Mapping[str, str | Path], target: str, stem: str | Path, class_id: int = 1,
                 per_case: int = 40, seed: int = 0, dice: Mapping[str, float] | None = None) -> list[Path]:
    """Fig. 3: t-SNE (scikit-learn, perplexity <= 30, PCA init, seeded) of class ``class_id``'s features
    of each bank model on ``target``, one panel per model (at most ``TSNE_COLUMNS`` per row: a bank with
    snapshots holds 20 models or more), points coloured by case."""
    from sklearn.manifold import TSNE

    models = sorted(features_files, key=model_order)
    columns = min(len(models), TSNE_COLUMNS)
    n_rows = -(-len(models) // columns)
    fig, axes = plt.subplots(n_rows, columns, figsize=(2.6 * columns, 2.8 * n_rows), squeeze=False)
    for ax in axes.flat[len(models):]:
        ax.axis("off")
    for ax, model in zip(axes.flat, models):
        x, case = class_features(features_files[model], class_id, per_case=per_case, seed=seed)
        x = (x - x.mean(axis=0)) / (x.std(axis=0) + 1e-12)
        perplexity = float(min(30.0, max(2.0, (len(x) - 1) / 3)))
        embedded = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed,
                        max_iter=300).fit_transform(x)
        ax.scatter(embedded[:, 0], embedded[:, 1], c=case, cmap="tab10", s=6)
        title = _model_label(model)
        if dice and model in dice:
            title += f"\nDice {dice[model]:.3f}"
        ax.set_title(title, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"{_short(target)}: class {class_id} features (last decoder layer), colour = case", fontsize=9)
    fig.tight_layout()
    return save(fig, stem)
