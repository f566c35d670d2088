"""Tests for ccfv.data.checksums: file checksums of a task, preprocessed-array checksums, the digest."""
from __future__ import annotations

import hashlib
import json

import pytest

from ccfv.data.checksums import case_id, digest_of, sha256_file, training_files, tree_digest, validate_and_record
from ccfv.data.synthetic import write_task
from ccfv.preprocess.nnunet import preprocessed_cases


@pytest.fixture
def task(tmp_path):
    return write_task("Task94_SynthSpleen", tmp_path / "msd", n_cases=4, seed=0, shape=(24, 24, 12))


def test_sha256_file(tmp_path):
    (tmp_path / "f").write_bytes(b"x" * 3_000_000)
    assert sha256_file(tmp_path / "f") == hashlib.sha256(b"x" * 3_000_000).hexdigest()


def test_case_id():
    assert case_id("./imagesTr/liver_3.nii.gz") == "liver_3"
    assert case_id("labelsTr/x.nii") == "x"


def test_digest_is_order_independent_and_content_sensitive():
    assert digest_of({"a": "1", "b": "2"}) == digest_of({"b": "2", "a": "1"})
    assert digest_of({"a": "1", "b": "2"}) != digest_of({"a": "1", "b": "3"})


def test_training_files_covers_every_listed_case_and_tracks_content(task):
    dataset = json.loads((task / "dataset.json").read_text())
    record = training_files(task)
    assert sorted(record["cases"]) == sorted(case_id(e["image"]) for e in dataset["training"])
    first = dataset["training"][0]
    assert record["cases"][case_id(first["label"])]["label"] == sha256_file(task / first["label"])
    # one changed byte in one label changes that case's entry and the digest, nothing else
    label = task / first["label"]
    label.write_bytes(label.read_bytes() + b"\0")
    again = training_files(task)
    assert again["digest"] != record["digest"]
    changed = [c for c in record["cases"] if record["cases"][c] != again["cases"][c]]
    assert changed == [case_id(first["label"])]


def test_validate_and_record_writes_nothing_for_a_broken_task(task, tmp_path):
    from ccfv.data.validate import DatasetError

    out = tmp_path / "checksums" / "files.json"
    assert validate_and_record(task, out)["digest"] == json.loads(out.read_text())["digest"]
    out.unlink()
    dataset = json.loads((task / "dataset.json").read_text())
    (task / dataset["training"][0]["image"]).unlink()
    with pytest.raises(DatasetError, match=dataset["training"][0]["image"].lstrip("./")):
        validate_and_record(task, out)
    assert not out.exists()


def test_preprocessed_cases_are_stable_and_per_case(tiny_dataset):
    from ccfv.preprocess.nnunet import case_identifiers

    first = preprocessed_cases(tiny_dataset.preprocessed)
    assert sorted(first["cases"]) == case_identifiers(tiny_dataset.preprocessed)
    assert preprocessed_cases(tiny_dataset.preprocessed) == first
    assert len(set(first["cases"].values())) == len(first["cases"])  # distinct cases, distinct checksums


def test_tree_digest_follows_the_bytes_not_the_mtimes_and_caches_by_size_and_mtime(tmp_path):
    import os
    import shutil

    model = tmp_path / "model"
    (model / "sub").mkdir(parents=True)
    (model / "model.json").write_text('{"a": 1}')
    (model / "sub" / "weights.bin").write_bytes(bytes(range(200)))
    cache = tmp_path / ".snakemake" / "ccfv" / "digests.json"
    first = tree_digest(model, cache)
    assert first == digest_of({"model.json": sha256_file(model / "model.json"),
                               "sub/weights.bin": sha256_file(model / "sub" / "weights.bin")})
    assert len(json.loads(cache.read_text())) == 2
    assert tree_digest(model / "model.json") == sha256_file(model / "model.json")  # a file: its own SHA-256

    copy = tmp_path / "copy"
    shutil.copytree(model, copy, copy_function=shutil.copy)  # new mtimes, the same bytes
    assert tree_digest(copy, cache) == first
    os.utime(model / "sub" / "weights.bin", ns=(1, 1))
    assert tree_digest(model, cache) == first

    # the cache is trusted while size and mtime match (so a stale entry shows it was used), then refreshed
    entries = json.loads(cache.read_text())
    key = str((model / "model.json").resolve())
    entries[key][2] = "0" * 64
    cache.write_text(json.dumps(entries))
    assert tree_digest(model, cache) != first
    (model / "model.json").write_text('{"a": 2}')  # new bytes (and a new size): hashed again
    changed = tree_digest(model, cache)
    assert changed not in (first, tree_digest(copy))
    assert json.loads(cache.read_text())[key][2] == sha256_file(model / "model.json")

    (model / "extra.txt").write_text("x")  # a new file changes the digest; so does a renamed one
    assert tree_digest(model) != changed
    cache.write_text("not json")  # an unreadable cache is ignored and rewritten
    assert tree_digest(copy, cache) == first and json.loads(cache.read_text())
    with pytest.raises(FileNotFoundError, match="missing"):
        tree_digest(tmp_path / "missing", cache)
