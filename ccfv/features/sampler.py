"""Sample decoder features at chosen voxels during sliding-window inference (paper section 2.2).

Every transferability score in ccfv is computed from voxel features taken inside a pretrained 3D
segmentation network's decoder while it runs sliding-window inference over the target dataset's
training cases. This module does that sampling without ever building a full-volume feature map:

1. ``choose_voxels`` picks the voxels first: per foreground class a count proportional to the
   class's size (the paper's class-imbalance rule), plus voxels from the whole case ("global", for
   feature variety) and from the background (for the baselines). Each array is in random order, so a
   prefix is a uniform subsample. With a window budget (``ccfv.features.budget``) every key is drawn
   inside a bounded number of windows, so that the windows run per case do not grow with the scan.
2. ``sample_case`` tiles the (padded) case exactly as nnU-Net does, assigns every chosen voxel to ONE
   window (per axis, the window whose centre is nearest to the voxel centre), runs only the windows
   that own a voxel, and inside forward hooks on the named layers gathers, at the owned voxels only,
   the value trilinear upsampling to the patch size would give. Layer ``l`` keeps the first
   ``ceil(layer_ratios[l] * n)`` voxels of every key (a lower sampling ratio near the bottleneck).
3. ``sample_dataset`` loops over cases and writes one features file (``ccfv.features.file``).

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

from .. import __version__
from .budget import choose_voxels_in_windows
from .file import BACKGROUND_KEY, GLOBAL_KEY, CaseRecord, FeaturesWriter, class_key
from .voxels import (
    absent_classes,
    as_seg,
    check_class_ids,
    choose_voxels,
    labels_at,
    layer_sample_count,
    local_input_std,
    resolve_ratios,
)
from .windows import assign_windows, gather_corners, pad_to_patch, trilinear_corners, window_starts


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
    ratios = resolve_ratios(layer_ratios, len(layer_names))
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
    window_budget: int | None = None,
) -> Path:
    """Sample every case and write one features file (``ccfv.features.file``) atomically.

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
        window_budget: None (every key drawn over the whole case) or B >= 1: each case's voxels are
            chosen inside at most B windows per key (``ccfv.features.budget.choose_voxels_in_windows``),
            which bounds the windows run per case. Recorded as the root attribute ``window_budget`` (0 for
            None); the windows run per case go to ``windows_run``.

    Returns:
        ``out_path`` as a Path.

    Raises:
        ValueError: a missing budget key, a window budget that is not None or an integer >= 1, a case
            whose seg and image differ in size (naming the case), no case at all.
    """
    from tqdm.auto import tqdm

    budget_keys = ("total", "minimum", "n_global", "n_background")
    missing = [k for k in budget_keys if k not in budgets]
    if missing:
        raise ValueError(f"budgets misses {missing}; needs {list(budget_keys)}")
    budgets = {k: int(budgets[k]) for k in budget_keys}
    if window_budget is not None and (isinstance(window_budget, bool)
                                      or not isinstance(window_budget, (int, np.integer)) or window_budget < 1):
        raise ValueError(f"window_budget must be None or an integer >= 1, got {window_budget!r}")
    ids = check_class_ids(class_ids)
    layer_names = [str(n) for n in layer_names]
    ratios = resolve_ratios(layer_ratios, len(layer_names))
    if num_cases is None and hasattr(cases, "__len__"):
        num_cases = len(cases)  # type: ignore[arg-type]

    channels: list[int] | None = None
    out_channels: int | None = None
    windows_run: dict[str, list[int]] = {}
    with FeaturesWriter(out_path) as writer:
        bar = tqdm(cases, total=num_cases, desc=f"sampling {model_id} -> {target}", unit="case",
                   disable=not progress)
        for case_id, image, seg in bar:
            case_id = str(case_id)
            seg = as_seg(seg)
            if tuple(seg.shape) != tuple(np.shape(image)[1:]):
                raise ValueError(f"case {case_id}: seg {seg.shape} and image {np.shape(image)} differ in size")
            if window_budget is None:
                coords = choose_voxels(seg, ids, rng=case_rng(seed, case_id), **budgets)
            else:
                coords = choose_voxels_in_windows(seg, ids, window_budget=int(window_budget), patch_size=patch_size,
                                                  step_size=step_size, rng=case_rng(seed, case_id), **budgets)
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
            windows_run[case_id] = [samples.windows_run, samples.windows_total]
            writer.add_case(CaseRecord(
                case_id=case_id,
                class_ids=ids,
                absent_classes=absent_classes(coords, ids),
                coords={k: v.astype(np.int32) for k, v in coords.items()},
                labels={k: labels_at(seg, v) for k, v in coords.items()},
                features=samples.features,
                probs=samples.probs,
                input_std={GLOBAL_KEY: local_input_std(image, coords[GLOBAL_KEY])} if GLOBAL_KEY in coords else {},
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
            "window_budget": int(window_budget or 0),
            "windows_run": windows_run,
        })
    return Path(out_path)
