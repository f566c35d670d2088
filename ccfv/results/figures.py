"""The report's figures (matplotlib, Agg backend; each saved as PNG and SVG).

- :func:`scores_vs_dice`: the paper's Fig. 2, standardised score against mean fine-tuned Dice, one panel
  per (metric, target).
- :func:`dice_heatmap`: fine-tuned Dice of every source (bank model) on every target.
- :func:`feature_tsne`: the paper's Fig. 3, a t-SNE of one class's voxel features per bank model on one
  target, coloured by case; subsampled so that it stays cheap.
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..bank.model_ids import model_architecture, model_order, model_snapshot, model_source
from .formatting import FLAG_MARK, flag_reason
from .tables import METRIC_LABELS, correlations

matplotlib.use("Agg")


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


def _task_label(task: str) -> str:
    """``Task91\nSynthLiver`` for ``Task91_SynthLiver``: the id the tables use, then the name."""
    return task.replace("_", "\n", 1)


#: Marker per architecture in Fig. 2; an architecture not named here takes the next of ``OTHER_MARKERS``.
ARCHITECTURE_MARKERS = {"unet": "o", "unetr": "^"}
OTHER_MARKERS = ("s", "D", "v", "P", "X")
#: How the legend names an architecture.
ARCHITECTURE_NAMES = {"unet": "U-Net", "unetr": "UNETR"}
#: Colour of the randomly initialised members (a source task takes tab10's colour of its task number, see
#: :func:`source_colours`).
RANDOM_COLOUR = "0.35"
#: Marker area (points^2) of a fully pretrained or random model; a source's snapshots are drawn hollow and
#: smaller, the earliest smallest.
MARKER_SIZE = 30.0


def source_colours(sources: Sequence[str]) -> dict[str, tuple]:
    """{source task: colour}: tab10's colour number (task number mod 10) of ``TaskNN_Name``, so that a task
    keeps its colour in every figure and every config (the demo's and the study's banks hold different
    tasks); a task whose colour is taken, or without a number, gets the next free one; tab10's grey is
    left to the random members (``RANDOM_COLOUR``)."""
    palette = plt.get_cmap("tab10")
    taken, out = {7}, {}  # tab10's 7 is grey, the random members' colour
    for source in sorted(sources):
        match = re.match(r"Task(\d+)", source)
        wanted = int(match.group(1)) % 10 if match else 0
        # the first free colour from the wanted one on; with all ten taken, the wanted one again
        index = next(((wanted + step) % 10 for step in range(10) if (wanted + step) % 10 not in taken), wanted)
        taken.add(index)
        out[source] = palette(index)
    return out


def model_styles(models: Sequence[str]) -> tuple[dict[str, dict], list]:
    """How Fig. 2 draws each bank model, so that a point needs no text label: colour = source task (grey for
    a random member), marker = architecture, filled = fully pretrained, hollow and smaller = a snapshot
    (smaller the earlier). The same source has the same colour in every panel.

    Returns ``{model: {"marker", "color", "filled", "size"}}`` and the legend's handles (matplotlib
    ``Line2D``), one per source, per architecture and, when the bank has snapshots, one for them.
    """
    from matplotlib.lines import Line2D

    parsed = {m: (model_architecture(m), model_source(m), model_snapshot(m)) for m in models}
    sources = sorted({s for _, s, _ in parsed.values() if s is not None})
    colours = source_colours(sources)
    architectures = sorted({a for a, _, _ in parsed.values()}, key=lambda a: (a not in ARCHITECTURE_MARKERS, a))
    extra = iter(OTHER_MARKERS * (1 + len(architectures) // len(OTHER_MARKERS)))
    markers = {a: ARCHITECTURE_MARKERS.get(a) or next(extra) for a in architectures}
    styles = {}
    for model, (arch, source, snapshot) in parsed.items():
        size = MARKER_SIZE
        if snapshot is not None:
            # the k-th of a source's K snapshots (k = 1 the earliest): (k + 1) / (K + 2) of full size
            own = sorted({p[2] for p in parsed.values() if p[1] == source and p[0] == arch and p[2] is not None})
            size = MARKER_SIZE * (1 + own.index(snapshot) + 1) / (len(own) + 2)
        styles[model] = {"marker": markers[arch], "color": RANDOM_COLOUR if source is None else colours[source],
                         "filled": snapshot is None, "size": size}
    handles = [Line2D([], [], ls="", marker="s", color=colours[s], label=s) for s in sources]
    if any(s is None for _, s, _ in parsed.values()):
        handles.append(Line2D([], [], ls="", marker="s", color=RANDOM_COLOUR, label="random init"))
    handles += [Line2D([], [], ls="", marker=markers[a], color="black", label=ARCHITECTURE_NAMES.get(a, a))
                for a in architectures]
    if any(p[2] is not None for p in parsed.values()):
        handles.append(Line2D([], [], ls="", marker="o", markerfacecolor="none", color="black",
                              label="hollow: pretraining snapshot (smaller: earlier)"))
    return styles, handles


def _flag_footnote(fig, flags: Mapping[str, str] | None, targets: Sequence[str]) -> None:
    """Below the figure, one line per target whose ground truth cannot rank (ground_truth.md), as the
    tables' footnotes say it; its column title or tick carries the same mark."""
    flagged = [t for t in targets if flags and t in flags]
    if flagged:
        text = "\n".join(f"{FLAG_MARK} {flag_reason(t, flags[t])}" for t in flagged)
        fig.text(0.01, 0.0, text, ha="left", va="top", fontsize=7, color="firebrick", wrap=True)


