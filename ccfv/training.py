"""Pretraining and fine-tuning U-Nets through nnU-Net v2's own trainer, and the model bank's file format.

A bank model is a folder with ``weights.safetensors`` (tensors only: loading it can never run code) and
``model.json`` (what network to build: nnU-Net's architecture entry of the shared plans, the number of input
channels and classes, the source task). Pretraining and fine-tuning both run ``nnUNetTrainer`` (subclassed
only to take the iteration budget, the seed and our recorded split); fine-tuning starts from a bank model
with every weight but the segmentation heads (``.seg_layers.``, the final 1x1x1 convolutions) transferred
and nothing frozen, as in the paper; the heads start from nnU-Net's initialisation or at zero
(``TrainingBudget.head_init``).

Resuming (docs/models.md): ``train`` keeps nnU-Net's work folder in a stable place outside the Snakemake
output, writes a checkpoint after every epoch (network, optimizer, logging, the epoch, and the torch, numpy
and Python random states, in a form ``torch.load(weights_only=True)`` reads) and, when started again with
the same identity (budget, seed, dataset, plans, split, initial model), continues from it. On the CPU with
the in-process data loader a killed-and-resumed run ends with the same weights, bit for bit, as one that
was never interrupted. Every checkpoint is read with ``weights_only=True``: a pickle payload is refused.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
import random
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from . import networks
from .checksums import sha256_file
from .nnunet_paths import CONFIGURATION, PLANS_NAME, nnunet_environment
from .splits import read_split

WEIGHTS = "weights.safetensors"
MODEL_CARD = "model.json"
#: State-dict keys that are not transferred from a source model: nnU-Net's segmentation heads.
HEAD_KEY = ".seg_layers."
#: The ``format`` entry of our resume checkpoints (nnU-Net's ``checkpoint_latest.pth``/``checkpoint_final.pth``).
CHECKPOINT_FORMAT = "ccfv-resume-1"


AUGMENTATIONS = ("nnunet", "none")
HEAD_INITS = ("random", "zero")


@dataclass(frozen=True)
class TrainingBudget:
    """How long to train. ``iterations`` is the paper's unit (250k pretraining, 100k fine-tuning)."""

    iterations: int
    iterations_per_epoch: int = 250
    val_iterations_per_epoch: int = 50
    learning_rate: float = 1e-2
    #: "nnunet": nnU-Net's default data augmentation (the paper's setting). "none": nnU-Net's own
    #: nnUNetTrainerNoDA transforms (no spatial or intensity augmentation, no mirroring), for budgets of a few
    #: hundred iterations, where augmentation only slows learning down (docs/models.md).
    augmentation: str = "nnunet"
    #: Iterations after which the network's weights are also kept (pretraining only): each becomes an extra
    #: bank member ``<model>@<iteration>`` (issue 4's training snapshots; docs/models.md). Empty: none.
    snapshots: tuple[int, ...] = ()
    #: Patches per training iteration; None: the plans' (the config's ``network.batch_size``). A larger
    #: fine-tuning batch averages out more of the patch sampling's noise per step (docs/models.md).
    batch_size: int | None = None
    #: Fine-tuning only: how the target's fresh segmentation heads start. "random": nnU-Net's initialisation,
    #: drawn from the fine-tuning seed. "zero": weights and biases zero (as Big Transfer fine-tunes,
    #: Kolesnikov et al., ECCV 2020), so every seed starts the same network and seeds differ only in the
    #: patches drawn: the ground truth then measures the source, not the head's draw (docs/models.md).
    head_init: str = "random"

    def __post_init__(self) -> None:
        if self.head_init not in HEAD_INITS:
            raise ValueError(f"head_init must be one of {HEAD_INITS}, got {self.head_init!r}")
        if self.batch_size is not None and (isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int)
                                            or self.batch_size < 1):
            raise ValueError(f"batch_size must be a positive integer or None, got {self.batch_size!r}")
        if self.augmentation not in AUGMENTATIONS:
            raise ValueError(f"augmentation must be one of {AUGMENTATIONS}, got {self.augmentation!r}")
        snapshots = tuple(self.snapshots)
        bad = [s for s in snapshots if isinstance(s, bool) or not isinstance(s, int) or not 0 < s < self.iterations]
        if bad or len(set(snapshots)) != len(snapshots):
            raise ValueError(f"snapshots must be distinct iterations between 1 and {self.iterations - 1} "
                             f"(iterations is {self.iterations}); got {list(snapshots)}")
        object.__setattr__(self, "snapshots", tuple(sorted(snapshots)))

    def identity(self) -> dict:
        """The budget as resume identity; without ``snapshots`` when there are none, without ``batch_size``
        when it is the plans' and without ``head_init`` when it is "random", so that checkpoints of runs
        before these options existed stay resumable."""
        out = asdict(self)
        if self.batch_size is None:
            del out["batch_size"]
        if self.head_init == "random":
            del out["head_init"]
        if not self.snapshots:
            del out["snapshots"]
        else:
            out["snapshots"] = list(self.snapshots)
        return out

    @property
    def epochs(self) -> int:
        return max(1, math.ceil(self.iterations / self.iterations_per_epoch))


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(device: str = "auto"):
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


