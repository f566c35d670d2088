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
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..data.checksums import sha256_file
from ..preprocess.paths import CONFIGURATION, nnunet_environment
from ..preprocess.plans import load_plans_and_dataset
from . import networks
from .checkpoints import CHECKPOINT_FORMAT, read_checkpoint
from .model_card import (
    WEIGHTS,
    build_network,
    load_bank_model,
    make_model_card,
    network_spec,
    read_model_card,
    save_bank_model,
)
from .model_ids import snapshot_model_id
from .networks import bare_network, pick_device
from .trainer import snapshot_path, trainer_class

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


def random_model(preprocessed_dataset: Path, model_id: str, out_dir: Path, seed: int,
                 network: str = networks.UNET, network_options: dict | None = None) -> Path:
    """The bank's randomly initialised member: the network's own initialisation, seeded, never trained."""
    plans, dataset_json = load_plans_and_dataset(Path(preprocessed_dataset))
    spec = network_spec(plans, network, network_options)
    card = make_model_card(model_id, plans, dataset_json, source_task=None, spec=spec, seed=seed, iterations=0)
    seed_everything(seed)
    network = build_network(card, deep_supervision=False)
    return save_bank_model(network, card, out_dir)


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
    plans, dataset_json = load_plans_and_dataset(preprocessed_dataset)
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
        trainer_cls = trainer_class(budget.augmentation)
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
    plans, dataset_json = load_plans_and_dataset(Path(preprocessed_dataset))
    spec = network_spec(plans, network, network_options)
    trainer = train(preprocessed_dataset, split_file, work, budget, seed, device=device, threads=threads,
                    spec=spec)
    card = make_model_card(model_id, plans, dataset_json, source_task, spec=spec, seed=seed, iterations=budget.iterations)
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
