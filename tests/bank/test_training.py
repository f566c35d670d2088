"""Tests for ccfv.bank.training: the bank model file format (and that loading it can never run code), weight
transfer for fine-tuning, the budget, seeded random models, and tiny real nnU-Net training runs on the
preprocessed fixture dataset of conftest.py."""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path

import pytest
import torch

from ccfv.bank import training
from ccfv.bank.checkpoints import read_checkpoint
from ccfv.bank.model_card import MODEL_CARD, WEIGHTS, build_network, load_bank_model, read_model_card, save_bank_model
from ccfv.bank.networks import HEAD_KEY
from ccfv.bank.training import TrainingBudget, pretrain, random_model, train, transfer_weights
from ccfv.preprocess.splits import make_split, write_split

torch.set_num_threads(1)


def tiny_architecture(features=(4, 8, 16)) -> dict:
    """nnU-Net's architecture entry of a plans file (as in ccfvPlans.json), for a tiny 3-stage U-Net."""
    n = len(features)
    return {
        "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
        "arch_kwargs": {
            "n_stages": n, "features_per_stage": list(features), "conv_op": "torch.nn.modules.conv.Conv3d",
            "kernel_sizes": [[1, 3, 3]] + [[3, 3, 3]] * (n - 1), "strides": [[1, 1, 1]] + [[2, 2, 2]] * (n - 1),
            "n_conv_per_stage": [1] * n, "n_conv_per_stage_decoder": [1] * (n - 1), "conv_bias": True,
            "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
            "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None, "dropout_op_kwargs": None,
            "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True},
        },
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    }


def tiny_card(num_classes=3, features=(4, 8, 16), model_id="m") -> dict:
    return {
        "model_id": model_id, "architecture": tiny_architecture(features), "network": "unet",
        "patch_size": [8, 16, 16], "num_input_channels": 1, "num_classes": num_classes,
        "labels": {"background": 0, **{f"c{i}": i for i in range(1, num_classes)}}, "source_task": "Task94_X",
    }


def seeded_network(card, seed):
    torch.manual_seed(seed)
    return build_network(card).eval()


def clone_state(network) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in network.state_dict().items()}


X = torch.Generator().manual_seed(0)
INPUT = torch.randn(2, 1, 8, 16, 16, generator=X)


# --------------------------------------------------------------------------------------------------
# build_network, TrainingBudget
# --------------------------------------------------------------------------------------------------


def test_build_network_from_card():
    network = build_network(tiny_card(num_classes=3))
    assert type(network).__name__ == "PlainConvUNet"
    assert network.encoder.stages[0][0].convs[0].conv.out_channels == 4
    assert network.encoder.stages[2][0].convs[0].conv.out_channels == 16
    with torch.no_grad():
        out = network.eval()(INPUT)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 3, 8, 16, 16)
    heads = [k for k in network.state_dict() if HEAD_KEY in k]
    assert heads == [f"decoder.seg_layers.{i}.{p}" for i in range(2) for p in ("weight", "bias")]


def test_build_network_deep_supervision_outputs():
    network = build_network(tiny_card(num_classes=2), deep_supervision=True).eval()
    with torch.no_grad():
        out = network(INPUT)
    assert [tuple(o.shape) for o in out] == [(2, 2, 8, 16, 16), (2, 2, 4, 8, 8)]


@pytest.mark.parametrize(
    ("iterations", "per_epoch", "epochs"),
    [(1, 250, 1), (250, 250, 1), (251, 250, 2), (100_000, 250, 400), (250_000, 250, 1000), (120, 60, 2), (40, 40, 1)],
)
def test_training_budget_epochs(iterations, per_epoch, epochs):
    assert TrainingBudget(iterations, iterations_per_epoch=per_epoch).epochs == epochs


def test_training_budget_defaults_and_frozen():
    budget = TrainingBudget(10)
    assert (budget.iterations_per_epoch, budget.val_iterations_per_epoch, budget.learning_rate) == (250, 50, 1e-2)
    with pytest.raises(Exception):
        budget.iterations = 5  # frozen dataclass


def test_training_budget_augmentation():
    assert TrainingBudget(10).augmentation == "nnunet"  # nnU-Net's default, the paper's setting
    assert TrainingBudget(10, augmentation="none").augmentation == "none"
    with pytest.raises(ValueError, match="augmentation must be one of"):
        TrainingBudget(10, augmentation="light")


