"""Tests for ccfv.data.synthetic: the seeded MSD-layout demo tasks (see docs/demo-data.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from ccfv.data import synthetic
from ccfv.data.synthetic import DEMO_TASKS, NUM_TEST_CASES, generate_case, get_task, write_demo, write_task

N_CASES = 6  # cases 0..5: case 1 is the lesion-free one of Liver and Pancreas
SEED = 3
MSD_KEYS = [
    "name", "description", "reference", "licence", "release", "tensorImageSize", "modality", "labels",
    "numTraining", "numTest", "training", "test",
]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The four demo tasks written once; returns (root, {folder name: path})."""
    root = tmp_path_factory.mktemp("msd")
    paths = write_demo(root, n_cases=N_CASES, seed=SEED)
    return root, {p.name: p for p in paths}


@pytest.fixture(scope="module")
def cases(demo):
    """{folder name: [(image nifti, label nifti, image array, label array), ...]} for the training cases."""
    _, paths = demo
    loaded = {}
    for name, folder in paths.items():
        meta = json.loads((folder / "dataset.json").read_text())
        rows = []
        for entry in meta["training"]:
            img = nib.load(folder / entry["image"])
            lab = nib.load(folder / entry["label"])
            rows.append((img, lab, np.asarray(img.dataobj), np.asarray(lab.dataobj)))
        loaded[name] = rows
    return loaded


def _task_named(name: str):
    return next(t for t in DEMO_TASKS if t.folder_name == name)


def _raw_arrays(folder: Path) -> dict[str, np.ndarray]:
    return {
        str(p.relative_to(folder)): np.asarray(nib.load(p).dataobj)
        for p in sorted(folder.rglob("*.nii.gz"))
    }


# ---------------------------------------------------------------------------------------------
# Task definitions and layout
# ---------------------------------------------------------------------------------------------


def test_demo_tasks_mimic_the_msd_label_structure():
    by_name = {t.folder_name: t.labels_json for t in DEMO_TASKS}
    assert by_name["Task91_SynthLiver"] == {"0": "background", "1": "liver", "2": "cancer"}
    assert by_name["Task92_SynthLung"] == {"0": "background", "1": "cancer"}
    assert by_name["Task93_SynthPancreas"] == {"0": "background", "1": "pancreas", "2": "cancer"}
    assert by_name["Task94_SynthSpleen"] == {"0": "background", "1": "spleen"}
    assert get_task("SynthLiver") is get_task("Task91_SynthLiver") is get_task("liver")
    with pytest.raises(KeyError):
        get_task("Task03_Liver")


def test_layout_and_dataset_json_follow_msd(demo):
    root, paths = demo
    assert sorted(p.name for p in root.iterdir()) == sorted(t.folder_name for t in DEMO_TASKS)
    for name, folder in paths.items():
        task = _task_named(name)
        assert sorted(p.name for p in folder.iterdir()) == ["dataset.json", "imagesTr", "imagesTs", "labelsTr"]
        meta = json.loads((folder / "dataset.json").read_text())
        assert list(meta) == MSD_KEYS
        for key in ("name", "description", "reference", "licence", "release"):
            assert isinstance(meta[key], str) and meta[key]
        assert meta["tensorImageSize"] == "3D"
        assert meta["modality"] == {"0": "CT"}
        assert meta["labels"] == task.labels_json
        assert meta["labels"]["0"] == "background"
        assert all(isinstance(k, str) and k.isdigit() for k in meta["labels"])
        assert isinstance(meta["numTraining"], int) and isinstance(meta["numTest"], int)
        assert meta["numTraining"] == len(meta["training"]) == N_CASES
        assert meta["numTest"] == len(meta["test"]) == NUM_TEST_CASES

        images_tr = sorted(p.name for p in (folder / "imagesTr").iterdir())
        labels_tr = sorted(p.name for p in (folder / "labelsTr").iterdir())
        images_ts = sorted(p.name for p in (folder / "imagesTs").iterdir())
        assert images_tr == labels_tr and len(images_tr) == meta["numTraining"]
        assert len(images_ts) == meta["numTest"]
        assert not set(images_tr) & set(images_ts)

        listed = set()
        for entry in meta["training"]:
            assert set(entry) == {"image", "label"}
            assert entry["image"].startswith("./imagesTr/") and entry["label"].startswith("./labelsTr/")
            assert Path(entry["image"]).name == Path(entry["label"]).name
            assert Path(entry["image"]).name.startswith(f"{task.prefix}_")
            assert (folder / entry["image"]).is_file() and (folder / entry["label"]).is_file()
            listed |= {entry["image"], entry["label"]}
        for path in meta["test"]:
            assert isinstance(path, str) and path.startswith("./imagesTs/") and (folder / path).is_file()
            listed.add(path)
        on_disk = {f"./{p.relative_to(folder)}" for p in folder.rglob("*.nii.gz")}
        assert on_disk == listed  # every file listed, every listed file present


