"""Cost at paper scale: config/msd.yaml's networks and budgets on this machine, and what the full MSD
benchmark's transferability estimation costs against its fine-tuning.

Every measured piece runs in a fresh child process (this script with ``--child PIECE``), so that its peak
resident memory (the child's ``VmHWM``, read from /proc/self/status at its end: the high-water mark of its
own address space, which starts afresh at exec) is its own; this process never imports torch. Networks
have random weights and are built with the project's own code, as the workflow builds them: the U-Net
with ``ccfv.bank.networks.build`` from the plans' architecture entry that ``ccfv.preprocess.nnunet.shared_plans``
writes for the config's ``network:`` section (the entry is ``bench_training.unet_architecture``), UNETR
from the ``unetr:`` section with ``ccfv.bank.networks.unetr_architecture`` (``img_size`` = the patch size).

Pieces, per architecture of the config's ``architectures:``:

* ``sample-<arch>``: decoder-feature sampling of one CT-sized case (``--shape``, default 192 x 256 x 256
  voxels in nnU-Net's (z, y, x) order after resampling; a seeded noise image and bench_sampling.py's two
  nested ellipsoids scaled to it, i.e. an organ and a lesion, as int16 labels). ``choose_voxels`` with the
  config's budgets on the whole case (timed), then ``sample_case`` (every hooked decoder stage, the
  architecture's ``sampling.layer_ratios``, step and batch size) on the voxels owned by the first
  ``--batches`` window batches of the case's tiling, so that exactly those batches run (``--batches 0``:
  the whole case). Per-batch times come from ``sample_case``'s progress callback. Seconds per window =
  the mean of the batches after the first (the first holds the set-up and the backend's warm-up) / batch
  size. A whole case, when not run whole, is EXTRAPOLATED: measured part + (batches of the whole case -
  measured batches) x that steady batch time + ``choose_voxels``. Peak memory: the child's VmHWM (the
  whole volume is in memory; every batch has the same shape), plus, when extrapolated, the buffers that
  grow with the voxels of the rest of the case (each hooked stage's and the output's float32 values and
  their ~128 bytes of index and weight per voxel), which the output states.
  Then, in the same child on the warmed-up network, the same case with the window budget (``--window-budget
  B``, default the config's ``sampling.window_budget``, else 2): ``ccfv.features.budget.choose_voxels_in_windows``
  (timed) draws every voxel key inside at most B windows, and the windows that own a chosen voxel (at most
  B for global and background plus min(B, the class's windows) per class) all run: MEASURED whole, never
  extrapolated. Its seconds per case are compared with the full pass's at the same warm speed,
  ``choose_voxels`` + every batch of the case x the steady batch time (a sampling job pays the first batch's
  set-up once, not per case); ``budget_time_ratio`` is that ratio over the bank (means as ``s_per_case``).
  The full pass always draws without a budget, whatever the config says.
* ``train-<arch>``: seconds per fine-tuning iteration (``bench_training.iterations_per_second``: forward,
  nnU-Net's Dice + CE with deep supervision for the U-Net, backward, clipping, SGD) at ``--train-patch`` x
  the config's batch size, 1 warm-up then ``--train-iterations`` timed. At a patch smaller than the
  config's (default: half of it on every axis, 64^3 for 128^3), the time is EXTRAPOLATED linearly in
  voxels to the config's patch (exact for the U-Net's convolutions; for UNETR the ViT's attention, which
  grows with the square of the token count, is a small share at 512 tokens). The output says which.
* ``score-<arch>``: every metric of ``--metrics`` (default: the config's Table 1 metrics except
  ``ccfv_released``, whose per-pair sqrtm bench_scoring.py times) on synthetic features of ``--cases``
  cases with the shapes sampling gives: per case the class, global and background counts of
  ``choose_voxels`` on the CT-sized labels, per hooked stage ``layer_sample_count`` rows of its real
  channel count (``ccfv.bank.networks.decoder_stages``), and K = 3 source-class probabilities. Each metric is
  called as ``ccfv.scores.scoring`` calls it (``check_metric``'s options from the config, the same inputs).
  Values are Gaussian with a mean per class; the time of the W2, QR and SVD steps does not depend on
  them. The time ``ccfv_score`` spends in ``class_consistency`` (paper eq. 2) is measured by wrapping
  that module function.

Projection for the full benchmark of the config: 5 targets (``tasks:``), each with its bank (per
architecture one model per other task, its ``pretrain.snapshots``, and a random model: 10 per target in
config/msd.yaml). Cases per target: the training split (``split.test_fraction``, ``ccfv.preprocess.splits``' rule)
of the task's ``numTraining`` in the Medical Segmentation Decathlon (``MSD_TRAINING_CASES``; ``--train-cases``
for other tasks), every case assumed of ``--shape``. Estimation = per (target, model) the cases x seconds
per case of the model's architecture, plus its CC-FV score (the ``ccfv`` metric) scaled from ``--cases``
cases: class consistency by the number of case pairs, the rest linearly. Fine-tuning = per (target, model)
``finetune.iterations`` (or its ``per_task`` override) x seeds x seconds per iteration. Pretraining is
left out of both (it is the bank, not the estimation).

``--config`` replaces config/msd.yaml (the test suite's smoke test gives a tiny network and ``--shape 24
24 24 --cases 4``); ``--device cuda`` runs the networks and the class consistency (torch backend) on a GPU
and adds its peak allocated memory; only CPU figures have been measured so far (docs/models.md).

The last line printed is ``s_per_case=<x> peak_rss_gib=<y> te_over_finetune=<z> budget_time_ratio=<r>`` (6
significant digits): x = seconds to sample one case with one bank model without a window budget, the mean
over the bank's members (with msd.yaml's 5 U-Nets and 5 UNETRs per target, the mean of the two
architectures); y = the largest peak resident memory of sampling one whole case over the architectures
(GiB, 2^30 bytes); z = estimation over fine-tuning of the full benchmark without a budget (the report
prints it with the budget too); r = the bank's mean seconds per case with the window budget over x, both
measured in this run.

    nice -n 5 .venv/bin/python benchmarks/bench_msd_scale.py [--config config/msd.yaml] [--shape 192 256 256]
        [--batches 2] [--train-patch 64 64 64] [--train-iterations 1] [--cases 100] [--threads 1]
        [--device cpu|cuda] [--metrics logme ...] [--train-cases N] [--window-budget B] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCHMARKS))

DEFAULT_SHAPE = (192, 256, 256)
#: Training cases of the paper's five tasks: ``numTraining`` of each task's dataset.json in the Medical
#: Segmentation Decathlon (Antonelli et al., Nat. Commun. 2022, Table 1).
MSD_TRAINING_CASES = {"Task03_Liver": 131, "Task06_Lung": 63, "Task07_Pancreas": 281, "Task09_Spleen": 41,
                      "Task10_Colon": 126}
#: Not timed by default: the released arithmetic's per-pair sqrtm (benchmarks/bench_scoring.py times it).
UNTIMED_BY_DEFAULT = ("ccfv_released",)
#: Output classes of the synthetic source model (background, organ, lesion), and of the target labels.
SOURCE_CLASSES = 3
CLASS_IDS = (1, 2)
SEED = 0
#: Index and weight bytes per voxel and hooked output in ``sample_case`` (slot 8, local 3 x 8, trilinear
#: corner indices 8 x 8 and weights 8 x 4): the memory that grows with a case's voxels besides the values.
INDEX_BYTES_PER_VOXEL = 8 + 24 + 64 + 32
GIB = 2.0**30
#: The window budget measured when neither --window-budget nor the config's sampling.window_budget gives one.
DEFAULT_WINDOW_BUDGET = 2


# --------------------------------------------------------------------------------------------------
# Configuration (both processes)
# --------------------------------------------------------------------------------------------------

def load_config(path: Path) -> dict:
    try:
        config = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as err:
        raise SystemExit(f"bench_msd_scale: {path}: cannot read the config ({err})") from None
    missing = [k for k in ("tasks", "network", "sampling", "finetune", "scoring", "split")
               if not isinstance(config, dict) or k not in config]
    if missing:
        raise SystemExit(f"bench_msd_scale: {path}: no {', '.join(missing)} section(s)")
    return config


def architectures(config: dict) -> list[str]:
    return list(config.get("architectures", ["unet"]))


def architecture_entry(config: dict, arch: str, patch: list[int] | None = None) -> dict:
    """The architecture entry the workflow builds ``arch`` from (at ``patch``, default the config's)."""
    from ccfv.bank import networks

    network = dict(config["network"], patch_size=list(patch or config["network"]["patch_size"]))
    if arch == networks.UNET:
        from bench_training import unet_architecture

        return unet_architecture(network)
    return networks.unetr_architecture(network["patch_size"], config.get("unetr"))


def budgets(config: dict) -> dict[str, int]:
    return {k: int(config["sampling"][k]) for k in ("total", "minimum", "n_global", "n_background")}


def default_train_patch(config: dict) -> list[int]:
    """Half the patch on every axis, rounded up to what both architectures accept (UNETR: a multiple of
    16; the U-Net: of the product of its strides), capped at the patch."""
    patch = [int(p) for p in config["network"]["patch_size"]]
    out = []
    for axis, p in enumerate(patch):
        multiple = math.prod(int(s[axis]) for s in config["network"]["strides"])
        if "unetr" in architectures(config):
            multiple = math.lcm(multiple, 16)
        out.append(min(p, math.ceil(p / 2 / multiple) * multiple))
    return out


def check_train_patch(config: dict, patch: list[int]) -> str | None:
    for axis, p in enumerate(patch):
        multiple = math.prod(int(s[axis]) for s in config["network"]["strides"])
        if p < 1 or p % multiple:
            return f"--train-patch {patch}: axis {axis} must be a positive multiple of the strides' product {multiple}"
        if "unetr" in architectures(config) and p % 16:
            return f"--train-patch {patch}: UNETR needs a multiple of 16 on every axis"
    return None


# --------------------------------------------------------------------------------------------------
# Children: one measured piece each
# --------------------------------------------------------------------------------------------------

def proc_status_gib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024 / GIB  # kB
    return float("nan")


def case_volume(shape: tuple[int, int, int]):
    """(image float32 [1, z, y, x], labels int16 [z, y, x]) of the synthetic CT-sized case."""
    from bench_sampling import make_image, make_seg

    return make_image(shape), make_seg(shape)


def child_sample(config: dict, arch: str, args) -> dict:
    """One case sampled by ``arch``: the full pass (the first ``--batches`` batches run, the rest
    extrapolated), then, in the same process and warmed up, the window budget's pass (the whole case)."""
    import numpy as np
    import torch

    from ccfv.bank import networks
    from ccfv.features.budget import choose_voxels_in_windows
    from ccfv.features.file import BACKGROUND_KEY, class_key
    from ccfv.features.sampler import case_rng, sample_case
    from ccfv.features.settings import layer_ratios_for
    from ccfv.features.voxels import choose_voxels, layer_sample_count
    from ccfv.features.windows import assign_windows, pad_to_patch, window_starts

    device = torch.device(args.device)
    torch.manual_seed(SEED)
    net = networks.build(arch, architecture_entry(config, arch), 1, SOURCE_CLASSES).to(device).eval()
    layers = networks.decoder_layers(net)
    s = config["sampling"]
    ratios = layer_ratios_for(s["layer_ratios"], arch, len(layers))
    patch = [int(p) for p in config["network"]["patch_size"]]
    step, batch = float(s["step_size"]), int(s["batch_size"])
    image, seg = case_volume(tuple(args.shape))

    # The windows of the whole case, in sample_case's rule (nnU-Net's tiling, one owner window per voxel).
    # (padding computed on a 1-byte proxy of the case, not on a copy of the image)
    padded, offset = pad_to_patch(np.zeros((1, *image.shape[1:]), dtype=np.uint8), patch)
    starts = window_starts(padded.shape[1:], patch, step)
    del padded
    steps = tuple(len(x) for x in starts)

    def owner(c):
        return np.ravel_multi_index(tuple(assign_windows(c + offset, starts, patch).T), steps)

    def run(coords, batches):
        """sample_case on the voxels owned by the first ``batches`` window batches (0: all):
        (samples, used windows, batches in the case, batches run, seconds, per-batch seconds)."""
        owners = {k: owner(v) for k, v in coords.items()}
        used = np.unique(np.concatenate(list(owners.values())))
        total_batches = math.ceil(len(used) / batch)
        run_batches = total_batches if batches == 0 else min(batches, total_batches)
        keep = used[: run_batches * batch]
        part = {k: v[np.isin(owners[k], keep)] for k, v in coords.items()}
        probs_keys = [k for k in [class_key(c) for c in CLASS_IDS] + [BACKGROUND_KEY] if len(part.get(k, ()))]
        stamps: list[float] = []

        def progress(done, total):
            if device.type == "cuda":
                torch.cuda.synchronize()
            stamps.append(time.perf_counter())

        start = time.perf_counter()
        samples = sample_case(net, layers, image, part, patch_size=patch, step_size=step, batch_size=batch,
                              layer_ratios=ratios, device=device, probs_keys=probs_keys, progress=progress)
        seconds = time.perf_counter() - start
        deltas = [stamps[0] - start] + [b - a for a, b in zip(stamps, stamps[1:])]
        return samples, used, total_batches, run_batches, part, seconds, deltas

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    coords = choose_voxels(seg, CLASS_IDS, rng=case_rng(int(s["seed"]), "bench_msd_case"), **budgets(config))
    t_choose = time.perf_counter() - start
    samples, used, total_batches, run_batches, part, t_sample, deltas = run(coords, args.batches)
    steady = sum(deltas[1:]) / (len(deltas) - 1) if len(deltas) > 1 else deltas[0]
    whole = run_batches == total_batches
    s_case = t_choose + t_sample + (total_batches - run_batches) * steady

    def grown_bytes(keys_coords) -> int:
        """Bytes of sample_case's per-voxel buffers for these coordinates."""
        n = {k: len(v) for k, v in keys_coords.items()}
        total = 0
        for ratio, channels in zip(ratios, samples.channels):
            rows = sum(layer_sample_count(n[k], ratio) for k in n)
            total += rows * (4 * channels + INDEX_BYTES_PER_VOXEL)
        rows = sum(n[k] for k in n if k != "global")
        return total + rows * (4 * samples.num_output_channels + INDEX_BYTES_PER_VOXEL)

    rest = 0 if whole else max(0, grown_bytes(coords) - grown_bytes(part))
    peak = proc_status_gib("VmHWM")
    gpu_peak = torch.cuda.max_memory_allocated() / GIB if device.type == "cuda" else None

    # The window budget's pass, on the warmed-up network: all of its windows run. Its per-case seconds are
    # compared with the full pass's at the same (warm) speed: choose_voxels + every batch at the steady
    # batch time, since a sampling job pays the first batch's set-up once, not per case.
    start = time.perf_counter()
    budgeted = choose_voxels_in_windows(seg, CLASS_IDS, window_budget=args.window_budget, patch_size=patch,
                                        step_size=step, rng=case_rng(int(s["seed"]), "bench_msd_case"),
                                        **budgets(config))
    t_choose_budget = time.perf_counter() - start
    b_samples, b_used, b_batches, _, _, t_budget, b_deltas = run(budgeted, 0)
    full_warm = t_choose + total_batches * steady
    return {
        "arch": arch, "layers": layers, "channels": samples.channels, "ratios": ratios,
        "voxels": {k: int(len(v)) for k, v in coords.items()},
        "windows_total": int(np.prod(steps)), "windows_used": int(len(used)), "batch_size": batch,
        "batches_total": total_batches, "batches_run": run_batches, "windows_run": samples.windows_run,
        "whole_case": whole, "t_choose": t_choose, "t_sample_part": t_sample, "batch_seconds": deltas,
        # a single batch may hold fewer windows than the batch size; later batches are always full
        "s_per_window": steady / (batch if run_batches > 1 else samples.windows_run), "s_per_case": s_case,
        "peak_rss_gib_measured": peak, "rest_of_case_gib": rest / GIB, "peak_rss_gib": peak + rest / GIB,
        "gpu_peak_gib": gpu_peak,
        "budget": {
            "window_budget": args.window_budget, "voxels": {k: int(len(v)) for k, v in budgeted.items()},
            "windows_run": b_samples.windows_run, "batches": b_batches, "t_choose": t_choose_budget,
            "t_sample": t_budget, "batch_seconds": b_deltas, "s_per_case": t_choose_budget + t_budget,
            "full_s_per_case_warm": full_warm, "time_ratio": (t_choose_budget + t_budget) / full_warm,
        },
    }


def child_train(config: dict, arch: str, args) -> dict:
    import torch
    from bench_training import iterations_per_second

    device = torch.device(args.device)
    patch = list(args.train_patch)
    network = dict(config["network"], patch_size=patch)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rate = iterations_per_second(arch, architecture_entry(config, arch, patch), network, device,
                                 args.train_iterations)
    factor = math.prod(config["network"]["patch_size"]) / math.prod(patch)
    return {
        "arch": arch, "train_patch": patch, "batch_size": int(config["network"]["batch_size"]),
        "iterations": args.train_iterations, "s_per_it_measured": 1.0 / rate, "voxel_factor": factor,
        "s_per_it": factor / rate, "extrapolated": factor != 1.0,
        "peak_rss_gib": proc_status_gib("VmHWM"),
        "gpu_peak_gib": torch.cuda.max_memory_allocated() / GIB if device.type == "cuda" else None,
    }


def synthetic_features(config: dict, arch: str, n_cases: int, shape):
    """(layers for ccfv_score, head features, labels, probs) shaped as sampling ``n_cases`` cases gives."""
    import numpy as np

    from ccfv.bank import networks
    from ccfv.features.file import BACKGROUND_KEY, GLOBAL_KEY, class_key
    from ccfv.features.sampler import case_rng
    from ccfv.features.settings import layer_ratios_for
    from ccfv.features.voxels import choose_voxels, labels_at, layer_sample_count

    _, seg = case_volume(shape)
    coords = choose_voxels(seg, CLASS_IDS, rng=case_rng(int(config["sampling"]["seed"]), "bench_msd_case"),
                           **budgets(config))
    labels = {k: labels_at(seg, v) for k, v in coords.items()}
    del seg
    stages = networks.decoder_stages(arch, architecture_entry(config, arch))
    channels = [c for _, c, _ in stages]
    ratios = layer_ratios_for(config["sampling"]["layer_ratios"], arch, len(stages))
    rng = np.random.default_rng(SEED)
    class_keys = [class_key(c) for c in CLASS_IDS if class_key(c) in coords]
    layers = []
    for ratio, width in zip(ratios, channels):
        means = {k: rng.normal(scale=2.0, size=width).astype(np.float32) for k in coords}
        cases, global_ = [], []
        for _ in range(n_cases):
            shift = rng.normal(scale=0.3, size=width).astype(np.float32)

            def draw(key):
                n = layer_sample_count(len(coords[key]), ratio)
                return rng.standard_normal((n, width), dtype=np.float32) + means[key] + shift

            cases.append({int(k.rsplit("_", 1)[1]): draw(k) for k in class_keys})
            global_.append(draw(GLOBAL_KEY))
        layers.append({"cases": cases, "global": global_})
    # The baselines' input, as ccfv.scores.views.head_samples builds it: the last stage's full-ratio rows
    # at the class and background voxels of every case.
    head_keys = class_keys + [BACKGROUND_KEY]
    features, head_labels, probs = [], [], []
    for index in range(n_cases):
        for key in head_keys:
            n = layer_sample_count(len(coords[key]), ratios[-1])
            if key in class_keys:
                features.append(layers[-1]["cases"][index][int(key.rsplit("_", 1)[1])])
            else:
                features.append(rng.standard_normal((n, channels[-1]), dtype=np.float32) + means[key])
            head_labels.append(labels[key][:n].astype(np.int64))
            logits = rng.normal(size=(n, SOURCE_CLASSES))
            logits[np.arange(n), head_labels[-1]] += 2.0
            p = np.exp(logits - logits.max(axis=1, keepdims=True))
            probs.append((p / p.sum(axis=1, keepdims=True)).astype(np.float32))
    head = (np.concatenate(features), np.concatenate(head_labels), np.concatenate(probs))
    return layers, head, channels, {k: int(len(v)) for k, v in coords.items()}


def child_score(config: dict, arch: str, args) -> dict:
    import numpy as np

    from ccfv.scores.metrics import ccfv as metrics  # the module whose ccfv_score calls class_consistency
    from ccfv.scores.scoring import METHODS, check_metric

    if args.threads:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=args.threads)
    layers, (features, labels, probs), channels, voxels = synthetic_features(config, arch, args.cases,
                                                                             tuple(args.shape))
    spent = {"class_consistency": 0.0}
    original = metrics.class_consistency

    def timed_class_consistency(*a, **k):
        start = time.perf_counter()
        try:
            return original(*a, **k)
        finally:
            spent["class_consistency"] += time.perf_counter() - start

    metrics.class_consistency = timed_class_consistency  # ccfv_score looks it up in the module
    seconds, values = {}, {}
    try:
        for name in args.metrics:
            method, options = check_metric(name, config["scoring"]["metrics"][name])
            if method in ("ccfv", "ccfv_released") and args.device != "cpu":
                options = {**options, "backend": "torch", "device": args.device}
            spent["class_consistency"] = 0.0
            start = time.perf_counter()
            if method in ("ccfv", "ccfv_released"):
                value = METHODS[method](layers, **options)
            elif method in ("leep", "nce"):
                value = METHODS[method](probs if method == "leep" else np.argmax(probs, axis=1), labels, **options)
            else:
                value = METHODS[method](features, labels, **options)
            seconds[name] = time.perf_counter() - start
            values[name] = float(value)
            if name == "ccfv":
                seconds["class_consistency"] = spent["class_consistency"]
    finally:
        metrics.class_consistency = original
    return {"arch": arch, "cases": args.cases, "channels": channels, "voxels": voxels,
            "head_rows": int(features.shape[0]), "seconds": seconds, "values": values,
            "peak_rss_gib": proc_status_gib("VmHWM")}


