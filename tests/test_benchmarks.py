"""Smoke tests of every script in benchmarks/: each runs on tiny sizes as a subprocess with the suite's
Python (.venv's), and its last line, the machine-readable figures its docstring documents, is checked.

They keep the benchmarks from rotting silently (bench_sampling.py once failed in its child process after
``sampling.layer_ratios`` became per-architecture, and nothing noticed). The figures of a tiny run mean
little, so the checks are on format and on what must hold at any size: the two implementations of
bench_scoring agree, bench_training's and bench_msd_scale's projections follow from their measured figures,
and source_vs_seed_spread's ratios equal an independent computation on a hand-made results folder.
"""
from __future__ import annotations

import json
import math
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ccfv.finetune.evaluation import write_dice

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
NUMBER = r"(?:[-+]?(?:\d+(?:\.\d*)?(?:e[-+]?\d+)?|inf|nan))"


def run_script(name: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BENCHMARKS / name), *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def last_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, f"exit status {result.returncode}\n{result.stdout}\n{result.stderr}"
    lines = result.stdout.strip().splitlines()
    assert lines, f"no output\n{result.stderr}"
    return lines[-1]


def figures(line: str) -> dict[str, str]:
    """``key=value key=value ...`` -> dict; every token must be one pair."""
    pairs = [token.split("=", 1) for token in line.split()]
    assert pairs and all(len(p) == 2 and p[0] and p[1] for p in pairs), f"not key=value pairs: {line!r}"
    keys = [k for k, _ in pairs]
    assert len(set(keys)) == len(keys), f"repeated keys: {line!r}"
    return dict(pairs)


def test_every_benchmark_script_has_a_smoke_test():
    tested = {"bench_msd_scale.py", "bench_sampling.py", "bench_scoring.py", "bench_training.py",
              "source_vs_seed_spread.py",
              # their smoke tests need the shared models: tests/models/test_bench_real_models.py, test_bench_finetune.py
              "bench_real_models.py", "bench_finetune.py"}
    assert {p.name for p in BENCHMARKS.glob("*.py")} == tested, "a new benchmark script needs a smoke test here"


# --- bench_sampling.py --------------------------------------------------------------------------------------

