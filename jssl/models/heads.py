"""Heads on top of backbone features: projector MLP and linear classifier."""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = ["Projector", "Classifier"]


class Projector(nn.Module):
    """MLP head: per hidden width, Linear (no bias when BN follows) - BN - ReLU; then a Linear.

    (N, F) -> (N, out_dim) float32. BatchNorm has PyTorch's defaults (momentum 0.1 there,
    0.9 here; eps 1e-5). Instances: the Barlow Twins projector (Zbontar et al. 2021;
    solo-learn) is hidden_dims=(2048, 2048), out_dim=2048; SimCLR's (Chen et al. 2020) is
    hidden_dims=(2048,), out_dim=128 (solo-learn: 256), use_bn=False in the paper's
    version. `last_bn` adds an affine-free BN after the output layer (SimSiam / MoCo v3
    style); `last_bias=False` drops the output layer's bias.
    """

    hidden_dims: Sequence[int]
    out_dim: int
    use_bn: bool = True
    last_bn: bool = False
    last_bias: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        if any(int(d) < 1 for d in (*self.hidden_dims, self.out_dim)):
            raise ValueError(f"Projector widths must be positive, got hidden_dims="
                             f"{tuple(self.hidden_dims)}, out_dim={self.out_dim}")
        for width in self.hidden_dims:
            x = nn.Dense(width, use_bias=not self.use_bn, dtype=self.dtype, param_dtype=jnp.float32)(x)
            if self.use_bn:
                x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                                 dtype=self.dtype, param_dtype=jnp.float32)(x)
            x = nn.relu(x)
        x = nn.Dense(self.out_dim, use_bias=self.last_bias, dtype=self.dtype, param_dtype=jnp.float32)(x)
        if self.last_bn:
            x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                             use_scale=False, use_bias=False, dtype=self.dtype)(x)
        return x.astype(jnp.float32)


class Classifier(nn.Module):
    """A linear layer to `num_classes` logits (float32)."""

    num_classes: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32)(x).astype(jnp.float32)