def child(piece: str, args) -> None:
    config = load_config(args.config)
    kind, arch = piece.split("-", 1)
    if kind in ("sample", "train"):
        import torch

        torch.set_num_threads(args.threads)
    result = {"sample": child_sample, "train": child_train, "score": child_score}[kind](config, arch, args)
    print(json.dumps(result))


# --------------------------------------------------------------------------------------------------
# Parent: run the pieces, project, print
# --------------------------------------------------------------------------------------------------

def run_piece(piece: str, args) -> dict:
    command = [sys.executable, __file__, "--child", piece, "--config", str(args.config), "--shape",
               *map(str, args.shape), "--batches", str(args.batches), "--train-patch", *map(str, args.train_patch),
               "--train-iterations", str(args.train_iterations), "--cases", str(args.cases),
               "--threads", str(args.threads), "--device", args.device, "--metrics", *args.metrics,
               "--window-budget", str(args.window_budget)]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if result.returncode != 0:
        raise SystemExit(f"bench_msd_scale: piece {piece!r} failed with exit status {result.returncode}:\n"
                         f"{result.stderr.strip()}")
    out = json.loads(result.stdout.strip().splitlines()[-1])
    out["wall_s"] = time.perf_counter() - start
    print(f"  {piece}: done in {out['wall_s']:.0f} s", flush=True)
    return out


