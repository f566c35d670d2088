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
import time
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
              "source_vs_seed_spread.py", "budget_rankings.py", "gpu_check.py",
              # their smoke tests need the shared models: tests/models/test_bench_real_models.py, test_bench_finetune.py
              "bench_real_models.py", "bench_finetune.py",
              "bench_pinning.py",  # smoke test in tests/test_bench_pinning.py
              "bench_guards.py"}  # smoke test in tests/test_bench_guards.py
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
                        "--json", tmp_path / "out.json", "--channels-last")
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
        for network in ("unet", "unetr"):  # the demo setup again in channels-last memory format
            assert float(values[f"{device}_demo_{network}_channels_last_speedup"]) > 0
    assert len(values) == 4 * len(devices) + 2 * len(devices) + len(devices) + 2
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
    match = re.fullmatch(rf"s_per_case=({NUMBER}) peak_rss_gib=({NUMBER}) te_over_finetune=({NUMBER}) "
                         rf"budget_time_ratio=({NUMBER})", line)
    assert match, line
    for value in match.groups():
        assert float(value) > 0 and f"{float(value):.6g}" == value, line  # 6 significant digits
    data = json.loads(out.read_text())
    sample, train, score = data["sample"], data["train"], data["score"]
    # The budgeted case (msd.yaml's budget, else 2 windows per key) runs whole, within its bound; the ratio is
    # the bank's mean seconds per case with it over the full pass at the same warm speed (choose_voxels +
    # every batch at the steady batch time); 5 U-Nets and 5 UNETRs per target: the plain mean.
    budget = data["window_budget"]
    assert budget == (paper["sampling"].get("window_budget") or 2)
    for arch in ("unet", "unetr"):
        b = sample[arch]["budget"]
        assert b["window_budget"] == budget and b["windows_run"] <= min(8, budget * (1 + 2))
        assert b["batches"] == len(b["batch_seconds"]) == math.ceil(b["windows_run"] / 2)
        steady = sample[arch]["batch_seconds"][1]
        assert b["full_s_per_case_warm"] == pytest.approx(sample[arch]["t_choose"] + 4 * steady)
        assert b["s_per_case"] == pytest.approx(b["t_choose"] + b["t_sample"])
    ratio = (sample["unet"]["budget"]["s_per_case"] + sample["unetr"]["budget"]["s_per_case"]) / (
        sample["unet"]["budget"]["full_s_per_case_warm"] + sample["unetr"]["budget"]["full_s_per_case_warm"])
    assert float(match.group(4)) == pytest.approx(ratio, rel=1e-5)
    assert f"Window budget {budget}" in result.stdout
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


# --- budget_rankings.py -------------------------------------------------------------------------------------

