"""The GPU check: does the pipeline run on this machine's GPU, and what does it cost there? At most about 5
minutes on one GPU (``--time-limit``); one figure per line, ``name=value`` (docs/models.md, "The GPU check").

Steps, in order, each printing its figures as soon as they are measured:

1. ``device``: the GPU (name, memory), torch and its CUDA.
2. ``sample``: decoder-feature sampling seconds per window (``ccfv.features.sampler.sample_case``) at the
   config's patch (config/msd.yaml: 128^3) for each of its architectures (U-Net, UNETR), random weights built
   as the workflow builds them (``bench_msd_scale.architecture_entry``): a random case of 1.5 patches per
   axis, i.e. 2 x 2 x 2 windows, one chosen voxel in each window's cell so that all 8 run, in batches of the
   config's ``sampling.batch_size``; the mean of the batches after the first / batch size.
3. ``step``: one fine-tuning iteration at the config's patch and batch size, the networks alone
   (``bench_training.iterations_per_second``: forward, nnU-Net's Dice + CE with deep supervision for the
   U-Net, backward, gradient clipping, SGD step), 1 warm-up then ``--iterations`` timed.
4. ``prepare`` (CPU): a synthetic task (``ccfv.data.synthetic``, ``--cases`` cases) converted, planned and
   preprocessed by nnU-Net with the config's U-Net (``ccfv.preprocess.nnunet``); skipped when ``--work``
   already holds one (``raw/``, ``preprocessed/``, ``split.json``).
5. ``rank``: ``ccfv rank`` (``ccfv.cli.main``, in this process: torch already imported) on the task's raw
   dataset (``--max-cases 4``; tiny: 2) with two bank models (``random_model`` on the task's plans, seeds 0
   and 1), every metric, on the device. Its wall time includes nnU-Net's planning of the data for the
   models (a fingerprint in a pool of spawned processes), which dominates it on the CPU.
6. ``trainer``: the workflow's own fine-tuning path, ``ccfv.bank.training.train`` (nnU-Net's trainer with
   ccfv's budget, split and zero heads, started from a bank model: ``random_model`` on the task's plans), for
   ``--trainer-iterations`` iterations. nnU-Net compiles the network on a GPU (``torch.compile``): the
   first iterations hold the compilation. Figures: the median seconds of nnU-Net's ``train_step`` (data on
   the device, forward, loss, backward, step) after the first two, the first one's seconds, and the wall
   seconds per iteration of the whole epoch (data loading and augmentation included, in-process as the
   workflow runs them: ``nnUNet_n_proc_DA=0``).
   It runs last: on a first run nnU-Net's compilation can take minutes, and a time-out then costs only it.

Then ``peak_gpu_memory_gib`` (``torch.cuda.max_memory_allocated`` over the whole run, this process: steps
2, 3, 5 and 6), ``peak_rss_gib`` and ``total_s``. A step that fails is named with its traceback on stderr and
the steps that do not need it still run (5 and 6 need 4). The last line is ``gpu_check=ok``, or
``gpu_check=failed step=<step>[,<step>...]`` (exit status 1), or ``gpu_check=timeout step=<step>`` after
``--time-limit`` seconds (exit status 1); the figures measured so far are printed either way.

Without a GPU (``torch.cuda.is_available()`` false) the check prints ``gpu_check: no GPU ...`` on stderr and
exits with status 77 (the "skipped" status of automake's test harness): nothing was checked, nothing failed.
``--allow-cpu`` runs it on the CPU instead, and ``--tiny`` at tiny sizes (a three-stage U-Net and a tiny UNETR
at 16^3, 32 x 32 x 16 cases, 4 trainer iterations, ``ccfv rank`` on 2 cases), so that the test suite runs
every step and this script cannot rot:

    .venv/bin/python benchmarks/gpu_check.py [--config config/msd.yaml] [--work DIR] [--time-limit 300]
    .venv/bin/python benchmarks/gpu_check.py --allow-cpu --tiny      # every step, tiny, on the CPU
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCHMARKS))

#: Exit status when there is no GPU and --allow-cpu is not given: automake's "skipped".
EXIT_NO_GPU = 77
GIB = 2.0**30
TASK = "Task94_SynthSpleen"
#: --tiny: the test suite's network (tests/test_benchmarks.py) and a small UNETR; patch 16^3 (UNETR's ViT patch).
TINY_NETWORK = {"patch_size": [16, 16, 16], "batch_size": 2, "features_per_stage": [2, 4, 8],
                "kernel_sizes": [[3, 3, 3]] * 3, "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2]],
                "n_conv_per_stage": [1, 1, 1], "n_conv_per_stage_decoder": [1, 1]}
TINY_UNETR = {"hidden_size": 16, "mlp_dim": 32, "num_heads": 2, "feature_size": 2}


class Timeout(BaseException):  # not an Exception: library code catching those must not swallow it
    pass


def emit(name: str, value) -> None:
    """One figure, one line: ``name=value`` (floats with 4 significant digits)."""
    if isinstance(value, float):
        value = f"{value:.4g}"
    print(f"{name}={value}", flush=True)


def synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def step_device(device) -> None:
    import torch

    emit("mode", "gpu" if device.type == "cuda" else "cpu")
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        emit("device", torch.cuda.get_device_name(device))
        emit("gpu_memory_gib", props.total_memory / GIB)
        emit("cuda", torch.version.cuda)
    else:
        from bench_msd_scale import machine

        emit("device", machine())
    emit("torch", torch.__version__)


def step_sample(config: dict, device) -> None:
    """Seconds per window of sample_case at the config's patch, per architecture."""
    import numpy as np
    import torch
    from bench_msd_scale import SOURCE_CLASSES, architecture_entry, architectures

    from ccfv.bank import networks
    from ccfv.features.budget import window_cells
    from ccfv.features.file import GLOBAL_KEY
    from ccfv.features.sampler import sample_case
    from ccfv.features.settings import layer_ratios_for

    patch = [int(p) for p in config["network"]["patch_size"]]
    shape = [p + p // 2 for p in patch]  # step 0.5: two windows per axis
    step, batch = float(config["sampling"]["step_size"]), int(config["sampling"]["batch_size"])
    image = np.random.default_rng(0).normal(size=(1, *shape)).astype(np.float32)
    cells = window_cells(shape, patch, step)
    centres = np.array([[(s.start + s.stop) // 2 for s in cells.box(w)] for w in range(cells.n_windows)])
    for arch in architectures(config):
        torch.manual_seed(0)
        net = networks.build(arch, architecture_entry(config, arch), 1, SOURCE_CLASSES).to(device).eval()
        layers = networks.decoder_layers(net)
        ratios = layer_ratios_for(config["sampling"]["layer_ratios"], arch, len(layers))
        stamps: list[float] = []

        def progress(done, total):
            synchronize(device)
            stamps.append(time.perf_counter())

        start = time.perf_counter()
        samples = sample_case(net, layers, image, {GLOBAL_KEY: centres}, patch_size=patch, step_size=step,
                              batch_size=batch, layer_ratios=ratios, device=device, probs_keys=[GLOBAL_KEY],
                              progress=progress)
        deltas = [stamps[0] - start] + [b - a for a, b in zip(stamps, stamps[1:])]
        steady = statistics.fmean(deltas[1:]) if len(deltas) > 1 else deltas[0]
        emit(f"sample_{arch}_windows", samples.windows_run)
        emit(f"sample_{arch}_s_per_window", steady / batch)
        emit(f"sample_{arch}_first_batch_s", deltas[0])
        del net


def step_train_step(config: dict, device, iterations: int) -> None:
    """One fine-tuning iteration of the networks alone at the config's patch and batch size."""
    from bench_msd_scale import architecture_entry, architectures
    from bench_training import iterations_per_second

    for arch in architectures(config):
        rate = iterations_per_second(arch, architecture_entry(config, arch), config["network"], device, iterations)
        emit(f"step_{arch}_s_per_it", 1.0 / rate)
    emit("step_patch", "x".join(map(str, config["network"]["patch_size"])))
    emit("step_batch", int(config["network"]["batch_size"]))


def step_prepare(config: dict, work: Path, cases: int, shape: list[int]) -> dict:
    """The synthetic task in nnU-Net raw and preprocessed form, with a split (reused when present)."""
    from ccfv.data.synthetic import write_task
    from ccfv.preprocess.nnunet import case_identifiers, convert_msd_task, plan_and_preprocess
    from ccfv.preprocess.paths import dataset_name
    from ccfv.preprocess.splits import make_split, write_split

    name = dataset_name(TASK)
    paths = {"raw": work / "raw" / name, "preprocessed": work / "preprocessed" / name, "split": work / "split.json"}
    if all(p.exists() for p in paths.values()):
        emit("prepare", "reused")
        return paths
    start = time.perf_counter()
    task = write_task(TASK, work / "msd", n_cases=cases, seed=0, shape=shape, overwrite=True)
    raw = convert_msd_task(task, work / "raw")
    preprocessed = plan_and_preprocess(raw, work / "preprocessed", config["network"])
    write_split(make_split(case_identifiers(preprocessed), 0.25, seed=0), paths["split"])
    emit("prepare_s", time.perf_counter() - start)
    return {"raw": raw, "preprocessed": preprocessed, "split": paths["split"]}


def step_trainer(paths: dict, work: Path, device, iterations: int) -> None:
    """ccfv.bank.training.train from a bank model, with nnU-Net's train_step timed."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from ccfv.bank.training import TrainingBudget, random_model, train

    init = random_model(paths["preprocessed"], "unet-random", work / "bank" / "unet-random", seed=0)
    budget = TrainingBudget(iterations=iterations, iterations_per_epoch=iterations, val_iterations_per_epoch=1,
                            head_init="zero")
    seconds: list[float] = []
    original = nnUNetTrainer.train_step

    def timed(self, batch):
        synchronize(device)
        start = time.perf_counter()
        result = original(self, batch)
        synchronize(device)
        seconds.append(time.perf_counter() - start)
        return result

    nnUNetTrainer.train_step = timed  # measurement only, restored below
    try:
        trainer = train(paths["preprocessed"], paths["split"], work / "finetune", budget, seed=0, init_model=init,
                        device=device.type)
    finally:
        nnUNetTrainer.train_step = original
    epoch = (trainer.logger.get_value("epoch_end_timestamps", step=-1)
             - trainer.logger.get_value("epoch_start_timestamps", step=-1))
    emit("trainer_iterations", len(seconds))
    emit("trainer_compiled", int(trainer._do_i_compile()))
    emit("trainer_first_step_s", seconds[0])
    emit("trainer_s_per_it", statistics.median(seconds[2:] if len(seconds) > 2 else seconds))
    emit("trainer_epoch_s_per_it", epoch / iterations)
    emit("trainer_patch", "x".join(map(str, trainer.configuration_manager.patch_size)))


def step_rank(paths: dict, work: Path, device, max_cases: int | None) -> None:
    """``ccfv rank`` with two bank models on the task's raw dataset (every metric)."""
    from ccfv.bank.training import random_model
    from ccfv.cli import main as ccfv_main

    models = [random_model(paths["preprocessed"], f"unet-random{s}", work / "bank" / f"unet-random{s}", seed=s)
              for s in (0, 1)]
    argv = ["rank", "--data", str(paths["raw"]), "--out", str(work / "rank"), "--device", device.type,
            "--metric", "all", "--threads", "1"] + (["--max-cases", str(max_cases)] if max_cases else [])
    for model in models:
        argv += ["--model", str(model)]
    start = time.perf_counter()
    status = ccfv_main(argv)
    emit("rank_wall_s", time.perf_counter() - start)
    emit("rank_models", len(models))
    emit("rank_exit_status", status)
    if status != 0:
        raise RuntimeError(f"ccfv rank exited with status {status}")


def tiny_config(config: dict) -> dict:
    """The config with the tiny networks, and one layer ratio per hooked stage of each (2 and 4)."""
    sampling = {**config["sampling"], "layer_ratios": {"unet": [0.5, 1.0], "unetr": [0.125, 0.25, 0.5, 1.0]}}
    return {**config, "network": TINY_NETWORK, "unetr": TINY_UNETR, "sampling": sampling}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=ROOT / "config" / "msd.yaml",
                        help="networks, patch, batch and sampling settings (default config/msd.yaml)")
    parser.add_argument("--allow-cpu", action="store_true", help="run on the CPU when there is no GPU")
    parser.add_argument("--tiny", action="store_true", help="tiny network and data: every step in seconds")
    parser.add_argument("--work", type=Path, help="scratch folder (default: a temporary one, removed at the end); "
                        "a prepared task found there is reused")
    parser.add_argument("--time-limit", type=int, default=300, help="seconds before the check stops (default 300)")
    parser.add_argument("--iterations", type=int, help="timed iterations of the step figure (default 3; tiny 1)")
    parser.add_argument("--trainer-iterations", type=int, help="iterations through the trainer (default 20; tiny 4)")
    parser.add_argument("--cases", type=int, default=8, help="cases of the synthetic task (default 8)")
    args = parser.parse_args(argv)
    if not args.config.is_file():
        parser.error(f"--config {args.config}: no such file")
    if args.time_limit < 1 or args.cases < 4:
        parser.error("--time-limit must be at least 1 and --cases at least 4")

    import torch

    if not torch.cuda.is_available() and not args.allow_cpu:
        print(f"gpu_check: no GPU: torch {torch.__version__} (CUDA {torch.version.cuda}) sees no CUDA device "
              f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}); nothing was checked. "
              "--allow-cpu runs the check on the CPU.", file=sys.stderr)
        return EXIT_NO_GPU
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.set_num_threads(1 if args.tiny else max(1, torch.get_num_threads()))
    config = yaml.safe_load(args.config.read_text())
    if args.tiny:
        config = tiny_config(config)
    iterations = args.iterations or (1 if args.tiny else 3)
    trainer_iterations = args.trainer_iterations or (4 if args.tiny else 20)
    if iterations < 1 or trainer_iterations < 3:
        parser.error("--iterations must be at least 1 and --trainer-iterations at least 3")
    shape = [32, 32, 16] if args.tiny else [48, 48, 24]  # (x, y, z) of the synthetic cases

    work = args.work or Path(tempfile.mkdtemp(prefix="ccfv-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGALRM, _raise_timeout)
    signal.alarm(args.time_limit)
    start = time.perf_counter()
    failed: list[str] = []
    prepared: dict = {}
    steps = [
        ("device", lambda: step_device(device)),
        ("sample", lambda: step_sample(config, device)),
        ("step", lambda: step_train_step(config, device, iterations)),
        ("prepare", lambda: prepared.update(step_prepare(config, work, args.cases, shape))),
        # ccfv rank before the trainer: nnU-Net's torch.compile of the network can take minutes on a first run
        ("rank", lambda: step_rank(prepared, work, device, max_cases=2 if args.tiny else 4)),
        ("trainer", lambda: step_trainer(prepared, work, device, trainer_iterations)),
    ]
    outcome = None
    try:
        for name, run in steps:
            if name in ("trainer", "rank") and not prepared:
                print(f"gpu_check: step {name} skipped: it needs the prepared task", file=sys.stderr)
                failed.append(name)
                continue
            try:
                run()
            except Timeout:
                outcome = f"timeout step={name}"
                break
            except Exception as err:  # name the step, show the error, go on with the steps that do not need it
                import traceback

                traceback.print_exc()
                print(f"gpu_check: step {name} failed: {type(err).__name__}: {err}", file=sys.stderr)
                failed.append(name)
            if time.perf_counter() - start > args.time_limit:
                # the alarm can be swallowed by a library's bare ``except:`` (nnU-Net's worker pools): the clock decides
                outcome = f"timeout step={name}"
                break
    finally:
        signal.alarm(0)
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    if outcome is None:
        outcome = f"failed step={','.join(failed)}" if failed else "ok"
    if device.type == "cuda":
        emit("peak_gpu_memory_gib", torch.cuda.max_memory_allocated(device) / GIB)
    emit("peak_rss_gib", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB)
    emit("total_s", time.perf_counter() - start)
    print(f"gpu_check={outcome}", flush=True)
    return 0 if outcome == "ok" else 1


def _raise_timeout(signum, frame):
    raise Timeout()


if __name__ == "__main__":  # nnU-Net's preprocessing starts "spawn" workers, which import this file again
    sys.exit(main())
