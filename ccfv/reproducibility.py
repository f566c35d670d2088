"""Pinning the CPU numerics, so that any x86-64 machine of the same instruction-set level reproduces a run
bit for bit, and recording what a run's numerics depended on (docs/reproducibility.md).

Why: the same commit and seed give bit-identical weights twice on one machine, but other weights, Dice and
tables on another, because the CPU kernels are chosen at run time from the CPU's instruction sets:

- ATen (torch's own kernels) picks its vectorised kernels from the CPU's capability (DEFAULT, AVX2,
  AVX512); ``ATEN_CPU_CAPABILITY`` overrides it (aten/src/ATen/native/DispatchStub.cpp, which accepts the
  value without checking the CPU: a CPU below it would run instructions it does not have);
- oneDNN (torch's convolutions) JIT-compiles for the best ISA it finds; ``ONEDNN_MAX_CPU_ISA`` caps it
  (oneDNN's "CPU Dispatcher Control");
- MKL (torch's GEMMs, e.g. UNETR's linear layers and ATen's own convolutions) dispatches on the CPU and on
  its vendor; ``MKL_CBWR`` selects a fixed code branch. Only ``COMPATIBLE`` (SSE2 without the approximate
  rcpps/rsqrtps, whose results differ between vendors) and ``AUTO`` are honoured on non-Intel CPUs: any other
  branch silently falls back to ``AUTO`` there (oneMKL Developer Guide, "Conditional Numerical
  Reproducibility"; measured on an AMD EPYC: AVX2, AVX, SSE4_2 and AUTO all gave the unset run's bits,
  COMPATIBLE other bits). So COMPATIBLE, on every level;
- OpenBLAS (numpy's and scipy's linear algebra: the scores) picks kernels per CPU model;
  ``OPENBLAS_CORETYPE`` fixes them;
- numpy dispatches its ufunc loops (float32 exp, sin, ...) on X86_V3/X86_V4/AVX512_* at import;
  ``NPY_DISABLE_CPU_FEATURES`` switches targets off (numpy >= 2.4 names);
- results also depend on the number of threads (oneDNN's and ATen's parallel reductions split the work per
  thread; ATen even sends 1x1x1 convolutions to oneDNN only with more than one thread), so the thread count
  is part of the pin: a reference made with 1 thread is reproduced with 1 thread, not with 2.

Every one of these changed the bits of a tiny nnU-Net pretraining and fine-tuning here (docs/
reproducibility.md has the table). All are read when the library loads or at its first use, so the
variables must be in the environment before torch, numpy or scipy is imported: :func:`pin_cpu_numerics`
refuses to run after that unless the environment already held the pins (exported by a parent process).
Setting them from Python at process start (before those imports) works; setting them after the first torch
operation is silently ignored (measured).

What pinning cannot do: a CPU below the pinned level cannot run the pinned kernels (it is refused, not
emulated: a fallback would give other bits under a "pinned" label); GPUs are not covered (cuDNN/cuBLAS
choose their own algorithms per GPU model); the library versions (torch, MKL, oneDNN, numpy, OpenBLAS,
glibc's libm) must be the same, which the lock file and container provide; and heuristics that read the
CPU's cache sizes or core count inside oneDNN cannot be pinned by any variable (``onednn=False`` takes
oneDNN out of the computation, at 3.4 to 4x the time (benchmarks/bench_pinning.py), leaving ATen and MKL).

``import ccfv.reproducibility`` imports neither torch nor numpy.
"""
from __future__ import annotations

import importlib.metadata
import os
import platform
import re
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["LEVELS", "DEFAULT_LEVEL", "PIN_VARIABLE", "CpuBelowLevelError", "cpu_flags", "x86_64_level",
           "pinned_environment", "pin_cpu_numerics", "numerics_record", "check_pinned"]

#: Where a pin is written for child processes and for :func:`numerics_record`: ``x86-64-v3,threads=1``
#: (``,onednn=off`` when oneDNN is disabled).
PIN_VARIABLE = "CCFV_NUMERICS_PIN"
#: MKL's CNR branch on every level: the only fixed branch non-Intel CPUs honour.
MKL_BRANCH = "COMPATIBLE"