def load_script(name: str):
    """A benchmark script as a module, to call its main() in this process (no second torch import)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name.removesuffix(".py"), BENCHMARKS / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_budget_rankings_smoke(tiny_dataset, tmp_path, capsys):
    """A hand-made results folder (tiny nnU-Net task, three random U-Nets, the full pass sampled and scored as
    the workflow does): the script resamples with a budget and with the reference seed, and its Kendall and
    weighted taus equal scipy's on the files it wrote."""
    from scipy import stats

    from ccfv.bank.training import random_model
    from ccfv.features.file import read_features
    from ccfv.features.target import sample_target
    from ccfv.preprocess.nnunet import case_identifiers
    from ccfv.preprocess.splits import make_split, write_split
    from ccfv.scores.scoring import read_scores, score_pair

    target = "Task94_SynthSpleen"
    results = tmp_path / "results"
    (results / "nnunet" / target).mkdir(parents=True)
    (results / "nnunet" / target / "preprocessed").symlink_to(tiny_dataset.preprocessed_root)
    split = results / "splits" / f"{target}.json"
    split.parent.mkdir()
    write_split(make_split(case_identifiers(tiny_dataset.preprocessed), 0.4, seed=0), split)
    sampling = {"total": 40, "minimum": 4, "n_global": 30, "n_background": 20, "step_size": 0.5, "batch_size": 2,
                "seed": 0, "layer_ratios": {"unet": [0.5, 1.0]}}
    metrics = {"logme": {"method": "logme"}, "ccfv": {"method": "ccfv"}}
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"tasks": [target], "sampling": sampling,
                                      "scoring": {"metrics": metrics, "tables": {"table1": ["logme", "ccfv"]}}}))
    models = ["unet-Task91_SynthLiver", "unet-Task92_SynthLung", "unet-random"]
    dice = {m: d for m, d in zip(models, [0.7, 0.5, 0.2])}
    for seed, model in enumerate(models):
        random_model(tiny_dataset.preprocessed, model, results / "bank" / model, seed=seed)
        features = results / "features" / target / f"{model}.h5"
        sample_target(results / "bank" / model, tiny_dataset.preprocessed, split, features, target=target,
                      sampling=sampling, device="cpu")
        score_pair(features, metrics, results / "scores" / target / f"{model}.json")
    # the Dice file also carries the full pass's logme (as the workflow's scores_and_dice.csv carries every score)
    logme = {m: read_scores(results / "scores" / target / f"{m}.json")["logme"] for m in models}
    (tmp_path / "dice.csv").write_text("target,model,dice_mean_over_seeds,logme\n"
                                       + "".join(f"{target},{m},{d},{logme[m]!r}\n" for m, d in dice.items()))
    (tmp_path / "noise.csv").write_text(f"target,seed_sd\n{target},0.05\n")
    scratch, out = tmp_path / "scratch", tmp_path / "out.json"
    argv = ["--results", str(results), "--configfile", str(config), "--dice", str(tmp_path / "dice.csv"),
            "--noise", str(tmp_path / "noise.csv"), "--budget", "2", "--scratch", str(scratch),
            "--simulations", "50", "--json", str(out)]
    script = load_script("budget_rankings.py")
    assert script.main(argv) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    values = figures(line)
    assert list(values) == ["budget", "pairs", "min_kendall", "mean_abs_delta", "max_abs_delta_avg", "within_noise"]
    assert values["budget"] == "2" and values["pairs"] == "3" and re.fullmatch(r"\d/2", values["within_noise"])

    data = json.loads(out.read_text())
    assert len(data["rows"]) == 2 and [s["metric"] for s in data["summary"]] == ["logme", "ccfv"]
    for model in models:
        meta = read_features(scratch / "budget2" / "features" / target / f"{model}.h5").meta
        assert meta["window_budget"] == 2
        full_run = read_features(results / "features" / target / f"{model}.h5").meta["windows_run"]
        for case, (run, total) in meta["windows_run"].items():
            assert run <= 2 * (1 + 1) and total == full_run[case][1]  # one class: at most 2 + 2 windows
        assert read_features(scratch / "seed1" / "features" / target / f"{model}.h5").meta["seed"] == 1
    for row in data["rows"]:
        full = [read_scores(results / "scores" / target / f"{m}.json")[row["metric"]] for m in models]
        budget = [read_scores(scratch / "budget2" / "scores" / target / f"{m}.json")[row["metric"]] for m in models]
        d = [dice[m] for m in models]
        assert row["kendall"] == pytest.approx(stats.kendalltau(full, budget).statistic)
        assert row["tau_full"] == pytest.approx(stats.weightedtau(full, d).statistic)
        assert row["delta"] == pytest.approx(stats.weightedtau(budget, d).statistic - row["tau_full"])
        assert row["seed_sd_tau"] >= 0
        if row["metric"] == "logme":  # the Dice file's scores are the full pass's: the same ranking
            assert row["kendall_committed"] == pytest.approx(1) and row["delta_committed"] == pytest.approx(0)
        else:
            assert "kendall_committed" not in row

    # Resumable: a second call keeps the resampled files and prints the same figures.
    stamp = (scratch / "budget2" / "features" / target / f"{models[0]}.h5").stat().st_mtime_ns
    assert script.main(argv) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == line
    assert (scratch / "budget2" / "features" / target / f"{models[0]}.h5").stat().st_mtime_ns == stamp
    with pytest.raises(SystemExit):
        script.main([*argv[:-6], "--scratch", str(results / "x")])  # scratch inside the results: refused


