"""Tiny material for the fine-tuning tests: an nnU-Net raw dataset whose classes an intensity threshold
tells apart (so that a few dozen iterations of a tiny network learn them), stored in LPS voxel order (so
that a model's reorientation and its inverse are exercised), and a tiny network with batch norm."""
from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from nibabel import orientations
from torch import nn

from ..models.conftest import brainchop_dir, hippodeep_weights  # noqa: F401  (the shared material; task04_dir: tests/conftest.py)

#: Voxel axes of the stored volumes: diag(-1, -1, 1) affines, as the synthetic MSD tasks store theirs.
SHAPE = (24, 24, 16)
PATCH = [16, 16, 16]


def write_raw_dataset(root: Path, n_cases: int = 8, seed: int = 0, name: str = "Dataset990_TinyBlobs") -> Path:
    """An nnU-Net v2 raw dataset: ``n_cases`` MR-like volumes of :data:`SHAPE` (1 mm, LPS) with a bright
    ball (label 1) and a dimmer box (label 2) at random places in a noisy background."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / name
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in SHAPE], indexing="ij"))
    for i in range(n_cases):
        label = np.zeros(SHAPE, dtype=np.uint8)
        centre = rng.integers([6, 6, 5], [18, 18, 11])
        label[((grid - centre[:, None, None, None]) ** 2).sum(0) <= 3.5 ** 2] = 1
        corner = rng.integers([2, 2, 2], [SHAPE[0] - 7, SHAPE[1] - 7, SHAPE[2] - 5])
        box = tuple(slice(c, c + w) for c, w in zip(corner, (5, 5, 3)))
        label[box] = np.where(label[box] == 0, 2, label[box])
        image = 100 + 10 * rng.standard_normal(SHAPE)
        image[label == 1] += 80
        image[label == 2] += 40
        nib.save(nib.Nifti1Image(image.astype(np.float32), affine), folder / "imagesTr" / f"blob_{i:03d}_0000.nii.gz")
        nib.save(nib.Nifti1Image(label, affine), folder / "labelsTr" / f"blob_{i:03d}.nii.gz")
    (folder / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "T1"}, "labels": {"background": 0, "ball": 1, "box": 2},
        "numTraining": n_cases, "file_ending": ".nii.gz"}))
    return folder


class RASPreprocessing:
    """A model's input convention for the tests: voxel axes reordered to RAS (flips of the LPS volumes),
    z-scored; ``restore`` undoes the reordering."""

    key = "tests-ras-zscore"

    def __call__(self, images, label):
        img = nib.load(str(images[0]))
        transform = orientations.ornt_transform(orientations.io_orientation(img.affine),
                                                orientations.axcodes2ornt(("R", "A", "S")))
        image = orientations.apply_orientation(np.asarray(img.dataobj, dtype=np.float32), transform)
        seg = orientations.apply_orientation(np.asarray(nib.load(str(label)).dataobj), transform)
        return ((image - image.mean()) / image.std())[None].astype(np.float32), np.rint(seg).astype(np.int16)

    def restore(self, prediction, images, label):
        from ccfv.models.meshnet import restore_orientation

        return restore_orientation(prediction, images[0], ("R", "A", "S"))


class TinyNet(nn.Module):
    """[B, 1, *patch] -> logits [B, classes, *patch]: conv, batch norm, two convs, a 1x1x1 head."""

    def __init__(self, classes: int = 5):
        super().__init__()
        self.enc = nn.Sequential(nn.Conv3d(1, 8, 3, padding=1), nn.BatchNorm3d(8), nn.ReLU())
        self.dec = nn.Sequential(nn.Conv3d(8, 8, 3, padding=1), nn.ReLU())
        self.head = nn.Conv3d(8, classes, 1)

    def forward(self, x):
        return self.head(self.dec(self.enc(x)))


def tiny_model(seed: int = 0, name: str = "tiny", preprocess=None):
    """A :class:`ccfv.TorchModel` of :class:`TinyNet` drawn from ``seed``, its batch norm carrying running
    statistics of a 'source' (mean 0.5, variance 2) that fine-tuning must keep."""
    from ccfv.models import TorchModel

    torch.manual_seed(seed)
    network = TinyNet()
    with torch.no_grad():
        network.enc[1].running_mean.fill_(0.5)
        network.enc[1].running_var.fill_(2.0)
    return TorchModel(name=name, network=network, layers=["enc", "dec"], preprocess=preprocess or RASPreprocessing(),
                      patch_size=PATCH, modalities=["T1"], preprocess_key="tests-ras-zscore", details={"head": "head"})


@pytest.fixture(scope="session")
def blobs(tmp_path_factory) -> Path:
    return write_raw_dataset(tmp_path_factory.mktemp("blobs"))
