"""The features file: voxel features sampled from one pretrained model on one target dataset.

One HDF5 file per (model, target), written by ``ccfv.features.sampler.sample_dataset`` and read by every
transferability score. The schema (docs/sampling.md, "Features file") is:

    /                                  root attributes: see ``REQUIRED_ATTRS``, ``OPTIONAL_ATTRS``
    /cases/<case_id>                   attrs: class_ids, absent_classes (JSON lists of ints)
        coords/<key>                   int32   [n, 3]     (d, h, w) in the preprocessed case
        labels/<key>                   int16   [n]        label at each coordinate (-1 -> 0)
        features/<layer_index>/<key>   float32 [n_l, C_l] the first n_l coordinates of <key>
        probs/<key>                    float32 [n, K]     softmax of the source network's output
        input_std/<key>                float32 [n]        the input's std in the voxel's 3x3x3 neighbourhood
                                                          (optional: files written before it lack it)

Keys are ``"class_<k>"`` per foreground class present in the case, ``"global"`` (uniform over the
case) and ``"background"`` (uniform over labels <= 0). Layer indices run from 0 (nearest the
bottleneck) to L-1 (the layer before the final convolution), as in the root attribute ``layers``.

This module does not import torch, so scoring code can read files cheaply.
"""
from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

GLOBAL_KEY = "global"
BACKGROUND_KEY = "background"
CLASS_PREFIX = "class_"

FILE_MARKER = "ccfv-features"  # root attribute "ccfv_file"
FILE_VERSION = 1  # root attribute "ccfv_file_version"

# Root attribute -> how it is stored: "str", "int", "float", or "json" (a JSON string).
REQUIRED_ATTRS: dict[str, str] = {
    "model_id": "str",
    "architecture": "str",
    "target": "str",
    "seed": "int",
    "layers": "json",  # hooked layer names, bottleneck -> output; the last feeds the final conv
    "channels": "json",  # C_l per layer
    "layer_ratios": "json",  # sampling ratio per layer
    "budgets": "json",  # {"total", "minimum", "n_global", "n_background"}
    "patch_size": "json",  # [P_d, P_h, P_w]
    "step_size": "float",
    "source_num_classes": "int",  # K, channels of the network's output (the probs)
    "ccfv_version": "str",
}
# Provenance that does not change what a score reads; written by ``sample_dataset``, read into
# ``FeaturesFile.meta`` when present (files without them stay valid).
OPTIONAL_ATTRS: dict[str, str] = {
    "batch_size": "int",  # windows per forward pass
    "device": "str",  # where the network ran ("cpu", "cuda:0", ...)
    "software": "json",  # {package: version} of ccfv, torch, numpy, h5py and the network's libraries
    "window_budget": "int",  # windows per key and case (ccfv.features.budget); 0: every window (no budget)
    "windows_run": "json",  # {case_id: [windows run, windows in the case's tiling]}
}
_BUDGET_KEYS = ("total", "minimum", "n_global", "n_background")


def class_key(class_id: int) -> str:
    """Key under which the voxels of foreground class ``class_id`` are stored: ``"class_<k>"``."""
    return f"{CLASS_PREFIX}{int(class_id)}"


@dataclass
class CaseRecord:
    """Everything stored for one case.

    Attributes:
        case_id: the case's identifier (an HDF5 group name: no "/").
        class_ids: foreground class ids of the target dataset.
        absent_classes: those of ``class_ids`` with no voxel in this case (no "class_<k>" key).
        coords: {key: int [n, 3]}.
        labels: {key: int [n]}.
        features: per layer, {key: float32 [n_l, C_l]} (rows = the first n_l coordinates).
        probs: {key: float32 [n, K]} for the keys whose output probabilities were sampled.
        input_std: {key: float32 [n]} the standard deviation of the preprocessed input in each voxel's 3x3x3
            neighbourhood (the largest over channels; ``ccfv.features.voxels.local_input_std``), for the keys
            it was recorded for: what tells a voxel of anatomy from one of constant air or background.
    """

    case_id: str
    class_ids: list[int]
    absent_classes: list[int]
    coords: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    features: list[dict[str, np.ndarray]]
    probs: dict[str, np.ndarray] = field(default_factory=dict)
    input_std: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class FeaturesFile:
    """A features file read into memory: root metadata and the cases in the order written."""

    path: Path
    meta: dict[str, Any]
    cases: dict[str, CaseRecord]


