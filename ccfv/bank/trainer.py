"""``CCFVTrainer``: nnU-Net v2's own ``nnUNetTrainer`` with our iteration budget, split, network, resumable
checkpoints and training snapshots (docs/models.md); built lazily so that importing ccfv does not import
nnU-Net."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from ..preprocess.splits import read_split
from . import networks
from .checkpoints import CHECKPOINT_FORMAT, plain_data, rng_state, set_rng_state
from .networks import bare_network


def trainer_class(augmentation: str = "nnunet"):
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
        #: a UNETR on the plans' patch size (no deep supervision; see ccfv/bank/networks.py).
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
                "logging": plain_data(self.logger.get_checkpoint()),
                "_best_ema": plain_data(self._best_ema),
                "current_epoch": self.current_epoch + 1,
                "trainer_name": type(self).__name__,
                "rng": rng_state(self.device),
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
                set_rng_state(self._rng_to_restore)
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


def snapshot_path(output_folder: Path, iteration: int) -> Path:
    """Where training keeps the weights of the snapshot after ``iteration`` iterations (a state dict)."""
    return Path(output_folder) / "snapshots" / f"iteration_{iteration}.pth"
