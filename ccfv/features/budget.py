"""The window budget: choose a case's voxels inside a bounded number of sliding windows, so that the windows
the sampler runs per case are bounded by ``window_budget``, not by the scan's size (docs/sampling.md,
section 1b).

Without a budget, ``ccfv.features.voxels.choose_voxels`` draws "global" and "background" voxels uniformly
over the whole case; on a CT-sized case nearly every window then owns one of them and every window runs.
With a budget ``B``, every key is drawn as a stratified two-stage sample:

1. The case's windows are the sampler's own: nnU-Net's tiling of the padded case, each voxel owned by the
   window whose centre is nearest (``ccfv.features.windows.assign_windows``). A window's *cell* (the voxels
   it owns) is a box, and the cells partition the case.
2. A key's *selection pool* (the whole case for "global" and "background"; the class's voxels for
   "class_<k>") is laid on a line, cell after cell in nnU-Net's window order, each cell as long as its
   pool count. The line is cut into ``B`` equal strata; one point is drawn uniformly in each (the same
   ``B`` uniforms for every key, so that keys tend to share windows), and the cell under the point is a
   *hit*. A window that holds none of the pool is never hit; a large one can be hit twice.
3. The key's ``n`` voxels are shared among the hits, in proportion to the density of the key's pool in the
   hit window (pool voxels / selection-pool voxels there: 1 for "global" and the classes, so equal
   shares), capped at the voxels available, and drawn uniformly without replacement inside each hit's
   cell. "background" uses the hits of "global".

For "global" and each class this gives every voxel of the pool the same probability ``n / pool size`` of
being drawn, as the full pass does (exactly, while no cap binds: a window is hit with probability ``B x its
share of the line`` and then gives ``n / B`` draws per hit to its pool). For "background" the probability
is uniform up to the ratio of the hits' background densities to the case's (a ratio estimate). A key
whose pool lies in at most ``B`` windows is drawn as in the full pass (all of its windows run anyway), and
a case with at most ``B`` windows is chosen exactly as without a budget, voxel for voxel.

Guarantee: the windows run per case are at most ``B`` (global and background) plus, per present class,
``min(B, windows holding the class)``; so at most ``B x (1 + present classes)`` and at most ``B`` + the
windows holding the foreground. The features at the chosen voxels are what the full pass computes: the
sampler reads every voxel from its own window whichever windows run.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from .file import BACKGROUND_KEY, GLOBAL_KEY, class_key
from .voxels import _draw, _nth_true, as_seg, check_class_ids, choose_voxels, class_sample_counts
from .windows import assign_windows, pad_to_patch, window_starts


@dataclass(frozen=True)
class WindowCells:
    """nnU-Net's tiling of one case and the cell (the voxels it owns) of each window.

    Attributes:
        case_shape: (D, H, W) of the unpadded case.
        starts: per axis, the window starts in the padded case (``window_starts``).
        bounds: per axis, int64 [n_a + 1]: start index ``i`` on axis ``a`` owns the case coordinates
            ``bounds[a][i] <= x < bounds[a][i + 1]`` (unpadded; an empty range when it owns none).
    Windows are numbered in nnU-Net's visiting order, ``np.ravel_multi_index`` over the step counts.
    """

    case_shape: tuple[int, int, int]
    starts: tuple[np.ndarray, ...]
    bounds: tuple[np.ndarray, ...]

    @property
    def steps(self) -> tuple[int, int, int]:
        return tuple(len(s) for s in self.starts)

    @property
    def n_windows(self) -> int:
        return int(np.prod(self.steps))

    def box(self, window: int) -> tuple[slice, slice, slice]:
        """The cell of ``window`` as slices of the unpadded case."""
        index = np.unravel_index(int(window), self.steps)
        return tuple(slice(int(b[i]), int(b[i + 1])) for b, i in zip(self.bounds, index))

    def volumes(self) -> np.ndarray:
        """int64 [n_windows]: the case voxels each window owns."""
        sizes = [np.diff(b) for b in self.bounds]
        return (sizes[0][:, None, None] * sizes[1][None, :, None] * sizes[2][None, None, :]).reshape(-1)

    def counts(self, mask: np.ndarray) -> np.ndarray:
        """int64 [n_windows]: the True voxels of ``mask`` [D, H, W] in each window's cell.

        One slab of cells along the first axis at a time is counted into an [H, W] plane (``count_nonzero``
        reads the boolean mask once, without widening it), then summed over the cells of the other axes."""
        mask = np.asarray(mask, dtype=bool)
        b0, b1, b2 = self.bounds
        out = np.zeros(self.steps, dtype=np.int64)
        rows = np.flatnonzero(np.diff(b1) > 0)  # reduceat needs strictly increasing starts: skip empty cells
        cols = np.flatnonzero(np.diff(b2) > 0)
        for i in np.flatnonzero(np.diff(b0) > 0):
            plane = np.count_nonzero(mask[b0[i]:b0[i + 1]], axis=0)
            per_row = np.add.reduceat(plane, b1[rows], axis=0)
            out[i][np.ix_(rows, cols)] = np.add.reduceat(per_row, b2[cols], axis=1)
        return out.reshape(-1)


def window_cells(case_shape: Sequence[int], patch_size: Sequence[int], step_size: float) -> WindowCells:
    """The tiling ``ccfv.features.sampler.sample_case`` uses for a case of ``case_shape`` (D, H, W), and the
    cells its window assignment gives (computed with ``assign_windows`` itself, axis by axis: the rule is
    per axis). Padding (a case smaller than the patch) is nnU-Net's, found on a proxy of at most one patch.
    """
    shape = tuple(int(s) for s in case_shape)
    patch = tuple(int(p) for p in patch_size)
    if len(shape) != 3 or len(patch) != 3 or min(shape) < 1 or min(patch) < 1:
        raise ValueError(f"case shape {case_shape} and patch size {patch_size} must be 3 positive ints each")
    # The padding of an axis depends only on (size, patch) of that axis, so a proxy cut to the patch pads alike.
    proxy = np.zeros((1, *(min(s, p) for s, p in zip(shape, patch))), dtype=np.uint8)
    _, offset = pad_to_patch(proxy, patch)
    padded = tuple(max(s, p) for s, p in zip(shape, patch))
    starts = window_starts(padded, patch, step_size)
    bounds = []
    for axis in range(3):
        coords = np.tile(offset, (shape[axis], 1))
        coords[:, axis] += np.arange(shape[axis])
        owner = assign_windows(coords, starts, patch)[:, axis]  # non-decreasing along the axis
        bounds.append(np.searchsorted(owner, np.arange(len(starts[axis]) + 1), side="left").astype(np.int64))
    return WindowCells(case_shape=shape, starts=tuple(starts), bounds=tuple(bounds))


def stratified_hits(weights: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
    """One window per stratum: the weights laid on a line in window order, cut into ``len(uniforms)``
    equal strata, the window under the point ``(h + uniforms[h]) / B`` of the line in stratum ``h``.

    A window of weight ``w`` is hit ``B w / sum(weights)`` times in expectation; a zero-weight window
    never. Returns int64 [B] window indices (repeats possible), stratum order. ValueError when every
    weight is 0."""
    weights = np.asarray(weights, dtype=np.float64)
    line = np.cumsum(weights)
    if line.size == 0 or line[-1] <= 0:
        raise ValueError("no window holds a voxel of the pool")
    budget = len(uniforms)
    points = (np.arange(budget) + np.asarray(uniforms, dtype=np.float64)) * (line[-1] / budget)
    return np.minimum(np.searchsorted(line, points, side="right"), len(line) - 1).astype(np.int64)


def allocate(n: int, weights: np.ndarray, caps: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``min(n, sum(caps))`` items shared in proportion to ``weights``, none above its cap.

    The real-valued shares are proportional and capped (an entry whose share would pass its cap gets the
    cap, and the rest is shared among the others in the same proportions, until none passes); the integer
    shares are their floors plus one for the largest remainders (ties in random order). Entries with
    weight 0 get nothing. Returns int64 [len(weights)]."""
    weights = np.asarray(weights, dtype=np.float64)
    caps = np.where(weights > 0, np.asarray(caps, dtype=np.int64), 0)
    n = int(min(n, caps.sum()))
    share = np.zeros(len(weights))
    free = caps > 0
    while free.any():
        left = n - caps[~free & (caps > 0)].sum()
        quota = np.where(free, left * weights / weights[free].sum(), 0.0)
        over = free & (quota >= caps)
        if not over.any():
            share[free] = quota[free]
            break
        share[over] = caps[over]
        free &= ~over
    out = np.minimum(np.floor(share + 1e-9).astype(np.int64), caps)
    extra = n - int(out.sum())
    if extra > 0:
        remainder = np.where(out < caps, share - out, -np.inf)
        order = np.lexsort((rng.permutation(len(weights)), -remainder))  # largest first, random among ties
        out[order[:extra]] += 1
    return out