def _target_title(target: str, flags: Mapping[str, str] | None, text: str | None = None) -> str:
    return (text or target) + (FLAG_MARK if flags and target in flags else "")


def scores_vs_dice(records: list[Mapping], metrics: list[str], targets: list[str], stem: str | Path,
                   labels: Mapping[str, str] | None = None, flags: Mapping[str, str] | None = None) -> list[Path]:
    """Fig. 2: one panel per (metric row, target column), standardised score on x, mean fine-tuned Dice on
    y, a least-squares line, and the panel's weighted Kendall's tau (as in Table 1,
    :func:`ccfv.results.tables.correlations`) in its corner.

    Each point is a bank model drawn as :func:`model_styles` says (colour = source, marker = architecture,
    hollow = snapshot), explained by one legend above the panels: text labels beside twenty points
    overlap into noise, and a source keeps its colour from panel to panel. The targets of ``flags``
    ({target: why its ground truth cannot rank}, :func:`ccfv.results.ground_truth.flags`) are marked as in the
    tables: a dagger in the column title and the reason below the figure.
    """
    labels = {**METRIC_LABELS, **(labels or {})}
    styles, handles = model_styles(sorted({r["model"] for r in records if r["target"] in targets}))
    fig, axes = plt.subplots(len(metrics), len(targets), figsize=(2.4 * len(targets), 2.0 * len(metrics)),
                             squeeze=False, sharey="col")
    for j, target in enumerate(targets):
        mine = sorted((r for r in records if r["target"] == target), key=lambda r: model_order(r["model"]))
        dice = [r["dice"] for r in mine]
        for i, metric in enumerate(metrics):
            ax = axes[i, j]
            scores = [r["scores"][metric] for r in mine]
            x = standardise(scores)
            for k, record in enumerate(mine):
                style = styles[record["model"]]
                ax.scatter([x[k]], [dice[k]], s=style["size"], marker=style["marker"], linewidths=0.9,
                           facecolors=style["color"] if style["filled"] else "none", edgecolors=style["color"])
            if np.ptp(x) > 0 and len(x) > 1:
                slope, intercept = np.polyfit(x, dice, 1)
                xs = np.array([x.min(), x.max()])
                ax.plot(xs, slope * xs + intercept, lw=0.8, color="grey")
            if len(mine) >= 2 and all(math.isfinite(v) for v in [*scores, *dice]):
                tau = correlations(scores, dice)["tau"]
                ax.text(0.03, 0.96, "τw n/a" if math.isnan(tau) else f"τw {tau:+.2f}", transform=ax.transAxes,
                        ha="left", va="top", fontsize=6, color="0.2")
            if i == 0:
                ax.set_title(_target_title(target, flags), fontsize=8,
                             color="firebrick" if flags and target in flags else "black")
            if j == 0:
                ax.set_ylabel(f"{labels.get(metric, metric)}\nDice", fontsize=7)
            if i == len(metrics) - 1:
                ax.set_xlabel("standardised score", fontsize=7)
            ax.tick_params(labelsize=6)
        # an empty band at the top of the column (its panels share y) for the tau, clear of the points
        low, high = axes[0, j].get_ylim()
        axes[0, j].set_ylim(low, high + 0.15 * (high - low))
    fig.tight_layout()
    fig.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=min(len(handles), 4),
               fontsize=7, frameon=False, title_fontsize=7,
               title="each point a bank model: colour = its source task, marker = its architecture; "
                     "grey line: least-squares fit")
    _flag_footnote(fig, flags, targets)
    return save(fig, stem)


