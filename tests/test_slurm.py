"""The SLURM profile (profiles/slurm): what it asks SLURM for, checked by dry runs, and a real run of part of
the demo DAG, GPU rule included, on a throwaway one-node SLURM with a fake GPU (tests/slurm/local_slurm.py)."""
from __future__ import annotations

import collections
import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
TINY = ROOT / "tests/configs/tiny.yaml"
TEST_PROFILE = ROOT / "tests/slurm/profile"  # overrides for the test cluster, given after profiles/slurm
GPU_RULES = {"pretrain", "sample_features", "finetune"}
SITE_VARIABLES = ("CCFV_SLURM_PARTITION", "CCFV_SLURM_GPU_PARTITION", "CCFV_SLURM_ACCOUNT", "CCFV_SLURM_GPU_MODEL")

_spec = importlib.util.spec_from_file_location("local_slurm", ROOT / "tests/slurm/local_slurm.py")
local_slurm = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(local_slurm)


def environment(**site: str) -> dict:
    """This process's environment without any site settings or profile of the person running the tests, with
    this Python's bin folder first on PATH (sbatch passes the environment on to the jobs)."""
    env = {k: v for k, v in os.environ.items() if k not in SITE_VARIABLES and k != "SNAKEMAKE_PROFILE"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', os.defpath)}"
    return {**env, **site}


def run(command: list, *, cwd: Path, env: dict, timeout: float) -> subprocess.CompletedProcess:
    """subprocess.run, but a timeout kills the whole process group this call started, not just its head."""
    proc = subprocess.Popen([str(c) for c in command], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"{' '.join(map(str, command[:3]))} ... still running after {timeout} s:\n{out[-5000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, "")


def dry_run_resources(output: str) -> dict[str, list[dict[str, str]]]:
    """rule -> the resources of each of its jobs, from the job blocks a dry run prints."""
    jobs = collections.defaultdict(list)
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", output):
        rule = re.match(r"(?:local)?rule (\w+):", block)
        resources = re.search(r"^\s+resources: (.*)$", block, re.M)
        if rule and resources:
            jobs[rule.group(1)].append(dict(item.split("=", 1) for item in resources.group(1).split(", ")))
    return jobs


def msd_dry_run(tmp_path: Path, profile: str, cwd: Path = ROOT, **site: str) -> dict[str, list[dict[str, str]]]:
    # --cores 8: a dry run otherwise caps every job's threads at 1, and cpus_per_gpu follows threads
    result = run([SNAKEMAKE, "-n", "--cores", "8", "--profile", profile, "--configfile", ROOT / "config/msd.yaml",
                  "--directory", tmp_path], cwd=cwd, env=environment(**site), timeout=180)
    assert result.returncode == 0, result.stdout[-5000:]
    assert f"Using profile {profile} for setting default command line arguments" in result.stdout
    jobs = dry_run_resources(result.stdout)
    assert GPU_RULES <= set(jobs), set(jobs)
    return jobs


def test_bare_profile_name_resolves_from_repository_root(tmp_path):
    """`snakemake --profile slurm` looks for ./slurm, then ~/.config/snakemake/slurm, never in profiles/:
    the top-level link slurm -> profiles/slurm makes the bare name mean this profile from the repository
    root, ahead of any personal profile of that name."""
    link = ROOT / "slurm"
    assert link.is_symlink() and link.resolve() == (ROOT / "profiles/slurm").resolve(), \
        "add the top-level link: ln -s profiles/slurm slurm"
    jobs = msd_dry_run(tmp_path, "slurm")
    assert all(job.get("cpus_per_gpu") == "8" for job in jobs["pretrain"]), jobs["pretrain"][0]


def test_profile_puts_jobs_where_the_environment_says(tmp_path):
    jobs = msd_dry_run(tmp_path, str(ROOT / "profiles/slurm"), CCFV_SLURM_PARTITION="cpu-q",
                       CCFV_SLURM_GPU_PARTITION="gpu-q", CCFV_SLURM_ACCOUNT="proj42", CCFV_SLURM_GPU_MODEL="a100")
    msd = yaml.safe_load((ROOT / "config/msd.yaml").read_text())
    sizes = {"pretrain": msd["resources"]["train"], "finetune": msd["resources"]["train"],
             "sample_features": msd["resources"]["inference"]}
    for rule, rule_jobs in jobs.items():
        for job in rule_jobs:
            assert job.get("slurm_account") == "proj42", (rule, job)
            if rule in GPU_RULES:
                assert job["slurm_partition"] == "gpu-q" and job["gpu"] == "1" and job["gpu_model"] == "a100"
                assert job["cpus_per_gpu"] == str(msd["resources"]["threads"]), (rule, job)
                # job sizes stay the config's: the profile only says where jobs run
                assert int(job["mem_mb"]) == sizes[rule]["mem_mb"], (rule, job)
                assert int(job["runtime"]) == sizes[rule]["runtime"], (rule, job)
            else:
                assert job["slurm_partition"] == "cpu-q", (rule, job)
                assert "cpus_per_gpu" not in job and "gpu_model" not in job, (rule, job)


def test_profile_without_site_settings_leaves_partition_and_account_to_slurm(tmp_path):
    jobs = msd_dry_run(tmp_path, str(ROOT / "profiles/slurm"))
    for rule, rule_jobs in jobs.items():
        for job in rule_jobs:
            assert "slurm_partition" not in job and "slurm_account" not in job, (rule, job)
            assert ("cpus_per_gpu" in job) == (rule in GPU_RULES), (rule, job)
    # the same partition for GPU jobs when only CCFV_SLURM_PARTITION is set
    jobs = msd_dry_run(tmp_path, str(ROOT / "profiles/slurm"), CCFV_SLURM_PARTITION="shared")
    assert {job["slurm_partition"] for rule_jobs in jobs.values() for job in rule_jobs} == {"shared"}


@pytest.fixture(scope="module")
def slurm_cluster():
    """A one-node SLURM with one fake GPU, stopped (and its folder removed) however the test ends."""
    try:
        local_slurm.ensure_installed()
    except local_slurm.SlurmUnavailable as e:
        pytest.skip(f"no local SLURM: {e}")
    root = Path(tempfile.mkdtemp(prefix="ccfv-slurm-"))  # short: munge's socket path must fit 108 bytes
    cluster = local_slurm.LocalSlurm(root)
    try:
        cluster.up()
        yield cluster
    finally:
        cluster.down()
        shutil.rmtree(root, ignore_errors=True)


def sbatch_calls(log: str) -> dict[str, list[str]]:
    """rule -> the sbatch command lines snakemake ran for it (the plugin logs them with --verbose)."""
    calls = collections.defaultdict(list)
    for line in re.findall(r"^sbatch call: (sbatch .*)$", log, re.M):
        rule = re.search(r"--comment rule_(\w+?)(?:_wildcards_\S*)?\s", line)
        assert rule, line
        calls[rule.group(1)].append(line)
    return calls


def random_model_features(dry_run_output: str) -> str:
    """The features file of a randomly initialised bank model, as the demo DAG names it: the smallest part of
    the DAG that holds a GPU rule (no pretraining, one task's data and preprocessing)."""
    outputs = re.findall(r"^rule sample_features:\n(?:\s+\w+: .*\n)*?\s+output: (\S+)", dry_run_output, re.M)
    random = sorted(out for out in outputs if "random" in Path(out).stem)
    assert random, outputs
    return random[0]


@pytest.mark.slow
def test_gpu_rule_runs_on_slurm_with_a_gpu_request(slurm_cluster, tmp_path):
    """The features of the random model for one tiny target: that target's data, validation and nnU-Net
    stages, random_init and one sample_features job (gpu=1), each a SLURM job, through `--profile slurm` as
    a user runs it."""
    tiny = yaml.safe_load(TINY.read_text())
    snakefile = ["-s", ROOT / "Snakefile", "--directory", tmp_path, "--configfile", TINY]
    whole = run([SNAKEMAKE, *snakefile, "-n"], cwd=tmp_path, env=environment(), timeout=120)
    assert whole.returncode == 0, whole.stdout[-3000:]
    target = random_model_features(whole.stdout)

    # the target first: --configfile takes every word after it
    dry = run([SNAKEMAKE, target, *snakefile, "-n", "--quiet", "rules"], cwd=tmp_path, env=environment(),
              timeout=120)
    assert dry.returncode == 0, dry.stdout[-3000:]
    expected = {m.group(1): int(m.group(2))
                for m in re.finditer(r"^(\w+)\s+(\d+)$", dry.stdout.split("Job stats:", 1)[1], re.M)}
    expected.pop("total")
    assert "sample_features" in expected and "pretrain" not in expected, expected

    # the repository root's link, in this scratch working directory: the bare name resolves the same way
    (tmp_path / "slurm").symlink_to(ROOT / "profiles/slurm")
    env = slurm_cluster.env(environment(CCFV_SLURM_PARTITION=local_slurm.PARTITION))
    # timeout -k: without an accounting database a wrong status command hangs snakemake past SIGTERM
    result = run(["timeout", "-k", "10", "330", SNAKEMAKE, target, *snakefile, "--profile", "slurm",
                  "--profile", TEST_PROFILE, "--verbose"], cwd=tmp_path, env=env, timeout=360)
    log = result.stdout
    assert result.returncode == 0, f"{log[-6000:]}\n{slurm_cluster.logs()}"
    assert (tmp_path / target).is_file()

    calls = sbatch_calls(log)
    assert {rule: len(lines) for rule, lines in calls.items()} == expected, log[-3000:]
    for rule, lines in calls.items():
        for line in lines:
            assert f" -p {local_slurm.PARTITION} " in line, line  # CCFV_SLURM_PARTITION reached sbatch
            python = re.search(r'--wrap="(\S+) -m snakemake ', line).group(1)
            assert Path(python).parent == Path(sys.executable).parent, line  # jobs run this environment
            if rule in GPU_RULES:
                assert " --gpus=1" in line, line
                assert f" --cpus-per-gpu={tiny['resources']['threads']} " in line, line
            else:
                assert "--gpus" not in line and "--gres" not in line, line
    print("\nsbatch call of the GPU rule:", re.sub(r"--wrap=.*", "--wrap=...", calls["sample_features"][0]))

    # SLURM's own record: the GPU job held the GPU, the others did not
    jobs = [job for job in slurm_cluster.jobs() if job.get("Comment", "").startswith("rule_")]
    assert len(jobs) == sum(expected.values()), jobs
    for job in jobs:
        assert job["JobState"] == "COMPLETED", job
        assert job["Partition"] == local_slurm.PARTITION, job
        holds_gpu = "gpu" in job.get("TresPerJob", "")
        assert holds_gpu == job["Comment"].startswith("rule_sample_features"), job
