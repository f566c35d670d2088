"""Tests for ccfv.preprocess.splits: the seeded train/test split, its file and the checks on reading it back."""

from __future__ import annotations

import json
import math

import pytest

from ccfv.preprocess.splits import make_split, read_split, write_split


def _cases(n: int) -> list[str]:
    return [f"case_{i}" for i in range(n)]


def _expected_n_test(n: int, fraction: float) -> int:
    """floor(n * f + 0.5) (round half up), clamped to [1, n - 1]."""
    return min(n - 1, max(1, math.floor(n * fraction + 0.5)))


@pytest.mark.parametrize(
    ("n", "fraction", "n_test"),
    [
        (10, 0.2, 2),
        (5, 0.2, 1),
        (5, 0.3, 2),   # 1.5 rounds up
        (5, 0.5, 3),   # 2.5 rounds half up to 3, not to the even 2
        (2, 0.01, 1),  # at least one test case
        (2, 0.99, 1),  # at least one training case
        (3, 0.9, 2),
        (41, 0.2, 8),
        (131, 0.2, 26),
    ],
)
def test_make_split_sizes(n, fraction, n_test):
    assert _expected_n_test(n, fraction) == n_test  # the table above is the rule written out
    split = make_split(_cases(n), fraction, seed=0)
    assert len(split["test"]) == n_test
    assert len(split["train"]) == n - n_test


@pytest.mark.parametrize("seed", [0, 1, 7, 12345])
def test_make_split_is_a_partition_of_the_cases(seed):
    cases = _cases(17)
    split = make_split(cases, 0.25, seed=seed)
    assert set(split["train"]).isdisjoint(split["test"])
    assert sorted(split["train"] + split["test"]) == sorted(cases)
    assert split["train"] == sorted(split["train"])
    assert split["test"] == sorted(split["test"])
    assert split["seed"] == seed
    assert split["test_fraction"] == 0.25


def test_make_split_same_seed_same_split_regardless_of_input_order():
    cases = _cases(20)
    a = make_split(cases, 0.2, seed=3)
    b = make_split(list(reversed(cases)), 0.2, seed=3)
    assert a == b


def test_make_split_different_seeds_usually_differ():
    cases = _cases(20)
    tests = {tuple(make_split(cases, 0.2, seed=s)["test"]) for s in range(10)}
    # 4 of 20 cases: C(20, 4) = 4845 possible test sets; ten seeds all giving one set would be a bug.
    assert len(tests) >= 8


def test_make_split_digest_depends_on_the_case_list_only():
    a = make_split(_cases(6), 0.5, seed=0)
    b = make_split(_cases(6), 0.2, seed=9)
    c = make_split(_cases(7), 0.5, seed=0)
    assert a["cases_sha256"] == b["cases_sha256"]
    assert a["cases_sha256"] != c["cases_sha256"]
    assert len(a["cases_sha256"]) == 64


@pytest.mark.parametrize("cases", [[], ["only"]])
def test_make_split_needs_two_cases(cases):
    with pytest.raises(ValueError, match="at least 2 cases"):
        make_split(cases, 0.5, seed=0)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_make_split_rejects_fractions_outside_the_open_interval(fraction):
    with pytest.raises(ValueError, match="test_fraction"):
        make_split(_cases(5), fraction, seed=0)


def test_write_read_round_trip(tmp_path):
    cases = _cases(9)
    split = make_split(cases, 0.3, seed=4)
    path = tmp_path / "nested" / "dir" / "Task09_Spleen.json"
    write_split(split, path)
    assert read_split(path) == split
    assert read_split(path, cases=list(reversed(cases))) == split  # order of the given cases is irrelevant
    assert json.loads(path.read_text()) == split
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no scratch file left behind


def test_write_split_replaces_an_existing_file(tmp_path):
    path = tmp_path / "split.json"
    write_split(make_split(_cases(5), 0.2, seed=0), path)
    newer = make_split(_cases(8), 0.2, seed=1)
    write_split(newer, path)
    assert read_split(path) == newer


def test_read_split_missing_file_names_it(tmp_path):
    path = tmp_path / "nope.json"
    with pytest.raises(FileNotFoundError, match="nope.json"):
        read_split(path)


