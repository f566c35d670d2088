"""brainchop's MeshNet models: a TensorFlow.js layers model folder (``model.json`` + binary weights).

Format (TensorFlow.js "layers-model", as brainchop ships its models: github.com/neuroneural/brainchop at
4c87885f3a2a8835e260d521dcec922b58d91d41, ``public/models/``):

- ``model.json``: ``modelTopology`` (a Keras model config: ``model_config.config.layers``, each with
  ``class_name``, ``config`` and, in a functional model, ``inbound_nodes``) and ``weightsManifest`` (groups
  of ``paths``, the binary files of the group in order, and ``weights``: ``name``, ``shape``, ``dtype`` in
  the order of the bytes).
- the binary files: little-endian float32, the group's tensors concatenated in manifest order. A Conv3D
  kernel is stored in TensorFlow's layout (D, H, W, in, out); torch's is (out, in, D, H, W).

A MeshNet (Fedorov et al., IJCNN 2017) is a plain chain: ``InputLayer``, then ``Conv3D`` layers (3x3x3,
stride 1, padding "same", growing then shrinking dilation) each followed by an ``Activation``, then a 1x1x1
``Conv3D`` classifier; no pooling, no normalisation, every layer at full resolution. This module builds the
same chain in torch from the topology, and refuses anything else by name (another layer type, a stride,
a branch, a quantised or non-float32 weight). Activations are TensorFlow's: ``relu``; ``elu`` (alpha 1);
``gelu``, which TensorFlow.js computes exactly, ``x * (1 + erf(x / sqrt 2)) / 2`` (torch's
``GELU(approximate="none")``); ``gelu_new``, the tanh approximation; ``linear``, none.

Network (:class:`MeshNet`): ``blocks.<i>`` is the i-th 3x3x3 convolution with its activation(s)
(``nn.Sequential(conv, act)``), ``classifier`` the final 1x1x1 convolution, the **head** that fine-tuning
replaces (``LoadedModel.details["head"]``). Input [B, 1, D, H, W] maps to logits [B, K, D, H, W]. A softmax
after the classifier (a Keras ``Activation("softmax")``) is left out: ccfv wants logits.

Hooked layers: every block is at full resolution, so "depth" is the position in the chain. MeshNets have no
bottleneck; their dilations grow to the widest context in the middle (1, 2, 4, 8, 16, 8, 4, 2, 1 in
model18cls) and the second half narrows it back, like a decoder. Hooked, in this order: the middle block
(``(n - 1) // 2`` of n blocks: the widest context, the bottleneck's counterpart), the block three quarters
in (``3 (n - 1) // 4``) and the last block (``n - 1``, the features the classifier reads). For model18cls:
``blocks.4``, ``blocks.6``, ``blocks.8``; for mindgrab (25 blocks): ``blocks.12``, ``blocks.18``,
``blocks.24``. The first half (intensity and edge filters) is not hooked, as CC-FV samples decoder
features.

Input convention (:class:`MeshNetPreprocessing`): brainchop runs its models on a T1 conformed as FreeSurfer's
``mri_convert --conform`` does: 1 mm isotropic, voxel axes in LIA order (array axis 0 runs towards the
subject's Left, 1 towards Inferior, 2 towards Anterior), 256^3, uint8 with intensities scaled so that 0 is
the image minimum and 255 the 99.9th percentile of the non-zero voxels (brainchop-cli's ``conform``,
after FastSurfer), then min-max scaled to [0, 1] in the web app (``minMaxNormalizeVolumeData``). The web
app's tensor axes are the NIfTI voxel axes (i, j, k): it stacks the slices as [k, j, i] and transposes
(``enableTranspose: true`` for every model).

Receptive field: 1 + 2 * sum(dilations) voxels (93 for model18cls and the other 9-block models, 91 for
model21_104class, 311 for mindgrab). A voxel's prediction depends on anatomy up to 46 voxels away in every direction;
within a small crop (the MSD hippocampus crops are about 35 x 50 x 35) most of that is zero padding
(the sampler pads a crop to the patch with zeros, and "same" convolutions pad with zeros beyond), which the
models saw only outside the head. Their zero-shot output on such crops is therefore much worse than on a
whole head (docs/real-models.md has the figures), while their features can still transfer.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn

from .base import LoadedModel, ModelError, random_copy_of

MODEL_JSON = "model.json"
#: Activations TensorFlow names that this module builds (see the module docstring for their formulas).
ACTIVATIONS = ("relu", "elu", "gelu", "gelu_new", "linear")
#: Voxel axis order brainchop's models expect (FreeSurfer's conformed space), as nibabel axis codes.
INPUT_AXES = ("L", "I", "A")
#: Default sliding-window size (voxels, in LIA order): a whole MSD hippocampus crop (at most 43 x 59 x 47)
#: fits one window (the crops are RAS: 43 x 59 x 47 becomes 43 x 47 x 59 in LIA order); 0.77 s per window
#: of model18cls on one CPU thread (docs/real-models.md).
PATCH_SIZE = (48, 48, 64)
#: Intensity percentiles mapped to 0 and 1 (docs: why these).
PERCENTILES = (0.0, 99.9)
#: Largest accepted deviation of a voxel side from 1 mm (mm).
SPACING_TOLERANCE = 0.05
#: The source of the format's conventions.
UPSTREAM = "github.com/neuroneural/brainchop@4c87885f3a2a8835e260d521dcec922b58d91d41"


@dataclass(frozen=True)
class ConvSpec:
    """One Conv3D layer of the topology: its Keras name, shape and what follows it."""

    name: str
    in_channels: int
    filters: int
    kernel_size: tuple[int, int, int]
    dilation: tuple[int, int, int]
    use_bias: bool
    activations: tuple[str, ...]  # the layer's own activation, then those of the Activation layers after it


def is_meshnet(path: Path) -> bool:
    """True for a folder whose ``model.json`` is a TensorFlow.js layers model (has ``modelTopology`` and
    ``weightsManifest``); a ccfv bank model's ``model.json`` (a model card) has neither. Reads only the JSON."""
    path = Path(path)
    if not (path.is_dir() and (path / MODEL_JSON).is_file()):
        return False
    try:
        value = json.loads((path / MODEL_JSON).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(value, dict) and "modelTopology" in value and "weightsManifest" in value


def _layers(model_json: dict, where: Path) -> list[dict]:
    """The layer list of a Keras model config (functional or sequential, with or without ``model_config``)."""
    topology = model_json.get("modelTopology")
    if not isinstance(topology, dict):
        raise ModelError(f"{where}: 'modelTopology' is not a JSON object")
    config = topology.get("model_config", topology)
    if not isinstance(config, dict) or "config" not in config:
        raise ModelError(f"{where}: 'modelTopology' has no model config ('model_config' with 'config')")
    inner = config["config"]
    layers = inner.get("layers") if isinstance(inner, dict) else inner
    if not isinstance(layers, list) or not layers or not all(isinstance(x, dict) for x in layers):
        raise ModelError(f"{where}: the model config has no list of layers")
    return layers


def _inbound(layer: dict) -> list[str] | None:
    """Names of the layers feeding ``layer`` (None in a sequential model, which has no ``inbound_nodes``)."""
    nodes = layer.get("inbound_nodes")
    if nodes is None:
        return None
    names = []
    for node in nodes:
        for entry in node if isinstance(node, list) else node.get("args", []) if isinstance(node, dict) else []:
            if isinstance(entry, list) and entry:  # Keras 2: [layer name, node index, tensor index, kwargs]
                names.append(str(entry[0]))
            elif isinstance(entry, dict):  # Keras 3: a __keras_tensor__ with its keras_history
                history = entry.get("config", {}).get("keras_history")
                if isinstance(history, list) and history:
                    names.append(str(history[0]))
    return names


def _triple(value, key: str, layer: str, where: Path) -> tuple[int, int, int]:
    if isinstance(value, int):
        value = [value] * 3
    if not (isinstance(value, list) and len(value) == 3 and all(isinstance(v, int) and v >= 1 for v in value)):
        raise ModelError(f"{where}: layer {layer!r}: {key} {value!r} is not 3 positive integers")
    return tuple(value)


def parse_topology(model_json: dict, where: Path) -> tuple[int, list[ConvSpec]]:
    """(input channels, the Conv3D layers in order) of a MeshNet's ``model.json``.

    Accepts a plain chain ``InputLayer -> (Conv3D -> Activation*)+``, each layer fed by the previous one only.
    The last Conv3D is the classifier; a trailing ``softmax`` is dropped (logits wanted), any other
    activation after it is refused.

    Raises:
        ModelError: naming ``where`` and the layer: an unknown layer type or activation, a stride other than
            1, padding other than "same" (except for 1x1x1 kernels), ``channels_first``, grouped
            convolutions, a branch or a chain that does not start at the input.
    """
    layers = _layers(model_json, where)
    first = layers[0]
    if first.get("class_name") != "InputLayer":
        raise ModelError(f"{where}: the first layer is {first.get('class_name')!r}, expected an InputLayer")
    shape = first.get("config", {}).get("batch_input_shape", first.get("config", {}).get("batch_shape"))
    if not (isinstance(shape, list) and len(shape) == 5 and isinstance(shape[-1], int)):
        raise ModelError(f"{where}: InputLayer has no 5-d channels-last batch_input_shape (got {shape!r})")
    in_channels = channels = shape[-1]
    previous = first.get("name", first.get("config", {}).get("name"))
    convs: list[ConvSpec] = []
    pending: dict | None = None

    def close():
        if pending is not None:
            convs.append(ConvSpec(**pending))

    for layer in layers[1:]:
        kind = layer.get("class_name")
        config = layer.get("config") if isinstance(layer.get("config"), dict) else {}
        name = str(layer.get("name", config.get("name")))
        inbound = _inbound(layer)
        if inbound is not None and inbound != [previous]:
            raise ModelError(f"{where}: layer {name!r} is fed by {inbound}, not by the layer before it "
                             f"({previous!r}); only a plain chain of layers (a MeshNet) is supported")
        if kind == "Conv3D":
            close()
            kernel = _triple(config.get("kernel_size"), "kernel_size", name, where)
            strides = _triple(config.get("strides", 1), "strides", name, where)
            dilation = _triple(config.get("dilation_rate", 1), "dilation_rate", name, where)
            padding = config.get("padding", "valid")
            if strides != (1, 1, 1):
                raise ModelError(f"{where}: layer {name!r} has strides {list(strides)}; a MeshNet has none")
            if padding != "same" and kernel != (1, 1, 1):
                raise ModelError(f"{where}: layer {name!r} has padding {padding!r}; only 'same' keeps the "
                                 "output on the input's grid")
            if config.get("data_format", "channels_last") != "channels_last":
                raise ModelError(f"{where}: layer {name!r} is {config.get('data_format')!r}; TensorFlow.js "
                                 "models are channels_last")
            if config.get("groups", 1) != 1:
                raise ModelError(f"{where}: layer {name!r} is a grouped convolution (groups "
                                 f"{config.get('groups')}), not supported")
            filters = config.get("filters")
            if not isinstance(filters, int) or filters < 1:
                raise ModelError(f"{where}: layer {name!r} has no positive 'filters' ({filters!r})")
            activation = config.get("activation", "linear")
            pending = {"name": name, "in_channels": channels, "filters": filters, "kernel_size": kernel,
                       "dilation": dilation, "use_bias": bool(config.get("use_bias", True)),
                       "activations": (activation,)}
            channels = filters
        elif kind == "Activation":
            if pending is None:
                raise ModelError(f"{where}: activation {name!r} comes before any Conv3D")
            pending["activations"] += (config.get("activation"),)
        else:
            raise ModelError(f"{where}: layer {name!r} is a {kind!r}; a MeshNet has only InputLayer, Conv3D "
                             "and Activation layers")
        previous = name
    close()
    if not convs:
        raise ModelError(f"{where}: no Conv3D layer")
    last = convs[-1]
    acts = [a for a in last.activations if a != "linear"]
    if acts and acts != ["softmax"]:
        raise ModelError(f"{where}: the classifier {last.name!r} ends in {acts}; expected logits (linear) or "
                         "a softmax")
    convs[-1] = ConvSpec(**{**last.__dict__, "activations": tuple(a for a in last.activations if a != "softmax")})
    for conv in convs:
        unknown = [a for a in conv.activations if a not in ACTIVATIONS]
        if unknown:
            raise ModelError(f"{where}: layer {conv.name!r}: activation {unknown[0]!r} is not one of "
                             f"{list(ACTIVATIONS)}")
    outputs = _output_names(model_json)
    if outputs is not None and outputs != [previous]:
        raise ModelError(f"{where}: the model's output is {outputs}, not the last layer {previous!r}")
    return in_channels, convs


def _output_names(model_json: dict) -> list[str] | None:
    config = model_json["modelTopology"].get("model_config", model_json["modelTopology"])["config"]
    outputs = config.get("output_layers") if isinstance(config, dict) else None
    return None if outputs is None else [str(o[0]) for o in outputs if isinstance(o, list) and o]


def expected_weights(convs: Sequence[ConvSpec]) -> dict[str, tuple[int, ...]]:
    """{manifest name: TensorFlow shape} the topology needs: ``<layer>/kernel`` (D, H, W, in, out) and, with
    ``use_bias``, ``<layer>/bias`` (out,)."""
    out: dict[str, tuple[int, ...]] = {}
    for conv in convs:
        out[f"{conv.name}/kernel"] = (*conv.kernel_size, conv.in_channels, conv.filters)
        if conv.use_bias:
            out[f"{conv.name}/bias"] = (conv.filters,)
    return out


def read_weights(folder: Path, model_json: dict, needed: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """The manifest's tensors as float32 arrays in TensorFlow layout, read strictly.

    Every manifest group's files (``paths``, relative to ``folder``) are concatenated in order and must hold
    exactly the bytes of the group's weights (4 per float32 element). The manifest must name exactly the
    tensors of ``needed``, each with its shape.

    Raises:
        ModelError: naming the file: a missing binary file, a size that does not match the manifest, a dtype
            other than float32 or a quantised weight, a tensor missing from, extra in or mis-shaped in the
            manifest.
    """
    where = folder / MODEL_JSON
    manifest = model_json.get("weightsManifest")
    if not isinstance(manifest, list) or not all(isinstance(g, dict) for g in manifest):
        raise ModelError(f"{where}: 'weightsManifest' is not a list of groups")
    arrays: dict[str, np.ndarray] = {}
    for group in manifest:
        paths, entries = group.get("paths"), group.get("weights")
        if not isinstance(paths, list) or not paths or not isinstance(entries, list):
            raise ModelError(f"{where}: a weightsManifest group has no 'paths' or 'weights'")
        files = [folder / str(p) for p in paths]
        for file in files:
            if not file.is_file():
                raise ModelError(f"{file}: missing (named by {where}'s weightsManifest)")
        sizes = []
        for entry in entries:
            if not isinstance(entry, dict):
                raise ModelError(f"{where}: a weightsManifest entry is not an object ({entry!r:.80})")
            name, shape, dtype = entry.get("name"), entry.get("shape"), entry.get("dtype", "float32")
            if "quantization" in entry:
                raise ModelError(f"{where}: weight {name!r} is quantised ({entry['quantization']}); only float32 "
                                 "weights are supported")
            if dtype != "float32":
                raise ModelError(f"{where}: weight {name!r} is {dtype}; only float32 weights are supported")
            if not (isinstance(shape, list) and all(isinstance(s, int) and s >= 0 for s in shape)):
                raise ModelError(f"{where}: weight {name!r} has no valid shape ({shape!r})")
            if name in arrays or name in [n for n, _ in sizes]:
                raise ModelError(f"{where}: weight {name!r} is listed twice in the weightsManifest")
            sizes.append((name, tuple(shape)))
        data = b"".join(f.read_bytes() for f in files)
        want = 4 * sum(math.prod(s) for _, s in sizes)
        shown = files[0] if len(files) == 1 else f"{files[0]} (+{len(files) - 1} more)"
        if len(data) != want:
            raise ModelError(f"{shown}: {len(data)} bytes, but the weightsManifest of {where} lists "
                             f"{want} bytes of float32 weights ({len(sizes)} tensors)")
        flat = np.frombuffer(data, dtype="<f4")
        offset = 0
        for name, shape in sizes:
            count = math.prod(shape)
            arrays[name] = flat[offset:offset + count].reshape(shape)
            offset += count
    missing = [n for n in needed if n not in arrays]
    extra = [n for n in arrays if n not in needed]
    wrong = [f"{n} {list(arrays[n].shape)} (topology needs {list(s)})" for n, s in needed.items()
             if n in arrays and tuple(arrays[n].shape) != s]
    if missing or extra or wrong:
        parts = ([f"missing {missing}"] if missing else []) + ([f"unexpected {extra}"] if extra else []) + \
                ([f"mis-shaped {wrong}"] if wrong else [])
        raise ModelError(f"{where}: the weightsManifest does not fit the topology: {'; '.join(parts)}")
    return arrays


def _activation(name: str) -> nn.Module:
    return {"relu": nn.ReLU, "elu": nn.ELU, "gelu": nn.GELU,
            "gelu_new": lambda: nn.GELU(approximate="tanh"), "linear": nn.Identity}[name]()


class MeshNet(nn.Module):
    """A MeshNet built from parsed Conv3D layers: ``blocks`` (one ``Sequential(conv, activation...)`` per
    hidden Conv3D, torch kernel layout (out, in, D, H, W), padding "same" as TensorFlow pads it) and the
    1x1x1 ``classifier``. [B, C_in, D, H, W] -> logits [B, K, D, H, W], every layer on the input's grid.
    Built at torch's default initialisation; :func:`load` fills in the weights."""

    def __init__(self, in_channels: int, convs: Sequence[ConvSpec]):
        super().__init__()
        if len(convs) < 2:
            raise ValueError("a MeshNet needs hidden Conv3D layers and a classifier")
        blocks = []
        for conv in convs[:-1]:
            layer = nn.Conv3d(conv.in_channels, conv.filters, conv.kernel_size, padding="same",
                              dilation=conv.dilation, bias=conv.use_bias)
            blocks.append(nn.Sequential(layer, *[_activation(a) for a in conv.activations if a != "linear"]))
        self.blocks = nn.Sequential(*blocks)
        head = convs[-1]
        self.classifier = nn.Conv3d(head.in_channels, head.filters, head.kernel_size, padding="same",
                                    dilation=head.dilation, bias=head.use_bias)
        self.in_channels = in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Channels-last activations: on a CPU, torch's dilated 3-d convolutions run 4-7 times faster on them
        # than on contiguous tensors (docs/real-models.md); the values are the same.
        for block in self.blocks:
            x = block(x.contiguous(memory_format=torch.channels_last_3d))
        return self.classifier(x.contiguous(memory_format=torch.channels_last_3d))


def hooked_blocks(n_blocks: int) -> list[str]:
    """The hooked block names of a MeshNet with ``n_blocks`` hidden blocks, in hook order (module docstring):
    the middle block, the block three quarters in, the last block (duplicates dropped)."""
    if n_blocks < 1:
        raise ValueError("a MeshNet without hidden blocks has nothing to hook")
    picks = [(n_blocks - 1) // 2, 3 * (n_blocks - 1) // 4, n_blocks - 1]
    return [f"blocks.{i}" for i in dict.fromkeys(picks)]


def receptive_field(convs: Sequence[ConvSpec]) -> list[int]:
    """Voxels per axis that one output voxel sees: 1 + sum over layers of (kernel - 1) * dilation."""
    return [1 + sum((c.kernel_size[a] - 1) * c.dilation[a] for c in convs) for a in range(3)]


class MeshNetPreprocessing:
    """brainchop's input convention for one labelled case (:data:`ccfv.models.base.CasePreprocessing`).

    1. Refuses voxels that are not 1 mm (within :data:`SPACING_TOLERANCE`): brainchop conforms to 1 mm and
       ccfv does not resample (resample the data first, e.g. with FreeSurfer's ``mri_convert --conform`` or
       ``nibabel.processing.conform``).
    2. Reorders the voxel axes to LIA with nibabel's orientation tools (``io_orientation`` of the image's
       affine, ``ornt_transform`` to ``("L", "I", "A")``, ``apply_orientation``): axis flips and
       permutations only, no interpolation. The label volume gets the image's transform (it must be on the
       image's grid: same shape, affine within 1e-3 mm).
    3. Scales intensities to [0, 1]: ``clip((x - lo) / (hi - lo), 0, 1)``, ``lo`` the ``percentiles[0]``-th
       percentile of all voxels, ``hi`` the ``percentiles[1]``-th percentile of the non-zero voxels; by
       default (:data:`PERCENTILES`) the minimum and the 99.9th percentile. Why these: it is what brainchop's
       own pipeline does. Its conform step (brainchop-cli ``getscale``, after FastSurfer and FreeSurfer's
       ``mri_convert --conform``) maps the image minimum to 0 and the 99.9th percentile of the non-zero
       voxels to 255, clipping above; the web app then min-max scales 0..255 to 0..1. The 99.9th
       percentile, rather than the maximum, keeps a few hot voxels from darkening the whole case. On the
       reference head (``t1_crop.nii.gz``, already conformed) the choice hardly matters: a crop of the right
       hippocampus with 24 voxels around it, scaled with 0/99.9, 0.5/99.5, 2/98 or by 1/255, gives Dice
       0.875 to 0.887 against model18cls's labels with the whole head around (docs/real-models.md).

    Returns (image float32 [1, D, H, W] in [0, 1], label int16 [D, H, W]), both with axes (L, I, A).

    Raises:
        ValueError: naming the file: more than one channel, not 3-d, not 1 mm, label grid differs from the
            image's, constant image.
    """

    def __init__(self, percentiles: tuple[float, float] = PERCENTILES):
        lo, hi = (float(p) for p in percentiles)
        if not 0.0 <= lo < hi <= 100.0:
            raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got {percentiles}")
        self.percentiles = (lo, hi)

    @property
    def key(self) -> str:
        """What the preprocessed arrays depend on (models sharing it share one preprocessed dataset)."""
        return f"meshnet-LIA-p{self.percentiles[0]:g}-{self.percentiles[1]:g}"

    def __call__(self, images: list[Path], label: Path) -> tuple[np.ndarray, np.ndarray]:
        image, seg = reorient_case(images, label, INPUT_AXES)
        return scale_to_unit(image, self.percentiles, images[0])[None], seg

    def restore(self, prediction: np.ndarray, images: list[Path], label: Path) -> np.ndarray:
        """A label map on the LIA grid back in the image file's voxel order (the inverse of step 2; steps 1 and
        3 do not move voxels): :data:`ccfv.models.base.CaseRestoration`."""
        return restore_orientation(prediction, images[0], INPUT_AXES)


def reorient_case(images: list[Path], label: Path, axes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(image float32 [D, H, W], label int16 [D, H, W]) of a one-channel 1 mm case, voxel axes reordered to
    ``axes`` (nibabel axis codes such as ``("L", "I", "A")``) by flips and permutations only; the label gets
    the image's transform. Errors as :class:`MeshNetPreprocessing`."""
    import nibabel as nib
    from nibabel import orientations

    if len(images) != 1:
        raise ValueError(f"{images}: one T1 image per case expected, got {len(images)} channels")
    img, lab = nib.load(str(images[0])), nib.load(str(label))
    if len(img.shape) != 3:
        raise ValueError(f"{images[0]}: a 3-d image expected, got shape {img.shape}")
    zooms = np.asarray(img.header.get_zooms()[:3], dtype=float)
    if np.any(np.abs(zooms - 1.0) > SPACING_TOLERANCE):
        raise ValueError(f"{images[0]}: voxels of {zooms.round(4).tolist()} mm; the model expects 1 mm "
                         f"(within {SPACING_TOLERANCE} mm) and ccfv does not resample: resample the dataset to 1 mm")
    if tuple(lab.shape[:3]) != tuple(img.shape) or not np.allclose(lab.affine, img.affine, atol=1e-3):
        raise ValueError(f"{label}: not on the grid of {images[0]} (shape {lab.shape} vs {img.shape}, or "
                         "another affine)")
    transform = orientations.ornt_transform(orientations.io_orientation(img.affine),
                                            orientations.axcodes2ornt(tuple(axes)))
    data = orientations.apply_orientation(np.asarray(img.dataobj, dtype=np.float32), transform)
    seg = orientations.apply_orientation(np.asarray(lab.dataobj).reshape(img.shape), transform)
    return np.ascontiguousarray(data, dtype=np.float32), np.ascontiguousarray(np.rint(seg).astype(np.int16))


def restore_orientation(prediction: np.ndarray, image: Path, axes: Sequence[str]) -> np.ndarray:
    """The inverse of :func:`reorient_case`: a [D, H, W] array with voxel axes in ``axes`` order back in the
    voxel order of ``image`` (as nibabel reads it), by the inverse flips and permutations (exact, no
    interpolation).

    Raises:
        ValueError: naming ``image``: ``prediction`` does not have the image's shape once reordered.
    """
    import nibabel as nib
    from nibabel import orientations

    img = nib.load(str(image))
    transform = orientations.ornt_transform(orientations.axcodes2ornt(tuple(axes)),
                                            orientations.io_orientation(img.affine))
    restored = orientations.apply_orientation(np.asarray(prediction), transform)
    if tuple(restored.shape) != tuple(img.shape[:3]):
        raise ValueError(f"{image}: a prediction of shape {np.shape(prediction)} in {''.join(axes)} order is "
                         f"{restored.shape} in the image's order, not its {tuple(img.shape[:3])}")
    return np.ascontiguousarray(restored)


def scale_to_unit(data: np.ndarray, percentiles: tuple[float, float], where: Path) -> np.ndarray:
    """``clip((data - lo) / (hi - lo), 0, 1)`` as float32: ``lo`` the ``percentiles[0]``-th percentile of all
    voxels, ``hi`` the ``percentiles[1]``-th percentile of the non-zero ones (all of them if none is zero).

    Raises:
        ValueError: naming ``where``, when ``hi <= lo`` (a constant image).
    """
    nonzero = data[data != 0]
    lo = float(np.percentile(data, percentiles[0]))
    hi = float(np.percentile(nonzero if nonzero.size else data, percentiles[1]))
    if not hi > lo:
        raise ValueError(f"{where}: constant intensities ({lo} at both the {percentiles[0]} and the {percentiles[1]} "
                         "percentile); nothing to scale")
    return np.clip((data - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def load(name: str, path: Path, *, patch_size: Sequence[int] = PATCH_SIZE,
         percentiles: tuple[float, float] = PERCENTILES) -> LoadedModel:
    """A brainchop MeshNet folder as :class:`LoadedModel` (kind ``"meshnet"``).

    Args:
        name: the model's name in the ranking.
        path: the folder holding ``model.json`` and the binary weights it names.
        patch_size: sliding-window size in voxels (D, H, W of the LIA-ordered case); any size works, the
            network is fully convolutional.
        percentiles: intensity scaling of :class:`MeshNetPreprocessing`.

    Returns:
        ``network``: :class:`MeshNet` in eval mode, [B, 1, *patch] -> logits [B, K, *patch] (K classes of the
        model, its ``colormap.json`` names them); ``layers``: :func:`hooked_blocks`, each [B, C, *patch];
        ``details``: ``head`` (``"classifier"``), ``num_classes``, ``tf_layers`` (hooked block -> Keras layer
        name), ``receptive_field`` (voxels per axis), ``classes`` (the ``labels`` of ``colormap.json`` when
        it names one per output channel, else None), ``upstream``.

    Raises:
        ModelError: naming the file: no ``model.json``, JSON that does not parse, a topology this module does
            not build (:func:`parse_topology`), weights that do not fit it (:func:`read_weights`).
    """
    from ..data.checksums import sha256_file

    path = Path(path)
    where = path / MODEL_JSON
    if not where.is_file():
        raise ModelError(f"{where}: missing; {path} is not a TensorFlow.js layers model folder")
    try:
        model_json = json.loads(where.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelError(f"{where}: not valid JSON ({err})") from None
    if not isinstance(model_json, dict) or "modelTopology" not in model_json:
        raise ModelError(f"{where}: no 'modelTopology'; not a TensorFlow.js layers model")
    in_channels, convs = parse_topology(model_json, where)
    if len(convs) < 2:
        raise ModelError(f"{where}: a single Conv3D; a MeshNet has hidden blocks before the classifier")
    arrays = read_weights(path, model_json, expected_weights(convs))
    network = MeshNet(in_channels, convs)
    modules = [block[0] for block in network.blocks] + [network.classifier]
    with torch.no_grad():
        for conv, module in zip(convs, modules):
            module.weight.copy_(torch.from_numpy(np.ascontiguousarray(
                arrays[f"{conv.name}/kernel"].transpose(4, 3, 0, 1, 2))))
            if conv.use_bias:
                module.bias.copy_(torch.from_numpy(arrays[f"{conv.name}/bias"].copy()))
    network.eval()
    patch = [int(p) for p in patch_size]
    if len(patch) != 3 or min(patch) < 1:
        raise ModelError(f"{name}: patch_size must be 3 positive ints, got {list(patch_size)}")
    layers = hooked_blocks(len(convs) - 1)
    preprocessing = MeshNetPreprocessing(percentiles)
    weight_files = sorted({str(p) for g in model_json["weightsManifest"] for p in g["paths"]})
    digest = hashlib.sha256()
    for file in [where] + [path / f for f in weight_files]:
        digest.update(sha256_file(file).encode())
    classes = None
    if (path / "colormap.json").is_file():
        try:
            classes = json.loads((path / "colormap.json").read_text()).get("labels")
        except (UnicodeDecodeError, json.JSONDecodeError, AttributeError):
            classes = None
        if not isinstance(classes, list) or len(classes) != convs[-1].filters:
            classes = None  # model5_gw_ae's colormap names 2 classes (brain mask use) for its 3 outputs
    return LoadedModel(
        name=name, path=path, kind="meshnet", architecture="MeshNet", network=network, layers=layers,
        patch_size=patch, num_input_channels=in_channels, checkpoint=path / weight_files[0],
        sha256=digest.hexdigest(), preprocess=preprocessing, preprocess_key=preprocessing.key,
        modalities=["T1"] * in_channels,
        stages=[(n, convs[int(n.split(".")[1])].filters, (1, 1, 1)) for n in layers],
        details={"head": "classifier", "num_classes": convs[-1].filters, "classes": classes,
                 "tf_layers": {n: convs[int(n.split(".")[1])].name for n in layers},
                 "dilations": [c.dilation[0] for c in convs[:-1]], "receptive_field": receptive_field(convs),
                 "input_axes": "".join(INPUT_AXES), "percentiles": list(preprocessing.percentiles),
                 "upstream": UPSTREAM, "weights_files": weight_files},
    )


def random_copy(model: LoadedModel, seed: int, name: str | None = None) -> LoadedModel:
    """A randomly initialised copy of a loaded MeshNet: same architecture, hooks, preprocessing and patch,
    no trained weight.

    Initialisation (brainchop's training notebook ``py2tfjs/MeshNet_Training_Example.ipynb``, ``init_weights``,
    at the commit of :data:`UPSTREAM`): every convolution's weight Xavier-normal with the ReLU gain
    (``nn.init.xavier_normal_(w, gain=sqrt(2))``), every bias 0; drawn from a ``torch.Generator`` seeded with
    ``seed`` in module order, so the copy depends on ``seed`` only (the global RNG is untouched).

    Raises:
        ModelError: ``model`` is not a MeshNet (kind ``"meshnet"``).
    """
    import copy

    if model.kind != "meshnet":
        raise ModelError(f"{model.name}: random_copy of a {model.kind!r} model; this one copies MeshNets")
    network = copy.deepcopy(model.network)
    generator = torch.Generator().manual_seed(int(seed))
    gain = math.sqrt(2.0)
    with torch.no_grad():
        for module in network.modules():
            if isinstance(module, torch.nn.Conv3d):
                fan_in = module.in_channels * math.prod(module.kernel_size)
                fan_out = module.out_channels * math.prod(module.kernel_size)
                std = gain * math.sqrt(2.0 / (fan_in + fan_out))
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * std)
                if module.bias is not None:
                    module.bias.zero_()
    network.eval()
    init = "xavier_normal(gain=sqrt(2)) weights, zero biases (brainchop's MeshNet training notebook)"
    return random_copy_of(model, network, seed, init, name)
