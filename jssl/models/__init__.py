"""Flax models: backbones (`build_backbone`) and heads (`Projector`, `Classifier`).

Backbones take NHWC float images and `train`, and return (N, num_features) float32
features; `dtype=jnp.bfloat16` computes in bfloat16 with float32 parameters. BatchNorm
has PyTorch's defaults and no axis name: under the sharded jit train step its statistics
span the global batch without collectives.
"""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from jssl.models.alexnet import AlexNet
from jssl.models.conv import Conv, conv2d
from jssl.models.convnet import ConvNet
from jssl.models.heads import BackboneHead, Classifier, Projector, Prototypes
from jssl.models.mae import MAEDecoder, sincos_posemb
from jssl.models.resnet import BasicBlock, Bottleneck, ResNet
from jssl.models.vit import ViT, resample_posemb

__all__ = [
    "BACKBONES",
    "CONFIG_FIELDS",
    "CONV_IMPLS",
    "build_backbone",
    "num_features",
    "input_size_error",
    "conv_module",
    "ResNet",
    "ViT",
    "MAEDecoder",
    "sincos_posemb",
    "resample_posemb",
    "BasicBlock",
    "Bottleneck",
    "ConvNet",
    "Projector",
    "Classifier",
    "Prototypes",
    "Conv",
    "conv2d",
    "init_variables",
    "backbone_from_config",
    "BackboneHead",
]

# name -> (module class, fields it fixes). Overrides may change the other fields
# (e.g. stem=, num_filters=, zero_init_residual=). The *_tiny variants are for tests.
BACKBONES: dict[str, tuple[type, dict]] = {
    "resnet18": (ResNet, dict(stage_sizes=(2, 2, 2, 2), block="basic")),
    "resnet34": (ResNet, dict(stage_sizes=(3, 4, 6, 3), block="basic")),
    "resnet50": (ResNet, dict(stage_sizes=(3, 4, 6, 3), block="bottleneck")),
    "resnet18_tiny": (ResNet, dict(stage_sizes=(1, 1, 1, 1), block="basic", num_filters=8)),
    "resnet50_tiny": (ResNet, dict(stage_sizes=(1, 1, 1, 1), block="bottleneck", num_filters=4)),
    "convnet": (ConvNet, {}),
    "convnet_tiny": (ConvNet, dict(num_filters=8)),
    # AlexNet-style students of knowledge transfer (jssl/models/alexnet.py).
    "alexnet": (AlexNet, dict(stem="imagenet")),
    "alexnet_cifar": (AlexNet, dict(stem="cifar")),
    "alexnet_tiny": (AlexNet, dict(stem="cifar", num_filters=8)),
    # Vision Transformers: the ViT paper's and DeiT's widths, depths and heads (patch size,
    # pooling and stochastic depth are fields: model.patch_size, model.pool).
    "vit_tiny": (ViT, dict(width=192, depth=12, num_heads=3, mlp_dim=768)),
    "vit_small": (ViT, dict(width=384, depth=12, num_heads=6, mlp_dim=1536)),
    "vit_base": (ViT, dict(width=768, depth=12, num_heads=12, mlp_dim=3072)),
    "vit_large": (ViT, dict(width=1024, depth=24, num_heads=16, mlp_dim=4096)),
    "vit_smoke": (ViT, dict(width=32, depth=2, num_heads=2, mlp_dim=64)),  # for tests
}

# The config fields (of `config.model`) each backbone class reads, by module field name.
CONFIG_FIELDS: dict[type, tuple[str, ...]] = {
    ResNet: ("num_filters", "stem"),
    ConvNet: ("num_filters",),
    AlexNet: ("num_filters",),
    ViT: ("patch_size", "pool", "drop_path"),
}
CONV_IMPLS = ("auto", "xla", "tapped")


