"""Seeded synthetic CT segmentation tasks written in the exact Medical Segmentation Decathlon layout.

This is the embedded demo of the benchmark: four small tasks that mimic the structure of the MSD
tasks the paper transfers between (Liver, Lung, Pancreas, Spleen) and are small enough that the whole
pipeline (nnU-Net conversion, preprocessing, ~20 tiny trainings) runs on a laptop. ``docs/demo-data.md``
explains every choice (HU values, spacing, shapes, why the choice of source model should matter).

Conventions:

* Arrays are in nibabel order ``[x, y, z]``. The NIfTI affine is ``diag(-sx, -sy, sz)`` (voxel axes
  point to the patient's Left, Posterior and Superior, i.e. LPS like DICOM), so SimpleITK and nnU-Net
  read an identity direction, spacing ``(sx, sy, sz)`` and arrays ``[z, y, x]``.
* Spacing is ``1.5 x 1.5 x 3.0`` mm; the in-plane spacing jitters by at most 0.03 mm per case, z never.
* Images are int16 Hounsfield units, labels uint8 with the MSD label values of the task.
* Everything about case ``i`` of a task is a function of ``(seed, task_id, i)`` alone: the same seed
  gives identical arrays and byte-identical ``.nii.gz`` files (gzip is written with ``mtime=0``), and
  a case does not change when other tasks or more cases are generated.
* Training case ``i`` has no lesion when ``i % 5 == 1`` (Liver and Pancreas), so any task with at least
  two cases has a lesion-free case, like MSD Liver (tumour in 118 of 131 cases).
"""
from __future__ import annotations

import gzip
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from .. import __version__
from .anatomy import Grid, Painter, draw_abdomen, draw_shared_anatomy, draw_thorax, place_lesions, smooth_noise

#: Nominal voxel spacing (x, y, z) in mm. z is coarser, as in MSD CT (in-plane < 1 mm, z 1-5 mm).
SPACING_MM = (1.5, 1.5, 3.0)
#: Largest per-case change of the in-plane spacing in mm (x and y change together; z never changes).
INPLANE_SPACING_JITTER_MM = 0.03
#: Nominal volume shape (x, y, z) in voxels: 114,688 voxels, a 96 x 84 x 96 mm field of view.
DEFAULT_SHAPE = (64, 56, 32)
#: Largest per-case change of each dimension when ``shape`` is not given (100k-130k voxels).
SHAPE_JITTER = (2, 2, 2)
#: Smallest shape accepted, so that every organ and lesion still spans several voxels.
MIN_SHAPE = (24, 24, 12)
#: Unlabelled cases written to ``imagesTs/`` for every task.
NUM_TEST_CASES = 2

_HU_MIN, _HU_MAX = -1024, 3071  # int16 range used by CT scanners (12-bit data, air at -1024)


@dataclass(frozen=True)
class SyntheticTask:
    """One synthetic MSD-style task.

    ``labels[k]`` is the name of label value ``k``. The organ (if any) is label 1 and the lesion (if
    any) is the last label, as in MSD (Liver: 1 liver, 2 cancer; Lung: 1 cancer).
    """

    task_id: int
    name: str  # no underscore: nnU-Net's MSD converter splits "TaskNN_Name" on "_"
    prefix: str  # file prefix, e.g. "liver" -> imagesTr/liver_0.nii.gz
    labels: tuple[str, ...]
    region: str  # "abdomen" or "thorax": which shared anatomy the volume shows
    organ: str | None  # anatomy drawn as label 1, or None
    lesion: str | None  # "hypodense" (inside the organ) or "nodule" (inside the lungs), or None
    lesions_per_case: tuple[int, int] = (0, 0)  # inclusive range for a case with lesions
    lesion_radius_mm: tuple[float, float] = (0.0, 0.0)
    lesion_contrast_hu: tuple[float, float] = (40.0, 70.0)  # hypodense lesions: HU below the organ's mean
    lesion_free_every: int = 0  # training case i has no lesion when i % lesion_free_every == 1
    # The labelled organ is drawn this much larger than in the other tasks' scenes (linear factor), so
    # that a tiny network learns it within the demo's few hundred iterations (docs/demo-data.md).
    organ_scale: float = 1.0
    description: str = ""

    def __post_init__(self) -> None:
        if "_" in self.name or not self.name.isalnum():
            raise ValueError(f"task name must be alphanumeric without '_': {self.name!r}")
        if self.labels[0] != "background":
            raise ValueError("label 0 must be 'background'")
        if self.region not in ("abdomen", "thorax"):
            raise ValueError(f"unknown region {self.region!r}")
        expected = 1 + (self.organ is not None) + (self.lesion is not None)
        if len(self.labels) != expected:
            raise ValueError(f"{self.name}: {len(self.labels)} labels for organ={self.organ}, lesion={self.lesion}")

    @property
    def folder_name(self) -> str:
        """MSD folder name, e.g. ``Task91_SynthLiver``."""
        return f"Task{self.task_id:02d}_{self.name}"

    @property
    def labels_json(self) -> dict[str, str]:
        """The ``labels`` entry of ``dataset.json``: ``{"0": "background", ...}``."""
        return {str(value): name for value, name in enumerate(self.labels)}

    @property
    def organ_label(self) -> int | None:
        return 1 if self.organ is not None else None

    @property
    def lesion_label(self) -> int | None:
        return len(self.labels) - 1 if self.lesion is not None else None

    def case_has_lesion(self, case_index: int) -> bool:
        """Whether case ``case_index`` contains a lesion (fixed rule, see the module docstring)."""
        if self.lesion is None:
            return False
        return not (self.lesion_free_every > 0 and case_index % self.lesion_free_every == 1)