def _trainer_class(augmentation: str = "nnunet"):
    """nnUNetTrainer with our budget and split; defined lazily so importing ccfv does not import nnU-Net.

    ``augmentation="none"`` derives from nnU-Net's own ``nnUNetTrainerNoDA`` instead (same training, its
    validation transforms used for training, no mirroring).
    """
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    if augmentation == "none":
        from nnunetv2.training.nnUNetTrainer.variants.data_augmentation.nnUNetTrainerNoDA import nnUNetTrainerNoDA
        base = nnUNetTrainerNoDA
    else:
        base = nnUNetTrainer

    class CCFVTrainer(base):
        """nnU-Net's default trainer with three changes and nothing else.

        - The iteration budget comes from the workflow config instead of 1000 x 250.
        - The split is ours (``results/splits/<task>.json``): training uses the training cases only, and
          nnU-Net's per-epoch validation (which only logs a pseudo Dice; the final model is used, not the
          best one) runs on a few training cases so that the held-out cases are never seen.
        - No final validation with 8-fold mirroring: Dice is computed separately on the held-out split.
        """

        split_file: Path | None = None
        #: The network to train: ``("unet", None)`` builds the plans' U-Net; ``("unetr", architecture entry)``
        #: a UNETR on the plans' patch size (no deep supervision; see ccfv/networks.py).
        network_spec: tuple[str, dict | None] = (networks.UNET, None)
        #: What a checkpoint must have been written by to be resumed from (see ``train``).
        resume_identity: dict | None = None
        #: Seconds between redraws of nnU-Net's progress.png. Drawing it takes about a second (matplotlib,
        #: seaborn), which nnU-Net spends after every epoch: most of a demo epoch. A long run still gets a
        #: fresh plot in its work folder every few minutes to watch.
        progress_plot_interval: float = 300.0
        #: Iterations (1-based, counted over the whole run) after which the weights are kept as a snapshot.
        snapshot_iterations: tuple[int, ...] = ()
        _rng_to_restore: dict | None = None
        _iteration: int = 0

        def do_split(self):
            split = read_split(self.split_file)
            train = list(split["train"])
            return train, train[: max(1, min(2, len(train)))]

        def plot_network_architecture(self):  # needs hiddenlayer/graphviz binaries; irrelevant here
            pass

        def build_network_architecture(self, plans_manager, configuration_manager, num_input_channels,
                                       num_output_channels, enable_deep_supervision=True):
            name, architecture = self.network_spec
            if name == networks.UNET:
                return nnUNetTrainer.build_network_architecture(
                    plans_manager, configuration_manager, num_input_channels, num_output_channels,
                    enable_deep_supervision)
            return networks.build(name, architecture, num_input_channels, num_output_channels)

        def set_deep_supervision_enabled(self, enabled: bool):
            if self.network_spec[0] == networks.UNET:
                super().set_deep_supervision_enabled(enabled)
            elif enabled:
                raise ValueError(f"{self.network_spec[0]} has no deep supervision")

        def save_checkpoint(self, filename: str) -> None:
            """nnU-Net's checkpoint contents, made loadable with ``weights_only=True``, plus the RNG states.

            Called by nnU-Net at the end of an epoch (``checkpoint_latest.pth``, after the epoch's last
            use of any random number generator) and after training (``checkpoint_final.pth``). The "best"
            checkpoint is skipped: we use the final model. Written atomically, so a kill mid-write leaves
            the previous checkpoint.
            """
            import torch

            if Path(filename).name == "checkpoint_best.pth":
                return
            network = bare_network(self.network)
            checkpoint = {
                "format": CHECKPOINT_FORMAT,
                "identity": json.dumps(self.resume_identity, sort_keys=True),
                "network_weights": network.state_dict(),
                "optimizer_state": self.optimizer.state_dict(),
                "grad_scaler_state": self.grad_scaler.state_dict() if self.grad_scaler is not None else None,
                "logging": _plain(self.logger.get_checkpoint()),
                "_best_ema": _plain(self._best_ema),
                "current_epoch": self.current_epoch + 1,
                "trainer_name": type(self).__name__,
                "rng": _rng_state(self.device),
            }
            scratch = Path(f"{filename}.partial")
            torch.save(checkpoint, scratch)
            os.replace(scratch, filename)

        def load_resume_checkpoint(self, checkpoint: dict) -> None:
            """Restore what ``save_checkpoint`` wrote; the RNG states are restored when training starts
            (after nnU-Net has built its data loaders, which draw a first batch)."""
            network = bare_network(self.network)
            network.load_state_dict(checkpoint["network_weights"])
            self.optimizer.load_state_dict(checkpoint["optimizer_state"])
            if self.grad_scaler is not None and checkpoint["grad_scaler_state"] is not None:
                self.grad_scaler.load_state_dict(checkpoint["grad_scaler_state"])
            self.logger.load_checkpoint(checkpoint["logging"])
            self._best_ema = checkpoint["_best_ema"]
            self.current_epoch = int(checkpoint["current_epoch"])
            self._rng_to_restore = checkpoint["rng"]

        def on_train_start(self):
            super().on_train_start()
            self._throttle_progress_plot()
            # After a resume current_epoch is the first epoch still to run.
            self._iteration = self.current_epoch * self.num_iterations_per_epoch
            if self._rng_to_restore is not None:
                _set_rng_state(self._rng_to_restore)
                self._rng_to_restore = None

        def train_step(self, batch: dict) -> dict:
            result = super().train_step(batch)
            self._iteration += 1
            if self._iteration in self.snapshot_iterations:
                self.save_snapshot(self._iteration)
            return result

        def save_snapshot(self, iteration: int) -> Path:
            """Keep the network's weights after ``iteration`` training iterations, atomically, in the work
            folder (which outlives a killed job; a resumed run recomputes a snapshot of its unfinished epoch
            identically and overwrites it)."""
            import torch

            network = bare_network(self.network)
            path = snapshot_path(Path(self.output_folder), iteration)
            path.parent.mkdir(parents=True, exist_ok=True)
            scratch = path.with_name(path.name + ".partial")
            torch.save(network.state_dict(), scratch)
            os.replace(scratch, path)
            return path

        def _throttle_progress_plot(self):
            draw = self.logger.plot_progress_png
            last = [time.monotonic()]

            def draw_now_and_then(output_folder):
                if time.monotonic() - last[0] >= self.progress_plot_interval:
                    draw(output_folder)
                    last[0] = time.monotonic()

            self.logger.plot_progress_png = draw_now_and_then

    return CCFVTrainer


