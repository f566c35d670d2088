"""Tests of ccfv.models: the formats users bring (nnU-Net folders, MONAI bundles, brainchop MeshNets, hippodeep,
torch modules)."""
