"""``results/provenance.json``: what produced a set of results, so that a reader can judge and rerun it.

Recorded (docs/report.md lists every field):

- the git commit of the workflow's source and whether tracked files differed from it (``dirty``);
- the full config and its hash: SHA-256 of the canonical JSON (keys sorted at every level, no
  whitespace, UTF-8), so the same settings in another key order give the same hash;
- the lock file's SHA-256 and, for every package it pins, the installed version
  (``importlib.metadata``) and whether the two agree;
- per rule, its conda env file (with its SHA-256) and container;
- the SHA-256 of every data checksum record (``results/checksums/<task>/*.json``: files, preprocessed
  arrays, and for MSD the archive), with their top-level digests;
- every seed in the config (each key named ``seed`` or ``seeds``, by its dotted path), and those of the
  results stage's own settings (``analysis``: bootstrap, permutations, t-SNE);
- the hardware: CPU model and count, memory, GPU(s) via ``torch.cuda`` when torch is installed, and the
  NVIDIA driver when ``nvidia-smi`` answers;
- start and end times: the start is the earliest job start recorded by Snakemake's benchmark files
  (file modification time minus the job's wall-clock seconds ``s``), the end the time the record is
  written (the provenance job runs last), both UTC ISO 8601.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..data.checksums import sha256_file
from ..io import write_json


def canonical_json(value: Any) -> str:
    """JSON with sorted keys at every level and no whitespace: equal for equal settings."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def config_hash(config: Mapping[str, Any]) -> str:
    """SHA-256 of :func:`canonical_json` of the config."""
    return hashlib.sha256(canonical_json(config).encode("utf-8")).hexdigest()


def git_state(source_dir: str | Path) -> dict[str, Any]:
    """{"commit", "dirty"} of the git work tree holding ``source_dir``; None values outside git.
    ``dirty``: a tracked file differs from the commit (untracked files do not count)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=source_dir, capture_output=True, text=True, check=True,
                              timeout=30).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": dirty}


_PIN = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?\s*==\s*([^\s;#]+)")


def lock_state(lock_file: str | Path) -> dict[str, Any]:
    """SHA-256 of the lock file and {package: {"locked", "installed", "matches"}} for each ``==`` pin."""
    path = Path(lock_file)
    if not path.exists():
        return {"path": str(path), "sha256": None, "packages": {}}
    packages = {}
    for line in path.read_text().splitlines():
        match = _PIN.match(line)
        if not match:
            continue
        name, locked = match.groups()
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            installed = None
        packages[name] = {"locked": locked, "installed": installed, "matches": installed == locked}
    return {"path": str(path), "sha256": sha256_file(path), "packages": packages}


def rule_environments(rules: Mapping[str, Mapping[str, str | None]], env_dir: str | Path) -> dict[str, dict]:
    """{rule: {"conda", "conda_sha256", "container"}}; ``conda`` as the rule declares it (relative to
    the rules folder), hashed when the file is found next to ``env_dir``."""
    out = {}
    for name, env in sorted(rules.items()):
        conda = env.get("conda")
        digest = None
        if conda:
            candidate = Path(env_dir) / Path(conda).name
            if candidate.exists():
                digest = sha256_file(candidate)
        out[name] = {"conda": conda, "conda_sha256": digest, "container": env.get("container")}
    return out


def data_checksums(checksum_dir: str | Path) -> dict[str, dict[str, dict]]:
    """{task: {record file name: {"sha256", "digests"}}} for ``<checksum_dir>/<task>/*.json``;
    ``digests`` are the record's own top-level string values that look like SHA-256 hex digests."""
    out: dict[str, dict[str, dict]] = {}
    for path in sorted(Path(checksum_dir).glob("*/*.json")):
        try:
            record = json.loads(path.read_text())
        except json.JSONDecodeError:
            record = {}
        digests = {k: v for k, v in record.items() if isinstance(v, str) and re.fullmatch(r"[0-9a-f]{64}", v)} \
            if isinstance(record, dict) else {}
        out.setdefault(path.parent.name, {})[path.name] = {"sha256": sha256_file(path), "digests": digests}
    return out