_V2_FLAGS = ("cx16", "lahf_lm", "popcnt", "sse4_1", "sse4_2", "ssse3")
_V3_FLAGS = _V2_FLAGS + ("avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave")
_V4_FLAGS = _V3_FLAGS + ("avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl")
#: /proc/cpuinfo flags worth recording: what the libraries above dispatch on.
RECORDED_FLAGS = tuple(sorted(set(_V4_FLAGS) | {
    "sse", "sse2", "avx512_vnni", "avx512_bf16", "avx512_fp16", "avx512ifma", "avx512vbmi", "avx512_vbmi2",
    "avx_vnni", "amx_bf16", "amx_int8", "amx_tile", "fma4", "xop"}))


@dataclass(frozen=True)
class Level:
    """One x86-64 microarchitecture level (the psABI's x86-64-v2/-v3) and what each library is capped to."""

    name: str
    #: /proc/cpuinfo flags a CPU must have to run the pinned kernels.
    cpu_flags: tuple[str, ...]
    aten: str            # ATEN_CPU_CAPABILITY
    onednn: str          # ONEDNN_MAX_CPU_ISA
    openblas: str        # OPENBLAS_CORETYPE
    #: numpy (>= 2.4) dispatch targets above the level, switched off (NPY_DISABLE_CPU_FEATURES).
    numpy_disabled: tuple[str, ...]
    #: What torch.backends.cpu.get_cpu_capability() says when the pin is in effect.
    torch_capability: str


LEVELS: dict[str, Level] = {
    # AVX2 + FMA (Intel Haswell, 2013, and later; AMD Zen and later): the level of this project's reference
    # machine; an AVX-512 machine runs its AVX2 kernels.
    "x86-64-v3": Level("x86-64-v3", _V3_FLAGS, aten="avx2", onednn="AVX2", openblas="Haswell",
                       numpy_disabled=("X86_V4", "AVX512_ICL", "AVX512_SPR"), torch_capability="AVX2"),
    # SSE4.2 (numpy >= 2.4's own minimum): for a machine park that includes pre-2013 CPUs.
    "x86-64-v2": Level("x86-64-v2", _V2_FLAGS, aten="default", onednn="SSE41", openblas="Nehalem",
                       numpy_disabled=("X86_V3", "X86_V4", "AVX512_ICL", "AVX512_SPR"), torch_capability="DEFAULT"),
}
DEFAULT_LEVEL = "x86-64-v3"
_LEVEL_FLAGS = (("x86-64-v4", _V4_FLAGS), ("x86-64-v3", _V3_FLAGS), ("x86-64-v2", _V2_FLAGS))

#: Every variable a pin sets (numerics_record reports each, set or not).
KNOB_VARIABLES = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_CBWR", "OPENBLAS_CORETYPE",
                  "NPY_DISABLE_CPU_FEATURES", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                  "MKL_DYNAMIC", "OMP_DYNAMIC", PIN_VARIABLE)
#: Libraries that read the variables when they load: after their import a pin can no longer take effect.
_READ_AT_IMPORT = ("torch", "numpy", "scipy")


class CpuBelowLevelError(RuntimeError):
    """The CPU lacks instructions of the pinned level: it cannot reproduce a run made at that level."""


def _cpuinfo(path: str | os.PathLike = "/proc/cpuinfo") -> dict[str, str]:
    """The first processor's ``key: value`` lines of /proc/cpuinfo; {} where there is none (not Linux)."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return {}
    info: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if info:
                break
            continue
        key, _, value = line.partition(":")
        info.setdefault(key.strip(), value.strip())
    return info


def cpu_flags() -> frozenset[str] | None:
    """The CPU's instruction-set flags as Linux reports them (``avx2``, ``avx512f``, ...); None when unknown."""
    flags = _cpuinfo().get("flags")
    return frozenset(flags.split()) if flags else None


def x86_64_level(flags: frozenset[str] | set[str] | None) -> str | None:
    """The highest x86-64 microarchitecture level (``x86-64-v2`` .. ``-v4``) whose flags are all present."""
    if flags is None:
        return None
    for name, needed in _LEVEL_FLAGS:
        if set(needed) <= set(flags):
            return name
    return "x86-64"


def _numpy_version() -> tuple[int, int] | None:
    try:
        found = re.match(r"(\d+)\.(\d+)", importlib.metadata.version("numpy"))
    except importlib.metadata.PackageNotFoundError:
        return None
    return (int(found.group(1)), int(found.group(2))) if found else None


def _check_threads(threads: Any) -> int:
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive integer, got {threads!r}")
    return threads


