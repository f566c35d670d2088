"""Tests for ccfv.data.msd: download (streamed, resumable, MD5-checked) and safe extraction, against a
local HTTP server with Range support serving small tarballs built here."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from ccfv.data import msd
from ccfv.data.msd import download, extract_task, fetch_task, md5sum

TASK = "Task09_Spleen"
DATASET_JSON = {"name": "Spleen", "labels": {"0": "background", "1": "spleen"}, "numTraining": 1,
                "training": [{"image": "./imagesTr/spleen_1.nii.gz", "label": "./labelsTr/spleen_1.nii.gz"}]}
# Random bytes (incompressible) so that the archive is big enough for a meaningful half.
IMAGE = np.random.default_rng(0).integers(0, 256, 40_000, dtype=np.uint8).tobytes()
LABEL = np.random.default_rng(1).integers(0, 2, 10_000, dtype=np.uint8).tobytes()


def _add_file(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def _add_dir(tar: tarfile.TarFile, name: str) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    tar.addfile(info)


def make_tar(extra=None, with_dataset_json=True) -> bytes:
    """An MSD-like tarball: Task09_Spleen/{dataset.json, imagesTr/, labelsTr/} plus macOS ``._`` junk."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        _add_dir(tar, TASK)
        if with_dataset_json:
            _add_file(tar, f"{TASK}/dataset.json", json.dumps(DATASET_JSON).encode())
        _add_dir(tar, f"{TASK}/imagesTr")
        _add_dir(tar, f"{TASK}/labelsTr")
        _add_file(tar, f"{TASK}/imagesTr/spleen_1.nii.gz", IMAGE)
        _add_file(tar, f"{TASK}/imagesTr/._spleen_1.nii.gz", b"\x00\x05\x16\x07AppleDouble junk")
        _add_file(tar, f"{TASK}/._dataset.json", b"\x00\x05\x16\x07")
        _add_file(tar, f"{TASK}/labelsTr/spleen_1.nii.gz", LABEL)
        for add in extra or []:
            add(tar)
    return buffer.getvalue()


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


# --------------------------------------------------------------------------------------------------
# A local HTTP server that serves byte strings and honours "Range: bytes=N-"
# --------------------------------------------------------------------------------------------------


