"""Benchmark: decoder-feature sampling of one case against plain MONAI sliding-window inference.

Both run the demo's U-Net (nnU-Net's PlainConvUNet with the ``network:`` section of
config/config.yaml: 1 input channel, features [8, 16, 32, 64], patch [16, 32, 32]) over the same
seeded random 128 x 128 x 96 (x, y, z) volume, i.e. an array [1, 96, 128, 128] in nnU-Net's
(z, y, x) order, with the same windows:

* sampling: ``choose_voxels`` with the demo's budgets (``sampling:``), ``sample_case`` with the U-Net's
  layer ratios (``sampling.layer_ratios.unet``, read with ``ccfv.features.settings.layer_ratios_for`` as the
  workflow does), step size and batch size, on every decoder stage, probabilities at the class and background
  voxels (what ``sample_dataset`` does for one case, without writing the file);
* inference: ``monai.inferers.sliding_window_inference`` with ROI = patch, ``overlap = 1 - step_size``
  (nnU-Net's step 0.5 is MONAI's overlap 0.5; on this volume both tile with the same 11 x 7 x 7 = 539
  window starts, checked below), ``sw_batch_size`` = the sampler's batch size, MONAI's default
  ``mode="constant"`` blending (cheaper than nnU-Net's Gaussian).

Time: median over ``--repeats`` interleaved runs in this process after one warm-up each, with
``torch.set_num_threads(--threads)`` (wall clock; CPU time and the median of per-pair ratios are
printed too, since a shared machine makes wall clock noisy). Peak resident memory: each task once in
a fresh child process (this script with ``--child sample|infer``) that builds the network and the
volume, runs the task and reports ``ru_maxrss`` (and ``VmHWM``). The children are started before this
process imports torch: a forked child's ``ru_maxrss`` starts at its parent's resident size. Two modes:
"own" (each child imports what its task needs; MONAI's import alone is ~330 MiB) and "both" (both
children import torch, the nnU-Net helpers, ccfv.features.sampler and MONAI, so the difference is the run
itself). ``rss_ratio`` uses "both", the stricter one.

The sampler runs only the windows that own a chosen voxel (423 of 539 with the demo's budgets);
``--n-global 20000`` makes every window own one, the worst case for the sampler.

``--shape Z Y X`` replaces the volume (the ellipsoids scale with it); the test suite's smoke test
(tests/test_benchmarks.py) runs ``--shape 24 48 48 --repeats 1 --rss-repeats 1 --no-own-imports``
(2 x 2 x 2 windows, two children; most of its ~15 s is importing MONAI, ~4 s per process).

The last line printed is ``time_ratio=<x> rss_ratio=<y>`` (sampling over inference; x = ratio of the
wall-clock medians, y = ratio of the equal-imports peak RSS), both with 3 decimals.

    .venv/bin/python benchmarks/bench_sampling.py [--repeats 7] [--threads 1] [--rss-repeats 2]
                                                  [--n-global N] [--shape 96 128 128] [--no-own-imports]
"""

from __future__ import annotations

import argparse
import itertools
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_SHAPE = (96, 128, 128)  # (z, y, x) = 128 x 128 x 96 in (x, y, z)
NUM_CLASSES = 3  # background + 2 foreground classes
CLASS_IDS = [1, 2]
SEED = 0


def load_config(n_global: int | None = None) -> dict:
    import yaml

    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    config = {"network": config["network"], "sampling": dict(config["sampling"])}
    if n_global is not None:
        config["sampling"]["n_global"] = int(n_global)
    return config


def build_network(network: dict):
    """The demo's PlainConvUNet: nnU-Net's default 3d_fullres arch_kwargs with the config's stages."""
    import torch
    from dynamic_network_architectures.architectures.unet import PlainConvUNet
    from torch import nn

    torch.manual_seed(SEED)
    n_stages = len(network["features_per_stage"])
    net = PlainConvUNet(
        input_channels=1, n_stages=n_stages, features_per_stage=list(network["features_per_stage"]),
        conv_op=nn.Conv3d, kernel_sizes=[list(k) for k in network["kernel_sizes"]],
        strides=[list(s) for s in network["strides"]], n_conv_per_stage=list(network["n_conv_per_stage"]),
        num_classes=NUM_CLASSES, n_conv_per_stage_decoder=list(network["n_conv_per_stage_decoder"]),
        conv_bias=True, norm_op=nn.InstanceNorm3d, norm_op_kwargs={"eps": 1e-5, "affine": True},
        dropout_op=None, dropout_op_kwargs=None, nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True},
        deep_supervision=False,
    )
    return net.eval()


