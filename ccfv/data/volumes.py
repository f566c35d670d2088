"""Reading a NIfTI volume for validation without trusting it: header and data errors become messages, voxels
are scanned in slabs (bounded memory), label values and non-finite voxels are counted (docs/validation.md)."""
from __future__ import annotations

import gzip
import logging
import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

_CHUNK_BYTES = 1 << 20  # gzip drain size
_SLAB_VOXELS = 1 << 22  # voxels per slab when scanning a volume (bounds temporary arrays to ~32 MB)
_BINCOUNT_LIMIT = 1 << 16  # integer labels in [0, this) are counted with bincount, others with unique


class Unreadable(Exception):
    pass


@dataclass
class Volume:
    data: np.ndarray  # unscaled, as stored
    slope: float
    inter: float
    affine: np.ndarray
    zooms: tuple[float, ...]  # header pixdim[1:4]: the spacing SimpleITK (and so nnU-Net) reports

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)


def _slabs(array: np.ndarray):
    """Views of ``array`` along its last axis, each about ``_SLAB_VOXELS`` voxels or one slice."""
    if array.ndim == 0 or array.size == 0:
        yield array
        return
    per_slice = max(1, array.size // array.shape[-1])
    step = max(1, _SLAB_VOXELS // per_slice)
    for start in range(0, array.shape[-1], step):
        yield array[..., start:start + step]


def _describe_read_error(err: BaseException) -> str:
    if isinstance(err, gzip.BadGzipFile):
        if "CRC" in str(err) or "length" in str(err):
            return f"is corrupt (gzip integrity check failed: {err})"
        return f"is not a readable gzip file ({err})"
    if isinstance(err, EOFError):
        return "is truncated (the gzip stream ends early)"
    if isinstance(err, zlib.error):
        return f"holds corrupt gzip data ({err})"
    text = str(err) or type(err).__name__
    return f"cannot be read as NIfTI ({type(err).__name__}: {text})"


def read_nifti(path: Path) -> Volume:
    """Read a whole ``.nii``/``.nii.gz`` once; for gzip also read to the end so that the CRC is checked."""
    try:
        if path.stat().st_size == 0:
            raise Unreadable("is empty (0 bytes)")
    except OSError as err:
        raise Unreadable(f"cannot be read ({err.strerror or err})") from None
    opener = gzip.open if path.name.endswith(".gz") else open
    nibabel_log = logging.getLogger("nibabel.global")  # silence nibabel's header-fixing chatter
    level = nibabel_log.level
    nibabel_log.setLevel(logging.CRITICAL)
    try:
        with opener(path, "rb") as handle:
            head = handle.read(4)
            sizes = {int.from_bytes(head, "little"), int.from_bytes(head, "big")} if len(head) == 4 else set()
            if 348 in sizes:
                image_class = nib.Nifti1Image
            elif 540 in sizes:
                image_class = nib.Nifti2Image
            else:
                raise Unreadable("is not a NIfTI file (the header does not start with the header size 348)")
            handle.seek(0)
            image = image_class.from_file_map(
                {"image": nib.FileHolder(filename=str(path), fileobj=handle)}, mmap=False)
            data = np.asarray(image.dataobj.get_unscaled())
            slope, inter = float(image.dataobj.slope), float(image.dataobj.inter)
            affine = np.asarray(image.affine, dtype=np.float64)
            while handle.read(_CHUNK_BYTES):  # gzip verifies CRC and length at the end of the stream
                pass
    except (MemoryError, Unreadable):
        raise
    except Exception as err:  # corrupt files raise anything from OSError to struct.error
        raise Unreadable(_describe_read_error(err)) from None
    finally:
        nibabel_log.setLevel(level)
    expected = tuple(int(n) for n in image.header.get_data_shape())
    if data.shape != expected:
        raise Unreadable(f"holds fewer voxels than its header's shape {expected}")
    zooms = tuple(float(z) for z in image.header.get_zooms()[:3])
    return Volume(data=data, slope=slope, inter=inter, affine=affine, zooms=zooms)


def count_nonfinite(array: np.ndarray) -> tuple[int, int, tuple | None, tuple | None]:
    """NaN count, Inf count and the first voxel index of each, scanning slab by slab."""
    nan_count = inf_count = 0
    first_nan = first_inf = None
    offset = 0
    for slab in _slabs(array):
        nan = np.isnan(slab)
        inf = np.isinf(slab)
        n_nan, n_inf = int(nan.sum()), int(inf.sum())
        if n_nan:
            nan_count += n_nan
            if first_nan is None:
                idx = np.argwhere(nan)[0]
                first_nan = tuple(int(i) for i in idx[:-1]) + (int(idx[-1]) + offset,)
        if n_inf:
            inf_count += n_inf
            if first_inf is None:
                idx = np.argwhere(inf)[0]
                first_inf = tuple(int(i) for i in idx[:-1]) + (int(idx[-1]) + offset,)
        offset += slab.shape[-1] if slab.ndim else 0
    return nan_count, inf_count, first_nan, first_inf


def scan_label_values(array: np.ndarray, slope: float = 1.0, inter: float = 0.0) -> tuple[set[int], int, int, list[float]]:
    """Whole-number values in a label volume (after ``slope``/``inter`` scaling, applied slab by slab),
    and the count of NaN/Inf and of non-integral voxels (with up to three example non-integral values)."""
    values: set[int] = set()
    counts = np.zeros(0, dtype=np.int64)
    nonfinite = nonintegral = 0
    examples: list[float] = []
    scaled = slope != 1.0 or inter != 0.0
    kind = "f" if scaled else array.dtype.kind
    for slab in _slabs(array):
        if scaled:
            slab = slab * slope + inter
        flat = slab.ravel(order="K")
        if flat.size == 0:
            continue
        if kind == "b":
            flat = flat.view(np.uint8)
        elif kind == "f":
            finite = np.isfinite(flat)
            whole = finite & (np.floor(flat) == flat)
            if not whole.all():
                nonfinite += int(flat.size - finite.sum())
                odd = flat[finite & ~whole]
                nonintegral += int(odd.size)
                for value in np.unique(odd[:1000]).tolist():
                    if len(examples) < 3 and value not in examples:
                        examples.append(value)
                flat = flat[whole]
                if flat.size == 0:
                    continue
            low, high = float(flat.min()), float(flat.max())
            if low < -(2.0 ** 53) or high > 2.0 ** 53:  # beyond exact int64
                values.update(int(v) for v in np.unique(flat).tolist())
                continue
            flat = flat.astype(np.int64)
        low, high = int(flat.min()), int(flat.max())
        if flat.dtype.kind == "u" and flat.dtype.itemsize >= 8 and high < _BINCOUNT_LIMIT:
            flat = flat.astype(np.int64)  # bincount refuses uint64
        if low >= 0 and high < _BINCOUNT_LIMIT:
            slab_counts = np.bincount(flat, minlength=max(high + 1, counts.size))
            if counts.size < slab_counts.size:
                counts = np.pad(counts, (0, slab_counts.size - counts.size))
            counts += slab_counts
        else:
            values.update(int(v) for v in np.unique(flat).tolist())
    values.update(int(v) for v in np.flatnonzero(counts))
    return values, nonfinite, nonintegral, examples