def seeds_in(config: Any, prefix: str = "") -> dict[str, Any]:
    """Every value under a key named ``seed`` or ``seeds``, by dotted path (``pretrain.seed``)."""
    found: dict[str, Any] = {}
    if isinstance(config, Mapping):
        for key in sorted(config):
            path = f"{prefix}.{key}" if prefix else str(key)
            if key in ("seed", "seeds"):
                found[path] = config[key]
            else:
                found.update(seeds_in(config[key], path))
    elif isinstance(config, list):
        for i, item in enumerate(config):
            found.update(seeds_in(item, f"{prefix}[{i}]"))
    return found


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _memory_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024**2, 2)
    except (OSError, ValueError):
        pass
    return None


def hardware(probe_gpu: bool = True) -> dict[str, Any]:
    """CPU model and count, memory, OS and Python; GPUs from torch.cuda and the driver from nvidia-smi."""
    info: dict[str, Any] = {
        "cpu_model": _cpu_model(), "cpu_count": os.cpu_count(), "memory_gb": _memory_gb(),
        "platform": platform.platform(), "python": platform.python_version(), "gpus": [], "cuda": None,
        "driver": None,
    }
    if probe_gpu and importlib.util.find_spec("torch") is not None:
        import torch

        info["cuda"] = torch.version.cuda
        if torch.cuda.is_available():
            info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    if probe_gpu and shutil.which("nvidia-smi"):
        try:
            result = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                    capture_output=True, text=True, timeout=30)
            if result.returncode == 0 and result.stdout.strip():
                info["driver"] = result.stdout.strip().splitlines()[0]
        except (OSError, subprocess.SubprocessError):
            pass
    return info


def _iso(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp, tz=dt.timezone.utc).isoformat(timespec="seconds")


def run_times(benchmark_dir: str | Path, now: float | None = None) -> dict[str, Any]:
    """{"start", "end", "start_source"}: start = min over benchmark files of (mtime - s), the earliest
    job start; end = ``now`` (default: the current time)."""
    from .costs import read_benchmark

    starts = []
    for path in Path(benchmark_dir).rglob("*.tsv"):
        try:
            seconds = read_benchmark(path).get("s", 0.0)
        except ValueError:
            continue
        starts.append(path.stat().st_mtime - (seconds if seconds == seconds else 0.0))
    now = dt.datetime.now(tz=dt.timezone.utc).timestamp() if now is None else now
    return {"start": _iso(min(starts)) if starts else None, "end": _iso(now),
            "start_source": "earliest benchmark file modification time minus its wall-clock seconds"}


def build_provenance(config: Mapping[str, Any], results_dir: str | Path, source_dir: str | Path,
                     rules: Mapping[str, Mapping[str, str | None]] | None = None,
                     probe_gpu: bool = True, now: float | None = None,
                     analysis: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The provenance record of ``results_dir`` (see the module docstring). ``analysis``: settings of
    the results stage that are not in the config (e.g. the statistics' seeds); recorded as given, their
    seeds listed under ``seeds`` as ``analysis.<...>``."""
    results, source = Path(results_dir), Path(source_dir)
    from .. import __version__
    from ..reproducibility import numerics_record

    return {
        "ccfv_version": __version__,
        "git": git_state(source),
        "config_sha256": config_hash(config),
        "config": json.loads(canonical_json(config)),
        "lock": lock_state(source / "requirements.lock"),
        "rules": rule_environments(rules or {}, source / "envs"),
        "data_checksums": data_checksums(results / "checksums"),
        "analysis": json.loads(canonical_json(analysis or {})),
        "seeds": {**seeds_in(config), **seeds_in(analysis or {}, "analysis")},
        "hardware": hardware(probe_gpu),
        # What the last bits depended on: the CPU, its instruction-set level, the pins every job sets and their
        # thread count (ccfv.workflow.start_job), the libraries' versions (docs/reproducibility.md). Recorded by
        # the provenance job, which pins as every job does.
        "numerics": numerics_record(),
        "times": run_times(results / "benchmarks", now),
    }


def write_provenance(path: str | Path, **kwargs) -> dict[str, Any]:
    record = build_provenance(**kwargs)
    write_json(path, record)
    return record
