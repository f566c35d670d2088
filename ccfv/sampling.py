"""Sample decoder features at chosen voxels during sliding-window inference (paper section 2.2).

Every transferability score in ccfv is computed from voxel features taken inside a pretrained 3D
segmentation network's decoder while it runs sliding-window inference over the target dataset's
training cases. This module does that sampling without ever building a full-volume feature map:

1. ``choose_voxels`` picks the voxels first: per foreground class a count proportional to the
   class's size (the paper's class-imbalance rule), plus voxels from the whole case ("global", for
   feature variety) and from the background (for the baselines). Each array is in random order, so a
   prefix is a uniform subsample.
2. ``sample_case`` tiles the (padded) case exactly as nnU-Net does, assigns every chosen voxel to ONE
   window (per axis, the window whose centre is nearest to the voxel centre), runs only the windows
   that own a voxel, and inside forward hooks on the named layers gathers, at the owned voxels only,
   the value trilinear upsampling to the patch size would give. Layer ``l`` keeps the first
   ``ceil(layer_ratios[l] * n)`` voxels of every key (a lower sampling ratio near the bottleneck).
3. ``sample_dataset`` loops over cases and writes one features file (``ccfv.features_file``).

The rules (window assignment with its proof, interpolation, budgets, seeding) are in
``docs/sampling.md``. The module is generic over any ``torch.nn.Module``: callers supply the network
and the names (``dict(network.named_modules())`` keys) of the layers to hook, ordered from the one
nearest the bottleneck to the layer before the final convolution.
"""

from __future__ import annotations

import hashlib
import math
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ccfv import __version__
from ccfv.features_file import BACKGROUND_KEY, GLOBAL_KEY, CaseRecord, FeaturesWriter, class_key

__all__ = [
    "GLOBAL_KEY",
    "BACKGROUND_KEY",
    "class_key",
    "class_sample_counts",
    "choose_voxels",
    "absent_classes",
    "layer_sample_count",
    "window_starts",
    "pad_to_patch",
    "assign_windows",
    "trilinear_corners",
    "gather_corners",
    "interpolate_at",
    "CaseSamples",
    "sample_case",
    "case_rng",
    "labels_at",
    "sample_dataset",
]


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


def _check_class_ids(class_ids: Iterable[int]) -> list[int]:
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
    seg = _as_seg(seg)
    ids = _check_class_ids(class_ids)
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


def _as_seg(seg: np.ndarray) -> np.ndarray:
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
    seg = _as_seg(seg)
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


def _resolve_ratios(layer_ratios: Sequence[float] | None, n_layers: int) -> list[float]:
    if layer_ratios is None:
        return [1.0] * n_layers
    ratios = [float(r) for r in layer_ratios]
    if len(ratios) != n_layers:
        raise ValueError(f"layer_ratios has {len(ratios)} entries for {n_layers} hooked layers")
    for r in ratios:
        if not 0.0 < r <= 1.0:
            raise ValueError(f"every layer ratio must be in (0, 1], got {ratios}")
    return ratios


# --------------------------------------------------------------------------------------------------
# 3. Tiling and padding (nnU-Net's own helpers)
# --------------------------------------------------------------------------------------------------


def window_starts(image_shape: Sequence[int], patch_size: Sequence[int], step_size: float) -> list[np.ndarray]:
    """Per-axis window starts, exactly nnU-Net's ``compute_steps_for_sliding_window``.

    ``image_shape`` must be at least ``patch_size`` in every axis (pad first, ``pad_to_patch``).
    The windows are the Cartesian product of the per-axis starts; nnU-Net visits them with the first
    axis outermost, which is also the order of ``np.ravel_multi_index`` over the step counts.
    """
    from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window

    image_shape = tuple(int(s) for s in image_shape)
    patch_size = tuple(int(p) for p in patch_size)
    if any(s < p for s, p in zip(image_shape, patch_size)):
        raise ValueError(f"image {image_shape} is smaller than the patch {patch_size}; pad it first")
    steps = compute_steps_for_sliding_window(image_shape, patch_size, float(step_size))
    return [np.asarray(s, dtype=np.int64) for s in steps]


