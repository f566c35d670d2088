"""Which voxels of a case are sampled: per-class counts, the chosen coordinates per class, background and
global, and how many of them each decoder stage keeps (the paper's multi-scale sampling; docs/sampling.md)."""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from .file import BACKGROUND_KEY, GLOBAL_KEY, class_key

# --------------------------------------------------------------------------------------------------
# 1. Choosing voxels
# --------------------------------------------------------------------------------------------------


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def class_sample_counts(counts: Mapping[int, int], *, total: int, minimum: int) -> dict[int, int]:
    """Per-class sample counts, proportional to class size (paper section 2.2).

        n_k = min(count_k, max(minimum, round(total * count_k / sum_j count_j)))

    over the classes with ``count_k > 0`` (``round`` is half-up); classes with no voxel get no entry.

    Args:
        counts: voxel count per foreground class id in one case.
        total: the case's foreground budget (before the minimum and the cap).
        minimum: at least this many per present class (unless the class has fewer voxels).

    Returns:
        {class_id: n_k} for the present classes, in the order of ``counts``.
    """
    if total < 0 or minimum < 0:
        raise ValueError(f"total and minimum must be >= 0, got total={total}, minimum={minimum}")
    present = {int(k): int(c) for k, c in counts.items() if int(c) > 0}
    foreground = sum(present.values())
    result = {}
    for k, count in present.items():
        proportional = _round_half_up(total * count / foreground)
        result[k] = min(count, max(int(minimum), proportional))
    return result


