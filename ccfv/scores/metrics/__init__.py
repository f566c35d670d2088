"""The transferability metrics, one module per family, each function citing the equation it implements:

=====================================  ===============================================================
module                                 what it holds
=====================================  ===============================================================
:mod:`ccfv.scores.metrics.gaussian`    W2, KL and Bhattacharyya distances between fitted Gaussians
:mod:`ccfv.scores.metrics.ccfv`        CC-FV: class consistency (eq. 2), feature variety (eq. 3-4), score (eq. 5),
                                       and CC-FV-D (pre-registered)
:mod:`ccfv.scores.metrics.logme`       LogME
:mod:`ccfv.scores.metrics.baselines`   LEEP, NCE, GBC, TransRate, H-score
:mod:`ccfv.scores.metrics.released`    CC-FV as the authors' released code computes it
:mod:`ccfv.scores.metrics.label_free`  RankMe, the label-free score (pre-registered)
:mod:`ccfv.scores.metrics.knn`         the k-NN baseline
=====================================  ===============================================================

Every public name is importable from here (``from ccfv.scores.metrics import logme``), and from the old path
``ccfv.scores.metrics``.
"""
from .baselines import gbc, hscore, leep, nce, transrate
from .ccfv import (
    HSE_DISTANCE_FLOOR,
    ccfv_score,
    ccfv_terms,
    class_consistency,
    class_separation,
    discriminative_ccfv_score,
    feature_variety,
    hyperspherical_energy,
)
from .gaussian import (
    BACKENDS,
    DISTANCES,
    RIDGE_EPS,
    bhattacharyya_gaussian,
    gaussian_w2,
    gaussian_w2_matrix,
    kl_gaussian,
)
from .knn import knn_accuracy
from .label_free import effective_rank, rankme_score
from .logme import logme
from .released import ccfv_score_released, class_consistency_released, feature_variety_released, gaussian_w2_released

__all__ = [
    "gaussian_w2", "gaussian_w2_matrix", "kl_gaussian", "bhattacharyya_gaussian", "hyperspherical_energy",
    "class_consistency", "feature_variety", "ccfv_score", "logme", "leep", "nce", "gbc", "transrate", "hscore",
    "gaussian_w2_released", "class_consistency_released", "feature_variety_released", "ccfv_score_released",
    "BACKENDS", "DISTANCES", "HSE_DISTANCE_FLOOR", "RIDGE_EPS",
    "ccfv_terms", "class_separation", "discriminative_ccfv_score", "effective_rank", "rankme_score", "knn_accuracy",
]
