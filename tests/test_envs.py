"""The software every rule runs with: pinned conda envs consistent with the lock file, and the directives
every rule must declare (log, benchmark, resources, conda, container). The Apptainer definition and its
builder are tested in tests/test_container.py."""
from __future__ import annotations

import importlib.metadata as md
import re
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
ENVS = sorted((ROOT / "envs").glob("*.yaml"))
# Requirements some packages declare that are not installable distributions here: argparse is the
# standard library's (an old backport pin of batchgenerators), setuptools comes with pip/venv.
NOT_IN_LOCK = {"argparse", "setuptools"}


def lock() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"requirements.lock: {line!r} is not pinned with =="
            pins[canonicalize_name(name)] = version.split(";")[0].strip()
    return pins


def env_pins(path: Path) -> tuple[dict[str, str], list[str]]:
    env = yaml.safe_load(path.read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    pins, other = {}, []
    for entry in pip:
        if entry.startswith("-"):
            other.append(entry)
            continue
        req = Requirement(entry)
        assert str(req.specifier).startswith("=="), f"{path.name}: {entry!r} is not pinned with =="
        pins[canonicalize_name(req.name)] = str(req.specifier)[2:]
    return pins, other


def closure(names) -> set[str]:
    """Every distribution that the given ones need, from the installed packages' metadata."""
    seen, stack = set(), [canonicalize_name(n) for n in names]
    while stack:
        name = stack.pop()
        if name in seen or name in NOT_IN_LOCK:
            continue
        seen.add(name)
        for text in md.requires(name) or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                stack.append(canonicalize_name(req.name))
    return seen


def ccfv_requirements(extra: str | None) -> list[str]:
    reqs = [Requirement(r) for r in md.requires("ccfv")]
    env = {"extra": extra or ""}
    return [r.name for r in reqs if r.marker is None or r.marker.evaluate(env)]


def test_there_is_one_env_per_rule_family():
    assert [p.name for p in ENVS] == ["data.yaml", "nnunet.yaml", "scores.yaml"]


@pytest.mark.parametrize("path", ENVS, ids=lambda p: p.name)
def test_env_pins_agree_with_the_lock(path):
    pins, _ = env_pins(path)
    locked = lock()
    drift = {n: (v, locked.get(n)) for n, v in pins.items() if locked.get(n) != v}
    assert not drift, f"{path.name}: pins that differ from requirements.lock (env, lock): {drift}"


@pytest.mark.parametrize("path", ENVS, ids=lambda p: p.name)
def test_env_pins_the_whole_closure_of_what_its_rules_import(path):
    pins, other = env_pins(path)
    installs = [o for o in other if o.startswith("-e ..")]
    assert len(installs) == 1, f"{path.name}: expected one '-e ..[extra]' line, got {other}"
    match = re.fullmatch(r"-e \.\.(?:\[(\w+)\])?", installs[0])
    assert match, installs[0]
    needed = closure(ccfv_requirements(match.group(1)))
    missing = sorted(needed - set(pins))
    assert not missing, f"{path.name}: not pinned, so pip would pick any version: {missing}"
    # and nothing the family does not need (torch in the data env would cost gigabytes for nothing)
    assert not sorted(set(pins) - needed), f"{path.name}: pins nothing needs: {sorted(set(pins) - needed)}"


def test_only_the_nnunet_env_carries_pytorch():
    assert "torch" in env_pins(ROOT / "envs/nnunet.yaml")[0]
    for name in ("data.yaml", "scores.yaml"):
        assert "torch" not in env_pins(ROOT / "envs" / name)[0]
    pins = env_pins(ROOT / "envs/nnunet.yaml")[0]
    locked = lock()
    assert [pins[n] for n in ("torch", "torchvision", "nnunetv2")] == [
        locked[n] for n in ("torch", "torchvision", "nnunetv2")]


# --------------------------------------------------------------------------------------------------
# rules
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workflow_rules():
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings, StorageSettings

    with SnakemakeApi(OutputSettings()) as api:
        workflow = api.workflow(resource_settings=ResourceSettings(), config_settings=ConfigSettings(),
                                storage_settings=StorageSettings(), snakefile=ROOT / "Snakefile", workdir=ROOT)
        return {rule.name: rule for rule in workflow._workflow.rules}


GPU_RULES = {"pretrain", "sample_features", "finetune"}


def test_every_rule_declares_log_benchmark_resources_conda_container(workflow_rules):
    jobs = {name: rule for name, rule in workflow_rules.items() if name != "all"}
    assert len(jobs) >= 11
    for name, rule in jobs.items():
        assert rule.log, f"rule {name}: no log"
        assert str(rule.log[0]).startswith("logs/"), f"rule {name}: log {rule.log[0]} not under logs/"
        assert rule.benchmark and str(rule.benchmark).startswith("results/benchmarks/"), f"rule {name}: benchmark"
        assert {"mem_mb", "runtime"} <= set(rule.resources), f"rule {name}: resources {sorted(rule.resources)}"
        assert rule.conda_env and (ROOT / "rules" / rule.conda_env).resolve().is_file(), f"rule {name}: conda"
        assert rule.container_img == "containers/ccfv.sif", f"rule {name}: container"
        assert ("gpu" in rule.resources) == (name in GPU_RULES), f"rule {name}: gpu declared wrongly"


def test_rule_families_use_their_env(workflow_rules):
    family = {r.name: Path(r.conda_env).name for r in workflow_rules.values() if r.name != "all"}
    assert {n for n, env in family.items() if env == "data.yaml"} == {"synthesize_task", "validate_task"}
    assert {n for n, env in family.items() if env == "scores.yaml"} == {"score", "ground_truth", "tables", "statistics",
                                                                        "figures", "costs"}
    assert GPU_RULES <= {n for n, env in family.items() if env == "nnunet.yaml"}
