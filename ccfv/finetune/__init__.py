"""The ``finetune`` rule: the ground truth, a bank model fine-tuned on the target and its held-out Dice.

- :mod:`ccfv.finetune.nnunet`: fine-tuning with nnU-Net's trainer (rules/finetune.smk).
- :mod:`ccfv.finetune.evaluation`: Dice on the held-out cases, and the Dice files.
- :mod:`ccfv.finetune.protocol`: one fine-tuning recipe for a model of any format (docs/finetune.md).
- :mod:`ccfv.finetune.run`: ``ccfv finetune`` and ``ccfv rank --confirm``: that recipe on a user's dataset.
"""
