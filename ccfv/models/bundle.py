"""MONAI bundles (``configs/metadata.json``, ``configs/inference.json|yaml``, ``models/model.pt``).

What ranking needs from a bundle: the network (``network_def``), the bundle's own preprocessing
(``preprocessing``: loading, orientation, spacing, intensity scaling) and the sliding-window ROI
(``inferer``'s ``roi_size``, else ``network_data_format.inputs.<image>.spatial_shape`` of the metadata).

A bundle config can run Python: ``$`` expressions, ``imports``, ``%`` macros reading other files, and
``_target_`` naming any importable callable. By default (:class:`LiteralConfig`) ccfv builds only those three
entries, and only from ``_target_`` *classes* of ``monai`` or ``torch`` (of :data:`ALLOWED_MODULES`: networks,
layers, transforms, inferers, image readers) with literal arguments (numbers, strings, lists, dicts, null)
and ``@`` references to other literal entries; a ``reader`` given by name must be one of MONAI's; a ``$`` or ``%`` there refuses the
bundle with the entry and the reason, and nothing of it has run. Everything else in the config (``imports``,
``device``, ``network``, training and evaluation sections) is never read, so ``$`` there is no reason to
refuse. A transform's ``device`` argument is taken as the CPU: ccfv moves the preprocessed arrays itself.
With ``trust_bundle_code=True`` (``--trust-bundle-code``) MONAI's own ``ConfigParser`` evaluates the config,
expressions and imports included.

Weights: ``models/model.pt`` is read with ``torch.load(weights_only=True)`` (tensors and plain data only;
a pickle payload is refused unrun) and must fit ``network_def`` exactly. A bundle with only the TorchScript
``models/model.ts`` (code that TorchScript runs when loading it) is read only with the same opt-in, and then
only its weights are used, loaded into ``network_def``.

The labels of the target are brought onto the preprocessed image's voxel grid by MONAI's
``ResampleToMatch`` (nearest neighbour) through the affines the preprocessing tracked, so whatever spatial
transforms the bundle applies, image and labels stay aligned.
"""
from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from .base import LoadedModel, ModelError, load_weights_strictly, read_json

CONFIG_NAMES = ("inference.json", "inference.yaml", "inference.yml")
#: Where a short ``_target_`` name (``"UNet"``, ``"LoadImaged"``) is looked up, in this order (as MONAI's
#: ``ComponentLocator`` would find it among MONAI's modules; torch.nn for layers).
SHORT_NAMESPACES = ("monai.networks.nets", "monai.transforms", "monai.inferers", "monai.data", "torch.nn")
ALLOWED_ROOTS = ("monai", "torch")
#: Modules whose classes ranking builds: networks and layers, transforms, inferers and image readers. Other
#: monai/torch classes (workflows, handlers, datasets that download or cache, ``torch.package``) can act
#: when constructed and are refused.
ALLOWED_MODULES = ("monai.networks.", "monai.transforms.", "monai.inferers.", "monai.data.image_reader",
                   "torch.nn.")
#: What ranking builds from a bundle config.
NETWORK, PREPROCESSING, INFERER = "network_def", "preprocessing", "inferer"


class BundleCodeRefused(ModelError):
    """A bundle entry that ranking needs would run Python code; nothing of the bundle was run."""


def is_bundle(path: Path) -> bool:
    path = Path(path)
    return path.is_dir() and (path / "configs").is_dir() and (
        (path / "configs" / "metadata.json").is_file() or any((path / "configs" / n).is_file() for n in CONFIG_NAMES))


def find_config(bundle: Path) -> Path:
    for name in CONFIG_NAMES:
        if (bundle / "configs" / name).is_file():
            return bundle / "configs" / name
    raise ModelError(f"{bundle / 'configs'}: no {' or '.join(CONFIG_NAMES)} (a MONAI bundle needs its inference "
                     "config)")


def read_config(path: Path) -> dict:
    """A bundle config file (JSON, or YAML read with ``yaml.safe_load``, which builds no Python objects)."""
    text = path.read_text()
    try:
        if path.suffix == ".json":
            value = json.loads(text)
        else:
            import yaml

            value = yaml.safe_load(text)
    except Exception as err:  # json.JSONDecodeError, yaml.YAMLError
        raise ModelError(f"{path}: not a readable bundle config ({str(err).splitlines()[0]})") from None
    if not isinstance(value, dict):
        raise ModelError(f"{path}: expected a mapping at the top, found {type(value).__name__}")
    return value