def test_no_augmentation_trains_on_nnunet_validation_transforms():
    """augmentation "none" is nnU-Net's own nnUNetTrainerNoDA: its training transforms are the validation
    transforms (no spatial or intensity augmentation) and mirroring is off; "nnunet" is nnU-Net's default."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.training.nnUNetTrainer.variants.data_augmentation.nnUNetTrainerNoDA import nnUNetTrainerNoDA

    plain, none = training.trainer_class("nnunet"), training.trainer_class("none")
    assert issubclass(none, nnUNetTrainerNoDA) and not issubclass(plain, nnUNetTrainerNoDA)
    assert issubclass(plain, nnUNetTrainer)
    args = dict(patch_size=(8, 16, 16), rotation_for_DA=0.0, deep_supervision_scales=None, mirror_axes=(0, 1, 2),
                do_dummy_2d_data_aug=False, foreground_labels=[1])
    names = lambda t: [type(x).__name__ for x in t.transforms]  # noqa: E731
    assert names(none.get_training_transforms(**args)) == names(
        nnUNetTrainer.get_validation_transforms(None, foreground_labels=[1]))
    assert "SpatialTransform" in names(plain.get_training_transforms(**args))


@pytest.mark.slow
def test_train_without_augmentation(tiny_dataset, split_file, tmp_path):
    budget = TrainingBudget(2, iterations_per_epoch=2, val_iterations_per_epoch=1, augmentation="none")
    trainer = train(tiny_dataset.preprocessed, split_file, tmp_path / "work", budget, seed=0, device="cpu")
    assert type(trainer).__mro__[1].__name__ == "nnUNetTrainerNoDA"
    assert trainer.inference_allowed_mirroring_axes is None
    losses = trainer.logger.local_logger.my_fantastic_logging["train_losses"]
    assert len(losses) == 1 and math.isfinite(float(losses[0]))


# --------------------------------------------------------------------------------------------------
# save_bank_model / load_bank_model
# --------------------------------------------------------------------------------------------------


def test_save_load_round_trip(tmp_path):
    card = tiny_card()
    network = seeded_network(card, 1)
    # perturb a norm layer so that a loader falling back to fresh initialisation would be caught
    with torch.no_grad():
        network.encoder.stages[0][0].convs[0].norm.weight.add_(0.5)
    out_dir = save_bank_model(network, card, tmp_path / "bank" / "m1")
    assert out_dir == tmp_path / "bank" / "m1"
    assert sorted(p.name for p in out_dir.iterdir()) == sorted([WEIGHTS, MODEL_CARD])
    assert [p.name for p in (tmp_path / "bank").iterdir()] == ["m1"]  # no scratch folder left

    loaded, loaded_card = load_bank_model(out_dir)
    assert loaded_card == card
    assert not loaded.training
    with torch.no_grad():
        assert torch.equal(loaded(INPUT), network(INPUT))
    own = network.state_dict()
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, own[key]), key


def test_save_bank_model_replaces_an_existing_model(tmp_path):
    card = tiny_card()
    out_dir = tmp_path / "m"
    save_bank_model(seeded_network(card, 1), card, out_dir)
    (out_dir / "stale.txt").write_text("left over")
    newer = seeded_network(card, 2)
    save_bank_model(newer, {**card, "model_id": "newer"}, out_dir)
    loaded, loaded_card = load_bank_model(out_dir)
    assert loaded_card["model_id"] == "newer"
    assert not (out_dir / "stale.txt").exists()
    with torch.no_grad():
        assert torch.equal(loaded(INPUT), newer(INPUT))


@pytest.fixture
def saved_model(tmp_path):
    card = tiny_card()
    return save_bank_model(seeded_network(card, 3), card, tmp_path / "bank" / "m3")


def test_load_missing_model_card(saved_model):
    (saved_model / MODEL_CARD).unlink()
    with pytest.raises(FileNotFoundError, match=r"model\.json"):
        load_bank_model(saved_model)


def test_load_model_card_not_json(saved_model):
    (saved_model / MODEL_CARD).write_text("{not json")
    with pytest.raises(ValueError, match=r"model\.json.*not valid JSON"):
        read_model_card(saved_model)


@pytest.mark.parametrize("key", ["model_id", "architecture", "num_input_channels", "num_classes", "patch_size"])
def test_load_model_card_missing_key(saved_model, key):
    card = json.loads((saved_model / MODEL_CARD).read_text())
    del card[key]
    (saved_model / MODEL_CARD).write_text(json.dumps(card))
    with pytest.raises(ValueError, match=rf"model\.json.*'{key}'"):
        load_bank_model(saved_model)


def test_load_missing_weights(saved_model):
    (saved_model / WEIGHTS).unlink()
    with pytest.raises(FileNotFoundError, match=r"weights\.safetensors"):
        load_bank_model(saved_model)


def test_load_truncated_weights(saved_model):
    path = saved_model / WEIGHTS
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match=r"weights\.safetensors"):
        load_bank_model(saved_model)


class _Payload:
    """Unpickling this creates ``marker``: the stand-in for arbitrary code in a hostile checkpoint."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("zipfile_format", [True, False])
def test_load_refuses_a_pickle_without_running_it(saved_model, tmp_path, zipfile_format):
    card = json.loads((saved_model / MODEL_CARD).read_text())
    network = build_network(card)
    marker = tmp_path / "pwned"
    hostile = {**network.state_dict(), "payload": _Payload(marker)}
    torch.save(hostile, saved_model / WEIGHTS, _use_new_zipfile_serialization=zipfile_format)

    # The payload is live: an unsafe load of a copy would run it.
    armed_marker = tmp_path / "armed"
    torch.save({"payload": _Payload(armed_marker)}, tmp_path / "armed.pt",
               _use_new_zipfile_serialization=zipfile_format)
    torch.load(tmp_path / "armed.pt", weights_only=False)
    assert armed_marker.exists()

    with pytest.raises(ValueError, match=r"weights\.safetensors.*not a readable safetensors file"):
        load_bank_model(saved_model)
    assert not marker.exists()


