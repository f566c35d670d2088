"""Fetching Medical Segmentation Decathlon tasks: streamed, resumable, MD5-verified, safely extracted.

Facts (URLs, MD5s of all ten tasks) from MONAI's DecathlonDataset (``monai/apps/datasets.py``,
``DecathlonDataset.resource`` and ``.md5``; a test compares them with the installed MONAI's); see README.md,
"Getting the data". The archive is streamed to
``<dest>/.<Task>.tar.partial``; an interrupted download resumes with an HTTP Range request; the MD5 is
checked before anything is extracted; extraction uses tarfile's ``data`` filter (no absolute paths, no
``..``, no links leaving the tree, no devices) into a scratch folder renamed into place; macOS ``._*``
files are dropped.
"""
from __future__ import annotations

import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from ..io import write_json
from .checksums import file_digest

DEFAULT_BASE_URL = "https://msd-for-monai.s3-us-west-2.amazonaws.com"

#: The MD5 of every MSD task's tarball, as MONAI's DecathlonDataset has them (its ``md5``).
MD5 = {
    "Task01_BrainTumour": "240a19d752f0d9e9101544901065d872",
    "Task02_Heart": "06ee59366e1e5124267b774dbd654057",
    "Task03_Liver": "a90ec6c4aa7f6a3d087205e23d4e6397",
    "Task04_Hippocampus": "9d24dba78a72977dbd1d2e110310f31b",
    "Task05_Prostate": "35138f08b1efaef89d7424d2bcc928db",
    "Task06_Lung": "8afd997733c7fc0432f71255ba4e52dc",
    "Task07_Pancreas": "4f7080cfca169fa8066d17ce6eb061e4",
    "Task08_HepaticVessel": "641d79e80ec66453921d997fbf12a29c",
    "Task09_Spleen": "410d4a301da4e5b2f6f86ec3ddba524e",
    "Task10_Colon": "bad7a188931dc2f6acf72b08eb6202d0",
}

CHUNK = 1 << 20


def md5sum(path: Path) -> str:
    return file_digest(path, "md5")


def download(url: str, dest: Path, expected_md5: str | None, progress: bool = True) -> Path:
    """Stream ``url`` to ``dest`` (resuming a ``.partial`` file), verify the MD5, rename atomically."""
    dest = Path(dest)
    partial = dest.with_name(f".{dest.name}.partial")
    have = partial.stat().st_size if partial.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=60)
    except urllib.error.HTTPError as err:
        if not (have and err.code == 416):
            raise
        # 416: the partial file already holds every byte (a run killed during the MD5 check); verify it.
        response = None
    if response is not None:
        _stream(response, partial, have, dest.name, progress)
    if expected_md5 is not None:
        actual = md5sum(partial)
        if actual != expected_md5:
            partial.unlink()
            raise ValueError(f"{url}: MD5 {actual} differs from the expected {expected_md5}; the partial "
                             f"download was deleted, rerun to fetch it again")
    partial.replace(dest)
    return dest


def _stream(response, partial: Path, have: int, name: str, progress: bool) -> None:
    from tqdm.auto import tqdm

    with response:
        if have and response.status != 206:  # the server ignored the Range header: start over
            have = 0
        total = response.headers.get("Content-Length")
        total = int(total) + have if total is not None else None
        with open(partial, "ab" if have else "wb") as out, tqdm(
            total=total, initial=have, unit="B", unit_scale=True, desc=name, disable=not progress
        ) as bar:
            for block in iter(lambda: response.read(CHUNK), b""):
                out.write(block)
                bar.update(len(block))


def extract_task(archive: Path, dest_root: Path, task: str) -> Path:
    """Extract ``archive`` (holding ``<task>/...``) safely into ``dest_root/<task>``."""
    archive, dest_root = Path(archive), Path(dest_root)
    target = dest_root / task
    with tempfile.TemporaryDirectory(dir=dest_root, prefix=f".{task}-extract-") as scratch:
        try:
            with tarfile.open(archive) as tar:
                members = [m for m in tar.getmembers() if not Path(m.name).name.startswith("._")]
                tar.extractall(scratch, members=members, filter="data")
        except (tarfile.TarError, OSError) as err:
            raise ValueError(f"{archive}: cannot be extracted safely ({err})") from None
        extracted = Path(scratch) / task
        if not (extracted / "dataset.json").is_file():
            raise ValueError(f"{archive}: has no {task}/dataset.json")
        if target.exists():
            shutil.rmtree(target)
        extracted.rename(target)
    return target


def fetch_task(task: str, dest_root: Path, base_url: str | None = None, progress: bool = True,
               local: Path | None = None, record: Path | None = None) -> Path:
    """Download (or reuse a verified tarball) and extract one MSD task into ``dest_root/<task>``.

    ``local`` is a folder holding ``<task>.tar`` (shared storage, a copy made on a login node): the tar
    is verified and extracted from there, never copied and never downloaded. A task already extracted in
    ``local`` needs no fetching at all; the workflow reads it in place (see ``task_folder`` in
    rules/common.smk). ``record``, when given, receives a JSON record of the archive (source, size, MD5)
    for the report.

    The ten MSD tasks (:data:`MD5`) are verified against MONAI's MD5s. Another name is a ValueError before
    anything is fetched when it would be downloaded from MSD's own bucket (which holds only the ten: a typo);
    from a mirror (``base_url``) or a local tar it is fetched unverified, its MD5 recorded.
    """
    if local is None and base_url in (None, DEFAULT_BASE_URL) and task not in MD5:
        raise ValueError(f"unknown MSD task {task!r}; the Medical Segmentation Decathlon has {', '.join(MD5)}")
    dest_root = Path(dest_root)
    dest_root.mkdir(parents=True, exist_ok=True)
    expected = MD5.get(task)
    url = f"{(base_url or DEFAULT_BASE_URL).rstrip('/')}/{task}.tar"
    if local is not None:
        archive = Path(local) / f"{task}.tar"
        if not archive.is_file():
            raise FileNotFoundError(f"{archive}: no such archive (data.msd.local is {local}); put {task}.tar "
                                    f"or an extracted {task}/ folder there, or remove data.msd.local to download")
        actual = verify_archive(archive, expected)
        source = str(archive.resolve())
    else:
        archive = dest_root / f"{task}.tar"
        if archive.is_file():
            actual = verify_archive(archive, expected, hint="delete it to download again")
        else:
            download(url, archive, expected, progress)
            actual = expected or md5sum(archive)
        source = url
    path = extract_task(archive, dest_root, task)
    if record is not None:
        write_json(record, {"task": task, "source": source, "archive": str(archive.resolve()),
                            "bytes": archive.stat().st_size, "md5": actual, "md5_expected": expected})
    return path


def verify_archive(archive: Path, expected: str | None, hint: str = "") -> str:
    """The archive's MD5, checked against ``expected`` when the task is one whose MD5 we know."""
    actual = md5sum(archive)
    if expected is not None and actual != expected:
        raise ValueError(f"{archive}: MD5 {actual} differs from the expected {expected}"
                         + (f"; {hint}" if hint else ""))
    return actual
