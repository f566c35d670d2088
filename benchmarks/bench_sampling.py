"""Benchmark: decoder-feature sampling of one case against plain MONAI sliding-window inference.

Both run the demo's U-Net (nnU-Net's PlainConvUNet with the ``network:`` section of
config/config.yaml: 1 input channel, features [8, 16, 32, 64], patch [16, 32, 32]) over the same
seeded random 128 x 128 x 96 (x, y, z) volume, i.e. an array [1, 96, 128, 128] in nnU-Net's
(z, y, x) order, with the same windows:

* sampling: ``choose_voxels`` with the demo's budgets (``sampling:``), ``sample_case`` with its layer
  ratios, step size and batch size, on every decoder stage, probabilities at the class and background
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
children import torch, the nnU-Net helpers, ccfv.sampling and MONAI, so the difference is the run
itself). ``rss_ratio`` uses "both", the stricter one.

The sampler runs only the windows that own a chosen voxel (423 of 539 with the demo's budgets);
``--n-global 20000`` makes every window own one, the worst case for the sampler.

The last line printed is ``time_ratio=<x> rss_ratio=<y>`` (sampling over inference).

    .venv/bin/python benchmarks/bench_sampling.py [--repeats 7] [--threads 1] [--n-global N]
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

SHAPE = (96, 128, 128)  # (z, y, x) = 128 x 128 x 96 in (x, y, z)
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


def make_image() -> np.ndarray:
    return np.random.default_rng(SEED).normal(size=(1, *SHAPE)).astype(np.float32)


def make_seg() -> np.ndarray:
    """Two ellipsoids (a large class 1, a small class 2 inside it) and nnU-Net's -1 outside a crop.

    Built slice by slice, so that no full-size float temporary inflates the sampling child's memory
    (a real case's labels come from disk as int16)."""
    seg = np.zeros(SHAPE, dtype=np.int16)
    y, x = np.ogrid[: SHAPE[1], : SHAPE[2]]
    for z in range(SHAPE[0]):
        big = ((z - 48) / 30.0) ** 2 + ((y - 60) / 40.0) ** 2 + ((x - 70) / 35.0) ** 2 <= 1
        small = ((z - 40) / 8.0) ** 2 + ((y - 50) / 10.0) ** 2 + ((x - 80) / 9.0) ** 2 <= 1
        seg[z][big] = 1
        seg[z][small] = 2
    seg[:, :4, :] = -1
    return seg


def decoder_layers(net) -> list[str]:
    return [f"decoder.stages.{i}" for i in range(len(net.decoder.stages))]


def run_sampling(net, image, seg, config):
    from ccfv.features_file import BACKGROUND_KEY, class_key
    from ccfv.sampling import case_rng, choose_voxels, labels_at, sample_case

    s = config["sampling"]
    budgets = {k: int(s[k]) for k in ("total", "minimum", "n_global", "n_background")}
    coords = choose_voxels(seg, CLASS_IDS, rng=case_rng(int(s["seed"]), "bench_case"), **budgets)
    wanted = [class_key(k) for k in CLASS_IDS] + [BACKGROUND_KEY]
    samples = sample_case(
        net, decoder_layers(net), image, coords, patch_size=config["network"]["patch_size"],
        step_size=float(s["step_size"]), batch_size=int(s["batch_size"]), layer_ratios=s["layer_ratios"],
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

        import ccfv.sampling  # noqa: F401
    if task == "infer" or imports == "both":
        import monai.inferers  # noqa: F401


def child(task: str, threads: int, imports: str, n_global: int | None) -> None:
    """Run one task once in this fresh process and print its memory (MiB) as JSON."""
    import torch

    torch.set_num_threads(threads)
    config = load_config(n_global)
    net = build_network(config["network"])
    import_for(task, imports)
    image = make_image()
    if task == "sample":
        seg = make_seg()
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


def measure_child(task: str, threads: int, imports: str, n_global: int | None) -> dict:
    """One fresh child. Started while this process is still small: on Linux a forked child's
    ru_maxrss starts at the parent's resident size, so the parent must not have imported torch yet."""
    command = [sys.executable, __file__, "--child", task, "--threads", str(threads), "--imports", imports]
    if n_global is not None:
        command += ["--n-global", str(n_global)]
    result = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def check_same_windows(config) -> int:
    """nnU-Net's window starts (the sampler's) equal MONAI's scan starts on this volume."""
    from monai.inferers.utils import _get_scan_interval, dense_patch_slices

    from ccfv.sampling import window_starts

    patch = tuple(config["network"]["patch_size"])
    step = float(config["sampling"]["step_size"])
    ours = window_starts(SHAPE, patch, step)
    interval = _get_scan_interval(SHAPE, patch, 3, (1.0 - step,) * 3)
    monai_starts = sorted({tuple(sl.start for sl in s) for s in dense_patch_slices(SHAPE, patch, interval)})
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
    parser.add_argument("--child", choices=["sample", "infer"], help=argparse.SUPPRESS)
    parser.add_argument("--imports", choices=["own", "both"], default="both", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.threads, args.imports, args.n_global)
        return

    # Memory first, while this process has not imported torch (see measure_child).
    rss: dict[tuple[str, str], dict] = {}
    for imports in ("both", "own"):
        for task in ("sample", "infer"):
            runs = [measure_child(task, args.threads, imports, args.n_global) for _ in range(args.rss_repeats)]
            rss[task, imports] = {k: statistics.median(r[k] for r in runs)
                                  for k in ("peak_rss_mib", "vm_hwm_mib", "rss_before_run_mib")}
            rss[task, imports]["runs"] = [r["peak_rss_mib"] for r in runs]

    import torch

    torch.set_num_threads(args.threads)
    config = load_config(args.n_global)
    net = build_network(config["network"])
    image, seg = make_image(), make_seg()
    n_windows = check_same_windows(config)
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
                          ("both", "both children import torch, nnU-Net helpers, ccfv.sampling and MONAI")):
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