def _plain(value):
    """numpy scalars/arrays inside nnU-Net's logging as Python numbers/lists (loadable without pickle globals)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _rng_state(device) -> dict:
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


def _set_rng_state(state: dict) -> None:
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


def _load_plans_and_dataset(preprocessed_dataset: Path) -> tuple[dict, dict]:
    plans = json.loads((preprocessed_dataset / f"{PLANS_NAME}.json").read_text())
    dataset_json = json.loads((preprocessed_dataset / "dataset.json").read_text())
    return plans, dataset_json


# The bank's file format is read in ccfv/models/bank.py (one module per model format); these names stay
# importable from here for the training code below and its callers.
from .models.bank import build_network, load_bank_model, read_model_card  # noqa: E402


def bare_network(network):
    """The network itself, under the wrappers nnU-Net may put around it: DDP's ``module`` (multi-GPU runs) and
    torch.compile's ``_orig_mod`` (CUDA runs), whose state-dict keys carry those prefixes."""
    network = getattr(network, "module", network)
    return getattr(network, "_orig_mod", network)


def transfer_weights(network, source_state: dict, source_name: str, zero_heads: bool = False) -> list[str]:
    """Load every parameter of ``source_state`` into ``network`` except the segmentation heads.

    Every non-head key of the network must be present in the source with the same shape; any
    mismatch is an error listing the offending keys (never silently random weights). Returns the
    names of the head tensors, which keep their fresh initialisation, or are set to zero with
    ``zero_heads`` (``TrainingBudget.head_init="zero"``).
    """
    network = bare_network(network)
    own = network.state_dict()
    missing = [k for k in own if not networks.is_head(k) and k not in source_state]
    mismatched = [
        f"{k}: {tuple(source_state[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if not networks.is_head(k) and k in source_state and source_state[k].shape != v.shape
    ]
    if missing or mismatched:
        raise ValueError(
            f"{source_name}: cannot initialise the target network from it: "
            f"{len(missing)} keys missing {missing[:10]}, {len(mismatched)} shapes differ {mismatched[:10]}"
        )
    kept = [k for k in own if networks.is_head(k)]
    own.update({k: v for k, v in source_state.items() if k in own and not networks.is_head(k)})
    if zero_heads:
        own.update({k: own[k].new_zeros(own[k].shape) for k in kept})
    network.load_state_dict(own)
    return kept


