"""Checksums of the data a run used, recorded for the report and to tie splits to the data they split.

Three levels, each a JSON file under ``results/checksums/<task>/``:

* ``archive.json``: the MD5 of an MSD tarball (written by the fetch step; MSD publishes MD5s).
* ``files.json``: SHA-256 of every training image and label file listed in dataset.json, written by
  validation, with a digest over all of them that the split records.
* ``preprocessed.json``: SHA-256 of every preprocessed case's arrays (image and segmentation, with their
  dtype and shape), so that two runs can show they trained on identical inputs. Hashing the arrays rather
  than nnU-Net's compressed files makes the checksum independent of the compressor's settings.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path


def file_digest(path: str | Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file, read in blocks (MSD archives are tens of GB)."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, algorithm).hexdigest()


def sha256_file(path: str | Path) -> str:
    return file_digest(path, "sha256")


def digest_of(entries: Mapping[str, object]) -> str:
    """One SHA-256 over a {name: checksum or record} mapping, independent of the mapping's order."""
    return hashlib.sha256(json.dumps(entries, sort_keys=True).encode()).hexdigest()


def tree_digest(path: str | Path, cache_file: str | Path | None = None) -> str:
    """SHA-256 of what a file or a folder holds: a file's bytes (``sha256_file``), or for a folder every regular
    file under it (links followed) as {relative POSIX path: SHA-256 of its bytes} through ``digest_of``. Names
    and bytes only: a copy with new modification times has the digest of the original.

    The workflow passes each external bank member's digest as a rule param (rules/common.smk,
    ``member_digest``), so that a model re-copied or restored (new mtimes, same bytes) reruns nothing while new
    weights rerun every job that read the old ones. ``cache_file``: a JSON {absolute path: [size in bytes,
    mtime in ns, SHA-256]} of files hashed before; an entry whose size and mtime still match is reused, so a
    bank of large checkpoints is read once per change, not at every DAG build. A cache that cannot be read is
    ignored and rewritten (written to a temporary file, then renamed).

    Raises:
        FileNotFoundError: ``path`` does not exist.
    """
    import os

    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"{root}: no such file or folder")
    cache: dict = {}
    if cache_file is not None and Path(cache_file).is_file():
        try:
            cache = json.loads(Path(cache_file).read_text())
        except (OSError, ValueError):
            cache = {}
        if not isinstance(cache, dict):
            cache = {}
    changed = False

    def one(file: Path) -> str:
        nonlocal changed
        stat, key = file.stat(), str(file.resolve())
        hit = cache.get(key)
        if isinstance(hit, list) and hit[:2] == [stat.st_size, stat.st_mtime_ns]:
            return hit[2]
        cache[key] = [stat.st_size, stat.st_mtime_ns, sha256_file(file)]
        changed = True
        return cache[key][2]

    if root.is_file():
        digest = one(root)
    else:
        digest = digest_of({f.relative_to(root).as_posix(): one(f) for f in sorted(root.rglob("*")) if f.is_file()})
    if changed and cache_file is not None:
        cache_file = Path(cache_file)
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        partial = cache_file.with_name(f".{cache_file.name}.{os.getpid()}")
        partial.write_text(json.dumps(cache, indent=0, sort_keys=True))
        os.replace(partial, cache_file)
    return digest


def case_id(file_name: str) -> str:
    """``./imagesTr/liver_3.nii.gz`` -> ``liver_3`` (nnU-Net's identifier of the same case)."""
    name = Path(file_name).name
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def training_files(task_dir: str | Path) -> dict:
    """SHA-256 of each training image and label listed in ``task_dir/dataset.json``.

    Expects a task that passed validation (every listed file exists).
    """
    task_dir = Path(task_dir)
    dataset = json.loads((task_dir / "dataset.json").read_text())
    cases = {}
    for entry in dataset["training"]:
        cases[case_id(entry["image"])] = {
            "image": sha256_file(task_dir / entry["image"]),
            "label": sha256_file(task_dir / entry["label"]),
        }
    return {"task_dir": str(task_dir.resolve()), "dataset_json": sha256_file(task_dir / "dataset.json"),
            "cases": cases, "digest": digest_of(cases)}


def validate_and_record(task_dir: str | Path, out: str | Path) -> dict:
    """The workflow's validation step: validate the task (every problem reported at once, nothing written
    on failure), then record the checksums of its training files in ``out``."""
    from ..io import write_json
    from .validate import validate_or_raise

    validate_or_raise(task_dir)
    record = training_files(task_dir)
    write_json(out, record)
    return record
