"""Validate a Medical Segmentation Decathlon task folder before anything downstream reads it.

``ccfv msd validate DIR...`` runs :func:`validate_command`. Every check is described, with example
messages, in ``docs/validation.md``. In short:

* ``dataset.json`` exists (a task nested in a folder of its name is pointed at), is UTF-8 JSON (a syntax
  error names line and column), and holds the MSD keys some stage reads, with the MSD types (label names
  unique); the descriptive ``description``, ``reference``, ``licence`` and ``release`` may be absent (a note); ``numTraining``/``numTest`` equal the lengths of
  ``training``/``test``; listed paths are ``.nii.gz`` files inside the task folder, listed once, never a
  macOS ``._*`` file.
* ``imagesTr/`` and ``labelsTr/`` exist, and so does every listed file; ``imagesTs/`` (MSD's unlabelled test
  images, which no stage reads) may be absent when ``test`` lists nothing in it.
* Every listed file is read completely (gzip CRC included), one volume at a time: images are 3D, or
  4D with one channel per ``modality`` entry, and hold no NaN or Inf; labels are 3D, have the spatial
  shape and (within :data:`AFFINE_RTOL` / :data:`AFFINE_ATOL`) the affine of their image, the header
  spacing of their image as strictly as nnU-Net compares it, and hold whole numbers that ``labels``
  declares (a label file with more than :data:`LABEL_VALUES_LISTED` distinct values is summarised as
  looking like an image).
* There is something to segment: ``labels`` declares a foreground class and at least one training label
  holds it. A declared class that no case holds is only a note while another class is present.

All problems are collected; nothing stops at the first one. Files in the folders that ``dataset.json``
does not list are not checked (they are mentioned in a note), and macOS ``._*`` files never count.
"""
from __future__ import annotations

import json
import os
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .volumes import Unreadable, Volume, count_nonfinite, read_nifti, scan_label_values

#: Keys a stage reads (nnU-Net's MSD converter, the checks below, the workflow), with the type each must have.
REQUIRED_KEYS: dict[str, type] = {
    "name": str,
    "tensorImageSize": str,
    "modality": dict,
    "labels": dict,
    "numTraining": int,
    "numTest": int,
    "training": list,
    "test": list,
}
#: Keys every official MSD ``dataset.json`` has but no stage reads: without them (user-made MSD-style tasks)
#: a task is accepted with a note.
DESCRIPTIVE_KEYS = ("description", "reference", "licence", "release")
#: Misspellings found in the official MSD files, accepted in place of the key (with a note).
KEY_ALIASES = {"release": "relase"}
#: More distinct values than this in one label file: it is summarised (count, range), not listed.
LABEL_VALUES_LISTED = 20
#: Sub-folders every task needs. MSD's third, ``imagesTs/`` (unlabelled test images), is optional: user-made
#: tasks and copies without the test images have none, and no stage reads it (nnU-Net's MSD converter asserts it,
#: so ``ccfv.preprocess.nnunet.convert_msd_task`` gives the converter an empty one).
REQUIRED_FOLDERS = ("imagesTr", "labelsTr")
#: The MSD sub-folders whose unlisted files nnU-Net's MSD converter would still convert.
MSD_FOLDERS = (*REQUIRED_FOLDERS, "imagesTs")
#: Image and label affines agree when ``|a - b| <= AFFINE_ATOL + AFFINE_RTOL * |b|`` element-wise
#: (``numpy.allclose``): 1e-3 mm absolute, about 0.03 mm on a 300 mm origin.
AFFINE_RTOL = 1e-4
AFFINE_ATOL = 1e-3


@dataclass(frozen=True)
class Problem:
    """One problem: ``file`` names the offending file (as reached from the task folder given), ``reason``
    says what is wrong in a sentence."""

    file: str
    reason: str

    def __str__(self) -> str:
        return f"{self.file}: {self.reason}"


class DatasetError(ValueError):
    """A task folder failed validation; ``problems`` holds every problem, the message lists them."""

    def __init__(self, task_dir: str | os.PathLike, problems: Sequence[Problem]):
        self.task_dir = str(task_dir)
        self.problems = list(problems)
        lines = [f"{len(self.problems)} problem(s) in {self.task_dir}"] + [str(p) for p in self.problems]
        super().__init__("\n".join(lines))

    def __reduce__(self):  # picklable (multiprocessing, Snakemake) despite the two-argument constructor
        return (type(self), (self.task_dir, self.problems))


