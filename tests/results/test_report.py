"""Tests for ccfv.results.console (costs from Snakemake benchmark files, the terminal report, ``ccfv report``) and
ccfv.results.figures (every figure written as PNG and SVG)."""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from ccfv.cli import main
from ccfv.features.file import CaseRecord, write_features
from ccfv.results.console import print_ground_truth, print_report
from ccfv.results.costs import build_costs, pair_costs, read_benchmark, stage_costs
from ccfv.results.figures import class_features, dice_heatmap, feature_tsne, scores_vs_dice, standardise
from ccfv.results.ground_truth import build_ground_truth, flags, read_csv, verdict
from ccfv.results.statistics import build_statistics
from ccfv.results.tables import build_tables

HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def _bench(path: Path, seconds: float, rss: float | str, cpu: float = 1.0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(HEADER + f"{seconds}\t0:00:01\t{rss}\t1\t1\t1\t0\t0\t50\t{cpu}\n")


@pytest.fixture
def benchmarks(tmp_path):
    root = tmp_path / "benchmarks"
    _bench(root / "pretrain/Task01_A.tsv", 100.0, 900.0, 90.0)
    _bench(root / "pretrain/random.tsv", 2.0, "NA")
    for target, model in [("Task01_A", "unet-Task02_B"), ("Task01_A", "unet-random")]:
        _bench(root / f"features/{target}/{model}.tsv", 4.0, 300.0)
        _bench(root / f"scores/{target}/{model}.tsv", 1.0, 80.0)
        for seed, seconds in [(0, 40.0), (1, 60.0)]:
            _bench(root / f"finetune/{target}/{model}/seed{seed}.tsv", seconds, 1000.0 + seed)
    return root


def test_read_benchmark(benchmarks):
    row = read_benchmark(benchmarks / "pretrain/Task01_A.tsv")
    assert row["s"] == 100.0 and row["max_rss"] == 900.0 and "h:m:s" not in row
    assert math.isnan(read_benchmark(benchmarks / "pretrain/random.tsv")["max_rss"])


def test_stage_and_pair_costs(benchmarks):
    stages = {r["stage"]: r for r in stage_costs(benchmarks)}
    assert set(stages) == {"pretrain", "features", "scores", "finetune"}
    assert stages["pretrain"] == {"stage": "pretrain", "n_jobs": 2, "total_s": 102.0, "max_s": 100.0, "cpu_s": 91.0,
                                  "peak_rss_mb": 900.0}
    assert stages["finetune"]["n_jobs"] == 4 and stages["finetune"]["total_s"] == 200.0
    pairs = pair_costs(benchmarks)
    assert [(p["target"], p["model"]) for p in pairs] == [("Task01_A", "unet-Task02_B"), ("Task01_A", "unet-random")]
    first = pairs[0]
    assert first["te_s"] == 5.0 and first["te_peak_rss_mb"] == 300.0 and first["n_seeds"] == 2
    assert first["finetune_s"] == 100.0 and first["finetune_over_te"] == 20.0 and first["finetune_peak_rss_mb"] == 1001.0
    only_seed0 = pair_costs(benchmarks, pairs=[("Task01_A", "unet-random")], seeds=[0])
    assert only_seed0[0]["finetune_s"] == 40.0 and only_seed0[0]["n_seeds"] == 1


def _make_results(tmp_path: Path) -> Path:
    """A results folder with tables and statistics built from small score and Dice files."""
    rng = np.random.default_rng(0)
    targets = ["Task01_A", "Task02_B", "Task03_C"]
    score_files, dice_files = {}, {}
    for t in targets:
        for m in [f"unet-{s}" for s in targets if s != t] + ["unet-random"]:
            path = tmp_path / "s" / t / f"{m}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"scores": {"ccfv": float(rng.normal()), "leep": float(rng.normal())}}))
            score_files[(t, m)] = path
            dice_files[(t, m)] = []
            for seed in range(2):
                d = tmp_path / "d" / t / m / f"seed{seed}.json"
                d.parent.mkdir(parents=True, exist_ok=True)
                d.write_text(json.dumps({"mean_dice": float(rng.uniform(0.2, 0.9))}))
                dice_files[(t, m)].append(d)
    results = tmp_path / "results"
    tables = {"table1": ["leep", "ccfv"], "table2": ["ccfv"]}
    # as the workflow does: the ground-truth check first, its flags marked in the tables
    marks = flags(build_ground_truth(dice_files, targets, results / "tables"))
    build_tables(score_files, dice_files, tables, targets, results / "tables", flags=marks)
    build_statistics(results / "tables/records.json", tables, targets, {t: 5 + i for i, t in enumerate(targets)},
                     results / "tables", n_bootstrap=100, n_permutations=100, n_simulations=50, flags=marks)
    return results


def test_print_report_prints_every_table(tmp_path, benchmarks):
    results = _make_results(tmp_path)
    build_costs(benchmarks, results / "tables")
    console = Console(file=io.StringIO(), width=200, color_system=None)
    assert print_report(results, console) == 11  # no table3: its metrics were not asked for
    text = console.file.getvalue()
    for title in ("Table 1", "Table 2", "paper's published", "Top-1 regret", "Noise ceiling", "bootstrap",
                  "Rel@1 and top-3 hit rate", "Leave-one-out stability", "eta squared", "Cost per stage", "fine-tuning cost"):
        assert title in text, title
    assert "Task01" in text and "CC-FV" in text and "Larger source dataset first" in text
    ceiling = list(csv.DictReader((results / "tables/noise_ceiling.csv").open()))
    assert all(r["available"] == "True" for r in ceiling)  # two seeds: the ceiling is defined


def test_cli_report(tmp_path, capsys):
    results = _make_results(tmp_path)
    assert main(["report", str(results)]) == 0
    out = capsys.readouterr().out
    assert "Table 1" in out and "LEEP" in out
    assert out.startswith("Ground truth: ")  # the verdict comes before the tables
    assert main(["report", str(tmp_path / "nothing")]) == 2
    assert "no tables folder" in capsys.readouterr().err


def test_cli_report_ground_truth_prints_the_verdict_in_words(tmp_path, capsys):
    results = _make_results(tmp_path)
    rows = read_csv(results / "tables/ground_truth.csv")
    # seed Dice drawn uniformly from [0.2, 0.9]: the choice of source moves the Dice no more than the seed
    assert not all(r["can_rank"] for r in rows)
    assert main(["report", str(results), "--ground-truth"]) == 0
    out = capsys.readouterr().out
    assert "Table 1" not in out
    for line in verdict(rows):
        assert " ".join(line.split()) in " ".join(out.split())
    for row in rows:
        if not row["can_rank"]:
            assert row["target"] in out and "spread across fine-tuning seeds" in out
    console = Console(file=io.StringIO(), width=200, color_system=None)
    assert print_ground_truth(results, console) == rows
    assert main(["report", str(tmp_path), "--ground-truth"]) == 2
    assert "no ground-truth table" in capsys.readouterr().err


def _features(path: Path, rng, n_cases=3, with_class=True) -> Path:
    meta = {"model_id": path.stem, "architecture": "unet", "target": "Task01_A", "seed": 0,
            "layers": ["decoder.stages.0", "decoder.stages.1"], "channels": [6, 4], "layer_ratios": [0.5, 1.0],
            "budgets": {"total": 40, "minimum": 5, "n_global": 10, "n_background": 10}, "patch_size": [8, 8, 8],
            "step_size": 0.5, "source_num_classes": 2}
    cases = []
    for c in range(n_cases):
        sizes = {"global": 10, "background": 10, **({"class_1": 30} if with_class else {})}
        coords = {k: rng.integers(0, 8, size=(n, 3)) for k, n in sizes.items()}
        labels = {k: np.full(n, 1 if k == "class_1" else 0) for k, n in sizes.items()}
        features = [{k: rng.normal(size=(max(1, n // 2), 6)).astype(np.float32) for k, n in sizes.items()},
                    {k: rng.normal(c, 1, size=(n, 4)).astype(np.float32) for k, n in sizes.items()}]
        cases.append(CaseRecord(case_id=f"case_{c}", class_ids=[1], absent_classes=[] if with_class else [1],
                                coords=coords, labels=labels, features=features))
    return write_features(path, meta, cases)


def test_dice_heatmap_colours_dice_on_its_own_zero_to_one_scale(tmp_path, monkeypatch):
    from ccfv.results import figures

    drawn = []
    monkeypatch.setattr(figures, "save", lambda fig, stem: drawn.append(fig) or [])
    records = [{"target": "Task01_A", "model": m, "dice": d}
               for m, d in (("unet-Task02_B", 0.81), ("unet-Task03_C", 0.62), ("unet-random", 0.25))]
    dice_heatmap(records, ["Task01_A"], tmp_path / "heatmap")
    ax = drawn[0].axes[0]
    image = ax.images[0]
    assert image.get_clim() == (0.0, 1.0)  # a Dice of 0.25 is not drawn in the colour of 0
    colours = {t.get_text(): t.get_color() for t in ax.texts}
    assert colours == {"0.810": "black", "0.620": "black", "0.250": "white"}


def test_figures_png_and_svg(tmp_path):
    results = _make_results(tmp_path)
    records = json.loads((results / "tables/records.json").read_text())
    targets = ["Task01_A", "Task02_B", "Task03_C"]
    written = scores_vs_dice(records, ["leep", "ccfv"], targets, tmp_path / "fig/scores_vs_dice")
    written += dice_heatmap(records, targets, tmp_path / "fig/dice_heatmap")
    rng = np.random.default_rng(1)
    files = {m: _features(tmp_path / f"f/{m}.h5", rng) for m in ("unet-Task02_B", "unet-random")}
    x, case = class_features(files["unet-random"], 1, per_case=12)
    assert x.shape == (36, 4) and sorted(set(case.tolist())) == [0, 1, 2]
    written += feature_tsne(files, "Task01_A", tmp_path / "fig/feature_tsne", per_case=12)
    assert sorted(p.name for p in written) == sorted(f"{s}.{e}" for s in ("scores_vs_dice", "dice_heatmap", "feature_tsne")
                                                     for e in ("png", "svg"))
    for path in written:
        head = path.read_bytes()[:200]
        assert head.startswith(b"\x89PNG") if path.suffix == ".png" else b"<svg" in path.read_bytes()[:2000]
    assert np.allclose(standardise([1.0, 2.0, 3.0]), [-1.2247449, 0.0, 1.2247449])
    assert not standardise([2.0, 2.0]).any()
    with pytest.raises(ValueError, match="no voxel of class 1"):
        class_features(_features(tmp_path / "f/empty.h5", rng, with_class=False), 1)


def test_model_styles_tell_every_model_of_a_bank_apart_without_labels():
    from ccfv.results.figures import MARKER_SIZE, RANDOM_COLOUR, model_styles

    models = ["unet-Task02_B", "unet-Task02_B@150", "unet-Task02_B@300", "unetr-Task02_B", "unet-Task03_C",
              "unetr-Task03_C", "unet-random", "unetr-random"]
    styles, handles = model_styles(models)
    key = {m: (s["marker"], str(s["color"]), s["filled"], s["size"]) for m, s in styles.items()}
    assert len(set(key.values())) == len(models)  # no two models drawn alike
    # colour = source, marker = architecture
    assert styles["unet-Task02_B"]["color"] == styles["unetr-Task02_B"]["color"] != styles["unet-Task03_C"]["color"]
    assert styles["unet-random"]["color"] == styles["unetr-random"]["color"] == RANDOM_COLOUR
    assert styles["unet-Task02_B"]["marker"] == styles["unet-random"]["marker"] != styles["unetr-random"]["marker"]
    # snapshots hollow and smaller, the earlier the smaller; the pretrained model full size
    sizes = [styles[m]["size"] for m in ("unet-Task02_B@150", "unet-Task02_B@300", "unet-Task02_B")]
    assert sizes[0] < sizes[1] < sizes[2] == MARKER_SIZE
    assert [styles[m]["filled"] for m in ("unet-Task02_B@150", "unet-Task02_B")] == [False, True]
    assert [h.get_label() for h in handles] == ["Task02_B", "Task03_C", "random init", "U-Net", "UNETR",
                                                "hollow: pretraining snapshot (smaller: earlier)"]
    # a source keeps its colour whatever else the bank holds (the same task in two panels)
    assert model_styles(["unet-Task02_B", "unet-Task03_C"])[0]["unet-Task03_C"]["color"] == \
        styles["unet-Task03_C"]["color"]


def test_scores_vs_dice_gives_each_panel_the_weighted_tau_of_table_1(tmp_path, monkeypatch):
    from ccfv.results import figures
    from ccfv.results.tables import correlations

    drawn = []
    monkeypatch.setattr(figures, "save", lambda fig, stem: drawn.append(fig) or [])
    models = ["unet-Task02_B", "unetr-Task02_B", "unet-Task03_C", "unetr-Task03_C", "unet-random"]
    dice = [0.8, 0.7, 0.6, 0.65, 0.3]
    leep = [3.0, 1.0, 2.0, 0.5, -1.0]
    records = [{"target": "Task01_A", "model": m, "dice": d, "scores": {"leep": s, "ccfv": -s}}
               for m, d, s in zip(models, dice, leep)]
    scores_vs_dice(records, ["leep", "ccfv"], ["Task01_A"], tmp_path / "fig")
    fig = drawn[0]
    texts = [[t.get_text() for t in ax.texts] for ax in fig.axes]
    assert texts == [[f"τw {correlations(leep, dice)['tau']:+.2f}"],
                     [f"τw {correlations([-v for v in leep], dice)['tau']:+.2f}"]]
    assert texts[0] != texts[1]
    # one point per model, no text label beside any (the legend says which is which)
    assert [len(ax.collections) for ax in fig.axes] == [len(models)] * 2
    assert not [c for ax in fig.axes for c in ax.get_children() if type(c).__name__ == "Annotation"]
    assert len(fig.legends) == 1


def test_figures_mark_a_target_whose_ground_truth_cannot_rank(tmp_path, monkeypatch):
    from ccfv.results import figures

    drawn = []
    monkeypatch.setattr(figures, "save", lambda fig, stem: drawn.append(fig) or [])
    records = [{"target": t, "model": m, "dice": d, "scores": {"leep": d}}
               for t in ("Task01_A", "Task02_B")
               for m, d in (("unet-Task03_C", 0.8), ("unetr-Task03_C", 0.5), ("unet-random", 0.02))]
    why = "2 of 3 models fine-tune to a mean Dice below 0.05"
    scores_vs_dice(records, ["leep"], ["Task01_A", "Task02_B"], tmp_path / "a", flags={"Task02_B": why})
    dice_heatmap(records, ["Task01_A", "Task02_B"], tmp_path / "b", flags={"Task02_B": why})
    scatter, heatmap = drawn
    assert [ax.get_title() for ax in scatter.axes] == ["Task01_A", "Task02_B†"]
    assert [t.get_text() for t in heatmap.axes[0].get_xticklabels()] == ["Task01\nA", "Task02\nB†"]
    for fig in drawn:
        footnote = f"† Task02_B: the fine-tuned Dice cannot rank the bank's models: {why}"
        assert [t.get_text() for t in fig.texts] == [footnote]
    drawn.clear()
    scores_vs_dice(records, ["leep"], ["Task01_A", "Task02_B"], tmp_path / "c")
    assert [ax.get_title() for ax in drawn[0].axes] == ["Task01_A", "Task02_B"] and not drawn[0].texts


def test_a_source_task_keeps_its_colour_in_every_bank():
    from ccfv.results.figures import source_colours

    demo = source_colours(["Task91_SynthLiver", "Task93_SynthPancreas", "Task94_SynthSpleen"])
    study = source_colours(["Task91_SynthLiver", "Task92_SynthLung", "Task93_SynthPancreas", "Task94_SynthSpleen"])
    assert all(demo[t] == study[t] for t in demo)
    # tasks whose numbers share a last digit still get distinct colours
    clash = source_colours(["Task01_A", "Task11_B", "Task21_C", "Other"])
    assert len(set(clash.values())) == 4
    # the MSD Pancreas (Task07) is not drawn in the random members' grey
    import matplotlib.pyplot as plt
    assert source_colours(["Task07_Pancreas"])["Task07_Pancreas"] != plt.get_cmap("tab10")(7)
