"""ccfv: transferability estimation for 3D medical image segmentation.

One subpackage per pipeline stage, named as the workflow's rule files are (rules/*.smk): :mod:`ccfv.data`,
:mod:`ccfv.preprocess`, :mod:`ccfv.bank`, :mod:`ccfv.features`, :mod:`ccfv.scores`, :mod:`ccfv.finetune`,
:mod:`ccfv.results`; then what ``ccfv rank`` adds: :mod:`ccfv.models` (the formats users bring) and
:mod:`ccfv.rank`. README.md's stage table maps each rule to its module.
"""
import importlib
import importlib.abc
import importlib.util
import sys
import warnings

__version__ = "0.1.0"

__all__ = ["__version__", "rank_models", "finetune_models", "TorchModel"]

#: Import paths of earlier versions that users may have in their code, and where the module lives now.
MOVED_MODULES = {"ccfv.scores.metrics": "ccfv.scores.metrics"}


def __getattr__(name: str):
    # Lazy, so that ``import ccfv`` (and the CLI's start-up) does not import torch, nnU-Net or MONAI.
    if name == "rank_models":
        from .rank import rank_models

        return rank_models
    if name == "finetune_models":
        from .finetune.run import finetune_models

        return finetune_models
    if name == "TorchModel":
        from .models.torch_module import TorchModel

        return TorchModel
    raise AttributeError(f"module 'ccfv' has no attribute {name!r}")


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """``import ccfv.scores.metrics`` (and ``from ccfv.scores.metrics import logme``) loads the module at its new path,
    with a DeprecationWarning that names it."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname in MOVED_MODULES:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        warnings.warn(f"{spec.name} is now {MOVED_MODULES[spec.name]}; the old path will go in a later version",
                      DeprecationWarning, stacklevel=3)
        module = importlib.import_module(MOVED_MODULES[spec.name])
        self._spec = module.__spec__  # the import system sets __spec__ to the alias's: put the module's back
        return module

    def exec_module(self, module):
        module.__spec__ = self._spec


if not any(isinstance(f, _MovedModuleFinder) for f in sys.meta_path):
    sys.meta_path.append(_MovedModuleFinder())
