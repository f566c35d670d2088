"""Tests for ccfv.results.provenance: the config hash changes with the config and nothing else; every field of the
record on a small results folder."""
from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest
import yaml

from ccfv.results.provenance import (
    build_provenance,
    canonical_json,
    config_hash,
    data_checksums,
    lock_state,
    run_times,
    seeds_in,
)

ROOT = Path(__file__).resolve().parents[2]


def _config():
    return yaml.safe_load((ROOT / "config/config.yaml").read_text())


def _reordered(value):
    if isinstance(value, dict):
        return {k: _reordered(value[k]) for k in reversed(list(value))}
    if isinstance(value, list):
        return [_reordered(v) for v in value]
    return value


def _results(tmp_path: Path) -> Path:
    results = tmp_path / "results"
    for task in ("Task91_SynthLiver", "Task92_SynthLung"):
        folder = results / "checksums" / task
        folder.mkdir(parents=True)
        (folder / "files.json").write_text(json.dumps({"digest": "a" * 64, "cases": {}}))
        (folder / "preprocessed.json").write_text(json.dumps({"digest": "b" * 64}))
    bench = results / "benchmarks" / "scores"
    bench.mkdir(parents=True)
    for i, seconds in enumerate([10.0, 100.0]):
        path = bench / f"job{i}.tsv"
        path.write_text("s\th:m:s\tmax_rss\tcpu_time\n" f"{seconds}\t0:00:10\t50.0\t1.0\n")
        os.utime(path, (1_700_000_000 + 1000 * i, 1_700_000_000 + 1000 * i))
    return results


def test_config_hash_changes_with_the_config_and_not_otherwise(tmp_path):
    config = _config()
    digest = config_hash(config)
    assert len(digest) == 64 and digest == config_hash(copy.deepcopy(config))
    # the same settings in another key order: the same hash
    assert config_hash(_reordered(config)) == digest
    assert canonical_json(_reordered(config)) == canonical_json(config)
    # any changed setting: another hash
    for change in (lambda c: c["finetune"].update(seeds=[0, 1]), lambda c: c["scoring"]["metrics"]["ccfv"].update(s=0),
                   lambda c: c["tasks"].reverse(), lambda c: c["split"].update(test_fraction=0.25)):
        changed = copy.deepcopy(config)
        change(changed)
        assert config_hash(changed) != digest
    # the whole record: same config, another time and another results folder -> same hash
    results = _results(tmp_path)
    first = build_provenance(config, results, ROOT, probe_gpu=False, now=1_800_000_000)
    second = build_provenance(_reordered(config), results, ROOT, probe_gpu=False, now=1_900_000_000)
    assert first["config_sha256"] == second["config_sha256"] == digest
    assert first["times"] != second["times"]
    changed = copy.deepcopy(config)
    changed["sampling"]["seed"] = 1
    assert build_provenance(changed, results, ROOT, probe_gpu=False)["config_sha256"] != digest


def test_provenance_record_fields(tmp_path):
    config = _config()
    results = _results(tmp_path)
    rules = {"score": {"conda": "scores.yaml", "container": "containers/ccfv.sif"},
             "pretrain": {"conda": "nnunet.yaml", "container": "containers/ccfv.sif"}}
    record = build_provenance(config, results, ROOT, rules=rules, probe_gpu=False, now=1_700_005_000,
                              analysis={"statistics": {"n_bootstrap": 10, "seed": 4}, "tsne": {"seed": 5}})
    assert json.loads(json.dumps(record)) == record  # plain JSON
    assert len(record["git"]["commit"]) == 40 and isinstance(record["git"]["dirty"], bool)
    assert record["config"] == json.loads(json.dumps(config))
    assert len(record["lock"]["sha256"]) == 64 and record["lock"]["packages"]["numpy"]["matches"] is True
    assert record["rules"]["score"]["conda_sha256"] and record["rules"]["score"]["container"] == "containers/ccfv.sif"
    assert set(record["data_checksums"]) == {"Task91_SynthLiver", "Task92_SynthLung"}
    assert record["data_checksums"]["Task91_SynthLiver"]["files.json"]["digests"] == {"digest": "a" * 64}
    assert record["seeds"]["finetune.seeds"] == config["finetune"]["seeds"]
    assert record["seeds"]["pretrain.seed"] == config["pretrain"]["seed"]
    assert record["seeds"]["analysis.statistics.seed"] == 4 and record["seeds"]["analysis.tsne.seed"] == 5
    assert record["analysis"]["statistics"]["n_bootstrap"] == 10
    assert record["hardware"]["cpu_count"] >= 1
    # start: the earliest job start, mtime minus its seconds (job0 ended at +0 after 10 s; job1 started at +900)
    assert record["times"]["start"] == "2023-11-14T22:13:10+00:00"
    assert record["times"]["end"] == "2023-11-14T23:36:40+00:00"


def test_helpers_on_edge_cases(tmp_path):
    assert seeds_in({"a": {"seed": 1}, "b": [{"seeds": [2]}], "c": 3}) == {"a.seed": 1, "b[0].seeds": [2]}
    assert lock_state(tmp_path / "missing.lock")["sha256"] is None
    (tmp_path / "r.lock").write_text("numpy==0.0.1\n# comment\nnot-installed-package-xyz==1.0\n")
    packages = lock_state(tmp_path / "r.lock")["packages"]
    assert packages["numpy"]["matches"] is False and packages["not-installed-package-xyz"]["installed"] is None
    assert data_checksums(tmp_path / "none") == {}
    assert run_times(tmp_path / "none", now=0)["start"] is None
    with pytest.raises(ValueError):
        config_hash({"x": float("nan")})