def bank_members(config: dict, target: str) -> dict[str, int]:
    """Members per architecture of ``target``'s bank, by rules/common.smk's ``bank``: a model pretrained on
    every other task with its snapshots, and a random one."""
    snapshots = len(config.get("pretrain", {}).get("snapshots", []) or [])
    others = sum(1 for t in config["tasks"] if t != target)
    return {a: others * (1 + snapshots) + 1 for a in architectures(config)}


def train_cases(config: dict, target: str, override: int | None) -> int:
    from ccfv.preprocess.splits import make_split

    n = override if override is not None else MSD_TRAINING_CASES.get(target)
    if n is None:
        raise SystemExit(f"bench_msd_scale: no case count for task {target!r}: pass --train-cases N")
    split = make_split([f"case_{i:04d}" for i in range(n)], float(config["split"]["test_fraction"]),
                       int(config["split"]["seed"]))
    return len(split["train"])


def finetune_iterations(config: dict, target: str) -> int:
    finetune = config["finetune"]
    return int(finetune.get("per_task", {}).get(target, {}).get("iterations", finetune["iterations"]))


def project(config: dict, sample: dict, train: dict, score: dict, cases_measured: int,
            override: int | None) -> dict:
    """Seconds of estimation (sampling + the ccfv metric) and of fine-tuning of the whole benchmark."""
    seeds = len(config["finetune"]["seeds"])
    rows = []
    for target in config["tasks"]:
        n = train_cases(config, target, override)
        for arch, members in bank_members(config, target).items():
            seconds = score[arch]["seconds"]
            consistency = seconds["class_consistency"]
            pairs = (n * (n - 1)) / (cases_measured * (cases_measured - 1))
            ccfv = consistency * pairs + (seconds["ccfv"] - consistency) * n / cases_measured
            baselines = (sum(v for k, v in seconds.items() if k not in ("ccfv", "class_consistency"))
                         * n / cases_measured)
            rows.append({
                "target": target, "arch": arch, "members": members, "cases": n,
                "sampling_s": members * n * sample[arch]["s_per_case"], "ccfv_s": members * ccfv,
                "baselines_s": members * baselines,
                "finetune_s": members * seeds * finetune_iterations(config, target) * train[arch]["s_per_it"],
            })
    totals = {k: sum(r[k] for r in rows) for k in ("sampling_s", "ccfv_s", "baselines_s", "finetune_s")}
    totals["estimation_s"] = totals["sampling_s"] + totals["ccfv_s"]
    totals["te_over_finetune"] = totals["estimation_s"] / totals["finetune_s"]
    return {"rows": rows, "totals": totals}


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        memory = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                      if line.startswith("MemTotal:")) * 1024 / GIB
    except (OSError, StopIteration):
        memory = float("nan")
    return f"{model}, {os.cpu_count()} cores, {memory:.0f} GiB"


