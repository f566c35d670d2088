"""The ``finetune`` rule: the ground truth, a bank model fine-tuned on the target and its held-out Dice.

- :mod:`ccfv.finetune.nnunet`: fine-tuning with nnU-Net's trainer (rules/finetune.smk).
- :mod:`ccfv.finetune.evaluation`: Dice on the held-out cases, and the Dice files.
"""
