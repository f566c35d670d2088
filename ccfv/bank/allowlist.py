"""Which network classes and ops a model's own files may name before anything is imported.

nnU-Net resolves the class and op names of a plans file with ``pydoc.locate``, which imports (runs) the
module a name points to: a plans file from elsewhere could otherwise name any importable code. The bank's
U-Net entries (``ccfv.bank.networks.build``) and every nnU-Net model folder (:mod:`ccfv.models.nnunet`) pass
through :func:`check_unet_architecture` first.
"""
from __future__ import annotations

import re

#: U-Net classes nnU-Net plans may name (``network_class_name``).
UNET_CLASSES = (
    "dynamic_network_architectures.architectures.unet.PlainConvUNet",
    "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet",
)
#: An op named in a plans file (``conv_op``, ``norm_op``, ``dropout_op``, ``nonlin``): a class of torch.nn.
_TORCH_NN_OP = re.compile(r"torch\.nn\.(?:modules\.[a-z_]+\.)?[A-Z][A-Za-z0-9]*")


def check_unet_architecture(architecture: dict, where: str = "plans") -> None:
    """Refuse an architecture entry (``network_class_name``, ``arch_kwargs``, ``_kw_requires_import``) that
    would make nnU-Net import anything but a known U-Net and torch.nn ops.

    Raises:
        ValueError: naming ``where`` and the refused name; nothing has been imported.
    """
    name = architecture.get("network_class_name")
    if name not in UNET_CLASSES:
        raise ValueError(f"{where}: network class {name!r} is not one ccfv builds ({', '.join(UNET_CLASSES)}); "
                         "nothing was imported")
    kwargs = architecture.get("arch_kwargs") or {}
    for key in architecture.get("_kw_requires_import") or []:
        value = kwargs.get(key)
        if value is not None and not (isinstance(value, str) and _TORCH_NN_OP.fullmatch(value)):
            raise ValueError(f"{where}: {key} {value!r} is not a torch.nn class; nothing was imported")