def _draw_in_cells(cells: WindowCells, seg: np.ndarray, label_test, windows: np.ndarray, counts: np.ndarray,
                   rng: np.random.Generator) -> np.ndarray:
    """``counts[i]`` distinct voxels drawn uniformly from the pool (``label_test(labels)`` True, or every
    voxel when ``label_test`` is None) inside the cell of ``windows[i]``; int64 [sum, 3], in random order."""
    parts = []
    for window, count in zip(windows, counts):
        if count == 0:
            continue
        box = cells.box(window)
        origin = np.array([s.start for s in box], dtype=np.int64)
        shape = tuple(s.stop - s.start for s in box)
        if label_test is None:
            flat = _draw(int(np.prod(shape)), count, rng)
        else:
            member = label_test(seg[box]).reshape(-1)
            flat = _nth_true(member, _draw(int(np.count_nonzero(member)), count, rng))
        parts.append(np.stack(np.unravel_index(flat, shape), axis=1).astype(np.int64) + origin)
    if not parts:
        return np.zeros((0, 3), dtype=np.int64)
    chosen = np.concatenate(parts)
    return chosen[rng.permutation(len(chosen))]  # random order: any prefix is a subsample (layer ratios)


def _draw_on_hits(cells, seg, label_test, pool_counts, hits, selection_counts, n, rng) -> np.ndarray:
    """A key's ``n`` voxels from the cells of ``hits``: shares in proportion to hits x pool density."""
    windows, multiplicity = np.unique(hits, return_counts=True)
    pool = pool_counts[windows]
    density = np.divide(pool, selection_counts[windows], out=np.zeros(len(windows)),
                        where=selection_counts[windows] > 0)
    counts = allocate(n, multiplicity * density, pool, rng)
    return _draw_in_cells(cells, seg, label_test, windows, counts, rng)


