"""The bank's two architectures, and the decoder stages whose features CC-FV samples (docs/models.md).

- ``unet``: nnU-Net's PlainConvUNet exactly as the shared plans describe it (``architecture`` entry of
  ``ccfvPlans.json``), built by nnU-Net's own ``get_network_from_plans``.
- ``unetr``: MONAI's UNETR (Hatamizadeh et al., 2022) with ``img_size`` = the plans' patch size, so that it
  is trained and run on exactly the patches (and the preprocessing) the U-Net sees. UNETR splits its input
  into 16-voxel ViT patches, so every axis of the patch size must be divisible by 16; it has no deep
  supervision.

A model card's ``network`` names the architecture and its ``architecture`` entry holds everything needed to
build it (``network_class_name`` and ``arch_kwargs``, in nnU-Net's form for both).

Hooked decoder stages, deepest (lowest resolution) first; the last one feeds the final 1x1x1 convolution.
Channels and scale (downsampling factor per axis relative to the input patch):

=======  ===========================  ==============================  ==============================
network  layer names                  channels                        scale
=======  ===========================  ==============================  ==============================
unet     ``decoder.stages.0`` ..      ``features_per_stage[-2]`` ..   product of ``strides[1:]`` ..
         ``decoder.stages.<n-2>``     ``features_per_stage[0]``       ``strides[0]`` (1 in our plans)
unetr    ``decoder5``, ``decoder4``,  8f, 4f, 2f, f                   8, 4, 2, 1
         ``decoder3``, ``decoder2``   (f = ``feature_size``)
=======  ===========================  ==============================  ==============================
"""
from __future__ import annotations

import math

from .allowlist import check_unet_architecture

UNET = "unet"
UNETR = "unetr"
ARCHITECTURES = (UNET, UNETR)
UNETR_CLASS = "monai.networks.nets.UNETR"
#: UNETR's ViT patch edge (fixed by MONAI's UNETR): every axis of ``img_size`` must be a multiple.
VIT_PATCH = 16
#: MONAI's UNETR defaults, which are the paper-scale configuration (ViT-B/16 encoder).
UNETR_DEFAULTS = {"feature_size": 16, "hidden_size": 768, "mlp_dim": 3072, "num_heads": 12}
UNETR_STAGES = ("decoder5", "decoder4", "decoder3", "decoder2")


def unetr_architecture(patch_size, options: dict | None = None) -> dict:
    """The ``architecture`` entry of a UNETR for a plans patch size (z, y, x); errors say what to change."""
    options = {**UNETR_DEFAULTS, **(options or {})}
    unknown = sorted(set(options) - set(UNETR_DEFAULTS))
    if unknown:
        raise ValueError(f"unetr: unknown options {unknown}; known: {sorted(UNETR_DEFAULTS)}")
    patch = [int(p) for p in patch_size]
    bad = [p for p in patch if p % VIT_PATCH]
    if bad:
        raise ValueError(
            f"unetr: the patch size {patch} (network.patch_size, UNETR's img_size) must be divisible by "
            f"{VIT_PATCH} (UNETR's ViT patch) on every axis; {bad} is not"
        )
    if options["hidden_size"] % options["num_heads"]:
        raise ValueError(f"unetr: hidden_size {options['hidden_size']} must be divisible by num_heads "
                         f"{options['num_heads']}")
    return {
        "network_class_name": UNETR_CLASS,
        "arch_kwargs": {
            "img_size": patch, **{k: int(v) for k, v in options.items()},
            "proj_type": "conv", "norm_name": "instance", "res_block": True, "dropout_rate": 0.0,
            "spatial_dims": 3,
        },
        "_kw_requires_import": [],
    }


def build(network: str, architecture: dict, num_input_channels: int, num_classes: int,
          deep_supervision: bool = False):
    """An untrained network of the named architecture (``unet`` or ``unetr``) from its architecture entry."""
    if network == UNET:
        from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

        check_unet_architecture(architecture)

        return get_network_from_plans(
            architecture["network_class_name"], architecture["arch_kwargs"], architecture["_kw_requires_import"],
            num_input_channels, num_classes, allow_init=True, deep_supervision=deep_supervision,
        )
    if network == UNETR:
        from monai.networks.nets import UNETR as MonaiUNETR

        if architecture["network_class_name"] != UNETR_CLASS:
            raise ValueError(f"unetr: architecture entry names {architecture['network_class_name']!r}")
        kwargs = dict(architecture["arch_kwargs"])
        return MonaiUNETR(in_channels=num_input_channels, out_channels=num_classes,
                          img_size=tuple(kwargs.pop("img_size")), **kwargs)
    raise ValueError(f"unknown network {network!r}; known: {list(ARCHITECTURES)}")


