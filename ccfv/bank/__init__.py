"""The model bank (rules ``pretrain`` and ``random_init``, rules/bank.smk): the networks, their file format and
ids, and training them with nnU-Net's trainer.

- :mod:`ccfv.bank.networks`: the bank's architectures (nnU-Net's U-Net, MONAI's UNETR), their decoder stages.
- :mod:`ccfv.bank.allowlist`: the network classes an nnU-Net plans file may name.
- :mod:`ccfv.bank.model_card`: a bank model on disk (``model.json`` + ``weights.safetensors``).
- :mod:`ccfv.bank.model_ids`: ``<architecture>-<source task>[@<iteration>]`` and ``<architecture>-random``.
- :mod:`ccfv.bank.checkpoints`: checkpoints read without running code; random states for resuming.
- :mod:`ccfv.bank.trainer`: nnU-Net's trainer with our budget, split and snapshots.
- :mod:`ccfv.bank.training`: pretraining, the random members, and the training loop fine-tuning shares.
"""