def pad_to_patch(image: np.ndarray, patch_size: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Pad [C, D, H, W] with zeros to at least the patch size, as nnU-Net's predictor does.

    Uses ``acvl_utils``' ``pad_nd_image`` as nnU-Net's predictor does (it passes a torch tensor
    with ``{"value": 0}``; for a numpy array the same zero padding is ``{"constant_values": 0}``):
    the content stays centred, the larger half of an odd padding goes above.

    Returns:
        (padded image, offset): ``offset`` int64 [3] is added to (d, h, w) coordinates of the
        unpadded case to address the padded one.
    """
    from acvl_utils.cropping_and_padding.padding import pad_nd_image

    padded, slicer = pad_nd_image(
        image, tuple(int(p) for p in patch_size), "constant", {"constant_values": 0}, True, None
    )
    offset = np.array([s.start or 0 for s in slicer[-3:]], dtype=np.int64)
    return padded, offset


# --------------------------------------------------------------------------------------------------
# 4. Window assignment
# --------------------------------------------------------------------------------------------------


def assign_windows(coords: np.ndarray, starts: Sequence[np.ndarray], patch_size: Sequence[int]) -> np.ndarray:
    """Per-axis index of the window that provides each voxel's features (vectorised).

    Rule: per axis, the start whose window centre ``s + P/2`` is nearest to the voxel centre
    ``x + 0.5``; ties go to the lower start. The window grid is the Cartesian product of per-axis
    starts, so this per-axis argmin picks one window. With nnU-Net's tiling (first start 0, last
    ``size - P``, consecutive starts at most P apart) the chosen window always contains the voxel;
    docs/sampling.md has the proof, and this function checks it.

    Args:
        coords: int [n, 3] coordinates in the (padded) image the starts were computed for.
        starts: per-axis sorted window starts (``window_starts``).
        patch_size: (P_d, P_h, P_w).

    Returns:
        int64 [n, 3]: for each voxel and axis, the index into ``starts[axis]``.
    """
    coords = np.asarray(coords, dtype=np.int64).reshape(-1, 3)
    chosen = np.empty_like(coords)
    for axis in range(3):
        s = np.asarray(starts[axis], dtype=np.int64)
        if s.size == 0 or np.any(np.diff(s) < 0):
            raise ValueError(f"window starts of axis {axis} must be non-empty and sorted, got {s}")
        # Doubled to stay in integers: 2 * |(x + 0.5) - (s + P/2)| = |2x + 1 - 2s - P|.
        distance = np.abs(2 * coords[:, axis:axis + 1] + 1 - 2 * s[None, :] - int(patch_size[axis]))
        chosen[:, axis] = np.argmin(distance, axis=1)  # first minimum = lower start on ties
        start = s[chosen[:, axis]]
        inside = (coords[:, axis] >= start) & (coords[:, axis] < start + int(patch_size[axis]))
        if not np.all(inside):
            raise AssertionError(f"a voxel was assigned to a window not containing it on axis {axis}")
    return chosen


# --------------------------------------------------------------------------------------------------
# 5. Gathering inside one window batch
# --------------------------------------------------------------------------------------------------


def trilinear_corners(
    local: torch.Tensor, map_size: Sequence[int], patch_size: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The 8 neighbours and weights that trilinear upsampling of a ``map_size`` map to ``patch_size``
    (``F.interpolate(..., mode="trilinear", align_corners=False)``) uses at each voxel.

    Per axis with map size ``n`` and patch size ``P`` (PyTorch's own rule):
    ``src = max((x + 0.5) * n / P - 0.5, 0)``, ``i0 = min(floor(src), n - 1)``,
    ``i1 = min(i0 + 1, n - 1)``, ``w1 = src - i0``, ``w0 = 1 - w1``.

    Args:
        local: long [m, 3], voxel coordinates inside the window (0 <= x < P).
        map_size: (d, h, w) of the low-resolution map.
        patch_size: (P_d, P_h, P_w).

    Returns:
        (flat index long [m, 8] into the map flattened over (d, h, w), weight float32 [m, 8]); corner
        ``c`` takes the high neighbour on axis ``a`` when bit ``2 - a`` of ``c`` is set.
    """
    low, high, w_low, w_high = [], [], [], []
    for axis in range(3):
        n, p = int(map_size[axis]), int(patch_size[axis])
        src = ((local[:, axis].to(torch.float32) + 0.5) * (n / p) - 0.5).clamp(min=0.0)
        i0 = src.floor().long().clamp(max=n - 1)
        i1 = (i0 + 1).clamp(max=n - 1)
        w1 = src - i0.to(torch.float32)
        low.append(i0)
        high.append(i1)
        w_low.append(1.0 - w1)
        w_high.append(w1)
    h, w = int(map_size[1]), int(map_size[2])
    index, weight = [], []
    for corner in range(8):
        bits = [(corner >> (2 - axis)) & 1 for axis in range(3)]
        i = [high[a] if bits[a] else low[a] for a in range(3)]
        index.append((i[0] * h + i[1]) * w + i[2])
        weight.append((w_high[0] if bits[0] else w_low[0]) * (w_high[1] if bits[1] else w_low[1])
                      * (w_high[2] if bits[2] else w_low[2]))
    return torch.stack(index, dim=1), torch.stack(weight, dim=1)


