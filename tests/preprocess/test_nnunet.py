"""Tests for ccfv.preprocess.nnunet: the shared-network plans on hand-built nnU-Net 2.8 plans, and one real
conversion + planning + preprocessing round trip on a tiny synthetic task (fixture in conftest.py)."""

from __future__ import annotations

import copy
import json
import shutil

import numpy as np
import pytest

from ccfv.preprocess.nnunet import case_identifiers, load_case, shared_architecture, shared_plans
from ccfv.preprocess.paths import CONFIGURATION, PLANS_NAME
from ccfv.preprocess.plans import load_plans

NETWORK = {
    "patch_size": [16, 48, 48],
    "batch_size": 2,
    "features_per_stage": [8, 16, 32, 64],
    "kernel_sizes": [[1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]],
    "strides": [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2]],
    "n_conv_per_stage": [2, 2, 2, 2],
    "n_conv_per_stage_decoder": [1, 1, 1],
}

_KW_IMPORT = ["conv_op", "norm_op", "dropout_op", "nonlin"]


def _arch(conv: str, n_stages: int, features, kernels, strides) -> dict:
    return {
        "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
        "arch_kwargs": {
            "n_stages": n_stages, "features_per_stage": features, "conv_op": f"torch.nn.modules.conv.{conv}",
            "kernel_sizes": kernels, "strides": strides, "n_conv_per_stage": [2] * n_stages,
            "n_conv_per_stage_decoder": [2] * (n_stages - 1), "conv_bias": True,
            "norm_op": f"torch.nn.modules.instancenorm.InstanceNorm{conv[-2:]}",
            "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None, "dropout_op_kwargs": None,
            "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True},
        },
        "_kw_requires_import": list(_KW_IMPORT),
    }


def _resampling() -> dict:
    return {
        "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
        "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
    }


def nnunet_plans(name: str, spacing: list[float], shape: list[int], fg_mean: float) -> dict:
    """A plans file as nnU-Net 2.8's default ExperimentPlanner writes it (abridged to what matters)."""
    z_anisotropic = spacing[0] > 2.5 * spacing[1]
    kernels = [[1, 3, 3] if z_anisotropic else [3, 3, 3]] + [[3, 3, 3]] * 4
    strides = [[1, 1, 1], [1 if z_anisotropic else 2, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2]]
    return {
        "dataset_name": name,
        "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": list(spacing),
        "original_median_shape_after_transp": list(shape),
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "configurations": {
            "2d": {
                "data_identifier": "nnUNetPlans_2d", "preprocessor_name": "DefaultPreprocessor",
                "batch_size": 12, "patch_size": [512, 512], "median_image_size_in_voxels": shape[1:],
                "spacing": spacing[1:], "normalization_schemes": ["CTNormalization"],
                "use_mask_for_norm": [False], **_resampling(),
                "architecture": _arch("Conv2d", 4, [32, 64, 128, 256], [[3, 3]] * 4,
                                      [[1, 1], [2, 2], [2, 2], [2, 2]]),
                "batch_dice": True,
            },
            "3d_lowres": {
                "data_identifier": "nnUNetPlans_3d_lowres", "preprocessor_name": "DefaultPreprocessor",
                "batch_size": 2, "patch_size": [64, 160, 160], "median_image_size_in_voxels": [60, 200, 200],
                "spacing": [s * 2 for s in spacing], "normalization_schemes": ["CTNormalization"],
                "use_mask_for_norm": [False], **_resampling(),
                "architecture": _arch("Conv3d", 5, [32, 64, 128, 256, 320], kernels, strides),
                "batch_dice": False, "next_stage": "3d_cascade_fullres",
            },
            "3d_fullres": {
                "data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor",
                "batch_size": 2, "patch_size": [40, 192, 160], "median_image_size_in_voxels": list(shape),
                "spacing": list(spacing), "normalization_schemes": ["CTNormalization"],
                "use_mask_for_norm": [False], **_resampling(),
                "architecture": _arch("Conv3d", 5, [32, 64, 128, 256, 320], kernels, strides),
                "batch_dice": True,
            },
            "3d_cascade_fullres": {
                "inherits_from": "3d_fullres", "previous_stage": "3d_lowres",
            },
        },
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {
            "0": {"max": 3071.0, "mean": fg_mean, "median": fg_mean + 2, "min": -1024.0,
                  "percentile_00_5": -58.0, "percentile_99_5": 270.0, "std": 55.5},
        },
    }