def _check_level(level: Any) -> Level:
    if level not in LEVELS:
        raise ValueError(f"level must be one of {sorted(LEVELS)}, got {level!r}")
    return LEVELS[level]


def _pin_marker(level: str, threads: int, onednn: bool) -> str:
    return f"{level},threads={threads}" + ("" if onednn else ",onednn=off")


def _parse_marker(marker: str | None) -> dict[str, Any] | None:
    if not marker:
        return None
    found = re.fullmatch(r"([\w.-]+),threads=(\d+)(,onednn=off)?", marker)
    if not found or found.group(1) not in LEVELS:
        return {"invalid": marker}
    return {"level": found.group(1), "threads": int(found.group(2)), "onednn": found.group(3) is None}


def pinned_environment(threads: int = 1, level: str = DEFAULT_LEVEL, *, onednn: bool = True,
                       flags: frozenset[str] | set[str] | None = None) -> dict[str, str]:
    """The environment variables that pin the numerics at ``level`` with ``threads`` threads.

    Pure: sets nothing, imports nothing. For a parent process to export to its children (a Snakemake
    process to its jobs, a shell script, a container's environment) before they start Python.

    Args:
        threads: intra-op threads of torch, OpenMP, MKL and OpenBLAS. Part of the reference: results made
            with 1 thread are reproduced with 1 thread.
        level: a key of :data:`LEVELS`.
        onednn: False records that oneDNN is disabled in the pinned processes (which
            :func:`pin_cpu_numerics` does; no variable can).
        flags: the CPU's /proc/cpuinfo flags; default this machine's.

    Raises:
        ValueError: a bad ``threads`` or ``level``.
        CpuBelowLevelError: not x86-64, flags unknown, or a flag of the level missing.
    """
    threads = _check_threads(threads)
    spec = _check_level(level)
    machine = platform.machine().lower()
    if flags is None:
        if machine not in ("x86_64", "amd64"):
            raise CpuBelowLevelError(f"the numerics pins are for x86-64 CPUs; this machine is {platform.machine()!r}")
        flags = cpu_flags()
        if flags is None:
            raise CpuBelowLevelError("cannot read this CPU's instruction-set flags (/proc/cpuinfo); "
                                     "pass flags= to plan the environment of another machine")
    missing = [f for f in spec.cpu_flags if f not in flags]
    if missing:
        raise CpuBelowLevelError(
            f"this CPU ({x86_64_level(flags)}) lacks {missing} of {level}: it cannot run the kernels of a run "
            f"pinned at {level}, so it cannot reproduce one. Reproduce on a machine of that level, or make the "
            f"reference and every rerun at a level all machines have (level='x86-64-v2').")
    env = {
        "ATEN_CPU_CAPABILITY": spec.aten,
        "ONEDNN_MAX_CPU_ISA": spec.onednn,
        "MKL_CBWR": MKL_BRANCH,
        "OPENBLAS_CORETYPE": spec.openblas,
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "OPENBLAS_NUM_THREADS": str(threads),
        "MKL_DYNAMIC": "FALSE",
        "OMP_DYNAMIC": "FALSE",
        PIN_VARIABLE: _pin_marker(level, threads, onednn),
    }
    numpy_version = _numpy_version()
    if numpy_version is not None and numpy_version >= (2, 4):
        env["NPY_DISABLE_CPU_FEATURES"] = " ".join(spec.numpy_disabled)
    elif numpy_version is not None:
        warnings.warn(f"numpy {'.'.join(map(str, numpy_version))} < 2.4: its SIMD dispatch is not pinned "
                      "(ccfv knows only numpy >= 2.4's target names)", RuntimeWarning, stacklevel=2)
    return env