# ---------------------------------------------------------------------------------------------
# Geometry and content
# ---------------------------------------------------------------------------------------------


def test_image_and_label_share_shape_affine_and_have_msd_dtypes(cases):
    for rows in cases.values():
        for img, lab, image, label in rows:
            assert image.ndim == 3 and image.shape == label.shape
            np.testing.assert_allclose(img.affine, lab.affine, atol=1e-6)
            assert img.header.get_data_dtype() == np.int16 and image.dtype == np.int16
            assert lab.header.get_data_dtype() == np.uint8 and label.dtype == np.uint8


def test_labels_are_declared_integers_and_every_label_occurs(cases):
    for name, rows in cases.items():
        declared = {int(k) for k in _task_named(name).labels_json}
        seen = set()
        for _, _, _, label in rows:
            values = set(np.unique(label).tolist())
            assert values <= declared, (name, values)
            seen |= values
        assert seen == declared, (name, seen)


def test_spacing_is_anisotropic_and_shapes_small_varied_not_cubic(cases):
    for rows in cases.values():
        shapes = set()
        for img, _, image, _ in rows:
            sx, sy, sz = (float(v) for v in img.header.get_zooms())
            assert sx == pytest.approx(sy)
            assert abs(sx - 1.5) <= 0.031 and sz == pytest.approx(3.0)
            assert sz > 1.5 * sx  # z is the coarse axis
            nx, ny, nz = image.shape
            assert nz < ny < nx  # x, y, z order, not cubic
            assert 90_000 <= image.size <= 150_000
            assert nib.aff2axcodes(img.affine) == ("L", "P", "S")
            shapes.add(image.shape)
        assert len(shapes) > 1  # per-case jitter


def test_hu_values_are_plausible_in_written_images(cases):
    organ_means = {}
    for name, rows in cases.items():
        task = _task_named(name)
        for _, _, image, label in rows:
            assert image.min() >= -1024
            corner = image[:3, :3, :].astype(float)  # outside the elliptical body
            assert -1010 <= corner.mean() <= -990
            assert image.max() >= 400  # spine
            if task.organ_label is not None:
                organ = image[label == task.organ_label].astype(float)
                assert 50 <= organ.mean() <= 150, (name, organ.mean())
                organ_means.setdefault(name, []).append(organ.mean())
            if task.lesion == "hypodense" and (label == task.lesion_label).any():
                lesion = image[label == task.lesion_label].astype(float).mean()
                # lesion_contrast_hu (70-110 HU below the organ), less the blur's partial-volume loss
                low, high = task.lesion_contrast_hu
                assert 0.5 * low <= organ.mean() - lesion <= high, (name, organ.mean(), lesion)
            if task.lesion == "nodule":
                nodule = label == task.lesion_label
                ring = ndimage.binary_dilation(nodule, iterations=3) & ~ndimage.binary_dilation(nodule)
                assert image[nodule].mean() - image[ring].mean() >= 300  # bright on dark lung
    # Liver and spleen: large organs of similar density (the related pair of the design).
    assert abs(np.mean(organ_means["Task91_SynthLiver"]) - np.mean(organ_means["Task94_SynthSpleen"])) <= 30


def test_tissue_hu_ranges_of_the_shared_anatomy():
    in_plane = np.zeros((3, 3, 3), dtype=bool)
    in_plane[:, 1, 1] = in_plane[1, :, 1] = True

    def erode(mask):  # in-plane erosion: away from partial-volume edges, keeps thin layers
        return ndimage.binary_erosion(mask, in_plane)

    for task in DEMO_TASKS:
        case = generate_case(task, SEED, 0)
        image, anatomy = case.image.astype(float), case.anatomy
        assert -130 <= image[erode(anatomy["subcutaneous_fat"])].mean() <= -70
        assert 20 <= image[erode(anatomy["muscle_wall"])].mean() <= 80
        assert 300 <= image[anatomy["bone"]].mean() <= 1000
        assert 700 <= np.percentile(image[anatomy["cortex"]], 90) <= 1100
        if task.region == "thorax":
            parenchyma = erode(anatomy["lungs"]) & ~anatomy["lung_vessels"] & ~anatomy["lesion"]
            assert -900 <= image[parenchyma].mean() <= -780
        else:
            for organ in ("liver", "spleen", "pancreas"):
                tissue = erode(anatomy[organ]) & ~anatomy["lesion"]
                assert 50 <= image[tissue].mean() <= 150, (task.name, organ)
    # quantum noise: residual std in a homogeneous region (air, before clipping matters)
    air = generate_case(DEMO_TASKS[0], SEED, 0).image[:4, :4, :].astype(float)
    assert 3 <= air.std() <= 25