@pytest.fixture
def spleen_plans():
    return nnunet_plans("Dataset009_Spleen", [5.0, 0.79, 0.79], [90, 512, 512], 99.5)


@pytest.fixture
def liver_plans():
    return nnunet_plans("Dataset003_Liver", [1.0, 0.77, 0.77], [432, 512, 512], 99.4)


# --------------------------------------------------------------------------------------------------
# shared_plans
# --------------------------------------------------------------------------------------------------


def test_shared_plans_overrides_exactly_the_network(spleen_plans):
    out = shared_plans(spleen_plans, NETWORK)
    conf = out["configurations"][CONFIGURATION]
    original = spleen_plans["configurations"][CONFIGURATION]

    assert conf["patch_size"] == [16, 48, 48]
    assert conf["batch_size"] == 2 and isinstance(conf["batch_size"], int)
    assert conf["data_identifier"] == "ccfvPlans_3d_fullres"
    assert out["plans_name"] == PLANS_NAME == "ccfvPlans"

    kwargs = conf["architecture"]["arch_kwargs"]
    assert kwargs["n_stages"] == 4
    assert kwargs["features_per_stage"] == [8, 16, 32, 64]
    assert kwargs["kernel_sizes"] == NETWORK["kernel_sizes"]
    assert kwargs["strides"] == NETWORK["strides"]
    assert kwargs["n_conv_per_stage"] == [2, 2, 2, 2]
    assert kwargs["n_conv_per_stage_decoder"] == [1, 1, 1]
    # Everything else in the architecture is nnU-Net's.
    changed = {"n_stages", "features_per_stage", "kernel_sizes", "strides", "n_conv_per_stage",
               "n_conv_per_stage_decoder"}
    original_kwargs = original["architecture"]["arch_kwargs"]
    assert set(kwargs) == set(original_kwargs)
    assert {k: v for k, v in kwargs.items() if k not in changed} == {
        k: v for k, v in original_kwargs.items() if k not in changed
    }
    assert conf["architecture"]["network_class_name"] == original["architecture"]["network_class_name"]
    assert conf["architecture"]["_kw_requires_import"] == _KW_IMPORT

    # Every other key of the configuration is kept as nnU-Net planned it (spacing, normalisation, ...).
    overridden = {"patch_size", "batch_size", "data_identifier", "architecture"}
    assert set(conf) == set(original)
    assert {k: v for k, v in conf.items() if k not in overridden} == {
        k: v for k, v in original.items() if k not in overridden
    }
    assert conf["spacing"] == [5.0, 0.79, 0.79]
    assert conf["normalization_schemes"] == ["CTNormalization"]
    # ... and so is everything at the top level but the plans name and the configurations.
    assert {k: v for k, v in out.items() if k not in ("plans_name", "configurations")} == {
        k: v for k, v in spleen_plans.items() if k not in ("plans_name", "configurations")
    }
    assert out["foreground_intensity_properties_per_channel"]["0"]["mean"] == 99.5


def test_shared_plans_drops_the_other_configurations(spleen_plans):
    assert list(shared_plans(spleen_plans, NETWORK)["configurations"]) == ["3d_fullres"]


def test_shared_plans_does_not_mutate_its_inputs(spleen_plans):
    plans_before = copy.deepcopy(spleen_plans)
    network_before = copy.deepcopy(NETWORK)
    out = shared_plans(spleen_plans, NETWORK)
    assert spleen_plans == plans_before
    assert NETWORK == network_before
    # the result does not alias the inputs either
    out["configurations"][CONFIGURATION]["architecture"]["arch_kwargs"]["kernel_sizes"][0][0] = 99
    out["configurations"][CONFIGURATION]["patch_size"][0] = 99
    assert NETWORK == network_before
    assert spleen_plans == plans_before


def test_shared_plans_is_json_serialisable_and_takes_tuples(spleen_plans):
    network = {k: (tuple(tuple(x) for x in v) if k in ("kernel_sizes", "strides") else
                   tuple(v) if isinstance(v, list) else v) for k, v in NETWORK.items()}
    out = shared_plans(spleen_plans, network)
    assert json.loads(json.dumps(out)) == shared_plans(spleen_plans, NETWORK)


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("kernel_sizes", [[3, 3, 3]] * 3, "kernel_sizes has 3 entries"),
        ("strides", [[1, 1, 1]] * 5, "strides has 5 entries"),
        ("n_conv_per_stage", [2, 2], "n_conv_per_stage has 2 entries"),
        ("n_conv_per_stage_decoder", [1, 1, 1, 1], "n_conv_per_stage_decoder"),
        ("n_conv_per_stage_decoder", [1, 1], "n_conv_per_stage_decoder"),
    ],
)
def test_shared_plans_list_length_errors(spleen_plans, key, value, match):
    with pytest.raises(ValueError, match=match):
        shared_plans(spleen_plans, {**NETWORK, key: value})