def _split_id(ref: str) -> list[str]:
    """A config id (``a::b::0``; MONAI's older separator ``#`` too) as its parts."""
    return [p for p in ref.replace("#", "::").split("::") if p != ""]


class LiteralConfig:
    """Builds entries of a bundle config without evaluating any Python: ``_target_`` classes of ``monai``
    and ``torch`` with literal arguments and ``@`` references to literal entries only.

    Raises :class:`BundleCodeRefused` naming the entry that needs code (``$`` expression, ``%`` macro, a
    ``_target_`` outside monai/torch or not a class, ``_requires_``, a ``_mode_`` other than default).
    """

    def __init__(self, config: dict, where: Path, *, overrides: dict | None = None):
        self.config, self.where = config, where
        self.overrides = overrides or {}

    def _refuse(self, at: str, why: str):
        raise BundleCodeRefused(
            f"{self.where}: refused: {at!r} needs Python code to be built ({why}); nothing of the bundle was run. "
            "Pass --trust-bundle-code to let MONAI evaluate the config if you trust its author")

    def lookup(self, ref: str, at: str) -> Any:
        """The raw config value of ``ref`` (``a::b`` or ``a#b``)."""
        value: Any = self.config
        for part in _split_id(ref):
            if isinstance(value, dict) and part in value:
                value = value[part]
            elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
                value = value[int(part)]
            else:
                raise ModelError(f"{self.where}: {at!r} refers to @{ref}, which the config does not have")
        return value

    def literal(self, ref: str) -> Any:
        """The entry ``ref`` as plain data (references resolved, no component built)."""
        return self._resolve(self.lookup(ref, ref), ref, build=False, stack=(ref,))

    def build(self, ref: str) -> Any:
        """The entry ``ref`` with its components instantiated."""
        return self._resolve(self.lookup(ref, ref), ref, build=True, stack=(ref,))

    def _resolve(self, value: Any, at: str, *, build: bool, stack: tuple[str, ...]) -> Any:
        if isinstance(value, str):
            if value.startswith("$"):
                self._refuse(at, f"the expression {value[:80]!r}")
            if value.startswith("%"):
                self._refuse(at, f"the macro {value[:80]!r}, which reads another file")
            if value.startswith("@"):
                ref = value[1:]
                if ref in stack:
                    raise ModelError(f"{self.where}: {at!r}: circular reference @{ref}")
                return self._resolve(self.lookup(ref, at), f"{at} -> @{ref}", build=build, stack=(*stack, ref))
            return value
        if isinstance(value, list):
            return [self._resolve(v, f"{at}::{i}", build=build, stack=stack) for i, v in enumerate(value)]
        if isinstance(value, dict):
            if "_target_" in value and build:
                return self._instantiate(value, at, stack)
            component = "_target_" in value
            return {k: self.overrides[k] if component and k in self.overrides else
                    self._resolve(v, f"{at}::{k}", build=build, stack=stack) for k, v in value.items()}
        return value

    def _instantiate(self, spec: dict, at: str, stack: tuple[str, ...]) -> Any:
        disabled = spec.get("_disabled_", False)
        if isinstance(disabled, str):
            if disabled.startswith(("$", "@", "%")):
                self._refuse(at, f"_disabled_ {disabled!r}")
            disabled = disabled.strip().lower() == "true"
        if disabled:
            return None
        if spec.get("_requires_"):
            self._refuse(at, "_requires_ runs other entries first")
        if spec.get("_mode_", "default") != "default":
            self._refuse(at, f"_mode_ {spec['_mode_']!r}")
        cls = self._target(spec["_target_"], at)
        kwargs = {}
        for key, value in spec.items():
            if key.startswith("_") and key.endswith("_"):
                continue  # _target_, _desc_, _disabled_, _mode_, _requires_: handled above
            if key in self.overrides:
                kwargs[key] = self.overrides[key]
                continue
            kwargs[key] = self._resolve(value, f"{at}::{key}", build=True, stack=stack)
            if key == "reader" and isinstance(kwargs[key], str):
                self._check_reader_name(kwargs[key], f"{at}::{key}")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # MONAI's notices about changed defaults
                return cls(**kwargs)
        except Exception as err:  # whatever the class's constructor raises on bad arguments
            raise ModelError(f"{self.where}: {at!r}: {cls.__module__}.{cls.__name__}(...) failed: "
                             f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}") from None

    def _check_reader_name(self, name: str, at: str) -> None:
        """LoadImage(d) imports (``pydoc.locate``) a reader name it does not know: only MONAI's own readers."""
        from monai.transforms.io.array import SUPPORTED_READERS

        known = {k.lower() for k in SUPPORTED_READERS}
        if name.lower() not in known and name.lower() + "reader" not in known:
            self._refuse(at, f"reader {name!r} is not one of MONAI's readers ({', '.join(sorted(known))}); "
                             "LoadImage would import it by name")

    def _target(self, name: Any, at: str):
        if not isinstance(name, str) or name.startswith(("$", "@", "%")):
            self._refuse(at, f"_target_ {name!r}")
        if "." in name:
            root = name.split(".", 1)[0]
            if root not in ALLOWED_ROOTS:
                self._refuse(at, f"_target_ {name!r} is outside {' and '.join(ALLOWED_ROOTS)}")
            obj = _locate_dotted(name)
        else:
            obj = None
            for namespace in SHORT_NAMESPACES:
                obj = getattr(importlib.import_module(namespace), name, None)
                if obj is not None:
                    break
        if obj is None:
            raise ModelError(f"{self.where}: {at!r}: _target_ {name!r} is not a class of "
                             f"{', '.join(SHORT_NAMESPACES)}")
        if not inspect.isclass(obj):
            self._refuse(at, f"_target_ {name!r} is a function, not a class")
        if not f"{obj.__module__}.".startswith(ALLOWED_MODULES):
            self._refuse(at, f"_target_ {name!r} is {obj.__module__}.{obj.__name__}, outside the modules ranking "
                             f"builds from ({', '.join(m.rstrip('.') for m in ALLOWED_MODULES)})")
        return obj