def _draw(pool_size: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """n distinct indices into range(pool_size), in random order (n capped at pool_size)."""
    n = min(int(n), int(pool_size))
    return rng.choice(pool_size, size=n, replace=False, shuffle=True).astype(np.int64)


def check_class_ids(class_ids: Iterable[int]) -> list[int]:
    ids = [int(k) for k in class_ids]
    if any(k <= 0 for k in ids):
        raise ValueError(f"foreground class ids must be > 0 (0 and -1 are background), got {ids}")
    if len(set(ids)) != len(ids):
        raise ValueError(f"class ids must be unique, got {ids}")
    return ids


def choose_voxels(
    seg: np.ndarray,
    class_ids: Iterable[int],
    *,
    total: int,
    minimum: int,
    n_global: int,
    n_background: int,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """Choose the voxels of one case whose features will be sampled.

    Args:
        seg: integer labels [D, H, W] of a preprocessed case (nnU-Net's -1 outside the crop counts as
            background). A leading singleton channel axis [1, D, H, W] is accepted.
        class_ids: foreground class ids (> 0).
        total, minimum: class budget, see ``class_sample_counts``.
        n_global: voxels drawn uniformly from the whole case (capped at the number of voxels).
        n_background: voxels drawn uniformly among labels <= 0 (capped at their number).
        rng: the only source of randomness.

    Returns:
        {"class_<k>": [n_k, 3], ..., "global": [.., 3], "background": [.., 3]}, int64 (d, h, w)
        coordinates, all drawn without replacement and each in random order. A class absent from the
        case has no key (see ``absent_classes``); "global" and "background" are always present
        (possibly with 0 rows).
    """
    seg = as_seg(seg)
    ids = check_class_ids(class_ids)
    for name, value in (("total", total), ("minimum", minimum), ("n_global", n_global),
                        ("n_background", n_background)):
        if int(value) < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    flat = seg.reshape(-1)
    shape = seg.shape

    def to_coords(flat_index: np.ndarray) -> np.ndarray:
        return np.stack(np.unravel_index(flat_index, shape), axis=1).astype(np.int64).reshape(-1, 3)

    # A pool is a boolean mask (1 byte per voxel, one at a time: a class mask is built once to count
    # and again to draw); its i-th member in flat order is found by ``_nth_true`` without listing every
    # member (8 bytes per member voxel). Same voxels and random stream as ``flatnonzero(mask)[draw]``.
    sizes = {k: int(np.count_nonzero(flat == k)) for k in ids}
    counts = class_sample_counts(sizes, total=total, minimum=minimum)
    chosen: dict[str, np.ndarray] = {}
    for k, n_k in counts.items():
        chosen[class_key(k)] = to_coords(_nth_true(flat == k, _draw(sizes[k], n_k, rng)))
    chosen[GLOBAL_KEY] = to_coords(_draw(flat.size, n_global, rng))
    background = flat <= 0
    chosen[BACKGROUND_KEY] = to_coords(_nth_true(background, _draw(int(np.count_nonzero(background)),
                                                                   n_background, rng)))
    return chosen


def _nth_true(mask: np.ndarray, ranks: np.ndarray, chunk: int = 1 << 16) -> np.ndarray:
    """Flat index of the ``ranks[i]``-th True element of the 1-D ``mask``, for every i, in the order of
    ``ranks`` (equal to ``np.flatnonzero(mask)[ranks]``, in memory of one chunk instead of the mask's
    whole member list)."""
    ranks = np.asarray(ranks, dtype=np.int64)
    result = np.empty(ranks.shape, dtype=np.int64)
    if ranks.size == 0:
        return result
    per_chunk = [np.count_nonzero(mask[i:i + chunk]) for i in range(0, mask.size, chunk)]
    before = np.concatenate([[0], np.cumsum(per_chunk)])  # members before each chunk
    chunk_of = np.searchsorted(before, ranks, side="right") - 1
    for c in np.unique(chunk_of):
        which = chunk_of == c
        members = np.flatnonzero(mask[c * chunk:(c + 1) * chunk])
        result[which] = c * chunk + members[ranks[which] - before[c]]
    return result


def absent_classes(coords: Mapping[str, np.ndarray], class_ids: Iterable[int]) -> list[int]:
    """Class ids without a "class_<k>" key in ``coords`` (absent from the case)."""
    return [int(k) for k in class_ids if class_key(k) not in coords]


def as_seg(seg: np.ndarray) -> np.ndarray:
    seg = np.asarray(seg)
    if seg.ndim == 4 and seg.shape[0] == 1:
        seg = seg[0]
    if seg.ndim != 3:
        raise ValueError(f"seg must be [D, H, W] (or [1, D, H, W]), got shape {seg.shape}")
    if not np.issubdtype(seg.dtype, np.integer):
        if not np.all(np.equal(np.mod(seg, 1), 0)):
            raise ValueError("seg must hold integer labels")
        seg = seg.astype(np.int64)
    return seg


def labels_at(seg: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """Label at each coordinate [n, 3] as int16, with nnU-Net's -1 (outside the crop) mapped to 0."""
    seg = as_seg(seg)
    coords = np.asarray(coords, dtype=np.int64).reshape(-1, 3)
    values = seg[coords[:, 0], coords[:, 1], coords[:, 2]]
    return np.where(values < 0, 0, values).astype(np.int16)


# --------------------------------------------------------------------------------------------------
# 2. Layer ratios
# --------------------------------------------------------------------------------------------------


def layer_sample_count(n: int, ratio: float) -> int:
    """Rows of an n-row key used by a layer with sampling ratio ``ratio`` in (0, 1].

        n_l = min(n, max(ceil(ratio * n), min(n, 2)))

    ``ratio * n`` is rounded to 9 decimals before the ceiling so that float noise (0.1 * 30 =
    3.0000000000000004) does not add a row.
    """
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"layer ratio must be in (0, 1], got {ratio}")
    if n <= 0:
        return 0
    return min(n, max(math.ceil(round(ratio * n, 9)), min(n, 2)))


def resolve_ratios(layer_ratios: Sequence[float] | None, n_layers: int) -> list[float]:
    if layer_ratios is None:
        return [1.0] * n_layers
    ratios = [float(r) for r in layer_ratios]
    if len(ratios) != n_layers:
        raise ValueError(f"layer_ratios has {len(ratios)} entries for {n_layers} hooked layers")
    for r in ratios:
        if not 0.0 < r <= 1.0:
            raise ValueError(f"every layer ratio must be in (0, 1], got {ratios}")
    return ratios


def local_input_std(image: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """The standard deviation of the input in each voxel's 3x3x3 neighbourhood (cut at the case's border),
    the largest over channels: 0 where the input is locally constant (CT air clipped to its floor, a flat
    MR background), positive in anatomy. Recorded for the global voxels (``input_std`` of a features file)
    so that a score can leave constant regions out (``ccfv_score(global_voxels="varied")``).

    Args:
        image: float [C, D, H, W] preprocessed case (the network's input).
        coords: int [n, 3] voxel coordinates (d, h, w) inside the case.

    Returns:
        float32 [n], in the input's units (standard deviations after nnU-Net's z-scoring).
    """
    image = np.asarray(image, dtype=np.float64)
    coords = np.asarray(coords, dtype=np.int64).reshape(-1, 3)
    shape = np.array(image.shape[1:])
    out = np.zeros(len(coords), dtype=np.float32)
    for i, (d, h, w) in enumerate(coords):
        lo = np.maximum([d - 1, h - 1, w - 1], 0)
        hi = np.minimum([d + 2, h + 2, w + 2], shape)
        block = image[:, lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]].reshape(image.shape[0], -1)
        out[i] = block.std(axis=1).max()
    return out
