"""nnU-Net v2 conversion, planning and preprocessing, and the train/test split (rules/preprocess.smk).

- :mod:`ccfv.preprocess.paths`: where nnU-Net keeps a run's data; task and dataset names.
- :mod:`ccfv.preprocess.nnunet`: MSD -> nnU-Net raw, the shared plans, preprocessing, reading a case back.
- :mod:`ccfv.preprocess.plans`: reading a preprocessed dataset's plans and ``dataset.json``.
- :mod:`ccfv.preprocess.splits`: the recorded train/test split of a task.
- :mod:`ccfv.preprocess.dataset`: a user's labelled dataset (``ccfv rank``, ``ccfv finetune``): an MSD task
  validated and converted, or an nnU-Net raw dataset; its cases and classes.
"""