#: The part of a state-dict key that marks nnU-Net's segmentation heads (``decoder.seg_layers.*``).
HEAD_KEY = ".seg_layers."
#: The head module of each architecture (``LoadedModel.details["head"]``): nnU-Net's segmentation layers
#: (one 1x1x1 convolution per decoder stage, for deep supervision) and UNETR's ``UnetOutBlock``.
HEADS = {UNET: "decoder.seg_layers", UNETR: "out"}


def is_head(key: str) -> bool:
    """State-dict keys of the final 1x1x1 convolutions (not transferred when fine-tuning): nnU-Net's
    ``decoder.seg_layers.*`` and UNETR's ``out.*``."""
    return HEAD_KEY in key or key.startswith("out.")


def decoder_layers(network) -> list[str]:
    """Names of the hooked decoder stages, deepest first, for the networks the bank holds."""
    names = dict(network.named_modules())
    if all(n in names for n in UNETR_STAGES) and "vit" in names:
        return list(UNETR_STAGES)
    stages = sorted(
        (n for n in names if n.startswith("decoder.stages.") and n.count(".") == 2),
        key=lambda n: int(n.rsplit(".", 1)[1]),
    )
    if not stages:
        raise ValueError(f"{type(network).__name__}: no decoder.stages.* (U-Net) or decoder5..decoder2 "
                         f"(UNETR) modules to hook")
    return stages


def decoder_stages(network: str, architecture: dict) -> list[tuple[str, int, tuple[int, ...]]]:
    """The documented (layer name, channels, per-axis scale) of every hooked stage, deepest first."""
    kwargs = architecture["arch_kwargs"]
    if network == UNETR:
        f = int(kwargs["feature_size"])
        return [(name, f * m, (m, m, m)) for name, m in zip(UNETR_STAGES, (8, 4, 2, 1))]
    if network == UNET:
        features, strides = list(kwargs["features_per_stage"]), [list(s) for s in kwargs["strides"]]
        n = len(features)
        out = []
        for i in range(n - 1):
            level = n - 2 - i  # decoder.stages.i outputs the resolution of encoder stage n-2-i
            scale = tuple(math.prod(s[a] for s in strides[: level + 1]) for a in range(len(strides[0])))
            out.append((f"decoder.stages.{i}", int(features[level]), scale))
        return out
    raise ValueError(f"unknown network {network!r}; known: {list(ARCHITECTURES)}")


def pick_device(device: str = "auto"):
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


def bare_network(network):
    """The network itself, under the wrappers nnU-Net may put around it: DDP's ``module`` (multi-GPU runs) and
    torch.compile's ``_orig_mod`` (CUDA runs), whose state-dict keys carry those prefixes."""
    network = getattr(network, "module", network)
    return getattr(network, "_orig_mod", network)


def network_parameter_count(network, head: str | None = None) -> int:
    """The number of weights of a loaded network: the elements of its distinct state-dict tensors (a tensor
    reachable under two names, as nnU-Net's encoder is, counts once) without the segmentation heads: the
    module named ``head`` when given (``LoadedModel.details["head"]``: MeshNet's ``classifier``, hippodeep's
    ``convout1x``), else :func:`is_head` (nnU-Net's ``seg_layers``, UNETR's ``out``). For a ccfv bank model
    this equals :func:`ccfv.bank.model_card.parameter_count` of its folder."""

    def in_head(name: str) -> bool:
        return name.startswith(head + ".") if head else is_head(name)

    seen, total = set(), 0
    for name, tensor in network.state_dict().items():
        key = (tensor.data_ptr(), tuple(tensor.shape), tensor.dtype)
        if in_head(name) or key in seen:
            continue
        seen.add(key)
        total += tensor.numel()
    return total