def make_image(shape: tuple[int, int, int]) -> np.ndarray:
    """Seeded standard-normal image [1, z, y, x], float32."""
    return np.random.default_rng(SEED).normal(size=(1, *shape)).astype(np.float32)


def make_seg(shape: tuple[int, int, int]) -> np.ndarray:
    """Two ellipsoids (a large class 1, a small class 2 inside it) and nnU-Net's -1 outside a crop.

    Labels [z, y, x], int16. Centres and semi-axes are fractions of ``shape`` (on the default
    96 x 128 x 128: centres (48, 60, 70) and (40, 50, 80), semi-axes (30, 40, 35) and (8, 10, 9) voxels;
    the first 4 rows of y are -1). Built slice by slice, so that no full-size float temporary inflates
    the sampling child's memory (a real case's labels come from disk as int16)."""
    d0, d1, d2 = (s / r for s, r in zip(shape, DEFAULT_SHAPE))  # scale per axis against the default
    seg = np.zeros(shape, dtype=np.int16)
    y, x = np.ogrid[: shape[1], : shape[2]]
    for z in range(shape[0]):
        big = (((z - 48 * d0) / (30.0 * d0)) ** 2 + ((y - 60 * d1) / (40.0 * d1)) ** 2
               + ((x - 70 * d2) / (35.0 * d2)) ** 2 <= 1)
        small = (((z - 40 * d0) / (8.0 * d0)) ** 2 + ((y - 50 * d1) / (10.0 * d1)) ** 2
                 + ((x - 80 * d2) / (9.0 * d2)) ** 2 <= 1)
        seg[z][big] = 1
        seg[z][small] = 2
    seg[:, : max(1, round(4 * d1)), :] = -1
    return seg


def decoder_layers(net) -> list[str]:
    return [f"decoder.stages.{i}" for i in range(len(net.decoder.stages))]


def run_sampling(net, image, seg, config):
    from ccfv.bank.networks import UNET
    from ccfv.features.file import BACKGROUND_KEY, class_key
    from ccfv.features.sampler import case_rng, sample_case
    from ccfv.features.settings import layer_ratios_for
    from ccfv.features.voxels import choose_voxels, labels_at

    s = config["sampling"]
    budgets = {k: int(s[k]) for k in ("total", "minimum", "n_global", "n_background")}
    coords = choose_voxels(seg, CLASS_IDS, rng=case_rng(int(s["seed"]), "bench_case"), **budgets)
    wanted = [class_key(k) for k in CLASS_IDS] + [BACKGROUND_KEY]
    layers = decoder_layers(net)
    # sampling.layer_ratios is per architecture (unet / unetr) or one list for all: read it as
    # ccfv.features.target does for a bank U-Net.
    ratios = layer_ratios_for(s["layer_ratios"], UNET, len(layers))
    samples = sample_case(
        net, layers, image, coords, patch_size=config["network"]["patch_size"],
        step_size=float(s["step_size"]), batch_size=int(s["batch_size"]), layer_ratios=ratios,
        probs_keys=[k for k in wanted if k in coords],
    )
    labels = {k: labels_at(seg, v) for k, v in coords.items()}
    return coords, labels, samples


def run_inference(net, image, config):
    import torch
    from monai.inferers import sliding_window_inference

    with torch.inference_mode():
        return sliding_window_inference(
            torch.from_numpy(image)[None], roi_size=tuple(config["network"]["patch_size"]),
            sw_batch_size=int(config["sampling"]["batch_size"]), predictor=net,
            overlap=1.0 - float(config["sampling"]["step_size"]),
        )


