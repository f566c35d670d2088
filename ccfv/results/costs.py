"""The cost of every stage and of every (target, model) pair, from Snakemake's benchmark files."""
from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

from ..io import write_text
from .formatting import csv_table, markdown_table, parse_number


def read_benchmark(path: str | Path) -> dict[str, float]:
    """The first repetition of a Snakemake benchmark file as {column: value} (NaN where not measured)."""
    lines = Path(path).read_text().splitlines()
    if len(lines) < 2:
        raise ValueError(f"{path}: not a Snakemake benchmark file (needs a header and a line)")
    header = lines[0].split("\t")
    values = lines[1].split("\t")
    return {k: parse_number(v) for k, v in zip(header, values) if k != "h:m:s"}


def _nansum(values: Iterable[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(sum(finite)) if finite else math.nan


def _nanmax(values: Iterable[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(max(finite)) if finite else math.nan


def stage_costs(benchmark_dir: str | Path) -> list[dict]:
    """Per stage under ``benchmark_dir``: n_jobs, total_s, max_s, cpu_s, peak_rss_mb. ``cpu_s`` sums Snakemake's
    ``cpu_time``, a lower bound: Snakemake samples a job every 30 s after its first 30 and loses what follows the
    last sample (docs/report.md, "Costs"); ``total_s`` and ``max_s`` (wall seconds) are exact."""
    root = Path(benchmark_dir)
    by_stage: dict[str, list[dict]] = {}
    for path in sorted(root.rglob("*.tsv")):
        by_stage.setdefault(path.relative_to(root).parts[0], []).append(read_benchmark(path))
    return [{"stage": stage, "n_jobs": len(rows), "total_s": _nansum(r.get("s", math.nan) for r in rows),
             "max_s": _nanmax(r.get("s", math.nan) for r in rows),
             "cpu_s": _nansum(r.get("cpu_time", math.nan) for r in rows),
             "peak_rss_mb": _nanmax(r.get("max_rss", math.nan) for r in rows)} for stage, rows in by_stage.items()]


def pair_costs(benchmark_dir: str | Path, pairs: Iterable[tuple[str, str]] | None = None,
               seeds: Iterable[int] | None = None) -> list[dict]:
    """Per (target, model): seconds and peak memory of transferability estimation
    (``features/<target>/<model>.tsv`` + ``scores/<target>/<model>.tsv``) and of fine-tuning
    (``finetune/<target>/<model>/seed<N>.tsv``, summed over seeds), and fine-tuning / estimation.

    ``pairs`` and ``seeds`` name the jobs of the current DAG; by default every features benchmark and
    every seed found (which may include jobs of an earlier config).
    """
    root = Path(benchmark_dir)
    if pairs is None:
        pairs = [(p.parent.name, p.stem) for p in sorted((root / "features").glob("*/*.tsv"))]
    rows = []
    for target, model in pairs:
        feats = read_benchmark(root / "features" / target / f"{model}.tsv")
        score_path = root / "scores" / target / f"{model}.tsv"
        score = read_benchmark(score_path) if score_path.exists() else {}
        folder = root / "finetune" / target / model
        seed_files = (sorted(folder.glob("seed*.tsv")) if seeds is None
                      else [folder / f"seed{s}.tsv" for s in seeds])
        seed_rows = [read_benchmark(p) for p in seed_files]
        te_s = _nansum([feats.get("s", math.nan), score.get("s", math.nan)])
        ft_s = _nansum(r.get("s", math.nan) for r in seed_rows)
        rows.append({
            "target": target, "model": model,
            "features_s": feats.get("s", math.nan), "score_s": score.get("s", math.nan), "te_s": te_s,
            "te_peak_rss_mb": _nanmax([feats.get("max_rss", math.nan), score.get("max_rss", math.nan)]),
            "n_seeds": len(seed_rows), "finetune_s": ft_s,
            "finetune_peak_rss_mb": _nanmax(r.get("max_rss", math.nan) for r in seed_rows),
            "finetune_over_te": ft_s / te_s if te_s and math.isfinite(te_s) and math.isfinite(ft_s) else math.nan,
        })
    return rows


STAGE_COLUMNS = ["stage", "n_jobs", "total_s", "max_s", "cpu_s", "peak_rss_mb"]
PAIR_COLUMNS = ["target", "model", "features_s", "score_s", "te_s", "te_peak_rss_mb", "n_seeds", "finetune_s",
                "finetune_peak_rss_mb", "finetune_over_te"]


def build_costs(benchmark_dir: str | Path, out_dir: str | Path, pairs: Iterable[tuple[str, str]] | None = None,
                seeds: Iterable[int] | None = None) -> dict[str, list[dict]]:
    """Write ``costs_per_stage.{csv,md}`` (every benchmark file under ``benchmark_dir``) and
    ``costs_per_pair.{csv,md}`` (see :func:`pair_costs`) under ``out_dir``."""
    stages, pairs = stage_costs(benchmark_dir), pair_costs(benchmark_dir, pairs, seeds)
    out = Path(out_dir)
    write_text(out / "costs_per_stage.csv", csv_table(stages, STAGE_COLUMNS))
    write_text(out / "costs_per_stage.md", markdown_table(
        stages, STAGE_COLUMNS, ["Stage", "Jobs", "Total s", "Longest s", "CPU s", "Peak RSS MB"],
        "Cost per stage, from Snakemake's benchmark files (wall-clock seconds, peak resident memory)"))
    write_text(out / "costs_per_pair.csv", csv_table(pairs, PAIR_COLUMNS))
    write_text(out / "costs_per_pair.md", markdown_table(
        pairs, PAIR_COLUMNS, ["Target", "Model", "Features s", "Score s", "TE s", "TE peak MB", "Seeds",
                              "Fine-tune s", "Fine-tune peak MB", "Fine-tune / TE"],
        "Transferability estimation (sample_features + score) against fine-tuning, per (target, model)"))
    return {"stages": stages, "pairs": pairs}