def test_load_plain_pickle_refused(saved_model, tmp_path):
    marker = tmp_path / "pwned"
    (saved_model / WEIGHTS).write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(ValueError, match=r"weights\.safetensors"):
        load_bank_model(saved_model)
    assert not marker.exists()


@pytest.mark.parametrize(
    "card_change",
    [
        {"architecture": tiny_architecture((4, 8, 32))},   # wider bottleneck: shapes differ
        {"architecture": tiny_architecture((4, 8))},       # one stage fewer: unexpected keys
        {"architecture": tiny_architecture((4, 8, 16, 16))},  # one stage more: missing keys
        {"num_classes": 4},                                 # heads of another shape
        {"num_input_channels": 2},                          # first convolution of another shape
    ],
)
def test_load_weights_of_another_architecture(saved_model, card_change):
    card = json.loads((saved_model / MODEL_CARD).read_text())
    (saved_model / MODEL_CARD).write_text(json.dumps({**card, **card_change}))
    with pytest.raises(ValueError, match=rf"{saved_model / WEIGHTS}.*does not fit"):
        load_bank_model(saved_model)


# --------------------------------------------------------------------------------------------------
# transfer_weights
# --------------------------------------------------------------------------------------------------


def test_transfer_weights_keeps_heads_and_copies_the_rest():
    source = seeded_network(tiny_card(num_classes=3), 10)
    target = seeded_network(tiny_card(num_classes=2), 20)  # another number of classes: other heads
    before = clone_state(target)
    source_state = clone_state(source)

    kept = transfer_weights(target, source_state, "src/weights.safetensors")

    after = target.state_dict()
    assert kept == [k for k in after if HEAD_KEY in k] and len(kept) == 4
    for key, value in after.items():
        if HEAD_KEY in key:
            assert torch.equal(value, before[key]), key
        else:
            assert torch.equal(value, source_state[key]), key
    # the two initialisations differ in every convolution weight (biases start at 0 in both), so the
    # equalities above are not met by chance
    changed = [k for k in after if HEAD_KEY not in k and not torch.equal(before[k], source_state[k])]
    assert len(changed) >= 10
    # the parameters themselves (what the optimizer holds) carry the new values
    assert torch.equal(target.encoder.stages[0][0].convs[0].conv.weight, source_state["encoder.stages.0.0.convs.0.conv.weight"])


def test_transfer_weights_ignores_extra_source_keys():
    source_state = clone_state(seeded_network(tiny_card(), 10))
    source_state["something.else"] = torch.zeros(3)
    target = seeded_network(tiny_card(), 20)
    transfer_weights(target, source_state, "src")
    assert "something.else" not in target.state_dict()


def test_transfer_weights_missing_key(tmp_path):
    source_state = clone_state(seeded_network(tiny_card(), 10))
    del source_state["decoder.stages.0.convs.0.conv.weight"]
    del source_state["decoder.seg_layers.1.bias"]  # a head: not needed
    target = seeded_network(tiny_card(), 20)
    before = clone_state(target)
    with pytest.raises(ValueError, match=r"src\.safetensors.*1 keys missing.*decoder\.stages\.0\.convs\.0\.conv\.weight"):
        transfer_weights(target, source_state, "src.safetensors")
    assert all(torch.equal(v, before[k]) for k, v in target.state_dict().items())  # untouched


def test_transfer_weights_wrong_shape():
    source_state = clone_state(seeded_network(tiny_card(features=(4, 8, 32)), 10))
    target = seeded_network(tiny_card(), 20)
    with pytest.raises(ValueError, match=r"shapes differ.*encoder\.stages\.2\.0\.convs\.0\.conv\.weight: \(32, 8, 3, 3, 3\) vs \(16, 8, 3, 3, 3\)"):
        transfer_weights(target, source_state, "src")


# --------------------------------------------------------------------------------------------------
# random_model
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def fake_preprocessed(tmp_path):
    """The two files random_model reads from a preprocessed dataset."""
    folder = tmp_path / "Dataset094_SynthSpleen"
    folder.mkdir()
    plans = {"configurations": {"3d_fullres": {"architecture": tiny_architecture(), "patch_size": [8, 16, 16]}}}
    (folder / "ccfvPlans.json").write_text(json.dumps(plans))
    (folder / "dataset.json").write_text(json.dumps(
        {"channel_names": {"0": "CT"}, "labels": {"background": 0, "spleen": 1}, "file_ending": ".nii.gz"}))
    return folder


def test_random_model_is_seeded(fake_preprocessed, tmp_path):
    a = random_model(fake_preprocessed, "random", tmp_path / "a", seed=0)
    b = random_model(fake_preprocessed, "random", tmp_path / "b", seed=0)
    c = random_model(fake_preprocessed, "random", tmp_path / "c", seed=1)
    (net_a, card_a), (net_b, _), (net_c, _) = load_bank_model(a), load_bank_model(b), load_bank_model(c)
    state_a, state_b, state_c = net_a.state_dict(), net_b.state_dict(), net_c.state_dict()
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    conv = "encoder.stages.0.0.convs.0.conv.weight"
    assert not torch.equal(state_a[conv], state_c[conv])
    assert card_a["model_id"] == "random" and card_a["source_task"] is None
    assert card_a["seed"] == 0 and card_a["iterations"] == 0
    assert card_a["num_classes"] == 2 and card_a["num_input_channels"] == 1
    assert card_a["architecture"] == tiny_architecture() and card_a["patch_size"] == [8, 16, 16]
    # the channels of the dataset it was planned on, as a pretrained model's card has its source task's
    assert card_a["channel_names"] == {"0": "CT"} and card_a["modalities"] == ["CT"]