def _locate_dotted(name: str):
    """``monai.x.y.Class`` or ``torch.nn.Class``: import the longest module prefix (a monai or torch module
    only), then take the attributes."""
    parts = name.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr, None)
            if obj is None:
                return None
        return obj
    return None


def _image_key(metadata: dict) -> str:
    inputs = (metadata.get("network_data_format") or {}).get("inputs") or {}
    return next(iter(inputs)) if len(inputs) == 1 else "image"


def _roi_size(parsed_roi: Any, metadata: dict, key: str, where: Path) -> list[int]:
    roi = parsed_roi
    if roi is None:
        shape = (((metadata.get("network_data_format") or {}).get("inputs") or {}).get(key) or {}).get("spatial_shape")
        roi = shape
    if isinstance(roi, int):
        roi = [roi] * 3
    if not isinstance(roi, (list, tuple)) or len(roi) != 3 or not all(isinstance(r, int) and r > 0 for r in roi):
        raise ModelError(f"{where}: no 3D sliding-window size: 'inferer' has no literal roi_size and the metadata's "
                         f"network_data_format.inputs.{key}.spatial_shape is {roi!r}")
    return [int(r) for r in roi]


class BundlePreprocessing:
    """The bundle's own preprocessing of one labelled case (:data:`ccfv.models.base.CasePreprocessing`):
    the transforms on ``{key: image file(s)}``, then the label resampled (nearest) onto the resulting grid.
    Output: image [C, X, Y, Z] float32 and label [X, Y, Z] int16, in the bundle's orientation."""

    def __init__(self, transforms, key: str, where: Path):
        self.transforms, self.key, self.where = transforms, key, where

    def _transformed(self, images: list[Path]):
        """The bundle's transforms applied to the case's image file(s): a MetaTensor carrying its affine."""
        from monai.data import MetaTensor

        data = {self.key: str(images[0]) if len(images) == 1 else [str(p) for p in images]}
        try:
            with warnings.catch_warnings():
                # MONAI's notices about changed defaults of the bundle's transforms: not the user's concern here
                warnings.simplefilter("ignore", FutureWarning)
                out = self.transforms(data)
        except Exception as err:  # MONAI wraps a failing transform in a RuntimeError naming it
            raise ValueError(f"{self.where}: the bundle's preprocessing failed on {images}: "
                             f"{str(err).splitlines()[0][:500]}") from None
        if isinstance(out, list):  # a transform that returns several samples: the first is the whole image
            out = out[0]
        image = out.get(self.key) if isinstance(out, dict) else out
        if not isinstance(image, MetaTensor):
            raise ValueError(f"{self.where}: the bundle's preprocessing returns {type(image).__name__} without the "
                             "image's affine (track_meta off?): ccfv cannot bring the labels onto its voxel grid")
        return image

    def __call__(self, images: list[Path], label: Path) -> tuple[np.ndarray, np.ndarray]:
        import torch
        from monai.transforms import LoadImage, ResampleToMatch

        image = self._transformed(images)
        seg = LoadImage(image_only=True, ensure_channel_first=True)(str(label))
        seg = ResampleToMatch(mode="nearest", padding_mode="zeros")(seg, img_dst=image.detach().cpu())
        image_np = torch.as_tensor(image).detach().cpu().numpy().astype(np.float32)
        seg_np = np.rint(torch.as_tensor(seg).detach().cpu().numpy()[0]).astype(np.int16)
        if image_np.ndim != 4 or seg_np.shape != image_np.shape[1:]:
            raise ValueError(f"{self.where}: preprocessed image {image_np.shape} and label {seg_np.shape} do not "
                             "share one [C, X, Y, Z] grid")
        return image_np, seg_np

    def restore(self, prediction: np.ndarray, images: list[Path], label: Path) -> np.ndarray:
        """A label map on the bundle's preprocessed grid resampled (nearest neighbour, MONAI ``ResampleToMatch``
        through the affine the transforms tracked and the label file's affine) onto the label file's voxel
        grid, in nibabel's axis order: the inverse of the transforms' spatial part, whatever they did
        (orientation, spacing, cropping). Reruns the transforms on the image to recover the affine.
        :data:`ccfv.models.base.CaseRestoration`."""
        import torch
        from monai.data import MetaTensor
        from monai.transforms import LoadImage, ResampleToMatch

        image = self._transformed(images)
        grid = tuple(image.shape[1:])
        if tuple(np.shape(prediction)) != grid:
            raise ValueError(f"{self.where}: a prediction of shape {np.shape(prediction)} on a preprocessed grid of "
                             f"{grid}")
        source = MetaTensor(torch.as_tensor(np.asarray(prediction, dtype=np.float32))[None],
                            affine=image.affine.detach().cpu())
        target = LoadImage(reader="NibabelReader", image_only=True, ensure_channel_first=True)(str(label))
        restored = ResampleToMatch(mode="nearest", padding_mode="zeros")(source, img_dst=target)
        return np.rint(torch.as_tensor(restored).detach().cpu().numpy()[0]).astype(np.int16)


