"""ResNet-18/34/50 (He et al. 2016) with the CIFAR stem or the ImageNet stem, in Flax.

`stem="cifar"`: one 3x3 stride-1 convolution and no max-pool, as solo-learn and MetaMask
use for 32x32 images; `stem="imagenet"`: 7x7 stride-2 convolution and a 3x3 stride-2
max-pool. BatchNorm has PyTorch's defaults (momentum 0.1 in PyTorch = 0.9 here, eps 1e-5);
convolutions use torchvision's Kaiming-normal fan-out initialisation. No collectives: in
the sharded train step the batch statistics are computed over the global batch.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jssl.losses import at_least_f32

__all__ = ["ResNet", "BasicBlock", "Bottleneck", "conv_init"]

conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _norm(train: bool, dtype, zero_init: bool = False):
    return nn.BatchNorm(
        use_running_average=not train,
        momentum=0.9,
        epsilon=1e-5,
        dtype=dtype,
        param_dtype=jnp.float32,
        scale_init=nn.initializers.zeros if zero_init else nn.initializers.ones,
    )


class BasicBlock(nn.Module):
    """Two 3x3 convolutions and a (projected) shortcut: ResNet-18/34."""

    filters: int
    strides: int = 1
    zero_init_residual: bool = False
    dtype: Any = jnp.float32
    conv: Any = nn.Conv

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        conv = functools.partial(
            self.conv,
            use_bias=False,
            dtype=self.dtype,
            param_dtype=jnp.float32,
            kernel_init=conv_init,
        )
        y = conv(self.filters, (3, 3), self.strides, padding=1)(x)
        y = nn.relu(_norm(train, self.dtype)(y))
        y = conv(self.filters, (3, 3), 1, padding=1)(y)
        y = _norm(train, self.dtype, self.zero_init_residual)(y)
        if x.shape[-1] != self.filters or self.strides != 1:
            x = _norm(train, self.dtype)(conv(self.filters, (1, 1), self.strides, padding=0)(x))
        return nn.relu(x + y)


class Bottleneck(nn.Module):
    """1x1 - 3x3 (strided, as torchvision v1.5) - 1x1 with 4x expansion: ResNet-50."""

    filters: int
    strides: int = 1
    zero_init_residual: bool = False
    dtype: Any = jnp.float32
    conv: Any = nn.Conv

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        conv = functools.partial(
            self.conv,
            use_bias=False,
            dtype=self.dtype,
            param_dtype=jnp.float32,
            kernel_init=conv_init,
        )
        y = nn.relu(_norm(train, self.dtype)(conv(self.filters, (1, 1), 1, padding=0)(x)))
        y = nn.relu(
            _norm(train, self.dtype)(conv(self.filters, (3, 3), self.strides, padding=1)(y))
        )
        y = _norm(train, self.dtype, self.zero_init_residual)(
            conv(self.filters * 4, (1, 1), 1, padding=0)(y)
        )
        if x.shape[-1] != self.filters * 4 or self.strides != 1:
            x = _norm(train, self.dtype)(conv(self.filters * 4, (1, 1), self.strides, padding=0)(x))
        return nn.relu(x + y)


class ResNet(nn.Module):
    """A ResNet trunk with global average pooling: (N, H, W, C) -> (N, num_features) float32.

    Fields: `stage_sizes` blocks per stage (stage k has num_filters * 2**k filters, stride 2
    at the start of every stage but the first); `block` "basic" (ResNet-18/34) or
    "bottleneck" (ResNet-50, 4x expansion); `num_filters` width of the first stage (64 in
    the paper; small values give test-sized networks); `stem` "cifar" or "imagenet";
    `zero_init_residual` starts the last BatchNorm scale of every block at zero (Goyal et al.
    2017; off by default, as torchvision); `conv` the convolution class (`nn.Conv` or
    `jssl.models.conv.Conv`).
    """

    stage_sizes: Sequence[int] = (2, 2, 2, 2)
    block: str = "basic"  # "basic" (18/34) or "bottleneck" (50)
    num_filters: int = 64
    stem: str = "cifar"
    zero_init_residual: bool = False
    dtype: Any = jnp.float32
    conv: Any = nn.Conv

    @property
    def num_features(self) -> int:
        expansion = 4 if self.block == "bottleneck" else 1
        return self.num_filters * 2 ** (len(self.stage_sizes) - 1) * expansion

    def input_error(self, size: int, name: str = "a ResNet") -> str | None:
        """Why size x size images cannot go through (None when they can), a phrase after
        the size: three stride-2 stages after the CIFAR stem (8x), five with the ImageNet
        stem (32x)."""
        minimum = 32 if self.stem == "imagenet" else 8
        if size < minimum:
            return f"is too small for {name} with the {self.stem} stem; use at least {minimum}"
        return None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        if self.stem not in ("cifar", "imagenet"):
            raise ValueError(f"stem must be 'cifar' or 'imagenet', got {self.stem!r}")
        if self.block not in ("basic", "bottleneck"):
            raise ValueError(f"block must be 'basic' or 'bottleneck', got {self.block!r}")
        if x.ndim != 4:
            raise ValueError(f"ResNet takes NHWC images (N, H, W, C), got shape {x.shape}")
        x = x.astype(self.dtype)
        conv = functools.partial(
            self.conv,
            use_bias=False,
            dtype=self.dtype,
            param_dtype=jnp.float32,
            kernel_init=conv_init,
        )
        if self.stem == "cifar":
            x = nn.relu(_norm(train, self.dtype)(conv(self.num_filters, (3, 3), 1, padding=1)(x)))
        else:
            x = nn.relu(_norm(train, self.dtype)(conv(self.num_filters, (7, 7), 2, padding=3)(x)))
            x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
        block = Bottleneck if self.block == "bottleneck" else BasicBlock
        for i, blocks in enumerate(self.stage_sizes):
            for j in range(blocks):
                x = block(
                    self.num_filters * 2**i,
                    strides=2 if i > 0 and j == 0 else 1,
                    zero_init_residual=self.zero_init_residual,
                    dtype=self.dtype,
                    conv=self.conv,
                )(x, train)
        return jnp.mean(at_least_f32(x), axis=(1, 2))