# --------------------------------------------------------------------------------------------------
# Real nnU-Net training on the preprocessed fixture dataset (tiny: 2 iterations)
# --------------------------------------------------------------------------------------------------

TINY_BUDGET = TrainingBudget(iterations=2, iterations_per_epoch=2, val_iterations_per_epoch=1)


@pytest.fixture(scope="module")
def split_file(tiny_dataset, tmp_path_factory):
    from ccfv.preprocess.nnunet import case_identifiers

    path = tmp_path_factory.mktemp("splits") / "Task94_SynthSpleen.json"
    write_split(make_split(case_identifiers(tiny_dataset.preprocessed), 0.2, seed=0), path)
    return path


@pytest.fixture(scope="module")
def pretrained(tiny_dataset, split_file, tmp_path_factory):
    bank = tmp_path_factory.mktemp("bank")
    out = pretrain(tiny_dataset.preprocessed, split_file, "Task94_SynthSpleen", "from_spleen", bank / "from_spleen",
                   TINY_BUDGET, seed=0, device="cpu")
    return out


@pytest.mark.slow
def test_pretrain_writes_a_loadable_bank_model(pretrained):
    assert [p.name for p in pretrained.parent.iterdir()] == ["from_spleen"]  # nnU-Net work folder removed
    network, card = load_bank_model(pretrained)
    assert card["model_id"] == "from_spleen" and card["source_task"] == "Task94_SynthSpleen"
    assert card["iterations"] == 2 and card["seed"] == 0
    assert card["num_classes"] == 2 and card["patch_size"] == [8, 16, 16]
    assert card["channel_names"] == {"0": "CT"} and card["modalities"] == ["CT"]  # the source task's channels
    assert card["architecture"]["arch_kwargs"]["features_per_stage"] == [4, 8, 16]
    assert all(torch.isfinite(v).all() for v in network.state_dict().values())
    with torch.no_grad():
        assert network(INPUT).shape == (2, 2, 8, 16, 16)


@pytest.mark.slow
def test_train_from_a_bank_model(tiny_dataset, split_file, pretrained, tmp_path):
    source, _ = load_bank_model(pretrained)
    source_state = clone_state(source)
    trainer = train(tiny_dataset.preprocessed, split_file, tmp_path / "work", TINY_BUDGET, seed=1,
                    init_model=pretrained, device="cpu")

    losses = trainer.logger.local_logger.my_fantastic_logging["train_losses"]
    assert len(losses) == 1 and math.isfinite(float(losses[0])) and float(losses[0]) > 0
    assert trainer.num_iterations_per_epoch == 2 and trainer.num_epochs == 1

    trained = trainer.network.state_dict()
    assert all(torch.isfinite(v).all() for v in trained.values())
    # The weights moved away from the bank model ...
    conv = "encoder.stages.0.0.convs.0.conv.weight"
    assert not torch.equal(trained[conv], source_state[conv])
    # ... but only a little: they started from it (transfer), not from a fresh initialisation.
    torch.manual_seed(123)
    fresh = build_network(read_model_card(pretrained)).state_dict()
    non_head = [k for k in trained if HEAD_KEY not in k and trained[k].dtype.is_floating_point]
    to_source = sum(float((trained[k] - source_state[k]).norm()) for k in non_head)
    to_fresh = sum(float((trained[k] - fresh[k]).norm()) for k in non_head)
    assert to_source < 0.5 * to_fresh

    # Training used our split: the held-out cases are in neither nnU-Net's train nor its val list.
    split = json.loads(split_file.read_text())
    tr_keys, val_keys = trainer.do_split()
    assert tr_keys == split["train"]
    assert set(val_keys) <= set(split["train"]) and val_keys
    assert not set(split["test"]) & (set(tr_keys) | set(val_keys))


def test_a_two_stage_network_is_refused_before_it_can_train_on_nan(tiny_dataset):
    """nnU-Net's deep supervision with one output gives a NaN loss (weight 0 / sum 0): refuse it up front."""
    from ccfv.preprocess.nnunet import shared_plans

    two_stages = {
        **tiny_dataset.network, "features_per_stage": [4, 8], "kernel_sizes": [[1, 3, 3], [3, 3, 3]],
        "strides": [[1, 1, 1], [2, 2, 2]], "n_conv_per_stage": [1, 1], "n_conv_per_stage_decoder": [1],
    }
    default = json.loads((tiny_dataset.preprocessed / "nnUNetPlans.json").read_text())
    with pytest.raises(ValueError, match="at least 3"):
        shared_plans(default, two_stages)