def test_liver_and_pancreas_have_cases_with_and_without_lesion(cases):
    for name in ("Task91_SynthLiver", "Task93_SynthPancreas"):
        task = _task_named(name)
        has = [bool((label == task.lesion_label).any()) for *_, label in cases[name]]
        organ = [bool((label == task.organ_label).any()) for *_, label in cases[name]]
        assert all(organ)
        assert any(has) and not all(has), (name, has)
        assert has[1] is False  # documented rule: case i has no lesion when i % 5 == 1
    assert all((label == 1).any() for *_, label in cases["Task92_SynthLung"])  # a nodule in every case


def test_lesions_lie_inside_their_organ(cases):
    for name in ("Task91_SynthLiver", "Task93_SynthPancreas"):
        task = _task_named(name)
        for *_, label in cases[name]:
            organ, lesion = label == task.organ_label, label == task.lesion_label
            if not lesion.any():
                continue
            near_organ = ndimage.binary_dilation(organ, iterations=3)
            assert near_organ[lesion].mean() >= 0.9
            components, n = ndimage.label(lesion)
            for k in range(1, n + 1):
                assert (ndimage.binary_dilation(components == k) & organ).any()  # each lesion touches organ


def test_foreground_is_a_small_fraction_of_voxels(cases):
    for name, rows in cases.items():
        task = _task_named(name)
        for *_, label in rows:
            assert (label > 0).mean() < 0.12
            if task.organ_label is not None:
                assert 0.001 < (label == task.organ_label).mean() < 0.10
            if task.lesion_label is not None:
                assert (label == task.lesion_label).mean() < 0.02


# ---------------------------------------------------------------------------------------------
# Determinism and atomic writes
# ---------------------------------------------------------------------------------------------


def test_same_seed_gives_identical_files_other_seed_differs(demo, tmp_path):
    _, paths = demo
    spleen = get_task("SynthSpleen")
    again = write_demo(tmp_path / "again", n_cases=N_CASES, seed=SEED, tasks=["SynthSpleen"])[0]
    other = write_task(spleen, tmp_path / "other", N_CASES, SEED + 1)
    reference = paths[spleen.folder_name]
    ref_arrays, again_arrays, other_arrays = _raw_arrays(reference), _raw_arrays(again), _raw_arrays(other)
    assert ref_arrays.keys() == again_arrays.keys() == other_arrays.keys()
    for key in ref_arrays:
        np.testing.assert_array_equal(ref_arrays[key], again_arrays[key])
        assert (reference / key).read_bytes() == (again / key).read_bytes()  # byte-identical .nii.gz
    assert any(not np.array_equal(ref_arrays[k], other_arrays[k]) for k in ref_arrays if k.startswith("images"))
    assert (reference / "dataset.json").read_bytes() == (again / "dataset.json").read_bytes()


def test_case_depends_only_on_seed_task_and_index():
    task = get_task("SynthPancreas")
    a = generate_case(task, 11, 4)
    b = generate_case(task, 11, 4)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.label, b.label)
    assert not np.array_equal(generate_case(task, 11, 5).image[:20, :20, :10], a.image[:20, :20, :10])
    fixed = generate_case(task, 11, 4, shape=(40, 36, 20))
    assert fixed.image.shape == fixed.label.shape == (40, 36, 20)
    with pytest.raises(ValueError):
        generate_case(task, 11, 4, shape=(16, 16, 8))


def test_existing_task_is_refused_unless_overwrite(tmp_path):
    task = get_task("SynthSpleen")
    first = write_task(task, tmp_path, 2, 0, shape=(32, 28, 16))
    before = _raw_arrays(first)
    with pytest.raises(FileExistsError):
        write_task(task, tmp_path, 2, 1, shape=(32, 28, 16))
    for key, array in _raw_arrays(first).items():
        np.testing.assert_array_equal(array, before[key])
    replaced = write_task(task, tmp_path, 3, 1, shape=(32, 28, 16), overwrite=True)
    assert replaced == first
    assert json.loads((first / "dataset.json").read_text())["numTraining"] == 3
    assert not np.array_equal(_raw_arrays(first)["imagesTr/spleen_0.nii.gz"], before["imagesTr/spleen_0.nii.gz"])
    assert [p.name for p in tmp_path.iterdir()] == [task.folder_name]  # no temp or backup folders left