def hours(seconds: float) -> str:
    """A duration in the unit that reads best: s below 2 min, min below 2 h, h above."""
    if seconds < 120:
        return f"{seconds:.3g} s"
    if seconds < 7200:
        return f"{seconds / 60:.3g} min"
    return f"{seconds / 3600:,.1f} h"


def report(config: dict, args, sample: dict, train: dict, score: dict, projection: dict,
           load: tuple, wall: float) -> dict[str, float]:
    archs = architectures(config)
    patch = config["network"]["patch_size"]
    s = config["sampling"]
    print(f"\nbench_msd_scale: {args.config_shown}; machine: {machine()}; device {args.device}, "
          f"{args.threads} thread(s) per piece")
    print(f"load average (1, 5, 15 min): before {', '.join(f'{x:.2f}' for x in load[0])}; "
          f"after {', '.join(f'{x:.2f}' for x in load[1])}; wall {wall / 60:.1f} min")

    print(f"\nSampling one case: {' x '.join(map(str, args.shape))} voxels (z, y, x), patch "
          f"{'x'.join(map(str, patch))}, step {s['step_size']}, batch {s['batch_size']}; budgets "
          f"{budgets(config)}")
    first = sample[archs[0]]
    print(f"  voxels chosen per key: {first['voxels']}; windows: {first['windows_used']} own a voxel of "
          f"{first['windows_total']} in the tiling ({first['batches_total']} batches)")
    print(f"  {'network':8s} {'stages (channels)':24s} {'batches run':>11s} {'s/window':>9s} {'s/case':>9s} "
          f"{'case is':13s} {'peak RSS GiB':>12s}" + (f" {'GPU peak GiB':>12s}" if args.device != "cpu" else ""))
    for arch in archs:
        r = sample[arch]
        how = "measured" if r["whole_case"] else "extrapolated"
        rss = (f"{r['peak_rss_gib']:.2f}" if r["whole_case"]
               else f"{r['peak_rss_gib_measured']:.2f}+{r['rest_of_case_gib']:.3f}")
        line = (f"  {arch:8s} {','.join(map(str, r['channels'])):24s} "
                f"{r['batches_run']:>5d} of {r['batches_total']:<3d} "
                f"{r['s_per_window']:9.3g} {r['s_per_case']:9.4g} {how:13s} {rss:>12s}")
        if args.device != "cpu":
            line += f" {r['gpu_peak_gib']:12.2f}"
        print(line)
        print(f"           choose_voxels {r['t_choose']:.2f} s; batch seconds "
              f"{', '.join(f'{x:.2f}' for x in r['batch_seconds'])} (the first holds set-up and warm-up)")
    if not all(sample[a]["whole_case"] for a in archs):
        print("  EXTRAPOLATED: a whole case = the measured batches + the remaining batches x the mean of the "
              "measured batches after the first, + choose_voxels; its peak = the measured peak + the per-voxel "
              "buffers of the rest of the case (after '+')")

    print(f"\nFine-tuning iteration (forward + backward + SGD step, batch {config['network']['batch_size']}):")
    print(f"  {'network':8s} {'patch':>11s} {'s/it there':>10s} {'s/it at ' + 'x'.join(map(str, patch)):>18s} "
          f"{'':13s} {'peak RSS GiB':>12s}")
    for arch in archs:
        r = train[arch]
        how = f"extrapolated (x{r['voxel_factor']:g} voxels)" if r["extrapolated"] else "measured"
        print(f"  {arch:8s} {'x'.join(map(str, r['train_patch'])):>11s} {r['s_per_it_measured']:10.4g} "
              f"{r['s_per_it']:18.4g} {how:13s} {r['peak_rss_gib']:12.2f}")
    print(f"  ({args.train_iterations} timed iteration(s) after 1 warm-up; random tensors, no data loading)")

    print(f"\nScoring one (model, target) with {args.cases} cases (synthetic features of the real shapes), seconds:")
    print(f"  {'metric':26s}" + "".join(f" {a:>18s}" for a in archs))
    for name in list(args.metrics) + ["class_consistency"]:
        label = "  of which class_consistency" if name == "class_consistency" else name
        print(f"  {label:26s}" + "".join(f" {score[a]['seconds'][name]:18.3g}" for a in archs))
    print(f"  {'peak RSS GiB':26s}" + "".join(f" {score[a]['peak_rss_gib']:18.2f}" for a in archs))
    print(f"  {'stage channels':26s}" + "".join(f" {','.join(map(str, score[a]['channels'])):>18s}" for a in archs))
    print(f"  {'baselines rows x channels':26s}"
          + "".join(f" {str(score[a]['head_rows']) + ' x ' + str(score[a]['channels'][-1]):>18s}" for a in archs))
    print("  (class_consistency: the part of ccfv spent in eq. 2 over every stage; not timed: "
          + ", ".join(sorted(set(config["scoring"]["metrics"]) - set(args.metrics))) + ")")

    totals = projection["totals"]
    seeds = len(config["finetune"]["seeds"])
    members = {a: bank_members(config, config["tasks"][0])[a] for a in archs}
    cases = {r["target"]: r["cases"] for r in projection["rows"]}
    print(f"\nProjection, full benchmark: {len(config['tasks'])} targets x bank "
          f"({' + '.join(f'{m} {a}' for a, m in members.items())}) = "
          f"{len(config['tasks']) * sum(members.values())} (model, target) pairs; training cases per target "
          f"{cases}; every case {' x '.join(map(str, args.shape))}; fine-tuning {config['finetune']['iterations']} "
          f"iterations x {seeds} seed(s)")
    print(f"  {'target':16s} {'network':8s} {'models':>6s} {'cases':>5s} {'sampling':>12s} {'ccfv':>10s} "
          f"{'baselines':>10s} {'fine-tuning':>14s}")
    for r in projection["rows"]:
        print(f"  {r['target']:16s} {r['arch']:8s} {r['members']:6d} {r['cases']:5d} {hours(r['sampling_s']):>12s} "
              f"{hours(r['ccfv_s']):>10s} {hours(r['baselines_s']):>10s} {hours(r['finetune_s']):>14s}")
    print(f"  total: estimation (sampling + ccfv) {hours(totals['estimation_s'])} "
          f"(sampling {hours(totals['sampling_s'])}, ccfv {hours(totals['ccfv_s'])}; the timed baselines would add "
          f"{hours(totals['baselines_s'])}); fine-tuning {hours(totals['finetune_s'])}; "
          f"estimation / fine-tuning = {totals['te_over_finetune']:.4g}")
    print(f"  (1 {args.device} and {args.threads} thread(s) per job; pretraining excluded from both; case loading "
          "from disk not included)")

    s_per_case = bank_mean(config, {a: sample[a]["s_per_case"] for a in archs})
    return {"s_per_case": s_per_case, "peak_rss_gib": max(sample[a]["peak_rss_gib"] for a in archs),
            "te_over_finetune": totals["te_over_finetune"]}