@pytest.mark.slow
def test_train_from_a_bank_model_with_a_compiled_network(tiny_dataset, split_file, pretrained, tmp_path,
                                                         monkeypatch):
    import functools

    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    # What happens on a CUDA device, made cheap on the CPU: compile is on, with the eager backend.
    monkeypatch.setattr(nnUNetTrainer, "_do_i_compile", lambda self: True)
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    source, _ = load_bank_model(pretrained)
    try:
        trainer = train(tiny_dataset.preprocessed, split_file, tmp_path / "work", TINY_BUDGET, seed=1,
                        init_model=pretrained, device="cpu")
    finally:
        torch._dynamo.reset()
    assert type(trainer.network).__name__ == "OptimizedModule"  # the compiled path was exercised
    trained = trainer.network._orig_mod.state_dict()
    assert math.isfinite(float(trainer.logger.local_logger.my_fantastic_logging["train_losses"][0]))
    conv = "decoder.stages.0.convs.0.conv.weight"
    assert float((trained[conv] - source.state_dict()[conv]).norm()) < 0.5 * float(source.state_dict()[conv].norm())


def test_non_finite_weights_are_never_written_to_the_bank(tmp_path):
    import torch

    from ccfv.bank.model_card import save_bank_model

    network = torch.nn.Conv3d(1, 2, 1)
    with torch.no_grad():
        network.weight[0, 0, 0, 0, 0] = float("nan")
    out = tmp_path / "bank" / "broken"
    with pytest.raises(ValueError, match="non-finite"):
        save_bank_model(network, {"model_id": "broken"}, out)
    assert not (tmp_path / "bank").exists()  # refused before anything, scratch folders included, was made


# --------------------------------------------------------------------------------------------------
# Resuming a killed training job, and checkpoints that are refused
# --------------------------------------------------------------------------------------------------

RESUME_BUDGET = TrainingBudget(iterations=6, iterations_per_epoch=2, val_iterations_per_epoch=1)

#: A child process that pretrains and SIGKILLs itself right after nnU-Net writes the first
#: ``checkpoint_latest.pth`` (end of epoch 0): a job killed mid-training, at a known point.
KILLED_PRETRAINING = """
import os, signal, sys
from pathlib import Path
import ccfv.bank.training as training
from ccfv.finetune.nnunet import finetune

make_trainer = training.trainer_class

def killing_trainer(*args):
    cls = make_trainer(*args)

    class Killed(cls):
        def save_checkpoint(self, filename):
            super().save_checkpoint(filename)
            if Path(filename).name == "checkpoint_latest.pth":
                os.kill(os.getpid(), signal.SIGKILL)

    Killed.__name__ = Killed.__qualname__ = cls.__name__  # nnU-Net names its output folder after the class
    return Killed

training.trainer_class = killing_trainer
budget = training.TrainingBudget(iterations=6, iterations_per_epoch=2, val_iterations_per_epoch=1)
if sys.argv[1] == "pretrain":
    preprocessed, split, out, seed, *snapshots = sys.argv[2:]
    budget = training.TrainingBudget(iterations=6, iterations_per_epoch=2, val_iterations_per_epoch=1,
                                     snapshots=[int(s) for s in snapshots])
    training.pretrain(preprocessed, split, "Task94_SynthSpleen", "m", out, budget, seed=int(seed), device="cpu",
                      threads=1)
else:
    preprocessed, raw, split, init, out, seed = sys.argv[2:]
    finetune(preprocessed, raw, split, init, out, budget, seed=int(seed), device="cpu", threads=1)
print("NOT KILLED")
"""


def _kill_after_first_checkpoint(*args):
    import signal
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", KILLED_PRETRAINING, *map(str, args)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "NOT KILLED" not in proc.stdout


def _kill_pretraining_after_first_checkpoint(tiny_dataset, split_file, out, seed=0, snapshots=()):
    _kill_after_first_checkpoint("pretrain", tiny_dataset.preprocessed, split_file, out, seed, *snapshots)


def _safetensors_state(model_dir):
    from safetensors.torch import load_file

    return load_file(str(model_dir / WEIGHTS))


@pytest.mark.slow
def test_a_killed_pretraining_resumes_and_ends_with_the_weights_of_an_uninterrupted_run(
        tiny_dataset, split_file, tmp_path, capfd):
    uninterrupted = pretrain(tiny_dataset.preprocessed, split_file, "Task94_SynthSpleen", "m", tmp_path / "a" / "m",
                             RESUME_BUDGET, seed=0, device="cpu")

    out = tmp_path / "b" / "m"
    _kill_pretraining_after_first_checkpoint(tiny_dataset, split_file, out)
    assert not out.exists()  # killed before the bank model was written
    work = tmp_path / "b" / ".m-nnunet"
    latest = list(work.rglob("checkpoint_latest.pth"))
    assert len(latest) == 1 and not list(work.rglob("checkpoint_final.pth"))
    saved = read_checkpoint(latest[0])
    assert saved["current_epoch"] == 1 and len(saved["logging"]["train_losses"]) == 1

    capfd.readouterr()
    resumed = pretrain(tiny_dataset.preprocessed, split_file, "Task94_SynthSpleen", "m", out,
                       RESUME_BUDGET, seed=0, device="cpu")
    printed = capfd.readouterr().out
    assert "resuming from" in printed and "at epoch 1 of 3" in printed
    assert not work.exists()  # cleaned up once the bank model is written

    a, b = _safetensors_state(uninterrupted), _safetensors_state(resumed)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key  # bit for bit
    # ... and the equality is not that of two untrained networks: training moved the weights
    fresh = _safetensors_state(random_model(tiny_dataset.preprocessed, "r", tmp_path / "r", seed=0))
    moved = [k for k in a if HEAD_KEY not in k and not torch.equal(a[k], fresh[k])]
    assert len(moved) >= 10


