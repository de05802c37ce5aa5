"""Vision Transformer backbones (Dosovitskiy et al. 2021; the DeiT sizes of Touvron et al.
2021), laid out tensor for tensor like timm's `vit_*_patch16_224` (`jssl.models.torch_layout`).

Pre-norm blocks: x + Attn(LN(x)), then x + MLP(LN(x)), LayerNorm epsilon 1e-6, exact
(erf) GELU, a learned position embedding. `pool="token"`: a class token, the features are
the final LayerNorm of it (timm's default); `pool="gap"`: no class token, the mean of the
patch tokens followed by a LayerNorm (timm's `global_pool="avg"`, whose norm is `fc_norm`).

The position embedding is learned for the grid of the images the model is initialised on;
an input of another size (multi-crop small views, evaluation at another resolution) gets
it resampled bicubically to its grid (`resample_posemb`, as big_vision's), the class
token's position kept. Stochastic depth (`drop_path`, the rate of the last block, linear in
depth as DeiT) needs a "dropout" PRNG stream in training.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jssl.losses import at_least_f32

__all__ = ["ViT", "resample_posemb"]


def resample_posemb(posemb: jax.Array, grid: tuple[int, int]) -> jax.Array:
    """(1, h * w, D) position embeddings of an h x w grid (h = w) resampled bicubically to
    `grid` (as big_vision's `resample_posemb`)."""
    n, d = posemb.shape[1], posemb.shape[2]
    side = int(round(n**0.5))
    if side * side != n:
        raise ValueError(f"position embeddings of {n} tokens are not a square grid")
    if (side, side) == tuple(grid):
        return posemb
    x = posemb.reshape(1, side, side, d).astype(jnp.float32)
    x = jax.image.resize(x, (1, *grid, d), method="bicubic")
    return x.reshape(1, grid[0] * grid[1], d).astype(posemb.dtype)


class _Attention(nn.Module):
    num_heads: int
    dtype: Any

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, n, d = x.shape
        hd = d // self.num_heads
        qkv = nn.Dense(3 * d, dtype=self.dtype, param_dtype=jnp.float32, name="qkv")(x)
        q, k, v = jnp.moveaxis(qkv.reshape(b, n, 3, self.num_heads, hd), 2, 0)
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) * hd**-0.5
        weights = jax.nn.softmax(at_least_f32(logits), axis=-1).astype(v.dtype)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, n, d)
        return nn.Dense(d, dtype=self.dtype, param_dtype=jnp.float32, name="proj")(out)


class _Block(nn.Module):
    num_heads: int
    mlp_dim: int
    drop_path: float
    dtype: Any

    def _drop(self, y: jax.Array, train: bool) -> jax.Array:
        """Stochastic depth: the branch dropped for a whole example, kept ones rescaled."""
        if not train or self.drop_path == 0.0:
            return y
        keep = 1.0 - self.drop_path
        mask = jax.random.bernoulli(self.make_rng("dropout"), keep, (y.shape[0], 1, 1))
        return jnp.where(mask, y / keep, 0.0).astype(y.dtype)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        norm = dict(epsilon=1e-6, dtype=self.dtype, param_dtype=jnp.float32)
        dense = dict(dtype=self.dtype, param_dtype=jnp.float32)
        y = _Attention(self.num_heads, self.dtype, name="attn")(
            nn.LayerNorm(name="norm1", **norm)(x)
        )
        x = x + self._drop(y, train)
        y = nn.Dense(self.mlp_dim, name="fc1", **dense)(nn.LayerNorm(name="norm2", **norm)(x))
        y = nn.Dense(x.shape[-1], name="fc2", **dense)(nn.gelu(y, approximate=False))
        return x + self._drop(y, train)


