"""Smoke test of benchmarks/bench_pinning.py at tiny sizes (tests/test_benchmarks.py's style: a subprocess
with the suite's Python, its last line checked). The seconds of a tiny run mean little; what must hold at
any size is checked: the format, ratios that follow from the printed seconds, pinned children that agree
bit for bit, and pinned bits that differ from unpinned ones (the pin sets MKL's COMPATIBLE branch)."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ccfv.reproducibility import cpu_flags, x86_64_level

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "bench_pinning.py"
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
LINE = re.compile(r"unpinned_s=(\S+) pinned_s=(\S+) unet_ratio=(\S+) unetr_ratio=(\S+) sampling_ratio=(\S+) "
                  r"pinned_repeats_identical=([01]) no_onednn_time_ratio=(\S+) pinned_time_ratio=(\d+\.\d{3})")


def run_script(*args, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.skipif(x86_64_level(cpu_flags()) not in ("x86-64-v3", "x86-64-v4"),
                    reason="the default pin needs an x86-64-v3 CPU")
def test_bench_pinning_smoke(tmp_path):
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    config.update(network=TINY_NETWORK, unetr=TINY_UNETR)
    config["sampling"]["layer_ratios"]["unet"] = [0.5, 1.0]  # one per hooked decoder stage: 2 with 3 stages
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    result = run_script("--config", path, "--repeats", 2, "--iterations", 2, "--unetr-iterations", 1,
                        "--shape", 24, 24, 24, "--no-onednn")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.strip().splitlines()
    match = LINE.fullmatch(lines[-1])
    assert match, lines[-1]
    unpinned, pinned, *ratios, identical, no_onednn, ratio = match.groups()
    assert float(unpinned) > 0 and float(pinned) > 0 and all(float(r) > 0 for r in ratios)
    # the seconds are printed rounded to 3 decimals, the ratio from the unrounded ones
    assert float(ratio) == pytest.approx(float(pinned) / float(unpinned), rel=0.02)
    assert float(no_onednn) > 0
    assert identical == "1"  # two pinned children in fresh processes, bit for bit
    assert "pinned bits differ from unpinned ones: True" in result.stdout
    assert "load average at start:" in result.stdout and "load average at end:" in result.stdout
    # 2 rounds x 3 variants, alternating order
    rounds = [line.split()[2] for line in lines if line.startswith("  round ")]
    assert rounds == ["unpinned", "pinned", "pinned_no_onednn", "pinned_no_onednn", "pinned", "unpinned"]


def test_bench_pinning_rejects_bad_arguments(tmp_path):
    result = run_script("--repeats", 0)
    assert result.returncode == 2 and "must be at least 1" in result.stderr
    result = run_script("--config", tmp_path / "missing.yaml")
    assert result.returncode == 2 and "no such config file" in result.stderr
    result = run_script("--level", "x86-64-v4")
    assert result.returncode == 2 and "invalid choice" in result.stderr
