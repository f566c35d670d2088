"""How a ranking of the models agrees with their fine-tuned Dice: weighted Kendall's tau and Pearson (the
paper's), Kendall's tau-b, Rel@1, the top-3 hit, top-1 regret, with bootstrap intervals and permutation
p-values; the leave-one-out stability and the noise ceiling of the Dice (docs/report.md)."""
from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
from scipy import stats

# --------------------------------------------------------------------------------------------------
# Beyond the paper: uncertainty, significance, the noise ceiling, top-1 regret and static baselines
# (docs/report.md defines each one).
# --------------------------------------------------------------------------------------------------

STATISTICS = ("tau", "pearson")


try:  # the kernel behind scipy.stats.weightedtau, without its ~0.3 ms of argument checks per call
    from scipy.stats._stats import _weightedrankedtau
except ImportError:  # pragma: no cover - a scipy that moved it: the public function gives the same value
    _weightedrankedtau = None


def _weighted_tau(x: np.ndarray, y: np.ndarray) -> float:
    """``scipy.stats.weightedtau(x, y).statistic`` with its defaults (rank=True, hyperbolic additive
    weigher): the mean of the weighted taus ranked by x and by y (float64 input)."""
    if _weightedrankedtau is None:
        return float(stats.weightedtau(x, y).statistic)
    return float((_weightedrankedtau(x, y, None, None, True) + _weightedrankedtau(y, x, None, None, True)) / 2)


def statistic(name: str, scores, dice) -> float:
    """Weighted tau or Pearson of two sequences, as :func:`correlations` computes them (NaN when
    either is constant), for the thousands of calls of the bootstrap and the permutation tests; or one of
    :data:`SELECTION_MEASURES` (:func:`kendall_tau`, :func:`relative_top1`, :func:`top_k_hit` with k = 3)."""
    x = np.ascontiguousarray(scores, dtype=float)
    y = np.ascontiguousarray(dice, dtype=float)
    if name == "kendall":
        return kendall_tau(x, y)
    if name in SELECTION_MEASURES:
        return float(statistic_batch(name, x[None], y[None])[0])
    if name not in STATISTICS:
        raise ValueError(f"unknown statistic {name!r}; known: {STATISTICS + SELECTION_MEASURES}")
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan
    if name == "tau":
        return _weighted_tau(x, y)
    return float(_batched_pearson(x[None], y[None])[0])


def _batched_pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson's r of each row pair of x, y [B, n]; NaN for rows where either is constant."""
    xc = x - x.mean(axis=1, keepdims=True)
    yc = y - y.mean(axis=1, keepdims=True)
    degenerate = (np.ptp(x, axis=1) == 0) | (np.ptp(y, axis=1) == 0)
    with np.errstate(all="ignore"):
        r = np.sum(xc * yc, axis=1) / np.sqrt(np.sum(xc * xc, axis=1) * np.sum(yc * yc, axis=1))
    r = np.clip(r, -1.0, 1.0)
    r[degenerate] = np.nan
    return r