class ViT(nn.Module):
    """(N, H, W, C) images -> (N, width) features; H and W multiples of `patch_size`.

    Fields: `width` (embedding dimension), `depth` (blocks), `num_heads`, `mlp_dim` (4 x
    width in the paper), `patch_size`, `pool` ("token" or "gap"), `drop_path` (stochastic
    depth rate of the last block). `conv` is accepted for the backbone registry's sake and
    unused: the patch embedding is a matmul over the flattened patches (the same numbers as
    a stride-`patch_size` convolution, whose kernel layout its parameter keeps).
    """

    width: int = 384
    depth: int = 12
    num_heads: int = 6
    mlp_dim: int = 1536
    patch_size: int = 16
    pool: str = "token"
    drop_path: float = 0.0
    dtype: Any = jnp.float32
    conv: Any = None

    @property
    def num_features(self) -> int:
        return self.width

    @property
    def num_layers(self) -> int:
        """Layers for layer-wise learning-rate decay: the embeddings (0), the blocks
        (1 .. depth) and the final norm with whatever sits on the features (depth + 1)."""
        return self.depth + 1

    def layer_of(self, name: str) -> int:
        """The layer of the backbone parameter `name` (its top-level key) for layer-wise
        learning-rate decay, as MAE's `param_groups_lrd`: patch and position embeddings and
        the class token 0, block i i + 1, the final norm `num_layers`."""
        if name.startswith("blocks_"):
            return int(name.split("_", 1)[1]) + 1
        if name in ("patch_embed", "patch_embed_bias", "cls_token", "pos_embed"):
            return 0
        return self.num_layers

    def input_error(self, size: int, name: str = "a ViT") -> str | None:
        """Why size x size images cannot go through (None when they can), a phrase after
        the size: whole patches."""
        p = self.patch_size
        if size % p:
            return (
                f"is not a multiple of model.patch_size={p} ({name} takes whole patches); "
                f"use a multiple of {p}"
            )
        return None

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        train: bool,
        ids_keep: jax.Array | None = None,
        return_tokens: bool = False,
    ) -> jax.Array:
        """Features (N, width); `ids_keep` (N, K): only these patches enter the blocks (MAE's
        encoder on the visible patches); `return_tokens`: the final LayerNorm of every token
        (N, 1 + K, width), class token first (pool "token" only)."""
        if self.pool not in ("token", "gap"):
            raise ValueError(f"pool must be 'token' or 'gap', got {self.pool!r}")
        if x.ndim != 4:
            raise ValueError(f"ViT takes NHWC images (N, H, W, C), got shape {x.shape}")
        b, h, w, c = x.shape
        p = self.patch_size
        if h % p or w % p:
            raise ValueError(f"images of {h}x{w} are not a whole number of {p}x{p} patches")
        x = x.astype(self.dtype)
        patches = x.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
        kernel = self.param(
            "patch_embed",
            nn.initializers.lecun_normal(in_axis=(0, 1, 2), out_axis=3),
            (p, p, c, self.width),
            jnp.float32,
        )
        bias = self.param("patch_embed_bias", nn.initializers.zeros, (self.width,), jnp.float32)
        x = jnp.einsum("bhwpqc,pqcd->bhwd", patches, kernel.astype(self.dtype)) + bias.astype(
            self.dtype
        )
        grid = x.shape[1:3]
        x = x.reshape(b, grid[0] * grid[1], self.width)
        extra = 1 if self.pool == "token" else 0
        if self.has_variable("params", "pos_embed"):  # its shape: the initialisation's grid
            posemb = self.get_variable("params", "pos_embed")
        else:
            posemb = self.param(
                "pos_embed",
                nn.initializers.normal(stddev=0.02),
                (1, extra + grid[0] * grid[1], self.width),
                jnp.float32,
            )
        x = x + resample_posemb(posemb[:, extra:], grid).astype(x.dtype)
        if ids_keep is not None:  # the visible patches only (MAE), after their positions
            x = jnp.take_along_axis(x, ids_keep[:, :, None].astype(jnp.int32), axis=1)
        if self.pool == "token":
            cls = self.param(
                "cls_token", nn.initializers.normal(1e-6), (1, 1, self.width), jnp.float32
            )
            cls = jnp.broadcast_to((cls + posemb[:, :1]).astype(x.dtype), (b, 1, self.width))
            x = jnp.concatenate([cls, x], axis=1)
        for i in range(self.depth):
            rate = self.drop_path * i / max(self.depth - 1, 1)
            x = _Block(self.num_heads, self.mlp_dim, rate, self.dtype, name=f"blocks_{i}")(x, train)
        norm = dict(epsilon=1e-6, dtype=self.dtype, param_dtype=jnp.float32)
        if return_tokens:
            if self.pool != "token":
                raise ValueError("return_tokens needs pool='token' (the tokens' final norm)")
            return at_least_f32(nn.LayerNorm(name="norm", **norm)(x))
        if self.pool == "token":
            return at_least_f32(nn.LayerNorm(name="norm", **norm)(x)[:, 0])
        return at_least_f32(nn.LayerNorm(name="fc_norm", **norm)(jnp.mean(x, axis=1)))
