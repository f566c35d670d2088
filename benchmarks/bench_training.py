"""Training speed of the bank's two architectures, and what the full MSD benchmark would cost.

Measures training iterations per second (forward, nnU-Net's Dice + CE loss, deep supervision for the U-Net,
backward, gradient clipping at 12 and an SGD step: what ``nnUNetTrainer.train_step`` does) for the U-Net and
UNETR at the demo's patch size (config/config.yaml) and at the paper's (config/msd.yaml: 128^3, batch 2), on
this machine's CPU and, when ``torch.cuda.is_available()``, on the GPU. Data loading and augmentation are not
included (nnU-Net runs them in background workers on a GPU machine).

Then projects the compute of the full benchmark of config/msd.yaml: every task pretrained with every
architecture (250k iterations) and every target's bank fine-tuned (100k iterations): 5 targets x
(4 sources x 2 architectures + 2 random) x seeds. Projections use the measured GPU speed when there is one;
otherwise the CPU speed, and a GPU figure only under a stated, unmeasured speed-up assumption.

``--demo-config`` and ``--paper-config`` replace the two configs (the test suite's smoke test,
tests/test_benchmarks.py, gives tiny networks in both and 1 iteration each).

The last line printed is machine-readable, ``key=value`` separated by spaces:
``<device>_<setup>_<network>_it_per_s=<x>`` for every measurement (e.g. ``cpu_paper_unetr_it_per_s``;
6 significant digits), with ``--channels-last`` then ``<device>_demo_<network>_channels_last_speedup=<r>`` (the
demo setup's iterations per second in channels-last memory format over the default's; 4 significant digits), then ``<device>_hours=<y>`` per measured device (the projected compute of the full
benchmark on it, all architectures), then ``gpu_hours=<z> gpu_hours_source=measured|assumed_<k>x``: the
measured GPU projection, or the CPU one divided by the assumed speed-up ``k``.

    .venv/bin/python benchmarks/bench_training.py [--paper-iterations 3] [--demo-iterations 20] [--channels-last]
                                                  [--demo-config config/config.yaml]
                                                  [--paper-config config/msd.yaml] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ccfv.bank import networks  # noqa: E402

#: Only used when no GPU was measured, and printed as an assumption: a data-centre GPU against this CPU.
ASSUMED_GPU_SPEEDUP = 50.0


def unet_architecture(network: dict) -> dict:
    """The plans' architecture entry that ccfv.preprocess.nnunet.shared_plans writes for a config's network."""
    n = len(network["features_per_stage"])
    return {
        "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
        "arch_kwargs": {
            "n_stages": n, "features_per_stage": list(network["features_per_stage"]),
            "conv_op": "torch.nn.modules.conv.Conv3d", "kernel_sizes": network["kernel_sizes"],
            "strides": network["strides"], "n_conv_per_stage": network["n_conv_per_stage"],
            "n_conv_per_stage_decoder": network["n_conv_per_stage_decoder"], "conv_bias": True,
            "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
            "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None, "dropout_op_kwargs": None,
            "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True},
        },
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    }


def make_loss(name: str, network: dict):
    import numpy as np
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

    loss = DC_and_CE_loss({"batch_dice": False, "smooth": 1e-5, "do_bg": False, "ddp": False}, {},
                          weight_ce=1, weight_dice=1, ignore_label=None, dice_class=MemoryEfficientSoftDiceLoss)
    if name != networks.UNET:
        return loss, None
    strides = np.array(network["strides"])
    scales = [list(s) for s in 1 / np.cumprod(strides, axis=0)][:-1]
    weights = np.array([1 / (2**i) for i in range(len(scales))])
    weights[-1] = 0
    return DeepSupervisionWrapper(loss, weights / weights.sum()), scales


def iterations_per_second(name: str, architecture: dict, network: dict, device: torch.device, n: int,
                          num_classes: int = 2, channels_last: bool = False) -> float:
    """Training iterations per second of one network on a seeded random batch (axes N, C, z, y, x). With
    ``channels_last`` the network and the batch are in ``torch.channels_last_3d`` memory format (N, z, y, x, C
    in memory), which oneDNN computes with other kernels: faster on the CPU at few channels, other last bits."""
    model = networks.build(name, architecture, 1, num_classes, deep_supervision=name == networks.UNET).to(device)
    memory_format = torch.channels_last_3d if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), 1e-2, weight_decay=3e-5, momentum=0.99, nesterov=True)
    loss_fn, scales = make_loss(name, network)
    patch = list(network["patch_size"])
    batch = int(network["batch_size"])
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 1, *patch, generator=g).to(device).contiguous(memory_format=memory_format)
    y = torch.randint(0, num_classes, (batch, 1, *patch), generator=g).to(device)
    if scales is not None:
        y = [torch.nn.functional.interpolate(y.float(), scale_factor=tuple(float(f) for f in s),
                                             mode="nearest-exact").long() for s in scales]

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 12)
        optimizer.step()

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    step()  # warm-up (allocations, kernel selection)
    sync()
    start = time.perf_counter()
    for _ in range(n):
        step()
    sync()
    return n / (time.perf_counter() - start)


def architectures(config: dict) -> list[tuple[str, dict]]:
    out = []
    for name in config.get("architectures", [networks.UNET]):
        if name == networks.UNET:
            out.append((name, unet_architecture(config["network"])))
        else:
            out.append((name, networks.unetr_architecture(config["network"]["patch_size"], config.get("unetr"))))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo-iterations", type=int, default=20)
    parser.add_argument("--paper-iterations", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--json", type=Path, help="also write the measurements here")
    parser.add_argument("--demo-config", type=Path, default=ROOT / "config/config.yaml")
    parser.add_argument("--paper-config", type=Path, default=ROOT / "config/msd.yaml",
                        help="its tasks, architectures, budgets and seeds also drive the projection")
    parser.add_argument("--channels-last", action="store_true",
                        help="also measure the demo setup in channels-last memory format (docs/models.md)")
    args = parser.parse_args()
    if args.demo_iterations < 1 or args.paper_iterations < 1:
        parser.error("--demo-iterations and --paper-iterations must be at least 1")
    for path in (args.demo_config, args.paper_config):
        if not path.is_file():
            parser.error(f"{path}: no such config file")
    torch.set_num_threads(args.threads)

    demo, paper = (yaml.safe_load(path.read_text()) for path in (args.demo_config, args.paper_config))
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    rows = []
    channels_last_speedup: dict[tuple[str, str], float] = {}
    for device in devices:
        for setup, config, n in (("demo", demo, args.demo_iterations), ("paper", paper, args.paper_iterations)):
            for name, architecture in architectures(config):
                rate = iterations_per_second(name, architecture, config["network"], device, n)
                rows.append({"device": device.type, "setup": setup, "network": name,
                             "patch": "x".join(map(str, config["network"]["patch_size"])),
                             "batch": config["network"]["batch_size"], "iterations": n, "it_per_s": rate})
                print(f"  measured {device.type:4s} {setup:5s} {name:5s}: {rate:.3f} it/s", flush=True)
                if args.channels_last and setup == "demo":
                    rate_cl = iterations_per_second(name, architecture, config["network"], device, n,
                                                    channels_last=True)
                    channels_last_speedup[(device.type, name)] = rate_cl / rate
                    print(f"  measured {device.type:4s} {setup:5s} {name:5s}: {rate_cl:.3f} it/s channels-last "
                          f"({rate_cl / rate:.3f}x)", flush=True)

    cpu_name = platform.processor() or platform.machine()
    gpu_name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    print(f"\nCPU: {cpu_name}, {args.threads} threads; GPU: {gpu_name or 'none available (unmeasured)'}")
    print(f"{'device':6s} {'setup':5s} {'network':7s} {'patch':>11s} {'batch':>5s} {'it/s':>9s} {'s/it':>9s}")
    for r in rows:
        print(f"{r['device']:6s} {r['setup']:5s} {r['network']:7s} {r['patch']:>11s} {r['batch']:>5d} "
              f"{r['it_per_s']:9.3f} {1 / r['it_per_s']:9.3f}")

    # Projection for the full MSD benchmark.
    n_tasks = len(paper["tasks"])
    archs = paper.get("architectures", [networks.UNET])
    seeds = len(paper["finetune"]["seeds"])
    pre_it, ft_it = paper["pretrain"]["iterations"], paper["finetune"]["iterations"]
    n_pretrain = n_tasks * len(archs)
    n_finetune = n_tasks * ((n_tasks - 1) * len(archs) + len(archs)) * seeds
    shown = args.paper_config.resolve()
    shown = shown.relative_to(ROOT) if shown.is_relative_to(ROOT) else shown
    print(f"\nFull MSD benchmark ({shown}): {n_pretrain} pretrainings x {pre_it} it, "
          f"{n_finetune} fine-tunings x {ft_it} it ({n_tasks} targets x ({n_tasks - 1} sources x {len(archs)} "
          f"architectures + {len(archs)} random) x {seeds} seed(s))")
    measured = {(r["device"], r["network"]): r["it_per_s"] for r in rows if r["setup"] == "paper"}
    hours_on: dict[str, float] = {}
    for device in ("cuda", "cpu"):
        if not any(d == device for d, _ in measured):
            continue
        total = 0.0
        for name in archs:
            rate = measured[(device, name)]
            hours = (n_tasks * pre_it + n_tasks * n_tasks * seeds * ft_it) / rate / 3600
            total += hours
            print(f"  {device}: {name}: {hours:,.0f} h  (pretraining {n_tasks * pre_it / rate / 3600:,.0f} h, "
                  f"fine-tuning {n_tasks * n_tasks * seeds * ft_it / rate / 3600:,.0f} h)")
        hours_on[device] = total
        label = "GPU-hours (measured)" if device == "cuda" else "CPU-hours (measured)"
        print(f"  {device}: total {total:,.0f} {label}")
        if device == "cpu" and "cuda" not in {d for d, _ in measured}:
            print(f"  GPU: UNMEASURED (no GPU here). Assuming a {ASSUMED_GPU_SPEEDUP:.0f}x speed-up over this CPU "
                  f"(an assumption, not a measurement): {total / ASSUMED_GPU_SPEEDUP:,.0f} GPU-hours")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "cpu": cpu_name, "gpu": gpu_name,
                                         "threads": args.threads}, indent=2))
    figures = [f"{r['device']}_{r['setup']}_{r['network']}_it_per_s={r['it_per_s']:.6g}" for r in rows]
    figures += [f"{device}_demo_{name}_channels_last_speedup={x:.4g}"
                for (device, name), x in channels_last_speedup.items()]
    figures += [f"{device}_hours={hours:.6g}" for device, hours in hours_on.items()]
    if "cuda" in hours_on:
        figures += [f"gpu_hours={hours_on['cuda']:.6g}", "gpu_hours_source=measured"]
    else:
        figures += [f"gpu_hours={hours_on['cpu'] / ASSUMED_GPU_SPEEDUP:.6g}",
                    f"gpu_hours_source=assumed_{ASSUMED_GPU_SPEEDUP:g}x"]
    print(" ".join(figures))


if __name__ == "__main__":
    main()
