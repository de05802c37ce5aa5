"""AlexNet-style backbone (Krizhevsky et al. 2012) for the knowledge-transfer students.

Noroozi et al. (CVPR 2018) transfer from a (possibly deeper) teacher to an AlexNet student;
this is the usual batch-normalised AlexNet of self-supervised work: five convolutions,
each followed by BatchNorm and ReLU, max-pools after conv1, conv2 and conv5, and global
average pooling of conv5 as the features (the fc6/fc7 layers belong to the heads).

Widths are `num_filters` x (1, 3, 6, 4, 4): 64 gives torchvision's AlexNet widths
(64, 192, 384, 256, 256) and 256 features. `stem="imagenet"`: conv1 11x11 stride 4
(padding 2), 3x3 stride-2 max-pools (227-px inputs: 55-27-13-6); `stem="cifar"` for
small images (28-32 px): conv1 5x5 stride 1 (padding 2), 2x2 stride-2 max-pools after
conv1 and conv2 only (32-16-8, then conv3-5 at 8x8).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jssl.losses import at_least_f32
from jssl.models.resnet import conv_init

__all__ = ["AlexNet"]

WIDTHS = (1, 3, 6, 4, 4)  # multiples of num_filters for conv1 .. conv5


class AlexNet(nn.Module):
    """(N, H, W, C) images -> (N, 4 * num_filters) float32 conv5 features (pooled)."""

    num_filters: int = 64
    stem: str = "imagenet"
    dtype: Any = jnp.float32
    conv: Any = nn.Conv

    @property
    def num_features(self) -> int:
        return self.num_filters * WIDTHS[-1]

    def input_error(self, size: int, name: str = "an AlexNet") -> str | None:
        """Why size x size images cannot go through (None when they can), a phrase after
        the size."""
        if self.stem == "imagenet" and size < 63:
            return (
                f"is too small for {name} (ImageNet stem, 11x11/4 and three 3x3/2 pools); use "
                "at least 63, or model.backbone='alexnet_cifar'"
            )
        if self.stem == "cifar" and size < 4:
            return f"is too small for {name} (CIFAR stem, two 2x2/2 pools); use at least 4"
        return None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        if self.stem not in ("imagenet", "cifar"):
            raise ValueError(f"AlexNet.stem must be 'imagenet' or 'cifar', got {self.stem!r}")
        imagenet = self.stem == "imagenet"
        x = x.astype(self.dtype)

        def block(x, i, kernel, stride, padding):
            x = self.conv(
                self.num_filters * WIDTHS[i],
                (kernel, kernel),
                stride,
                padding=padding,
                use_bias=False,
                dtype=self.dtype,
                param_dtype=jnp.float32,
                kernel_init=conv_init,
            )(x)
            x = nn.BatchNorm(
                use_running_average=not train,
                momentum=0.9,
                epsilon=1e-5,
                dtype=self.dtype,
                param_dtype=jnp.float32,
            )(x)
            return nn.relu(x)

        def pool(x):
            if imagenet:
                return nn.max_pool(x, (3, 3), (2, 2))
            return nn.max_pool(x, (2, 2), (2, 2))

        x = pool(block(x, 0, 11, 4, 2) if imagenet else block(x, 0, 5, 1, 2))
        x = pool(block(x, 1, 5, 1, 2))
        x = block(x, 2, 3, 1, 1)
        x = block(x, 3, 3, 1, 1)
        x = block(x, 4, 3, 1, 1)
        if imagenet:
            x = pool(x)
        return jnp.mean(at_least_f32(x), axis=(1, 2))
