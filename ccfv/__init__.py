"""ccfv: transferability estimation for 3D medical image segmentation."""
__version__ = "0.1.0"

__all__ = ["__version__", "rank_models", "TorchModel"]


def __getattr__(name: str):
    # Lazy, so that ``import ccfv`` (and the CLI's start-up) does not import torch, nnU-Net or MONAI.
    if name == "rank_models":
        from .rank import rank_models

        return rank_models
    if name == "TorchModel":
        from .models.torch_module import TorchModel

        return TorchModel
    raise AttributeError(f"module 'ccfv' has no attribute {name!r}")