def proc_status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def import_for(task: str, imports: str) -> None:
    """Import what ``task`` needs ("own"), or what both tasks need ("both": equal baselines)."""
    if task == "sample" or imports == "both":
        import acvl_utils.cropping_and_padding.padding  # noqa: F401  (the sampler's lazy imports)
        import nnunetv2.inference.sliding_window_prediction  # noqa: F401

        import ccfv.features.sampler  # noqa: F401
    if task == "infer" or imports == "both":
        import monai.inferers  # noqa: F401


def child(task: str, threads: int, imports: str, n_global: int | None, shape: tuple[int, int, int]) -> None:
    """Run one task once in this fresh process and print its memory (MiB) as JSON."""
    import torch

    torch.set_num_threads(threads)
    config = load_config(n_global)
    net = build_network(config["network"])
    import_for(task, imports)
    image = make_image(shape)
    if task == "sample":
        seg = make_seg(shape)
        before = proc_status_mib("VmRSS")
        run_sampling(net, image, seg, config)
    else:
        before = proc_status_mib("VmRSS")
        out = run_inference(net, image, config)
        del out
    print(json.dumps({
        "task": task, "imports": imports, "rss_before_run_mib": before,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # KiB on Linux
        "vm_hwm_mib": proc_status_mib("VmHWM"),
    }))