@dataclass
class TaskReport:
    """What :func:`check_task` found in one task folder."""

    task_dir: str
    problems: list[Problem] = field(default_factory=list)
    #: Training cases whose image and label were both read.
    training_cases_checked: int = 0
    #: Test images that were read.
    test_images_checked: int = 0
    #: Label value -> number of training cases whose label volume holds it.
    label_cases: Counter = field(default_factory=Counter)
    #: Declared label names (``dataset.json`` ``labels``) by value, when they parse.
    label_names: dict[int, str] = field(default_factory=dict)
    #: Remarks that are not problems (accepted quirks, unchecked files, declared labels never seen).
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        """One line: ``OK DIR: ...`` for a valid task, ``N problem(s) in DIR`` otherwise."""
        if self.problems:
            return f"{len(self.problems)} problem(s) in {self.task_dir}"
        seen = ", ".join(
            f"{value}{' ' + self.label_names[value] if value in self.label_names else ''} "
            f"({count} case{'s' if count != 1 else ''})"
            for value, count in sorted(self.label_cases.items())
        )
        line = (f"OK {self.task_dir}: {self.training_cases_checked} training case(s) and "
                f"{self.test_images_checked} test image(s) checked; labels seen: {seen or 'none'}")
        if self.notes:
            line += "; note: " + "; ".join(self.notes)
        return line


# ----------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------


def check_task(task_dir: str | os.PathLike, *, test_images: bool = True, progress: bool = False) -> TaskReport:
    """Check one MSD task folder and return a :class:`TaskReport` with every problem found.

    ``test_images=False`` only checks that the listed test images exist, without reading them.
    ``progress=True`` shows a progress bar (on stderr) over the cases.
    """
    return _Checker(task_dir, test_images=test_images, progress=progress).run()


def validate_task(task_dir: str | os.PathLike, *, test_images: bool = True) -> list[Problem]:
    """Every problem in the MSD task folder ``task_dir`` (empty when it is valid)."""
    return check_task(task_dir, test_images=test_images).problems


def validate_or_raise(task_dir: str | os.PathLike, *, test_images: bool = True) -> TaskReport:
    """Return the report of a valid task; raise :class:`DatasetError` listing every problem otherwise."""
    report = check_task(task_dir, test_images=test_images)
    if report.problems:
        raise DatasetError(report.task_dir, report.problems)
    return report


def validate_command(dirs: Sequence[str | os.PathLike], *, test_images: bool = True,
                     progress: bool | None = None) -> int:
    """``ccfv msd validate DIR...``: print every problem to stderr, a one-line summary per task (``OK ...``
    on stdout for a valid task, ``N problem(s) in DIR`` on stderr otherwise); return 0 when every task
    is valid, 1 otherwise. ``progress=None`` shows progress bars when stderr is a terminal."""
    if not dirs:
        print("no task folders given", file=sys.stderr)
        return 1
    if progress is None:
        progress = sys.stderr.isatty()
    failed = 0
    for task_dir in dirs:
        report = check_task(task_dir, test_images=test_images, progress=progress)
        if report.problems:
            failed += 1
            for problem in report.problems:
                print(problem, file=sys.stderr)
            print(report.summary(), file=sys.stderr)
        else:
            print(report.summary())
        sys.stdout.flush()
        sys.stderr.flush()
    return 1 if failed else 0


# ----------------------------------------------------------------------------------------------
# The checks
# ----------------------------------------------------------------------------------------------


def _type_name(value) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", int: "integer",
            float: "number", type(None): "null"}.get(type(value), type(value).__name__)


def _short(value, limit: int = 40) -> str:
    text = json.dumps(value) if not isinstance(value, (set, tuple)) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _index_key(key) -> int | None:
    """``"3"`` -> 3; anything that is not a canonical non-negative integer string -> None."""
    if isinstance(key, str) and key.isascii() and key.isdigit() and str(int(key)) == key:
        return int(key)
    return None


def _join_values(values: Iterable) -> str:
    return ", ".join(_format_number(v) for v in values)