def save_bank_model(network, card: dict, out_dir: Path) -> Path:
    """Write weights and card into ``out_dir`` atomically (a scratch folder renamed into place)."""
    from safetensors.torch import save_model

    import torch

    out_dir = Path(out_dir)
    broken = [k for k, v in network.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if broken:
        raise ValueError(f"{card['model_id']}: training produced non-finite weights ({broken[:5]}); "
                         f"nothing written to {out_dir}")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}-"))
    try:
        # save_model stores tensors that nnU-Net aliases (the encoder is reachable as ``decoder.encoder``)
        # once; load_model restores the aliases.
        save_model(network, str(scratch / WEIGHTS))
        (scratch / MODEL_CARD).write_text(json.dumps(card, indent=2))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        scratch.rename(out_dir)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return out_dir


def network_spec(plans: dict, network: str = networks.UNET, options: dict | None = None) -> tuple[str, dict]:
    """(network name, architecture entry) of a bank network on the shared plans: the plans' own U-Net, or
    a UNETR whose img_size is the plans' patch size (``options``: its config section)."""
    conf = plans["configurations"][CONFIGURATION]
    if network == networks.UNET:
        return network, conf["architecture"]
    if network == networks.UNETR:
        return network, networks.unetr_architecture(conf["patch_size"], options)
    raise ValueError(f"unknown network {network!r}; known: {list(networks.ARCHITECTURES)}")


def _card(model_id: str, plans: dict, dataset_json: dict, source_task: str | None,
          spec: tuple[str, dict] | None = None, **extra) -> dict:
    conf = plans["configurations"][CONFIGURATION]
    name, architecture = spec or network_spec(plans)
    return {
        "model_id": model_id,
        "architecture": architecture,
        "network": name,
        "patch_size": list(conf["patch_size"]),
        "num_input_channels": len(dataset_json["channel_names"]),
        "num_classes": len(dataset_json["labels"]),
        "labels": dataset_json["labels"],
        "source_task": source_task,
        **extra,
    }


def random_model(preprocessed_dataset: Path, model_id: str, out_dir: Path, seed: int,
                 network: str = networks.UNET, network_options: dict | None = None) -> Path:
    """The bank's randomly initialised member: the network's own initialisation, seeded, never trained."""
    plans, dataset_json = _load_plans_and_dataset(Path(preprocessed_dataset))
    spec = network_spec(plans, network, network_options)
    card = _card(model_id, plans, dataset_json, source_task=None, spec=spec, seed=seed, iterations=0)
    seed_everything(seed)
    network = build_network(card, deep_supervision=False)
    return save_bank_model(network, card, out_dir)


def snapshot_path(output_folder: Path, iteration: int) -> Path:
    """Where training keeps the weights of the snapshot after ``iteration`` iterations (a state dict)."""
    return Path(output_folder) / "snapshots" / f"iteration_{iteration}.pth"


def snapshot_model_id(model_id: str, iteration: int) -> str:
    """``unet-Task91_SynthLiver@150``: the bank id of ``model_id``'s snapshot after 150 iterations."""
    return f"{model_id}@{iteration}"


def _resume_identity(preprocessed_dataset: Path, plans: dict, split_file: Path, budget: TrainingBudget,
                     seed: int, init_model: Path | None) -> dict:
    """Everything a checkpoint's training depends on: a checkpoint of another identity is not resumed."""
    conf = plans["configurations"][CONFIGURATION]
    return {
        "format": CHECKPOINT_FORMAT,
        "dataset": Path(preprocessed_dataset).name,
        "configuration": hashlib.sha256(json.dumps(conf, sort_keys=True).encode()).hexdigest(),
        "split": sha256_file(split_file),
        "budget": budget.identity(),
        "seed": seed,
        "init_model": None if init_model is None else sha256_file(Path(init_model) / WEIGHTS),
    }