def test_budget_rankings_resamples_only_the_scored_cases_and_external_members(tiny_dataset, tmp_path, capsys):
    """A full pass scored on a subset of the training cases (``scoring.max_cases``, as the real study) with an
    external member (``bank.external``, as the real study's released models): the script samples only the
    scored cases, the external member as ``sample_member_features`` does, and a reference at the full pass's
    own seed reproduces the full pass's scores exactly (a case's voxels depend on its id alone)."""
    from ccfv.bank.training import random_model
    from ccfv.features.file import read_features
    from ccfv.features.target import sample_member, sample_target
    from ccfv.models.members import external_member, write_member_card
    from ccfv.preprocess.nnunet import case_identifiers
    from ccfv.preprocess.splits import make_split, write_split
    from ccfv.scores.scoring import read_scores, score_pair

    target = "Task94_SynthSpleen"
    results = tmp_path / "results"
    (results / "nnunet" / target).mkdir(parents=True)
    (results / "nnunet" / target / "preprocessed").symlink_to(tiny_dataset.preprocessed_root)
    (results / "nnunet" / target / "raw").symlink_to(tiny_dataset.raw_root)
    split = results / "splits" / f"{target}.json"
    split.parent.mkdir()
    write_split(make_split(case_identifiers(tiny_dataset.preprocessed), 0.4, seed=0), split)
    train = json.loads(split.read_text())["train"]
    assert len(train) == 3
    sampling = {"total": 40, "minimum": 4, "n_global": 30, "n_background": 20, "step_size": 0.5, "batch_size": 2,
                "seed": 0, "layer_ratios": {"unet": [0.5, 1.0]}}
    metrics = {"logme": {"method": "logme"}, "ccfv": {"method": "ccfv"}}
    released = tmp_path / "released-unet"  # a model trained elsewhere, read in place
    random_model(tiny_dataset.preprocessed, "unet-random", released, seed=7)
    external = {"mine": {"path": str(released), "format": "ccfv", "random_copy": False}}
    config = tmp_path / "config.yaml"
    # as the real study: another task is a source only (no scores of its own), the default targets skip it
    config.write_text(yaml.safe_dump({"tasks": ["Task91_SynthLiver", target], "targets": [target],
                                      "sampling": sampling, "bank": {"external": external},
                                      "random_init": {"seed": 0},
                                      "scoring": {"metrics": metrics, "tables": {"table1": ["logme", "ccfv"]}}}))
    models = ["unet-Task91_SynthLiver", "unet-random", "mine-released"]
    for seed, model in enumerate(models):
        features = results / "features" / target / f"{model}.h5"
        if model == "mine-released":
            member = external_member(model, external, 0)
            write_member_card(member, results / "bank" / model / "member.json")
            sample_member(member, tiny_dataset.raw, split, features, target=target, sampling=sampling, device="cpu")
        else:
            random_model(tiny_dataset.preprocessed, model, results / "bank" / model, seed=seed)
            sample_target(results / "bank" / model, tiny_dataset.preprocessed, split, features, target=target,
                          sampling=sampling, device="cpu")
        score_pair(features, metrics, results / "scores" / target / f"{model}.json", max_cases=2, seed=0)
    scored = json.loads((results / "scores" / target / f"{models[0]}.json").read_text())["cases"]
    assert len(scored) == 2
    (tmp_path / "dice.csv").write_text("target,model,dice_mean_over_seeds\n"
                                       + "".join(f"{target},{m},{d}\n" for m, d in zip(models, [0.7, 0.2, 0.5])))
    (tmp_path / "noise.csv").write_text(f"target,seed_sd\n{target},0.05\n")
    scratch = tmp_path / "scratch"
    argv = ["--results", str(results), "--configfile", str(config), "--dice", str(tmp_path / "dice.csv"),
            "--noise", str(tmp_path / "noise.csv"), "--budget", "1", "--scratch", str(scratch),
            "--reference-seed", "0", "--simulations", "20", "--json", str(tmp_path / "out.json")]
    assert load_script("budget_rankings.py").main(argv) == 0
    capsys.readouterr()
    for model in models:
        budget = read_features(scratch / "budget1" / "features" / target / f"{model}.h5")
        assert list(budget.cases) == scored and budget.meta["window_budget"] == 1
        reference = scratch / "seed0" / "scores" / target / f"{model}.json"
        assert read_scores(reference) == read_scores(results / "scores" / target / f"{model}.json"), model
    data = json.loads((tmp_path / "out.json").read_text())
    assert all(row["delta_reference"] == 0 for row in data["rows"])
    assert len(data["full_windows"]) == 2 * len(models)  # the full pass's windows over the scored cases only


# --- gpu_check.py -------------------------------------------------------------------------------------------

