"""Issue 26's time guards, measured in one command: the demo DAG against 8 minutes and the test suite against
9 minutes of pytest, each with its exact CPU-seconds, the machine's load and what other processes took meanwhile,
and a calibration measured in the same run so that a figure from another machine can be read against this one.

- ``demo``: ``snakemake [TARGETS] --cores N --configfile CONFIG`` from scratch in an empty scratch working
  directory (the checkout's Snakefile; the checkout's own results/ are never touched): the DAG that `make demo`
  runs, without the report and the comparison with the reference, which are not part of the guard.
- ``tests``: ``python -m pytest -q -n WORKERS [PYTEST_ARGS]`` in the checkout (what `make test` runs;
  PYTEST_ARGS default ``tests``).
- ``calibration``: a fresh pinned process (ccfv.reproducibility, the workflow jobs' pin) times ``--calib-steps``
  training steps of the config's U-Net at its patch and batch size (bench_training.iterations_per_second: the
  step nnU-Net's trainer runs). ``<part>_cpu_in_steps`` = the part's CPU-seconds over one step's seconds: a
  machine-independent size of the part, for comparing runs on machines of different speed.

Why each figure (docs/reproducibility.md "What it costs", docs/report.md "Costs"):

- ``<part>_cpu_s`` is exact: ``getrusage(RUSAGE_CHILDREN)`` around the part, which counts every descendant
  process that was waited for (every Snakemake job and the workers of nnU-Net and pytest-xdist). Snakemake's
  own benchmark files sample a job's CPU every 30 s and undercount it.
- ``<part>_min_wall_s`` = CPU-seconds over the cores it may use (the machine's, at most ``--cores`` for the
  demo and ``--workers`` for the tests): the wall time the part needs at least, however well its jobs pack;
  above the guard, no scheduling can meet it.
- ``others_cpu_s``: the CPU time the whole machine spent during the parts (``/proc/stat``) less this run's own:
  the load of other processes, which slows the wall time but not the CPU-seconds. ``load_before`` is the
  1-minute load average when the run started.

The last line printed is machine-readable, ``key=value`` separated by spaces: ``calib_step_s``, then per part
run ``<part>_wall_s <part>_cpu_s <part>_min_wall_s <part>_guard_s <part>_wall_over_guard <part>_cpu_in_steps``,
then ``others_cpu_s cores load_before``. A part that fails stops the run with its output's tail and exit
status 1; its scratch directory is removed unless ``--keep``.

    .venv/bin/python benchmarks/bench_guards.py [--parts demo tests] [--config config/config.yaml]
        [--cores 2] [--workers 2] [--targets T ...] [--pytest-args ARG ...] [--calib-steps 30]
        [--scratch DIR] [--keep]
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCHMARKS))

#: seconds, from issue 26 item 3
GUARDS = {"demo": 8 * 60, "tests": 9 * 60}
PARTS = ("demo", "tests")


def children_cpu_s() -> float:
    """User + system CPU-seconds of every descendant of this process that has been waited for."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def machine_busy_s() -> float | None:
    """CPU-seconds the whole machine has spent busy since boot (``/proc/stat``, all CPUs); None off Linux."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return None
    # user nice system idle iowait irq softirq; not steal (the hypervisor's, not this machine's processes) and
    # not guest (already counted in user and nice)
    ticks = [int(v) for v in fields[:7]]
    idle = ticks[3] + ticks[4]  # idle + iowait
    return (sum(ticks) - idle) / os.sysconf("SC_CLK_TCK")


def calibrate(config: Path, steps: int) -> float:
    """Seconds of one training step of the config's U-Net in a fresh pinned process (one timed loop of
    ``steps`` after a warm-up step: bench_training.iterations_per_second)."""
    code = (
        "import sys; from ccfv.reproducibility import pin_or_warn; pin_or_warn(1)\n"
        "import torch, yaml, bench_training\n"
        "config = yaml.safe_load(open(sys.argv[1]))\n"
        "name, architecture = bench_training.architectures({**config, 'architectures': ['unet']})[0]\n"
        "print(1 / bench_training.iterations_per_second(name, architecture, config['network'], "
        "torch.device('cpu'), int(sys.argv[2])))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), str(BENCHMARKS),
                                                                        os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, "-c", code, str(config), str(steps)], capture_output=True, text=True,
                            env=env, cwd=ROOT)
    if result.returncode != 0:
        sys.exit(f"bench_guards: the calibration failed (exit status {result.returncode}):\n{result.stderr[-3000:]}")
    return float(result.stdout.strip().splitlines()[-1])


def measure(name: str, command: list[str], cwd: Path) -> dict:
    """Run one part to the end; its wall and CPU seconds. Exits with the output's tail when it fails."""
    print(f"{name}: {' '.join(command)} (in {cwd})", flush=True)
    cpu0, start = children_cpu_s(), time.perf_counter()
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    wall, cpu = time.perf_counter() - start, children_cpu_s() - cpu0
    if result.returncode != 0:
        tail = (result.stdout + result.stderr)[-4000:]
        sys.exit(f"bench_guards: the {name} part failed (exit status {result.returncode}) after {wall:.0f} s:\n{tail}")
    last = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()][-1:]
    print(f"{name}: {wall:.1f} s wall, {cpu:.1f} CPU-seconds; last line: {last[0] if last else ''}", flush=True)
    return {"wall_s": wall, "cpu_s": cpu}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--config", type=Path, default=ROOT / "config" / "config.yaml",
                        help="the demo's config, and the calibration's U-Net")
    parser.add_argument("--cores", type=int, default=2, help="snakemake --cores (the Makefile's CORES)")
    parser.add_argument("--workers", type=int, default=2, help="pytest-xdist workers (the Makefile's TEST_WORKERS)")
    parser.add_argument("--targets", nargs="*", default=[], help="Snakemake targets; default the whole DAG")
    parser.add_argument("--pytest-args", nargs="*", default=["tests"], help="default: the whole suite")
    parser.add_argument("--calib-steps", type=int, default=30)
    parser.add_argument("--scratch", type=Path, help="parent of the demo's scratch working directory")
    parser.add_argument("--keep", action="store_true", help="keep the demo's scratch working directory")
    args = parser.parse_args()
    config = args.config.resolve()
    if not config.is_file():
        parser.error(f"{args.config}: no such config file")
    if min(args.cores, args.workers, args.calib_steps) < 1:
        parser.error("--cores, --workers and --calib-steps must be at least 1")
    snakemake = Path(sys.executable).with_name("snakemake")
    if "demo" in args.parts and not snakemake.is_file():
        parser.error(f"{snakemake}: no snakemake beside this Python; run with the environment's Python (.venv/bin)")

    load_before = os.getloadavg()[0]
    cores = os.cpu_count() or 1
    print(f"load average at start: {load_before:.2f} ({cores} CPUs); config {config}", flush=True)
    busy0, cpu0 = machine_busy_s(), children_cpu_s()
    step_s = calibrate(config, args.calib_steps)
    print(f"calibration: one training step of the config's U-Net takes {step_s:.4f} s (pinned, 1 thread)", flush=True)

    figures: dict[str, dict] = {}
    for part in args.parts:
        if part == "demo":
            if args.scratch:
                args.scratch.mkdir(parents=True, exist_ok=True)
            workdir = Path(tempfile.mkdtemp(prefix="ccfv-bench-guards-", dir=args.scratch))
            try:
                # the targets first: --configfile takes every word after it
                figures[part] = measure(part, [str(snakemake), *args.targets, "-s", str(ROOT / "Snakefile"),
                                               "--cores", str(args.cores), "--configfile", str(config)], workdir)
            finally:
                if args.keep:
                    print(f"demo: kept {workdir}", flush=True)
                else:
                    shutil.rmtree(workdir, ignore_errors=True)
        else:
            figures[part] = measure(part, [sys.executable, "-m", "pytest", "-q", "-n", str(args.workers),
                                           *args.pytest_args], ROOT)
    busy1, cpu1 = machine_busy_s(), children_cpu_s()
    others = None if busy0 is None else max(0.0, (busy1 - busy0) - (cpu1 - cpu0))
    print(f"load average at end: {os.getloadavg()[0]:.2f}; other processes took "
          f"{'unknown' if others is None else f'{others:.1f}'} CPU-seconds meanwhile", flush=True)

    line = [f"calib_step_s={step_s:.5f}"]
    for part, f in figures.items():
        guard = GUARDS[part]
        usable = min(cores, args.cores if part == "demo" else args.workers)
        line += [f"{part}_wall_s={f['wall_s']:.1f}", f"{part}_cpu_s={f['cpu_s']:.1f}",
                 f"{part}_min_wall_s={f['cpu_s'] / usable:.1f}", f"{part}_guard_s={guard}",
                 f"{part}_wall_over_guard={f['wall_s'] / guard:.3f}", f"{part}_cpu_in_steps={f['cpu_s'] / step_s:.0f}"]
    line += [f"others_cpu_s={'nan' if others is None else f'{others:.1f}'}", f"cores={cores}",
             f"load_before={load_before:.2f}"]
    print(" ".join(line), flush=True)


if __name__ == "__main__":
    main()
