"""Tests for ccfv.results.reference: a run compared with a reference run, number by number, with the likely
reason when they differ; and ``ccfv report --reference``."""
from __future__ import annotations

import json

import pytest

from ccfv.cli import main
from ccfv.results.reference import compare_with_reference, write_reference


def write_run(folder, records, *, config="c0", commit="abc", pin="x86-64-v3,threads=1", level="x86-64-v3",
              model="AMD EPYC"):
    (folder / "tables").mkdir(parents=True)
    (folder / "tables" / "records.json").write_text(json.dumps(records))
    (folder / "provenance.json").write_text(json.dumps({
        "config_sha256": config, "git": {"commit": commit, "dirty": False}, "lock": {"sha256": "l"},
        "numerics": {"pin": pin, "cpu": {"model": model, "x86_64_level": level}, "torch": {"version": "2.14.1"},
                     "numpy": {"version": "2.4.6"}, "deviations": []}}))
    return folder


RECORDS = [{"target": "T1", "model": "unet-random", "dice": 0.5, "n_seeds": 2, "dice_per_seed": [0.4, 0.6],
            "scores": {"ccfv": -8.25, "logme": 0.125}},
           {"target": "T1", "model": "unet-T2", "dice": 0.7, "n_seeds": 2, "dice_per_seed": [0.7, None],
            "scores": {"ccfv": -7.5, "logme": 0.25}}]


def test_an_identical_run_is_identical(tmp_path):
    reference = write_reference(write_run(tmp_path / "a", RECORDS), tmp_path / "ref")
    run = write_run(tmp_path / "b", RECORDS)
    comparison = compare_with_reference(run, reference)
    assert comparison.identical and comparison.n_compared == 8  # 4 seeds' Dice (None included) and 4 scores
    assert comparison.lines()[0].startswith("identical to the reference (8 numbers")


def test_a_differing_number_is_named_with_its_size_and_the_likely_reason(tmp_path):
    reference = write_reference(write_run(tmp_path / "a", RECORDS), tmp_path / "ref")
    changed = json.loads(json.dumps(RECORDS))
    changed[1]["scores"]["ccfv"] = -7.5 + 2e-12
    changed[0]["dice_per_seed"][1] = 0.61
    run = write_run(tmp_path / "b", changed, level="x86-64-v4", pin=None, model="Intel Xeon")
    comparison = compare_with_reference(run, reference)
    assert not comparison.identical and len(comparison.differences) == 2
    lines = comparison.lines()
    assert lines[0] == "differs from the reference: 2 of 8 numbers (largest difference 0.01)"
    assert "T1 / unet-random / Dice seed 1: 0.61 here, 0.6 in the reference" in lines[1]
    assert any("T1 / unet-T2 / ccfv" in line for line in lines)
    reasons = " ".join(comparison.reasons)
    assert "not pinned" in reasons and "x86-64-v4" in reasons and "Intel Xeon" in reasons


def test_another_config_is_not_compared_and_missing_records_are_listed(tmp_path):
    reference = write_reference(write_run(tmp_path / "a", RECORDS), tmp_path / "ref")
    other = compare_with_reference(write_run(tmp_path / "b", RECORDS, config="c1"), reference)
    assert not other.comparable and "not the reference's" in other.lines()[0]
    fewer = compare_with_reference(write_run(tmp_path / "c", RECORDS[:1]), reference)
    assert not fewer.identical and fewer.missing == ["T1 / unet-T2 (reference only)"]
    with pytest.raises(FileNotFoundError, match="provenance.json: missing"):
        compare_with_reference(tmp_path / "nowhere", reference)


def test_cli_report_reference(tmp_path, capsys):
    reference = write_reference(write_run(tmp_path / "a", RECORDS), tmp_path / "ref")
    run = write_run(tmp_path / "b", RECORDS)
    assert main(["report", str(run), "--reference", str(reference)]) == 0
    assert "identical to the reference" in capsys.readouterr().out


def test_ccfv_report_writes_a_reference_with_the_reader_tables_and_refuses_an_unfinished_run(tmp_path, capsys):
    run = write_run(tmp_path / "a", RECORDS)
    (run / "tables" / "table1.md").write_text("| Table 1 |")
    assert main(["report", str(run), "--write-reference", str(tmp_path / "ref")]) == 0
    assert sorted(p.name for p in (tmp_path / "ref").iterdir()) == ["provenance.json", "records.json", "table1.md"]
    assert compare_with_reference(run, tmp_path / "ref").identical
    (run / "provenance.json").unlink()
    with pytest.raises(FileNotFoundError, match="provenance.json: missing"):
        write_reference(run, tmp_path / "ref2")
    assert not (tmp_path / "ref2").exists()