def _read_weights(bundle: Path, trust: bool) -> tuple[Path, dict]:
    from ..bank.checkpoints import read_checkpoint

    pt, ts = bundle / "models" / "model.pt", bundle / "models" / "model.ts"
    if pt.is_file():
        try:
            state = read_checkpoint(pt, numpy_scalars=True)
        except (ValueError, FileNotFoundError) as err:
            raise ModelError(str(err)) from None
        # CheckpointSaver-style files wrap the state dict ({"model": ...}); zoo files are the state dict itself.
        for key in ("model", "state_dict", "network_weights", "network"):
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
                break
        if not isinstance(state, dict) or not state:
            raise ModelError(f"{pt}: not a state dict")
        return pt, state
    if ts.is_file():
        if not trust:
            raise BundleCodeRefused(f"{ts}: refused: the bundle has only a TorchScript model, which runs its own code "
                                    "when loaded; nothing of it was loaded. Pass --trust-bundle-code if you trust "
                                    "its author")
        import torch

        try:
            return ts, dict(torch.jit.load(str(ts), map_location="cpu").state_dict())
        except Exception as err:  # torch.jit raises RuntimeError and others on a bad archive
            raise ModelError(f"{ts}: not a readable TorchScript model ({str(err).splitlines()[0]})") from None
    raise ModelError(f"{bundle / 'models'}: no model.pt (or model.ts)")


