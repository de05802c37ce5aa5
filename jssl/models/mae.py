"""The MAE decoder (He et al. 2022): a small Transformer that reconstructs every patch from
the encoder's visible tokens and a shared mask token, as the official models_mae.py."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jssl.losses import at_least_f32
from jssl.models.vit import _Block

__all__ = ["MAEDecoder", "sincos_posemb"]


def sincos_posemb(width: int, grid: tuple[int, int], cls_token: bool = True) -> np.ndarray:
    """(1, [1 +] h * w, width) fixed 2-D sine-cosine position embeddings (the official
    `get_2d_sincos_pos_embed`: half the channels encode the row, half the column, each as
    sin and cos of 10000**(-k / (width / 4)) times the position; a zero row for the class
    token)."""
    if width % 4:
        raise ValueError(
            f"sine-cosine position embeddings need a width divisible by 4, got {width}"
        )
    h, w = grid

    def one_d(pos):
        omega = 1.0 / 10000 ** (np.arange(width // 4, dtype=np.float64) / (width / 4))
        out = np.outer(pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    cols, rows = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    emb = np.concatenate([one_d(cols), one_d(rows)], axis=1)  # the official order: w, then h
    if cls_token:
        emb = np.concatenate([np.zeros((1, width)), emb], axis=0)
    return emb[None].astype(np.float32)


class MAEDecoder(nn.Module):
    """(N, 1 + K, D) encoder tokens (class token first) of the K visible patches, and
    `ids_restore` (N, L) -> (N, L, patch_dim) reconstructions of all L patches.

    Embeds the tokens to `width`, fills the L - K removed positions with a learned mask
    token, puts every patch back in the image's order, adds fixed sine-cosine positions,
    runs `depth` pre-norm blocks and predicts each patch's pixels (the class token is
    dropped from the output)."""

    patch_dim: int
    width: int = 512
    depth: int = 8
    num_heads: int = 16
    mlp_ratio: int = 4
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(
        self, tokens: jax.Array, ids_restore: jax.Array, grid: tuple[int, int], train: bool
    ) -> jax.Array:
        dense = dict(dtype=self.dtype, param_dtype=jnp.float32)
        x = nn.Dense(self.width, name="decoder_embed", **dense)(tokens)
        n, length = ids_restore.shape
        mask_token = self.param(
            "mask_token", nn.initializers.normal(0.02), (1, 1, self.width), jnp.float32
        )
        hidden = length - (x.shape[1] - 1)
        patches = jnp.concatenate(
            [x[:, 1:], jnp.broadcast_to(mask_token.astype(x.dtype), (n, hidden, self.width))],
            axis=1,
        )
        patches = jnp.take_along_axis(patches, ids_restore[:, :, None].astype(jnp.int32), axis=1)
        x = jnp.concatenate([x[:, :1], patches], axis=1)
        x = x + jnp.asarray(sincos_posemb(self.width, grid), x.dtype)
        for i in range(self.depth):
            x = _Block(
                self.num_heads,
                self.mlp_ratio * self.width,
                0.0,
                self.dtype,
                name=f"decoder_blocks_{i}",
            )(x, train)
        x = nn.LayerNorm(epsilon=1e-6, name="decoder_norm", **dense)(x)
        return at_least_f32(nn.Dense(self.patch_dim, name="decoder_pred", **dense)(x)[:, 1:])