@pytest.mark.parametrize(
    ("patch", "axis", "factor"),
    [([10, 48, 48], 0, 4), ([16, 44, 48], 1, 8), ([16, 48, 36], 2, 8)],
)
def test_shared_plans_patch_not_divisible_by_strides(spleen_plans, patch, axis, factor):
    with pytest.raises(ValueError, match=rf"patch_size\[{axis}\]={patch[axis]}.*\({factor}\)"):
        shared_plans(spleen_plans, {**NETWORK, "patch_size": patch})


def test_shared_plans_accepts_exactly_divisible_patches(spleen_plans):
    # z is only downsampled twice (strides 1, 1, 2, 2): 4 is enough there, 8 is needed in-plane.
    out = shared_plans(spleen_plans, {**NETWORK, "patch_size": [4, 8, 8]})
    assert out["configurations"][CONFIGURATION]["patch_size"] == [4, 8, 8]


def test_shared_architecture_equal_across_datasets(spleen_plans, liver_plans):
    # nnU-Net planned the two differently (anisotropic spleen: 1x3x3 first kernel and no z pooling) ...
    assert shared_architecture(spleen_plans) != shared_architecture(liver_plans)
    a = shared_plans(spleen_plans, NETWORK)
    b = shared_plans(liver_plans, NETWORK)
    # ... with the shared network the architectures agree while the data-derived parts still differ.
    assert shared_architecture(a) == shared_architecture(b)
    assert shared_architecture(a)["patch_size"] == [16, 48, 48]
    assert a["configurations"][CONFIGURATION]["spacing"] != b["configurations"][CONFIGURATION]["spacing"]
    assert a["foreground_intensity_properties_per_channel"] != b["foreground_intensity_properties_per_channel"]
    assert shared_architecture(shared_plans(spleen_plans, {**NETWORK, "batch_size": 4})) == shared_architecture(a)
    assert shared_architecture(shared_plans(liver_plans, {**NETWORK, "features_per_stage": [8, 16, 32, 32]})) \
        != shared_architecture(a)


# --------------------------------------------------------------------------------------------------
# Real nnU-Net round trip (conftest.tiny_dataset: 5 cases of 32x32x16, converted, planned, preprocessed)
# --------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_convert_msd_task(tiny_dataset):
    raw = tiny_dataset.raw
    assert raw.name == "Dataset094_SynthSpleen"
    assert [p.name for p in tiny_dataset.raw_root.iterdir()] == [raw.name]  # no scratch folder left
    dataset_json = json.loads((raw / "dataset.json").read_text())
    assert dataset_json["channel_names"] == {"0": "CT"}
    assert dataset_json["labels"] == {"background": 0, "spleen": 1}
    assert dataset_json["numTraining"] == 5
    assert len(list((raw / "imagesTr").glob("*_0000.nii.gz"))) == 5
    assert len(list((raw / "labelsTr").glob("*.nii.gz"))) == 5


