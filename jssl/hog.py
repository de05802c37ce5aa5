"""Histograms of oriented gradients (Dalal & Triggs, CVPR 2005) in JAX, batched.

The handcrafted teacher of cluster-based knowledge transfer (Noroozi et al. 2018: "HOG"
row of the ImageNet linear-probe table). The computation is scikit-image's
`skimage.feature.hog` (checked against it in tests/test_hog.py), step for step:

1. optional square-root compression of the raw pixel values (no rescaling: uint8 images
   are used as 0..255);
2. central-difference gradients x[i+1] - x[i-1] along rows and columns, zero on the
   image border; with several channels, each pixel takes the channel of the largest
   gradient magnitude (the first on ties);
3. unsigned orientation atan2(g_row, g_col) in degrees mod 180, hard-assigned to one of
   `orientations` equal bins (no interpolation), magnitude-weighted sums per cell; the
   cells tile the image from its top-left corner (leftover rows and columns are unused);
4. blocks of cells_per_block cells at stride one cell, each normalised ("L1", "L1-sqrt",
   "L2" or "L2-Hys": L2, clip at 0.2, L2 again; eps 1e-5);
5. flattened in scikit-image's order (block row, block column, cell row, cell column,
   orientation).

Pure and jit-able (layer 2, beside `jssl.augment`): float32 throughout, where
scikit-image computes in float64 (and sums cells in float32); the tests bound the
difference.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

__all__ = ["hog", "hog_num_features", "BLOCK_NORMS"]

BLOCK_NORMS = ("L1", "L1-sqrt", "L2", "L2-Hys")
_EPS = 1e-5


def _pair(v, name: str) -> tuple[int, int]:
    t = (v, v) if isinstance(v, int) else tuple(v)
    if len(t) != 2 or not all(isinstance(i, int) and i >= 1 for i in t):
        raise ValueError(f"{name} must be a positive int or a pair of them, got {v!r}")
    return t  # type: ignore[return-value]


def _grid(shape: tuple[int, int], pixels_per_cell, cells_per_block):
    (h, w), (ch, cw), (bh, bw) = shape, pixels_per_cell, cells_per_block
    n_cells = (h // ch, w // cw)
    n_blocks = (n_cells[0] - bh + 1, n_cells[1] - bw + 1)
    if min(n_blocks) <= 0:
        raise ValueError(
            f"images of {h}x{w} are too small for HOG with pixels_per_cell="
            f"{pixels_per_cell} and cells_per_block={cells_per_block}: need at "
            f"least {bh * ch}x{bw * cw}"
        )
    return n_cells, n_blocks


def hog_num_features(
    image_shape: Sequence[int],
    *,
    orientations: int = 9,
    pixels_per_cell: int | Sequence[int] = (8, 8),
    cells_per_block: int | Sequence[int] = (3, 3),
) -> int:
    """Length of the `hog` descriptor of (H, W[, C]) images."""
    ppc, cpb = _pair(pixels_per_cell, "pixels_per_cell"), _pair(cells_per_block, "cells_per_block")
    _, (nbr, nbc) = _grid(tuple(image_shape[:2]), ppc, cpb)
    return nbr * nbc * cpb[0] * cpb[1] * int(orientations)


def _gradients(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Central differences of (B, H, W, C) along rows and columns, zero on the border."""
    g_row = jnp.zeros_like(x).at[:, 1:-1].set(x[:, 2:] - x[:, :-2])
    g_col = jnp.zeros_like(x).at[:, :, 1:-1].set(x[:, :, 2:] - x[:, :, :-2])
    return g_row, g_col


def _normalize_blocks(blocks: jax.Array, method: str) -> jax.Array:
    """Normalise each block (the last three axes: cell row, cell column, orientation)."""
    axes = (-3, -2, -1)
    if method == "L1":
        return blocks / (jnp.sum(jnp.abs(blocks), axis=axes, keepdims=True) + _EPS)
    if method == "L1-sqrt":
        return jnp.sqrt(blocks / (jnp.sum(jnp.abs(blocks), axis=axes, keepdims=True) + _EPS))
    out = blocks / jnp.sqrt(jnp.sum(blocks**2, axis=axes, keepdims=True) + _EPS**2)
    if method == "L2":
        return out
    out = jnp.minimum(out, 0.2)  # L2-Hys (Lowe 2004): clip, then renormalise
    return out / jnp.sqrt(jnp.sum(out**2, axis=axes, keepdims=True) + _EPS**2)