def test_bench_sampling_smoke():
    patch = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())["network"]["patch_size"]
    shape = [p + p // 2 for p in patch]  # step 0.5: two windows per axis, on both tilings
    result = run_script("bench_sampling.py", "--shape", *shape, "--repeats", 1, "--rss-repeats", 1,
                        "--no-own-imports")
    line = last_line(result)
    match = re.fullmatch(r"time_ratio=(\d+\.\d{3}) rss_ratio=(\d+\.\d{3})", line)
    assert match, line
    time_ratio, rss_ratio = map(float, match.groups())
    assert time_ratio > 0
    # Both children import the same modules and the run adds tens of MiB to ~900 MiB.
    assert 0.5 < rss_ratio < 2.0, line
    assert "windows: 8 in the tiling" in result.stdout
    assert "sampling ran 8 of 8" in result.stdout  # every window owns a chosen voxel on this volume


def test_bench_sampling_rejects_a_volume_smaller_than_the_patch():
    result = run_script("bench_sampling.py", "--shape", 4, 4, 4)
    assert result.returncode == 2
    assert "smaller than the patch" in result.stderr


# --- bench_scoring.py ---------------------------------------------------------------------------------------

def test_bench_scoring_smoke():
    result = run_script("bench_scoring.py", "--cases", 4, "--classes", 2, "--dim", 6, "--samples", 40,
                        "--backend", "numpy")
    line = last_line(result)
    match = re.fullmatch(r"speedup=(\d+\.\d) max_rel_err=(\d\.\d\de[-+]\d+)", line)
    assert match, line
    assert float(match.group(1)) > 0
    assert float(match.group(2)) <= 1e-8  # the script's own bound (exit status 1 above it)
    assert "all 12 unordered pairs, measured" in result.stdout  # 2 classes x 4*3/2
    floor = re.search(r"^floor: class consistency runs at (\d+\.\d{3}) of the exact-SVD floor's speed",
                      result.stdout, re.MULTILINE)
    assert floor, result.stdout
    assert float(floor.group(1)) > 0


# --- bench_training.py --------------------------------------------------------------------------------------

TINY_NETWORK = {  # three stages: with two, deep supervision's only loss weight is 0/0 (see conftest.py)
    "patch_size": [16, 16, 16],  # UNETR's ViT patch is 16
    "batch_size": 1,
    "features_per_stage": [2, 4, 8],
    "kernel_sizes": [[3, 3, 3]] * 3,
    "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2]],
    "n_conv_per_stage": [1, 1, 1],
    "n_conv_per_stage_decoder": [1, 1],
}
TINY_UNETR = {"hidden_size": 16, "mlp_dim": 32, "num_heads": 2, "feature_size": 2}


def tiny_config(path: Path, source: str, **override) -> Path:
    """The real config with a tiny network (keeps every key the script reads in its real form)."""
    config = yaml.safe_load((ROOT / "config" / source).read_text())
    config.update(network=TINY_NETWORK, unetr=TINY_UNETR, **override)
    path.write_text(yaml.safe_dump(config))
    return path


def test_bench_training_smoke(tmp_path):
    demo = tiny_config(tmp_path / "demo.yaml", "config.yaml")
    paper_config = yaml.safe_load((ROOT / "config" / "msd.yaml").read_text())
    finetune = {**paper_config["finetune"], "iterations": 40, "seeds": [0, 1]}
    pretrain = {**paper_config["pretrain"], "iterations": 300}
    paper = tiny_config(tmp_path / "paper.yaml", "msd.yaml", tasks=["TaskA", "TaskB", "TaskC"],
                        architectures=["unet", "unetr"], pretrain=pretrain, finetune=finetune)
    result = run_script("bench_training.py", "--demo-config", demo, "--paper-config", paper,
                        "--demo-iterations", 1, "--paper-iterations", 1, "--threads", 1,
                        "--json", tmp_path / "out.json")
    values = figures(last_line(result))
    for key, value in values.items():
        if key != "gpu_hours_source":
            assert re.fullmatch(NUMBER, value), (key, value)
    devices = ["cpu"] + (["cuda"] if "cuda_hours" in values else [])
    for device in devices:
        for setup in ("demo", "paper"):
            for network in ("unet", "unetr"):
                assert float(values[f"{device}_{setup}_{network}_it_per_s"]) > 0
        # The projection from the printed rates, computed here: per architecture 3 pretrainings x 300
        # iterations and 3 targets x 3 bank members (2 sources + 1 random) x 2 seeds x 40 iterations.
        expected = sum((3 * 300 + 3 * 3 * 2 * 40) / float(values[f"{device}_paper_{n}_it_per_s"]) / 3600
                       for n in ("unet", "unetr"))
        assert float(values[f"{device}_hours"]) == pytest.approx(expected, rel=1e-4)
    if "cuda" in devices:
        assert values["gpu_hours_source"] == "measured"
        assert values["gpu_hours"] == values["cuda_hours"]
    else:
        assert values["gpu_hours_source"] == "assumed_50x"
        assert float(values["gpu_hours"]) == pytest.approx(float(values["cpu_hours"]) / 50, rel=1e-4)
    assert len(values) == 4 * len(devices) + len(devices) + 2
    assert (tmp_path / "out.json").is_file()


# --- bench_msd_scale.py -------------------------------------------------------------------------------------

#: MSD's numTraining per task, through the config's split (test_fraction 0.2, round half up): train cases.
MSD_TRAIN = {"Task03_Liver": 131 - 26, "Task06_Lung": 63 - 13, "Task07_Pancreas": 281 - 56,
             "Task09_Spleen": 41 - 8, "Task10_Colon": 126 - 25}


def test_bench_msd_scale_smoke(tmp_path):
    paper = yaml.safe_load((ROOT / "config" / "msd.yaml").read_text())
    sampling = {**paper["sampling"], "layer_ratios": {"unet": [0.5, 1.0], "unetr": [0.125, 0.25, 0.5, 1.0]}}
    config = tiny_config(tmp_path / "paper.yaml", "msd.yaml", sampling=sampling)  # the paper's 5 tasks
    out = tmp_path / "out.json"
    # 24^3 with a 16^3 patch and step 0.5: 2 x 2 x 2 windows, 4 batches of 2; 2 of them run.
    result = run_script("bench_msd_scale.py", "--config", config, "--shape", 24, 24, 24, "--cases", 4,
                        "--json", out, timeout=300)
    line = last_line(result)
    match = re.fullmatch(rf"s_per_case=({NUMBER}) peak_rss_gib=({NUMBER}) te_over_finetune=({NUMBER})", line)
    assert match, line
    for value in match.groups():
        assert float(value) > 0 and f"{float(value):.6g}" == value, line  # 6 significant digits
    data = json.loads(out.read_text())
    sample, train, score = data["sample"], data["train"], data["score"]
    for arch in ("unet", "unetr"):
        assert sample[arch]["batches_total"] == 4 and sample[arch]["batches_run"] == 2
        assert not sample[arch]["whole_case"]
        assert sample[arch]["windows_total"] == 8
        # the whole case from its parts, as the docstring defines it
        steady = sample[arch]["batch_seconds"][1]
        assert sample[arch]["s_per_window"] == pytest.approx(steady / 2)
        assert sample[arch]["s_per_case"] == pytest.approx(
            sample[arch]["t_choose"] + sample[arch]["t_sample_part"] + 2 * steady)
        assert not train[arch]["extrapolated"]  # the tiny patch (16^3) is already UNETR's smallest
        assert set(score[arch]["seconds"]) == {"logme", "transrate", "leep", "gbc", "nce", "hscore", "ccfv",
                                               "class_consistency"}
        assert 0 < score[arch]["seconds"]["class_consistency"] <= score[arch]["seconds"]["ccfv"]
    assert sample["unet"]["channels"] == [4, 2] and sample["unetr"]["channels"] == [16, 8, 4, 2]
    assert "EXTRAPOLATED" in result.stdout

    # The projection recomputed from the measured figures: per target 5 models of each architecture
    # (4 sources + random); class consistency scaled by the number of case pairs, the rest of ccfv by cases.
    estimation = finetuning = 0.0
    for n in MSD_TRAIN.values():
        for arch in ("unet", "unetr"):
            seconds = score[arch]["seconds"]
            ccfv = (seconds["class_consistency"] * n * (n - 1) / (4 * 3)
                    + (seconds["ccfv"] - seconds["class_consistency"]) * n / 4)
            estimation += 5 * (n * sample[arch]["s_per_case"] + ccfv)
            finetuning += 5 * paper["finetune"]["iterations"] * train[arch]["s_per_it"]
    assert float(match.group(3)) == pytest.approx(estimation / finetuning, rel=1e-5)
    s_per_case = (sample["unet"]["s_per_case"] + sample["unetr"]["s_per_case"]) / 2  # 25 models of each
    assert float(match.group(1)) == pytest.approx(s_per_case, rel=1e-5)
    assert float(match.group(2)) == pytest.approx(max(sample[a]["peak_rss_gib"] for a in sample), rel=1e-5)


def test_bench_msd_scale_extrapolates_training_from_a_smaller_patch(tmp_path):
    """--train-patch below the config's patch: the iteration time is scaled by the voxel ratio."""
    paper = yaml.safe_load((ROOT / "config" / "msd.yaml").read_text())
    network = {**TINY_NETWORK, "patch_size": [32, 32, 32]}
    sampling = {**paper["sampling"], "layer_ratios": {"unet": [0.5, 1.0]}}
    config = tiny_config(tmp_path / "paper.yaml", "msd.yaml", architectures=["unet"], sampling=sampling)
    text = yaml.safe_load(config.read_text())
    text["network"] = network
    config.write_text(yaml.safe_dump(text))
    out = tmp_path / "out.json"
    result = run_script("bench_msd_scale.py", "--config", config, "--shape", 32, 32, 32, "--cases", 3,
                        "--batches", 0, "--train-patch", 16, 16, 16, "--metrics", "ccfv", "logme",
                        "--json", out, timeout=300)
    last_line(result)
    data = json.loads(out.read_text())
    train = data["train"]["unet"]
    assert train["extrapolated"] and train["voxel_factor"] == 8
    assert train["s_per_it"] == pytest.approx(8 * train["s_per_it_measured"])
    assert data["sample"]["unet"]["whole_case"]  # --batches 0: the one window of a 32^3 case, run whole
    assert data["sample"]["unet"]["peak_rss_gib"] == data["sample"]["unet"]["peak_rss_gib_measured"]
    assert "extrapolated (x8 voxels)" in result.stdout


@pytest.mark.parametrize("problem", ["unknown task", "bad train patch", "no ccfv"])
def test_bench_msd_scale_bad_input(tmp_path, problem):
    config = tiny_config(tmp_path / "paper.yaml", "msd.yaml",
                         tasks=["Task91_SynthLiver", "Task03_Liver"] if problem == "unknown task" else
                         yaml.safe_load((ROOT / "config" / "msd.yaml").read_text())["tasks"])
    extra = {"bad train patch": ["--train-patch", 8, 8, 8], "no ccfv": ["--metrics", "logme"]}.get(problem, [])
    result = run_script("bench_msd_scale.py", "--config", config, *extra, timeout=60)
    assert result.returncode == 2 if problem != "unknown task" else result.returncode == 1
    message = {"unknown task": "no case count for task 'Task91_SynthLiver': pass --train-cases N",
               "bad train patch": "UNETR needs a multiple of 16",
               "no ccfv": "--metrics must include ccfv"}[problem]
    assert message in result.stderr
    assert result.stdout == ""


# --- source_vs_seed_spread.py -------------------------------------------------------------------------------

#: target -> model -> mean Dice per seed (None: a fine-tuning whose Dice is undefined, written as null)
DICE = {
    "Task03_Liver": {"liver_from_spleen": [0.61, 0.65, 0.58], "liver_random": [0.20, 0.31, 0.26],
                     "liver_from_pancreas": [0.44, None, 0.52]},
    "Task09_Spleen": {"spleen_from_liver": [0.72, 0.70, 0.75], "spleen_random": [0.69, 0.74, 0.66]},
}


def fake_results(root: Path) -> Path:
    """results/finetune/<target>/<model>/seed<N>.json as ccfv.finetune.nnunet.finetune writes them."""
    for target, models in DICE.items():
        for model, values in models.items():
            for seed, value in enumerate(values):
                mean = math.nan if value is None else value
                result = {"per_case": {"case_0": {1: mean}}, "per_class": {1: mean}, "mean_dice": mean}
                write_dice(result, root / "finetune" / target / model / f"seed{seed}.json",
                           model_id=model, source_task=None, seed=seed, iterations=10, test_cases=["case_0"])
    return root


def expected_ratio(models: dict[str, list[float | None]]) -> float:
    """The docstring's definition with the standard library: sd over models of the seed means, over the
    mean over models of the sd over seeds (sample sds, undefined seeds left out)."""
    defined = [[v for v in values if v is not None] for values in models.values()]
    across_sources = statistics.stdev([statistics.fmean(v) for v in defined])
    across_seeds = statistics.fmean([statistics.stdev(v) for v in defined])
    return across_sources / across_seeds


def test_source_vs_seed_spread_smoke(tmp_path):
    result = run_script("source_vs_seed_spread.py", fake_results(tmp_path / "results"), timeout=60)
    values = figures(last_line(result))
    expected = {f"ratio_{target}": expected_ratio(models) for target, models in DICE.items()}
    expected["min_ratio"] = min(expected.values())
    assert list(values) == list(expected)  # targets sorted by name, min_ratio last
    for key, value in expected.items():
        assert float(values[key]) == pytest.approx(value, rel=1e-5), key
    assert expected["ratio_Task03_Liver"] > 1 > expected["ratio_Task09_Spleen"]  # the data tell them apart


@pytest.mark.parametrize("problem", ["no folder", "empty", "one seed", "malformed"])
def test_source_vs_seed_spread_bad_input(tmp_path, problem):
    results = tmp_path / "results"
    if problem != "no folder":
        (results / "finetune").mkdir(parents=True)
    if problem == "one seed":
        write_dice({"mean_dice": 0.5}, results / "finetune" / "T" / "m1" / "seed0.json")
        write_dice({"mean_dice": 0.6}, results / "finetune" / "T" / "m2" / "seed0.json")
        write_dice({"mean_dice": 0.7}, results / "finetune" / "T" / "m2" / "seed1.json")
    bad = results / "finetune" / "T" / "m1" / "seed1.json"
    if problem == "malformed":
        bad.parent.mkdir(parents=True)
        bad.write_text('{"dice": 0.5}')
    result = run_script("source_vs_seed_spread.py", results, timeout=60)
    assert result.returncode == 1
    assert result.stdout == ""
    message = {"no folder": f"{results / 'finetune'}: no such folder",
               "empty": f"{results / 'finetune'}: no fine-tuning results",
               "one seed": "T: only 1 fine-tuning seed(s)",
               "malformed": f"{bad}: not a fine-tuning result"}[problem]
    assert message in result.stderr