def pin_cpu_numerics(threads: int = 1, level: str = DEFAULT_LEVEL, *, onednn: bool = True) -> dict[str, str]:
    """Pin this process's numerics (and its children's, through the environment); return the variables set.

    Call it first thing in a process, before anything imports torch, numpy or scipy (a Snakemake job's
    script, ``ccfv rank``). Variables the user had set to other values are overridden with a warning naming
    them: the call is the explicit choice, a stale ``OMP_NUM_THREADS`` in a shell must neither break the
    pin silently nor stop the run. When torch, numpy or scipy is already imported, the pin can only be
    confirmed, not applied: it passes when the environment already holds every pinned value (a parent
    exported :func:`pinned_environment`) and raises RuntimeError otherwise.

    Args: as :func:`pinned_environment`; ``onednn=False`` also imports torch and sets
        ``torch.backends.mkldnn.enabled = False`` (3.4 to 4x the time; see the module docstring).

    Raises:
        ValueError: bad ``threads``/``level``.
        CpuBelowLevelError: the CPU is below ``level`` (refused, never a silent fallback).
        RuntimeError: torch, numpy or scipy was imported before and the environment lacks the pins.
    """
    env = pinned_environment(threads, level, onednn=onednn)
    differ = {k: os.environ[k] for k, v in env.items() if k in os.environ and os.environ[k] != v}
    missing = [k for k in env if k not in os.environ]
    loaded = [m for m in _READ_AT_IMPORT if m in sys.modules]
    if loaded and (differ or missing):
        raise RuntimeError(
            f"pin_cpu_numerics must run before {', '.join(loaded)} is imported: these libraries read "
            f"{sorted(set(differ) | set(missing))} when they load, so a pin set now would not take effect. Call "
            "it first thing in the process, or export ccfv.reproducibility.pinned_environment() before Python "
            "starts.")
    if differ:
        warnings.warn("pin_cpu_numerics overrides " + ", ".join(f"{k}={v!r} (now {env[k]!r})"
                                                                  for k, v in differ.items()),
                      RuntimeWarning, stacklevel=2)
    os.environ.update(env)
    if "torch" in sys.modules or not onednn:
        import torch

        torch.set_num_threads(threads)
        if not onednn:
            torch.backends.mkldnn.enabled = False
    return env


def _torch_record() -> dict[str, Any] | None:
    try:
        import torch
    except ImportError:
        return None
    config = torch.__config__.show()
    mkl = re.search(r"Math Kernel Library Version ([\w.]+)", config)
    onednn = re.search(r"MKL-DNN v([\w.]+)", config)
    backend = re.search(r"ATen parallel backend: (\w+)", torch.__config__.parallel_info())
    return {
        "version": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "num_threads": torch.get_num_threads(),
        "num_interop_threads": torch.get_num_interop_threads(),
        "mkldnn_enabled": bool(torch.backends.mkldnn.enabled),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "mkl_version": mkl.group(1) if mkl else None,
        "onednn_version": onednn.group(1) if onednn else None,
        "parallel_backend": backend.group(1) if backend else None,
        "cuda_available": torch.cuda.is_available(),
    }


def _numpy_record() -> dict[str, Any] | None:
    try:
        import numpy
    except ImportError:
        return None
    out: dict[str, Any] = {"version": numpy.__version__, "dispatch_active": None}
    try:  # private, but the only place numpy says which dispatch targets it runs
        from numpy._core._multiarray_umath import __cpu_dispatch__, __cpu_features__
        out["dispatch_active"] = [t for t in __cpu_dispatch__ if __cpu_features__.get(t)]
    except ImportError:
        pass
    return out


def _blas_record() -> list[dict[str, Any]] | None:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    keys = ("internal_api", "version", "architecture", "num_threads", "filepath")
    return [{k: lib.get(k) for k in keys} for lib in threadpool_info()]


def numerics_record() -> dict[str, Any]:
    """What this process's numerics depend on, for provenance: the CPU (model, vendor, the ISA flags the
    libraries dispatch on, its x86-64 level), the pin and every knob variable, torch (version, cpu
    capability, threads, oneDNN on/off, MKL and oneDNN versions), numpy's active SIMD targets, the BLAS
    libraries loaded (threadpoolctl), and ``deviations``: each way the process differs from its pin (empty
    when it matches, or when nothing is pinned; ``pin`` is None then).

    Imports torch and numpy when they are installed: call it after :func:`pin_cpu_numerics`.
    """
    info = _cpuinfo()
    flags = frozenset(info["flags"].split()) if info.get("flags") else None
    pin = _parse_marker(os.environ.get(PIN_VARIABLE))
    record: dict[str, Any] = {
        "cpu": {
            "model": info.get("model name"), "vendor": info.get("vendor_id"), "machine": platform.machine(),
            "logical_cpus": os.cpu_count(), "x86_64_level": x86_64_level(flags),
            "flags": None if flags is None else [f for f in RECORDED_FLAGS if f in flags],
        },
        "pin": pin,
        "environment": {k: os.environ.get(k) for k in KNOB_VARIABLES},
        "torch": _torch_record(),
        "numpy": _numpy_record(),
        "blas": _blas_record(),
    }
    record["deviations"] = _deviations(record)
    return record