class Server:
    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.requests: list[dict] = []  # {"path", "range", "status", "sent"}
        self.honour_range = True
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's naming)
                record = {"path": self.path, "range": self.headers.get("Range"), "status": None, "sent": 0}
                server.requests.append(record)
                data = server.files.get(self.path)
                if data is None:
                    record["status"] = 404
                    self.send_error(404)
                    return
                start = 0
                if record["range"] and server.honour_range:
                    unit, _, spec = record["range"].partition("=")
                    first, _, last = spec.partition("-")
                    assert unit == "bytes" and last == "", record["range"]  # all the client should send
                    start = int(first)
                    if start >= len(data):  # RFC 9110: unsatisfiable (what S3 answers too)
                        record["status"] = 416
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    record["status"] = 206
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    record["status"] = 200
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                self.wfile.write(body)
                record["sent"] = len(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def server(monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    with Server() as s:
        yield s


@pytest.fixture
def archive_bytes():
    return make_tar()


@pytest.fixture
def served(server, archive_bytes, monkeypatch):
    """The server holding the test tarball, and MD5 patched to its checksum."""
    server.files[f"/{TASK}.tar"] = archive_bytes
    monkeypatch.setitem(msd.MD5, TASK, md5(archive_bytes))
    return server


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def assert_task_extracted(dest: Path):
    task = dest / TASK
    assert json.loads((task / "dataset.json").read_text()) == DATASET_JSON
    assert (task / "imagesTr" / "spleen_1.nii.gz").read_bytes() == IMAGE
    assert (task / "labelsTr" / "spleen_1.nii.gz").read_bytes() == LABEL
    assert not [p for p in task.rglob("._*")]  # AppleDouble junk dropped
    assert tree(task) == {"dataset.json", "imagesTr", "labelsTr", "imagesTr/spleen_1.nii.gz",
                          "labelsTr/spleen_1.nii.gz"}


# --------------------------------------------------------------------------------------------------
# fetch_task / download
# --------------------------------------------------------------------------------------------------


def test_md5sum_matches_hashlib(tmp_path, archive_bytes):
    path = tmp_path / "x.tar"
    path.write_bytes(archive_bytes)
    assert md5sum(path) == hashlib.md5(archive_bytes).hexdigest()


ALL_TASKS = ["Task01_BrainTumour", "Task02_Heart", "Task03_Liver", "Task04_Hippocampus", "Task05_Prostate",
             "Task06_Lung", "Task07_Pancreas", "Task08_HepaticVessel", "Task09_Spleen", "Task10_Colon"]


def test_md5_table_is_monai_s():
    """All ten MSD tasks, with the MD5s and URLs of MONAI's DecathlonDataset (the installed MONAI's own table)."""
    from monai.apps import DecathlonDataset

    assert list(msd.MD5) == ALL_TASKS
    assert msd.MD5["Task04_Hippocampus"] == "9d24dba78a72977dbd1d2e110310f31b"
    assert msd.MD5 == DecathlonDataset.md5
    assert {t: f"{msd.DEFAULT_BASE_URL}/{t}.tar" for t in ALL_TASKS} == DecathlonDataset.resource


@pytest.mark.parametrize("task", ALL_TASKS)
def test_every_msd_task_downloads_from_its_url_and_is_verified(task, server, tmp_path, monkeypatch):
    """Each task's tarball is fetched as <base URL>/<task>.tar and checked against its MD5 of the table: the
    table's own MD5 refuses the test's tarball (it is not MSD's), the tarball's own MD5 passes."""
    data = _tar_for(task)
    server.files[f"/{task}.tar"] = data
    with pytest.raises(ValueError, match=rf"{task}\.tar: MD5 {md5(data)} differs from the expected "
                                         rf"{msd.MD5[task]}"):
        fetch_task(task, tmp_path / "refused", base_url=server.url, progress=False)
    assert not (tmp_path / "refused" / task).exists()
    monkeypatch.setitem(msd.MD5, task, md5(data))
    assert fetch_task(task, tmp_path / "msd", base_url=server.url, progress=False) == tmp_path / "msd" / task
    assert json.loads((tmp_path / "msd" / task / "dataset.json").read_text()) == DATASET_JSON
    assert [r["path"] for r in server.requests] == [f"/{task}.tar", f"/{task}.tar"]


def _tar_for(task: str) -> bytes:
    """``make_tar``'s archive with its folder named ``task``."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(make_tar())) as source, tarfile.open(fileobj=buffer, mode="w") as tar:
        for member in source.getmembers():
            data = source.extractfile(member).read() if member.isfile() else None
            member.name = task + member.name[len(TASK):]
            tar.addfile(member, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def test_an_unknown_task_is_refused_before_anything_is_fetched(server, tmp_path, capsys):
    from ccfv.cli import main

    with pytest.raises(ValueError, match=r"unknown MSD task 'Task04_Hipocampus'; the Medical Segmentation "
                                         r"Decathlon has Task01_BrainTumour, .*, Task10_Colon"):
        fetch_task("Task04_Hipocampus", tmp_path / "msd", progress=False)
    assert main(["msd", "download", "Task04_Hipocampus", "--dest", str(tmp_path / "msd")]) == 2
    assert "unknown MSD task 'Task04_Hipocampus'" in capsys.readouterr().err
    assert not (tmp_path / "msd").exists()


def test_fetch_task(served, tmp_path, archive_bytes):
    dest = tmp_path / "msd"
    result = fetch_task(TASK, dest, base_url=served.url + "/", progress=False)
    assert result == dest / TASK
    assert_task_extracted(dest)
    assert (dest / f"{TASK}.tar").read_bytes() == archive_bytes
    assert sorted(p.name for p in dest.iterdir()) == [TASK, f"{TASK}.tar"]  # no .partial, no scratch
    assert [(r["path"], r["range"], r["status"]) for r in served.requests] == [(f"/{TASK}.tar", None, 200)]


def test_fetch_task_reuses_a_verified_archive(served, tmp_path, archive_bytes):
    dest = tmp_path / "msd"
    dest.mkdir()
    (dest / f"{TASK}.tar").write_bytes(archive_bytes)
    fetch_task(TASK, dest, base_url=served.url, progress=False)
    assert served.requests == []
    assert_task_extracted(dest)


def test_fetch_task_refuses_a_corrupt_existing_archive(served, tmp_path, archive_bytes):
    dest = tmp_path / "msd"
    dest.mkdir()
    (dest / f"{TASK}.tar").write_bytes(archive_bytes[:-1] + b"x")
    with pytest.raises(ValueError, match=rf"{TASK}\.tar.*MD5"):
        fetch_task(TASK, dest, base_url=served.url, progress=False)
    assert served.requests == []
    assert not (dest / TASK).exists()


def test_fetch_task_resumes_a_partial_download(served, tmp_path, archive_bytes):
    dest = tmp_path / "msd"
    dest.mkdir()
    half = len(archive_bytes) // 2
    (dest / f".{TASK}.tar.partial").write_bytes(archive_bytes[:half])
    fetch_task(TASK, dest, base_url=served.url, progress=False)
    assert [(r["range"], r["status"], r["sent"]) for r in served.requests] == [
        (f"bytes={half}-", 206, len(archive_bytes) - half)
    ]
    assert md5sum(dest / f"{TASK}.tar") == msd.MD5[TASK]
    assert not (dest / f".{TASK}.tar.partial").exists()
    assert_task_extracted(dest)


def test_download_restarts_when_the_server_ignores_range(served, tmp_path, archive_bytes):
    served.honour_range = False
    dest = tmp_path / "x.tar"
    partial = tmp_path / ".x.tar.partial"
    partial.write_bytes(b"garbage that must not stay in front")
    download(f"{served.url}/{TASK}.tar", dest, md5(archive_bytes), progress=False)
    assert served.requests[0]["range"] == "bytes=35-" and served.requests[0]["status"] == 200
    assert dest.read_bytes() == archive_bytes
    assert not partial.exists()


def test_download_resumes_a_complete_partial(served, tmp_path, archive_bytes):
    dest = tmp_path / "x.tar"
    (tmp_path / ".x.tar.partial").write_bytes(archive_bytes)
    download(f"{served.url}/{TASK}.tar", dest, md5(archive_bytes), progress=False)
    assert dest.read_bytes() == archive_bytes


def test_fetch_task_md5_mismatch(served, tmp_path, monkeypatch):
    monkeypatch.setitem(msd.MD5, TASK, "0" * 32)
    dest = tmp_path / "msd"
    with pytest.raises(ValueError, match=r"MD5 [0-9a-f]{32} differs from the expected 0{32}"):
        fetch_task(TASK, dest, base_url=served.url, progress=False)
    assert list(dest.iterdir()) == []  # partial deleted, nothing renamed, nothing extracted


def test_fetch_task_md5_mismatch_after_resume(served, tmp_path, archive_bytes):
    dest = tmp_path / "msd"
    dest.mkdir()
    half = len(archive_bytes) // 2
    (dest / f".{TASK}.tar.partial").write_bytes(b"\xff" * half)  # a corrupt first half
    with pytest.raises(ValueError, match="MD5"):
        fetch_task(TASK, dest, base_url=served.url, progress=False)
    assert list(dest.iterdir()) == []
    # the next run starts from scratch and succeeds
    fetch_task(TASK, dest, base_url=served.url, progress=False)
    assert served.requests[-1]["range"] is None
    assert_task_extracted(dest)


def test_fetch_task_http_error_keeps_nothing(server, tmp_path):
    dest = tmp_path / "msd"
    with pytest.raises(Exception, match="404"):
        fetch_task(TASK, dest, base_url=server.url, progress=False)
    assert not (dest / TASK).exists() and not (dest / f"{TASK}.tar").exists()


# --------------------------------------------------------------------------------------------------
# extract_task
# --------------------------------------------------------------------------------------------------


def _write_archive(tmp_path, data: bytes) -> tuple[Path, Path]:
    dest = tmp_path / "root" / "dest"
    dest.mkdir(parents=True)
    archive = dest / f"{TASK}.tar"
    archive.write_bytes(data)
    return archive, dest


def test_extract_task_replaces_an_older_extraction(tmp_path, archive_bytes):
    archive, dest = _write_archive(tmp_path, archive_bytes)
    (dest / TASK).mkdir()
    (dest / TASK / "stale.nii.gz").write_bytes(b"old")
    assert extract_task(archive, dest, TASK) == dest / TASK
    assert_task_extracted(dest)
    assert sorted(p.name for p in dest.iterdir()) == [TASK, f"{TASK}.tar"]


def _symlink(name, target):
    def add(tar):
        info = tarfile.TarInfo(name)
        info.type = tarfile.SYMTYPE
        info.linkname = target
        tar.addfile(info)
    return add


def _hardlink(name, target):
    def add(tar):
        info = tarfile.TarInfo(name)
        info.type = tarfile.LNKTYPE
        info.linkname = target
        tar.addfile(info)
    return add


def _file(name, data=b"owned"):
    return lambda tar: _add_file(tar, name, data)


@pytest.mark.parametrize(
    "hostile",
    [
        lambda outside: [_file("../escape")],
        lambda outside: [_file("../../escape")],
        lambda outside: [_file(f"{TASK}/../../../escape")],
        lambda outside: [_symlink(f"{TASK}/link", "../../../escape")],
        lambda outside: [_symlink(f"{TASK}/link", str(outside)), _file(f"{TASK}/link/escape")],
        lambda outside: [_symlink(f"{TASK}/link", "../../../../outside"), _file(f"{TASK}/link/escape")],
        lambda outside: [_hardlink(f"{TASK}/hard", str(outside / "secret"))],
        lambda outside: [_hardlink(f"{TASK}/hard", "../../../outside/secret")],
    ],
    ids=["dotdot", "dotdot2", "nested-dotdot", "symlink-out", "symlink-abs-then-write",
         "symlink-rel-then-write", "hardlink-abs", "hardlink-out"],
)
def test_extract_task_refuses_hostile_members(tmp_path, hostile):
    # Members land in tmp_path/root/dest/.Task09_Spleen-extract-*/: ../../.. from there (a hard link's
    # target) or ../../../.. from Task09_Spleen/ (a symlink's target) is tmp_path.
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("not yours")
    archive, dest = _write_archive(tmp_path, make_tar(extra=hostile(outside)))
    before = tree(tmp_path)
    with pytest.raises(ValueError, match=rf"{TASK}\.tar.*cannot be extracted safely"):
        extract_task(archive, dest, TASK)
    assert tree(tmp_path) == before  # nothing written anywhere: not outside dest, no scratch, no task
    assert (outside / "secret").read_text() == "not yours"


def test_extract_task_absolute_member_stays_inside(tmp_path):
    outside = tmp_path / "outside" / "escape"
    archive, dest = _write_archive(tmp_path, make_tar(extra=[_file(str(outside))]))
    try:
        extract_task(archive, dest, TASK)
    except ValueError:
        pass  # refusing the archive is fine too
    assert not outside.exists()
    assert not (tmp_path / "outside").exists()
    # anything extracted stays under dest
    assert {p for p in tree(tmp_path) if not p.startswith("root/dest")} == {"root"}


def test_extract_task_without_dataset_json(tmp_path):
    archive, dest = _write_archive(tmp_path, make_tar(with_dataset_json=False))
    with pytest.raises(ValueError, match=rf"{TASK}\.tar.*has no {TASK}/dataset\.json"):
        extract_task(archive, dest, TASK)
    assert sorted(p.name for p in dest.iterdir()) == [f"{TASK}.tar"]  # no task folder, no scratch


def test_extract_task_wrong_task_folder(tmp_path, archive_bytes):
    archive, dest = _write_archive(tmp_path, archive_bytes)
    with pytest.raises(ValueError, match="has no Task03_Liver/dataset.json"):
        extract_task(archive, dest, "Task03_Liver")
    assert sorted(p.name for p in dest.iterdir()) == [f"{TASK}.tar"]


def test_extract_task_not_a_tar(tmp_path):
    archive, dest = _write_archive(tmp_path, b"this is not a tar archive" * 100)
    with pytest.raises(ValueError, match="cannot be extracted safely"):
        extract_task(archive, dest, TASK)
    assert sorted(p.name for p in dest.iterdir()) == [f"{TASK}.tar"]


def test_fetch_task_hostile_archive_with_matching_md5(server, tmp_path, monkeypatch):
    data = make_tar(extra=[_file("../../escape")])
    server.files[f"/{TASK}.tar"] = data
    monkeypatch.setitem(msd.MD5, TASK, md5(data))
    dest = tmp_path / "a" / "msd"
    with pytest.raises(ValueError, match="cannot be extracted safely"):
        fetch_task(TASK, dest, base_url=server.url, progress=False)
    assert not (tmp_path / "escape").exists() and not (tmp_path / "a" / "escape").exists()
    assert sorted(p.name for p in dest.iterdir()) == [f"{TASK}.tar"]


# --------------------------------------------------------------------------------------------------
# a local copy (data.msd.local) and the archive record
# --------------------------------------------------------------------------------------------------


def test_fetch_task_from_a_local_copy_downloads_nothing(served, tmp_path, archive_bytes):
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / f"{TASK}.tar").write_bytes(archive_bytes)
    dest = tmp_path / "msd"
    record = tmp_path / "checksums" / "archive.json"
    fetch_task(TASK, dest, base_url=served.url, progress=False, local=shared, record=record)
    assert served.requests == []
    assert_task_extracted(dest)
    assert not (dest / f"{TASK}.tar").exists()  # extracted from the shared copy, not copied
    meta = json.loads(record.read_text())
    assert meta["md5"] == md5(archive_bytes) == meta["md5_expected"]
    assert meta["source"] == str((shared / f"{TASK}.tar").resolve()) and meta["bytes"] == len(archive_bytes)


def test_fetch_task_local_copy_missing_or_corrupt(served, tmp_path, archive_bytes):
    shared = tmp_path / "shared"
    shared.mkdir()
    with pytest.raises(FileNotFoundError, match=rf"{TASK}\.tar: no such archive"):
        fetch_task(TASK, tmp_path / "msd", progress=False, local=shared)
    (shared / f"{TASK}.tar").write_bytes(archive_bytes[:-1] + b"x")
    with pytest.raises(ValueError, match=rf"shared/{TASK}\.tar: MD5"):
        fetch_task(TASK, tmp_path / "msd", progress=False, local=shared)
    assert not (tmp_path / "msd" / TASK).exists()
    assert served.requests == []


def test_fetch_task_records_a_download(served, tmp_path, archive_bytes):
    record = tmp_path / "archive.json"
    fetch_task(TASK, tmp_path / "msd", base_url=served.url, progress=False, record=record)
    meta = json.loads(record.read_text())
    assert meta["source"] == f"{served.url}/{TASK}.tar" and meta["md5"] == md5(archive_bytes)


def test_cli_download_from_local_copy(tmp_path, archive_bytes, monkeypatch, capsys):
    from ccfv.cli import main

    monkeypatch.setitem(msd.MD5, TASK, md5(archive_bytes))
    (tmp_path / f"{TASK}.tar").write_bytes(archive_bytes)
    assert main(["msd", "download", TASK, "--dest", str(tmp_path / "msd"), "--local", str(tmp_path)]) == 0
    assert_task_extracted(tmp_path / "msd")
    assert main(["msd", "download", TASK, "--dest", str(tmp_path / "msd"), "--local", str(tmp_path / "none")]) == 2
    assert "no such archive" in capsys.readouterr().err
