"""One fine-tuning recipe for every bank member, whatever its architecture or format (docs/finetune.md).

The ground truth the transferability scores are compared with is a Dice after fine-tuning. For that Dice to
compare sources and not recipes, every member is fine-tuned the same way:

- **Head.** The module that maps the last features to the classes (``LoadedModel.details["head"]``:
  MeshNet's ``classifier``, hippodeep's ``convout1x``, nnU-Net's ``decoder.seg_layers``, UNETR's ``out``,
  the MONAI heads of :data:`ccfv.models.monai_networks.HEADS`) has each of its 3-d convolutions replaced
  by one of the same kernel, stride, padding and dilation with one output per target class, background
  first (:func:`replace_head`), at zero (the default, as Big Transfer, Kolesnikov et al. ECCV 2020, and the
  workflow's demo: every seed starts the same network) or at PyTorch's default initialisation drawn from
  the seed. Every other weight is kept and trained.
- **Batch norm frozen.** Normalisation layers that keep running statistics stay in eval mode while the rest
  trains (:func:`set_training_mode`): their statistics, learnt on the source's data, are used and never
  updated (their affine weights still train). hippodeep's batch norm has momentum 1: one training-mode batch
  replaces its statistics (a pilot with batch norm in training mode gave Dice 0.00).
- **Patches** of the model's own patch size, in its own input convention, ``batch_size`` per iteration,
  drawn as nnU-Net's data loader draws them (:class:`PatchSampler`): cases uniformly with replacement,
  the last third of each batch forced to contain a foreground voxel of a class present in the case (the
  patch centred on it), the rest anywhere; no data augmentation (a few hundred iterations do not profit from
  it: docs/models.md). The random numbers of iteration i come from ``(seed, i)`` alone and are drawn in the
  same order for every model: the same cases, the same foreground decisions and classes, the same relative
  positions for every member (the grids differ, so the voxels do).
- **Optimiser**: Adam (Kingma and Ba, ICLR 2015; betas 0.9, 0.999, no weight decay), learning rate 1e-3
  for the body and 1e-2 for the new head, both decayed by nnU-Net's poly schedule
  ``(1 - i / iterations) ** 0.9``, gradients clipped to norm 12 (nnU-Net's). Adam rather than nnU-Net's SGD
  (momentum 0.99, 1e-2): its per-weight step sizes do not depend on the scale of each architecture's
  gradients, which differ by orders of magnitude between a normalisation-free MeshNet, a frozen-BN hippodeep,
  instance-normed U-Nets and a transformer. 1e-3, Adam's own default, is a rate such networks train at
  from scratch (as the workflow's nnU-Net fine-tuning keeps nnU-Net's from-scratch rate): a random member
  learns within the budget and a pre-trained body adapts to the target; at 1e-4, model18cls's body hardly
  moved in 40 iterations on Task04 and the network predicted background only (docs/finetune.md). The head
  starts at zero and must become a whole classifier within the budget, hence 10 times the body's rate.
- **Loss**: Dice + cross-entropy, weights 1 and 1, as nnU-Net's ``DC_and_CE_loss`` (MONAI's
  ``DiceCELoss``: softmax, soft Dice over the foreground classes, batch Dice, smoothing 1e-5).

Resumable: a checkpoint (network, optimiser, losses, iteration, and an identity of everything the run depends
on) is written atomically every ``checkpoint_every`` iterations and at the end, read back with
:func:`ccfv.bank.checkpoints.read_checkpoint` (``weights_only``); a run whose checkpoint has the same identity
continues from it, and since iteration i's randomness depends on ``(seed, i)`` only, ends with the weights of
an uninterrupted run. Deterministic per seed on the CPU (tests/finetune/test_protocol.py).
"""
from __future__ import annotations

import hashlib
import math
import os
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .settings import HEAD_INITS, FinetuneProtocol  # noqa: F401  (re-exported: the protocol's settings)

#: The ``format`` entry of a fine-tuning checkpoint.
CHECKPOINT_FORMAT = "ccfv-finetune-1"


# ----------------------------------------------------------------------------------------------
# The network: a new head, frozen normalisation statistics
# ----------------------------------------------------------------------------------------------