DEMO_TASKS: tuple[SyntheticTask, ...] = (
    SyntheticTask(
        task_id=91, name="SynthLiver", prefix="liver", labels=("background", "liver", "cancer"),
        region="abdomen", organ="liver", lesion="hypodense", lesions_per_case=(1, 3),
        lesion_radius_mm=(6.0, 11.0), lesion_contrast_hu=(70.0, 110.0), lesion_free_every=5,
        description="Synthetic stand-in for MSD Task03_Liver: large enhancing organ with hypodense lesions",
    ),
    SyntheticTask(
        task_id=92, name="SynthLung", prefix="lung", labels=("background", "cancer"),
        region="thorax", organ=None, lesion="nodule", lesions_per_case=(1, 3),
        lesion_radius_mm=(6.0, 9.0), lesion_free_every=0,
        description="Synthetic stand-in for MSD Task06_Lung: solid nodules in dark lung fields (lesion only)",
    ),
    SyntheticTask(
        task_id=93, name="SynthPancreas", prefix="pancreas", labels=("background", "pancreas", "cancer"),
        region="abdomen", organ="pancreas", lesion="hypodense", lesions_per_case=(1, 1),
        lesion_radius_mm=(6.0, 10.0), lesion_contrast_hu=(70.0, 110.0), lesion_free_every=5, organ_scale=1.5,
        description="Synthetic stand-in for MSD Task07_Pancreas: small elongated organ with a hypodense lesion",
    ),
    SyntheticTask(
        task_id=94, name="SynthSpleen", prefix="spleen", labels=("background", "spleen"),
        region="abdomen", organ="spleen", lesion=None, organ_scale=1.8,
        description="Synthetic stand-in for MSD Task09_Spleen: large homogeneous organ (organ only)",
    ),
)


def get_task(name: str | SyntheticTask) -> SyntheticTask:
    """Look a demo task up by folder name (``Task91_SynthLiver``), name (``SynthLiver``) or prefix."""
    if isinstance(name, SyntheticTask):
        return name
    for task in DEMO_TASKS:
        if name in (task.folder_name, task.name, task.prefix):
            return task
    known = ", ".join(task.folder_name for task in DEMO_TASKS)
    raise KeyError(f"unknown synthetic task {name!r}; known: {known}")


@dataclass(frozen=True)
class SyntheticCase:
    """One generated case. ``image``/``label`` are ``[x, y, z]``; ``anatomy`` holds boolean masks of
    the drawn structures (not written to disk; for tests and documentation)."""

    image: np.ndarray  # int16 HU
    label: np.ndarray  # uint8
    spacing: tuple[float, float, float]  # mm, (x, y, z)
    affine: np.ndarray  # 4 x 4, nibabel convention
    has_lesion: bool
    anatomy: dict[str, np.ndarray]


# ----------------------------------------------------------------------------------------------
# Cases
# ----------------------------------------------------------------------------------------------


_PARTIAL_VOLUME_SIGMA = (0.55, 0.55, 0.35)  # voxels


def _blur_gain(sigma) -> float:
    """Std of white unit noise after ``ndimage.gaussian_filter(..., sigma)`` (away from the borders)."""
    gain = 1.0
    for s in sigma:
        radius = int(4.0 * s + 0.5)  # gaussian_filter's default truncate=4.0
        w = np.exp(-0.5 * (np.arange(-radius, radius + 1) / s) ** 2)
        gain *= float(np.sqrt(np.sum((w / w.sum()) ** 2)))
    return gain


def _case_geometry(rng, shape):
    if shape is None:
        jitter = [int(rng.integers(-j, j + 1)) for j in SHAPE_JITTER]
        shape = tuple(n + d for n, d in zip(DEFAULT_SHAPE, jitter))
    else:
        shape = tuple(int(n) for n in shape)
        if len(shape) != 3 or any(n < m for n, m in zip(shape, MIN_SHAPE)):
            raise ValueError(f"shape must be 3 integers >= {MIN_SHAPE}, got {shape}")
    inplane = round(SPACING_MM[0] + float(rng.uniform(-1, 1)) * INPLANE_SPACING_JITTER_MM, 3)
    spacing = (inplane, inplane, SPACING_MM[2])
    return shape, spacing


