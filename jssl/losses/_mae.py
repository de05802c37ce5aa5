"""Masked image modelling (He et al. 2022, "Masked Autoencoders Are Scalable Vision
Learners"): the patches, the random mask and the reconstruction loss, as the official code
(facebookresearch/mae, models_mae.py) defines them."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jssl.losses._common import _at_least_f32

__all__ = ["patchify", "unpatchify", "random_masking", "mae"]


def patchify(images: jax.Array, patch_size: int) -> jax.Array:
    """(N, H, W, C) -> (N, L, p * p * C), L = (H / p) * (W / p) patches in row-major order,
    each flattened as (row, column, channel): the official `patchify` (its NCHW input
    rearranged 'nchpwq->nhwpqc') and the order of a ViT's patch embedding."""
    n, h, w, c = images.shape
    p = patch_size
    if h % p or w % p:
        raise ValueError(f"images of {h}x{w} are not a whole number of {p}x{p} patches")
    x = images.reshape(n, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(n, (h // p) * (w // p), p * p * c)


def unpatchify(patches: jax.Array, patch_size: int, height: int, width: int) -> jax.Array:
    """The inverse of `patchify`: (N, L, p * p * C) -> (N, height, width, C)."""
    n, _, d = patches.shape
    p = patch_size
    c = d // (p * p)
    x = patches.reshape(n, height // p, width // p, p, p, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(n, height, width, c)


def random_masking(
    key: jax.Array, batch: int, num_patches: int, mask_ratio: float = 0.75
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per-example random masking by sorting uniform noise (the official `random_masking`).

    Returns (ids_keep (N, K) int32: the visible patches, in the order the encoder sees them;
    mask (N, L) float32: 1 for a removed patch, 0 for a kept one, in the image's order;
    ids_restore (N, L) int32: where each patch of the image's order sits in the shuffled
    order, to put the decoder's tokens back). K = int(L * (1 - mask_ratio)), as the
    official code rounds. A pure function of `key`: the same key, the same mask.
    """
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    keep = int(num_patches * (1 - mask_ratio))
    noise = jax.random.uniform(key, (batch, num_patches))
    ids_shuffle = jnp.argsort(noise, axis=1).astype(jnp.int32)
    ids_restore = jnp.argsort(ids_shuffle, axis=1).astype(jnp.int32)
    mask = (ids_restore >= keep).astype(jnp.float32)
    return ids_shuffle[:, :keep], mask, ids_restore


def mae(
    pred: jax.Array, target: jax.Array, mask: jax.Array, *, norm_pix_loss: bool = True
) -> jax.Array:
    """The MAE loss: mean squared error per patch, averaged over the removed patches only.

    Args:
      pred: (N, L, D) the decoder's reconstruction of every patch.
      target: (N, L, D) the image's patches (`patchify` of the input, in pixels as the
        encoder saw them).
      mask: (N, L), 1 for a removed patch, 0 for a kept one (`random_masking`).
      norm_pix_loss: normalise each target patch by its own mean and standard deviation
        first (the paper's better-representation setting, its default here). The variance
        is the unbiased one (N - 1), as torch's `Tensor.var` in the official code, with
        1e-6 added before the square root.

    Returns:
      Scalar float32 loss (float64 for float64 inputs).
    """
    pred, target, mask = _at_least_f32(pred), _at_least_f32(target), _at_least_f32(mask)
    if pred.shape != target.shape or mask.shape != pred.shape[:2]:
        raise ValueError(
            f"pred {pred.shape} and target {target.shape} must match, mask {mask.shape} must "
            "be their first two dimensions"
        )
    if norm_pix_loss:
        mean = jnp.mean(target, axis=-1, keepdims=True)
        var = jnp.var(target, axis=-1, keepdims=True, ddof=1)
        target = (target - mean) / jnp.sqrt(var + 1e-6)
    per_patch = jnp.mean(jnp.square(pred - target), axis=-1)
    return jnp.sum(per_patch * mask) / jnp.sum(mask)
