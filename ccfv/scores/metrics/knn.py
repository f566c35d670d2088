"""The k-nearest-neighbour baseline: how well the target's voxel classes can be told apart by their nearest
sampled neighbours in a model's last decoder layer, each case predicted from the others: a simple probe that
assumes no distribution (issue 24 cites a 2025 large-scale benchmark in which k-NN beat most transferability
metrics; not checked here, hence a baseline to beat, docs/preregistration.md)."""
from __future__ import annotations

import numpy as np

from .gaussian import as_matrix


def knn_accuracy(features: np.ndarray, labels: np.ndarray, groups: np.ndarray, *, k: int = 5,
                 standardise: bool = True) -> float:
    """Leave-one-case-out k-NN balanced accuracy.

    Every sample of case g is classified by a majority vote of its ``k`` nearest samples (Euclidean) among
    the other cases' samples; ties go to the lowest label. The result is the balanced accuracy over all
    predictions: the mean over classes of the share of that class's samples predicted right, so the
    background's many samples do not dominate. ``standardise`` z-scores every channel over all samples
    first (a channel's scale should not decide the neighbours; transductive, no label used).

    Args:
        features: [n, d] samples (e.g. the last decoder layer at the class and background voxels).
        labels: [n] integer classes (background 0).
        groups: [n] the case each sample comes from; >= 2 distinct cases.
        k: neighbours per vote (>= 1; fewer when the other cases hold fewer samples).
        standardise: z-score the channels first.

    Returns:
        Balanced accuracy in [0, 1]; higher = the classes separate better.

    Raises:
        ValueError: mismatched lengths, fewer than 2 cases or 2 classes, k < 1.
    """
    from scipy.spatial import cKDTree

    x = as_matrix(features, "features")
    y = np.asarray(labels).astype(np.int64).ravel()
    g = np.asarray(groups).ravel()
    if not (len(y) == len(g) == x.shape[0]):
        raise ValueError(f"features {x.shape[0]}, labels {len(y)} and groups {len(g)} differ in length")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    cases = np.unique(g)
    classes = np.unique(y)
    if len(cases) < 2 or len(classes) < 2:
        raise ValueError(f"k-NN needs >= 2 cases and >= 2 classes, got {len(cases)} and {len(classes)}")
    if standardise:
        std = x.std(axis=0)
        x = (x - x.mean(axis=0)) / np.where(std > 0, std, 1.0)
    predicted = np.empty_like(y)
    for case in cases:
        test, train = g == case, g != case
        kk = min(k, int(train.sum()))
        _, index = cKDTree(x[train]).query(x[test], k=kk)
        votes = y[train][np.asarray(index).reshape(int(test.sum()), kk)]
        codes = np.searchsorted(classes, votes)
        counts = np.zeros((votes.shape[0], len(classes)), dtype=np.int64)
        np.add.at(counts, (np.repeat(np.arange(votes.shape[0]), kk), codes.ravel()), 1)
        predicted[test] = classes[np.argmax(counts, axis=1)]
    recalls = [float(np.mean(predicted[y == c] == c)) for c in classes]
    return float(np.mean(recalls))
