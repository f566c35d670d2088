"""Tests for ccfv.data.validate: every check on a small synthetic MSD task, broken one way at a time."""

from __future__ import annotations

import gzip
import json
import pickle
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ccfv.data.synthetic import write_task
from ccfv.data.validate import DatasetError, Problem, check_task, validate_command, validate_or_raise, validate_task

SHAPE = (24, 24, 12)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    """Task91_SynthLiver: 3 training cases (labels 0, 1, 2), 2 test images, written once."""
    return write_task("SynthLiver", tmp_path_factory.mktemp("pristine"), n_cases=3, seed=0, shape=SHAPE)


@pytest.fixture
def task(pristine, tmp_path) -> Path:
    """A private copy of the pristine task for one test to break."""
    return Path(shutil.copytree(pristine, tmp_path / pristine.name))


def load_json(task: Path) -> dict:
    return json.loads((task / "dataset.json").read_text())


def save_json(task: Path, spec: dict) -> None:
    (task / "dataset.json").write_text(json.dumps(spec, indent=4))


def save_nifti(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> None:
    if affine is None:
        affine = np.diag([1.5, 1.5, 3.0, 1.0])
    nib.save(nib.Nifti1Image(array, affine), str(path))


def load(path: Path) -> nib.Nifti1Image:
    return nib.load(str(path))


def only(problems: list[Problem], *words: str) -> Problem:
    """The single problem whose text holds every word."""
    hits = [p for p in problems if all(w in str(p) for w in words)]
    assert len(hits) == 1, f"expected one problem with {words}, got: {[str(p) for p in problems]}"
    return hits[0]


# ----------------------------------------------------------------------------------------------
# A valid task
# ----------------------------------------------------------------------------------------------


def test_valid_synthetic_task_passes(pristine):
    report = check_task(pristine)
    assert report.problems == []
    assert report.ok
    assert report.training_cases_checked == 3
    assert report.test_images_checked == 2
    assert set(report.label_cases) == {0, 1, 2}
    assert report.label_cases[0] == 3
    assert validate_task(pristine) == []
    assert validate_or_raise(pristine).ok
    summary = report.summary()
    assert summary.startswith(f"OK {pristine}: 3 training case(s) and 2 test image(s) checked")
    assert "0 background (3 cases)" in summary and "1 liver" in summary and "2 cancer" in summary


def test_problem_str_and_dataset_error_message():
    problem = Problem("T/labelsTr/a.nii.gz", "label value(s) 3 not declared")
    assert str(problem) == "T/labelsTr/a.nii.gz: label value(s) 3 not declared"
    err = DatasetError("T", [problem, Problem("T/dataset.json", "missing required key 'name'")])
    assert isinstance(err, ValueError)
    assert str(err).splitlines() == ["2 problem(s) in T", "T/labelsTr/a.nii.gz: label value(s) 3 not declared",
                                     "T/dataset.json: missing required key 'name'"]
    copy = pickle.loads(pickle.dumps(err))
    assert str(copy) == str(err) and copy.problems == err.problems and copy.task_dir == "T"


def test_appledouble_and_unlisted_files_are_ignored(task):
    (task / "imagesTr" / "._liver_0.nii.gz").write_bytes(b"\x00\x05\x16\x07AppleDouble junk")
    (task / "labelsTr" / "._liver_0.nii.gz").write_bytes(b"\x00\x05\x16\x07AppleDouble junk")
    (task / "._dataset.json").write_bytes(b"\x00\x05\x16\x07")
    (task / "imagesTr" / "extra_9.nii.gz").write_bytes(b"not even an image")  # unlisted: not checked
    report = check_task(task)
    assert report.problems == []
    assert any("1 .nii.gz file(s) in imagesTr/ not listed" in note and "extra_9.nii.gz" in note
               for note in report.notes)
    assert "._liver_0" not in report.summary()


def test_listing_an_appledouble_file_is_a_problem(task):
    spec = load_json(task)
    spec["training"][0]["image"] = "./imagesTr/._liver_0.nii.gz"
    save_json(task, spec)
    problem = only(validate_task(task), "training[0].image")
    assert problem.file == str(task / "dataset.json")
    assert "AppleDouble" in problem.reason


def test_multimodal_4d_image_passes_and_channel_count_is_checked(task):
    image = load(task / "imagesTr" / "liver_0.nii.gz")
    four_d = np.stack([np.asarray(image.dataobj)] * 2, axis=-1)
    save_nifti(task / "imagesTr" / "liver_0.nii.gz", four_d, image.affine)
    problem = only(validate_task(task), "channel")
    assert problem.file == str(task / "imagesTr" / "liver_0.nii.gz")
    assert "2 channel(s)" in problem.reason and "declares 1" in problem.reason

    spec = load_json(task)
    spec["modality"] = {"0": "T2", "1": "ADC"}
    spec["tensorImageSize"] = "4D"
    save_json(task, spec)
    problems = validate_task(task)
    # Now the 4D case is right and every 3D image has too few channels (2 more training, 2 test).
    assert all("1 channel(s)" in p.reason for p in problems) and len(problems) == 4
    assert str(task / "imagesTr" / "liver_0.nii.gz") not in {p.file for p in problems}


def test_float_labels_with_whole_values_are_accepted_with_a_note(task):
    path = task / "labelsTr" / "liver_1.nii.gz"
    label = load(path)
    save_nifti(path, np.asarray(label.dataobj).astype(np.float32), label.affine)
    report = check_task(task)
    assert report.problems == []
    assert any("1 label file(s) stored as float32" in note for note in report.notes)
    assert "float32" in report.summary()


def test_release_misspelt_as_in_msd_is_accepted(task):
    spec = load_json(task)
    spec["relase"] = spec.pop("release")
    save_json(task, spec)
    report = check_task(task)
    assert report.problems == []
    assert any("relase" in note for note in report.notes)


def test_affines_within_tolerance_agree(task):
    path = task / "labelsTr" / "liver_0.nii.gz"
    label = load(path)
    affine = label.affine.copy()
    affine[0, 3] += 5e-4  # below the 1e-3 mm absolute tolerance
    save_nifti(path, np.asarray(label.dataobj), affine)
    assert validate_task(task) == []


# ----------------------------------------------------------------------------------------------
# dataset.json
# ----------------------------------------------------------------------------------------------


def test_missing_dataset_json(task):
    (task / "dataset.json").unlink()
    problems = validate_task(task)
    assert len(problems) == 1
    assert problems[0].file == str(task / "dataset.json")
    assert "missing" in problems[0].reason


def test_broken_json_names_line_and_column(task):
    text = (task / "dataset.json").read_text()
    (task / "dataset.json").write_text(text.replace('"numTest": 2,', '"numTest": 2', 1))
    problems = validate_task(task)
    assert len(problems) == 1
    problem = problems[0]
    assert problem.file == str(task / "dataset.json")
    line = next(i for i, row in enumerate(text.splitlines(), 1) if '"numTest"' in row) + 1
    assert "is not valid JSON" in problem.reason
    assert f"line {line}, column" in problem.reason


def test_truncated_json_reads_as_one_sentence(task):
    text = (task / "dataset.json").read_text()
    (task / "dataset.json").write_text(text[: text.index('"numTraining"') + 5])  # cut inside a string
    (problem,) = validate_task(task)
    assert "Unterminated string starting at line" in problem.reason and " at at " not in problem.reason


def test_dataset_json_that_is_not_an_object(task):
    (task / "dataset.json").write_text("[1, 2]")
    problem = only(validate_task(task), "dataset.json")
    assert "must hold a JSON object, holds an array" in problem.reason


def test_missing_key(task):
    spec = load_json(task)
    del spec["numTraining"]
    save_json(task, spec)
    problem = only(validate_task(task), "numTraining")
    assert problem.file == str(task / "dataset.json")
    assert problem.reason == "missing required key 'numTraining'"


def test_descriptive_keys_no_stage_reads_may_be_absent(task):
    """A user-made MSD-style task without reference, licence, release or description: accepted, noted."""
    spec = load_json(task)
    for key in ("reference", "licence", "release", "description"):
        del spec[key]
    save_json(task, spec)
    report = check_task(task)
    assert report.problems == []
    assert "dataset.json has no 'description', 'reference', 'licence', 'release' (descriptive MSD keys no stage " \
           "reads); accepted" in report.notes


def test_a_task_nested_in_a_folder_of_its_name_is_pointed_at(task, tmp_path):
    outer = tmp_path / "outer" / task.name
    shutil.move(str(task), str(outer / task.name))
    problem = only(validate_task(outer), "dataset.json")
    assert problem.file == str(outer / "dataset.json")
    assert problem.reason.startswith(f"missing; the task is one level down: {outer / task.name / 'dataset.json'}")
    assert problem.reason.endswith(f"pass {outer / task.name}")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "missing: every MSD task folder has a dataset.json" in only(validate_task(empty), "dataset.json").reason


def test_wrong_key_types(task):
    spec = load_json(task)
    spec["numTraining"] = "3"
    spec["modality"] = ["CT"]
    spec["labels"] = {"0": "background", "1": "liver", "two": "cancer"}
    save_json(task, spec)
    problems = validate_task(task)
    json_problems = [p for p in problems if p.file == str(task / "dataset.json")]
    assert len(json_problems) == 3
    assert only(problems, "numTraining").reason == "'numTraining' must be an integer, got string \"3\""
    assert "'modality' must be an object, got array" in only(problems, "'modality'").reason
    assert "'labels' key \"two\" must be a label value" in only(problems, "\"two\"").reason
    # The well-formed keys still declare 0 and 1, so the cases holding value 2 are reported too.
    undeclared = [p for p in problems if p.file != str(task / "dataset.json")]
    assert undeclared and all(p.reason.startswith("label value(s) 2 not declared") for p in undeclared)


def test_boolean_is_not_an_integer_and_labels_need_background(task):
    spec = load_json(task)
    spec["numTest"] = True
    spec["labels"] = {"1": "liver", "2": "cancer"}
    save_json(task, spec)
    problems = validate_task(task)
    assert "'numTest' must be an integer, got boolean true" in only(problems, "numTest").reason
    assert "'labels' must declare \"0\"" in only(problems, "background").reason


def test_label_names_must_be_unique(task):
    spec = load_json(task)
    spec["labels"]["2"] = "liver"
    save_json(task, spec)
    problem = only(validate_task(task), "'labels' name")
    assert problem.file == str(task / "dataset.json")
    assert "\"liver\" is given to values 1, 2; names must be unique" in problem.reason


def test_folder_name_not_taskNN_name_is_a_note(pristine, tmp_path):
    copy = Path(shutil.copytree(pristine, tmp_path / "my_liver_copy"))
    report = check_task(copy)
    assert report.problems == []
    assert any("not of the form TaskNN_Name" in note for note in report.notes)
    assert not any("TaskNN_Name" in note for note in check_task(pristine).notes)


def test_malformed_training_entries(task):
    spec = load_json(task)
    spec["training"][0] = {"image": "./imagesTr/liver_0.nii.gz"}
    spec["training"][1]["label"] = 7
    spec["test"][0] = "/abs/liver_3.nii.gz"
    save_json(task, spec)
    problems = validate_task(task)
    assert "training[0] has no \"label\"" in only(problems, "training[0]").reason
    assert "training[1].label must be a string path, got integer 7" in only(problems, "training[1]").reason
    assert "points outside the task folder" in only(problems, "test[0]").reason


def test_num_training_mismatch(task):
    spec = load_json(task)
    spec["numTraining"] = 5
    save_json(task, spec)
    problem = only(validate_task(task), "numTraining")
    assert problem.file == str(task / "dataset.json")
    assert problem.reason == "'numTraining' is 5 but 'training' lists 3 entries"


def test_num_test_mismatch(task):
    spec = load_json(task)
    spec["test"] = spec["test"][:1]
    save_json(task, spec)
    assert only(validate_task(task), "numTest").reason == "'numTest' is 2 but 'test' lists 1 entry"


def test_duplicate_listing(task):
    spec = load_json(task)
    spec["training"][2] = dict(spec["training"][0])
    spec["training"][2]["label"] = "./labelsTr/liver_2.nii.gz"
    save_json(task, spec)
    (task / "imagesTr" / "liver_0.nii.gz").write_bytes(b"junk")
    problems = validate_task(task)
    problem = only(problems, "training[2].image")
    assert "is already listed as training[0].image" in problem.reason
    # The twice-listed broken file is read twice but reported once.
    only(problems, "liver_0.nii.gz: is not a readable gzip file")


# ----------------------------------------------------------------------------------------------
# Files and volumes
# ----------------------------------------------------------------------------------------------


def test_listed_file_missing(task):
    (task / "labelsTr" / "liver_2.nii.gz").unlink()
    (task / "imagesTs" / "liver_4.nii.gz").unlink()
    problems = validate_task(task)
    assert len(problems) == 2
    label = only(problems, "liver_2")
    assert label.file == str(task / "labelsTr" / "liver_2.nii.gz")
    assert label.reason == "is listed in dataset.json but missing"
    assert only(problems, "liver_4").file == str(task / "imagesTs" / "liver_4.nii.gz")


def test_missing_file_next_to_its_appledouble_twin(task):
    (task / "imagesTr" / "liver_1.nii.gz").rename(task / "imagesTr" / "._liver_1.nii.gz")
    problem = only(validate_task(task), "liver_1")
    assert problem.file == str(task / "imagesTr" / "liver_1.nii.gz")
    assert "missing" in problem.reason and "AppleDouble" in problem.reason


def test_missing_folder_is_reported_once(task):
    shutil.rmtree(task / "labelsTr")
    problems = validate_task(task)
    assert len(problems) == 1
    assert problems[0].file == str(task / "labelsTr")
    assert "folder missing" in problems[0].reason and "lists 3 file(s) in it" in problems[0].reason


def test_a_task_without_imagesTs_is_valid(task):
    """User-made tasks and copies without MSD's unlabelled test images have no imagesTs/; no stage needs it."""
    shutil.rmtree(task / "imagesTs")
    spec = load_json(task)
    spec["test"], spec["numTest"] = [], 0
    save_json(task, spec)
    report = check_task(task)
    assert report.problems == []
    assert report.training_cases_checked == 3 and report.test_images_checked == 0


def test_a_test_list_naming_absent_files_is_still_an_error_without_imagesTs(task):
    shutil.rmtree(task / "imagesTs")
    problems = validate_task(task)
    assert [str(p) for p in problems] == [
        f"{task / 'imagesTs'}: folder missing; dataset.json lists 2 file(s) in it"]


def test_a_missing_required_folder_says_which_are_needed(task):
    shutil.rmtree(task / "imagesTr")
    problem = only(validate_task(task), "imagesTr:")
    assert problem.reason == ("folder missing (every task needs imagesTr/ and labelsTr/; imagesTs/ is optional); "
                              "dataset.json lists 3 file(s) in it")


def _blank_labels(task: Path, keep: int = 0) -> None:
    """Every training label all zeros (the first ``keep`` of them left as they are)."""
    for path in sorted((task / "labelsTr").glob("liver_*.nii.gz"))[keep:]:
        label = load(path)
        save_nifti(path, np.zeros(label.shape, np.uint8), label.affine)


def test_a_dataset_without_foreground_anywhere_is_an_error(task, capsys):
    _blank_labels(task)
    problems = validate_task(task)
    assert [str(p) for p in problems] == [
        f"{task / 'labelsTr'}: every one of the 3 training label file(s) holds only 0 (background), while "
        f"dataset.json 'labels' declares 1 liver, 2 cancer: there is no class to segment (nnU-Net could learn "
        f"nothing, class consistency has no class to score)"]
    assert validate_command([str(task)], progress=False) == 1
    out, err = capsys.readouterr()
    assert out == "" and "there is no class to segment" in err


def test_declared_classes_absent_while_another_is_present_is_a_note(task):
    """MSD Liver has cases without tumour; a class no case holds is a note as long as some class is there."""
    for path in sorted((task / "labelsTr").glob("liver_*.nii.gz")):
        label = load(path)
        data = np.asarray(label.dataobj)
        save_nifti(path, np.where(data == 2, 1, data).astype(np.uint8), label.affine)
    report = check_task(task)
    assert report.problems == []
    assert "declared label(s) 2 appear in no training case (other classes do" in report.summary()


def test_one_case_with_foreground_is_enough_for_validation(task):
    _blank_labels(task, keep=1)
    assert validate_task(task) == []


def test_foreground_is_not_judged_when_a_label_could_not_be_read(task):
    """An unreadable label may have held the foreground: only its own problem is reported."""
    _blank_labels(task)
    (task / "labelsTr" / "liver_0.nii.gz").write_bytes(b"junk")
    problems = validate_task(task)
    assert len(problems) == 1 and "liver_0" in problems[0].file


def test_labels_declaring_only_background(task):
    spec = load_json(task)
    spec["labels"] = {"0": "background"}
    save_json(task, spec)
    problems = validate_task(task)
    assert str(only(problems, "declares only")) == (f"{task / 'dataset.json'}: 'labels' declares only \"0\" (background): "
                                          "there is no class to segment")


def test_shape_mismatch(task):
    path = task / "labelsTr" / "liver_1.nii.gz"
    label = load(path)
    save_nifti(path, np.asarray(label.dataobj)[:, :, :10], label.affine)
    problem = only(validate_task(task), "shape")
    assert problem.file == str(task / "labelsTr" / "liver_1.nii.gz")
    assert "label shape (24, 24, 10) differs from the spatial shape (24, 24, 12)" in problem.reason
    assert str(task / "imagesTr" / "liver_1.nii.gz") in problem.reason


def test_shape_mismatch_with_a_4d_image(task):
    spec = load_json(task)
    spec["modality"] = {"0": "T2", "1": "ADC"}
    save_json(task, spec)
    for name in ("liver_0", "liver_1", "liver_2"):
        image = load(task / "imagesTr" / f"{name}.nii.gz")
        data = np.asarray(image.dataobj)
        if name == "liver_2":
            data = data[:20]
        save_nifti(task / "imagesTr" / f"{name}.nii.gz", np.stack([data, data], axis=-1), image.affine)
    for name in ("liver_3", "liver_4"):
        (task / "imagesTs" / f"{name}.nii.gz").unlink()
    spec["test"], spec["numTest"] = [], 0
    save_json(task, spec)
    problem = only(validate_task(task), "shape")
    assert problem.file == str(task / "labelsTr" / "liver_2.nii.gz")
    assert "label shape (24, 24, 12) differs from the spatial shape (20, 24, 12)" in problem.reason


def test_affine_mismatch(task):
    path = task / "labelsTr" / "liver_0.nii.gz"
    label = load(path)
    affine = label.affine.copy()
    affine[2, 3] += 3.0  # one slice off
    save_nifti(path, np.asarray(label.dataobj), affine)
    problem = only(validate_task(task), "affine")
    assert problem.file == str(task / "labelsTr" / "liver_0.nii.gz")
    assert "largest difference 3 in the origin" in problem.reason
    assert str(task / "imagesTr" / "liver_0.nii.gz") in problem.reason


def test_spacing_mismatch_is_an_affine_problem(task):
    path = task / "labelsTr" / "liver_0.nii.gz"
    label = load(path)
    affine = label.affine.copy()
    affine[2, 2] = 2.5
    save_nifti(path, np.asarray(label.dataobj), affine)
    problem = only(validate_task(task), "affine")
    assert "spacing/direction" in problem.reason and "2.5" in problem.reason


def test_pixdim_spacing_mismatch_within_the_affine_tolerance(task):
    # The affines agree within 1e-3 mm, but nnU-Net compares header spacings with numpy.allclose's defaults.
    path = task / "labelsTr" / "liver_1.nii.gz"
    label = load(path)
    affine = label.affine.copy()
    affine[2, 2] += 5e-4
    save_nifti(path, np.asarray(label.dataobj), affine)
    problem = only(validate_task(task), "spacing")
    assert problem.file == str(path)
    xy = f"{np.linalg.norm(label.affine[:3, 0]):.7g}"
    assert f"label voxel spacing ({xy}, {xy}, 3.0005) differs from the spacing ({xy}, {xy}, 3)" in problem.reason
    assert str(task / "imagesTr" / "liver_1.nii.gz") in problem.reason


def test_undeclared_label_value(task):
    path = task / "labelsTr" / "liver_2.nii.gz"
    label = load(path)
    data = np.asarray(label.dataobj).copy()
    data[0, 0, 0] = 3
    data[1, 0, 0] = 7
    save_nifti(path, data, label.affine)
    problem = only(validate_task(task), "not declared")
    assert problem.file == str(task / "labelsTr" / "liver_2.nii.gz")
    assert problem.reason == "label value(s) 3, 7 not declared in dataset.json 'labels' (declared: 0, 1, 2)"


def test_a_label_file_that_is_an_image_is_summarised(task):
    """An image saved as the label (thousands of HU values): one short line, not every value."""
    image = load(task / "imagesTr" / "liver_1.nii.gz")
    path = task / "labelsTr" / "liver_1.nii.gz"
    data = np.asarray(image.dataobj).astype(np.int16)
    save_nifti(path, data, image.affine)
    problem = only(validate_task(task), "looks like an image")
    values = np.unique(data)
    assert problem.file == str(path)
    assert problem.reason == (f"label holds {len(values)} distinct values ({values.min()} to {values.max()}): it looks "
                              "like an image, not a segmentation (dataset.json 'labels' declares 0, 1, 2)")
    assert len(values) > 100 and len(problem.reason) < 200


def test_negative_label_value_is_undeclared(task):
    path = task / "labelsTr" / "liver_0.nii.gz"
    label = load(path)
    data = np.asarray(label.dataobj).astype(np.int16)
    data[0, 0, 0] = -1
    save_nifti(path, data, label.affine)
    assert "label value(s) -1 not declared" in only(validate_task(task), "not declared").reason


def test_non_integer_label(task):
    path = task / "labelsTr" / "liver_0.nii.gz"
    label = load(path)
    data = np.asarray(label.dataobj).astype(np.float32)
    data[2, 2, 2] = 0.5
    data[3, 3, 3] = 1.25
    save_nifti(path, data, label.affine)
    problems = validate_task(task)
    problem = only(problems, "non-integer")
    assert problem.file == str(task / "labelsTr" / "liver_0.nii.gz")
    assert problem.reason == ("label holds 2 non-integer voxel(s) (e.g. 0.5, 1.25); labels must be whole numbers")
    assert len(problems) == 1  # the whole values (0, 1, 2) are declared


def test_scaled_labels_are_checked_after_scaling(task):
    path = task / "labelsTr" / "liver_0.nii.gz"
    label = load(path)
    image = nib.Nifti1Image(np.asarray(label.dataobj).astype(np.uint8), label.affine)
    image.header.set_slope_inter(2.0, 0.0)  # stored 0, 1, 2 read as 0, 2, 4
    nib.save(image, str(path))
    assert "label value(s) 4 not declared" in only(validate_task(task), "not declared").reason
    image.header.set_slope_inter(0.5, 0.0)  # stored 1 reads as 0.5
    nib.save(image, str(path))
    assert "non-integer voxel(s) (e.g. 0.5)" in only(validate_task(task), "non-integer").reason


def test_nan_in_label(task):
    path = task / "labelsTr" / "liver_0.nii.gz"
    label = load(path)
    data = np.asarray(label.dataobj).astype(np.float32)
    data[2, 2, 2] = np.nan
    save_nifti(path, data, label.affine)
    problem = only(validate_task(task), "NaN")
    assert problem.reason == "label holds 1 NaN/Inf voxel(s)"


def test_nan_voxel_in_image(task):
    path = task / "imagesTr" / "liver_1.nii.gz"
    image = load(path)
    data = np.asarray(image.dataobj).astype(np.float32)
    data[4, 5, 6] = np.nan
    data[7, 8, 9] = np.nan
    save_nifti(path, data, image.affine)
    problem = only(validate_task(task), "NaN")
    assert problem.file == str(task / "imagesTr" / "liver_1.nii.gz")
    assert problem.reason == "image holds 2 NaN voxel(s), the first at voxel (4, 5, 6)"


def test_inf_voxel_in_test_image(task):
    path = task / "imagesTs" / "liver_3.nii.gz"
    image = load(path)
    data = np.asarray(image.dataobj).astype(np.float32)
    data[0, 1, 11] = np.inf
    data[0, 2, 11] = -np.inf
    save_nifti(path, data, image.affine)
    problem = only(validate_task(task), "Inf")
    assert problem.file == str(task / "imagesTs" / "liver_3.nii.gz")
    assert problem.reason == "image holds 2 Inf voxel(s), the first at voxel (0, 1, 11)"
    # Without reading test images only their existence is checked.
    assert validate_task(task, test_images=False) == []


def test_nan_found_in_a_later_slab(task, monkeypatch):
    from ccfv.data import volumes

    monkeypatch.setattr(volumes, "_SLAB_VOXELS", 24 * 24 * 2)  # 2 slices per slab
    path = task / "imagesTr" / "liver_1.nii.gz"
    image = load(path)
    data = np.asarray(image.dataobj).astype(np.float64)
    data[1, 2, 9] = np.nan
    save_nifti(path, data, image.affine)
    assert "the first at voxel (1, 2, 9)" in only(validate_task(task), "NaN").reason


def test_truncated_gzip(task):
    path = task / "imagesTr" / "liver_2.nii.gz"
    path.write_bytes(path.read_bytes()[:-200])
    problem = only(validate_task(task), "liver_2")
    assert problem.file == str(path)
    assert "truncated" in problem.reason


def test_garbage_instead_of_gzip(task):
    path = task / "labelsTr" / "liver_0.nii.gz"
    path.write_bytes(b"this is not a gzip stream at all" * 10)
    problem = only(validate_task(task), "liver_0")
    assert problem.file == str(path)
    assert "is not a readable gzip file" in problem.reason


def test_corrupt_bytes_inside_gzip(task):
    path = task / "imagesTr" / "liver_0.nii.gz"
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(64)
    path.write_bytes(bytes(data))
    problem = only(validate_task(task), "liver_0")
    assert problem.file == str(path)
    assert "gzip" in problem.reason  # zlib's error, or the CRC check that reading to the end adds


def test_empty_file(task):
    path = task / "labelsTr" / "liver_2.nii.gz"
    path.write_bytes(b"")
    assert only(validate_task(task), "liver_2").reason == "is empty (0 bytes)"


def test_invalid_intensity_scaling(task):
    path = task / "imagesTr" / "liver_0.nii.gz"
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[112:120] = np.array([2.0, np.inf], dtype="<f4").tobytes()  # scl_slope, scl_inter
    path.write_bytes(gzip.compress(bytes(raw)))
    problem = only(validate_task(task), "liver_0")
    assert problem.file == str(path)
    assert "invalid intercept inf" in problem.reason


def test_gzip_of_something_that_is_not_nifti(task):
    path = task / "imagesTs" / "liver_4.nii.gz"
    path.write_bytes(gzip.compress(b"hello" * 200))
    problem = only(validate_task(task), "liver_4")
    assert problem.file == str(path)
    assert "is not a NIfTI file" in problem.reason


def test_nifti_with_a_corrupt_header(task):
    path = task / "labelsTr" / "liver_1.nii.gz"
    header = bytearray(gzip.decompress(path.read_bytes()))
    header[70:72] = (26725).to_bytes(2, "little")  # datatype code nibabel does not know
    path.write_bytes(gzip.compress(bytes(header)))
    problem = only(validate_task(task), "liver_1")
    assert problem.file == str(path)
    assert "cannot be read as NIfTI (HeaderDataError: data code 26725 not recognized)" in problem.reason


def test_nifti2_files_are_read(task):
    path = task / "imagesTr" / "liver_0.nii.gz"
    image = load(path)
    nib.save(nib.Nifti2Image(np.asarray(image.dataobj), image.affine), str(path))
    assert validate_task(task) == []


def test_several_problems_are_all_reported(task):
    spec = load_json(task)
    del spec["name"]
    spec["numTraining"] = 4
    save_json(task, spec)
    (task / "imagesTr" / "liver_0.nii.gz").write_bytes(b"junk")
    (task / "labelsTr" / "liver_1.nii.gz").unlink()
    path = task / "labelsTr" / "liver_2.nii.gz"
    label = load(path)
    data = np.asarray(label.dataobj).copy()
    data[0, 0, 0] = 9
    affine = label.affine.copy()
    affine[0, 3] += 1.0
    save_nifti(path, data, affine)

    problems = validate_task(task)
    expected = [
        (task / "dataset.json", "missing required key 'name'"),
        (task / "dataset.json", "'numTraining' is 4"),
        (task / "imagesTr" / "liver_0.nii.gz", "gzip"),
        (task / "labelsTr" / "liver_1.nii.gz", "missing"),
        (task / "labelsTr" / "liver_2.nii.gz", "affine"),
        (task / "labelsTr" / "liver_2.nii.gz", "label value(s) 9 not declared"),
    ]
    assert len(problems) == len(expected), [str(p) for p in problems]
    for (file, words), problem in zip(expected, problems):
        assert problem.file == str(file) and words in problem.reason, str(problem)

    with pytest.raises(DatasetError) as caught:
        validate_or_raise(task)
    lines = str(caught.value).splitlines()
    assert lines[0] == f"6 problem(s) in {task}"
    assert lines[1:] == [str(p) for p in problems]
    assert caught.value.problems == problems


def test_missing_task_folder(tmp_path):
    problems = validate_task(tmp_path / "Task99_Nothing")
    assert [str(p) for p in problems] == [f"{tmp_path / 'Task99_Nothing'}: no such folder"]


# ----------------------------------------------------------------------------------------------
# The command
# ----------------------------------------------------------------------------------------------


def test_validate_command_reports_problems_and_returns_1(pristine, task, capsys):
    (task / "labelsTr" / "liver_1.nii.gz").unlink()
    (task / "imagesTr" / "liver_2.nii.gz").write_bytes(b"junk")
    assert validate_command([str(pristine), str(task)], progress=False) == 1
    out, err = capsys.readouterr()
    assert out.startswith(f"OK {pristine}: 3 training case(s)")
    assert len(out.splitlines()) == 1
    assert f"{task / 'labelsTr' / 'liver_1.nii.gz'}: is listed in dataset.json but missing" in err
    assert f"{task / 'imagesTr' / 'liver_2.nii.gz'}: " in err
    assert err.splitlines()[-1] == f"2 problem(s) in {task}"


def test_validate_command_returns_0_for_valid_tasks(pristine, capsys):
    assert validate_command([str(pristine)], progress=False) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert out.splitlines() == [check_task(pristine).summary()]


def test_validate_command_without_folders(capsys):
    assert validate_command([]) == 1
    assert "no task folders given" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# The real MSD Task04_Hippocampus (shared material; skipped where absent)
# ----------------------------------------------------------------------------------------------


def test_the_real_task04_hippocampus_validates(task04_dir, capsys):
    """The shared copy as it is: no imagesTs/, 205 float32 and 55 uint8 images, 2 float32 labels, numTest 0.
    `ccfv msd validate` must accept it (exit 0) with the float labels in a note, every class seen."""
    from ccfv.cli import main

    assert main(["msd", "validate", str(task04_dir)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert out.startswith(f"OK {task04_dir}: 260 training case(s) and 0 test image(s) checked; labels seen: "
                          "0 background (260 cases), 1 Anterior (260 cases), 2 Posterior (260 cases)")
    assert "note: 2 label file(s) stored as float32 with whole-number values" in out
