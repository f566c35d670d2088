"""Smoke test of benchmarks/bench_real_models.py (it needs the shared material, hence here and not in
tests/test_benchmarks.py, which lists it): one small model, one case, one repeat; the last line's format."""
from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_real_models.py"


def test_bench_real_models_smoke(brainchop_dir, hippodeep_weights, task04_dir):
    shared = brainchop_dir.parents[1]
    result = subprocess.run([sys.executable, str(SCRIPT), "--shared", str(shared), "--models", "model5_gw_ae",
                             "--cases", "1", "--repeats", "1"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    pairs = dict(token.split("=", 1) for token in result.stdout.strip().splitlines()[-1].split())
    assert set(pairs) == {"load_before", "model5_gw_ae_load_s", "model5_gw_ae_window_s", "model5_gw_ae_dice",
                          "load_after"}
    assert float(pairs["model5_gw_ae_load_s"]) > 0 and float(pairs["model5_gw_ae_window_s"]) > 0
    assert math.isnan(float(pairs["model5_gw_ae_dice"]))  # no hippocampus class: no Dice


def test_bench_real_models_says_what_is_missing(tmp_path):
    result = subprocess.run([sys.executable, str(SCRIPT), "--shared", str(tmp_path)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2 and "Task04_Hippocampus: missing" in result.stderr
