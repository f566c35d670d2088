"""Checkpoints read without running code (``torch.load(weights_only=True)``), and the random-number states a
resume checkpoint carries so that a killed and resumed training ends with the same weights, bit for bit."""
from __future__ import annotations

import pickle
import random
from pathlib import Path

import numpy as np

#: The ``format`` entry of our resume checkpoints (nnU-Net's ``checkpoint_latest.pth``/``checkpoint_final.pth``).
CHECKPOINT_FORMAT = "ccfv-resume-1"


def plain_data(value):
    """numpy scalars/arrays inside nnU-Net's logging as Python numbers/lists (loadable without pickle globals)."""
    if isinstance(value, dict):
        return {k: plain_data(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_data(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def rng_state(device) -> dict:
    import torch

    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
    }
    if getattr(device, "type", str(device)) == "cuda":
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    import torch

    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _numpy_scalar_globals() -> list:
    """What unpickling numpy scalars (np.float64 in nnU-Net's logging lists) needs: the scalar constructor and
    the dtype classes. They build numbers from bytes and call nothing else."""
    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import scalar
    kinds = (np.float16, np.float32, np.float64, np.int8, np.int16, np.int32, np.int64, np.uint8, np.bool_)
    return [scalar, np.dtype, *{type(np.dtype(k)) for k in kinds}]


def read_checkpoint(path: Path, numpy_scalars: bool = False) -> dict:
    """A ``.pth``/``.pt`` checkpoint read with ``torch.load(weights_only=True)``: tensors, numbers, strings,
    lists, dicts and ``torch.device`` only. Anything else (a pickled object, which could run code when
    loaded) is refused with an error naming the file, and nothing of it is executed.

    ``numpy_scalars=True`` also admits numpy scalars, which nnU-Net's own checkpoints hold in their logging
    (``checkpoint_final.pth`` of a user's nnU-Net folder); ccfv's resume checkpoints do not need it.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing")
    try:
        if numpy_scalars:
            with torch.serialization.safe_globals(_numpy_scalar_globals()):
                return torch.load(path, map_location="cpu", weights_only=True)
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # torch names the refused global ("Unsupported global: GLOBAL x.y" or "unsupported GLOBAL x.y whose
        # module x is blocked", by version) after a generic first line.
        found = [line.strip() for line in str(err).splitlines()[1:] if "global" in line.lower()]
        detail = found[0] if found else (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ValueError(f"{path}: refused: the checkpoint holds more than tensors and plain data "
                         f"(a pickle payload that could run code); it was not loaded ({detail})") from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise ValueError(f"{path}: not a readable torch checkpoint ({err})") from None