def replace_head(network, head: str | None, num_classes: int, init: str = "zero", seed: int = 0,
                 where: str = "the model") -> list[str]:
    """Give ``network`` a head with ``num_classes`` outputs: every ``nn.Conv3d`` inside the module named
    ``head`` (the module itself when it is one) is replaced by a ``Conv3d`` with the same input channels,
    kernel, stride, padding (mode), dilation and bias, and ``num_classes`` outputs.

    Args:
        network: a ``torch.nn.Module``; changed in place.
        head: the head module's name in ``network.named_modules()`` (``LoadedModel.details["head"]``).
        num_classes: outputs of the new head (background and every target class).
        init: ``zero`` (weights and biases 0: a uniform softmax, the same start for every seed) or ``random``
            (PyTorch's ``Conv3d`` initialisation, Kaiming-uniform with a = sqrt 5, drawn in module order
            from ``seed`` under ``torch.random.fork_rng``: the caller's random state is untouched).
        seed: the seed of a ``random`` head.
        where: the model's name, for error messages.

    Returns:
        The dotted names of the new convolutions' parameters (their learning rate is the head's).

    Raises:
        ValueError: naming ``where``: no head named, a name that is not a module of the network, a head
            without 3-d convolutions or with grouped ones, ``num_classes`` < 2, an unknown ``init``.
    """
    import torch
    from torch import nn

    if not head:
        raise ValueError(f"{where}: its format names no head module (LoadedModel.details['head']); ccfv cannot "
                         "give it the target's classes (docs/finetune.md lists the heads it knows)")
    if num_classes < 2:
        raise ValueError(f"{where}: a head needs background and at least one class, got {num_classes} outputs")
    if init not in HEAD_INITS:
        raise ValueError(f"{where}: head init {init!r} is not one of {list(HEAD_INITS)}")
    modules = dict(network.named_modules())
    if head not in modules:
        raise ValueError(f"{where}: head {head!r} is not a module of {type(network).__name__}")
    convs = [(name, m) for name, m in modules[head].named_modules() if isinstance(m, nn.Conv3d)]
    if not convs:
        raise ValueError(f"{where}: head {head!r} ({type(modules[head]).__name__}) holds no 3-d convolution")
    replaced = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        for name, old in convs:
            if old.groups != 1:
                raise ValueError(f"{where}: head convolution {'.'.join(p for p in (head, name) if p)} is grouped "
                                 f"({old.groups} groups); ccfv replaces plain convolutions only")
            new = nn.Conv3d(old.in_channels, num_classes, old.kernel_size, stride=old.stride, padding=old.padding,
                            dilation=old.dilation, bias=old.bias is not None, padding_mode=old.padding_mode)
            new = new.to(device=old.weight.device, dtype=old.weight.dtype)
            if init == "zero":
                with torch.no_grad():
                    new.weight.zero_()
                    if new.bias is not None:
                        new.bias.zero_()
            full = ".".join(p for p in (head, name) if p)
            parent_name, _, child = full.rpartition(".")
            parent = modules[parent_name] if parent_name else network
            setattr(parent, child, new)
            replaced += [f"{full}.{p}" for p, _ in new.named_parameters()]
    return replaced


def normalisation_with_statistics(network) -> list[str]:
    """Names of the normalisation layers that keep running statistics (batch norm, and instance norm with
    ``track_running_stats``): the layers :func:`set_training_mode` keeps in eval mode."""
    from torch.nn.modules.batchnorm import _NormBase

    return [name for name, m in network.named_modules() if isinstance(m, _NormBase) and m.track_running_stats]


def set_training_mode(network) -> list[str]:
    """``network.train()`` with every layer of :func:`normalisation_with_statistics` back in eval mode (its
    running statistics are used and not updated; its affine weights still train). Returns their names."""
    network.train()
    frozen = normalisation_with_statistics(network)
    modules = dict(network.named_modules())
    for name in frozen:
        modules[name].eval()
    return frozen