def test_gpu_check_without_a_gpu_says_so_and_exits_77():
    """No CUDA device (hidden here, whatever the machine has): a clear message, nothing run, status 77."""
    import os

    result = subprocess.run([sys.executable, str(BENCHMARKS / "gpu_check.py")], cwd=ROOT, capture_output=True,
                            text=True, timeout=120, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert result.returncode == 77, result.stderr
    assert result.stderr.startswith("gpu_check: no GPU:") and "--allow-cpu" in result.stderr
    assert result.stdout == ""


def prepared_work(tiny_dataset, work: Path) -> Path:
    """gpu_check's work folder holding the session's tiny task (its prepare step then reuses it)."""
    import shutil

    from ccfv.preprocess.nnunet import case_identifiers
    from ccfv.preprocess.splits import make_split, write_split

    shutil.copytree(tiny_dataset.raw, work / "raw" / tiny_dataset.raw.name)
    shutil.copytree(tiny_dataset.preprocessed, work / "preprocessed" / tiny_dataset.preprocessed.name)
    (work / "preprocessed" / tiny_dataset.preprocessed.name / "splits_final.json").unlink(missing_ok=True)
    write_split(make_split(case_identifiers(tiny_dataset.preprocessed), 0.4, seed=0), work / "split.json")
    return work


@pytest.mark.slow
def test_gpu_check_runs_every_step_tiny_on_the_cpu(tiny_dataset, tmp_path, capsys):
    """--allow-cpu --tiny: every step (sampling, the training step, the trainer path, ccfv rank) on the CPU,
    one name=value line each, ending in gpu_check=ok. (Most of its time is ccfv rank's nnU-Net fingerprint.)"""
    work = prepared_work(tiny_dataset, tmp_path / "work")
    script = load_script("gpu_check.py")
    assert script.main(["--allow-cpu", "--tiny", "--work", str(work)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    lines = [line for line in out if re.match(r"[a-z0-9_]+=", line)]  # nnU-Net's trainer prints its own lines
    values = dict(line.split("=", 1) for line in lines)
    assert len(values) == len(lines) and out[-1] == "gpu_check=ok"
    assert values["mode"] == "cpu" and values["prepare"] == "reused" and "peak_gpu_memory_gib" not in values
    for name in ("sample_unet_s_per_window", "sample_unetr_s_per_window", "step_unet_s_per_it",
                 "step_unetr_s_per_it", "trainer_first_step_s", "trainer_s_per_it", "trainer_epoch_s_per_it",
                 "rank_wall_s", "peak_rss_gib", "total_s"):
        assert float(values[name]) > 0, name
    assert values["sample_unet_windows"] == values["sample_unetr_windows"] == "8"
    assert values["trainer_iterations"] == "4" and values["trainer_compiled"] == "0"
    assert values["step_patch"] == "16x16x16" and values["rank_exit_status"] == "0"
    assert (work / "rank" / "ranking.csv").is_file()


def test_gpu_check_stops_at_its_time_limit(tmp_path, capsys, monkeypatch):
    script = load_script("gpu_check.py")
    # a step that outlives the limit, interrupted by the alarm
    monkeypatch.setattr(script, "step_sample", lambda config, device: time.sleep(30))
    assert script.main(["--allow-cpu", "--tiny", "--time-limit", "1", "--work", str(tmp_path)]) == 1
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == "gpu_check=timeout step=sample", last


def test_gpu_check_stops_at_its_time_limit_when_a_library_swallows_the_alarm(tmp_path, capsys, monkeypatch):
    script = load_script("gpu_check.py")

    def swallowing(config, device):  # as nnU-Net's worker pools do with a bare except
        end = time.perf_counter() + 2
        while time.perf_counter() < end:
            try:
                time.sleep(0.1)
            except BaseException:
                pass

    monkeypatch.setattr(script, "step_sample", swallowing)
    assert script.main(["--allow-cpu", "--tiny", "--time-limit", "1", "--work", str(tmp_path)]) == 1
    assert capsys.readouterr().out.strip().splitlines()[-1] == "gpu_check=timeout step=sample"


def test_gpu_check_names_a_failed_step_and_goes_on(tmp_path, capsys, monkeypatch):
    """A step that fails is named (here: sampling, made to fail) and the next ones still run."""
    script = load_script("gpu_check.py")

    def broken(config, device):
        raise RuntimeError("CUDA error: out of memory (simulated)")

    monkeypatch.setattr(script, "step_sample", broken)
    monkeypatch.setattr(script, "step_prepare", lambda *a: {})  # nothing prepared: trainer and rank are skipped
    assert script.main(["--allow-cpu", "--tiny", "--work", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    assert lines[-1] == "gpu_check=failed step=sample,rank,trainer"
    assert any(line.startswith("step_unet_s_per_it=") for line in lines)  # the step after the failure ran
    assert "step sample failed: RuntimeError: CUDA error: out of memory (simulated)" in captured.err