def gather_corners(
    feature_map: torch.Tensor, batch_index: torch.Tensor, index: torch.Tensor, weight: torch.Tensor
) -> torch.Tensor:
    """sum_c weight[:, c] * feature_map[batch_index, :, corner c] as float32 [m, C] (one gather)."""
    b, c = feature_map.shape[:2]
    values = feature_map.reshape(b, c, -1)[batch_index[:, None], :, index].float()  # [m, 8, C]
    return (values * weight[:, :, None].float()).sum(dim=1)


def interpolate_at(
    feature_map: torch.Tensor, batch_index: torch.Tensor, local: torch.Tensor, patch_size: Sequence[int]
) -> torch.Tensor:
    """Values of ``F.interpolate(feature_map, size=patch_size, mode="trilinear", align_corners=False)``
    at the given voxels, computed from their 8 neighbours without building the upsampled map
    (``trilinear_corners`` has the rule). A map at patch resolution is a plain gather.

    Args:
        feature_map: [B, C, d, h, w].
        batch_index: long [m], window index within the batch.
        local: long [m, 3], voxel coordinates inside the window (0 <= x < P).
        patch_size: (P_d, P_h, P_w).

    Returns:
        float32 [m, C].
    """
    sizes = tuple(feature_map.shape[2:])
    if sizes == tuple(int(p) for p in patch_size):  # full resolution: a plain gather
        return feature_map[batch_index, :, local[:, 0], local[:, 1], local[:, 2]].float()
    index, weight = trilinear_corners(local, sizes, patch_size)
    return gather_corners(feature_map, batch_index, index, weight)


@dataclass
class CaseSamples:
    """What ``sample_case`` returns for one case.

    Attributes:
        layer_names: hooked layers, in the order given (bottleneck -> output).
        channels: C_l per layer.
        features: per layer, {key: float32 [n_l, C_l]} with n_l = ``layer_sample_count(n, ratio_l)``,
            the first n_l rows of that key's coordinates.
        probs: {key: float32 [n, K]} softmax of the network's output at every voxel of the key.
        num_output_channels: K, the channels of the network's final output.
        windows_run: windows that owned at least one voxel (only these were run).
        windows_total: windows in nnU-Net's tiling of the case.
    """

    layer_names: list[str]
    channels: list[int]
    features: list[dict[str, np.ndarray]]
    probs: dict[str, np.ndarray]
    num_output_channels: int
    windows_run: int
    windows_total: int


def _as_feature_map(output: Any, name: str, batch: int) -> torch.Tensor:
    if not isinstance(output, torch.Tensor) or output.ndim != 5:
        kind = type(output).__name__ if not isinstance(output, torch.Tensor) else f"tensor {tuple(output.shape)}"
        raise TypeError(f"hooked layer {name!r} must output a [B, C, d, h, w] tensor, got {kind}")
    if output.shape[0] != batch:
        raise ValueError(f"hooked layer {name!r} output batch {output.shape[0]}, expected {batch}")
    return output


