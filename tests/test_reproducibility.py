"""Tests for ccfv.reproducibility: the pins' values and refusals, the record, and real tiny nnU-Net trainings
(and a feature-sampling pass) in fresh processes that must agree bit for bit when pinned, also with a busy
process beside them.

Every pinned run is a subprocess: the pins only take effect before torch and numpy load, and this test
process has loaded both (conftest.py).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from ccfv import reproducibility
from ccfv.reproducibility import (
    DEFAULT_LEVEL,
    KNOB_VARIABLES,
    LEVELS,
    PIN_VARIABLE,
    CpuBelowLevelError,
    check_pinned,
    numerics_record,
    pinned_environment,
    x86_64_level,
)

ROOT = Path(__file__).resolve().parents[1]
V2 = frozenset(LEVELS["x86-64-v2"].cpu_flags)
V3 = frozenset(LEVELS["x86-64-v3"].cpu_flags)
V4 = V3 | {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"}
ON_V3 = reproducibility.x86_64_level(reproducibility.cpu_flags()) in ("x86-64-v3", "x86-64-v4")
needs_v3 = pytest.mark.skipif(not ON_V3, reason="this CPU is below x86-64-v3, the default pin's level")


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any pin variable, with the work tree first on the path."""
    env = {k: v for k, v in os.environ.items() if k not in KNOB_VARIABLES}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    env.update(extra)
    return env


def run_python(code: str, *args: str, env: dict[str, str] | None = None, timeout: float = 300):
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                          env=env or clean_env(), cwd=ROOT, timeout=timeout)


def last_json(result: subprocess.CompletedProcess) -> dict:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------------
# The pins' values and refusals (no torch needed)
# --------------------------------------------------------------------------------------------------


def test_import_loads_neither_torch_nor_numpy():
    result = run_python("import sys, ccfv.reproducibility; "
                        "print([m for m in ('torch', 'numpy', 'scipy') if m in sys.modules])")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize(("flags", "level"), [(V2, "x86-64-v2"), (V3, "x86-64-v3"), (V4, "x86-64-v4"),
                                              (V3 - {"fma"}, "x86-64-v2"), (frozenset({"sse2"}), "x86-64"),
                                              (None, None)])
def test_x86_64_level(flags, level):
    assert x86_64_level(flags) == level


