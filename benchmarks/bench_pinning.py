"""What pinning the CPU numerics costs (ccfv.reproducibility, docs/reproducibility.md): a small training and a
feature-sampling pass, unpinned against pinned, measured in the same run.

Every measurement runs in a fresh process (this script with ``--child VARIANT``), because the pins only
take effect before torch and numpy load:

- ``unpinned``: the environment without any pin variable, ``torch.set_num_threads(--threads)``;
- ``pinned``: ``pin_cpu_numerics(--threads, --level)`` first thing;
- ``pinned_no_onednn`` (with ``--no-onednn``): the same with ``onednn=False``.

Each child times, after one warm-up step or pass each:

- ``unet``: ``--iterations`` training iterations of the config's U-Net (nnU-Net's PlainConvUNet, Dice + CE
  loss with deep supervision, gradient clipping at 12, SGD with Nesterov momentum: ``nnUNetTrainer.train_step``,
  as in bench_training.py) on a seeded random batch of the config's patch and batch size;
- ``unetr``: ``--unetr-iterations`` of the same for the config's UNETR (when the config lists it);
- ``sampling``: one ``sample_case`` pass with the config's sampling budgets over a seeded random volume
  (``--shape``, default three patches per axis) with two ellipsoid classes (bench_sampling.py's case).

and reports a digest of the U-Net's weights after training and of the sampled features. Variants alternate
(unpinned, pinned, unpinned, ...) over ``--repeats`` rounds so that a drifting load hits each alike; the
medians are compared. The load average is printed at the start and the end: on a shared machine the
ratios are the figure to quote, not the seconds.

The last line printed is machine-readable: ``unpinned_s=<x> pinned_s=<y> unet_ratio=<a> unetr_ratio=<b>
sampling_ratio=<c> pinned_repeats_identical=<0|1> [no_onednn_time_ratio=<d>] pinned_time_ratio=<y/x>``
(seconds are the sums of the parts' medians; ratios pinned over unpinned, 3 decimals;
``pinned_repeats_identical`` says whether every pinned child gave the same digests).

    .venv/bin/python benchmarks/bench_pinning.py [--repeats 3] [--iterations 10] [--unetr-iterations 3]
        [--threads 1] [--level x86-64-v3] [--shape Z Y X] [--no-onednn] [--config config/config.yaml]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCHMARKS))

from ccfv.reproducibility import DEFAULT_LEVEL, KNOB_VARIABLES, LEVELS  # noqa: E402  (imports no torch)

VARIANTS = ("unpinned", "pinned", "pinned_no_onednn")
PARTS = ("unet", "unetr", "sampling")


def child(args: argparse.Namespace) -> None:
    """One measurement in this fresh process; prints one JSON line."""
    if args.child != "unpinned":
        from ccfv.reproducibility import pin_cpu_numerics

        pin_cpu_numerics(args.threads, args.level, onednn=args.child != "pinned_no_onednn")
    import hashlib

    import bench_sampling
    import bench_training
    import numpy as np
    import torch
    import yaml

    from ccfv.bank import networks
    from ccfv.reproducibility import numerics_record

    torch.set_num_threads(args.threads)
    config = yaml.safe_load(args.config.read_text())
    network = config["network"]
    out: dict = {"variant": args.child, "seconds": {}}
    digest = hashlib.sha256()

    for name, architecture in bench_training.architectures(config):
        n = args.iterations if name == networks.UNET else args.unetr_iterations
        torch.manual_seed(0)
        model = networks.build(name, architecture, 1, 2, deep_supervision=name == networks.UNET)
        model.train()
        optimizer = torch.optim.SGD(model.parameters(), 1e-2, weight_decay=3e-5, momentum=0.99, nesterov=True)
        loss_fn, scales = bench_training.make_loss(name, network)
        g = torch.Generator().manual_seed(0)
        x = torch.randn(int(network["batch_size"]), 1, *network["patch_size"], generator=g)
        y = torch.randint(0, 2, (int(network["batch_size"]), 1, *network["patch_size"]), generator=g)
        if scales is not None:
            y = [torch.nn.functional.interpolate(y.float(), scale_factor=tuple(float(f) for f in s),
                                                 mode="nearest-exact").long() for s in scales]

        def step():
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 12)
            optimizer.step()

        step()  # warm-up: allocations, oneDNN's kernel generation
        start = time.perf_counter()
        for _ in range(n):
            step()
        out["seconds"][name] = time.perf_counter() - start
        for key, value in sorted(model.state_dict().items()):
            digest.update(key.encode())
            digest.update(value.detach().contiguous().numpy().tobytes())

    shape = tuple(args.shape) if args.shape else tuple(3 * p for p in network["patch_size"])
    sampling_config = {"network": network, "sampling": config["sampling"]}
    net = bench_sampling.build_network(network)
    image, seg = bench_sampling.make_image(shape), bench_sampling.make_seg(shape)
    bench_sampling.run_sampling(net, image, seg, sampling_config)  # warm-up
    start = time.perf_counter()
    _, _, samples = bench_sampling.run_sampling(net, image, seg, sampling_config)
    out["seconds"]["sampling"] = time.perf_counter() - start
    for arrays in [*samples.features, samples.probs]:  # per layer {key: [n_l, C_l]}, then {key: [n, K]}
        for key in sorted(arrays):
            digest.update(key.encode())
            digest.update(np.ascontiguousarray(arrays[key]).tobytes())
    out["digest"] = digest.hexdigest()
    record = numerics_record()
    out["capability"] = record["torch"]["cpu_capability"]
    out["threads"] = record["torch"]["num_threads"]
    out["deviations"] = record["deviations"]
    out["shape"] = list(shape)
    print(json.dumps(out), flush=True)


def run_child(args: argparse.Namespace, variant: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in KNOB_VARIABLES}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    command = [sys.executable, str(Path(__file__).resolve()), "--child", variant, "--config", str(args.config),
               "--iterations", str(args.iterations), "--unetr-iterations", str(args.unetr_iterations),
               "--threads", str(args.threads), "--level", args.level]
    if args.shape:
        command += ["--shape", *map(str, args.shape)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, cwd=ROOT)
    if result.returncode != 0:
        sys.exit(f"the {variant} child failed (exit status {result.returncode}):\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--config", type=Path, default=ROOT / "config" / "config.yaml")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--unetr-iterations", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--level", choices=sorted(LEVELS), default=DEFAULT_LEVEL)
    parser.add_argument("--shape", type=int, nargs=3, metavar=("Z", "Y", "X"),
                        help="sampling volume; default three patches per axis")
    parser.add_argument("--no-onednn", action="store_true", help="also measure the pin with oneDNN disabled")
    args = parser.parse_args()
    if min(args.repeats, args.iterations, args.unetr_iterations, args.threads) < 1:
        parser.error("--repeats, --iterations, --unetr-iterations and --threads must be at least 1")
    if not args.config.is_file():
        parser.error(f"{args.config}: no such config file")
    if args.child:
        child(args)
        return

    variants = ["unpinned", "pinned"] + (["pinned_no_onednn"] if args.no_onednn else [])
    load = os.getloadavg()
    print(f"load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} ({os.cpu_count()} CPUs); "
          f"{args.threads} thread(s), pin level {args.level}, config {args.config}", flush=True)
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    for round_ in range(args.repeats):
        for variant in variants if round_ % 2 == 0 else variants[::-1]:
            result = run_child(args, variant)
            runs[variant].append(result)
            parts = " ".join(f"{k}={v:.3f}s" for k, v in result["seconds"].items())
            print(f"  round {round_ + 1} {variant:16s} {result['capability']:7s} {parts} "
                  f"digest {result['digest'][:12]}", flush=True)
    for variant in variants[1:]:
        for result in runs[variant]:
            if result["deviations"]:
                sys.exit(f"a {variant} child departed from its pin: {result['deviations']}")

    parts = [p for p in PARTS if p in runs["unpinned"][0]["seconds"]]
    median = {v: {p: statistics.median(r["seconds"][p] for r in runs[v]) for p in parts} for v in variants}
    total = {v: sum(median[v].values()) for v in variants}
    print(f"\n{'part':10s} " + " ".join(f"{v:>17s}" for v in variants) + "   pinned/unpinned")
    for p in parts:
        print(f"{p:10s} " + " ".join(f"{median[v][p]:16.3f}s" for v in variants)
              + f"   {median['pinned'][p] / median['unpinned'][p]:.3f}")
    print(f"{'total':10s} " + " ".join(f"{total[v]:16.3f}s" for v in variants)
          + f"   {total['pinned'] / total['unpinned']:.3f}")
    identical = len({r["digest"] for r in runs["pinned"]}) == 1
    differs = identical and runs["pinned"][0]["digest"] not in {r["digest"] for r in runs["unpinned"]}
    print(f"pinned repeats give identical weights and features: {identical}; "
          f"pinned bits differ from unpinned ones: {differs}")
    load = os.getloadavg()
    print(f"load average at end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")

    figures = [f"unpinned_s={total['unpinned']:.3f}", f"pinned_s={total['pinned']:.3f}"]
    figures += [f"{p}_ratio={median['pinned'][p] / median['unpinned'][p]:.3f}" for p in parts]
    figures.append(f"pinned_repeats_identical={int(identical)}")
    if args.no_onednn:
        figures.append(f"no_onednn_time_ratio={total['pinned_no_onednn'] / total['unpinned']:.3f}")
    figures.append(f"pinned_time_ratio={total['pinned'] / total['unpinned']:.3f}")
    print(" ".join(figures))


if __name__ == "__main__":
    main()
