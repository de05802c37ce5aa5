"""A small ConvNet for tests and quick runs on MNIST-sized images."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jssl.losses import at_least_f32
from jssl.models.resnet import conv_init

__all__ = ["ConvNet"]


class ConvNet(nn.Module):
    """Three conv-BN-ReLU layers (widths f, 2f, 4f), 2x2 max-pools between them, global
    average pooling: (N, H, W, C) -> (N, 4f) float32."""

    num_filters: int = 32
    dtype: Any = jnp.float32
    conv: Any = nn.Conv

    @property
    def num_features(self) -> int:
        return self.num_filters * 4

    def input_error(self, size: int, name: str = "the ConvNet") -> str | None:
        """Why size x size images cannot go through (None when they can), a phrase after
        the size: two 2x2 pools."""
        return None if size >= 4 else f"is too small for {name} (two 2x2 pools); use at least 4"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x = x.astype(self.dtype)
        for i in range(3):
            x = self.conv(
                self.num_filters * 2**i,
                (3, 3),
                padding=1,
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
            x = nn.relu(x)
            if i < 2:
                x = nn.max_pool(x, (2, 2), (2, 2))
        return jnp.mean(at_least_f32(x), axis=(1, 2))