def conv_module(conv_impl: str = "auto", *, forward_mode: bool = False) -> type[nn.Module]:
    """The convolution class for `conv_impl`: "xla" is flax's `nn.Conv`; "tapped" is
    `jssl.models.conv.Conv` (weight gradients as per-tap GEMMs, faster on CPU); "auto" is
    "tapped" when JAX's default backend is the CPU and "xla" on GPUs and TPUs.

    `forward_mode=True`: a convolution that `jax.jvp` accepts (the tapped one's custom
    reverse rule does not) with the very same forward computation, so that XLA computes
    the forward pass once when both models run on the same inputs in one program
    (MetaMask's exact hypergradient)."""
    if conv_impl not in CONV_IMPLS:
        raise ValueError(f"conv_impl must be one of {', '.join(CONV_IMPLS)}, got {conv_impl!r}")
    if conv_impl == "auto":
        conv_impl = "tapped" if jax.default_backend() == "cpu" else "xla"
    if conv_impl == "tapped":
        return functools.partial(Conv, custom_vjp=False) if forward_mode else Conv
    return nn.Conv


def build_backbone(
    name: str,
    *,
    dtype=jnp.float32,
    conv_impl: str = "auto",
    forward_mode: bool = False,
    **overrides,
) -> nn.Module:
    """The backbone called `name` (a key of BACKBONES), e.g.
    `build_backbone("resnet18", stem="cifar")` or `build_backbone("resnet18_tiny")`.

    Args:
      name: backbone name; unknown names raise ValueError listing the known ones.
      dtype: computation dtype (parameters stay float32, features are float32).
      conv_impl: "auto", "xla" or "tapped" (see `conv_module`).
      forward_mode: convolutions that forward-mode differentiation accepts (`conv_module`).
      **overrides: module fields, e.g. stem="imagenet", num_filters=32,
        zero_init_residual=True; a field the backbone does not have raises ValueError.

    Returns:
      An unbound Flax module, called as `module.apply(variables, x, train=...)` on (N, H, W, C)
      images and returning (N, module.num_features) float32 features.
    """
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    cls, fixed = BACKBONES[name]
    allowed = {f.name for f in dataclasses.fields(cls)} - {"parent", "name", "dtype", "conv"}
    for key in overrides:
        if key not in allowed:
            raise ValueError(
                f"backbone {name!r} has no field {key!r}; it takes {', '.join(sorted(allowed))}"
            )
    fields = {**fixed, **overrides}
    return cls(dtype=dtype, conv=conv_module(conv_impl, forward_mode=forward_mode), **fields)


def backbone_from_config(model, dtype=jnp.float32, *, forward_mode: bool = False) -> nn.Module:
    """The backbone a config's `model` group describes: `model.backbone` with the fields its
    class reads (`CONFIG_FIELDS`: `num_filters` and `stem` for ResNets, `patch_size` and
    `pool` for ViTs) and `conv_impl`; `dtype` is the
    computation dtype (`jssl.config.compute_dtype`); `forward_mode`: see `conv_module`
    (the parameters are the same)."""
    cls = BACKBONES[model.backbone][0] if model.backbone in BACKBONES else None
    overrides = {f: model[f] for f in CONFIG_FIELDS.get(cls, ()) if f in model}
    return build_backbone(
        model.backbone,
        dtype=dtype,
        conv_impl=model.get("conv_impl", "auto"),
        forward_mode=forward_mode,
        **overrides,
    )


def input_size_error(model, size: int) -> str | None:
    """Why size x size images cannot go through the backbone a config's `model` group
    describes (a phrase to follow the size in a one-line error), None when they can: each
    backbone class says (`input_error`). Unknown names are left to the name check."""
    if model.backbone not in BACKBONES:
        return None
    try:
        module = backbone_from_config(model)
    except ValueError:
        return None  # a bad field value: its own check says so
    return module.input_error(size, model.backbone)


def num_features(name: str, **overrides) -> int:
    """Width of the features `build_backbone(name, **overrides)` returns (512 for resnet18,
    2048 for resnet50), without building parameters."""
    return build_backbone(name, conv_impl="xla", **overrides).num_features


def init_variables(module: nn.Module, rng: jax.Array, *args, **kwargs) -> dict:
    """`module.init(rng, *args, **kwargs)` with the parameters drawn by the non-partitionable
    threefry.

    Same distributions, different (but equally seeded and deterministic) numbers. Why: XLA:CPU
    compiles a partitionable threefry draw of a rank-4 convolution kernel about 10x slower than
    a flat one (5.8 s against 0.5 s for one 3x3x8x16 normal draw, measured with jax 0.10.2),
    which made initialising even a tiny ConvNet take 12 s of compilation. Parameters are born
    replicated, so partitionable draws buy nothing here.
    """
    with jax.threefry_partitionable(False):
        return module.init(rng, *args, **kwargs)