@pytest.mark.slow
def test_a_checkpoint_of_other_settings_is_not_resumed(tiny_dataset, split_file, tmp_path, capfd):
    out = tmp_path / "m"
    _kill_pretraining_after_first_checkpoint(tiny_dataset, split_file, out, seed=0)
    capfd.readouterr()
    trainer = train(tiny_dataset.preprocessed, split_file, tmp_path / ".m-nnunet", RESUME_BUDGET, seed=1,
                    device="cpu")
    printed = capfd.readouterr().out
    assert "not resuming" in printed and "other settings" in printed and "starting from scratch" in printed
    assert trainer.resumed_from_epoch == 0
    assert len(trainer.logger.get_checkpoint()["train_losses"]) == 3


def test_read_checkpoint_refuses_a_pickle_payload(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "checkpoint_latest.pth"
    torch.save({"network_weights": {"w": torch.zeros(2)}, "payload": _Payload(marker)}, path)
    with pytest.raises(ValueError, match=rf"{path}: refused.*pickle payload"):
        read_checkpoint(path)
    assert not marker.exists()
    # a resume never runs it either: the stale checkpoint is reported and removed
    from ccfv.bank.training import _resumable_checkpoint

    assert _resumable_checkpoint(tmp_path, {"any": "identity"}) == (None, None)
    assert not marker.exists() and not path.exists()


def test_read_checkpoint_of_plain_data(tmp_path):
    path = tmp_path / "c.pth"
    torch.save({"w": torch.ones(3), "epoch": 4, "log": {"losses": [0.5, 0.25]}, "name": "x"}, path)
    checkpoint = read_checkpoint(path)
    assert checkpoint["epoch"] == 4 and torch.equal(checkpoint["w"], torch.ones(3))
    (tmp_path / "broken.pth").write_bytes(path.read_bytes()[:50])
    with pytest.raises(ValueError, match=r"broken\.pth: not a readable torch checkpoint"):
        read_checkpoint(tmp_path / "broken.pth")


@pytest.mark.slow
def test_a_killed_fine_tuning_resumes_and_scores_like_an_uninterrupted_one(tiny_dataset, split_file, pretrained,
                                                                          tmp_path, capfd):
    from ccfv.finetune.nnunet import finetune

    a = tmp_path / "a" / "seed0.json"
    finetune(tiny_dataset.preprocessed, tiny_dataset.raw, split_file, pretrained, a, RESUME_BUDGET, seed=0,
             device="cpu")
    b = tmp_path / "b" / "seed0.json"
    _kill_after_first_checkpoint("finetune", tiny_dataset.preprocessed, tiny_dataset.raw, split_file, pretrained,
                                 b, 0)
    assert not b.exists() and list((tmp_path / "b" / ".seed0-nnunet").rglob("checkpoint_latest.pth"))
    capfd.readouterr()
    finetune(tiny_dataset.preprocessed, tiny_dataset.raw, split_file, pretrained, b, RESUME_BUDGET, seed=0,
             device="cpu")
    assert "at epoch 1 of 3" in capfd.readouterr().out
    assert not (tmp_path / "b" / ".seed0-nnunet").exists()
    first, second = json.loads(a.read_text()), json.loads(b.read_text())
    assert first["per_case"] == second["per_case"] and first["mean_dice"] == second["mean_dice"]


def _nnunet_like_checkpoint():
    """What nnU-Net's own ``save_checkpoint`` writes: numpy scalars in the logging, a torch.device in init_args."""
    import numpy as np

    return {
        "network_weights": {"w": torch.ones(2)}, "optimizer_state": {"state": {}, "param_groups": []},
        "grad_scaler_state": None,
        "logging": {"train_losses": [np.float64(0.5), np.float64(0.25)], "ema_fg_dice": [np.float32(0.1)]},
        "_best_ema": np.float64(0.1), "current_epoch": 2,
        "init_args": {"plans": {}, "configuration": "3d_fullres", "fold": 0, "device": torch.device("cpu")},
        "trainer_name": "nnUNetTrainer", "inference_allowed_mirroring_axes": (0, 1, 2),
    }


def test_read_checkpoint_of_nnunet_itself_needs_numpy_scalars(tmp_path):
    path = tmp_path / "checkpoint_final.pth"
    torch.save(_nnunet_like_checkpoint(), path)
    with pytest.raises(ValueError, match=r"checkpoint_final\.pth: refused.*numpy"):
        read_checkpoint(path)
    checkpoint = read_checkpoint(path, numpy_scalars=True)
    assert float(checkpoint["logging"]["train_losses"][1]) == 0.25 and checkpoint["current_epoch"] == 2
    assert checkpoint["init_args"]["device"] == torch.device("cpu")
    # admitting numpy scalars admits nothing that runs code
    marker = tmp_path / "pwned"
    torch.save({**_nnunet_like_checkpoint(), "payload": _Payload(marker)}, path)
    with pytest.raises(ValueError, match=r"checkpoint_final\.pth: refused"):
        read_checkpoint(path, numpy_scalars=True)
    assert not marker.exists()


# --------------------------------------------------------------------------------------------------
# Training snapshots: extra bank members from one pretraining run (pretrain.snapshots)
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("snapshots", [[0], [6], [7], [2, 2], [-1]])
def test_snapshots_must_be_distinct_iterations_inside_the_run(snapshots):
    with pytest.raises(ValueError, match="snapshots must be distinct iterations between 1 and 5"):
        TrainingBudget(iterations=6, snapshots=snapshots)


def test_snapshots_are_sorted_and_left_out_of_the_identity_when_empty():
    assert TrainingBudget(iterations=6, snapshots=[4, 1]).snapshots == (1, 4)
    assert "snapshots" not in TrainingBudget(iterations=6).identity()
    assert TrainingBudget(iterations=6, snapshots=[4, 1]).identity()["snapshots"] == [1, 4]


def _recording_trainer(states):
    """A trainer factory whose trainer copies the network's weights after every training step, counted
    independently of the trainer's own iteration counter."""
    make_trainer = training.trainer_class

    def factory(*args):
        cls = make_trainer(*args)

        class Recording(cls):
            def train_step(self, batch):
                result = super().train_step(batch)
                states.append({k: v.detach().clone() for k, v in self.network.state_dict().items()})
                return result

        Recording.__name__ = Recording.__qualname__ = cls.__name__
        return Recording

    return factory


@pytest.mark.slow
def test_snapshots_hold_the_weights_after_their_iterations_and_enter_the_bank(
        tiny_dataset, split_file, tmp_path, monkeypatch):
    states = []  # states[i]: the weights after i + 1 training iterations
    monkeypatch.setattr(training, "trainer_class", _recording_trainer(states))
    budget = TrainingBudget(iterations=6, iterations_per_epoch=2, val_iterations_per_epoch=1, snapshots=[3, 1])
    final = pretrain(tiny_dataset.preprocessed, split_file, "Task94_SynthSpleen", "unet-Task94_SynthSpleen",
                     tmp_path / "bank" / "unet-Task94_SynthSpleen", budget, seed=0, device="cpu")
    assert len(states) == 6
    assert sorted(p.name for p in (tmp_path / "bank").iterdir()) == [
        "unet-Task94_SynthSpleen", "unet-Task94_SynthSpleen@1", "unet-Task94_SynthSpleen@3"]  # work folder gone
    final_state = _safetensors_state(final)
    for iteration in (1, 3):
        folder = tmp_path / "bank" / f"unet-Task94_SynthSpleen@{iteration}"
        network, card = load_bank_model(folder)
        assert card["model_id"] == f"unet-Task94_SynthSpleen@{iteration}" and card["iterations"] == iteration
        assert card["snapshot_of"] == "unet-Task94_SynthSpleen" and card["source_task"] == "Task94_SynthSpleen"
        saved = _safetensors_state(folder)
        for key in saved:
            assert torch.equal(saved[key], states[iteration - 1][key]), (iteration, key)
        # ... and not the weights of another iteration
        assert not all(torch.equal(saved[k], states[iteration][k]) for k in saved)
    assert all(torch.equal(final_state[k], states[-1][k]) for k in final_state)
    assert read_model_card(final)["iterations"] == 6 and "snapshot_of" not in read_model_card(final)


@pytest.mark.slow
def test_a_killed_pretraining_with_snapshots_resumes_to_the_same_snapshots(tiny_dataset, split_file, tmp_path):
    budget = TrainingBudget(iterations=6, iterations_per_epoch=2, val_iterations_per_epoch=1, snapshots=[1, 5])
    pretrain(tiny_dataset.preprocessed, split_file, "Task94_SynthSpleen", "m", tmp_path / "a" / "m", budget,
             seed=0, device="cpu")
    out = tmp_path / "b" / "m"
    _kill_pretraining_after_first_checkpoint(tiny_dataset, split_file, out, snapshots=(1, 5))
    kept = list((tmp_path / "b" / ".m-nnunet").rglob("snapshots/iteration_*.pth"))
    assert [p.name for p in kept] == ["iteration_1.pth"]  # taken before the kill, kept for the resumed run
    pretrain(tiny_dataset.preprocessed, split_file, "Task94_SynthSpleen", "m", out, budget, seed=0, device="cpu")
    for name in ("m", "m@1", "m@5"):
        a, b = _safetensors_state(tmp_path / "a" / name), _safetensors_state(tmp_path / "b" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def test_pretrain_refuses_snapshot_folders_that_do_not_match_the_budget(tmp_path):
    budget = TrainingBudget(iterations=6, snapshots=[2])
    with pytest.raises(ValueError, match=r"snapshot folders are given for iterations \[3\], the budget's "
                                         r"snapshots are \[2\]"):
        pretrain(tmp_path / "missing", tmp_path / "split.json", "Task94_SynthSpleen", "m", tmp_path / "m", budget,
                 seed=0, snapshot_dirs={3: tmp_path / "m@3"})


# --------------------------------------------------------------------------------------------------
# A budget's own batch size (finetune.batch_size / pretrain.batch_size)
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("batch_size", [0, -2, 2.5, True])
def test_batch_size_must_be_a_positive_integer(batch_size):
    with pytest.raises(ValueError, match="batch_size must be a positive integer or None"):
        TrainingBudget(iterations=2, batch_size=batch_size)


def test_batch_size_is_left_out_of_the_identity_when_it_is_the_plans():
    assert "batch_size" not in TrainingBudget(iterations=2).identity()
    assert TrainingBudget(iterations=2, batch_size=3).identity()["batch_size"] == 3


@pytest.mark.slow
def test_training_uses_the_budgets_batch_size(tiny_dataset, split_file, tmp_path):
    budget = TrainingBudget(iterations=1, iterations_per_epoch=1, val_iterations_per_epoch=1, batch_size=3)
    trainer = train(tiny_dataset.preprocessed, split_file, tmp_path / "work", budget, seed=0, device="cpu")
    assert trainer.batch_size == 3
    assert next(trainer.dataloader_train)["data"].shape[0] == 3
    plans = json.loads(next(tiny_dataset.preprocessed.glob("*Plans.json")).read_text())
    assert all(c.get("batch_size") != 3 for c in plans["configurations"].values())  # the plans file is untouched
    default = train(tiny_dataset.preprocessed, split_file, tmp_path / "work2", TINY_BUDGET, seed=0, device="cpu")
    assert default.batch_size == 2


# --------------------------------------------------------------------------------------------------
# How a fine-tuning's fresh heads start (finetune.head_init)
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("head_init", ["zeros", "", None])
def test_head_init_must_be_random_or_zero(head_init):
    with pytest.raises(ValueError, match="head_init must be one of"):
        TrainingBudget(iterations=2, head_init=head_init)


def test_head_init_is_left_out_of_the_identity_when_random():
    assert "head_init" not in TrainingBudget(iterations=2).identity()
    assert TrainingBudget(iterations=2, head_init="zero").identity()["head_init"] == "zero"


def test_transfer_weights_can_zero_the_heads():
    source_state = clone_state(seeded_network(tiny_card(num_classes=3), 10))
    target = seeded_network(tiny_card(num_classes=2), 20)
    kept = transfer_weights(target, source_state, "src", zero_heads=True)
    after = target.state_dict()
    assert kept == [k for k in after if HEAD_KEY in k] and len(kept) == 4
    for key, value in after.items():
        if HEAD_KEY in key:
            assert not value.any(), key
        else:
            assert torch.equal(value, source_state[key]), key
    # the head's output is the same logit for every class: softmax is uniform before the first step
    with torch.no_grad():
        out = target(INPUT)
    assert torch.equal(out, torch.zeros_like(out))


def test_zero_heads_are_for_fine_tuning_only(tiny_dataset, split_file, tmp_path):
    budget = TrainingBudget(iterations=1, iterations_per_epoch=1, val_iterations_per_epoch=1, head_init="zero")
    with pytest.raises(ValueError, match="head_init='zero' is for fine-tuning"):
        train(tiny_dataset.preprocessed, split_file, tmp_path / "work", budget, seed=0, device="cpu")
    assert not (tmp_path / "work").exists()


@pytest.mark.slow
def test_with_zero_heads_every_seed_starts_the_same_network(tiny_dataset, split_file, pretrained, tmp_path,
                                                             monkeypatch):
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    # The network as training would start it: everything up to the first step, then stop.
    monkeypatch.setattr(nnUNetTrainer, "run_training", lambda self: None)

    def start(head_init, seed):
        budget = TrainingBudget(iterations=2, iterations_per_epoch=2, val_iterations_per_epoch=1,
                                head_init=head_init)
        trainer = train(tiny_dataset.preprocessed, split_file, tmp_path / f"{head_init}{seed}", budget, seed=seed,
                        init_model=pretrained, device="cpu")
        return clone_state(trainer.network)

    zero = [start("zero", seed) for seed in (0, 1)]
    assert all(torch.equal(zero[0][k], zero[1][k]) for k in zero[0])
    heads = [k for k in zero[0] if HEAD_KEY in k]
    assert heads and not any(zero[0][k].any() for k in heads)
    source = clone_state(load_bank_model(pretrained)[0])
    assert all(torch.equal(zero[0][k], source[k]) for k in zero[0] if HEAD_KEY not in k)
    # the default draws the heads from the seed: two seeds start two networks
    drawn = [start("random", seed) for seed in (0, 1)]
    assert not all(torch.equal(drawn[0][k], drawn[1][k]) for k in heads)


def test_the_schema_takes_head_init_for_fine_tuning_only():
    import yaml
    from snakemake.utils import validate

    root = Path(__file__).resolve().parents[2]
    schema = str(root / "config/schemas/config.schema.yaml")
    base = yaml.safe_load((root / "config/config.yaml").read_text())
    for change in ({"finetune": {"head_init": "zero"}}, {"finetune": {"head_init": "random"}},
                   {"finetune": {"per_task": {"Task94_SynthSpleen": {"head_init": "random"}}}}):
        cfg = json.loads(json.dumps(base))
        for section, values in change.items():
            cfg[section].update(values)
        validate(cfg, schema)
    for change in ({"pretrain": {"head_init": "zero"}}, {"finetune": {"head_init": "zeros"}},
                   {"pretrain": {"per_task": {"Task91_SynthLiver": {"head_init": "zero"}}}}):
        cfg = json.loads(json.dumps(base))
        for section, values in change.items():
            cfg[section].update(values)
        with pytest.raises(Exception, match="head_init|zeros"):
            validate(cfg, schema)