@pytest.mark.slow
def test_plan_and_preprocess_round_trip(tiny_dataset):
    pre = tiny_dataset.preprocessed
    assert pre.name == "Dataset094_SynthSpleen"
    assert [p.name for p in tiny_dataset.preprocessed_root.iterdir()] == [pre.name]  # no '.preprocess-*'
    assert not [p for p in pre.rglob(".*")]

    plans = load_plans(pre)
    assert plans == json.loads((pre / "ccfvPlans.json").read_text())
    assert plans["plans_name"] == "ccfvPlans"
    assert list(plans["configurations"]) == ["3d_fullres"]
    conf = plans["configurations"]["3d_fullres"]
    assert conf["patch_size"] == tiny_dataset.network["patch_size"]
    assert conf["batch_size"] == 2
    kwargs = conf["architecture"]["arch_kwargs"]
    for key in ("features_per_stage", "kernel_sizes", "strides", "n_conv_per_stage", "n_conv_per_stage_decoder"):
        assert kwargs[key] == tiny_dataset.network[key], key
    assert kwargs["n_stages"] == 3
    assert kwargs["conv_op"] == "torch.nn.modules.conv.Conv3d"
    # The data-derived part is nnU-Net's own plan for this dataset.
    default = json.loads((pre / "nnUNetPlans.json").read_text())
    assert conf["spacing"] == default["configurations"]["3d_fullres"]["spacing"]
    assert conf["normalization_schemes"] == ["CTNormalization"]
    assert plans["foreground_intensity_properties_per_channel"] == default["foreground_intensity_properties_per_channel"]
    assert shared_architecture(plans) == shared_architecture(shared_plans(default, tiny_dataset.network))

    ids = case_identifiers(pre)
    assert ids == [f"spleen_{i}" for i in range(5)]
    assert (pre / "ccfvPlans_3d_fullres").is_dir()
    assert not (pre / "nnUNetPlans_3d_fullres").exists()  # only the shared plans were preprocessed

    median_shape = [int(s) for s in conf["median_image_size_in_voxels"]]
    for identifier in ids[:2]:
        image, seg, properties = load_case(pre, identifier)
        assert image.dtype == np.float32 and seg.dtype == np.int16
        assert image.ndim == 4 and image.shape[0] == 1
        assert seg.shape == image.shape[1:]
        assert list(image.shape[1:]) == median_shape  # all synthetic cases share one geometry
        assert set(np.unique(seg)) <= {-1, 0, 1} and (seg == 1).any()
        assert np.isfinite(image).all()
        # CT normalisation: clipped to the foreground percentiles and z-scored, so no raw HU values remain
        assert np.abs(image).max() < 20
        assert "spacing" in properties and "class_locations" in properties


def _tree(folder):
    return sorted((str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*"))


def test_convert_msd_task_without_imagesTs(tmp_path):
    """nnU-Net's converter asserts imagesTs/; a task without one (user-made, or a copy without MSD's unlabelled
    test images) is converted through a view with an empty one, and nothing is written into the task folder."""
    from ccfv.data.synthetic import write_task
    from ccfv.preprocess.nnunet import convert_msd_task

    task = write_task("Task94_SynthSpleen", tmp_path / "msd", n_cases=3, seed=0, shape=(24, 24, 12))
    shutil.rmtree(task / "imagesTs")
    spec = json.loads((task / "dataset.json").read_text())
    spec["test"], spec["numTest"] = [], 0
    (task / "dataset.json").write_text(json.dumps(spec))
    before = _tree(task)

    raw = convert_msd_task(task, tmp_path / "raw")
    assert raw == tmp_path / "raw" / "Dataset094_SynthSpleen"
    assert [p.name for p in (tmp_path / "raw").iterdir()] == [raw.name]  # no scratch folder or view left
    assert sorted(p.name for p in (raw / "imagesTr").iterdir()) == [f"spleen_{i}_0000.nii.gz" for i in range(3)]
    assert len(list((raw / "labelsTr").iterdir())) == 3
    assert not any(p.is_symlink() for p in raw.rglob("*"))  # real copies, not links into the task
    assert list((raw / "imagesTs").iterdir()) == []
    assert json.loads((raw / "dataset.json").read_text())["channel_names"] == {"0": "CT"}
    assert _tree(task) == before


def test_convert_msd_task_without_labelsTr_names_the_folder(tmp_path):
    from ccfv.data.synthetic import write_task
    from ccfv.preprocess.nnunet import convert_msd_task

    task = write_task("Task94_SynthSpleen", tmp_path / "msd", n_cases=3, seed=0, shape=(24, 24, 12))
    shutil.rmtree(task / "labelsTr")
    with pytest.raises(FileNotFoundError, match=r"labelsTr: folder missing"):
        convert_msd_task(task, tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


def test_the_real_task04_is_planned_with_z_score_normalisation(task04_dir):
    """nnU-Net picks the normalisation from the channel name: Task04's "MRI" is not CT, so ZScoreNormalization
    (per-case mean and SD), as the plans of `snakemake --configfile config/hippocampus.yaml --until make_split`
    say (docs/preprocessing.md). The check of what the planner will pick, without its 2 minutes."""
    from nnunetv2.preprocessing.normalization.default_normalization_schemes import ZScoreNormalization
    from nnunetv2.preprocessing.normalization.map_channel_name_to_normalization import get_normalization_scheme

    modality = json.loads((task04_dir / "dataset.json").read_text())["modality"]
    assert modality == {"0": "MRI"}
    assert get_normalization_scheme(modality["0"]) is ZScoreNormalization