def _final_logits(output: Any, batch: int, patch_size: tuple[int, ...]) -> torch.Tensor:
    if isinstance(output, (list, tuple)):  # deep supervision: element 0 is full resolution
        output = output[0]
    if not isinstance(output, torch.Tensor) or tuple(output.shape[2:]) != patch_size or output.shape[0] != batch:
        shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise ValueError(f"network output must be logits [{batch}, K, *{list(patch_size)}], got {shape}")
    return output


class _Consumer:
    """Collects one hooked output (a layer's features, or the output probabilities) at its rows.

    ``rows`` index the table of all chosen voxels; they are sorted once by window batch, so batch
    ``b`` owns the contiguous slice ``[bounds[b], bounds[b + 1])`` of the sorted rows, and its values
    land in that slice of one [n, C] buffer on ``device`` (no per-batch host copy or sync). The
    corner indices and weights of trilinear upsampling are computed once per case, for all rows,
    on the first batch (when the map size is known).
    """

    def __init__(self, rows, batch_of, slot_of, local, n_batches, device):
        self.order = np.argsort(batch_of[rows], kind="stable")
        self.bounds = np.searchsorted(batch_of[rows][self.order], np.arange(n_batches + 1)).tolist()
        sorted_rows = rows[self.order]
        self.slot = torch.from_numpy(slot_of[sorted_rows]).to(device)
        self.local = torch.from_numpy(local[sorted_rows]).to(device)
        self.device = device
        self.out: torch.Tensor | None = None
        self.size: tuple[int, ...] | None = None
        self.corners: tuple[torch.Tensor, torch.Tensor] | None = None

    def take(self, b: int, fmap: torch.Tensor, patch: tuple[int, ...], name: str, softmax: bool = False) -> None:
        size = tuple(int(n) for n in fmap.shape[2:])
        if self.out is None:
            self.out = torch.zeros((len(self.order), int(fmap.shape[1])), dtype=torch.float32, device=self.device)
            self.size = size
            if size != patch:
                self.corners = trilinear_corners(self.local, size, patch)
        elif self.out.shape[1] != fmap.shape[1] or self.size != size:
            raise ValueError(f"{name!r} changed its output shape between batches")
        lo, hi = self.bounds[b], self.bounds[b + 1]
        if hi == lo:
            return
        slot = self.slot[lo:hi]
        if self.corners is None:  # patch resolution: a plain gather
            at = self.local[lo:hi]
            values = fmap[slot, :, at[:, 0], at[:, 1], at[:, 2]].float()
        else:
            values = gather_corners(fmap, slot, self.corners[0][lo:hi], self.corners[1][lo:hi])
        self.out[lo:hi] = torch.softmax(values, dim=1) if softmax else values

    def result(self) -> np.ndarray:
        """[n, C] float32 in the order of ``rows``."""
        result = np.empty(tuple(self.out.shape), dtype=np.float32)
        result[self.order] = self.out.cpu().numpy()
        return result


