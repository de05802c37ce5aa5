"""Flax models: backbones (`build_backbone`) and heads.

Backbones take NHWC images and `train`, and return (N, num_features) float32 features.
`dtype=jnp.bfloat16` computes in bfloat16 with float32 parameters.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jssl.models.convnet import ConvNet
from jssl.models.heads import Classifier, Projector
from jssl.models.resnet import ResNet

__all__ = ["BACKBONES", "build_backbone", "ResNet", "ConvNet", "Projector", "Classifier"]

# name -> (module class, fixed fields)
BACKBONES = {
    "resnet18": (ResNet, dict(stage_sizes=(2, 2, 2, 2), block="basic")),
    "resnet34": (ResNet, dict(stage_sizes=(3, 4, 6, 3), block="basic")),
    "resnet50": (ResNet, dict(stage_sizes=(3, 4, 6, 3), block="bottleneck")),
    "convnet": (ConvNet, {}),
}


def _conv_module(conv_impl: str):
    import flax.linen as nn

    if conv_impl == "auto":
        conv_impl = "tapped" if jax.default_backend() == "cpu" else "xla"
    if conv_impl == "xla":
        return nn.Conv
    if conv_impl == "tapped":
        from jssl.models.conv import Conv
        return Conv
    raise ValueError(f"conv_impl must be 'auto', 'xla' or 'tapped', got {conv_impl!r}")


def build_backbone(name: str, *, dtype=jnp.float32, conv_impl: str = "auto", **overrides):
    """The backbone called `name` (see BACKBONES), e.g. build_backbone("resnet18", stem="cifar").

    `conv_impl`: "xla" (flax's nn.Conv), "tapped" (jssl.models.conv: convolution weight
    gradients as one matmul per kernel tap, faster on CPU) or "auto" (tapped on CPU).
    """
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(sorted(BACKBONES))}")
    cls, fixed = BACKBONES[name]
    if cls is ConvNet:
        overrides.pop("stem", None)
    return cls(dtype=dtype, conv=_conv_module(conv_impl), **fixed, **overrides)