# --------------------------------------------------------------------------------------------------
# Validation shared by writing and reading
# --------------------------------------------------------------------------------------------------


def _check_meta(meta: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Checked, normalised copy of the root metadata; ValueError naming ``where`` otherwise."""
    missing = [k for k in REQUIRED_ATTRS if k not in meta]
    if missing:
        raise ValueError(f"{where}: missing required attribute(s) {missing}")
    m = dict(meta)
    try:
        for k in ("model_id", "architecture", "target", "ccfv_version"):
            m[k] = str(m[k])
        m["seed"] = int(m["seed"])
        m["step_size"] = float(m["step_size"])
        m["source_num_classes"] = int(m["source_num_classes"])
        m["layers"] = [str(n) for n in m["layers"]]
        m["channels"] = [int(c) for c in m["channels"]]
        m["layer_ratios"] = [float(r) for r in m["layer_ratios"]]
        m["patch_size"] = [int(p) for p in m["patch_size"]]
        m["budgets"] = {k: int(m["budgets"][k]) for k in _BUDGET_KEYS}
    except (TypeError, ValueError, KeyError) as error:
        raise ValueError(f"{where}: malformed attribute ({type(error).__name__}: {error})") from None
    n_layers = len(m["layers"])
    if n_layers == 0:
        raise ValueError(f"{where}: 'layers' is empty")
    if len(m["channels"]) != n_layers or len(m["layer_ratios"]) != n_layers:
        raise ValueError(
            f"{where}: 'layers', 'channels' and 'layer_ratios' differ in length "
            f"({n_layers}, {len(m['channels'])}, {len(m['layer_ratios'])})"
        )
    if len(m["patch_size"]) != 3:
        raise ValueError(f"{where}: 'patch_size' must have 3 entries, got {m['patch_size']}")
    if not 0.0 < m["step_size"] <= 1.0:
        raise ValueError(f"{where}: 'step_size' must be in (0, 1], got {m['step_size']}")
    try:
        if "batch_size" in m:
            m["batch_size"] = int(m["batch_size"])
        if "device" in m:
            m["device"] = str(m["device"])
        if "software" in m:
            if not isinstance(m["software"], Mapping):
                raise TypeError(f"'software' must be a mapping, got {type(m['software']).__name__}")
            m["software"] = {str(k): str(v) for k, v in m["software"].items()}
        if "window_budget" in m:
            m["window_budget"] = int(m["window_budget"])
            if m["window_budget"] < 0:
                raise ValueError(f"'window_budget' must be >= 0 (0: no budget), got {m['window_budget']}")
        if "windows_run" in m:
            if not isinstance(m["windows_run"], Mapping):
                raise TypeError(f"'windows_run' must be a mapping, got {type(m['windows_run']).__name__}")
            runs = {}
            for case, pair in m["windows_run"].items():
                if not isinstance(pair, (list, tuple)) or len(pair) != 2 or not 0 <= int(pair[0]) <= int(pair[1]):
                    raise ValueError(f"'windows_run' of case {case!r} must be [run, total] with 0 <= run <= total, "
                                     f"got {pair!r}")
                runs[str(case)] = [int(pair[0]), int(pair[1])]
            m["windows_run"] = runs
    except (TypeError, ValueError) as error:
        raise ValueError(f"{where}: malformed attribute ({type(error).__name__}: {error})") from None
    return m


def _check_case(record: CaseRecord, where: str, meta: Mapping[str, Any] | None = None) -> None:
    case = f"{where}: case {record.case_id!r}"
    if not record.case_id or "/" in record.case_id or record.case_id in (".", ".."):
        raise ValueError(f"{case}: a case id must be non-empty and contain no '/'")
    for key, c in record.coords.items():
        c = np.asarray(c)
        if c.ndim != 2 or c.shape[1] != 3:
            raise ValueError(f"{case}: coords/{key} must be [n, 3], got {c.shape}")
        if key not in record.labels or np.asarray(record.labels[key]).shape != (c.shape[0],):
            raise ValueError(f"{case}: labels/{key} must be [{c.shape[0]}] like coords/{key}")
    if meta is not None and len(record.features) != len(meta["layers"]):
        raise ValueError(f"{case}: {len(record.features)} feature layers, the file has {len(meta['layers'])}")
    for index, per_key in enumerate(record.features):
        for key, f in per_key.items():
            f = np.asarray(f)
            if key not in record.coords:
                raise ValueError(f"{case}: features/{index}/{key} has no coords/{key}")
            if f.ndim != 2 or f.shape[0] > len(record.coords[key]):
                raise ValueError(f"{case}: features/{index}/{key} must be [n_l <= n, C], got {f.shape}")
            if meta is not None and f.shape[1] != meta["channels"][index]:
                raise ValueError(
                    f"{case}: features/{index}/{key} has {f.shape[1]} channels, "
                    f"layer {index} has {meta['channels'][index]}"
                )
    for key, v in record.input_std.items():
        v = np.asarray(v)
        if key not in record.coords or v.ndim != 1 or v.shape[0] != len(record.coords[key]):
            raise ValueError(f"{case}: input_std/{key} must be [n] for coords/{key}, got {v.shape}")
    for key, p in record.probs.items():
        p = np.asarray(p)
        if key not in record.coords or p.ndim != 2 or p.shape[0] != len(record.coords[key]):
            raise ValueError(f"{case}: probs/{key} must be [n, K] for coords/{key}, got {p.shape}")
        if meta is not None and p.shape[1] != meta["source_num_classes"]:
            raise ValueError(
                f"{case}: probs/{key} has {p.shape[1]} classes, the file says {meta['source_num_classes']}"
            )


# --------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------


class FeaturesWriter:
    """Streams cases into a temporary file beside ``path``; ``commit(meta)`` renames it into place.

    Use as a context manager: leaving the block without ``commit`` (or with an exception) deletes the
    temporary file and leaves any existing ``path`` untouched.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        self._h5: h5py.File | None = h5py.File(self._tmp, "w")
        self._h5.create_group("cases")
        self._records: list[tuple[str, list[int], int | None, int]] = []  # id, channels, K, layers

    def add_case(self, record: CaseRecord) -> None:
        """Write one case (checked for internal consistency; against the meta at ``commit``)."""
        if self._h5 is None:
            raise RuntimeError(f"{self.path}: writer is closed")
        _check_case(record, str(self.path))
        if record.case_id in self._h5["cases"]:
            raise ValueError(f"{self.path}: case {record.case_id!r} written twice")
        g = self._h5["cases"].create_group(record.case_id)
        g.attrs["class_ids"] = json.dumps([int(k) for k in record.class_ids])
        g.attrs["absent_classes"] = json.dumps([int(k) for k in record.absent_classes])
        for key, c in record.coords.items():
            g.create_dataset(f"coords/{key}", data=np.asarray(c, dtype=np.int32).reshape(-1, 3))
            g.create_dataset(f"labels/{key}", data=np.asarray(record.labels[key], dtype=np.int16).reshape(-1))
        features = g.create_group("features")
        channels = []
        for index, per_key in enumerate(record.features):
            layer = features.create_group(str(index))
            widths = set()
            for key, f in per_key.items():
                f = np.asarray(f, dtype=np.float32)
                layer.create_dataset(key, data=f)
                widths.add(f.shape[1])
            channels.append(widths.pop() if len(widths) == 1 else -1)
        probs = g.create_group("probs")
        widths = set()
        for key, p in record.probs.items():
            p = np.asarray(p, dtype=np.float32)
            probs.create_dataset(key, data=p)
            widths.add(p.shape[1])
        for key, v in record.input_std.items():
            g.create_dataset(f"input_std/{key}", data=np.asarray(v, dtype=np.float32))
        self._records.append((record.case_id, channels, widths.pop() if len(widths) == 1 else None,
                              len(record.features)))

    def commit(self, meta: Mapping[str, Any]) -> Path:
        """Check ``meta`` against the written cases, write the root attributes, rename into place."""
        if self._h5 is None:
            raise RuntimeError(f"{self.path}: writer is closed")
        meta = dict(meta)
        if "ccfv_version" not in meta:
            from .. import __version__

            meta["ccfv_version"] = __version__
        m = _check_meta(meta, str(self.path))
        for case_id, channels, k, n_layers in self._records:
            if n_layers != len(m["layers"]) or channels != m["channels"]:
                raise ValueError(
                    f"{self.path}: case {case_id!r} has layer channels {channels}, meta says {m['channels']}"
                )
            if k is not None and k != m["source_num_classes"]:
                raise ValueError(
                    f"{self.path}: case {case_id!r} has {k} output classes, meta says {m['source_num_classes']}"
                )
        attrs = self._h5.attrs
        attrs["ccfv_file"] = FILE_MARKER
        attrs["ccfv_file_version"] = FILE_VERSION
        for name, kind in {**REQUIRED_ATTRS, **OPTIONAL_ATTRS}.items():
            if name in m:
                attrs[name] = json.dumps(m[name]) if kind == "json" else m[name]
        attrs["case_ids"] = json.dumps([r[0] for r in self._records])
        self._h5.close()
        self._h5 = None
        os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        """Close and delete the temporary file (no effect after ``commit``)."""
        if self._h5 is not None:
            self._h5.close()
            self._h5 = None
            self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> FeaturesWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.abort()


def write_features(path: str | Path, meta: Mapping[str, Any], cases: Iterable[CaseRecord]) -> Path:
    """Write a features file atomically (temporary file beside ``path``, then ``os.replace``).

    Args:
        path: the .h5 file.
        meta: the root attributes of ``REQUIRED_ATTRS`` (and any of ``OPTIONAL_ATTRS``) as Python
            values (lists and dicts for the JSON ones); ``ccfv_version`` defaults to
            ``ccfv.__version__``. Other keys are not written.
        cases: ``CaseRecord`` per case, in the order to keep.
    """
    _check_meta({"ccfv_version": "", **meta}, str(path))  # fail before writing any case
    with FeaturesWriter(path) as writer:
        for record in cases:
            writer.add_case(record)
        return writer.commit(meta)


# --------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------


def _json_list(text: Any, where: str) -> list:
    try:
        value = json.loads(text)
    except (TypeError, ValueError):
        raise ValueError(f"{where} is not a JSON list: {text!r}") from None
    if not isinstance(value, list):
        raise ValueError(f"{where} is not a JSON list: {text!r}")
    return value


def _read_case(path: Path, case_id: str, g: h5py.Group, meta: Mapping[str, Any]) -> CaseRecord:
    where = f"{path}: case {case_id!r}"
    for part in ("coords", "labels", "features"):
        if part not in g or not isinstance(g[part], h5py.Group):
            raise ValueError(f"{where}: group '{part}' is missing")
    for attr in ("class_ids", "absent_classes"):
        if attr not in g.attrs:
            raise ValueError(f"{where}: attribute '{attr}' is missing")
    coords = {k: g["coords"][k][()].astype(np.int64) for k in g["coords"]}
    labels = {k: g["labels"][k][()] for k in g["labels"]}
    features = []
    for index in range(len(meta["layers"])):
        if str(index) not in g["features"]:
            raise ValueError(f"{where}: features of layer {index} are missing")
        layer = g["features"][str(index)]
        features.append({k: layer[k][()] for k in layer})
    probs = {k: g["probs"][k][()] for k in g["probs"]} if "probs" in g else {}
    input_std = {k: g["input_std"][k][()] for k in g["input_std"]} if "input_std" in g else {}
    record = CaseRecord(
        case_id=case_id,
        class_ids=[int(k) for k in _json_list(g.attrs["class_ids"], f"{where}: attribute 'class_ids'")],
        absent_classes=[int(k) for k in _json_list(g.attrs["absent_classes"], f"{where}: attribute 'absent_classes'")],
        coords=coords,
        labels=labels,
        features=features,
        probs=probs,
        input_std=input_std,
    )
    _check_case(record, str(path), meta)
    return record


def read_features(path: str | Path) -> FeaturesFile:
    """Read a whole features file into memory, checking the schema.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not HDF5, not a ccfv features file, or misses or garbles a required
            attribute or group; the message names the file and what is wrong.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such features file")
    try:
        h5 = h5py.File(path, "r")
    except OSError as error:
        raise ValueError(f"{path}: not a ccfv features file (not readable as HDF5: {error})") from None
    with h5:
        attrs = h5.attrs
        marker = attrs.get("ccfv_file")
        if marker != FILE_MARKER:
            raise ValueError(f"{path}: not a ccfv features file (root attribute 'ccfv_file' is {marker!r}, "
                             f"expected {FILE_MARKER!r})")
        version = int(attrs.get("ccfv_file_version", -1))
        if version != FILE_VERSION:
            raise ValueError(f"{path}: features file version {version}, this ccfv reads version {FILE_VERSION}")
        raw: dict[str, Any] = {}
        for name, kind in {**REQUIRED_ATTRS, **OPTIONAL_ATTRS}.items():
            if name not in attrs:
                if name in REQUIRED_ATTRS:
                    raise ValueError(f"{path}: missing required root attribute '{name}'")
                continue
            value = attrs[name]
            if kind == "json":
                try:
                    value = json.loads(value)
                except (TypeError, ValueError):
                    raise ValueError(f"{path}: root attribute '{name}' is not valid JSON: {value!r}") from None
            raw[name] = value
        meta = _check_meta(raw, str(path))
        if "cases" not in h5 or not isinstance(h5["cases"], h5py.Group):
            raise ValueError(f"{path}: group '/cases' is missing")
        stored = list(h5["cases"])
        order = _json_list(attrs["case_ids"], f"{path}: root attribute 'case_ids'") if "case_ids" in attrs else stored
        if sorted(order) != sorted(stored):
            raise ValueError(f"{path}: root attribute 'case_ids' does not match the groups under /cases")
        cases = {str(c): _read_case(path, str(c), h5["cases"][c], meta) for c in order}
    return FeaturesFile(path=path, meta=meta, cases=cases)


def subset_cases(ff: FeaturesFile, case_ids: Iterable[str]) -> FeaturesFile:
    """The file restricted to ``case_ids`` in the order given (in memory; nothing is written). A case named
    more than once (a bootstrap resample) is kept as often, its copies renamed ``<id>#2``, ``<id>#3``.

    Raises:
        KeyError: an id that is not a case of the file.
    """
    from dataclasses import replace

    cases: dict[str, CaseRecord] = {}
    seen: dict[str, int] = {}
    for case_id in case_ids:
        if case_id not in ff.cases:
            raise KeyError(f"{ff.path}: no case {case_id!r}")
        seen[case_id] = seen.get(case_id, 0) + 1
        key = case_id if seen[case_id] == 1 else f"{case_id}#{seen[case_id]}"
        cases[key] = replace(ff.cases[case_id], case_id=key)
    return FeaturesFile(path=ff.path, meta=ff.meta, cases=cases)