def _trusted_parts(config_file: Path, metadata_file: Path, bundle: Path):
    """(network, preprocessing, roi or None) through MONAI's ConfigParser: runs the config's code."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(config_file))
    if metadata_file.is_file():
        parser.read_meta(str(metadata_file))
    parser["bundle_root"] = str(bundle)
    try:
        network = parser.get_parsed_content(NETWORK)
        preprocessing = parser.get_parsed_content(PREPROCESSING)
        inferer = parser.get(INFERER)
        roi = parser.get_parsed_content(f"{INFERER}::roi_size") \
            if isinstance(inferer, dict) and "roi_size" in inferer else None
    except Exception as err:  # anything the bundle's own code raises
        raise ModelError(f"{config_file}: MONAI could not build the bundle: {type(err).__name__}: "
                         f"{str(err).splitlines()[0][:500] if str(err) else ''}") from None
    if roi is not None and not isinstance(roi, int):
        roi = [int(r) for r in roi]
    return network, preprocessing, roi


def load(name: str, path: Path, *, trust_bundle_code: bool = False) -> LoadedModel:
    """A MONAI bundle folder as :class:`LoadedModel` (see the module docstring for what is built and how).

    Raises:
        BundleCodeRefused: an entry ranking builds needs code and ``trust_bundle_code`` is False.
        ModelError: a missing or unreadable file, an unsupported network, weights that do not fit.
    """
    from ..data.checksums import sha256_file
    from .monai_networks import HEADS, decoder_stages

    bundle = Path(path)
    config_file = find_config(bundle)
    metadata_file = bundle / "configs" / "metadata.json"
    try:
        metadata = read_json(metadata_file)
    except (FileNotFoundError, ValueError) as err:
        raise ModelError(f"{err} (a MONAI bundle needs configs/metadata.json)") from None
    config = read_config(config_file)
    for entry in (NETWORK, PREPROCESSING):
        if entry not in config:
            raise ModelError(f"{config_file}: no {entry!r} entry (ccfv builds the network from 'network_def' and "
                             "applies the bundle's own 'preprocessing')")
    key = _image_key(metadata)
    if trust_bundle_code:
        network, transforms, roi = _trusted_parts(config_file, metadata_file, bundle)
        in_channels = None
        prep_identity = json.dumps(config.get(PREPROCESSING), sort_keys=True, default=str) + str(bundle.resolve())
    else:
        literal = LiteralConfig(config, config_file, overrides={"device": "cpu"})
        network = literal.build(NETWORK)
        transforms = literal.build(PREPROCESSING)
        inferer = config.get(INFERER)
        roi = literal.literal(f"{INFERER}::roi_size") if isinstance(inferer, dict) and "roi_size" in inferer else None
        raw_def = literal.literal(NETWORK)
        in_channels = raw_def.get("in_channels") if isinstance(raw_def, dict) else None
        prep_identity = json.dumps(literal.literal(PREPROCESSING), sort_keys=True, default=str)
    import torch

    if not isinstance(network, torch.nn.Module):
        raise ModelError(f"{config_file}: 'network_def' builds {type(network).__name__}, not a torch.nn.Module")
    if not callable(transforms):
        raise ModelError(f"{config_file}: 'preprocessing' builds {type(transforms).__name__}, not a transform")
    patch = _roi_size(roi, metadata, key, config_file)
    try:
        stages = decoder_stages(network)
    except ValueError as err:
        raise ModelError(f"{config_file}: 'network_def': {err}") from None
    checkpoint, state = _read_weights(bundle, trust_bundle_code)
    load_weights_strictly(network, state, checkpoint, f"the network_def of {config_file}")
    network.eval()
    image_format = ((metadata.get("network_data_format") or {}).get("inputs") or {}).get(key) or {}
    if in_channels is None:
        in_channels = image_format.get("num_channels") or getattr(network, "in_channels", None)
    if not isinstance(in_channels, int):
        raise ModelError(f"{config_file}: cannot tell the number of input channels ('network_def' in_channels or "
                         f"the metadata's network_data_format.inputs.{key}.num_channels)")
    modality = image_format.get("modality")
    modalities = [str(modality)] * in_channels if isinstance(modality, str) and modality else None
    return LoadedModel(
        name=name, path=bundle, kind="monai-bundle", architecture=type(network).__name__, network=network,
        layers=[s[0] for s in stages], patch_size=patch, num_input_channels=in_channels, checkpoint=checkpoint,
        sha256=sha256_file(checkpoint), preprocess=BundlePreprocessing(transforms, key, config_file),
        preprocess_key="bundle-" + hashlib.sha256(prep_identity.encode()).hexdigest()[:16],
        modalities=modalities, stages=stages,
        details={"source_dataset": metadata.get("name") or metadata.get("task"), "version": metadata.get("version"),
                 "trusted_code": bool(trust_bundle_code), "head": HEADS.get(type(network).__name__)},
    )
