"""Comparing a run with a committed reference run: the same commit, config and seeds must give the same
numbers; where they do not, which numbers differ, by how much, and the likely reason (docs/reproducibility.md).

A reference is a folder holding a run's ``records.json`` (every (target, model) record of the tables rule:
each fine-tuning seed's Dice and every score, as full floats) and its ``provenance.json`` (code version,
config hash, the numerics record). ``make demo`` compares its run with ``docs/demo/``.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: The files a reference folder holds.
REFERENCE_FILES = ("records.json", "provenance.json")


@dataclass
class Comparison:
    """The outcome of :func:`compare_with_reference`.

    ``comparable``: False when the run is not the reference's (another config); ``differences``: one dict per
    number that differs (``what``, ``ours``, ``reference``, ``abs_diff``); ``missing``: (target, model)
    records or metrics in one run only; ``reasons``: the likely causes, from the two provenance records.
    """

    comparable: bool
    n_compared: int = 0
    differences: list[dict[str, Any]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)

    @property
    def identical(self) -> bool:
        return self.comparable and not self.differences and not self.missing

    def lines(self, limit: int = 10) -> list[str]:
        """The verdict in words: the first line says "identical to the reference" or how many numbers differ."""
        if not self.comparable:
            return ["not compared with the reference: " + "; ".join(self.reasons)]
        if self.identical:
            return [f"identical to the reference ({self.n_compared} numbers: every seed's Dice and every score, "
                    "bit for bit)"]
        largest = max((d["abs_diff"] for d in self.differences), default=0.0)
        out = [f"differs from the reference: {len(self.differences)} of {self.n_compared} numbers"
               + (f" (largest difference {largest:.3g})" if self.differences else "")
               + (f", {len(self.missing)} missing" if self.missing else "")]
        for d in sorted(self.differences, key=lambda d: -d["abs_diff"])[:limit]:
            out.append(f"  {d['what']}: {d['ours']!r} here, {d['reference']!r} in the reference")
        out += [f"  missing: {m}" for m in self.missing[:limit]]
        out += [f"likely reason: {r}" for r in self.reasons] or [
            "likely reason: none found in the provenance records (same code, config, CPU level, pins and "
            "libraries); please report it"]
        return out


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: missing") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def _reasons(ours: dict, reference: dict) -> list[str]:
    """What differs between two provenance records that can change the last bits, most likely first."""
    out = []
    if ours.get("git", {}).get("commit") != reference.get("git", {}).get("commit"):
        out.append(f"another code version (here {ours.get('git', {}).get('commit')}, reference "
                   f"{reference.get('git', {}).get('commit')})")
    if ours.get("git", {}).get("dirty"):
        out.append("uncommitted changes in this checkout")
    mine, theirs = ours.get("numerics") or {}, reference.get("numerics") or {}
    if not mine.get("pin"):
        out.append("this run's jobs were not pinned" + (": " + "; ".join(mine["deviations"])
                                                        if mine.get("deviations") else ""))
    facts = {
        "numerics pin (level, threads)": lambda r: r.get("pin"),
        "CPU instruction-set level": lambda r: (r.get("cpu") or {}).get("x86_64_level"),
        "torch build": lambda r: (r.get("torch") or {}).get("version"),
        "torch kernel capability": lambda r: (r.get("torch") or {}).get("cpu_capability"),
        "numpy": lambda r: (r.get("numpy") or {}).get("version"),
    }
    for label, get in facts.items():
        if get(mine) != get(theirs):
            out.append(f"another {label}: here {get(mine)!r}, reference {get(theirs)!r}")
    if ours.get("lock", {}).get("sha256") != reference.get("lock", {}).get("sha256"):
        out.append("another package lock (requirements.lock): other library versions")
    model = lambda r: (r.get("cpu") or {}).get("model")  # noqa: E731
    if model(mine) != model(theirs):
        out.append(f"another CPU model ({model(mine)!r}, reference {model(theirs)!r}): at the same level and pins, "
                   "oneDNN's cache-size heuristics are the one known source left (docs/reproducibility.md)")
    return out


#: The tables copied beside a reference's records for a reader (the comparison reads records.json only).
READER_TABLES = ("scores_and_dice.csv", "table1.csv", "table1.md", "table3.csv", "table3.md")


def compare_with_reference(results_dir: str | Path, reference_dir: str | Path) -> Comparison:
    """Compare ``<results_dir>/tables/records.json`` with ``<reference_dir>/records.json``, number by number
    (each seed's Dice and each score: exact float equality), when both runs used the same config
    (``config_sha256`` of their ``provenance.json``).

    Raises:
        FileNotFoundError / ValueError: a missing or unreadable file, named.
    """
    results, reference = Path(results_dir), Path(reference_dir)
    ours_prov = _read(results / "provenance.json")
    ref_prov = _read(reference / "provenance.json")
    if ours_prov.get("config_sha256") != ref_prov.get("config_sha256"):
        return Comparison(comparable=False, reasons=[
            f"this run's config ({ours_prov.get('config_sha256', '?')[:12]}) is not the reference's "
            f"({ref_prov.get('config_sha256', '?')[:12]}, {reference})"])
    ours = {(r["target"], r["model"]): r for r in _read(results / "tables" / "records.json")}
    ref = {(r["target"], r["model"]): r for r in _read(reference / "records.json")}
    comparison = Comparison(comparable=True)
    comparison.missing = [f"{t} / {m} ({'reference only' if (t, m) in ref else 'this run only'})"
                          for t, m in sorted(set(ours) ^ set(ref))]
    for key in sorted(set(ours) & set(ref)):
        a, b = ours[key], ref[key]
        pairs = [(f"Dice seed {i}", x, y) for i, (x, y) in
                 enumerate(zip(a.get("dice_per_seed", []), b.get("dice_per_seed", [])))]
        if len(a.get("dice_per_seed", [])) != len(b.get("dice_per_seed", [])):
            comparison.missing.append(f"{key[0]} / {key[1]}: {len(a.get('dice_per_seed', []))} seeds here, "
                                      f"{len(b.get('dice_per_seed', []))} in the reference")
        for metric in sorted(set(a["scores"]) | set(b["scores"])):
            if metric not in a["scores"] or metric not in b["scores"]:
                comparison.missing.append(f"{key[0]} / {key[1]}: score {metric}")
                continue
            pairs.append((metric, a["scores"][metric], b["scores"][metric]))
        for what, x, y in pairs:
            comparison.n_compared += 1
            if not _same(x, y):
                diff = abs(x - y) if isinstance(x, (int, float)) and isinstance(y, (int, float)) else math.inf
                comparison.differences.append({"what": f"{key[0]} / {key[1]} / {what}", "ours": x, "reference": y,
                                               "abs_diff": diff})
    if not comparison.identical:
        comparison.reasons = _reasons(ours_prov, ref_prov)
    return comparison


def write_reference(results_dir: str | Path, reference_dir: str | Path) -> Path:
    """Copy a run's ``tables/records.json`` and ``provenance.json`` into ``reference_dir`` (the reference others
    compare with), and for a reader the tables a reference is read by, where the run wrote them
    (``scores_and_dice.csv``, ``table1.{csv,md}``, ``table3.{csv,md}``).

    Raises:
        FileNotFoundError: ``records.json`` or ``provenance.json`` missing (named); nothing is written then.
    """
    from ..io import write_text

    results, reference = Path(results_dir), Path(reference_dir)
    required = [results / "tables" / "records.json", results / "provenance.json"]
    for path in required:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing; a reference needs a finished run's records and provenance")
    for path in required:
        write_text(reference / path.name, path.read_text())
    for name in READER_TABLES:
        path = results / "tables" / name
        if path.is_file():
            write_text(reference / name, path.read_text())
    return reference
