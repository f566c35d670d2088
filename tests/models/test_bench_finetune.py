"""Smoke test of benchmarks/bench_finetune.py (it needs the shared material, hence here and not in
tests/test_benchmarks.py, which lists it): hippodeep's speed for one iteration, and a one-iteration pilot of
hippodeep and its random copy on five Task04 cases; the last line's format."""
from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_finetune.py"


def test_bench_finetune_smoke(brainchop_dir, hippodeep_weights, task04_dir, tmp_path):
    shared = brainchop_dir.parents[1]
    result = subprocess.run([sys.executable, str(SCRIPT), "--shared", str(shared), "--speed", "--models", "hippodeep",
                             "--threads", "1", "--speed-iterations", "1", "--pilot", "--pilot-models", "hippodeep",
                             "--iterations", "1", "--cases", "5", "--work", str(tmp_path)],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    pairs = dict(token.split("=", 1) for token in result.stdout.strip().splitlines()[-1].split())
    assert set(pairs) == {"load_before", "hippodeep_s_per_iteration_1t", "hippodeep_dice", "hippodeep_s_per_iteration",
                          "hippodeep-random0_dice", "hippodeep-random0_s_per_iteration", "load_after"}
    assert float(pairs["hippodeep_s_per_iteration_1t"]) > 0
    for name in ("hippodeep", "hippodeep-random0"):
        assert 0 <= float(pairs[f"{name}_dice"]) <= 1 and not math.isnan(float(pairs[f"{name}_s_per_iteration"]))
    assert "(original space)" in result.stdout


def test_bench_finetune_says_what_is_missing(tmp_path):
    result = subprocess.run([sys.executable, str(SCRIPT), "--shared", str(tmp_path), "--speed"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2 and "Task04_Hippocampus: missing" in result.stderr
