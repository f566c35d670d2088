"""The ``sample_features`` rule: decoder features sampled during sliding-window inference (docs/sampling.md).

- :mod:`ccfv.features.settings`: the sampling settings, one object for the workflow and ``ccfv rank``.
- :mod:`ccfv.features.voxels`: which voxels are sampled, per class and per decoder stage.
- :mod:`ccfv.features.windows`: the sliding windows and the interpolation of coarse stages.
- :mod:`ccfv.features.budget`: the window budget: voxels chosen inside a bounded number of windows per case.
- :mod:`ccfv.features.sampler`: the hooked forward passes that fill a features file.
- :mod:`ccfv.features.file`: the features file (HDF5) format.
- :mod:`ccfv.features.target`: the workflow's job: one bank model on one target's training cases.
"""