def test_pinned_environment_of_the_default_level():
    env = pinned_environment(flags=V3)
    assert DEFAULT_LEVEL == "x86-64-v3"
    assert env["ATEN_CPU_CAPABILITY"] == "avx2" and env["ONEDNN_MAX_CPU_ISA"] == "AVX2"
    assert env["MKL_CBWR"] == "COMPATIBLE"  # the only fixed MKL branch AMD CPUs honour
    assert env["OPENBLAS_CORETYPE"] == "Haswell"
    assert env["NPY_DISABLE_CPU_FEATURES"] == "X86_V4 AVX512_ICL AVX512_SPR"  # numpy 2.4.6 in the lock
    assert [env[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")] == ["1"] * 3
    assert env[PIN_VARIABLE] == "x86-64-v3,threads=1"
    assert set(env) <= set(KNOB_VARIABLES)


def test_pinned_environment_of_the_lower_level_with_threads():
    env = pinned_environment(4, "x86-64-v2", onednn=False, flags=V2)
    assert env["ATEN_CPU_CAPABILITY"] == "default" and env["ONEDNN_MAX_CPU_ISA"] == "SSE41"
    assert env["NPY_DISABLE_CPU_FEATURES"].split()[0] == "X86_V3"
    assert env["OMP_NUM_THREADS"] == "4" and env[PIN_VARIABLE] == "x86-64-v2,threads=4,onednn=off"


@pytest.mark.parametrize("threads", [0, -1, True, 1.5, "2", None])
def test_bad_thread_counts_are_refused(threads):
    with pytest.raises(ValueError, match=r"threads must be a positive integer, got"):
        pinned_environment(threads, flags=V3)


@pytest.mark.parametrize("level", ["avx2", "x86-64-v4", "", None])
def test_unknown_levels_are_refused(level):
    with pytest.raises(ValueError, match=r"level must be one of \['x86-64-v2', 'x86-64-v3'\]"):
        pinned_environment(1, level, flags=V4)


def test_a_cpu_below_the_level_is_refused_not_emulated():
    with pytest.raises(CpuBelowLevelError, match=r"this CPU \(x86-64-v2\) lacks \['avx', 'avx2'.*cannot reproduce"):
        pinned_environment(1, "x86-64-v3", flags=V2)
    with pytest.raises(CpuBelowLevelError, match=r"lacks \['fma'\]"):
        pinned_environment(1, "x86-64-v3", flags=V3 - {"fma"})
    assert pinned_environment(1, "x86-64-v3", flags=V4)["ATEN_CPU_CAPABILITY"] == "avx2"  # an AVX-512 CPU is capped
    assert pinned_environment(1, "x86-64-v2", flags=V3)["ATEN_CPU_CAPABILITY"] == "default"


def test_check_pinned_refuses_an_unpinned_or_deviating_record():
    with pytest.raises(RuntimeError, match="not pinned"):
        check_pinned({"pin": None, "deviations": []})
    with pytest.raises(RuntimeError, match="differ from their pin: torch uses 2 threads"):
        check_pinned({"pin": {"level": "x86-64-v3"}, "deviations": ["torch uses 2 threads, the pin says 1"]})


# --------------------------------------------------------------------------------------------------
# Pinning a fresh process
# --------------------------------------------------------------------------------------------------

RECORD = """
import json, sys
from ccfv.reproducibility import pin_cpu_numerics, numerics_record
pin_cpu_numerics(int(sys.argv[1]), sys.argv[2])
import numpy, scipy.linalg, torch
print(json.dumps(numerics_record()))
"""


@needs_v3
@pytest.mark.parametrize(("threads", "level", "capability"), [(1, "x86-64-v3", "AVX2"), (2, "x86-64-v2", "DEFAULT")])
def test_a_pinned_process_records_its_pin_and_matches_it(threads, level, capability):
    record = last_json(run_python(RECORD, threads, level))
    assert set(record) == {"cpu", "pin", "environment", "torch", "numpy", "blas", "deviations"}
    assert record["deviations"] == []
    assert record["pin"] == {"level": level, "threads": threads, "onednn": True}
    cpu = record["cpu"]
    assert cpu["model"] and cpu["vendor"] and cpu["x86_64_level"] in ("x86-64-v3", "x86-64-v4")
    assert {"avx2", "fma", "sse4_2"} <= set(cpu["flags"])
    torch_info = record["torch"]
    assert torch_info["cpu_capability"] == capability and torch_info["num_threads"] == threads
    assert torch_info["mkl_version"] and torch_info["onednn_version"] and torch_info["version"]
    assert torch_info["mkldnn_enabled"] is True and torch_info["float32_matmul_precision"] == "highest"
    assert not set(record["numpy"]["dispatch_active"]) & set(LEVELS[level].numpy_disabled)
    openblas = [b for b in record["blas"] if b["internal_api"] == "openblas"]
    assert openblas and all(b["architecture"].lower() == LEVELS[level].openblas.lower() for b in openblas)
    assert record["environment"]["MKL_CBWR"] == "COMPATIBLE"


@needs_v3
def test_the_record_lists_what_departs_from_the_pin():
    code = RECORD.replace("print(", "torch.set_num_threads(2); torch.backends.mkldnn.enabled = False; print(")
    record = last_json(run_python(code, 1, "x86-64-v3"))
    assert "torch uses 2 threads, the pin says 1" in record["deviations"]
    assert "oneDNN is off, the pin says on" in record["deviations"]
    with pytest.raises(RuntimeError, match="differ from their pin"):
        check_pinned(record)


@needs_v3
def test_pinning_after_numpy_was_imported_is_refused_unless_a_parent_exported_the_pins():
    code = "import numpy\nfrom ccfv.reproducibility import pin_cpu_numerics\npin_cpu_numerics(1)\nprint('pinned')"
    refused = run_python(code)
    assert refused.returncode != 0
    assert "pin_cpu_numerics must run before numpy is imported" in refused.stderr
    exported = run_python(code, env=clean_env(**pinned_environment(1)))
    assert exported.returncode == 0 and exported.stdout.strip() == "pinned", exported.stderr


@needs_v3
def test_a_stale_thread_variable_is_overridden_with_a_warning():
    code = ("import os, warnings\nfrom ccfv.reproducibility import pin_cpu_numerics\nwarnings.simplefilter('error')\n"
            "try:\n    pin_cpu_numerics(1)\nexcept RuntimeWarning as w:\n    print(w)\n"
            "warnings.simplefilter('ignore')\npin_cpu_numerics(1)\nprint(os.environ['OMP_NUM_THREADS'])")
    result = run_python(code, env=clean_env(OMP_NUM_THREADS="8"))
    assert result.returncode == 0, result.stderr
    warning, value = result.stdout.strip().splitlines()
    assert "overrides OMP_NUM_THREADS='8' (now '1')" in warning
    assert value == "1"


def test_pinned_environment_refuses_to_guess_on_a_cpu_it_cannot_read(monkeypatch):
    monkeypatch.setattr(reproducibility, "cpu_flags", lambda: None)
    monkeypatch.setattr(reproducibility.platform, "machine", lambda: "x86_64")
    with pytest.raises(CpuBelowLevelError, match="cannot read this CPU's instruction-set flags"):
        pinned_environment(1)
    monkeypatch.setattr(reproducibility.platform, "machine", lambda: "aarch64")
    with pytest.raises(CpuBelowLevelError, match="for x86-64 CPUs; this machine is 'aarch64'"):
        pinned_environment(1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert pinned_environment(1, flags=V3)  # planning another machine's environment needs no CPU here


# --------------------------------------------------------------------------------------------------
# Real tiny trainings in fresh processes (conftest.py's tiny_dataset)
# --------------------------------------------------------------------------------------------------

FINGERPRINT = """
import hashlib, json, sys, tempfile
from pathlib import Path
preprocessed, split, threads, level, raw = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
if level != "unpinned":
    from ccfv.reproducibility import pin_cpu_numerics
    pin_cpu_numerics(threads, level)
import h5py, numpy as np
from safetensors.torch import load_file
from ccfv.features.target import sample_target
from ccfv.reproducibility import numerics_record
from ccfv.bank.training import TrainingBudget, pretrain
from ccfv.finetune.nnunet import finetune

def digest(arrays):
    h = hashlib.sha256()
    for name, array in arrays:
        h.update(name.encode()); h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()

out = Path(tempfile.mkdtemp())
budget = TrainingBudget(iterations=3, iterations_per_epoch=3, val_iterations_per_epoch=1)
bank = pretrain(preprocessed, split, "Task94_SynthSpleen", "m", out / "m", budget, seed=0, device="cpu",
                threads=threads)
weights = load_file(str(bank / "weights.safetensors"))
sampling = {"total": 100, "minimum": 10, "n_global": 20, "n_background": 20, "seed": 0, "step_size": 0.5,
            "batch_size": 2, "layer_ratios": {"unet": [0.5, 1.0]}}
features = sample_target(bank, preprocessed, split, out / "f.h5", target="Task94_SynthSpleen",
                         sampling=sampling, threads=threads, device="cpu")
found = []
with h5py.File(features, "r") as f:
    f.visititems(lambda name, obj: found.append((name, obj[()])) if isinstance(obj, h5py.Dataset) else None)
tune = TrainingBudget(iterations=4, iterations_per_epoch=4, val_iterations_per_epoch=1, head_init="zero")
result = finetune(preprocessed, raw, split, bank, out / "dice.json", tune, seed=0, device="cpu", threads=threads)
print(json.dumps({"weights": digest(sorted((k, v.numpy()) for k, v in weights.items())),
                  "features": digest(found), "dice": json.loads((out / "dice.json").read_text())["per_case"],
                  "deviations": numerics_record()["deviations"]}))
"""


@pytest.fixture(scope="module")
def tiny_split(tiny_dataset, tmp_path_factory):
    from ccfv.preprocess.nnunet import case_identifiers
    from ccfv.preprocess.splits import make_split, write_split

    path = tmp_path_factory.mktemp("repro_split") / "Task94_SynthSpleen.json"
    write_split(make_split(case_identifiers(tiny_dataset.preprocessed), 0.2, seed=0), path)
    return path


#: The tiny run's digests with the pinned settings (x86-64-v3, 1 thread), made on the development machine.
REFERENCE_FINGERPRINT = Path(__file__).parent / "reference" / "tiny_fingerprint.json"


def fingerprint(tiny_dataset, split, threads: int, level: str = DEFAULT_LEVEL, busy: int = 0) -> dict:
    """Weights and features digests of a tiny pretraining + sampling run in a fresh process, with ``busy``
    CPU-bound processes running beside it."""
    neighbours = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy)]
    try:
        return last_json(run_python(FINGERPRINT, tiny_dataset.preprocessed, split, threads, level, tiny_dataset.raw,
                                    timeout=600))
    finally:
        for process in neighbours:
            process.kill()
            process.wait()


@pytest.mark.slow
@needs_v3
def test_pinned_runs_in_fresh_processes_are_identical_also_beside_a_busy_process(tiny_dataset, tiny_split):
    quiet = fingerprint(tiny_dataset, tiny_split, threads=1)
    busy = fingerprint(tiny_dataset, tiny_split, threads=1, busy=1)
    assert quiet["deviations"] == [] and busy["deviations"] == []
    assert busy["weights"] == quiet["weights"] and busy["features"] == quiet["features"]
    # The digests see the ISA: the same run pinned one level lower gives other bits (so the equality above
    # is not that of a digest blind to the numerics).
    lower = fingerprint(tiny_dataset, tiny_split, threads=1, level="x86-64-v2")
    assert lower["deviations"] == []
    assert lower["weights"] != quiet["weights"] and lower["features"] != quiet["features"]
    # ... and they equal the committed reference of this run (tests/reference/tiny_fingerprint.json: made with
    # the pinned settings on the development machine, an AMD EPYC at x86-64-v3). Refresh it only with a reason.
    reference = json.loads(REFERENCE_FINGERPRINT.read_text())
    made_on, here = reference["cpu_model"], numerics_record()["cpu"]["model"]
    same = {k: quiet[k] == reference[k] for k in ("weights", "features", "dice")}
    if made_on != here and not all(same.values()):
        pytest.xfail(f"the pinned run differs from the reference made on {made_on!r} on this {here!r} in "
                     f"{[k for k, v in same.items() if not v]}: at the same level, oneDNN's cache heuristics are the "
                     "one known cause left (docs/reproducibility.md)")
    assert all(same.values()), same


@pytest.mark.slow
@needs_v3
def test_pinned_runs_with_two_threads_are_identical(tiny_dataset, tiny_split):
    # Two threads are reproducible with two threads (not with one: the thread count is part of the pin,
    # docs/reproducibility.md).
    first = fingerprint(tiny_dataset, tiny_split, threads=2)
    second = fingerprint(tiny_dataset, tiny_split, threads=2, busy=1)
    assert first["deviations"] == [] and second["deviations"] == []
    assert first == second


def write_reference_fingerprint() -> dict:
    """Make the tiny pinned run's reference (``REFERENCE_FINGERPRINT``) on this machine: conftest.py's tiny
    task, its split, the pinned fingerprint at x86-64-v3 with 1 thread, and the CPU it was made on."""
    import tempfile

    from ccfv.data.synthetic import write_task
    from ccfv.preprocess.nnunet import case_identifiers, convert_msd_task, plan_and_preprocess
    from ccfv.preprocess.splits import make_split, write_split

    from .conftest import TASK, TINY_NETWORK, TinyDataset

    root = Path(tempfile.mkdtemp())
    task_dir = write_task(TASK, root / "msd", n_cases=5, seed=0, shape=(32, 32, 16))
    raw = convert_msd_task(task_dir, root / "raw")
    preprocessed = plan_and_preprocess(raw, root / "preprocessed", TINY_NETWORK)
    dataset = TinyDataset(task_dir, root / "raw", raw, root / "preprocessed", preprocessed, TINY_NETWORK)
    split = root / "split.json"
    write_split(make_split(case_identifiers(preprocessed), 0.2, seed=0), split)
    found = fingerprint(dataset, split, threads=1)
    reference = {"weights": found["weights"], "features": found["features"], "dice": found["dice"],
                 "cpu_model": numerics_record()["cpu"]["model"], "level": DEFAULT_LEVEL, "threads": 1}
    REFERENCE_FINGERPRINT.parent.mkdir(parents=True, exist_ok=True)
    REFERENCE_FINGERPRINT.write_text(json.dumps(reference, indent=2) + "\n")
    return reference


if __name__ == "__main__":  # python -m tests.test_reproducibility (from the repository root)
    print(json.dumps(write_reference_fingerprint(), indent=2))
