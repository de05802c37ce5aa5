"""Inputs of the classification pretexts: rotations, jigsaw puzzles, Jigsaw++ (layer 2).

Pure functions of image batches, no Flax, no config. Random functions take one PRNG key
and split it into one key per example (`jax.random.split(key, B)`), vmapped, so they jit
and shard over the batch axis like `jssl.augment`.

- Rotation (Gidaris, Singh, Komodakis, ICLR 2018, arXiv 1803.07728): `rotate_images`,
  `rotation_batch` (all four rotations of every image, label k for k * 90 degrees).
- Jigsaw (Noroozi & Favaro, ECCV 2016, arXiv 1603.09246): `permutation_set`,
  `jigsaw_tiles`.
- Jigsaw++ (Noroozi, Vinjimoor, Favaro, Pirsiavash, CVPR 2018, arXiv 1805.00385):
  `jigsaw_pp_tiles`.

Facts taken from the official Caffe code (github.com/MehdiNoroozi/JigsawPuzzleSolver,
`caffe-master-jps++/src/caffe/data_transformer.cpp`, `merge_data_layer.cpp`,
`train_val_cfn_jps++.prototxt`): a 255-px crop cut into 3 x 3 cells of 85 px; a 64-px tile
per cell at a random offset of 0..18 px per axis, plus 0..2 px more per colour channel
(against chromatic aberration); the label is a uniform index into the permutation set and
output tile i holds cell `perm[label][i]`; grayscale (channel mean) for 50% of the puzzles
(the paper reports 70%), half of the colour ones get a fixed colour projection (not
implemented here); per-tile mean/variance normalisation over all pixels and channels
(Caffe MVN, `across_channels: true`) followed by a x50 scale in the network (not applied
here); Jigsaw++ replaces `rand() % 3` (0, 1 or 2) distinct tile positions with distinct
tiles of one other image.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "default_tile_size",
    "jigsaw_pp_tiles",
    "jigsaw_tiles",
    "min_hamming_distance",
    "permutation_set",
    "rotate_images",
    "rotation_batch",
]

_MAX_TILES = 10  # 10! = 3.6M candidates (36 MB as int8); 11! would need 440 MB
_NORM_EPS = 1e-8  # variance floor of the per-tile normalisation: a flat tile maps to 0


# --- Permutation sets ---------------------------------------------------------------------


@functools.cache
def _all_permutations(n: int) -> np.ndarray:
    """All n! permutations of range(n) in lexicographic order, int8 (n!, n), read-only.

    Built from the (n-1)! table: for each first element f, the rest is the sorted
    remainder indexed by the smaller table, which keeps lexicographic order.
    """
    table = np.zeros((1, 0), np.int8)
    for m in range(1, n + 1):
        blocks = []
        for first in range(m):
            rest = np.delete(np.arange(m, dtype=np.int8), first)[table]
            blocks.append(np.concatenate([np.full((len(table), 1), first, np.int8), rest], axis=1))
        table = np.concatenate(blocks, axis=0)
    table.flags.writeable = False
    return table


@functools.lru_cache(maxsize=32)
def _permutation_set(
    num_permutations: int, num_tiles: int, seed: int, selection: str
) -> np.ndarray:
    cands = _all_permutations(num_tiles)
    n = len(cands)
    columns = np.ascontiguousarray(cands.T)  # (num_tiles, n): one contiguous row per slot
    min_dist = np.full(n, num_tiles + 1, np.uint8)  # running min distance to the chosen set
    total = np.zeros(n, np.int64)  # running sum of distances to the chosen set
    chosen = np.empty(num_permutations, np.int64)
    j = int(np.random.default_rng(seed).integers(n))
    for i in range(num_permutations):
        chosen[i] = j
        # Hamming distance of every candidate to row j, in uint8 (bool viewed as 0/1 bytes).
        dist = (columns[0] != cands[j, 0]).view(np.uint8).copy()
        for slot in range(1, num_tiles):
            dist += (columns[slot] != cands[j, slot]).view(np.uint8)
        np.minimum(min_dist, dist, out=min_dist)
        total += dist
        if selection == "maxmin":
            # Lexicographic key (min distance, total distance); a chosen row has min 0.
            score = (min_dist.astype(np.int64) << 40) | total
        else:
            score = np.where(min_dist > 0, total, -1)  # chosen rows never win again
        j = int(np.argmax(score))  # first maximum: the lowest lexicographic index
    out = cands[chosen].astype(np.int32)
    out.flags.writeable = False
    return out


def permutation_set(
    num_permutations: int, num_tiles: int = 9, *, seed: int = 0, selection: str = "maxmin"
) -> np.ndarray:
    """A set of distinct permutations of range(num_tiles) far apart in Hamming distance.

    Greedy selection in the manner of Noroozi & Favaro 2016 (arXiv 1603.09246, Algorithm 1,
    "maximal" sets): the first row is candidate number `default_rng(seed).integers(n!)` of
    all n! permutations in lexicographic order; each further row is the remaining candidate
    that scores highest against the rows chosen so far, ties going to the lowest
    lexicographic index. Two scores:

    - "maxmin" (default): the candidate's minimum Hamming distance to the chosen rows, ties
      broken by its total distance to them. This maximises the minimum distance of the set
      greedily, the property the papers report.
    - "mean": the paper's own rule. Algorithm 1 scores a candidate by the sum over the
      chosen rows of its Hamming distances, D_bar = 1^T D (equivalently the mean; the
      PyTorch port bbrattoli/JigsawPuzzlePytorch `select_permutations.py` takes the argmax
      of `cdist(..., "hamming").mean(axis=0)`), so its sets can contain close pairs.

    Running min and sum arrays over the candidates are updated once per added row, so
    each step costs O(n! * num_tiles) vectorised NumPy work; 1000 rows of 9 tiles take
    about 1 s on one CPU core, then come from an lru_cache.

    Measured minimum Hamming distances (9 tiles, "maxmin", seeds 0-3 alike): P = 100 -> 6,
    P = 1000 -> 5 (P = 701 -> 5); the paper's "mean" rule gives 2 for all three, a random
    set of distinct permutations 3 (P = 100) and 2 (P = 1000). The official Jigsaw++ code ships 701
    permutations with minimum distance 3 (docs/methods.md).

    Args:
      num_permutations: P, 1 <= P <= num_tiles!.
      num_tiles: permutation length, 1..10 (9 for the 3 x 3 puzzle).
      seed: picks the first row; the same arguments always give the same set.
      selection: "maxmin" or "mean" (see above).

    Returns:
      int32 array (P, num_tiles); row p is a permutation of range(num_tiles), rows are
      distinct. A fresh (writable) copy each call.
    """
    if not isinstance(num_tiles, int) or not 1 <= num_tiles <= _MAX_TILES:
        raise ValueError(f"num_tiles must be an integer in [1, {_MAX_TILES}], got {num_tiles!r}")
    limit = math.factorial(num_tiles)
    if not isinstance(num_permutations, int) or not 1 <= num_permutations <= limit:
        raise ValueError(
            f"num_permutations must be an integer in [1, {num_tiles}! = {limit}] "
            f"for num_tiles={num_tiles}, got {num_permutations!r}"
        )
    if selection not in ("maxmin", "mean"):
        raise ValueError(f"selection must be 'maxmin' or 'mean', got {selection!r}")
    return _permutation_set(num_permutations, num_tiles, int(seed), selection).copy()


def min_hamming_distance(perms) -> int:
    """Smallest Hamming distance (positions that differ) between two rows of `perms` (P, n).

    Raises ValueError for fewer than two rows.
    """
    p = np.asarray(perms)
    if p.ndim != 2 or len(p) < 2:
        raise ValueError(f"perms must have shape (P, n) with P >= 2, got {p.shape}")
    dist = np.zeros((len(p), len(p)), np.int32)
    for slot in range(p.shape[1]):
        dist += p[:, None, slot] != p[None, :, slot]
    np.fill_diagonal(dist, p.shape[1] + 1)
    return int(dist.min())


# --- Rotations ----------------------------------------------------------------------------


def _rot90(image: jax.Array, k: int) -> jax.Array:
    """One (H, W, C) image by k * 90 degrees counter-clockwise (np.rot90 on axes (0, 1))."""
    return jnp.rot90(image, k, axes=(0, 1))


def rotate_images(images: jax.Array, k) -> jax.Array:
    """Rotate a batch (B, H, W, C) counter-clockwise by k * 90 degrees (`np.rot90`, axes (1, 2)).

    `k`: a Python int (any H, W; the result is (B, W, H, C) for odd k) or an int array of
    shape (B,) with one rotation per example, which needs square images (H == W) so that
    every example keeps the same shape; it is applied per example with `lax.switch` over
    the four rotations, vmapped. k is taken modulo 4 (negative k turns clockwise).
    """
    images = jnp.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"images must have shape (B, H, W, C), got {images.shape}")
    if isinstance(k, (int, np.integer)):
        return jnp.rot90(images, int(k), axes=(1, 2))
    k = jnp.asarray(k)
    if k.shape != images.shape[:1] or not jnp.issubdtype(k.dtype, jnp.integer):
        raise ValueError(
            f"k must be a Python int or an int array of shape ({images.shape[0]},),"
            f" got {k.dtype} {k.shape}"
        )
    if images.shape[1] != images.shape[2]:
        raise ValueError(
            f"per-example rotations need square images (H == W), got "
            f"{images.shape}; crop or resize first"
        )
    branches = [functools.partial(_rot90, k=r) for r in range(4)]
    return jax.vmap(lambda im, r: jax.lax.switch(r, branches, im))(images, jnp.mod(k, 4))


def rotation_batch(images: jax.Array) -> tuple[jax.Array, jax.Array]:
    """All four rotations of every image, the RotNet training batch (Gidaris et al. 2018).

    Args:
      images: (B, H, W, C) with H == W.

    Returns:
      rotated (4B, H, W, C) and labels (4B,) int32, grouped by rotation:
      `rotated[k * B + i] = rotate_images(images, k)[i]` and `labels[k * B + i] = k`,
      k in 0..3 counter-clockwise quarter turns.
    """
    images = jnp.asarray(images)
    if images.ndim != 4 or images.shape[1] != images.shape[2]:
        raise ValueError(f"images must have shape (B, H, W, C) with H == W, got {images.shape}")
    rotated = jnp.concatenate([rotate_images(images, r) for r in range(4)], axis=0)
    labels = jnp.repeat(jnp.arange(4, dtype=jnp.int32), images.shape[0])
    return rotated, labels


# --- Jigsaw -------------------------------------------------------------------------------


def default_tile_size(cell: int) -> int:
    """The official 64-px tile in an 85-px cell, scaled: round(cell * 64 / 85)."""
    return max(1, round(cell * 64 / 85))


def _check_jigsaw(images, permutations, grid, tile_size, color_shift, grayscale_prob):
    """Python-level checks; returns (images float32, permutations int32, cell, tile)."""
    images = jnp.asarray(images, jnp.float32)
    if images.ndim != 4 or images.shape[1] != images.shape[2]:
        raise ValueError(f"images must have shape (B, H, W, C) with H == W, got {images.shape}")
    if not isinstance(grid, int) or grid < 1:
        raise ValueError(f"grid must be an integer >= 1, got {grid!r}")
    cell = images.shape[1] // grid
    tile = default_tile_size(cell) if tile_size is None else tile_size
    if not isinstance(color_shift, int) or color_shift < 0:
        raise ValueError(f"color_shift must be an integer >= 0, got {color_shift!r}")
    if not isinstance(tile, int) or not 1 <= tile <= cell - 2 * color_shift:
        raise ValueError(
            f"tile_size must be an integer in [1, cell - 2 * color_shift] = "
            f"[1, {cell - 2 * color_shift}] (cell = H // grid = {cell}), got "
            f"{tile!r}; use a smaller tile, grid or color_shift"
        )
    if not 0.0 <= grayscale_prob <= 1.0:
        raise ValueError(f"grayscale_prob must be a probability in [0, 1], got {grayscale_prob!r}")
    if isinstance(permutations, np.ndarray) and (  # a concrete set: rows are permutations
        permutations.ndim != 2
        or not (np.sort(permutations, axis=1) == np.arange(permutations.shape[1])).all()
    ):
        raise ValueError(
            "permutations must be an array (P, grid * grid) whose rows are "
            "permutations of range(grid * grid); see permutation_set"
        )
    permutations = jnp.asarray(permutations)
    if permutations.ndim != 2 or permutations.shape[1] != grid * grid:
        raise ValueError(
            f"permutations must have shape (P, grid * grid) = (P, {grid * grid}), "
            f"got {permutations.shape}"
        )
    return images, permutations.astype(jnp.int32), cell, tile


def _randint(u: jax.Array, low, high) -> jax.Array:
    """Uniform integers in [low, high] (inclusive) from uniforms u in [0, 1)."""
    return jnp.minimum(low + jnp.floor(u * (high - low + 1)).astype(jnp.int32), high)


def _cell_tiles(key, image, permutations, *, grid, cell, tile, jitter, color_shift, grayscale_prob):
    """One image (S, S, C) -> (cell tiles (G, t, t, C) in cell order, label, puzzle order).

    Cells are numbered row-major: cell q covers rows [(q // grid) * cell, ...) and columns
    [(q % grid) * cell, ...) of the image.
    """
    n_cells, channels = grid * grid, image.shape[-1]
    s = color_shift
    # One uniform draw per example, sliced per use: every threefry call costs compile time.
    u = jax.random.uniform(key, (2 + n_cells * 2 * (1 + channels),))
    u_label, u_gray = u[0], u[1]
    u_offset = u[2 : 2 + 2 * n_cells].reshape(n_cells, 2)
    u_shift = u[2 + 2 * n_cells :].reshape(n_cells, channels, 2)
    if jitter:  # the whole channel window stays inside the cell: offsets in [s, cell-t-s]
        offsets = _randint(u_offset, s, cell - tile - s)
    else:
        offsets = jnp.full((n_cells, 2), (cell - tile) // 2, jnp.int32)
    q = np.arange(n_cells)
    origins = jnp.asarray(np.stack([q // grid, q % grid], axis=1) * cell, jnp.int32)
    starts = (origins + offsets)[:, None, :]  # (G, 1, 2)
    if s > 0:  # per channel, per axis: the official anti-chromatic-aberration shift
        starts = starts + _randint(u_shift, -s, s)
    else:
        starts = jnp.broadcast_to(starts, (n_cells, channels, 2))
    planes = jnp.moveaxis(image, -1, 0)  # (C, S, S)

    def crop(plane, start):
        return jax.lax.dynamic_slice(plane, (start[0], start[1]), (tile, tile))

    per_channel = jax.vmap(crop)  # over channels: (C, t, t)
    tiles = jax.vmap(lambda st: per_channel(planes, st))(starts)  # (G, C, t, t)
    tiles = jnp.moveaxis(tiles, 1, -1)  # (G, t, t, C)
    if grayscale_prob > 0 and channels > 1:
        # The official code's grey is the plain channel mean, for the whole puzzle.
        grey = jnp.broadcast_to(jnp.mean(tiles, axis=-1, keepdims=True), tiles.shape)
        tiles = jnp.where(u_gray < grayscale_prob, grey, tiles)
    label = _randint(u_label, 0, permutations.shape[0] - 1)
    puzzle = tiles[permutations[label]]  # position j holds cell permutations[label][j]
    return tiles, label, puzzle


def _normalize_tiles(tiles: jax.Array) -> jax.Array:
    """Zero mean, unit std per tile over its pixels and channels (Caffe MVN across channels)."""
    mean = jnp.mean(tiles, axis=(-3, -2, -1), keepdims=True)
    var = jnp.mean(jnp.square(tiles - mean), axis=(-3, -2, -1), keepdims=True)
    return (tiles - mean) * jax.lax.rsqrt(var + _NORM_EPS)


def _puzzles(key, images, permutations, *, grid, tile_size, jitter, color_shift, grayscale_prob):
    images, permutations, cell, tile = _check_jigsaw(
        images, permutations, grid, tile_size, color_shift, grayscale_prob
    )
    fn = functools.partial(
        _cell_tiles,
        permutations=permutations,
        grid=grid,
        cell=cell,
        tile=tile,
        jitter=bool(jitter),
        color_shift=color_shift,
        grayscale_prob=float(grayscale_prob),
    )
    keys = jax.random.split(key, images.shape[0])
    return jax.vmap(fn)(keys, images)


def jigsaw_tiles(
    key: jax.Array,
    images: jax.Array,
    permutations,
    *,
    grid: int = 3,
    tile_size: int | None = None,
    jitter: bool = True,
    normalize_tiles: bool = True,
    color_shift: int = 0,
    grayscale_prob: float = 0.0,
) -> tuple[jax.Array, jax.Array]:
    """Jigsaw puzzles (Noroozi & Favaro 2016): shuffled tiles and the permutation index.

    Each image (already cropped and augmented, square) is cut into grid x grid cells of
    side cell = H // grid, numbered row-major from the top left (pixels past grid * cell
    on the bottom and right are unused). From each cell a tile of side t = `tile_size`
    (default round(cell * 64 / 85): the official 64-px tile in an 85-px cell) is cut at
    a uniformly random integer offset per example, per tile and per axis in
    [color_shift, cell - t - color_shift] when `jitter`, else centred at
    (cell - t) // 2. A label is drawn uniformly from range(P) per example, and output
    position j holds the tile of cell `permutations[label][j]` (the official code's
    convention, so the model predicts which permutation arranged the cells).

    `color_shift` = s > 0 moves each colour channel's window of each tile by its own
    random integer offset in [-s, s] per axis, so the channels are misaligned by up to 2s
    pixels and chromatic aberration cannot locate a tile; the window stays inside its
    cell. s = 1 corresponds to the official code's extra 0..2 px per channel and axis
    (there: tile offset 0..18 plus 0..2 per channel in an 85-px cell).
    `grayscale_prob`: the fraction of puzzles whose tiles are replaced by their channel
    mean (all tiles of a puzzle together); the official code uses 0.5, the paper reports
    70%. `normalize_tiles`: each tile to zero mean and unit std over its pixels and
    channels (the official Caffe MVN layer; its network then scales by 50, not done here).

    Args:
      key: PRNG key; example i uses `jax.random.split(key, B)[i]`.
      images: float (B, H, W, C), H == W; cast to float32.
      permutations: int (P, grid * grid), e.g. `permutation_set(P)`; a NumPy or jnp
        array (pass it as a jnp array argument under jit to avoid baking it in).
      grid, tile_size, jitter, normalize_tiles, color_shift, grayscale_prob: static.

    Returns:
      tiles float32 (B, grid * grid, t, t, C) and labels int32 (B,) in [0, P).
    """
    _, labels, tiles = _puzzles(
        key,
        images,
        permutations,
        grid=grid,
        tile_size=tile_size,
        jitter=jitter,
        color_shift=color_shift,
        grayscale_prob=grayscale_prob,
    )
    return (_normalize_tiles(tiles) if normalize_tiles else tiles), labels


def jigsaw_pp_tiles(
    key: jax.Array,
    images: jax.Array,
    permutations,
    *,
    max_intruders: int = 2,
    grid: int = 3,
    tile_size: int | None = None,
    jitter: bool = True,
    normalize_tiles: bool = True,
    color_shift: int = 0,
    grayscale_prob: float = 0.0,
) -> tuple[jax.Array, jax.Array]:
    """Jigsaw++ puzzles (Noroozi et al. 2018): jigsaw puzzles with tiles of other images.

    First exactly `jigsaw_tiles(key, images, permutations, ...)` (same key, same tiles,
    same labels). Then for each example i, with keys from
    `jax.random.split(jax.random.fold_in(key, 1), B)`: a count n uniform in
    {0, ..., max_intruders}, n distinct random tile positions, and one other image,
    index (i + s) % B with s uniform in {1, ..., B - 1} (never image i itself); the n
    positions get n distinct random cell tiles of that image (cut with its own jitter,
    channel shift and grayscale draw). The label is unchanged. The official code draws
    0..2 intruders (max_intruders=2) from one other image, as here. Under a sharded
    batch the intruder gather crosses devices.

    Returns:
      tiles float32 (B, grid * grid, t, t, C) and labels int32 (B,).
    """
    n_cells = grid * grid if isinstance(grid, int) else 0
    if not isinstance(max_intruders, int) or not 0 <= max_intruders <= n_cells:
        raise ValueError(
            f"max_intruders must be an integer in [0, grid * grid] = "
            f"[0, {n_cells}], got {max_intruders!r}"
        )
    batch = jnp.shape(images)[0]
    if max_intruders > 0 and batch < 2:
        raise ValueError(
            f"jigsaw_pp_tiles takes intruder tiles from another image of the "
            f"batch and needs B >= 2, got B = {batch}; or set max_intruders=0"
        )
    cells, labels, tiles = _puzzles(
        key,
        images,
        permutations,
        grid=grid,
        tile_size=tile_size,
        jitter=jitter,
        color_shift=color_shift,
        grayscale_prob=grayscale_prob,
    )
    if max_intruders > 0:

        def draw(k):
            u = jax.random.uniform(k, (2 + 2 * n_cells,))
            count = _randint(u[0], 0, max_intruders)
            shift = _randint(u[1], 1, batch - 1)
            # rank of each position in a uniform random order: the first `count` ranks win
            rank = jnp.argsort(jnp.argsort(u[2 : 2 + n_cells]))
            src_cells = jnp.argsort(u[2 + n_cells :])  # a random order of distinct cells
            return rank < count, shift, src_cells

        keys = jax.random.split(jax.random.fold_in(key, 1), batch)
        mask, shift, src_cells = jax.vmap(draw)(keys)
        other = (jnp.arange(batch) + shift) % batch
        intruders = cells[other[:, None], src_cells]  # (B, G, t, t, C)
        tiles = jnp.where(mask[:, :, None, None, None], intruders, tiles)
    return (_normalize_tiles(tiles) if normalize_tiles else tiles), labels
