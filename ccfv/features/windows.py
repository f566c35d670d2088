"""Sliding-window geometry: where the windows start (nnU-Net's tiling), padding a case to the patch, which
window owns each chosen voxel, and trilinear interpolation of a coarse decoder stage at a voxel."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

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
