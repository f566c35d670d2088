"""``ccfv rank``: which of my own pre-trained 3D segmentation models should I fine-tune on my own dataset?

The paper's question for one user, without Snakemake (docs/rank.md). For every model given:

1. load it without executing anything from its files (:mod:`ccfv.models`, one module per format);
2. preprocess the user's labelled cases (:mod:`ccfv.preprocess.dataset`) as the model expects them
   (:mod:`ccfv.models.preprocessing`), once per distinct preprocessing;
3. sample decoder features during sliding-window inference (:mod:`ccfv.features`) and score them
   (:mod:`ccfv.scores`).

- :mod:`ccfv.rank.modality`: the check that a model was trained on the target's modality.
- :mod:`ccfv.rank.run`: :func:`rank_models`, the run.
- :mod:`ccfv.rank.agreement`: with ``--dice``, the agreement of each ranking with the known Dice.
- :mod:`ccfv.rank.outputs`: ``ranking.csv``, ``ranking.json``, ``agreement.csv``, ``ranking.png``, the table.
"""
from ..models import ModelError, load_model, model_names, parse_model_spec
from ..preprocess.dataset import open_dataset
from .agreement import agreement, baseline_agreement, dice_health, read_dice
from .modality import modality_warnings
from .outputs import Ranking, print_ranking
from .run import DEFAULT_RANK_METRICS, RANK_METRICS, metric_definitions, rank_models

__all__ = ["RANK_METRICS", "DEFAULT_RANK_METRICS", "ModelError", "rank_models", "print_ranking", "read_dice",
           "dice_health", "agreement", "baseline_agreement", "open_dataset", "load_model", "model_names",
           "parse_model_spec", "metric_definitions", "modality_warnings", "Ranking"]