def _deviations(record: dict[str, Any]) -> list[str]:
    pin = record["pin"]
    if pin is None:
        return []
    if "invalid" in pin:
        return [f"{PIN_VARIABLE}={pin['invalid']!r} is not a pin ccfv wrote"]
    spec, threads = LEVELS[pin["level"]], pin["threads"]
    out = []
    expected = {
        "ATEN_CPU_CAPABILITY": spec.aten, "ONEDNN_MAX_CPU_ISA": spec.onednn, "MKL_CBWR": MKL_BRANCH,
        "OPENBLAS_CORETYPE": spec.openblas, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
        "OPENBLAS_NUM_THREADS": str(threads),
    }
    for key, value in expected.items():
        if record["environment"].get(key) != value:
            out.append(f"{key} is {record['environment'].get(key)!r}, the pin says {value!r}")
    torch_info = record["torch"]
    if torch_info is not None:
        if torch_info["cpu_capability"] != spec.torch_capability:
            out.append(f"torch runs {torch_info['cpu_capability']} kernels, the pin says {spec.torch_capability} "
                       "(ATEN_CPU_CAPABILITY was set after torch's first operation?)")
        if torch_info["num_threads"] != threads:
            out.append(f"torch uses {torch_info['num_threads']} threads, the pin says {threads}")
        if torch_info["mkldnn_enabled"] != pin["onednn"]:
            out.append(f"oneDNN is {'on' if torch_info['mkldnn_enabled'] else 'off'}, the pin says "
                       f"{'on' if pin['onednn'] else 'off'}")
        if torch_info["float32_matmul_precision"] != "highest":
            out.append(f"torch's float32 matmul precision is {torch_info['float32_matmul_precision']!r}, not "
                       "'highest' (lower ones allow bf16/tf32 on CPUs that have them)")
    numpy_info = record["numpy"]
    if numpy_info is not None and numpy_info["dispatch_active"] is not None:
        above = [t for t in numpy_info["dispatch_active"] if t in spec.numpy_disabled]
        if above:
            out.append(f"numpy runs {above} loops, above {spec.name} (imported before the pin?)")
    for lib in record["blas"] or []:
        if lib.get("internal_api") == "openblas":
            if str(lib.get("architecture")).lower() != spec.openblas.lower():
                out.append(f"OpenBLAS {lib.get('filepath')} runs {lib.get('architecture')} kernels, the pin says "
                           f"{spec.openblas}")
            if lib.get("num_threads") != threads:
                out.append(f"OpenBLAS {lib.get('filepath')} uses {lib.get('num_threads')} threads, the pin says "
                           f"{threads}")
    return out


def check_pinned(record: dict[str, Any] | None = None) -> dict[str, Any]:
    """The record when this process is pinned and matches its pin; RuntimeError listing why not otherwise."""
    record = numerics_record() if record is None else record
    if record["pin"] is None:
        raise RuntimeError(f"the numerics are not pinned ({PIN_VARIABLE} is unset): call "
                           "ccfv.reproducibility.pin_cpu_numerics() first thing in the process")
    if record["deviations"]:
        raise RuntimeError("the numerics differ from their pin: " + "; ".join(record["deviations"]))
    return record


def pin_or_warn(threads: int = 1, level: str = DEFAULT_LEVEL) -> dict[str, str]:
    """:func:`pin_cpu_numerics` for a process that must run anyway (a workflow job, ``ccfv rank``): where the
    pin cannot apply (a CPU below the level or not x86-64, e.g. an ARM laptop; numpy or torch imported
    before, as in a test or a user's Python session) it warns, naming why the results may differ from a
    pinned reference, and returns {} instead of raising. :func:`numerics_record` then shows the process as
    unpinned (``deviations``), so provenance and the comparison with the reference say so.

    Raises:
        ValueError: a bad ``threads`` or ``level`` (a mistake, not a machine's limit).
    """
    try:
        return pin_cpu_numerics(threads, level)
    except CpuBelowLevelError as err:
        reason = str(err)
    except RuntimeError as err:
        reason = str(err)
    warnings.warn(f"ccfv: CPU numerics not pinned ({reason}); results may differ in the last bits from a "
                  "pinned reference (docs/reproducibility.md)", RuntimeWarning, stacklevel=2)
    return {}