def bank_mean(config: dict, values: dict[str, float]) -> float:
    """The mean of a per-architecture figure over every bank member of the benchmark."""
    archs = architectures(config)
    bank = {a: sum(bank_members(config, t)[a] for t in config["tasks"]) for a in archs}
    return sum(bank[a] * values[a] for a in archs) / sum(bank.values())


def report_budget(config: dict, args, sample: dict, budgeted: dict, projection: dict,
                  budget_projection: dict) -> float:
    """Print the window budget's section; return the bank's mean seconds per case with it over without
    (both at the warm batch speed)."""
    archs = architectures(config)
    first = budgeted[archs[0]]
    print(f"\nWindow budget {args.window_budget} (sampling.window_budget; ccfv.features.budget), same case: voxels "
          f"per key {first['voxels']}; bound: {args.window_budget} windows for global and background + per class "
          f"min({args.window_budget}, its windows)")
    print(f"  {'network':8s} {'windows run':>14s} {'full':>5s} {'s/case full':>12s} {'s/case budget':>14s} "
          f"{'ratio':>7s}")
    for arch in archs:
        full, part = sample[arch], budgeted[arch]
        print(f"  {arch:8s} {part['windows_run']:>8d} of {full['windows_total']:<3d} {full['windows_used']:5d} "
              f"{part['full_s_per_case_warm']:12.4g} {part['s_per_case']:14.4g} {part['time_ratio']:7.3f}")
        print(f"           choose_voxels_in_windows {part['t_choose']:.2f} s (choose_voxels {full['t_choose']:.2f} s); "
              f"batch seconds {', '.join(f'{x:.2f}' for x in part['batch_seconds'])} (measured whole)")
    print("  (s/case full here: choose_voxels + every batch at the steady batch time, the warm speed the budgeted "
          "pass runs at)")
    totals, budget_totals = projection["totals"], budget_projection["totals"]
    print(f"  projection with the budget: sampling {hours(budget_totals['sampling_s'])} (without: "
          f"{hours(totals['sampling_s'])}); estimation / fine-tuning = {budget_totals['te_over_finetune']:.4g} "
          f"(without: {totals['te_over_finetune']:.4g})")
    ratio = (bank_mean(config, {a: budgeted[a]["s_per_case"] for a in archs})
             / bank_mean(config, {a: budgeted[a]["full_s_per_case_warm"] for a in archs}))
    print(f"  bank mean seconds per case, budgeted / full: {ratio:.3f}")
    return ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=ROOT / "config" / "msd.yaml")
    parser.add_argument("--shape", type=int, nargs=3, default=list(DEFAULT_SHAPE), metavar=("Z", "Y", "X"),
                        help="the case's size after resampling, nnU-Net's (z, y, x) order (default 192 256 256)")
    parser.add_argument("--batches", type=int, default=2,
                        help="window batches of the case to run per architecture (0: the whole case)")
    parser.add_argument("--train-patch", type=int, nargs=3, metavar=("Z", "Y", "X"),
                        help="patch of the timed training iterations (default half the config's, e.g. 64^3)")
    parser.add_argument("--train-iterations", type=int, default=1, help="timed training iterations after 1 warm-up")
    parser.add_argument("--cases", type=int, default=100, help="cases of the scoring measurement")
    parser.add_argument("--metrics", nargs="+", help="metrics of scoring.metrics to time (default: the "
                        "config's table1 without ccfv_released)")
    parser.add_argument("--train-cases", type=int, help="training cases of every target (default: MSD's counts "
                        "through the config's split)")
    parser.add_argument("--threads", type=int, default=1, help="torch and BLAS threads per piece")
    parser.add_argument("--device", default="cpu", help="torch device of the networks and of ccfv (cpu, cuda)")
    parser.add_argument("--window-budget", type=int, help="windows per voxel key of the budgeted sampling (default: "
                        "the config's sampling.window_budget, else 2)")
    parser.add_argument("--json", type=Path, help="also write every measurement and the projection here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.config.is_file():
        parser.error(f"{args.config}: no such config file")
    config = load_config(args.config)
    if args.train_patch is None:
        args.train_patch = default_train_patch(config)
    problem = check_train_patch(config, args.train_patch)
    if problem:
        parser.error(problem)
    if args.metrics is None:
        table = config["scoring"].get("tables", {}).get("table1") or list(config["scoring"]["metrics"])
        args.metrics = [m for m in table if m not in UNTIMED_BY_DEFAULT]
    unknown = [m for m in args.metrics if m not in config["scoring"]["metrics"]]
    if unknown:
        parser.error(f"--metrics {unknown}: not in {args.config}'s scoring.metrics")
    if "ccfv" not in args.metrics:
        parser.error("--metrics must include ccfv (the projection's estimation)")
    if args.batches < 0 or args.train_iterations < 1 or args.cases < 2 or args.threads < 1:
        parser.error("--batches >= 0, --train-iterations >= 1, --cases >= 2 and --threads >= 1 are needed")
    if min(args.shape) < 1:
        parser.error(f"--shape {args.shape}: every axis must be positive")
    if args.window_budget is None:
        args.window_budget = config["sampling"].get("window_budget") or DEFAULT_WINDOW_BUDGET
    if args.window_budget < 1:
        parser.error(f"--window-budget {args.window_budget}: must be at least 1")
    if args.child:
        child(args.child, args)
        return

    shown = args.config.resolve()
    args.config_shown = shown.relative_to(ROOT) if shown.is_relative_to(ROOT) else shown
    for target in config["tasks"]:
        train_cases(config, target, args.train_cases)  # fails early on an unknown task
    load_before, start = os.getloadavg(), time.perf_counter()
    archs = architectures(config)
    print(f"bench_msd_scale: {len(archs) * 3} pieces, one child process each", flush=True)
    sample = {a: run_piece(f"sample-{a}", args) for a in archs}
    budgeted = {a: sample[a]["budget"] for a in archs}
    train = {a: run_piece(f"train-{a}", args) for a in archs}
    score = {a: run_piece(f"score-{a}", args) for a in archs}
    projection = project(config, sample, train, score, args.cases, args.train_cases)
    budget_projection = project(config, budgeted, train, score, args.cases, args.train_cases)
    wall = time.perf_counter() - start
    load_after = os.getloadavg()
    figures = report(config, args, sample, train, score, projection, (load_before, load_after), wall)
    figures["budget_time_ratio"] = report_budget(config, args, sample, budgeted, projection, budget_projection)
    if args.json:
        args.json.write_text(json.dumps({
            "config": str(args.config_shown), "machine": machine(), "device": args.device, "threads": args.threads,
            "shape": args.shape, "cases": args.cases, "train_patch": args.train_patch, "metrics": args.metrics,
            "load_before": load_before, "load_after": load_after, "wall_s": wall,
            "sample": sample, "window_budget": args.window_budget, "train": train, "score": score,
            "projection": projection, "budget_projection": budget_projection, "figures": figures,
        }, indent=2))
    print(" ".join(f"{k}={v:.6g}" for k, v in figures.items()))


if __name__ == "__main__":
    main()
