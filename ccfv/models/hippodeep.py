"""hippodeep (Thyreau et al., Medical Image Analysis 43, 2018): a hippocampus CNN for T1 MR, as a ccfv model.

Source: github.com/bthyreau/hippodeep_pytorch at 310305fe5a928b1da3e98e7c1384490881690593: ``hippodeep.py``
defines ``HippoModel``; ``torchparams/hippodeep.pt`` is its state dict (plain tensors). :class:`Hippodeep`
is that architecture written again here, with upstream's parameter names, so the released file loads
strictly (every tensor present with its shape, nothing extra):

- ``conv0a_0``, ``conv0a_1``, ``conv0a``: 1x1x3, 1x3x1, 3x1x1 convolutions (16 channels), ``convf1``: 3x3x3
  (48); all *valid* (no padding), each followed by a ReLU. They take 2 voxels off every side.
- two residual stages at 48 channels: max-pool 2, batch norm (``bn1``/``bn2``), conv-ReLU-conv (3x3x3,
  padding 1), plus the pooled input, ReLU; the second ends at 1/4 resolution (the bottleneck).
- decoder: ``convlx3`` (1/4), nearest upsampling, ``convlx5`` (1/2), upsampling, ``convlx7`` (full, 16
  channels), each with a ReLU; ``convlx8`` (1x1x1) and a sigmoid give a first hippocampus map.
- gate: that map, blurred by a learnt 7x7x7 convolution (``blur``) and a sigmoid, multiplies the
  ``convf1`` features; ``conv_extract`` (leaky ReLU, 47 channels) on them, concatenated with the first map
  (48 channels), ``convmix`` (16, ReLU) and the 1x1x1 ``convout1x``: one sigmoid output, the hippocampus
  probability. Upstream runs the network once per hemisphere, on a 1 mm box in MNI space (LAS axes),
  the left hemisphere mirrored along x, so one output channel serves both.

Batch norm: upstream builds ``bn1``/``bn2`` with ``momentum=1``: in training mode a single batch *replaces*
their running statistics. ccfv runs the network in eval mode; fine-tuning must keep them frozen (eval
mode), or the first batches wipe the statistics learnt on thousands of scans (a fine-tuning pilot with
batch norm in training mode gave Dice 0.00; shared/models/README.md).

What ccfv's sampler needs, and how this module gives it:

- Output on the input's grid: upstream's input side lengths are 4k+4 and the output is 4 voxels smaller
  (2 per side). :class:`Hippodeep` pads its input by 2 voxels per side (edge replication, ``F.pad(...,
  mode="replicate")``) before the valid convolutions, so a patch with sides that are multiples of 4 maps
  to logits of the same size; every internal map then covers exactly the patch (the 1/2 and 1/4 maps by
  2x2x2 and 4x4x4 blocks of patch voxels), which is how the sampler upsamples hooked outputs. Other sides
  are a ValueError. Upstream leaves the 2-voxel rim of its box unpredicted; here the rim is predicted
  from replicated edge voxels.
- Logits, background first: the single sigmoid logit z becomes the two logits (0, z), whose softmax is
  (1 - sigmoid(z), sigmoid(z)). A head with K >= 2 output channels (after fine-tuning replaced
  ``convout1x``) is returned as it is.
- Hooked layers (parameter-free ``nn.ReLU`` modules added after upstream's functional ReLUs, so the
  state dict is upstream's): the decoder, deepest first: ``relu_lx3`` (48 channels, 1/4 resolution),
  ``relu_lx5`` (48, 1/2), ``relu_lx7`` (16, full), ``relu_mix`` (16, full; what the head reads).
- Head: ``convout1x`` (``LoadedModel.details["head"]``), a 1x1x1 convolution 16 -> 1.

Input convention (:class:`HippodeepPreprocessing`): 1 mm voxels, intensities z-scored over the image
(upstream z-scores its hemisphere box: ``d_in -= d_in.mean(); d_in /= d_in.std()``), axes as the box's:
axis 0 from lateral to medial (upstream's right-hemisphere box runs towards the Left, its mirrored
left-hemisphere box towards the Right), axis 1 towards Anterior, axis 2 towards Superior. Only the
hemisphere decides the first axis, so the preprocessing takes it as an argument (default: the one that
fits the MSD hippocampus crops, docs/real-models.md).
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import LoadedModel, ModelError, load_weights_strictly, random_copy_of

#: The source of the architecture and of the weights' conventions.
UPSTREAM = "github.com/bthyreau/hippodeep_pytorch@310305fe5a928b1da3e98e7c1384490881690593"
#: Voxels the valid convolutions take off each side (and that :class:`Hippodeep` pads back).
BORDER = 2
#: Default sliding-window size (voxels): multiples of 4 that hold a whole MSD hippocampus crop (at most
#: 43 x 59 x 47) in one window; upstream's own box is 48 x 72 x 64 (input, 4k+4).
PATCH_SIZE = (48, 64, 48)
#: Decoder layers hooked, deepest first.
HOOKED_LAYERS = ("relu_lx3", "relu_lx5", "relu_lx7", "relu_mix")
#: Largest accepted deviation of a voxel side from 1 mm (mm).
SPACING_TOLERANCE = 0.05


class Hippodeep(nn.Module):
    """hippodeep's hippocampus network (upstream ``HippoModel``, module docstring), padded to keep the grid.

    Input [B, 1, D, H, W] z-scored, D, H, W multiples of 4; output logits [B, 2, D, H, W] (background,
    hippocampus), or [B, K, D, H, W] once ``convout1x`` has K >= 2 channels. Axes: see
    :class:`HippodeepPreprocessing`.
    """

    def __init__(self):
        super().__init__()
        self.conv0a_0 = nn.Conv3d(1, 16, (1, 1, 3))
        self.conv0a_1 = nn.Conv3d(16, 16, (1, 3, 1))
        self.conv0a = nn.Conv3d(16, 16, (3, 1, 1))
        self.convf1 = nn.Conv3d(16, 48, 3)
        self.maxpool1 = nn.MaxPool3d(2)
        self.bn1 = nn.BatchNorm3d(48, momentum=1)
        self.convout0 = nn.Conv3d(48, 48, 3, padding=1)
        self.convout1 = nn.Conv3d(48, 48, 3, padding=1)
        self.maxpool2 = nn.MaxPool3d(2)
        self.bn2 = nn.BatchNorm3d(48, momentum=1)
        self.convout2p = nn.Conv3d(48, 48, 3, padding=1)
        self.convout2 = nn.Conv3d(48, 48, 3, padding=1)
        self.convlx3 = nn.Conv3d(48, 48, 3, padding=1)
        self.convlx5 = nn.Conv3d(48, 48, 3, padding=1)
        self.convlx7 = nn.Conv3d(48, 16, 3, padding=1)
        self.convlx8 = nn.Conv3d(16, 1, 1)
        self.blur = nn.Conv3d(1, 1, 7, padding=3)
        self.conv_extract = nn.Conv3d(48, 47, 3, padding=1)
        self.convmix = nn.Conv3d(48, 16, 3, padding=1)
        self.convout1x = nn.Conv3d(16, 1, 1)
        # Parameter-free activations of the hooked layers (one module per use, so a hook fires once).
        self.relu_lx3 = nn.ReLU()
        self.relu_lx5 = nn.ReLU()
        self.relu_lx7 = nn.ReLU()
        self.relu_mix = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sizes = tuple(x.shape[2:])
        if len(sizes) != 3 or any(s % 4 for s in sizes):
            raise ValueError(f"hippodeep needs [B, 1, D, H, W] with D, H, W multiples of 4 (its input is 4k+4 "
                             f"once padded by {BORDER} per side); got {tuple(x.shape)}")
        x = F.pad(x, (BORDER,) * 6, mode="replicate")
        x = F.relu(self.conv0a_0(x))
        x = F.relu(self.conv0a_1(x))
        x = F.relu(self.conv0a(x))
        features = F.relu(self.convf1(x))                       # [B, 48, D, H, W]
        pooled = self.maxpool1(features)                        # 1/2
        x = F.relu(self.convout0(self.bn1(pooled)))
        x = F.relu(self.convout1(x) + pooled)
        pooled = self.maxpool2(x)                               # 1/4
        x = F.relu(self.convout2p(self.bn2(pooled)))
        x = F.relu(self.convout2(x) + pooled)
        x = self.relu_lx3(self.convlx3(x))                      # 1/4
        x = self.relu_lx5(self.convlx5(F.interpolate(x, scale_factor=2, mode="nearest")))  # 1/2
        x = self.relu_lx7(self.convlx7(F.interpolate(x, scale_factor=2, mode="nearest")))  # full
        first = torch.sigmoid(self.convlx8(x))
        gated = torch.sigmoid(self.blur(first)) * features
        x = torch.cat([first, F.leaky_relu(self.conv_extract(gated))], dim=1)
        x = self.relu_mix(self.convmix(x))
        logits = self.convout1x(x)
        if logits.shape[1] == 1:  # one sigmoid logit z -> (0, z): softmax gives (1 - sigmoid z, sigmoid z)
            logits = torch.cat([torch.zeros_like(logits), logits], dim=1)
        return logits


def read_state_dict(path: Path) -> dict:
    """The tensors of a state-dict file, read with ``torch.load(weights_only=True)`` (tensors and plain
    containers only; nothing in the file runs).

    Raises:
        ModelError: naming the file: missing, not a torch file, or not a mapping of names to tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: missing")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle.UnpicklingError, RuntimeError, zipfile errors: all mean "not readable"
        raise ModelError(f"{path}: not a readable torch state dict ({str(err).splitlines()[0][:200]})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"{path}: not a state dict (a mapping of names to tensors)")
    return state


def state_dict_keys() -> frozenset[str]:
    """The names of every tensor in hippodeep's state dict (what :func:`is_hippodeep` compares with)."""
    return frozenset(Hippodeep().state_dict())


#: Largest file :func:`is_hippodeep` reads whole (hippodeep.pt is 2 MB, in torch's legacy format, which
#: cannot be memory-mapped); larger files are memory-mapped when torch's zip format allows it.
DETECTION_READ_LIMIT = 64 * 2**20


def is_hippodeep(path: Path) -> bool:
    """True for a ``.pt``/``.pth`` file holding exactly hippodeep's state-dict names (the shapes are then
    checked by :func:`load`). nnU-Net's checkpoint names (``checkpoint_final.pth``, ``checkpoint_best.pth``)
    are never read here; a file is read with ``torch.load(weights_only=True)``, memory-mapped when its format
    allows, else whole up to :data:`DETECTION_READ_LIMIT` bytes."""
    from .nnunet import CHECKPOINT_NAMES

    path = Path(path)
    if not path.is_file() or path.suffix not in (".pt", ".pth") or path.name in CHECKPOINT_NAMES:
        return False
    state = None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # the legacy (non-zip) format cannot be memory-mapped; a non-torch file fails either way
        if path.stat().st_size <= DETECTION_READ_LIMIT:
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
            except Exception:
                return False
    return isinstance(state, dict) and set(state) == state_dict_keys()


class HippodeepPreprocessing:
    """hippodeep's input convention for one labelled case (:data:`ccfv.models.base.CasePreprocessing`).

    1. Refuses voxels that are not 1 mm (within :data:`SPACING_TOLERANCE`; ccfv does not resample).
    2. Reorders the voxel axes to ``axes`` (nibabel axis codes) with nibabel's orientation tools (flips and
       permutations of the affine's axes, no interpolation); the label gets the image's transform. Upstream
       feeds a right hippocampus as ``("L", "A", "S")`` and a left one as ``("R", "A", "S")`` (axis 0 from
       lateral to medial). Default ``("R", "A", "S")``: with it hippodeep reaches a mean zero-shot Dice of
       0.81 on the first 20 MSD hippocampus crops, against 0.11 with ``("L", "A", "S")``
       (benchmarks/bench_real_models.py, docs/real-models.md): the crops, whose affines are the identity
       (RAS), present the hippocampus as upstream presents a left one.
    3. z-scores the intensities over the whole image (mean 0, standard deviation 1, float32).

    Returns (image float32 [1, D, H, W], label int16 [D, H, W]).

    Raises:
        ValueError: naming the file: more than one channel, not 3-d, not 1 mm, a label off the image's
            grid, a constant image.
    """

    def __init__(self, axes: Sequence[str] = ("R", "A", "S")):
        axes = tuple(str(a) for a in axes)
        if len(axes) != 3 or axes[0] not in ("L", "R") or axes[1:] != ("A", "S"):
            raise ValueError(f"axes must be (L or R, A, S), as upstream's box is, got {axes}")
        self.axes = axes

    @property
    def key(self) -> str:
        return f"hippodeep-{''.join(self.axes)}-zscore"

    def __call__(self, images: list[Path], label: Path) -> tuple[np.ndarray, np.ndarray]:
        from .meshnet import reorient_case

        image, seg = reorient_case(images, label, self.axes)
        std = float(image.std())
        if not std > 0:
            raise ValueError(f"{images[0]}: constant intensities; nothing to z-score")
        return ((image - float(image.mean())) / std).astype(np.float32)[None], seg

    def restore(self, prediction: np.ndarray, images: list[Path], label: Path) -> np.ndarray:
        """A label map on the ``axes`` grid back in the image file's voxel order (the inverse of step 2):
        :data:`ccfv.models.base.CaseRestoration`."""
        from .meshnet import restore_orientation

        return restore_orientation(prediction, images[0], self.axes)


def load(name: str, path: Path, *, patch_size: Sequence[int] = PATCH_SIZE,
         axes: Sequence[str] = ("R", "A", "S")) -> LoadedModel:
    """hippodeep's weights file (upstream ``torchparams/hippodeep.pt``) as :class:`LoadedModel` (kind
    ``"hippodeep"``).

    Args:
        name: the model's name in the ranking.
        path: the state-dict file; read with ``torch.load(weights_only=True)``, nothing downloaded.
        patch_size: sliding-window size, 3 multiples of 4 (voxels, in ``axes`` order).
        axes: the orientation the case is brought to (:class:`HippodeepPreprocessing`).

    Returns:
        ``network``: :class:`Hippodeep` in eval mode, [B, 1, *patch] -> logits [B, 2, *patch] (background,
        hippocampus); ``layers``: :data:`HOOKED_LAYERS`; ``details``: ``head`` (``"convout1x"``),
        ``frozen_batch_norm`` (``["bn1", "bn2"]``, momentum 1), ``upstream``.

    Raises:
        ModelError: naming the file: missing, unreadable, a tensor missing, extra or mis-shaped; a patch
            size that is not 3 multiples of 4.
    """
    from ..data.checksums import sha256_file

    path = Path(path)
    patch = [int(p) for p in patch_size]
    if len(patch) != 3 or min(patch) < 4 or any(p % 4 for p in patch):
        raise ModelError(f"{name}: hippodeep's patch_size must be 3 multiples of 4, got {list(patch_size)}")
    network = Hippodeep()
    load_weights_strictly(network, read_state_dict(path), path, f"hippodeep's network ({UPSTREAM})")
    network.eval()
    preprocessing = HippodeepPreprocessing(axes)
    return LoadedModel(
        name=name, path=path, kind="hippodeep", architecture="Hippodeep", network=network,
        layers=list(HOOKED_LAYERS), patch_size=patch, num_input_channels=1, checkpoint=path,
        sha256=sha256_file(path), preprocess=preprocessing, preprocess_key=preprocessing.key, modalities=["T1"],
        stages=[("relu_lx3", 48, (4, 4, 4)), ("relu_lx5", 48, (2, 2, 2)), ("relu_lx7", 16, (1, 1, 1)),
                ("relu_mix", 16, (1, 1, 1))],
        details={"head": "convout1x", "num_classes": 2, "classes": ["background", "hippocampus"],
                 "frozen_batch_norm": ["bn1", "bn2"], "batch_norm_momentum": 1.0, "input_axes": "".join(axes),
                 "upstream": UPSTREAM},
    )


def hippodeep_model(weights: Path, name: str = "hippodeep", *, patch_size: Sequence[int] = PATCH_SIZE,
                    axes: Sequence[str] = ("R", "A", "S")):
    """hippodeep as a :class:`ccfv.TorchModel`, for :func:`ccfv.rank_models` from Python.

    Same network, hooks, preprocessing and patch as :func:`load` (whose errors it raises), wrapped so that
    it can be ranked next to other in-memory models: ``rank_models(data, [hippodeep_model(path), ...])``.
    """
    from .torch_module import TorchModel

    return TorchModel.from_loaded(load(name, weights, patch_size=patch_size, axes=axes))


def random_copy(model: LoadedModel, seed: int, name: str | None = None) -> LoadedModel:
    """A randomly initialised copy of a loaded hippodeep: same architecture, hooks, preprocessing and patch.

    Initialisation: PyTorch's defaults, as upstream (which ships no training code) leaves them: every
    module's ``reset_parameters()`` (Conv3d: Kaiming-uniform weights with a = sqrt(5), biases uniform in
    +-1/sqrt(fan_in); BatchNorm3d: weight 1, bias 0, running mean 0, variance 1), run in module order under
    ``torch.random.fork_rng`` seeded with ``seed``, so the copy depends on ``seed`` only and the caller's
    random state is untouched.

    Raises:
        ModelError: ``model`` is not hippodeep (kind ``"hippodeep"``).
    """
    if model.kind != "hippodeep":
        raise ModelError(f"{model.name}: random_copy of a {model.kind!r} model; this one copies hippodeep")
    network = copy.deepcopy(model.network)  # a replaced head keeps its shape
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        for module in network.modules():
            if module is not network and hasattr(module, "reset_parameters"):
                module.reset_parameters()
    network.eval()
    init = "PyTorch's default reset_parameters() of every module (upstream ships no initialisation)"
    return random_copy_of(model, network, seed, init, name)