def hog(
    images: jax.Array,
    *,
    orientations: int = 9,
    pixels_per_cell: int | Sequence[int] = (8, 8),
    cells_per_block: int | Sequence[int] = (3, 3),
    block_norm: str = "L2-Hys",
    transform_sqrt: bool = False,
) -> jax.Array:
    """HOG descriptors of a batch of images, as `skimage.feature.hog` computes them.

    Args:
      images: (B, H, W) or (B, H, W, C) images, any real dtype (uint8 is used as 0..255);
        C > 1 takes, per pixel, the channel of the largest gradient (skimage's
        `channel_axis=-1`).
      orientations: number of unsigned orientation bins over [0, 180) degrees.
      pixels_per_cell, cells_per_block: (rows, cols) or one int for both.
      block_norm: one of "L1", "L1-sqrt", "L2", "L2-Hys" (the default, as scikit-image).
      transform_sqrt: square-root (gamma) compression of the pixel values first.

    Returns:
      (B, F) float32 descriptors, F = hog_num_features(...), in scikit-image's order.

    Example:
      >>> import numpy as np
      >>> hog(np.zeros((2, 32, 32, 3), np.uint8)).shape
      (2, 324)
    """
    ppc, cpb = _pair(pixels_per_cell, "pixels_per_cell"), _pair(cells_per_block, "cells_per_block")
    if not isinstance(orientations, int) or orientations < 1:
        raise ValueError(f"orientations must be a positive integer, got {orientations!r}")
    if block_norm not in BLOCK_NORMS:
        raise ValueError(f"block_norm must be one of {', '.join(BLOCK_NORMS)}, got {block_norm!r}")
    x = jnp.asarray(images)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise ValueError(f"images must be (B, H, W) or (B, H, W, C), got shape {x.shape}")
    x = x.astype(jnp.float32)
    b, h, w, _ = x.shape
    (ncr, ncc), (nbr, nbc) = _grid((h, w), ppc, cpb)
    if transform_sqrt:
        x = jnp.sqrt(x)

    g_row, g_col = _gradients(x)
    if x.shape[-1] > 1:
        # Squared magnitudes are exact for integer pixel values (< 2^24), so ties between
        # channels go to the first one exactly as np.argmax of np.hypot does.
        best = jnp.argmax(g_row**2 + g_col**2, axis=-1)[..., None]
        g_row = jnp.take_along_axis(g_row, best, axis=-1)
        g_col = jnp.take_along_axis(g_col, best, axis=-1)
    g_row, g_col = g_row[..., 0], g_col[..., 0]
    magnitude = jnp.sqrt(g_row**2 + g_col**2)
    angle = jnp.mod(jnp.degrees(jnp.arctan2(g_row, g_col)), 180.0)

    # Bin i holds angles in [edge_i, edge_{i+1}) with edge_i = 180 / n * i (scikit-image
    # compares with the edges themselves, so an angle exactly on an edge goes up).
    edges = jnp.asarray([180.0 / orientations * i for i in range(orientations + 1)], jnp.float32)
    bins = jnp.sum(angle[..., None] >= edges[None, None, None, 1:-1], axis=-1)
    inside = angle < edges[-1]
    votes = (
        jax.nn.one_hot(bins, orientations, dtype=jnp.float32) * (magnitude * inside)[..., None]
    )  # (B, H, W, n)

    (ch, cw) = ppc
    votes = votes[:, : ncr * ch, : ncc * cw].reshape(b, ncr, ch, ncc, cw, orientations)
    cells = jnp.sum(votes, axis=(2, 4))  # (B, ncr, ncc, n)

    # Blocks at stride one cell: (B, nbr, nbc, bh, bw, n).
    bh, bw = cpb
    rows = jnp.arange(nbr)[:, None] + jnp.arange(bh)[None, :]  # (nbr, bh)
    cols = jnp.arange(nbc)[:, None] + jnp.arange(bw)[None, :]  # (nbc, bw)
    blocks = cells[:, rows[:, None, :, None], cols[None, :, None, :]]
    blocks = _normalize_blocks(blocks, block_norm)
    return blocks.reshape(b, nbr * nbc * bh * bw * orientations)