def _format_number(value) -> str:
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return f"{value:g}" if isinstance(value, (float, np.floating)) else str(value)


def _format_zooms(zooms: Sequence[float]) -> str:
    return "(" + ", ".join(f"{z:.7g}" for z in zooms) + ")"


def nested_dataset_json(folder: Path) -> Path | None:
    """The ``dataset.json`` of a task folder that holds only a nested copy of itself (``Task09_Spleen/
    Task09_Spleen/dataset.json``, or one sub-folder of any name), None otherwise."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    subfolders = [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith((".", "__MACOSX"))]
    candidates = [p / "dataset.json" for p in subfolders if (p / "dataset.json").is_file()]
    same_name = [c for c in candidates if c.parent.name == folder.name]
    if same_name:
        return same_name[0]
    return candidates[0] if len(candidates) == 1 else None


class _Checker:
    def __init__(self, task_dir, *, test_images: bool, progress: bool):
        self.root = Path(task_dir)
        self.report = TaskReport(task_dir=str(task_dir))
        self.read_test_images = test_images
        self.progress = progress
        self.dataset_json = self.display("dataset.json")
        self.declared_labels: set[int] | None = None
        self.channels: int | None = None  # number of modality entries, when valid
        self.missing_dirs: Counter = Counter()  # listed files whose folder does not exist, by folder
        self.float_label_files: Counter = Counter()  # dtype name -> label files with whole-number floats
        self.seen_problems: set[Problem] = set()
        self.training_cases_listed = 0  # well-formed training entries
        self.labels_read = 0  # training label files read (whatever their content)

    # -- helpers --------------------------------------------------------------------------------

    def display(self, relative: str) -> str:
        return os.path.normpath(os.path.join(str(self.root), relative))

    def problem(self, file: str, reason: str) -> None:
        problem = Problem(file, reason)
        if problem not in self.seen_problems:  # a file listed twice is read twice: report it once
            self.seen_problems.add(problem)
            self.report.problems.append(problem)

    def json_problem(self, reason: str) -> None:
        self.problem(self.dataset_json, reason)

    # -- driver ---------------------------------------------------------------------------------

    def run(self) -> TaskReport:
        if not self.root.exists():
            self.problem(str(self.root), "no such folder")
            return self.report
        if not self.root.is_dir():
            self.problem(str(self.root), "is not a folder")
            return self.report
        spec = self.load_dataset_json()
        if spec is None:
            return self.report
        training, test = self.check_dataset_json(spec)
        listed = [path for entry in training for path in entry] + test
        self.check_folders(listed)
        self.check_cases(training, test)
        self.check_foreground()
        self.add_notes(listed)
        return self.report

    # -- dataset.json ---------------------------------------------------------------------------

    def load_dataset_json(self):
        path = self.root / "dataset.json"
        if not path.is_file():
            nested = nested_dataset_json(self.root) if not path.exists() else None
            if nested is not None:
                self.json_problem(f"missing; the task is one level down: {nested} (the folder holds a nested copy "
                                  f"of itself, as unpacking an archive into a folder of its name does); pass "
                                  f"{nested.parent}")
            else:
                self.json_problem("missing: every MSD task folder has a dataset.json" if not path.exists()
                                  else "is not a file")
            return None
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            self.json_problem(f"is not UTF-8 text (byte {err.start})")
            return None
        except OSError as err:
            self.json_problem(f"cannot be read ({err.strerror or err})")
            return None
        try:
            spec = json.loads(text)
        except json.JSONDecodeError as err:
            self.json_problem(f"is not valid JSON: {err.msg.removesuffix(' at')} at line {err.lineno}, column {err.colno}")
            return None
        if not isinstance(spec, dict):
            self.json_problem(f"must hold a JSON object, holds a{'n' if _type_name(spec)[0] in 'aeiou' else ''} "
                              f"{_type_name(spec)}")
            return None
        return spec

    def check_dataset_json(self, spec: dict) -> tuple[list[tuple[str, str]], list[str]]:
        """Check keys and types; return the well-formed training pairs and test paths (relative)."""
        values = {}
        for key, kind in REQUIRED_KEYS.items():
            name = key
            if key not in spec and KEY_ALIASES.get(key) in spec:
                name = KEY_ALIASES[key]
                self.report.notes.append(f"dataset.json spells '{key}' as '{name}' (as some MSD tasks do); accepted")
            if name not in spec:
                self.json_problem(f"missing required key '{key}'")
                continue
            value = spec[name]
            ok = _is_int(value) if kind is int else isinstance(value, kind)
            if not ok:
                expected = {str: "a string", int: "an integer", dict: "an object", list: "an array"}[kind]
                self.json_problem(f"'{name}' must be {expected}, got {_type_name(value)} {_short(value)}")
                continue
            values[key] = value
        for key in DESCRIPTIVE_KEYS:
            if key not in spec and KEY_ALIASES.get(key) in spec:
                self.report.notes.append(f"dataset.json spells '{key}' as '{KEY_ALIASES[key]}' (as some MSD tasks "
                                         "do); accepted")
        absent = [k for k in DESCRIPTIVE_KEYS if k not in spec and KEY_ALIASES.get(k) not in spec]
        if absent:
            self.report.notes.append(f"dataset.json has no {', '.join(repr(k) for k in absent)} (descriptive MSD "
                                     "keys no stage reads); accepted")

        if "tensorImageSize" in values and values["tensorImageSize"] not in ("3D", "4D"):
            self.json_problem(f"'tensorImageSize' must be \"3D\" or \"4D\", got {_short(values['tensorImageSize'])}")
        for key in ("numTraining", "numTest"):
            if key in values and values[key] < 0:
                self.json_problem(f"'{key}' must not be negative, got {values[key]}")

        if "modality" in values:
            self.check_modality(values["modality"])
        if "labels" in values:
            self.check_labels(values["labels"])

        training = self.check_training(values["training"]) if "training" in values else []
        test = self.check_test(values["test"]) if "test" in values else []
        for key, listed in (("numTraining", "training"), ("numTest", "test")):
            if key in values and listed in values and values[key] != len(values[listed]):
                self.json_problem(f"'{key}' is {values[key]} but '{listed}' lists {len(values[listed])} "
                                  f"entr{'y' if len(values[listed]) == 1 else 'ies'}")
        return training, test

    def check_modality(self, modality: dict) -> None:
        if not modality:
            self.json_problem("'modality' must name at least one channel, e.g. {\"0\": \"CT\"}")
            return
        valid = True
        for key, value in modality.items():
            if _index_key(key) is None:
                self.json_problem(f"'modality' key {_short(key)} must be a channel index such as \"0\"")
                valid = False
            if not isinstance(value, str):
                self.json_problem(f"'modality' entry {_short(key)} must be a string, got {_type_name(value)} "
                                  f"{_short(value)}")
                valid = False
        if valid:
            indices = sorted(_index_key(k) for k in modality)
            if indices != list(range(len(indices))):
                self.json_problem(f"'modality' keys must be 0..{len(indices) - 1} without gaps, got "
                                  f"{_join_values(indices)}")
            else:
                self.channels = len(indices)

    def check_labels(self, labels: dict) -> None:
        declared: set[int] = set()
        for key, value in labels.items():
            index = _index_key(key)
            if index is None:
                self.json_problem(f"'labels' key {_short(key)} must be a label value such as \"1\" "
                                  f"(MSD maps value -> name)")
            else:
                declared.add(index)
            if not isinstance(value, str):
                self.json_problem(f"'labels' entry {_short(key)} must be a string (the label name), got "
                                  f"{_type_name(value)} {_short(value)}")
            elif index is not None:
                self.report.label_names[index] = value
        by_name: dict[str, list[str]] = {}
        for key, value in labels.items():
            if isinstance(value, str):
                by_name.setdefault(value, []).append(str(key))
        for value, keys in by_name.items():
            if len(keys) > 1:
                self.json_problem(f"'labels' name {_short(value)} is given to values {', '.join(keys)}; names must be "
                                  f"unique (nnU-Net's MSD converter inverts the map to name -> value)")
        if "0" not in labels:
            self.json_problem("'labels' must declare \"0\" (background)")
        else:  # the well-formed keys still say which values are declared
            self.declared_labels = declared

    def check_path(self, where: str, value) -> str | None:
        """A listed path, normalised relative to the task folder, or None (with a problem) if unusable."""
        if not isinstance(value, str):
            self.json_problem(f"{where} must be a string path, got {_type_name(value)} {_short(value)}")
            return None
        if not value:
            self.json_problem(f"{where} is an empty path")
            return None
        relative = os.path.normpath(value)
        if os.path.isabs(value) or relative == ".." or relative.startswith(".." + os.sep):
            self.json_problem(f"{where} {_short(value)} points outside the task folder; MSD paths look like "
                              f"\"./imagesTr/case_0.nii.gz\"")
            return None
        if os.path.basename(relative).startswith("._"):
            self.json_problem(f"{where} {_short(value)} is a macOS AppleDouble file (._*), not an image")
            return None
        if not relative.endswith(".nii.gz"):
            self.json_problem(f"{where} {_short(value)} is not a .nii.gz file (nnU-Net's MSD converter only "
                              f"takes .nii.gz)")
            return None
        return relative

    def check_training(self, training: list) -> list[tuple[str, str]]:
        pairs = []
        first_seen: dict[str, str] = {}
        for i, entry in enumerate(training):
            where = f"training[{i}]"
            if not isinstance(entry, dict):
                self.json_problem(f"{where} must be an object with \"image\" and \"label\", got "
                                  f"{_type_name(entry)} {_short(entry)}")
                continue
            paths = []
            for key in ("image", "label"):
                if key not in entry:
                    self.json_problem(f"{where} has no \"{key}\"")
                    paths.append(None)
                else:
                    paths.append(self.check_path(f"{where}.{key}", entry[key]))
            for key, path in zip(("image", "label"), paths):
                if path is not None:
                    if path in first_seen:
                        self.json_problem(f"{where}.{key} {_short(path)} is already listed as {first_seen[path]}")
                    else:
                        first_seen[path] = f"{where}.{key}"
            if None not in paths:
                pairs.append((paths[0], paths[1]))
        return pairs

    def check_test(self, test: list) -> list[str]:
        paths = []
        first_seen: dict[str, str] = {}
        for i, entry in enumerate(test):
            path = self.check_path(f"test[{i}]", entry)
            if path is None:
                continue
            if path in first_seen:
                self.json_problem(f"test[{i}] {_short(path)} is already listed as {first_seen[path]}")
                continue
            first_seen[path] = f"test[{i}]"
            paths.append(path)
        return paths

    # -- folders and files ------------------------------------------------------------------------

    def check_folders(self, listed: list[str]) -> None:
        folders = list(REQUIRED_FOLDERS) + sorted({os.path.dirname(p) for p in listed} - set(REQUIRED_FOLDERS) - {""})
        for folder in folders:
            if (self.root / folder).is_dir():
                continue
            inside = sum(1 for p in listed if os.path.dirname(p) == folder)
            self.missing_dirs[folder] = inside
            reason = "folder missing"
            if folder in REQUIRED_FOLDERS:
                reason += " (every task needs imagesTr/ and labelsTr/; imagesTs/ is optional)"
            if inside:
                reason += f"; dataset.json lists {inside} file(s) in it"
            self.problem(self.display(folder), reason)

    def exists(self, relative: str) -> bool:
        """Whether a listed file exists; reports it when missing (once per missing folder)."""
        if os.path.dirname(relative) in self.missing_dirs:
            return False  # reported with the folder
        path = self.root / relative
        if path.is_file():
            return True
        if path.exists():
            self.problem(self.display(relative), "is listed in dataset.json but is not a file")
        elif path.with_name("._" + path.name).exists():
            self.problem(self.display(relative), f"is listed in dataset.json but missing (only the macOS "
                                                 f"AppleDouble file ._{path.name} is there, which is not an image)")
        else:
            self.problem(self.display(relative), "is listed in dataset.json but missing")
        return False

    def read(self, relative: str, what: str) -> Volume | None:
        try:
            volume = read_nifti(self.root / relative)
        except Unreadable as err:
            self.problem(self.display(relative), str(err))
            return None
        if volume.data.dtype.kind not in "biuf":
            self.problem(self.display(relative), f"{what} has unsupported data type {volume.data.dtype}")
            return None
        return volume

    # -- volumes --------------------------------------------------------------------------------

    def check_image(self, relative: str, volume: Volume) -> bool:
        """Dimensions, channels and finiteness of an image; True when its spatial shape is usable."""
        file = self.display(relative)
        shape = volume.shape
        usable = True
        if volume.data.ndim not in (3, 4):
            self.problem(file, f"image must be 3D, or 4D with one channel per modality, has shape {shape}")
            usable = False
        elif self.channels is not None:
            channels = shape[3] if volume.data.ndim == 4 else 1
            if channels != self.channels:
                self.problem(file, f"image has {channels} channel(s) (shape {shape}) but dataset.json 'modality' "
                                   f"declares {self.channels}")
        if volume.data.dtype.kind == "f":
            nan, inf, first_nan, first_inf = count_nonfinite(volume.data)
            if nan:
                self.problem(file, f"image holds {nan} NaN voxel(s), the first at voxel {first_nan}")
            if inf:
                self.problem(file, f"image holds {inf} Inf voxel(s), the first at voxel {first_inf}")
        return usable

    def check_label(self, relative: str, volume: Volume, image_relative: str,
                    image_shape: tuple | None, image_affine: np.ndarray | None,
                    image_zooms: tuple | None) -> None:
        file = self.display(relative)
        shape = volume.shape
        if volume.data.ndim != 3:
            self.problem(file, f"label must be 3D, has shape {shape}")
        elif image_shape is not None and shape != image_shape[:3]:
            self.problem(file, f"label shape {shape} differs from the spatial shape {image_shape[:3]} of image "
                               f"{self.display(image_relative)}")
        if image_affine is not None and not np.allclose(volume.affine, image_affine,
                                                        rtol=AFFINE_RTOL, atol=AFFINE_ATOL):
            self.problem(file, self.affine_reason(volume.affine, image_affine, image_relative))
        elif image_zooms is not None and not np.allclose(volume.zooms, image_zooms):
            self.problem(file, f"label voxel spacing {_format_zooms(volume.zooms)} differs from the spacing "
                               f"{_format_zooms(image_zooms)} of image {self.display(image_relative)} (header pixdim; "
                               f"nnU-Net's --verify_dataset_integrity rejects any difference beyond numpy.allclose's "
                               f"defaults)")

        values, nonfinite, nonintegral, examples = scan_label_values(volume.data, volume.slope, volume.inter)
        if volume.data.dtype.kind == "f" and not (nonfinite or nonintegral):
            self.float_label_files[str(volume.data.dtype)] += 1
        if nonfinite:
            self.problem(file, f"label holds {nonfinite} NaN/Inf voxel(s)")
        if nonintegral:
            self.problem(file, f"label holds {nonintegral} non-integer voxel(s) (e.g. {_join_values(examples)}); "
                               f"labels must be whole numbers")
        if len(values) > LABEL_VALUES_LISTED:
            declared = "" if self.declared_labels is None else \
                f" (dataset.json 'labels' declares {_join_values(sorted(self.declared_labels))})"
            self.problem(file, f"label holds {len(values)} distinct values ({min(values)} to {max(values)}): it looks "
                               f"like an image, not a segmentation{declared}")
        elif self.declared_labels is not None:
            undeclared = sorted(values - self.declared_labels)
            if undeclared:
                self.problem(file, f"label value(s) {_join_values(undeclared)} not declared in dataset.json 'labels' "
                                   f"(declared: {_join_values(sorted(self.declared_labels))})")
        self.report.label_cases.update(values)

    def affine_reason(self, label_affine: np.ndarray, image_affine: np.ndarray, image_relative: str) -> str:
        difference = np.abs(label_affine - image_affine)
        row, col = (int(i) for i in np.unravel_index(np.argmax(difference), difference.shape))
        where = "origin" if col == 3 and row < 3 else "spacing/direction" if row < 3 else "bottom row"

        def spacing(a):
            return "(" + ", ".join(f"{v:g}" for v in np.linalg.norm(a[:3, :3], axis=0)) + ")"

        def origin(a):
            return "(" + ", ".join(f"{v:g}" for v in a[:3, 3]) + ")"

        return (f"label affine differs from that of image {self.display(image_relative)} beyond the tolerance "
                f"(rtol {AFFINE_RTOL:g}, atol {AFFINE_ATOL:g}): largest difference {difference[row, col]:g} "
                f"in the {where}; spacing {spacing(label_affine)} vs {spacing(image_affine)}, "
                f"origin {origin(label_affine)} vs {origin(image_affine)}")

    def check_cases(self, training: list[tuple[str, str]], test: list[str]) -> None:
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(training) + len(test), desc=self.root.name, unit="case", file=sys.stderr)
        try:
            self.training_cases_listed = len(training)
            for image_rel, label_rel in training:
                self.check_training_case(image_rel, label_rel)
                if bar is not None:
                    bar.update()
            for image_rel in test:
                if self.exists(image_rel) and self.read_test_images:
                    volume = self.read(image_rel, "image")
                    if volume is not None:
                        self.check_image(image_rel, volume)
                        self.report.test_images_checked += 1
                    del volume
                if bar is not None:
                    bar.update()
        finally:
            if bar is not None:
                bar.close()

    def check_training_case(self, image_rel: str, label_rel: str) -> None:
        image_shape = image_affine = image_zooms = None
        image_read = False
        if self.exists(image_rel):
            volume = self.read(image_rel, "image")
            if volume is not None:
                image_read = True
                if self.check_image(image_rel, volume):
                    image_shape, image_affine, image_zooms = volume.shape, volume.affine, volume.zooms
            del volume  # one volume in memory at a time
        if self.exists(label_rel):
            volume = self.read(label_rel, "label")
            if volume is not None:
                self.check_label(label_rel, volume, image_rel, image_shape, image_affine, image_zooms)
                self.labels_read += 1
                if image_read:
                    self.report.training_cases_checked += 1
            del volume

    def check_foreground(self) -> None:
        """A task must have something to segment: a declared foreground class that some training label holds.

        Without one, nothing downstream can work (no class to train, no class consistency to score), so it is a
        problem, not a note. Only judged when every training case's label was read: an unreadable label is
        already a problem and might have held the foreground."""
        if self.declared_labels is None:
            return
        foreground = sorted(self.declared_labels - {0})
        if not foreground:
            self.json_problem("'labels' declares only \"0\" (background): there is no class to segment")
            return
        if self.report.training_cases_checked == 0 or self.labels_read < self.training_cases_listed:
            return
        if not any(value != 0 for value in self.report.label_cases):
            declared = ", ".join(f"{v} {self.report.label_names.get(v, '')}".strip() for v in foreground)
            self.problem(self.display("labelsTr"),
                         f"every one of the {self.labels_read} training label file(s) holds only 0 (background), "
                         f"while dataset.json 'labels' declares {declared}: there is no class to segment (nnU-Net "
                         f"could learn nothing, class consistency has no class to score)")

    # -- notes ----------------------------------------------------------------------------------

    def add_notes(self, listed: list[str]) -> None:
        notes = self.report.notes
        for dtype, count in sorted(self.float_label_files.items()):
            notes.append(f"{count} label file(s) stored as {dtype} with whole-number values "
                         f"(accepted, as in MSD Colon)")
        if self.declared_labels is not None and self.report.training_cases_checked:
            never = sorted(self.declared_labels - set(self.report.label_cases))
            if never:
                notes.append(f"declared label(s) {_join_values(never)} appear in no training case (other "
                             f"classes do; a class no case holds cannot be learnt or scored)")
        name = self.root.resolve().name
        prefix, _, rest = name.partition("_")
        if not (prefix.startswith("Task") and prefix[4:].isdigit() and rest and "_" not in rest):
            notes.append(f"folder name {name!r} is not of the form TaskNN_Name, which nnUNetv2_convert_MSD_dataset "
                         f"needs")
        listed_set = set(listed)
        for folder in MSD_FOLDERS:
            path = self.root / folder
            if not path.is_dir():
                continue
            unlisted = [name for name in os.listdir(path)
                        if name.endswith(".nii.gz") and not name.startswith((".", "_"))
                        and os.path.join(folder, name) not in listed_set]
            if unlisted:
                notes.append(f"{len(unlisted)} .nii.gz file(s) in {folder}/ not listed in dataset.json were not "
                             f"checked (nnUNetv2_convert_MSD_dataset would still convert them), "
                             f"e.g. {sorted(unlisted)[0]}")
