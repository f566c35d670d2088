"""The decoder stages ccfv hooks in MONAI's 3D segmentation networks (``monai.networks.nets``).

Stages are listed deepest (lowest resolution) first; the full-resolution one, where the network has it,
is last. ``scale`` is the downsampling factor per axis relative to the input patch; ``f`` is the
network's ``feature_size`` (SwinUNETR, UNETR) or ``init_filters`` (SegResNet).

==========  ===========================================  ===============================  ======================
network     layer names                                  channels                         scale
==========  ===========================================  ===============================  ======================
UNet        ``model.1.submodule.2`` nested: the up layer  ``channels[i-1]``                ``prod(strides[:i])``
            of level i, for i = len(channels)-2 .. 1      (the level-0 up layer is the      (2, 4 ... for 2s)
            (``model`` + ``.1.submodule`` * i + ``.2``)   head: it outputs the classes)
SegResNet   ``up_layers.0`` .. ``up_layers.<n-1>``        ``f * 2**(n-1-i)``               ``2**(n-1-i)``
            (n = len(blocks_up))
SwinUNETR   ``decoder5``, ``decoder4``, ``decoder3``,     8f, 4f, 2f, f, f                 16, 8, 4, 2, 1
            ``decoder2``, ``decoder1``
UNETR       ``decoder5``, ``decoder4``, ``decoder3``,     8f, 4f, 2f, f                    8, 4, 2, 1
            ``decoder2``
DynUNet     ``upsamples.0`` .. ``upsamples.<n-1>``        ``filters[n-1-i]``               ``prod(strides[:n-i])``
            (n = len(strides) - 1)                                                          per axis
==========  ===========================================  ===============================  ======================

Sources: MONAI 1.x ``monai/networks/nets/{unet,segresnet,swin_unetr,unetr,dynunet}.py`` (the forward
passes: UNet's recursive ``SkipConnection``, SegResNet's ``decode``, the UNETR/SwinUNETR decoder blocks,
DynUNet's ``upsamples``); tests/models/test_bundle.py checks every row against hooked forward passes.
"""
from __future__ import annotations

import math

#: Class names whose decoder stages ccfv knows.
SUPPORTED = ("UNet", "SegResNet", "SwinUNETR", "UNETR", "DynUNet")
#: The module that maps the last decoder features to the classes (``LoadedModel.details["head"]``), which
#: ``ccfv finetune`` replaces by one with the target's classes: SegResNet's ``conv_final`` (norm, activation,
#: 1x1x1 convolution), the ``UnetOutBlock`` of SwinUNETR and UNETR (``out``) and of DynUNet (``output_block``).
#: MONAI's UNet has none: its top up-sampling layer outputs the classes (a transposed convolution, with a
#: residual unit after it when ``num_res_units`` > 0), so giving it other classes would change a decoder layer.
HEADS = {"SegResNet": "conv_final", "SwinUNETR": "out", "UNETR": "out", "DynUNet": "output_block"}


def _per_axis(strides, n: int) -> tuple[int, ...]:
    """Product of the first ``n`` strides per axis (a stride is an int or one value per axis)."""
    rows = [[int(s)] * 3 if not isinstance(s, (list, tuple)) else [int(v) for v in s] for s in strides[:n]]
    return tuple(math.prod(r[a] for r in rows) for a in range(3)) if rows else (1, 1, 1)


def decoder_stages(network) -> list[tuple[str, int, tuple[int, ...]]]:
    """(layer name, channels, per-axis scale) of the hooked decoder stages of a MONAI network, deepest first.

    Raises:
        ValueError: the network is not one of :data:`SUPPORTED` (by class name), or has no decoder stage
            that is not its head (a MONAI UNet with two levels).
    """
    kind = type(network).__name__
    if kind == "UNet":
        channels, strides = list(network.channels), list(network.strides)
        stages = [("model" + ".1.submodule" * i + ".2", int(channels[i - 1]), _per_axis(strides, i))
                  for i in range(len(channels) - 2, 0, -1)]
    elif kind == "SegResNet":
        n, f = len(network.blocks_up), int(network.init_filters)
        stages = [(f"up_layers.{i}", f * 2 ** (n - 1 - i), (2 ** (n - 1 - i),) * 3) for i in range(n)]
    elif kind in ("SwinUNETR", "UNETR"):
        f = _feature_size(network)
        factors = (8, 4, 2, 1, 1) if kind == "SwinUNETR" else (8, 4, 2, 1)
        scales = (16, 8, 4, 2, 1) if kind == "SwinUNETR" else (8, 4, 2, 1)
        names = [f"decoder{k}" for k in range(5, 5 - len(factors), -1)]
        stages = [(name, f * m, (s, s, s)) for name, m, s in zip(names, factors, scales)]
    elif kind == "DynUNet":
        filters, strides = list(network.filters), list(network.strides)
        n = len(strides) - 1
        stages = [(f"upsamples.{i}", int(filters[n - 1 - i]), _per_axis(strides, n - i)) for i in range(n)]
    else:
        raise ValueError(f"{type(network).__module__}.{kind}: ccfv knows the decoder stages of MONAI's "
                         f"{', '.join(SUPPORTED)}; for another network use ccfv.rank_models with the layer "
                         "names to hook (docs/rank.md)")
    if not stages:
        raise ValueError(f"{kind}: no decoder stage besides the head (too few levels)")
    return stages


def _feature_size(network) -> int:
    """``feature_size`` of a UNETR/SwinUNETR, read from its first decoder block (not stored as an attribute)."""
    block = network.decoder2
    conv = getattr(block, "transp_conv", None)
    weight = getattr(getattr(conv, "conv", conv), "weight", None)
    if weight is None:
        raise ValueError(f"{type(network).__name__}: cannot read feature_size from decoder2")
    return int(weight.shape[1])  # ConvTranspose3d weights are [in, out, k, k, k]; out = feature_size