def _resumable_checkpoint(output_folder: Path, identity: dict) -> tuple[Path | None, dict | None]:
    """(path, checkpoint) of the newest checkpoint in nnU-Net's output folder when it was written by a run
    of the same identity; otherwise (None, None), after saying why in the log and removing the stale files."""
    for name in ("checkpoint_final.pth", "checkpoint_latest.pth"):
        path = output_folder / name
        if not path.is_file():
            continue
        try:
            checkpoint = read_checkpoint(path)
        except ValueError as err:
            print(f"ccfv: not resuming: {err}; starting from scratch", flush=True)
            break
        if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
            print(f"ccfv: not resuming: {path} is not a ccfv resume checkpoint; starting from scratch", flush=True)
            break
        if checkpoint.get("identity") != json.dumps(identity, sort_keys=True):
            print(f"ccfv: not resuming: {path} was written by a run with other settings "
                  f"(was {checkpoint.get('identity')}, now {json.dumps(identity, sort_keys=True)}); "
                  "starting from scratch", flush=True)
            break
        return path, checkpoint
    for stale in output_folder.glob("checkpoint_*.pth*") if output_folder.is_dir() else ():
        stale.unlink()
    shutil.rmtree(output_folder / "snapshots", ignore_errors=True)  # another run's, or a partial one's
    return None, None


def train(preprocessed_dataset: Path, split_file: Path, work_dir: Path, budget: TrainingBudget, seed: int,
          init_model: Path | None = None, device: str = "auto", threads: int = 1,
          spec: tuple[str, dict] | None = None):
    """Run nnU-Net's trainer on the training split of one preprocessed dataset; return the trainer.

    nnU-Net's own outputs (log, progress plot, checkpoints) go to ``work_dir``, which should outlive a
    killed job (not inside a Snakemake output, which Snakemake deletes before a rerun). A checkpoint is
    written after every epoch; if ``work_dir`` holds one of a run with the same identity (budget, seed,
    dataset, plans configuration, split, initial model weights), training continues from it. With
    ``init_model`` the network starts from that bank model's weights, heads excepted (see
    ``transfer_weights``) and has that model's architecture; otherwise ``spec`` (see ``network_spec``; the
    plans' U-Net by default). ``trainer.resumed_from_epoch`` is the epoch training restarted at (0: fresh).
    """
    import torch

    preprocessed_dataset, work_dir = Path(preprocessed_dataset), Path(work_dir)
    if init_model is None and budget.head_init != "random":
        raise ValueError(f"head_init={budget.head_init!r} is for fine-tuning (a network started from a bank "
                         "model); a network trained from scratch keeps nnU-Net's initialisation")
    torch.set_num_threads(threads)
    seed_everything(seed)
    plans, dataset_json = _load_plans_and_dataset(preprocessed_dataset)
    if budget.batch_size is not None:
        # nnU-Net's trainer reads its batch size from the plans' configuration; this copy is this job's only
        plans["configurations"][CONFIGURATION]["batch_size"] = budget.batch_size
    if init_model is not None:
        card = read_model_card(init_model)
        spec = (card.get("network", networks.UNET), card["architecture"])
    spec = spec or network_spec(plans)
    identity = _resume_identity(preprocessed_dataset, plans, split_file, budget, seed, init_model)
    identity["network"] = list(spec)
    plans["continue_training"] = False  # nnU-Net's run_training sets this key; its trainer pops it
    with nnunet_environment(preprocessed=preprocessed_dataset.parent, results=work_dir, n_proc=1, n_proc_da=0):
        trainer_cls = _trainer_class(budget.augmentation)
        trainer_cls.split_file = Path(split_file)
        trainer_cls.network_spec = spec
        trainer_cls.snapshot_iterations = budget.snapshots
        trainer = trainer_cls(plans=plans, configuration=CONFIGURATION, fold=0, dataset_json=dataset_json,
                              device=pick_device(device))
        trainer.resume_identity = identity
        trainer.num_iterations_per_epoch = min(budget.iterations, budget.iterations_per_epoch)
        trainer.num_epochs = budget.epochs
        trainer.num_val_iterations_per_epoch = budget.val_iterations_per_epoch
        trainer.initial_lr = budget.learning_rate
        trainer.save_every = 1  # epochs are minutes at most; a kill loses at most one
        trainer.enable_deep_supervision = spec[0] == networks.UNET
        trainer.initialize()
        if init_model is not None:
            source, _ = load_bank_model(init_model)
            transfer_weights(trainer.network, source.state_dict(), str(Path(init_model) / WEIGHTS),
                             zero_heads=budget.head_init == "zero")
            # The optimizer was built on the same parameter objects, so it sees the loaded values.
        path, checkpoint = _resumable_checkpoint(Path(trainer.output_folder), identity)
        trainer.resumed_from_epoch = 0
        if checkpoint is not None:
            trainer.load_resume_checkpoint(checkpoint)
            trainer.resumed_from_epoch = trainer.current_epoch
            message = (f"ccfv: resuming from {path} at epoch {trainer.current_epoch} of {trainer.num_epochs}")
            print(message, flush=True)
            trainer.print_to_log_file(message)
        trainer.run_training()
    return trainer


