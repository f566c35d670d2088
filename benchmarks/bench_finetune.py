"""Figures of the fine-tuning protocol (ccfv.finetune.protocol) on the real hippocampus target.

Needs the shared material (``--shared``, default ``$CCFV_SHARED``, else ``<repo>/../shared``):
models/brainchop/model18cls, models/hippodeep/hippodeep.pt and data/Task04_Hippocampus. The first ``--cases``
cases of Task04 (by name) are linked into an MSD folder under ``--work`` with a ``dataset.json`` listing only
them and an empty ``imagesTs/`` (the shared task has none, which ccfv's MSD validation asks for).

* speed (``--speed``): seconds per fine-tuning iteration (batch 2, the protocol's optimiser, loss and frozen
  batch norm; forward, backward, clipping and step; each iteration one call of ``train``, the network carried
  over) with ``--threads`` torch threads each, for ``--models`` among model18cls
  (MeshNet, patch 48 x 48 x 64), hippodeep (48 x 64 x 48) and a tiny bank U-Net (the demo's, config.yaml's
  ``network``: patch 16 x 32 x 32, built by the workflow's ``random_model`` on Task04 planned by nnU-Net),
  each on its own preprocessing of the cases: median over ``--speed-iterations`` iterations after one
  warm-up iteration.
* pilot (``--pilot``): ``ccfv finetune``'s machinery (:func:`ccfv.finetune.run.finetune_models`) on the
  cases, 80/20 split (seed 0), ``--iterations`` iterations with the largest ``--threads``, for each of
  ``--pilot-models`` (model18cls, hippodeep) and a random copy of each (seed 0): held-out Dice (mean over
  the two classes, on the label files' grid) and seconds per iteration.

The machine's load average (/proc/loadavg, 1 minute) is printed before and after. The last line is
``key=value`` pairs: ``load_before``, ``load_after``; with ``--speed`` ``<model>_s_per_iteration_<n>t`` for
every model and thread count; with ``--pilot`` ``<model>_dice`` and ``<model>_s_per_iteration`` per pilot
model (``model18cls``, ``model18cls-random0``, ``hippodeep``, ``hippodeep-random0``).

    .venv/bin/python benchmarks/bench_finetune.py [--shared PATH] [--cases 40] [--speed] [--threads 1 2]
        [--speed-iterations 5] [--models model18cls hippodeep unet] [--pilot] [--iterations 40]
        [--pilot-models model18cls hippodeep] [--work DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODELS = ("model18cls", "hippodeep", "unet")
PILOT_MODELS = ("model18cls", "hippodeep")


def loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def shared_root(value: str | None) -> Path:
    if value:
        return Path(value)
    return Path(os.environ["CCFV_SHARED"]) if os.environ.get("CCFV_SHARED") else ROOT.parent / "shared"


def subset_task(task04: Path, work: Path, cases: int) -> Path:
    """An MSD folder with the first ``cases`` training cases of ``task04`` (symbolic links), a
    ``dataset.json`` listing them and an empty ``imagesTs/``."""
    dataset = json.loads((task04 / "dataset.json").read_text())
    entries = sorted(dataset["training"], key=lambda e: e["image"])[:cases]
    folder = work / "msd" / "Task04_Hippocampus"
    if folder.exists():
        shutil.rmtree(folder)
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (folder / sub).mkdir(parents=True)
    for entry in entries:
        for key in ("image", "label"):
            name = entry[key].lstrip("./")
            (folder / name).symlink_to((task04 / name).resolve())
    (folder / "dataset.json").write_text(json.dumps({**dataset, "training": entries, "numTraining": len(entries),
                                                     "test": [], "numTest": 0}, indent=1))
    return folder


def bank_unet(task: Path, work: Path) -> Path:
    """The demo's U-Net (config/config.yaml ``network``) as a randomly initialised bank member, built as the
    workflow builds one: the task converted and planned by nnU-Net with the shared network."""
    import yaml

    from ccfv.bank.training import random_model
    from ccfv.preprocess.nnunet import convert_msd_task, plan_and_preprocess

    network = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())["network"]
    raw = convert_msd_task(task, work / "raw")
    preprocessed = plan_and_preprocess(raw, work / "preprocessed", network)
    return random_model(preprocessed, "unet-random", work / "bank" / "unet-random", seed=0)


def load(name: str, shared: Path, work: Path, task: Path):
    from ccfv.models import load_model

    if name == "model18cls":
        return load_model(name, shared / "models" / "brainchop" / "model18cls")
    if name == "hippodeep":
        return load_model(name, shared / "models" / "hippodeep" / "hippodeep.pt")
    return load_model("unet", bank_unet(task, work))


def speed(models: list[str], threads: list[int], iterations: int, shared: Path, work: Path, task: Path) -> dict:
    import copy

    import torch

    from ccfv.finetune.protocol import FinetuneProtocol, PatchSampler, replace_head, train
    from ccfv.models.preprocessing import Preprocessor
    from ccfv.preprocess.dataset import open_dataset

    dataset = open_dataset(task, work / "dataset")
    preprocessor = Preprocessor(dataset, work / "cases")
    cases = list(dataset.cases)[:8]
    figures = {}
    for name in models:
        model = load(name, shared, work, task)
        data = [(image, seg) for _, image, seg in preprocessor.cases(model, cases)]
        for n in threads:
            torch.set_num_threads(n)
            times = []
            network = copy.deepcopy(model.network)
            head = replace_head(network, model.details["head"], 1 + len(dataset.class_ids), "zero", 0)
            for i in range(iterations + 1):
                protocol = FinetuneProtocol(iterations=1, checkpoint_every=10**6)
                sampler = PatchSampler(data, dataset.class_ids, model.patch_size, protocol, seed=i)
                checkpoint = work / f"speed-{name}.pth"
                checkpoint.unlink(missing_ok=True)
                began = time.perf_counter()
                train(network, head, sampler, protocol, 0, checkpoint, {"i": i}, torch.device("cpu"))
                times.append(time.perf_counter() - began)
            seconds = statistics.median(times[1:])
            figures[f"{name}_s_per_iteration_{n}t"] = seconds
            print(f"{name}: patch {model.patch_size}, {n} thread(s): {seconds:.3f} s per iteration "
                  f"(median of {iterations}, load {loadavg():.2f})", flush=True)
    return figures


def pilot(names: list[str], iterations: int, threads: int, shared: Path, work: Path, task: Path) -> dict:
    import torch

    from ccfv.finetune.protocol import FinetuneProtocol
    from ccfv.finetune.run import finetune_models
    from ccfv.models import TorchModel, load_model, random_copy

    torch.set_num_threads(threads)
    paths = {"model18cls": shared / "models" / "brainchop" / "model18cls",
             "hippodeep": shared / "models" / "hippodeep" / "hippodeep.pt"}
    specs = [f"{name}={paths[name]}" for name in names]
    specs += [TorchModel.from_loaded(random_copy(load_model(name, paths[name]), seed=0)) for name in names]
    run = finetune_models(task, specs, work / "pilot", seed=0, protocol=FinetuneProtocol(iterations=iterations),
                          device="cpu", threads=threads)
    figures = {}
    for row in run.rows:
        per_class = {k: round(v, 3) for k, v in row["per_class"].items()}
        print(f"{row['model']}: held-out Dice {row['mean_dice']:.3f} {per_class} ({row['space']} space), loss "
              f"{row['losses'][0]:.3f} -> {statistics.mean(row['losses'][-5:]):.3f}, "
              f"{row['seconds_per_iteration']:.2f} s per iteration, load {loadavg():.2f}", flush=True)
        figures[f"{row['model']}_dice"] = row["mean_dice"]
        figures[f"{row['model']}_s_per_iteration"] = row["seconds_per_iteration"]
    for failure in run.failed:
        print(f"{failure['model']}: failed: {failure['error']}", file=sys.stderr)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shared", default=None)
    parser.add_argument("--cases", type=int, default=40)
    parser.add_argument("--speed", action="store_true")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--speed-iterations", type=int, default=5)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--pilot", action="store_true")
    parser.add_argument("--pilot-models", nargs="+", default=list(PILOT_MODELS), choices=PILOT_MODELS)
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    args = parser.parse_args(argv)
    shared = shared_root(args.shared)
    task04 = shared / "data" / "Task04_Hippocampus"
    needed = [task04, shared / "models" / "brainchop" / "model18cls", shared / "models" / "hippodeep" / "hippodeep.pt"]
    missing = [p for p in needed if not p.exists()]
    if missing:
        print(f"bench_finetune: {missing[0]}: missing (--shared or CCFV_SHARED names the folder holding models/ "
              "and data/)", file=sys.stderr)
        return 2
    if not (args.speed or args.pilot):
        print("bench_finetune: nothing to do: give --speed and/or --pilot", file=sys.stderr)
        return 2
    scratch = args.work or Path(tempfile.mkdtemp(prefix="ccfv-bench-finetune-"))
    scratch.mkdir(parents=True, exist_ok=True)
    figures = {"load_before": loadavg()}
    print(f"load average before: {figures['load_before']:.2f}", flush=True)
    try:
        task = subset_task(task04, scratch, args.cases)
        if args.speed:
            figures.update(speed(args.models, args.threads, args.speed_iterations, shared, scratch, task))
        if args.pilot:
            figures.update(pilot(args.pilot_models, args.iterations, max(args.threads), shared, scratch, task))
    finally:
        if args.work is None:
            shutil.rmtree(scratch, ignore_errors=True)
    figures["load_after"] = loadavg()
    print(f"load average after: {figures['load_after']:.2f}")
    print(" ".join(f"{k}={v:.3f}" if v >= 0.1 or v != v else f"{k}={v:.5f}" for k, v in figures.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