def test_a_crash_leaves_no_partial_task(tmp_path, monkeypatch):
    task = get_task("SynthLiver")
    real_write = synthetic._write_nifti_gz
    calls = []

    def failing_write(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("disk full")
        return real_write(*args, **kwargs)

    monkeypatch.setattr(synthetic, "_write_nifti_gz", failing_write)
    with pytest.raises(RuntimeError, match="disk full"):
        write_task(task, tmp_path, 3, 0, shape=(32, 28, 16))
    assert list(tmp_path.iterdir()) == []

    monkeypatch.setattr(synthetic, "_write_nifti_gz", real_write)
    kept = write_task(task, tmp_path, 2, 0, shape=(32, 28, 16))
    before = _raw_arrays(kept)
    calls.clear()
    monkeypatch.setattr(synthetic, "_write_nifti_gz", failing_write)
    with pytest.raises(RuntimeError):
        write_task(task, tmp_path, 2, 5, shape=(32, 28, 16), overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == [task.folder_name]
    after = _raw_arrays(kept)
    assert after.keys() == before.keys()
    for key in before:
        np.testing.assert_array_equal(after[key], before[key])  # the old task survives a failed replace


# ---------------------------------------------------------------------------------------------
# Readers used by nnU-Net
# ---------------------------------------------------------------------------------------------


def test_simpleitk_reads_spacing_in_xyz_order_and_same_grid_for_label(demo, cases):
    sitk = pytest.importorskip("SimpleITK")
    _, paths = demo
    for name, folder in paths.items():
        meta = json.loads((folder / "dataset.json").read_text())
        for entry, (img, _, image, label) in zip(meta["training"], cases[name]):
            itk_image = sitk.ReadImage(str(folder / entry["image"]))
            itk_label = sitk.ReadImage(str(folder / entry["label"]))
            spacing = itk_image.GetSpacing()
            np.testing.assert_allclose(spacing, img.header.get_zooms(), rtol=1e-6)
            assert spacing[2] == max(spacing)  # (x, y, z): z is coarse
            assert itk_image.GetSize() == image.shape
            np.testing.assert_allclose(itk_image.GetDirection(), np.eye(3).ravel(), atol=1e-6)
            array = sitk.GetArrayFromImage(itk_image)  # [z, y, x]
            np.testing.assert_array_equal(array.transpose(2, 1, 0), image)
            np.testing.assert_array_equal(sitk.GetArrayFromImage(itk_label).transpose(2, 1, 0), label)
            np.testing.assert_allclose(itk_label.GetSpacing(), spacing)
            np.testing.assert_allclose(itk_label.GetOrigin(), itk_image.GetOrigin(), atol=1e-4)
            np.testing.assert_allclose(itk_label.GetDirection(), itk_image.GetDirection())


def test_nnunet_reader_sees_z_first_spacing(demo):
    pytest.importorskip("nnunetv2")
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    _, paths = demo
    folder = paths["Task91_SynthLiver"]
    image_file = folder / "imagesTr" / "liver_0.nii.gz"
    data, props = SimpleITKIO().read_images([str(image_file)])
    seg, seg_props = SimpleITKIO().read_seg(str(folder / "labelsTr" / "liver_0.nii.gz"))
    nx, ny, nz = nib.load(image_file).shape
    assert data.shape == seg.shape == (1, nz, ny, nx)
    sz, sy, sx = props["spacing"]
    assert sz == pytest.approx(3.0) and sy == pytest.approx(sx) and sz > sx
    assert seg_props["spacing"] == props["spacing"]


@pytest.mark.slow
def test_nnunet_msd_conversion_and_dataset_integrity(tmp_path):
    """nnUNetv2_convert_MSD_dataset + verify_dataset_integrity accept a task (about 20 s: worker spawns)."""
    pytest.importorskip("nnunetv2")
    task_dir = write_task("SynthPancreas", tmp_path / "msd", 2, 0, shape=(32, 28, 16))
    env = dict(os.environ)
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        env[var] = str(tmp_path / var)
        os.makedirs(env[var])
    script = tmp_path / "check.py"
    script.write_text(textwrap.dedent(f"""
        if __name__ == "__main__":
            from nnunetv2.dataset_conversion.convert_MSD_dataset import convert_msd_dataset
            from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity
            convert_msd_dataset({str(task_dir)!r}, num_processes=1)
            verify_dataset_integrity({str(tmp_path / "nnUNet_raw" / "Dataset093_SynthPancreas")!r}, num_processes=1)
    """))
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    converted = tmp_path / "nnUNet_raw" / "Dataset093_SynthPancreas"
    converted_images = sorted(p.name for p in (converted / "imagesTr").iterdir())
    assert converted_images == ["pancreas_0_0000.nii.gz", "pancreas_1_0000.nii.gz"]
    labels = json.loads((converted / "dataset.json").read_text())["labels"]
    assert labels == {"background": 0, "pancreas": 1, "cancer": 2}