def sample_case(
    network: torch.nn.Module,
    layer_names: Sequence[str],
    image: np.ndarray,
    coords: Mapping[str, np.ndarray],
    *,
    patch_size: Sequence[int],
    step_size: float = 0.5,
    batch_size: int = 2,
    layer_ratios: Sequence[float] | None = None,
    device: str | torch.device = "cpu",
    probs_keys: Sequence[str] = (BACKGROUND_KEY,),
    progress: Callable[[int, int], None] | None = None,
) -> CaseSamples:
    """Sample the hooked layers' features at ``coords`` during sliding-window inference of one case.

    The case is padded like nnU-Net (``pad_to_patch``), tiled with ``window_starts``, and each voxel
    is read from the one window ``assign_windows`` gives it. Windows owning no voxel are skipped; the
    others run in batches of ``batch_size`` (nnU-Net's window order; a short last batch is filled up
    with copies of its last window when there are several batches) under ``torch.inference_mode`` in
    eval mode. Forward hooks, registered once and removed at the end (also on error), gather each
    hooked layer's trilinearly upsampled value (``interpolate_at``) at the batch's voxels only; no
    hooked output outlives its batch.

    Args:
        network: any module; must already live on ``device``. Its training flag is restored after.
        layer_names: keys of ``dict(network.named_modules())``, bottleneck -> output.
        image: float32 [C, D, H, W] preprocessed case.
        coords: {key: int [n, 3]} (d, h, w) coordinates in the unpadded case (``choose_voxels``).
        patch_size: window size (P_d, P_h, P_w) the network was trained with.
        step_size: nnU-Net's tile step as a fraction of the patch (0.5 in nnU-Net).
        batch_size: windows per forward pass.
        layer_ratios: sampling ratio per hooked layer in (0, 1] (default all 1).
        device: where the windows are sent.
        probs_keys: keys whose softmax output probabilities are returned.
        progress: optional callback ``progress(batches_done, batches_total)``.

    Returns:
        ``CaseSamples``.
    """
    layer_names = [str(n) for n in layer_names]
    if not layer_names:
        raise ValueError("at least one layer name is needed")
    if len(set(layer_names)) != len(layer_names):
        raise ValueError(f"layer names must be unique, got {layer_names}")
    ratios = _resolve_ratios(layer_ratios, len(layer_names))
    modules = dict(network.named_modules())
    missing = [n for n in layer_names if n not in modules]
    if missing:
        raise ValueError(f"layers {missing} are not modules of {type(network).__name__}")
    patch = tuple(int(p) for p in patch_size)
    if len(patch) != 3 or min(patch) < 1:
        raise ValueError(f"patch_size must be 3 positive ints, got {patch_size}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 4:
        raise ValueError(f"image must be [C, D, H, W], got shape {image.shape}")
    keys = list(coords)
    for key in probs_keys:
        if key not in coords:
            raise ValueError(f"probs key {key!r} is not among the coordinate keys {keys}")
    key_coords = {k: np.asarray(coords[k], dtype=np.int64).reshape(-1, 3) for k in keys}
    for k, c in key_coords.items():
        outside = (c < 0) | (c >= np.array(image.shape[1:]))
        if outside.any():
            raise ValueError(f"coordinates of {k!r} fall outside the image {image.shape[1:]}")

    # All voxels of all keys in one table; a key is a contiguous block of it.
    sizes = [len(key_coords[k]) for k in keys]
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    block = {k: (int(offsets[i]), int(sizes[i])) for i, k in enumerate(keys)}
    if offsets[-1] == 0:
        raise ValueError("no voxel to sample: every coordinate array is empty")

    padded, pad_offset = pad_to_patch(image, patch)
    all_coords = np.concatenate([key_coords[k] for k in keys], axis=0) + pad_offset
    starts = window_starts(padded.shape[1:], patch, step_size)
    n_steps = tuple(len(s) for s in starts)
    step_index = assign_windows(all_coords, starts, patch)
    window_of = np.ravel_multi_index(tuple(step_index.T), n_steps)
    used = np.unique(window_of)  # sorted = nnU-Net's visiting order
    position = np.searchsorted(used, window_of)
    batch_of = position // batch_size
    slot_of = position % batch_size
    window_start = np.stack([starts[a][step_index[:, a]] for a in range(3)], axis=1)
    local = all_coords - window_start
    n_batches = int(math.ceil(len(used) / batch_size))

    # Rows of the table each consumer needs. Each consumer's rows are put in batch order once, so that
    # a batch's rows are a contiguous slice [bounds[b], bounds[b + 1]) of them (``_Consumer``).
    def rows_for(counts: Mapping[str, int]) -> np.ndarray:
        parts = [block[k][0] + np.arange(counts[k], dtype=np.int64) for k in keys if k in counts]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    device = torch.device(device)
    layer_counts = [{k: layer_sample_count(block[k][1], r) for k in keys} for r in ratios]
    layers = [_Consumer(rows_for(c), batch_of, slot_of, local, n_batches, device) for c in layer_counts]
    probs_sink = _Consumer(rows_for({k: block[k][1] for k in probs_keys}), batch_of, slot_of, local, n_batches,
                           device)
    state = {"batch": -1, "size": 0, "calls": [0] * len(layer_names)}

    def make_hook(index: int):
        def hook(module, inputs, output):
            state["calls"][index] += 1
            fmap = _as_feature_map(output, layer_names[index], state["size"])
            layers[index].take(state["batch"], fmap, patch, layer_names[index])
        return hook

    was_training = network.training
    handles = []
    try:
        for index, name in enumerate(layer_names):
            handles.append(modules[name].register_forward_hook(make_hook(index)))
        network.eval()
        with torch.inference_mode():
            for b in range(n_batches):
                windows = used[b * batch_size:(b + 1) * batch_size]
                tiles = []
                for w in windows:
                    sd, sh, sw = (int(starts[a][i]) for a, i in enumerate(np.unravel_index(w, n_steps)))
                    tiles.append(padded[:, sd:sd + patch[0], sh:sh + patch[1], sw:sw + patch[2]])
                if n_batches > 1:
                    # A short last batch is filled up with copies of its last window (their outputs are
                    # not read): every forward pass then has the same shape, and the CPU backends do not
                    # set up a second, differently-shaped set of buffers for it.
                    tiles += [tiles[-1]] * (batch_size - len(tiles))
                x = torch.from_numpy(np.ascontiguousarray(np.stack(tiles))).to(device)
                state.update(batch=b, size=len(tiles), calls=[0] * len(layer_names))
                logits = _final_logits(network(x), len(tiles), patch)
                del x
                silent = [layer_names[i] for i, c in enumerate(state["calls"]) if c != 1]
                if silent:
                    raise RuntimeError(f"hooked layers {silent} did not run exactly once per forward pass")
                probs_sink.take(b, logits, patch, "output", softmax=True)
                del logits
                if progress is not None:
                    progress(b + 1, n_batches)
    finally:
        for handle in handles:
            handle.remove()
        network.train(was_training)

    layer_out = [c.result() for c in layers]
    probs_out = probs_sink.result()
    features = []
    for index in range(len(layer_names)):
        per_key, start = {}, 0
        for k in keys:
            n_l = layer_counts[index][k]
            per_key[k] = layer_out[index][start:start + n_l]
            start += n_l
        features.append(per_key)
    probs, start = {}, 0
    for k in probs_keys:
        n = block[k][1]
        probs[k] = probs_out[start:start + n]
        start += n
    return CaseSamples(
        layer_names=layer_names,
        channels=[int(f.shape[1]) for f in layer_out],
        features=features,
        probs=probs,
        num_output_channels=int(probs_out.shape[1]),
        windows_run=int(len(used)),
        windows_total=int(np.prod(n_steps)),
    )


# --------------------------------------------------------------------------------------------------
# 6. A whole dataset into one features file
# --------------------------------------------------------------------------------------------------


def _software_versions(network: torch.nn.Module) -> dict[str, str]:
    """{package: version} of what produced the numbers: ccfv, numpy, torch, h5py, nnunetv2 (the
    tiling) and the package that defines the network's class (e.g. dynamic_network_architectures)."""
    from importlib import metadata

    import h5py

    versions = {"ccfv": __version__, "numpy": np.__version__, "torch": torch.__version__,
                "h5py": h5py.__version__}
    for package in ("nnunetv2", type(network).__module__.split(".")[0]):
        if package in versions:
            continue
        try:
            versions[package] = metadata.version(package)
        except (metadata.PackageNotFoundError, ValueError):
            version = getattr(sys.modules.get(package), "__version__", None)
            if isinstance(version, str):
                versions[package] = version
    return versions


def case_rng(seed: int, case_id: str) -> np.random.Generator:
    """The generator that chooses a case's voxels: seeded from (seed, case id).

    The case id (not its position in the list) is hashed, so a case gets the same voxels whatever
    the order or subset of cases it is sampled with.
    """
    digest = hashlib.sha256(str(case_id).encode("utf-8")).digest()
    return np.random.default_rng(np.random.SeedSequence([int(seed), int.from_bytes(digest[:8], "little")]))


def sample_dataset(
    network: torch.nn.Module,
    layer_names: Sequence[str],
    cases: Iterable[tuple[str, np.ndarray, np.ndarray]],
    out_path: str | Path,
    *,
    class_ids: Sequence[int],
    budgets: Mapping[str, int],
    patch_size: Sequence[int],
    model_id: str,
    architecture: str,
    target: str,
    seed: int = 0,
    step_size: float = 0.5,
    batch_size: int = 2,
    layer_ratios: Sequence[float] | None = None,
    device: str | torch.device = "cpu",
    probs_keys: Sequence[str] | None = None,
    source_num_classes: int | None = None,
    num_cases: int | None = None,
    progress: bool = True,
) -> Path:
    """Sample every case and write one features file (``ccfv.features_file``) atomically.

    Args:
        network, layer_names, patch_size, step_size, batch_size, layer_ratios, device: as in
            ``sample_case``.
        cases: iterable of (case_id, image [C, D, H, W], seg [D, H, W] or [1, D, H, W]).
        out_path: the HDF5 file; written to a temporary file beside it, then renamed.
        class_ids: foreground class ids of the target dataset.
        budgets: {"total", "minimum", "n_global", "n_background"} (see ``choose_voxels``).
        model_id, architecture, target: recorded in the file.
        seed: voxels of case ``c`` are chosen with ``case_rng(seed, c)``.
        probs_keys: keys whose output probabilities are stored; default every class key and
            "background" (what LEEP needs). Keys of classes absent from a case are skipped.
        source_num_classes: K of the pretrained head; default the network's output channels (an
            explicit value must match them).
        num_cases: length of ``cases`` for the progress bar, if it has no ``len``.
        progress: show a tqdm bar over cases.

    Returns:
        ``out_path`` as a Path.
    """
    from tqdm.auto import tqdm

    budget_keys = ("total", "minimum", "n_global", "n_background")
    missing = [k for k in budget_keys if k not in budgets]
    if missing:
        raise ValueError(f"budgets misses {missing}; needs {list(budget_keys)}")
    budgets = {k: int(budgets[k]) for k in budget_keys}
    ids = _check_class_ids(class_ids)
    layer_names = [str(n) for n in layer_names]
    ratios = _resolve_ratios(layer_ratios, len(layer_names))
    if num_cases is None and hasattr(cases, "__len__"):
        num_cases = len(cases)  # type: ignore[arg-type]

    channels: list[int] | None = None
    out_channels: int | None = None
    with FeaturesWriter(out_path) as writer:
        bar = tqdm(cases, total=num_cases, desc=f"sampling {model_id} -> {target}", unit="case",
                   disable=not progress)
        for case_id, image, seg in bar:
            case_id = str(case_id)
            seg = _as_seg(seg)
            if tuple(seg.shape) != tuple(np.shape(image)[1:]):
                raise ValueError(f"case {case_id}: seg {seg.shape} and image {np.shape(image)} differ in size")
            coords = choose_voxels(seg, ids, rng=case_rng(seed, case_id), **budgets)
            wanted = list(probs_keys) if probs_keys is not None else [class_key(k) for k in ids] + [BACKGROUND_KEY]
            samples = sample_case(
                network, layer_names, image, coords, patch_size=patch_size, step_size=step_size,
                batch_size=batch_size, layer_ratios=ratios, device=device,
                probs_keys=[k for k in wanted if k in coords],
            )
            if channels is None:
                channels, out_channels = samples.channels, samples.num_output_channels
            elif samples.channels != channels or samples.num_output_channels != out_channels:
                raise RuntimeError(f"case {case_id}: layer channels changed between cases")
            writer.add_case(CaseRecord(
                case_id=case_id,
                class_ids=ids,
                absent_classes=absent_classes(coords, ids),
                coords={k: v.astype(np.int32) for k, v in coords.items()},
                labels={k: labels_at(seg, v) for k, v in coords.items()},
                features=samples.features,
                probs=samples.probs,
            ))
        if channels is None:
            raise ValueError("no case to sample")
        if source_num_classes is not None and int(source_num_classes) != out_channels:
            raise ValueError(f"source_num_classes={source_num_classes} but the network outputs {out_channels} channels")
        writer.commit({
            "model_id": str(model_id),
            "architecture": str(architecture),
            "target": str(target),
            "seed": int(seed),
            "layers": layer_names,
            "channels": channels,
            "layer_ratios": ratios,
            "budgets": budgets,
            "patch_size": [int(p) for p in patch_size],
            "step_size": float(step_size),
            "source_num_classes": int(out_channels),
            "ccfv_version": __version__,
            "batch_size": int(batch_size),
            "device": str(torch.device(device)),
            "software": _software_versions(network),
        })
    return Path(out_path)
