"""Figures of the real released models (ccfv.models.meshnet, ccfv.models.hippodeep) on this machine.

Needs the shared material (``--shared``, default ``$CCFV_SHARED``, else ``<repo>/../shared``):
models/brainchop (six MeshNet folders, t1_crop.nii.gz), models/hippodeep/hippodeep.pt and
data/Task04_Hippocampus. Every model is loaded with ``ccfv.models.load_model`` as ``ccfv rank`` loads it.

* load: seconds of ``load_model`` (reading, parsing, strict weight loading, checksum), median of
  ``--repeats`` after one untimed load.
* window: seconds per window of a forward pass at the model's default patch in batches of 2 (the
  sampler's default ``batch_size``), under ``torch.inference_mode`` on the CPU with ``--threads`` threads:
  median of ``--repeats`` batches after one warm-up, divided by 2. Inputs are seeded noise (the cost does
  not depend on the values).
* dice: zero-shot hippocampus Dice on the first ``--cases`` Task04 cases (sorted by name), each
  preprocessed by the model's own ``preprocess``, zero-padded to the patch as the sampler pads it
  (``ccfv.features.windows.pad_to_patch``; every case fits one window), argmax of one forward pass. Hippocampus:
  labels 1 + 2 of the target; the model's class named ``Hippocampus`` (or Left- and Right-Hippocampus),
  hippodeep's class 1. Mean over cases. hippodeep also with its other orientation (LAS), to show why RAS is
  its default here. Models without a hippocampus class (model5_gw_ae, mindgrab) have none.
* context (``--context``): model18cls on brainchop's example head. Reference: its labels on a 128 x 112 x
  128 region around both hippocampi; then crops of the right hippocampus's bounding box plus ``m`` voxels
  of real anatomy on every side (m = 8, 16, 20, 24), each alone (zero padding beyond): Dice of the crop's
  hippocampus against the reference's, and the seconds of that forward pass.

The machine's load average (/proc/loadavg, 1 minute) is printed before and after. The last line is
``key=value`` pairs: ``load_before``, ``load_after``, and per model ``<name>_load_s``, ``<name>_window_s``,
``<name>_dice`` (``nan`` without a hippocampus class), ``hippodeep_LAS_dice``, and with ``--context``
``context_<m>_dice``, all with 3 decimals (5 for seconds below 0.1).

    .venv/bin/python benchmarks/bench_real_models.py [--shared PATH] [--threads 1] [--repeats 3] [--cases 20]
                                                     [--context] [--models model18cls hippodeep ...]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MESHNETS = ["model5_gw_ae", "model18cls", "model30chan18cls", "model21_104class", "model30chan50cls", "mindgrab"]
MODELS = MESHNETS + ["hippodeep"]
#: model18cls's right hippocampus in t1_crop.nii.gz (LIA voxels, bounding box of its largest Hippocampus
#: component on the reference region, first and last voxel): tests/models/test_meshnet.py uses m = 20.
RIGHT_HIPPOCAMPUS = ((92, 133, 94), (117, 161, 132))
REFERENCE_REGION = (slice(64, 192), slice(72, 184), slice(56, 184))
MARGINS = (8, 16, 20, 24)


def loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def model_path(shared: Path, name: str) -> Path:
    return shared / "models" / "hippodeep" / "hippodeep.pt" if name == "hippodeep" else \
        shared / "models" / "brainchop" / name


def hippocampus_classes(model) -> list[int]:
    if model.kind == "hippodeep":
        return [1]
    names = model.details.get("classes") or []
    return [i for i, n in enumerate(names) if n in ("Hippocampus", "Left-Hippocampus", "Right-Hippocampus")]


def seconds_per_window(network, patch, channels: int, repeats: int) -> float:
    import torch

    x = torch.from_numpy(np.random.default_rng(0).random((2, channels, *patch), dtype=np.float32))
    times = []
    with torch.inference_mode():
        network(x)
        for _ in range(repeats):
            start = time.perf_counter()
            network(x)
            times.append(time.perf_counter() - start)
    return statistics.median(times) / 2


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return float(2 * (a & b).sum() / total) if total else float("nan")


def zero_shot_dice(model, cases: list[Path], task: Path) -> float:
    import torch

    from ccfv.features.windows import pad_to_patch

    classes = hippocampus_classes(model)
    if not classes:
        return float("nan")
    scores = []
    for image_file in cases:
        image, seg = model.preprocess([image_file], task / "labelsTr" / image_file.name)
        padded, offset = pad_to_patch(image, model.patch_size)
        if tuple(padded.shape[1:]) != tuple(model.patch_size):
            raise SystemExit(f"{image_file}: {image.shape[1:]} does not fit one window {model.patch_size}")
        with torch.inference_mode():
            labels = model.network(torch.from_numpy(padded)[None])[0].argmax(0).numpy()
        labels = labels[tuple(slice(o, o + s) for o, s in zip(offset, image.shape[1:]))]
        scores.append(dice(np.isin(labels, classes), seg > 0))
    return float(np.mean(scores))


def context_experiment(shared: Path) -> dict[int, tuple[float, float, int]]:
    """{margin: (Dice against the reference, seconds, crop voxels)}."""
    import nibabel as nib
    import torch
    from scipy import ndimage

    from ccfv.models import load_model
    from ccfv.models.meshnet import PERCENTILES, scale_to_unit

    head = np.asarray(nib.load(shared / "models" / "brainchop" / "t1_crop.nii.gz").dataobj).astype(np.float32)
    model = load_model("model18cls", shared / "models" / "brainchop" / "model18cls")
    hippocampus = model.details["classes"].index("Hippocampus")

    def labels_of(volume):
        x = torch.from_numpy(scale_to_unit(volume, PERCENTILES, Path("t1_crop")))[None, None]
        with torch.inference_mode():
            return model.network(x)[0].argmax(0).numpy()

    reference = np.zeros(head.shape, bool)
    reference[REFERENCE_REGION] = labels_of(head[REFERENCE_REGION]) == hippocampus
    components, _ = ndimage.label(reference)
    first, last = RIGHT_HIPPOCAMPUS
    right = components == components[tuple((np.array(first) + last) // 2)]
    if not right.any():
        raise SystemExit("the reference region has no hippocampus at the expected place")
    out = {}
    for margin in MARGINS:
        box = tuple(slice(f - margin, l + margin + 1) for f, l in zip(first, last))
        start = time.perf_counter()
        labels = labels_of(head[box])
        seconds = time.perf_counter() - start
        out[margin] = (dice(labels == hippocampus, right[box]), seconds, int(np.prod(labels.shape)))
    return out


def fmt(value: float, key: str = "_s") -> str:
    """3 decimals; 5 for seconds (a key ending in ``_s``) below 0.1."""
    if value != value:
        return "nan"
    return f"{value:.5f}" if key.endswith("_s") and abs(value) < 0.1 else f"{value:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_shared = os.environ.get("CCFV_SHARED") or str(ROOT.parent / "shared")
    parser.add_argument("--shared", type=Path, default=Path(default_shared))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cases", type=int, default=20)
    parser.add_argument("--context", action="store_true")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=MODELS)
    args = parser.parse_args()
    if args.repeats < 1 or args.cases < 1 or args.threads < 1:
        parser.error("--repeats, --cases and --threads must be positive")
    task = args.shared / "data" / "Task04_Hippocampus"
    for path in [task] + [model_path(args.shared, m) for m in args.models]:
        if not path.exists():
            parser.error(f"{path}: missing (--shared {args.shared})")

    import torch

    from ccfv.models import load_model
    from ccfv.models.hippodeep import HippodeepPreprocessing

    torch.set_num_threads(args.threads)
    figures = {"load_before": loadavg()}
    print(f"load average before: {figures['load_before']}; torch {torch.__version__}, {args.threads} thread(s), "
          f"{os.cpu_count()} CPUs")
    cases = sorted((task / "imagesTr").glob("hippocampus_*.nii.gz"))[:args.cases]
    for name in args.models:
        path = model_path(args.shared, name)
        load_model(name, path)
        load_times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            model = load_model(name, path)
            load_times.append(time.perf_counter() - start)
        figures[f"{name}_load_s"] = statistics.median(load_times)
        figures[f"{name}_window_s"] = seconds_per_window(model.network, model.patch_size, model.num_input_channels,
                                                         args.repeats)
        figures[f"{name}_dice"] = zero_shot_dice(model, cases, task)
        print(f"{name}: load {fmt(figures[f'{name}_load_s'])} s, {fmt(figures[f'{name}_window_s'])} s per window "
              f"{model.patch_size}, zero-shot hippocampus Dice {fmt(figures[f'{name}_dice'], 'dice')} on {len(cases)} "
              f"case(s), hooked {model.layers}")
        if name == "hippodeep":
            model.preprocess = HippodeepPreprocessing(("L", "A", "S"))
            figures["hippodeep_LAS_dice"] = zero_shot_dice(model, cases, task)
            print(f"hippodeep with LAS axes: Dice {fmt(figures['hippodeep_LAS_dice'], 'dice')}")
    if args.context:
        for margin, (value, seconds, voxels) in context_experiment(args.shared).items():
            figures[f"context_{margin}_dice"] = value
            print(f"model18cls on t1_crop, right hippocampus box + {margin} voxels ({voxels} voxels): Dice "
                  f"{fmt(value, 'dice')} against the 128 x 112 x 128 reference, {seconds:.2f} s")
    figures["load_after"] = loadavg()
    print(f"load average after: {figures['load_after']}")
    print(" ".join(f"{k}={fmt(v, k)}" for k, v in figures.items()))


if __name__ == "__main__":
    main()