def _draw_whole_pool(seg: np.ndarray, mask: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """The full pass's draw: ``n`` voxels uniformly from the mask's True voxels (``choose_voxels``' way)."""
    flat = _nth_true(mask.reshape(-1), _draw(int(np.count_nonzero(mask)), n, rng))
    return np.stack(np.unravel_index(flat, seg.shape), axis=1).astype(np.int64).reshape(-1, 3)


def choose_voxels_in_windows(
    seg: np.ndarray,
    class_ids: Iterable[int],
    *,
    window_budget: int,
    patch_size: Sequence[int],
    step_size: float,
    total: int,
    minimum: int,
    n_global: int,
    n_background: int,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """``choose_voxels`` with a window budget: the same keys and counts (``class_sample_counts`` per class,
    ``n_global``, ``n_background``), drawn inside at most ``window_budget`` windows per key (the module's
    docstring has the rule and its guarantee).

    Args:
        seg: integer labels [D, H, W] (or [1, D, H, W]) of a preprocessed case; -1 counts as background.
        class_ids: foreground class ids (> 0).
        window_budget: B >= 1, windows per key; the windows run per case are at most B for "global" and
            "background" together plus min(B, windows holding class k) per present class k.
        patch_size, step_size: the tiling the sampler will use (``sample_case``'s arguments).
        total, minimum, n_global, n_background: as in ``choose_voxels``.
        rng: the only source of randomness.

    Returns:
        {"class_<k>": [n_k, 3], ..., "global": [.., 3], "background": [.., 3]}, int64 (d, h, w)
        coordinates in the unpadded case, distinct within a key, each in random order. Counts are those of
        ``choose_voxels``, capped at the pool's voxels inside the hit windows.

    Raises:
        ValueError: a budget below 1, a negative count, bad class ids or a bad shape.
    """
    if isinstance(window_budget, bool) or not isinstance(window_budget, (int, np.integer)) or window_budget < 1:
        raise ValueError(f"window_budget must be an integer >= 1, got {window_budget!r}")
    budget = int(window_budget)
    seg = as_seg(seg)
    ids = check_class_ids(class_ids)
    for name, value in (("total", total), ("minimum", minimum), ("n_global", n_global),
                        ("n_background", n_background)):
        if int(value) < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    cells = window_cells(seg.shape, patch_size, step_size)
    volumes = cells.volumes()
    if np.count_nonzero(volumes) <= budget:  # every window fits the budget: the full pass, voxel for voxel
        return choose_voxels(seg, ids, total=total, minimum=minimum, n_global=n_global,
                             n_background=n_background, rng=rng)

    uniforms = rng.random(budget)  # the same stratum points for every key: keys tend to share windows
    pools = {k: cells.counts(seg == k) for k in ids}  # class voxels per window (one mask at a time)
    sizes = {k: int(pool.sum()) for k, pool in pools.items()}
    chosen: dict[str, np.ndarray] = {}
    for k, n_k in class_sample_counts(sizes, total=total, minimum=minimum).items():
        pool = pools[k]
        if np.count_nonzero(pool) <= budget:  # its windows would all run anyway
            chosen[class_key(k)] = _draw_whole_pool(seg, seg == k, n_k, rng)
        else:
            hits = stratified_hits(pool, uniforms)
            chosen[class_key(k)] = _draw_on_hits(cells, seg, lambda labels, k=k: labels == k, pool, hits, pool,
                                                 n_k, rng)
    hits = stratified_hits(volumes, uniforms)
    chosen[GLOBAL_KEY] = _draw_on_hits(cells, seg, None, volumes, hits, volumes, n_global, rng)
    background = cells.counts(seg <= 0)
    chosen[BACKGROUND_KEY] = _draw_on_hits(cells, seg, lambda labels: labels <= 0, background, hits, volumes,
                                           n_background, rng)
    return chosen


def owner_windows(coords: dict[str, np.ndarray], cells: WindowCells) -> np.ndarray:
    """Sorted distinct windows (nnU-Net order) that own the voxels of ``coords`` {key: [n, 3]}: the windows
    ``sample_case`` runs for them."""
    every = [np.asarray(c, dtype=np.int64).reshape(-1, 3) for c in coords.values()]
    every = np.concatenate(every) if every else np.zeros((0, 3), dtype=np.int64)
    index = np.stack([np.searchsorted(b, every[:, a], side="right") - 1 for a, b in enumerate(cells.bounds)], axis=1)
    return np.unique(np.ravel_multi_index(tuple(index.T), cells.steps))