def dice_heatmap(records: list[Mapping], targets: list[str], stem: str | Path,
                 flags: Mapping[str, str] | None = None) -> list[Path]:
    """Source (bank model) x target heatmap of the mean fine-tuned Dice on a fixed 0-1 colour scale; blank
    where a model is not in the target's bank (a task is never its own source). The targets of ``flags``
    are marked as in :func:`scores_vs_dice`."""
    models = sorted({r["model"] for r in records}, key=model_order)
    grid = np.full((len(models), len(targets)), np.nan)
    for r in records:
        if r["target"] in targets:
            grid[models.index(r["model"]), targets.index(r["target"])] = r["dice"]
    fig, ax = plt.subplots(figsize=(1.3 * len(targets) + 2.5, 0.45 * len(models) + 1.5))
    # The colour scale is Dice's own range: scaled to the data, the worst model of a healthy bank (say 0.25)
    # would be drawn in the colour of a Dice of 0.
    image = ax.imshow(np.ma.masked_invalid(grid), cmap="viridis", aspect="auto", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(len(targets)), [_target_title(t, flags, _task_label(t)) for t in targets], fontsize=8)
    for tick, target in zip(ax.get_xticklabels(), targets):
        if flags and target in flags:
            tick.set_color("firebrick")
    ax.set_yticks(range(len(models)), models, fontsize=7)
    ax.set_xlabel("target (blank: a task is never its own source)")
    ax.set_ylabel("bank model (source)")
    for (i, j), value in np.ndenumerate(grid):
        if math.isfinite(value):
            ax.text(j, i, f"{value:.3f}", ha="center", va="center", fontsize=7,
                    color="white" if value < 0.5 else "black")  # viridis is dark below the middle
    fig.colorbar(image, ax=ax, label="mean fine-tuned Dice")
    fig.tight_layout()
    _flag_footnote(fig, flags, targets)
    return save(fig, stem)


def class_features(features_path: str | Path, class_id: int, layer: int = -1, per_case: int = 40,
                   seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``per_case`` voxel features of ``class_id`` per case from one features file (the layer
    before the final convolution by default) and the case index of each row."""
    from ..features.file import class_key, read_features

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
        # tab10 repeats colours beyond 10 cases; tab20 holds 20
        ax.scatter(embedded[:, 0], embedded[:, 1], c=case, cmap="tab10" if case.max() < 10 else "tab20", s=6)
        title = model
        if dice and model in dice:
            title += f"\nDice {dice[model]:.3f}"
        ax.set_title(title, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"{target}: class {class_id} features (last decoder layer), colour = case", fontsize=9)
    fig.tight_layout()
    return save(fig, stem)