def _affine(shape, spacing) -> np.ndarray:
    """LPS voxel axes (identity direction in ITK), origin chosen so the volume centre is at 0."""
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    affine[:3, 3] = [(shape[0] - 1) / 2 * spacing[0], (shape[1] - 1) / 2 * spacing[1], -(shape[2] - 1) / 2 * spacing[2]]
    return affine


def generate_case(task: SyntheticTask | str, seed: int, case_index: int, shape=None) -> SyntheticCase:
    """Generate case ``case_index`` of ``task``; a pure function of ``(seed, task.task_id, case_index)``.

    Args:
        task: a ``SyntheticTask`` or a name accepted by ``get_task``.
        seed: non-negative integer.
        case_index: the number in the file name (``liver_3`` is case 3); decides lesion presence.
        shape: ``(x, y, z)`` voxels for an exact size; ``None`` gives ``DEFAULT_SHAPE`` +- ``SHAPE_JITTER``.

    Returns:
        A ``SyntheticCase`` with ``image`` int16 HU ``[x, y, z]`` and ``label`` uint8 ``[x, y, z]``.
    """
    task = get_task(task)
    if seed < 0 or case_index < 0:
        raise ValueError("seed and case_index must be non-negative")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), task.task_id, int(case_index)]))
    shape, spacing = _case_geometry(rng, shape)
    grid = Grid(shape, spacing)
    fields = {  # smooth unit-std random fields (sigma in mm); which ones depends only on the region
        "body": smooth_noise(rng, shape, 15.0, spacing),  # body outline wobble
        "organ_shape": smooth_noise(rng, shape, 7.0, spacing),  # organ outline wobble
        "texture": smooth_noise(rng, shape, 4.0, spacing),  # low-frequency organ texture
        "fine": smooth_noise(rng, shape, 1.6, spacing),  # lobulation, lung texture, lesion outlines
        "bias": smooth_noise(rng, shape, 30.0, spacing),  # smooth intensity variation
    }
    if task.region == "abdomen":
        fields["bowel"] = smooth_noise(rng, shape, 3.0, spacing)  # mesenteric fat / bowel gas
    else:
        fields["lung_vessels"] = smooth_noise(rng, shape, (1.0, 1.0, 4.0), spacing)  # tubes along z
    painter = Painter(shape, fields["texture"])
    shared = draw_shared_anatomy(rng, grid, painter, task.region, fields)
    if task.region == "abdomen":
        organs = draw_abdomen(rng, grid, painter, shared, fields,
                               scale={task.organ: task.organ_scale} if task.organ else None)
    else:
        organs = draw_thorax(rng, grid, painter, shared, fields)

    label = np.zeros(shape, dtype=np.uint8)
    organ_mask = organs[task.organ] if task.organ is not None else None
    if organ_mask is not None:
        label[organ_mask] = task.organ_label
    lesion = np.zeros(shape, dtype=bool)
    has_lesion = task.case_has_lesion(case_index)
    if has_lesion:
        count = int(rng.integers(task.lesions_per_case[0], task.lesions_per_case[1] + 1))
        if task.lesion == "hypodense":
            lesion = place_lesions(rng, grid, organ_mask, count, task.lesion_radius_mm, fields["fine"], margin_mm=-1.0)
            contrast = rng.uniform(*task.lesion_contrast_hu)
            painter.fill(lesion, organs["organ_hu"][task.organ] - contrast, 8.0, fields["fine"])
        else:  # solid nodule: soft-tissue density inside the lung parenchyma, away from the pleura
            host = organs["lungs"] & ~organs["lung_vessels"]
            lesion = place_lesions(rng, grid, host, count, task.lesion_radius_mm, fields["fine"], margin_mm=1.5)
            painter.fill(lesion, rng.uniform(10, 50), 10.0, fields["fine"])
        label[lesion] = task.lesion_label

    # Smooth intensity variation inside the body and quantum noise, then one blur that both mimics the
    # partial-volume effect and correlates the noise (as CT reconstruction does). The noise amplitude
    # is set so that its std *after* the blur is noise_sd.
    hu = painter.hu
    body = shared["body"]
    hu[body] += rng.uniform(5.0, 12.0) * fields["bias"][body]
    noise_sd = rng.uniform(10.0, 20.0)
    hu += (noise_sd / _blur_gain(_PARTIAL_VOLUME_SIGMA)) * rng.standard_normal(shape, dtype=np.float32)
    hu = ndimage.gaussian_filter(hu, sigma=_PARTIAL_VOLUME_SIGMA)
    image = np.clip(np.rint(hu), _HU_MIN, _HU_MAX).astype(np.int16)

    anatomy = {k: v for k, v in {**shared, **organs}.items() if isinstance(v, np.ndarray) and v.dtype == bool}
    anatomy["lesion"] = lesion
    return SyntheticCase(image=image, label=label, spacing=spacing, affine=_affine(shape, spacing),
                         has_lesion=bool(lesion.any()), anatomy=anatomy)