def pretrain(preprocessed_dataset: Path, split_file: Path, source_task: str, model_id: str, out_dir: Path,
             budget: TrainingBudget, seed: int, device: str = "auto", threads: int = 1,
             network: str = networks.UNET, network_options: dict | None = None,
             snapshot_dirs: dict[int, Path] | None = None) -> Path:
    """Pretrain a network (``unet`` or ``unetr``) on a source task and write the result into the model bank.

    With ``budget.snapshots``, the weights after each of those iterations become bank members too:
    ``snapshot_dirs`` maps every snapshot iteration to its bank folder (default: ``<out_dir>@<iteration>``
    beside ``out_dir``), and each card says ``iterations`` (the snapshot's) and ``snapshot_of`` (the final
    model's id). Raises ValueError when ``snapshot_dirs`` does not name exactly ``budget.snapshots``.
    """
    out_dir = Path(out_dir)
    if snapshot_dirs is None:
        snapshot_dirs = {i: out_dir.with_name(snapshot_model_id(out_dir.name, i)) for i in budget.snapshots}
    snapshot_dirs = {int(i): Path(d) for i, d in snapshot_dirs.items()}
    if sorted(snapshot_dirs) != list(budget.snapshots):
        raise ValueError(f"{model_id}: snapshot folders are given for iterations {sorted(snapshot_dirs)}, "
                         f"the budget's snapshots are {list(budget.snapshots)}")
    work = out_dir.parent / f".{out_dir.name}-nnunet"  # outside the output: kept for resuming
    plans, dataset_json = _load_plans_and_dataset(Path(preprocessed_dataset))
    spec = network_spec(plans, network, network_options)
    trainer = train(preprocessed_dataset, split_file, work, budget, seed, device=device, threads=threads,
                    spec=spec)
    card = _card(model_id, plans, dataset_json, source_task, spec=spec, seed=seed, iterations=budget.iterations)
    network = bare_network(trainer.network)
    network.eval()
    saved = save_bank_model(network, card, out_dir)
    for iteration, folder in snapshot_dirs.items():
        state = read_checkpoint(snapshot_path(Path(trainer.output_folder), iteration))
        network.load_state_dict(state)
        snapshot_card = {**card, "model_id": snapshot_model_id(model_id, iteration), "iterations": iteration,
                         "snapshot_of": model_id}
        save_bank_model(network, snapshot_card, folder)
    shutil.rmtree(work, ignore_errors=True)
    return saved


def finetune(preprocessed_dataset: Path, raw_dataset: Path, split_file: Path, init_model: Path,
             out_file: Path, budget: TrainingBudget, seed: int, device: str = "auto", threads: int = 1) -> dict:
    """Fine-tune a bank model on a target's training split and write its Dice on the held-out split."""
    from .evaluation import predict_and_score, write_dice

    out_file = Path(out_file)
    work = out_file.parent / f".{out_file.stem}-nnunet"  # outside the output: kept for resuming
    trainer = train(preprocessed_dataset, split_file, work, budget, seed, init_model=init_model,
                    device=device, threads=threads)
    network = bare_network(trainer.network)
    if trainer.enable_deep_supervision:
        trainer.set_deep_supervision_enabled(False)
    network.eval()
    plans, dataset_json = _load_plans_and_dataset(Path(preprocessed_dataset))
    test_cases = read_split(split_file)["test"]
    result = predict_and_score(network, plans, dataset_json, Path(raw_dataset), test_cases,
                               work / "predictions", trainer.device)
    card = read_model_card(init_model)
    write_dice(result, out_file, model_id=card["model_id"], source_task=card.get("source_task"),
               seed=seed, iterations=budget.iterations, test_cases=test_cases)
    shutil.rmtree(work, ignore_errors=True)
    return result