def weights_digest(network) -> str:
    """SHA-256 over a network's state dict (names, dtypes, shapes and bytes): what a checkpoint's identity
    records of the starting weights."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in network.state_dict().items():
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


# ----------------------------------------------------------------------------------------------
# Patches
# ----------------------------------------------------------------------------------------------


#: At most this many voxels per class and case are kept as patch centres (nnU-Net's ``class_locations``
#: keep max(min(10000, n), ceil(n / 100)) of a class's n voxels, drawn with a fixed seed).
LOCATIONS_PER_CLASS = 10000


class PatchSampler:
    """Training patches drawn as nnU-Net's ``nnUNetDataLoader.get_bbox`` draws them (no augmentation).

    Args:
        cases: per training case, (image [C, D, H, W] float32, seg [D, H, W] integer label values) on the
            model's grid; arrays or memory maps (only patches are read after the class locations).
        class_ids: the dataset's foreground label values; head output k + 1 is ``class_ids[k]``, 0 the
            background (any other value, nnU-Net's -1 outside the non-zero region included, is background).
        patch_size: (pd, ph, pw) voxels.
        protocol: batch size and foreground oversampling.
        seed: with the iteration, the only source of randomness (:meth:`batch`).

    A patch's lower corner along an axis of size s lies in [-n // 2, s + n // 2 + n % 2 - p] with n =
    max(p - s, 0) (a patch larger than the case is centred on it, at random within the padding); a forced
    foreground patch is centred on a voxel of one class present in the case (the class chosen uniformly,
    then one of its voxels: all of them, or :data:`LOCATIONS_PER_CLASS` drawn once per case as nnU-Net
    keeps them), its corner clipped at the lower bound only, as nnU-Net does. Outside the case the image is
    0 and the target background. A case without foreground gets a random patch.

    Raises:
        ValueError: no case, no class, or an image and seg off one grid.
    """

    def __init__(self, cases: Sequence[tuple[np.ndarray, np.ndarray]], class_ids: Sequence[int],
                 patch_size: Sequence[int], protocol: FinetuneProtocol, seed: int):
        if not cases:
            raise ValueError("no training case to draw patches from")
        self.class_ids = [int(c) for c in class_ids]
        if not self.class_ids or 0 in self.class_ids:
            raise ValueError(f"class_ids must be foreground label values (> 0), got {list(class_ids)}")
        self.images, self.segs, self.locations = [], [], []
        for i, (image, seg) in enumerate(cases):
            if image.ndim != 4 or tuple(seg.shape) != tuple(image.shape[1:]):
                raise ValueError(f"training case {i}: image {image.shape} and seg {seg.shape} are not "
                                 "[C, D, H, W] and [D, H, W] on one grid")
            self.images.append(image)
            self.segs.append(seg)
            flat = np.asarray(seg).reshape(-1)
            kept = {}
            for k, value in enumerate(self.class_ids, start=1):
                voxels = np.flatnonzero(flat == value)
                if voxels.size > LOCATIONS_PER_CLASS:
                    n = max(LOCATIONS_PER_CLASS, math.ceil(voxels.size / 100))
                    voxels = np.sort(np.random.default_rng([1234, i, k]).choice(voxels, n, replace=False))
                if voxels.size:
                    kept[k] = voxels
            self.locations.append(kept)
        self.patch = tuple(int(p) for p in patch_size)
        self.protocol, self.seed = protocol, int(seed)

    @property
    def num_classes(self) -> int:
        """Head outputs: background and every class."""
        return 1 + len(self.class_ids)

    def _bounds(self, shape: Sequence[int]) -> tuple[list[int], list[int]]:
        pad = [max(p - s, 0) for p, s in zip(self.patch, shape)]
        lower = [-n // 2 for n in pad]
        upper = [s + n // 2 + n % 2 - p for s, n, p in zip(shape, pad, self.patch)]
        return lower, upper

    def corner(self, case: int, forced: bool, draws: np.ndarray) -> list[int]:
        """The patch's lower corner in ``case`` from 5 uniform draws in [0, 1): class, voxel, 3 positions."""
        shape = tuple(self.segs[case].shape)
        lower, upper = self._bounds(shape)
        present = sorted(self.locations[case])
        if forced and present:
            cls = present[min(int(draws[0] * len(present)), len(present) - 1)]
            voxels = self.locations[case][cls]
            voxel = np.unravel_index(voxels[min(int(draws[1] * len(voxels)), len(voxels) - 1)], shape)
            return [max(lo, int(v) - p // 2) for lo, v, p in zip(lower, voxel, self.patch)]
        return [lo + min(int(u * (hi - lo + 1)), hi - lo) for lo, hi, u in zip(lower, upper, draws[2:])]

    def crop(self, case: int, corner: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """(image [C, *patch] float32, target [*patch] int64 class indices) at ``corner``; zero image and
        background outside the case."""
        image, seg = self.images[case], self.segs[case]
        out_image = np.zeros((image.shape[0], *self.patch), dtype=np.float32)
        out_seg = np.zeros(self.patch, dtype=np.int64)
        source, dest = [], []
        for c, p, s in zip(corner, self.patch, seg.shape):
            lo, hi = max(c, 0), min(c + p, s)
            width = max(hi - lo, 0)
            source.append(slice(lo, lo + width))
            dest.append(slice(lo - c, lo - c + width))
        out_image[(slice(None), *dest)] = image[(slice(None), *source)]
        values = np.asarray(seg[tuple(source)])
        target = np.zeros(values.shape, dtype=np.int64)
        for k, value in enumerate(self.class_ids, start=1):
            target[values == value] = k
        out_seg[tuple(dest)] = target
        return out_image, out_seg

    def batch(self, iteration: int) -> tuple[np.ndarray, np.ndarray]:
        """Iteration ``iteration``'s batch: (images [B, C, *patch] float32, targets [B, 1, *patch] int64),
        drawn from ``numpy.random.default_rng([seed, iteration])`` only (cases first, then 5 draws per patch)."""
        rng = np.random.default_rng([self.seed, int(iteration)])
        size = self.protocol.batch_size
        cases = rng.integers(0, len(self.images), size=size)
        draws = rng.random((size, 5))
        images, targets = [], []
        for j, case in enumerate(cases):
            image, target = self.crop(int(case), self.corner(int(case), self.protocol.forced_foreground(j), draws[j]))
            images.append(image)
            targets.append(target)
        return np.stack(images), np.stack(targets)[:, None]


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------


def _save_atomically(state: dict, path: Path) -> None:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    torch.save(state, partial)
    os.replace(partial, path)


def _resumable(path: Path, identity: dict, log: Callable[[str], None]) -> dict | None:
    """The checkpoint at ``path`` when it was written by a run of the same identity; else None (after saying
    why and removing it)."""
    from ..bank.checkpoints import read_checkpoint

    if not path.is_file():
        return None
    try:
        state = read_checkpoint(path)
    except ValueError as err:
        log(f"ccfv finetune: not resuming: {err}")
        path.unlink()
        return None
    if not isinstance(state, dict) or state.get("identity") != identity:
        log(f"ccfv finetune: not resuming from {path}: it was written for other settings, data or weights")
        path.unlink()
        return None
    return state


def train(network, head_parameters: Sequence[str], sampler: PatchSampler, protocol: FinetuneProtocol, seed: int,
          checkpoint: Path, identity: dict, device, log: Callable[[str], None] | None = None,
          stop_at: int | None = None) -> dict:
    """Fine-tune ``network`` (its head already replaced) by the protocol, resuming from ``checkpoint`` when
    it holds a run of the same ``identity``.

    Args:
        network: maps [B, C, *patch] to logits [B, K, *patch]; trained in place and left in eval mode.
        head_parameters: names (``network.named_parameters()``) trained at the head's learning rate.
        sampler: the training patches (targets as class indices 0..K-1).
        protocol: the recipe.
        seed: seeds iteration i's torch random numbers (dropout, if any) with ``(seed, i)``, as the sampler's.
        checkpoint: the resume file (written atomically; kept after the run: the caller removes it).
        identity: plain data naming everything the run depends on (settings, data, starting weights); a
            checkpoint of another identity is removed and training starts over.
        device: a ``torch.device``.
        log: messages (resuming, or why not).
        stop_at: stop after this many iterations (a checkpoint is written there) with the learning-rate schedule
            still that of ``protocol.iterations``: a later call without it continues to the end exactly as an
            uninterrupted run (the pilot of a learning-rate selection). A checkpoint already past it is kept.

    Returns:
        ``losses`` (one per iteration, the resumed ones included), ``resumed_from`` (the iteration the run
        continued from, 0 for a fresh one), ``seconds`` (this process's training time), ``iterations_run``
        (the iterations this process ran), ``iteration`` (where the network now stands), ``frozen_normalisation``
        (layer names).

    Raises:
        ValueError: the network's output is not [B, K, *patch] for the sampler's K, or the loss is not finite
            (naming the iteration).
    """
    import torch
    from monai.losses import DiceCELoss

    log = log or (lambda message: None)
    checkpoint = Path(checkpoint)
    network.to(device)
    head = set(head_parameters)
    named = [(n, p) for n, p in network.named_parameters() if p.requires_grad]
    missing = head - {n for n, _ in named}
    if missing:
        raise ValueError(f"head parameters {sorted(missing)} are not trainable parameters of the network")
    groups = [{"params": [p for n, p in named if n not in head], "lr": protocol.learning_rate, "base": "body"},
              {"params": [p for n, p in named if n in head], "lr": protocol.head_learning_rate, "base": "head"}]
    groups = [g for g in groups if g["params"]]
    optimizer = torch.optim.Adam(groups, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    base_rates = [protocol.learning_rate if g["base"] == "body" else protocol.head_learning_rate for g in groups]
    loss_function = DiceCELoss(include_background=False, to_onehot_y=True, softmax=True, batch=True,
                               smooth_nr=1e-5, smooth_dr=1e-5, lambda_dice=1.0, lambda_ce=1.0)
    losses: list[float] = []
    start = 0
    state = _resumable(checkpoint, identity, log)
    if state is not None:
        network.load_state_dict(state["network"])
        optimizer.load_state_dict(state["optimizer"])
        losses = [float(v) for v in state["losses"]]
        start = int(state["iteration"])
        log(f"ccfv finetune: resuming from {checkpoint} at iteration {start} of {protocol.iterations}")
    parameters = [p for _, p in named]
    num_classes = None
    began = time.perf_counter()
    devices = [device.index or 0] if device.type == "cuda" else []
    end = protocol.iterations if stop_at is None else max(0, min(int(stop_at), protocol.iterations))
    with torch.random.fork_rng(devices=devices):
        for iteration in range(start, end):
            factor = protocol.learning_rate_factor(iteration)
            for group, rate in zip(optimizer.param_groups, base_rates):
                group["lr"] = rate * factor
            images, targets = sampler.batch(iteration)
            torch.manual_seed(int(np.random.default_rng([seed, iteration]).integers(2**63 - 1)))
            set_training_mode(network)
            logits = network(torch.from_numpy(images).to(device))
            if num_classes is None:
                num_classes = sampler.num_classes
                if logits.ndim != 5 or tuple(logits.shape[2:]) != tuple(images.shape[2:]) or \
                        logits.shape[0] != images.shape[0] or logits.shape[1] != num_classes:
                    raise ValueError(f"the network returns {tuple(logits.shape)} in training mode for patches "
                                     f"{tuple(images.shape)}; fine-tuning needs logits [B, {num_classes}, *patch]")
            loss = loss_function(logits, torch.from_numpy(targets).to(device))
            if not torch.isfinite(loss):
                raise ValueError(f"the loss is {float(loss)} at iteration {iteration}: training diverged")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(parameters, protocol.gradient_clip)
            optimizer.step()
            losses.append(float(loss.detach()))
            done = iteration + 1
            if done % protocol.checkpoint_every == 0 or done in (end, protocol.iterations):
                _save_atomically({"format": CHECKPOINT_FORMAT, "identity": identity, "iteration": done,
                                  "network": network.state_dict(), "optimizer": optimizer.state_dict(),
                                  "losses": losses}, checkpoint)
    network.eval()
    return {"losses": losses, "resumed_from": start, "seconds": time.perf_counter() - began,
            "iterations_run": max(end - start, 0), "iteration": max(start, end),
            "frozen_normalisation": normalisation_with_statistics(network)}
