"""Smoke test of benchmarks/bench_guards.py at tiny sizes: one data job of the tiny config's DAG instead of the
demo, one small test module instead of the suite, one calibration step. The seconds mean little at this size;
what must hold at any size is checked: the last line's format, the figures that follow from others, the DAG's
target made in the scratch directory (and that directory removed unless --keep), and a failing part named."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "bench_guards.py"
TINY = ROOT / "tests" / "configs" / "tiny.yaml"
TARGET = "results/data/Task91_SynthLiver/dataset.json"
FIGURE = re.compile(r"(\w+)=(\S+)")


def run_script(*args, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def test_bench_guards_smoke(tmp_path):
    result = run_script("--config", TINY, "--targets", TARGET, "--pytest-args", "tests/test_package_layout.py",
                        "--workers", "1", "--calib-steps", "1", "--scratch", tmp_path, "--keep")
    assert result.returncode == 0, result.stdout + result.stderr
    last = result.stdout.strip().splitlines()[-1]
    figures = dict(FIGURE.findall(last))
    assert list(figures) == ["calib_step_s",
                             *(f"{part}_{key}" for part in ("demo", "tests")
                               for key in ("wall_s", "cpu_s", "min_wall_s", "guard_s", "wall_over_guard",
                                           "cpu_in_steps")),
                             "others_cpu_s", "cores", "load_before"], last
    value = {k: float(v) for k, v in figures.items()}
    assert value["calib_step_s"] > 0
    assert value["demo_guard_s"] == 480 and value["tests_guard_s"] == 540
    usable = {"demo": min(value["cores"], 2), "tests": 1}
    for part in ("demo", "tests"):
        # every job is a process that imports Python packages: never free
        assert value[f"{part}_wall_s"] > 0 and value[f"{part}_cpu_s"] > 0.1, last
        assert abs(value[f"{part}_wall_over_guard"] - value[f"{part}_wall_s"] / value[f"{part}_guard_s"]) < 2e-3
        assert abs(value[f"{part}_min_wall_s"] - value[f"{part}_cpu_s"] / usable[part]) < 0.1
        # both printed figures are rounded: the CPU-seconds to 0.05, the steps to 0.5
        steps = value[f"{part}_cpu_s"] / value["calib_step_s"]
        assert abs(value[f"{part}_cpu_in_steps"] - steps) <= 0.5 + 0.05 / value["calib_step_s"] + 1e-3 * steps
    assert value["others_cpu_s"] >= 0
    # the demo ran from scratch in its own directory, kept on request: its target is there
    (workdir,) = tmp_path.glob("ccfv-bench-guards-*")
    assert (workdir / TARGET).is_file()
    assert "passed" in result.stdout  # the pytest part's last line


def test_bench_guards_names_a_failing_part_and_removes_its_scratch(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(TINY.read_text().replace("tasks: [Task91_SynthLiver, Task94_SynthSpleen]", "tasks: []"))
    scratch = tmp_path / "scratch"
    result = run_script("--parts", "demo", "--config", bad, "--calib-steps", "1", "--scratch", scratch)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "bench_guards: the demo part failed" in result.stderr, result.stderr
    assert list(scratch.iterdir()) == []
    missing = run_script("--parts", "demo", "--config", tmp_path / "nowhere.yaml")
    assert missing.returncode == 2 and "nowhere.yaml: no such config file" in missing.stderr
