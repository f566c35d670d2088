"""Fine-tuning a bank model on a target's training split with nnU-Net's trainer (every weight but the heads
transferred, nothing frozen, as in the paper), then its Dice on the held-out split: the ground truth."""
from __future__ import annotations

import shutil
from pathlib import Path

from ..bank.model_card import read_model_card
from ..bank.networks import bare_network
from ..bank.training import TrainingBudget, train
from ..preprocess.plans import load_plans_and_dataset
from ..preprocess.splits import read_split


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
    plans, dataset_json = load_plans_and_dataset(Path(preprocessed_dataset))
    test_cases = read_split(split_file)["test"]
    result = predict_and_score(network, plans, dataset_json, Path(raw_dataset), test_cases,
                               work / "predictions", trainer.device)
    card = read_model_card(init_model)
    write_dice(result, out_file, model_id=card["model_id"], source_task=card.get("source_task"),
               seed=seed, iterations=budget.iterations, test_cases=test_cases)
    shutil.rmtree(work, ignore_errors=True)
    return result
