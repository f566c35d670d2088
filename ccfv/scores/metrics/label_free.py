"""A label-free score (pre-registered, docs/preregistration.md): how many dimensions of its feature space a
model uses on the target's images, with no label read. It is the bar a label-using metric must clear: a
metric that needs the target's labels should rank models better than one that never looks at them."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .gaussian import as_matrix

#: Added to each normalised singular value before its log (RankMe's epsilon, Garrido et al., ICML 2023).
RANKME_EPS = 1e-7


def effective_rank(z: np.ndarray) -> float:
    """Effective rank of a feature matrix (Roy & Vetterli, EUSIPCO 2007; RankMe, Garrido et al., ICML 2023,
    eq. 1): ``exp(-sum_k p_k log p_k)`` with ``p_k = sigma_k / ||sigma||_1 + eps`` over the singular values
    of ``z`` [n, d] as given (not centred, as RankMe). Between 1 (one direction) and min(n, d).

    Raises:
        ValueError: ``z`` not a finite 2-D array with >= 1 row, or all zero.
    """
    z = as_matrix(z, "z")
    sigma = np.linalg.svd(z, compute_uv=False)
    total = sigma.sum()
    if not total > 0:
        raise ValueError("effective rank of an all-zero matrix is undefined")
    p = sigma / total + RANKME_EPS
    return float(np.exp(-np.sum(p * np.log(p))))


def rankme_score(layers: Sequence[Mapping[str, Any]]) -> float:
    """The label-free score: the mean over decoder layers of the *share* of its dimensions a model uses,
    ``effective_rank(Z_l) / min(n_l, d_l)``, with ``Z_l`` [n_l, d_l] the global voxels of every case stacked
    (``layer["global"]``; labels are never read). Divided by min(n, d) so that architectures with more
    channels (UNETR's 128-channel stage against a U-Net's 32) are not favoured for their width. In (0, 1];
    higher = the model spreads the target's voxels over more directions.

    Raises:
        ValueError: no layers, a layer without ``"global"``, or an all-zero layer.
    """
    layers = list(layers)
    if not layers:
        raise ValueError("rankme_score needs at least one layer")
    shares = []
    for index, layer in enumerate(layers):
        if "global" not in layer:
            raise ValueError(f"layer {index} has no 'global' entry")
        z = np.concatenate([as_matrix(v, f"layer {index} global") for v in layer["global"]])
        shares.append(effective_rank(z) / min(z.shape))
    return float(np.mean(shares))
