"""The ``ccfv`` command line."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ccfv.cli import main

CCFV = str(Path(sys.executable).with_name("ccfv"))


def test_console_script_is_installed_and_reports_its_version():
    from ccfv import __version__

    result = subprocess.run([CCFV, "--version"], capture_output=True, text=True)
    assert result.returncode == 0
    assert result.stdout.strip() == f"ccfv {__version__}"


def test_synthesize_writes_msd_layout(tmp_path, capsys):
    assert main(["synthesize", "--out", str(tmp_path), "--n-cases", "4", "--task", "Task94_SynthSpleen"]) == 0
    task = tmp_path / "Task94_SynthSpleen"
    meta = json.loads((task / "dataset.json").read_text())
    assert meta["numTraining"] == 4 and len(list((task / "labelsTr").glob("*.nii.gz"))) == 4
    assert str(task) in capsys.readouterr().out


def test_synthesize_refuses_to_overwrite_without_flag(tmp_path, capsys):
    args = ["synthesize", "--out", str(tmp_path), "--n-cases", "4", "--task", "Task94_SynthSpleen"]
    assert main(args) == 0
    assert main(args) == 2
    assert "exists" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0


def test_score_of_a_missing_file_is_a_clear_error(tmp_path, capsys):
    missing = tmp_path / "nope.h5"
    assert main(["score", str(missing)]) == 2
    assert str(missing) in capsys.readouterr().err


def test_score_of_a_file_that_is_not_hdf5_names_it(tmp_path, capsys):
    bad = tmp_path / "bad.h5"
    bad.write_text("not hdf5")
    assert main(["score", str(bad)]) == 2
    assert str(bad) in capsys.readouterr().err


def test_unknown_metric_is_refused(tmp_path, capsys):
    assert main(["score", str(tmp_path / "x.h5"), "--metric", "nonsense"]) == 2
    assert "unknown metric" in capsys.readouterr().err


def test_score_needs_a_file():
    with pytest.raises(SystemExit):
        main(["score"])


def test_rank_window_budget_option():
    from ccfv.cli import build_parser, rank_sampling
    from ccfv.features.settings import SamplingSettings

    def sampling(*extra):
        return rank_sampling(build_parser().parse_args(["rank", "--data", "d", "--model", "m", *extra]))

    assert sampling("--window-budget", "3") == {"seed": 0, "total": 1000, "window_budget": 3}
    assert SamplingSettings.from_mapping(sampling("--window-budget", "0")).window_budget is None
    assert SamplingSettings.from_mapping(sampling()).window_budget == SamplingSettings().window_budget
    with pytest.raises(SystemExit):
        sampling("--window-budget", "-1")


def test_rank_uses_at_most_twenty_cases_by_default_and_all_with_zero():
    from ccfv.cli import DEFAULT_MAX_CASES, build_parser

    parser = build_parser()
    args = parser.parse_args(["rank", "--data", "d", "--model", "m"])
    assert args.max_cases == DEFAULT_MAX_CASES == 20
    assert parser.parse_args(["rank", "--data", "d", "--model", "m", "--max-cases", "0"]).max_cases == 0


@pytest.mark.parametrize("command", ["rank", "finetune"])
def test_rank_and_finetune_pin_the_numerics_before_numpy_loads(command, tmp_path):
    """The option defaults must not import numpy: ``ccfv rank --confirm`` once built its protocol options from
    a module importing numpy, so every ranking ran unpinned (a warning said numpy had loaded first). A fresh
    interpreter, as the console script starts: the pin must apply, or fail only for the machine's own reasons
    (a CPU below the level), never because numpy came first."""
    missing = tmp_path / "missing"
    code = ("import sys\nfrom ccfv.cli import main\n"
            f"sys.exit(main([{command!r}, '--data', {str(missing)!r}, '--model', {str(missing)!r}, "
            f"'--out', {str(tmp_path / 'out')!r}]))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                            env={k: v for k, v in os.environ.items() if k != "CCFV_NUMERICS_PIN"})
    assert result.returncode == 2, result.stderr[-2000:]
    assert "before numpy is imported" not in result.stderr, result.stderr[-2000:]
    assert "missing" in result.stderr  # the bad data is named