def statistic_batch(name: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The statistic of each row pair of x, y [B, n]."""
    if name == "pearson":
        return _batched_pearson(x, y)
    if name == "kendall":
        return _batched_kendall(x, y)
    if name == "rel_at_1":
        return _batched_relative_top1(x, y)
    if name == "top3":
        return _batched_top_k_hit(x, y, 3)
    return np.array([statistic(name, a, b) for a, b in zip(x, y)])


def bootstrap_interval(scores, dice, name: str, n_resamples: int = 1000, seed: int = 0,
                       level: float = 0.95, indices: np.ndarray | None = None) -> dict:
    """Percentile bootstrap interval of a correlation over the bank's models.

    Each resample draws ``n`` models with replacement (``n`` = bank size) with
    ``numpy.random.default_rng(seed)``, or uses the given ``indices`` [n_resamples, n]. A resample whose
    scores or Dice are all equal (e.g. one model drawn n times) has no defined correlation: it is
    dropped, and ``n_valid`` says how many were left. The interval is NaN when fewer than 2 are left.
    ``name``: "tau", "pearson" or one of :data:`SELECTION_MEASURES` (Rel@1 and the top-3 hit are defined
    on a resample with constant scores or Dice: those resamples count).
    """
    x = np.asarray(scores, dtype=float)
    y = np.asarray(dice, dtype=float)
    if indices is None:
        indices = np.random.default_rng(seed).integers(0, x.size, size=(n_resamples, x.size))
    return percentile_interval(statistic_batch(name, x[indices], y[indices]), level)


def percentile_interval(values: np.ndarray, level: float = 0.95) -> dict:
    """The percentile interval of the finite bootstrap values (NaN when fewer than 2 are finite)."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if values.size < 2:
        return {"low": math.nan, "high": math.nan, "n_valid": int(values.size)}
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(values, [alpha, 1.0 - alpha])
    return {"low": float(low), "high": float(high), "n_valid": int(values.size)}


def permutations_for(n: int, n_permutations: int, seed: int) -> tuple[np.ndarray, bool]:
    """Every permutation of n items when there are at most ``n_permutations`` (exact test), else
    ``n_permutations`` seeded random ones."""
    if math.factorial(n) <= n_permutations:
        import itertools
        return np.array(list(itertools.permutations(range(n)))), True
    rng = np.random.default_rng(seed)
    return np.array([rng.permutation(n) for _ in range(n_permutations)]), False


def permutation_pvalue(scores, dice, name: str, n_permutations: int = 2000, seed: int = 0,
                       permutations: tuple[np.ndarray, bool] | None = None) -> float:
    """One-sided p-value of a correlation against "the score carries no information about Dice".

    The Dice values are permuted over the models. Exact when all n! permutations fit in
    ``n_permutations`` (p = share of permutations, identity included, at least as large as observed);
    otherwise Monte Carlo with ``(1 + #{at least as large}) / (1 + n_permutations)``. NaN when the
    observed correlation is undefined.
    """
    x = np.asarray(scores, dtype=float)
    y = np.asarray(dice, dtype=float)
    observed = statistic(name, x, y)
    if not math.isfinite(observed):
        return math.nan
    perms, exact = permutations if permutations is not None else permutations_for(x.size, n_permutations, seed)
    values = statistic_batch(name, np.broadcast_to(x, perms.shape), y[perms])
    at_least = int(np.sum(values >= observed - 1e-12))
    return at_least / len(perms) if exact else (1 + at_least) / (1 + len(perms))


def top1_regret(scores, dice) -> dict:
    """Dice of the best model minus the Dice of the model the score ranks first.

    Ties for the top score are broken uniformly at random: the regret is the expectation over them
    (best Dice minus the mean Dice of the tied models). ``picked`` lists the tied models' indices.
    """
    x = np.asarray(scores, dtype=float)
    y = np.asarray(dice, dtype=float)
    x = np.where(np.isfinite(x), x, -np.inf)
    picked = np.flatnonzero(x == x.max())
    return {"regret": float(y.max() - y[picked].mean()), "picked": picked.tolist()}


# --------------------------------------------------------------------------------------------------
# Model selection beyond the paper's correlations (docs/report.md): unweighted Kendall's tau, relative
# top-1 accuracy and the top-3 hit rate (Agostinelli et al., ECCV 2022, "How stable are transferability
# metrics evaluations?"), and the leave-one-out stability of the verdict.
# --------------------------------------------------------------------------------------------------

#: The selection measures, in the order of the tables; each has a bootstrap interval like tau and Pearson.
SELECTION_MEASURES = ("kendall", "rel_at_1", "top3")
SELECTION_LABELS = {"kendall": "Kendall's τ-b", "rel_at_1": "Rel@1", "top3": "Top-3 hit rate"}


def kendall_tau(scores, dice) -> float:
    """Kendall's tau-b between the scores and the Dice (``scipy.stats.kendalltau``, its default variant
    "b", which corrects for ties in either sequence); NaN when either is constant. Unweighted: a swap at
    the bottom of the ranking counts as much as one at the top."""
    x = np.asarray(scores, dtype=float)
    y = np.asarray(dice, dtype=float)
    if x.shape != y.shape or x.size < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan
    return float(stats.kendalltau(x, y).statistic)


def _batched_kendall(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Kendall's tau-b of each row pair of x, y [B, n]: sum_ij sgn(x_i - x_j) sgn(y_i - y_j) over
    sqrt(sum_ij sgn(x_i - x_j)^2 * sum_ij sgn(y_i - y_j)^2), the pairs tied in x (or y) dropping out of
    the x (or y) factor as in tau-b; NaN where either row is constant. Equal to
    ``scipy.stats.kendalltau`` (tests/results/test_tables_and_statistics.py), vectorised for the bootstrap."""
    sx = np.sign(x[:, :, None] - x[:, None, :])
    sy = np.sign(y[:, :, None] - y[:, None, :])
    with np.errstate(all="ignore"):
        tau = np.sum(sx * sy, axis=(1, 2)) / np.sqrt(np.sum(sx * sx, axis=(1, 2)) * np.sum(sy * sy, axis=(1, 2)))
    return np.clip(tau, -1.0, 1.0)


def relative_top1(scores, dice) -> float:
    """Relative top-1 accuracy, Rel@1 (Agostinelli et al., ECCV 2022): the Dice of the model the
    scores rank first over the best Dice in the bank; 1 when the best model is picked.

    Ties for the top score are broken uniformly at random, so Rel@1 is the mean Dice of the tied models
    over the best Dice (the expectation; the same convention as :func:`top1_regret`, Rel@1 = 1 - regret /
    best Dice). A non-finite score ranks last. NaN when the best Dice is not positive (no ratio).
    """
    return float(_batched_relative_top1(np.asarray(scores, dtype=float)[None], np.asarray(dice, dtype=float)[None])[0])


def _batched_relative_top1(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    x = np.where(np.isfinite(x), x, -np.inf)
    top = x == x.max(axis=1, keepdims=True)
    best = y.max(axis=1)
    with np.errstate(all="ignore"):
        rel = np.sum(np.where(top, y, 0.0), axis=1) / top.sum(axis=1) / best
    # a mean of values equal to the best can round to 1 + 1e-16
    return np.where(best > 0, np.minimum(rel, 1.0), np.nan)


def top_k_hit(scores, dice, k: int = 3) -> float:
    """Top-k hit: 1 if the truly best model (the highest mean Dice over seeds) is among the k models the
    scores rank first, else 0: would a user who fine-tunes the k models a metric ranks first get the best?

    Ties are resolved as the expectation over uniformly random tie-breaking of the scores: with ``a``
    models scoring above the k-th highest score and ``t`` models tied at it, the k - a remaining places
    go to k - a of the t tied models drawn at random. Several models sharing the best Dice are all "the
    best": picking any of them is a hit. The value is therefore the probability of a hit:
    1 if a best model scores above the k-th highest score, else 1 - C(t - b, k - a) / C(t, k - a) with
    ``b`` the best models among the tied. A non-finite score ranks last. On a bank of at most k models
    every ranking hits (1).
    """
    return float(_batched_top_k_hit(np.asarray(scores, dtype=float)[None], np.asarray(dice, dtype=float)[None], k)[0])


def _batched_top_k_hit(x: np.ndarray, y: np.ndarray, k: int) -> np.ndarray:
    from scipy.special import comb

    x = np.where(np.isfinite(x), x, -np.inf)
    if x.shape[1] <= k:
        return np.ones(x.shape[0])
    best = y == y.max(axis=1, keepdims=True)
    kth = -np.sort(-x, axis=1)[:, k - 1:k]
    above, tied = x > kth, x == kth
    slots = k - above.sum(axis=1)
    t = tied.sum(axis=1)
    b = np.sum(best & tied, axis=1)
    miss = comb(t - b, slots) / comb(t, slots)
    return np.where(np.any(best & above, axis=1), 1.0, 1.0 - miss)


def leave_one_out(scores, dice, name: str = "tau") -> np.ndarray:
    """[n] the statistic (:func:`statistic`: weighted tau by default) on the bank without model i, for each
    model i of the n: how much one model's presence moves the verdict on a metric."""
    x = np.asarray(scores, dtype=float)
    y = np.asarray(dice, dtype=float)
    keep = ~np.eye(x.size, dtype=bool)
    return np.array([statistic(name, x[k], y[k]) for k in keep])


def loo_stability(scores, dice) -> dict:
    """Leave-one-out stability of a metric's weighted tau with Dice (docs/report.md).

    ``tau``: on the whole bank; ``loo_tau_min``, ``loo_tau_max``: the lowest and highest weighted tau
    when one model is left out; ``loo_max_change``: max over models of |tau without it - tau| (0: no
    single model decides the verdict); ``most_influential``: the index of that model (None when every
    value is NaN). The metric's own ranking of the remaining models cannot change when a model is left out
    (each model is scored from its own features), so what can change is its agreement with Dice.
    """
    full = statistic("tau", scores, dice)
    loo = leave_one_out(scores, dice, "tau")
    change = np.abs(loo - full)
    defined = np.isfinite(change)
    return {"tau": full, "loo_tau_min": float(np.nanmin(loo)) if np.isfinite(loo).any() else math.nan,
            "loo_tau_max": float(np.nanmax(loo)) if np.isfinite(loo).any() else math.nan,
            "loo_max_change": float(change[defined].max()) if defined.any() else math.nan,
            "most_influential": int(np.flatnonzero(defined)[np.argmax(change[defined])]) if defined.any() else None,
            "loo_tau": loo}


def method_ranking_stability(full: Mapping[str, float], loo: Mapping[str, np.ndarray]) -> float:
    """Mean Kendall's tau-b between the methods' ranking by weighted tau on the whole bank and on the bank
    with one model left out, over the n models left out (the mean Kendall's tau between the full and
    leave-one-out rankings, applied to the verdict that the tables report: which method ranks the models
    best). 1: leaving out any one model keeps the order of the methods.

    ``full``: {method: weighted tau on the whole bank}; ``loo``: {method: [n] weighted taus without each
    model} (:func:`leave_one_out`). For each left-out model, the methods with a finite tau on both banks
    are compared (at least 2 needed); NaN when no left-out bank allows a comparison.
    """
    methods = [m for m in full if math.isfinite(full[m])]
    n = len(next(iter(loo.values()))) if loo else 0
    values = []
    for i in range(n):
        mine = [m for m in methods if math.isfinite(loo[m][i])]
        if len(mine) >= 2:
            values.append(kendall_tau([full[m] for m in mine], [loo[m][i] for m in mine]))
    values = [v for v in values if math.isfinite(v)]
    return float(np.mean(values)) if values else math.nan


def dice_matrix(dice_per_seed: list[list[float | None]]) -> np.ndarray:
    """[models, seeds] float array of per-seed Dice, NaN where undefined (None) or where a model has fewer
    seeds than the longest row."""
    width = max((len(row) for row in dice_per_seed), default=0)
    return np.array([[math.nan if v is None else float(v) for v in row] + [math.nan] * (width - len(row))
                     for row in dice_per_seed], dtype=float).reshape(len(dice_per_seed), width)


def pooled_seed_variance(d: np.ndarray) -> float:
    """The seed variance of the Dice pooled over the bank: the mean over models of each model's variance
    over its defined seeds (ddof=1). ``d`` is [models, seeds] with NaN for undefined seeds. NaN when some
    model has fewer than 2 defined seeds (the noise cannot be estimated)."""
    n_seeds = np.sum(np.isfinite(d), axis=1)
    if d.ndim != 2 or d.shape[0] == 0 or n_seeds.min() < 2:
        return math.nan
    return float(np.mean(np.nanvar(d, axis=1, ddof=1)))


def noise_ceiling(dice_per_seed: list[list[float | None]], n_simulations: int = 1000, seed: int = 0,
                  max_splits: int = 100) -> dict:
    """How well any score could correlate with Dice measured from this many fine-tuning seeds.

    ``dice_per_seed[m]`` holds model m's Dice per seed (None/NaN for undefined ones). Two estimates:

    - ``tau``, ``pearson``: the expected correlation between the mean Dice (taken as the truth) and a
      re-measurement of it with the same seed noise: each model's mean plus Normal noise of variance
      sigma^2 / S_m, sigma^2 the seed variance pooled over the bank (mean of per-model variances,
      ddof=1), S_m the model's number of seeds; ``n_simulations`` seeded draws. A perfect score (one
      that knew the expected Dice) would reach this value on average.
    - ``split_half_tau``, ``split_half_pearson``: the correlation between the mean Dice over one half
      of the seeds and over the other half, averaged over the splits of the seeds (all, or
      ``max_splits`` random ones). It measures the agreement of two half-size experiments, so it is a
      lower bound on the ceiling for the full number of seeds.

    With fewer than 2 seeds for some model the seed noise cannot be estimated: every value is NaN and
    ``available`` is False.
    """
    d = dice_matrix(dice_per_seed)
    n_seeds = np.sum(np.isfinite(d), axis=1)
    nan = {"tau": math.nan, "pearson": math.nan, "split_half_tau": math.nan, "split_half_pearson": math.nan,
           "seed_sd": math.nan, "available": False, "min_seeds": int(n_seeds.min()) if d.size else 0}
    variance = pooled_seed_variance(d)
    if d.shape[0] < 2 or not math.isfinite(variance):
        return nan
    means = np.nanmean(d, axis=1)
    rng = np.random.default_rng(seed)
    noise = rng.normal(size=(n_simulations, d.shape[0])) * np.sqrt(variance / n_seeds)
    simulated = {s: np.nanmean(statistic_batch(s, np.broadcast_to(means, noise.shape), means + noise))
                 if variance > 0 else 1.0 for s in STATISTICS}
    # split-half: the same seed columns for every model (seeds are shared across the bank)
    n_cols = d.shape[1]
    import itertools
    half = n_cols // 2
    splits = list(itertools.combinations(range(n_cols), half))
    if len(splits) > max_splits:
        splits = [tuple(sorted(rng.choice(n_cols, size=half, replace=False))) for _ in range(max_splits)]
    halves = {s: [] for s in STATISTICS}
    for first in splits:
        second = [c for c in range(n_cols) if c not in first]
        with np.errstate(all="ignore"):
            a = np.nanmean(d[:, list(first)], axis=1)
            b = np.nanmean(d[:, second], axis=1)
        if np.all(np.isfinite(a)) and np.all(np.isfinite(b)):
            for s in STATISTICS:
                halves[s].append(statistic(s, a, b))
    split_half = {s: float(np.nanmean(v)) if np.any(np.isfinite(v)) else math.nan for s, v in halves.items()}
    return {"tau": float(simulated["tau"]), "pearson": float(simulated["pearson"]),
            "split_half_tau": split_half["tau"], "split_half_pearson": split_half["pearson"],
            "seed_sd": math.sqrt(variance), "available": True, "min_seeds": int(n_seeds.min())}


def eta_squared(values, groups) -> float:
    """The share of the variance of ``values`` that the grouping explains (one-way ANOVA's eta squared):
    ``sum_g n_g (mean_g - mean)^2 / sum_i (x_i - mean)^2``, in [0, 1]. NaN when the values are constant.
    Used for the share of a score's (or the Dice's) variance across a bank that the architecture explains
    (issue 24: a score whose ranking the architecture decides while the Dice's is not is an artefact)."""
    x = np.asarray(values, dtype=float)
    g = np.asarray(groups)
    if x.shape != g.shape or x.size == 0:
        raise ValueError(f"values {x.shape} and groups {g.shape} must be equally long and non-empty")
    total = float(np.sum((x - x.mean()) ** 2))
    if total == 0:
        return math.nan
    between = sum(float(np.sum(g == k)) * (float(x[g == k].mean()) - float(x.mean())) ** 2 for k in np.unique(g))
    return between / total