def measure_child(task: str, threads: int, imports: str, n_global: int | None,
                  shape: tuple[int, int, int]) -> dict:
    """One fresh child. Started while this process is still small: on Linux a forked child's
    ru_maxrss starts at the parent's resident size, so the parent must not have imported torch yet."""
    command = [sys.executable, __file__, "--child", task, "--threads", str(threads), "--imports", imports,
               "--shape", *map(str, shape)]
    if n_global is not None:
        command += ["--n-global", str(n_global)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        # The child's traceback is the only clue (this is how the per-architecture layer_ratios broke it).
        raise SystemExit(f"bench_sampling: child {task!r} ({imports} imports) failed with exit status "
                         f"{result.returncode}:\n{result.stderr.strip()}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def check_same_windows(config, shape: tuple[int, int, int]) -> int:
    """nnU-Net's window starts (the sampler's) equal MONAI's scan starts on this volume."""
    from monai.inferers.utils import _get_scan_interval, dense_patch_slices

    from ccfv.features.windows import window_starts

    patch = tuple(config["network"]["patch_size"])
    step = float(config["sampling"]["step_size"])
    ours = window_starts(shape, patch, step)
    interval = _get_scan_interval(shape, patch, 3, (1.0 - step,) * 3)
    monai_starts = sorted({tuple(sl.start for sl in s) for s in dense_patch_slices(shape, patch, interval)})
    nnunet_starts = sorted(itertools.product(*[s.tolist() for s in ours]))
    if monai_starts != nnunet_starts:
        raise SystemExit(f"the tilings differ: MONAI {len(monai_starts)} windows, nnU-Net {len(nnunet_starts)}")
    return len(nnunet_starts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7, help="timed runs of each task (median)")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--rss-repeats", type=int, default=2, help="child processes per task and mode (median)")
    parser.add_argument("--n-global", type=int, default=None,
                        help="override sampling.n_global (e.g. 20000: every window owns a voxel and runs)")
    parser.add_argument("--own-imports", action=argparse.BooleanOptionalAction, default=True,
                        help="also measure memory with each child importing only what its task needs "
                             "(--no-own-imports: only the equal-imports children that rss_ratio uses)")
    parser.add_argument("--shape", type=int, nargs=3, default=list(DEFAULT_SHAPE), metavar=("Z", "Y", "X"),
                        help="volume size in nnU-Net's (z, y, x) order (default 96 128 128); every axis at "
                             "least the patch's")
    parser.add_argument("--child", choices=["sample", "infer"], help=argparse.SUPPRESS)
    parser.add_argument("--imports", choices=["own", "both"], default="both", help=argparse.SUPPRESS)
    args = parser.parse_args()
    shape = tuple(args.shape)
    if args.repeats < 1 or args.rss_repeats < 1:
        parser.error("--repeats and --rss-repeats must be at least 1")
    patch = load_config()["network"]["patch_size"]
    if any(s < p for s, p in zip(shape, patch)):
        parser.error(f"--shape {list(shape)} is smaller than the patch {patch} on some axis")
    if args.child:
        child(args.child, args.threads, args.imports, args.n_global, shape)
        return

    # Memory first, while this process has not imported torch (see measure_child).
    rss: dict[tuple[str, str], dict] = {}
    modes = ("both", "own") if args.own_imports else ("both",)
    for imports in modes:
        for task in ("sample", "infer"):
            runs = [measure_child(task, args.threads, imports, args.n_global, shape)
                    for _ in range(args.rss_repeats)]
            rss[task, imports] = {k: statistics.median(r[k] for r in runs)
                                  for k in ("peak_rss_mib", "vm_hwm_mib", "rss_before_run_mib")}
            rss[task, imports]["runs"] = [r["peak_rss_mib"] for r in runs]

    import torch

    torch.set_num_threads(args.threads)
    config = load_config(args.n_global)
    net = build_network(config["network"])
    image, seg = make_image(shape), make_seg(shape)
    n_windows = check_same_windows(config, shape)
    coords, _, samples = run_sampling(net, image, seg, config)  # warm-up
    out = run_inference(net, image, config)  # warm-up
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, volume {list(image.shape)} "
          f"(z, y, x), patch {config['network']['patch_size']}, step {config['sampling']['step_size']} "
          f"(MONAI overlap {1 - float(config['sampling']['step_size'])}), batch {config['sampling']['batch_size']}")
    print(f"windows: {n_windows} in the tiling (same starts for both); sampling ran {samples.windows_run} "
          f"of {samples.windows_total}; voxels per key: { {k: len(v) for k, v in coords.items()} }")
    print(f"inference output {list(out.shape)} {out.dtype}; sampled layers {samples.layer_names} "
          f"channels {samples.channels}")
    del out

    times: dict[str, list[float]] = {"sample": [], "infer": []}
    cpu: dict[str, list[float]] = {"sample": [], "infer": []}
    for _ in range(args.repeats):  # interleaved, so that background load hits both alike
        for task in ("sample", "infer"):
            t0, c0 = time.perf_counter(), time.process_time()
            result = run_sampling(net, image, seg, config) if task == "sample" else run_inference(net, image, config)
            times[task].append(time.perf_counter() - t0)
            cpu[task].append(time.process_time() - c0)
            del result
    median = {k: statistics.median(v) for k, v in times.items()}
    for k, v in times.items():
        print(f"time {k}: median {median[k]:.3f} s wall, {statistics.median(cpu[k]):.3f} s CPU, over {len(v)} "
              f"runs (wall {', '.join(f'{t:.3f}' for t in v)})")
    print(f"  CPU-time ratio {statistics.median(cpu['sample']) / statistics.median(cpu['infer']):.3f}; "
          f"median of per-pair wall ratios "
          f"{statistics.median(a / b for a, b in zip(times['sample'], times['infer'])):.3f}")

    for imports, what in (("own", "each child imports only what its task needs"),
                          ("both", "both children import torch, nnU-Net helpers, ccfv.features.sampler and MONAI")):
        if imports not in modes:
            continue
        print(f"peak RSS, {what}:")
        for task in ("sample", "infer"):
            r = rss[task, imports]
            print(f"  {task}: peak {r['peak_rss_mib']:.1f} MiB (VmHWM {r['vm_hwm_mib']:.1f}), before the run "
                  f"{r['rss_before_run_mib']:.1f} MiB, the run adds {r['peak_rss_mib'] - r['rss_before_run_mib']:.1f} "
                  f"MiB; runs {', '.join(f'{x:.1f}' for x in r['runs'])}")
        print(f"  ratio {rss['sample', imports]['peak_rss_mib'] / rss['infer', imports]['peak_rss_mib']:.3f}")
    time_ratio = median["sample"] / median["infer"]
    # The reported ratio uses equal imports, so that it compares the runs, not MONAI's import cost.
    rss_ratio = rss["sample", "both"]["peak_rss_mib"] / rss["infer", "both"]["peak_rss_mib"]
    print(f"time_ratio={time_ratio:.3f} rss_ratio={rss_ratio:.3f}")


if __name__ == "__main__":
    main()