def test_read_split_bad_json_names_the_file(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"train": [')
    with pytest.raises(ValueError, match="broken.json.*not valid JSON"):
        read_split(path)


@pytest.mark.parametrize("key", ["train", "test", "cases_sha256"])
def test_read_split_missing_key_names_file_and_key(tmp_path, key):
    split = make_split(_cases(5), 0.2, seed=0)
    del split[key]
    path = tmp_path / "split.json"
    path.write_text(json.dumps(split))
    with pytest.raises(ValueError, match=rf"split\.json.*'{key}'"):
        read_split(path)


def test_read_split_overlap_names_file_and_cases(tmp_path):
    split = make_split(_cases(6), 0.5, seed=0)
    shared = split["test"][0]
    split["train"] = sorted(split["train"] + [shared])
    path = tmp_path / "overlap.json"
    path.write_text(json.dumps(split))
    with pytest.raises(ValueError, match=rf"overlap\.json.*both train and test.*{shared}"):
        read_split(path)


@pytest.mark.parametrize(
    "changed",
    [
        _cases(6) + ["case_new"],        # a case added
        _cases(5),                        # a case removed
        _cases(5) + ["case_renamed"],     # a case renamed
    ],
)
def test_read_split_refuses_a_changed_case_list(tmp_path, changed):
    path = tmp_path / "stale.json"
    write_split(make_split(_cases(6), 0.2, seed=0), path)
    with pytest.raises(ValueError, match=r"stale\.json.*cases changed"):
        read_split(path, cases=changed)
    # Without a case list to check against it is still readable.
    assert read_split(path)["train"]


# --------------------------------------------------------------------------------------------------
# split_task: the recorded split that survives reruns
# --------------------------------------------------------------------------------------------------


def test_split_task_records_the_first_split(tmp_path):
    from ccfv.preprocess.splits import split_task

    record = tmp_path / "T.record.json"
    split = split_task("T", _cases(10), "abc", 0.2, 0, record)
    assert json.loads(record.read_text()) == split
    assert split["files_sha256"] == "abc" and split["task"] == "T"
    assert split["train"] == make_split(_cases(10), 0.2, 0)["train"]


def test_split_task_reuses_the_record_for_the_same_data(tmp_path):
    from ccfv.preprocess.splits import split_task

    record = tmp_path / "T.record.json"
    first = split_task("T", _cases(10), "abc", 0.2, 0, record)
    # even a record edited by hand (a split made elsewhere) is what later runs use, not a fresh draw
    edited = {**first, "train": first["train"][1:] + first["test"][:1], "test": first["test"][1:] + first["train"][:1]}
    record.write_text(json.dumps(edited))
    assert split_task("T", list(reversed(_cases(10))), "abc", 0.2, 0, record) == edited


@pytest.mark.parametrize(
    ("cases", "digest", "fraction", "seed", "message"),
    [
        (_cases(11), "abc", 0.2, 0, r"cases added \['case_10'\], removed \[\]"),
        (_cases(9), "abc", 0.2, 0, r"removed \['case_9'\]"),
        (_cases(10), "xyz", 0.2, 0, "image or label files changed"),
        (_cases(10), "abc", 0.2, 1, "split.seed is 1 in the config but 0 in the record"),
        (_cases(10), "abc", 0.3, 0, "split.test_fraction is 0.3 in the config but 0.2 in the record"),
    ],
)
def test_split_task_refuses_changed_data_or_settings(tmp_path, cases, digest, fraction, seed, message):
    from ccfv.preprocess.splits import SplitError, split_task

    record = tmp_path / "T.record.json"
    split_task("T", _cases(10), "abc", 0.2, 0, record)
    before = record.read_text()
    with pytest.raises(SplitError, match=message) as err:
        split_task("T", cases, digest, fraction, seed, record)
    assert str(record) in str(err.value) and "delete" in str(err.value)
    assert record.read_text() == before  # the record is never rewritten by a refused run
    # deleting the record is how a user asks for a new split
    record.unlink()
    assert split_task("T", cases, digest, fraction, seed, record)["files_sha256"] == digest


def test_split_task_corrupt_record(tmp_path):
    from ccfv.preprocess.splits import SplitError, split_task

    record = tmp_path / "T.record.json"
    record.write_text("{not json")
    with pytest.raises(SplitError, match=r"T\.record\.json: not valid JSON"):
        split_task("T", _cases(10), "abc", 0.2, 0, record)


def test_write_split_writes_nnunet_splits_final(tmp_path):
    split = make_split(_cases(10), 0.2, seed=0)
    write_split(split, tmp_path / "s.json", tmp_path / "s" / "splits_final.json")
    folds = json.loads((tmp_path / "s" / "splits_final.json").read_text())
    assert folds == [{"train": split["train"], "val": split["test"]}]
    assert read_split(tmp_path / "s.json", _cases(10)) == split
