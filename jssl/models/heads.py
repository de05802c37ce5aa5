"""Heads on top of backbone features: projector MLP and linear classifier."""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jssl.losses import at_least_f32, l2_normalize

__all__ = ["Projector", "Classifier", "Prototypes", "BackboneHead", "ACTIVATIONS"]

ACTIVATIONS = {"relu": nn.relu, "gelu": lambda x: nn.gelu(x, approximate=False)}


class Projector(nn.Module):
    """MLP head: per hidden width, Linear (no bias when BN follows) - BN - ReLU; then a Linear.

    (N, F) -> (N, out_dim) float32. BatchNorm has PyTorch's defaults (momentum 0.1 there,
    0.9 here; eps 1e-5). Instances: the Barlow Twins projector (Zbontar et al. 2021;
    solo-learn) is hidden_dims=(2048, 2048), out_dim=2048; SimCLR's (Chen et al. 2020) is
    hidden_dims=(2048,), out_dim=128 (solo-learn: 256), use_bn=False in the paper's
    version. `last_bn` adds an affine-free BN after the output layer (SimSiam / MoCo v3
    style); `last_bias=False` drops the output layer's bias. `activation="gelu"` (exact
    GELU, PyTorch's default) is DINO's head (Caron et al. 2021).
    """

    hidden_dims: Sequence[int]
    out_dim: int
    use_bn: bool = True
    last_bn: bool = False
    last_bias: bool = True
    activation: str = "relu"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        if any(int(d) < 1 for d in (*self.hidden_dims, self.out_dim)):
            raise ValueError(
                f"Projector widths must be positive, got hidden_dims="
                f"{tuple(self.hidden_dims)}, out_dim={self.out_dim}"
            )
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"Projector.activation must be one of {', '.join(ACTIVATIONS)}, "
                f"got {self.activation!r}"
            )
        act = ACTIVATIONS[self.activation]
        for width in self.hidden_dims:
            x = nn.Dense(
                width, use_bias=not self.use_bn, dtype=self.dtype, param_dtype=jnp.float32
            )(x)
            if self.use_bn:
                x = nn.BatchNorm(
                    use_running_average=not train,
                    momentum=0.9,
                    epsilon=1e-5,
                    dtype=self.dtype,
                    param_dtype=jnp.float32,
                )(x)
            x = act(x)
        x = nn.Dense(
            self.out_dim, use_bias=self.last_bias, dtype=self.dtype, param_dtype=jnp.float32
        )(x)
        if self.last_bn:
            x = nn.BatchNorm(
                use_running_average=not train,
                momentum=0.9,
                epsilon=1e-5,
                use_scale=False,
                use_bias=False,
                dtype=self.dtype,
            )(x)
        return at_least_f32(x)


class Classifier(nn.Module):
    """A linear layer to `num_classes` logits (float32)."""

    num_classes: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return at_least_f32(
            nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32)(x)
        )


class Prototypes(nn.Module):
    """Scores of L2-normalised embeddings against K prototype vectors (no bias).

    (N, D) -> (N, K) float32: ``l2norm(z) @ W`` with W of shape (D, K) (param "kernel").

    * SwAV (Caron et al. 2020): ``normalize_weights=False``; the method renormalises the
      columns of W after every optimizer step (the official code normalises the prototypes
      in place before each step), so the forward sees unit prototypes and the gradient is
      that of a plain linear layer.
    * DINO (Caron et al. 2021): ``normalize_weights=True`` is its weight-normalised last
      layer with the norm fixed to 1 (``norm_last_layer=True``): ``W / ||W||`` per column
      inside the forward, gradient through the normalisation.
    """

    num_prototypes: int
    normalize_weights: bool = False

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        z = l2_normalize(at_least_f32(z))
        w = self.param(
            "kernel",
            nn.initializers.lecun_normal(),
            (z.shape[-1], self.num_prototypes),
            jnp.float32,
        )
        if self.normalize_weights:
            w = l2_normalize(w, axis=0)
        return z @ w


class BackboneHead(nn.Module):
    """A backbone and a head on its features: the classification methods (rotation and
    jigsaw pretexts, the cluster-transfer student).

    `__call__` returns (backbone features h, head output) of (N, H, W, C) images, or of
    (N, T, t, t, C) tiles (jigsaw: the backbone runs on all N*T tiles, weights shared, and
    the head reads the T tile features concatenated in puzzle order). `features` is the
    backbone alone (evaluation).
    """

    backbone: nn.Module
    head: nn.Module

    def __call__(self, x: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
        if x.ndim == 5:
            n, t = x.shape[:2]
            h = self.backbone(x.reshape((n * t,) + x.shape[2:]), train=train)
            return h, self.head(h.reshape(n, t * h.shape[-1]), train=train)
        h = self.backbone(x, train=train)
        return h, self.head(h, train=train)

    def features(self, x: jax.Array, train: bool = False) -> jax.Array:
        return self.backbone(x, train=train)