# ----------------------------------------------------------------------------------------------
# Writing MSD folders
# ----------------------------------------------------------------------------------------------


def _write_nifti_gz(path: Path, array: np.ndarray, affine: np.ndarray) -> None:
    """Write ``.nii.gz`` byte-reproducibly: serialise in memory, gzip with ``mtime=0`` and no file name."""
    image = nib.Nifti1Image(array, affine)
    image.header.set_data_dtype(array.dtype)
    image.header.set_xyzt_units("mm", "sec")
    image.header["descrip"] = b"ccfv synthetic demo"
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    path.write_bytes(gzip.compress(image.to_bytes(), compresslevel=6, mtime=0))


def _dataset_json(task: SyntheticTask, train_ids: Sequence[int], test_ids: Sequence[int], seed: int) -> dict:
    """``dataset.json`` with the MSD keys in MSD order."""
    return {
        "name": task.name,
        "description": task.description,
        "reference": "ccfv synthetic demo data (ccfv.data.synthetic), generated, not acquired",
        "licence": "CC0 1.0",
        "release": f"ccfv {__version__}, seed {seed}",
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": task.labels_json,
        "numTraining": len(train_ids),
        "numTest": len(test_ids),
        "training": [
            {"image": f"./imagesTr/{task.prefix}_{i}.nii.gz", "label": f"./labelsTr/{task.prefix}_{i}.nii.gz"}
            for i in train_ids
        ],
        "test": [f"./imagesTs/{task.prefix}_{i}.nii.gz" for i in test_ids],
    }


def write_task(task: SyntheticTask | str, root: str | os.PathLike, n_cases: int, seed: int, shape=None,
               *, overwrite: bool = False) -> Path:
    """Write ``root/TaskNN_Name/`` in MSD layout and return its path.

    Training cases are numbered ``0 .. n_cases-1`` (``imagesTr/`` and ``labelsTr/``), the
    ``NUM_TEST_CASES`` unlabelled cases continue the numbering (``imagesTs/``).

    The folder is built in a hidden temporary sibling (``root/.TaskNN_Name.tmp-*``) and renamed into
    place, so a crash never leaves a half-written task (only, after a hard kill, a hidden temp folder).
    An existing task folder is refused with ``FileExistsError`` unless ``overwrite=True``, which
    replaces it after the new one is complete.
    """
    task = get_task(task)
    if n_cases < 1:
        raise ValueError("n_cases must be >= 1")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / task.folder_name
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final} exists; pass overwrite=True to replace it")

    train_ids = list(range(n_cases))
    test_ids = list(range(n_cases, n_cases + NUM_TEST_CASES))
    tmp = Path(tempfile.mkdtemp(prefix=f".{task.folder_name}.tmp-", dir=root))
    try:
        for sub in ("imagesTr", "labelsTr", "imagesTs"):
            (tmp / sub).mkdir()
        for i in train_ids + test_ids:
            case = generate_case(task, seed, i, shape)
            split = "Tr" if i < n_cases else "Ts"
            _write_nifti_gz(tmp / f"images{split}" / f"{task.prefix}_{i}.nii.gz", case.image, case.affine)
            if split == "Tr":
                _write_nifti_gz(tmp / "labelsTr" / f"{task.prefix}_{i}.nii.gz", case.label, case.affine)
        text = json.dumps(_dataset_json(task, train_ids, test_ids, seed), indent=4) + "\n"
        (tmp / "dataset.json").write_text(text, encoding="utf-8")
        os.chmod(tmp, 0o755)  # mkdtemp creates 0700
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{task.folder_name}.old-", dir=root))
            os.rename(final, old / task.folder_name)
            os.rename(tmp, final)
            shutil.rmtree(old)
        else:
            os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def write_demo(root: str | os.PathLike, n_cases: int = 10, seed: int = 0, tasks: Iterable | None = None,
               *, shape=None, overwrite: bool = False) -> list[Path]:
    """Write every demo task (or the named subset, in the order given) under ``root``.

    ``tasks`` items may be ``SyntheticTask`` objects or names accepted by ``get_task``. A task's data
    do not depend on which other tasks are written. Returns the task folders.
    """
    chosen = DEMO_TASKS if tasks is None else tuple(get_task(t) for t in tasks)
    return [write_task(task, root, n_cases, seed, shape, overwrite=overwrite) for task in chosen]
