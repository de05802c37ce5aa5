"""jssl.puzzles against independent NumPy / plain-Python references."""

import functools
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jssl import puzzles as P

S, GRID = 24, 3
CELL = S // GRID  # 8
TILE = 6  # default: round(8 * 64 / 85)


def _encoded(n, s=S, c=3):
    """Pixel value = 10000 * image + 1000 * channel + s * row + column (exact in float32)."""
    b, y, x, ch = np.meshgrid(np.arange(n), np.arange(s), np.arange(s), np.arange(c), indexing="ij")
    return (10000 * b + 1000 * ch + s * y + x).astype(np.float32)


def _decode(value, s=S):
    """(image, channel, row, column) of an encoded pixel value."""
    v = int(value)
    return v // 10000, (v % 10000) // 1000, (v % 1000) // s, (v % 1000) % s


@functools.cache
def _jit(name, **kw):
    """jit of a puzzles function with fixed keywords (eager mode compiles every primitive)."""
    return jax.jit(functools.partial(getattr(P, name), **kw))


PERMS = P.permutation_set(30)


# --- permutation_set ----------------------------------------------------------------------


@pytest.mark.parametrize("num,expected_min", [(100, 6), (1000, 5)])
def test_permutation_set_standard_sizes(num, expected_min):
    perms = P.permutation_set(num)
    assert perms.shape == (num, 9) and perms.dtype == np.int32
    assert (np.sort(perms, axis=1) == np.arange(9)).all()
    assert len({tuple(r) for r in perms}) == num
    assert P.min_hamming_distance(perms) == expected_min  # measured, see the docstring
    # A random set of distinct permutations of the same size does worse.
    rng = np.random.default_rng(0)
    rand = np.array(list(itertools.permutations(range(9))))[
        rng.choice(math.factorial(9), num, replace=False)
    ]
    assert P.min_hamming_distance(rand) < expected_min
    # The paper's sum-of-distances rule gives valid sets with close pairs.
    mean = P.permutation_set(num, selection="mean")
    assert len({tuple(r) for r in mean}) == num
    assert P.min_hamming_distance(mean) <= expected_min


def test_permutation_set_deterministic_copies_and_seeds():
    a = P.permutation_set(50, seed=3)
    a[:] = 0  # the caller's copy: mutating it leaves the cache intact
    b, c = P.permutation_set(50, seed=3), P.permutation_set(50, seed=3)
    np.testing.assert_array_equal(b, c)
    assert not (b == 0).all()
    assert not np.array_equal(b, P.permutation_set(50, seed=4))


def _greedy_reference(num, n, seed, rule):
    """Plain Python: the greedy rule of the docstring over itertools' lexicographic order."""
    cands = list(itertools.permutations(range(n)))
    chosen = [cands[int(np.random.default_rng(seed).integers(len(cands)))]]

    def ham(p, q):
        return sum(a != b for a, b in zip(p, q))

    while len(chosen) < num:
        best, best_key = None, None
        for idx, cand in enumerate(cands):
            if cand in chosen:
                continue
            dists = [ham(cand, c) for c in chosen]
            key = (min(dists), sum(dists)) if rule == "maxmin" else (sum(dists),)
            if best_key is None or key > best_key:  # strict: the first maximum wins
                best, best_key = idx, key
        chosen.append(cands[best])
    return np.array(chosen)


@pytest.mark.parametrize("rule", ["maxmin", "mean"])
@pytest.mark.parametrize("n,num,seed", [(4, 5, 0), (4, 24, 1), (5, 12, 7)])
def test_permutation_set_greedy_brute_force(rule, n, num, seed):
    np.testing.assert_array_equal(
        P.permutation_set(num, n, seed=seed, selection=rule), _greedy_reference(num, n, seed, rule)
    )


def test_permutation_set_errors():
    for bad in [
        {"num_permutations": 0},
        {"num_permutations": 25, "num_tiles": 4},
        {"num_permutations": 2, "num_tiles": 11},
        {"num_permutations": 2, "selection": "x"},
    ]:
        with pytest.raises(ValueError):
            P.permutation_set(**bad)
    with pytest.raises(ValueError):
        P.min_hamming_distance(np.arange(9)[None])


def test_min_hamming_distance():
    assert P.min_hamming_distance([[0, 1, 2, 3], [1, 0, 2, 3], [3, 2, 1, 0]]) == 2
    assert P.min_hamming_distance(list(itertools.permutations(range(4)))) == 2


# --- Rotations ----------------------------------------------------------------------------


def test_rotate_images_matches_numpy():
    x = np.random.RandomState(0).rand(5, 7, 7, 2).astype(np.float32)
    for k in range(-1, 5):
        np.testing.assert_array_equal(P.rotate_images(x, k), np.rot90(x, k, axes=(1, 2)))
    ks = np.array([0, 1, 2, 3, -1], np.int32)
    out = jax.jit(P.rotate_images)(x, jnp.asarray(ks))
    for i, k in enumerate(ks):
        np.testing.assert_array_equal(out[i], np.rot90(x[i], k, axes=(0, 1)))
    rect = np.zeros((2, 4, 6, 1), np.float32)
    assert P.rotate_images(rect, 1).shape == (2, 6, 4, 1)
    with pytest.raises(ValueError, match="square"):
        P.rotate_images(rect, np.array([0, 1]))


def test_rotation_batch():
    x = np.random.RandomState(1).rand(3, 5, 5, 3).astype(np.float32)
    rotated, labels = P.rotation_batch(x)
    assert rotated.shape == (12, 5, 5, 3) and labels.dtype == jnp.int32
    np.testing.assert_array_equal(labels, np.repeat(np.arange(4), 3))
    for k in range(4):
        np.testing.assert_array_equal(rotated[3 * k : 3 * k + 3], np.rot90(x, k, axes=(1, 2)))


# --- Jigsaw -------------------------------------------------------------------------------


def _cell_origin(q):
    return (q // GRID) * CELL, (q % GRID) * CELL


def test_jigsaw_tiles_exact_crops():
    x = _encoded(6)
    tiles, labels = _jit("jigsaw_tiles", jitter=False, normalize_tiles=False)(
        jax.random.key(0), x, jnp.asarray(PERMS)
    )
    assert tiles.shape == (6, 9, TILE, TILE, 3) and tiles.dtype == jnp.float32
    assert labels.shape == (6,) and labels.dtype == jnp.int32
    off = (CELL - TILE) // 2
    for b in range(6):
        for j in range(9):
            r, c = _cell_origin(PERMS[labels[b], j])
            np.testing.assert_array_equal(
                tiles[b, j], x[b, r + off : r + off + TILE, c + off : c + off + TILE]
            )


def test_jigsaw_labels_uniform_and_keys():
    x = np.zeros((3000, 6, 6, 1), np.float32)
    fn = _jit("jigsaw_tiles", tile_size=1)
    _, labels = fn(jax.random.key(0), x, jnp.asarray(PERMS[:10]))
    counts = np.bincount(np.asarray(labels), minlength=10)
    assert counts.sum() == 3000 and counts.min() > 220 and counts.max() < 380  # mean 300
    y = np.random.RandomState(0).rand(4, S, S, 3).astype(np.float32)
    fn = _jit("jigsaw_tiles")
    a, la = fn(jax.random.key(1), y, jnp.asarray(PERMS))
    b, lb = fn(jax.random.key(1), y, jnp.asarray(PERMS))
    c, _ = fn(jax.random.key(2), y, jnp.asarray(PERMS))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(la, lb)
    assert not np.allclose(a, c)


@pytest.mark.parametrize("color_shift", [0, 1])
def test_jigsaw_jitter_stays_in_cell(color_shift):
    n = 64
    x = _encoded(n)
    tiles, labels = _jit("jigsaw_tiles", normalize_tiles=False, color_shift=color_shift)(
        jax.random.key(3), x, jnp.asarray(PERMS)
    )
    tiles, labels = np.asarray(tiles), np.asarray(labels)
    offsets, channel_offsets_differ = set(), False
    for b in range(n):
        for j in range(9):
            r, c = _cell_origin(PERMS[labels[b], j])
            starts = []
            for ch in range(3):
                img, ch_, y0, x0 = _decode(tiles[b, j, 0, 0, ch])
                assert (img, ch_) == (b, ch)
                dy, dx = y0 - r, x0 - c
                assert 0 <= dy <= CELL - TILE and 0 <= dx <= CELL - TILE
                np.testing.assert_array_equal(
                    tiles[b, j, ..., ch], x[b, y0 : y0 + TILE, x0 : x0 + TILE, ch]
                )
                starts.append((dy, dx))
                offsets.update((dy, dx))
            channel_offsets_differ |= len(set(starts)) > 1
    assert offsets == set(range(CELL - TILE + 1))  # every allowed offset occurs
    assert channel_offsets_differ == (color_shift > 0)


def test_jigsaw_normalize_and_grayscale():
    x = np.random.RandomState(2).rand(16, S, S, 3).astype(np.float32)
    perms = jnp.asarray(PERMS)
    tiles, _ = _jit("jigsaw_tiles")(jax.random.key(0), x, perms)
    np.testing.assert_allclose(np.mean(tiles, axis=(2, 3, 4)), 0.0, atol=1e-5)
    np.testing.assert_allclose(np.std(tiles, axis=(2, 3, 4)), 1.0, atol=1e-4)
    grey, _ = _jit("jigsaw_tiles", grayscale_prob=1.0)(jax.random.key(0), x, perms)
    np.testing.assert_allclose(grey[..., 0], grey[..., 1], atol=1e-6)
    np.testing.assert_allclose(grey[..., 0], grey[..., 2], atol=1e-6)
    raw, _ = _jit("jigsaw_tiles", grayscale_prob=0.5, normalize_tiles=False)(
        jax.random.key(0), np.tile(x, (16, 1, 1, 1)), perms
    )
    is_grey = np.all(raw[..., 0] == raw[..., 1], axis=(1, 2, 3))
    assert 0.3 < is_grey.mean() < 0.7


def test_jigsaw_jit_no_retrace_and_sharding():
    traces = []

    @jax.jit
    def fn(key, images, perms):
        traces.append(1)
        return P.jigsaw_tiles(key, images, perms, color_shift=1, grayscale_prob=0.5)

    perms = jnp.asarray(PERMS)
    x = np.random.RandomState(3).rand(16, S, S, 3).astype(np.float32)
    a = fn(jax.random.key(0), x, perms)
    fn(jax.random.key(1), x + 1, perms)
    assert len(traces) == 1
    mesh = Mesh(np.array(jax.devices()), ("data",))
    xs = jax.device_put(x, NamedSharding(mesh, PartitionSpec("data")))
    b = fn(jax.random.key(0), xs, perms)
    np.testing.assert_allclose(a[0], b[0], atol=1e-5)
    np.testing.assert_array_equal(a[1], b[1])


def test_jigsaw_errors():
    x, perms = np.zeros((2, S, S, 3), np.float32), PERMS
    for images, kw in [
        (np.zeros((2, S, S + 1, 3)), {}),
        (x, {"tile_size": CELL + 1}),
        (x, {"tile_size": CELL, "color_shift": 1}),
        (x, {"grid": 2}),
        (x, {"grayscale_prob": 1.5}),
    ]:
        with pytest.raises(ValueError):
            P.jigsaw_tiles(jax.random.key(0), images, perms, **kw)
    with pytest.raises(ValueError):
        P.jigsaw_tiles(jax.random.key(0), x, np.tile(np.arange(9), (2, 1)) * 0)


# --- Jigsaw++ -----------------------------------------------------------------------------


def test_jigsaw_pp_intruders():
    n, perms = 128, jnp.asarray(PERMS)
    x = _encoded(n)
    kw = {"normalize_tiles": False, "color_shift": 1}
    key = jax.random.key(5)
    base, base_labels = _jit("jigsaw_tiles", **kw)(key, x, perms)
    tiles, labels = _jit("jigsaw_pp_tiles", **kw)(key, x, perms)
    np.testing.assert_array_equal(labels, base_labels)
    base, tiles = np.asarray(base), np.asarray(tiles)
    counts = []
    for b in range(n):
        changed = [j for j in range(9) if not np.array_equal(tiles[b, j], base[b, j])]
        counts.append(len(changed))
        sources = {
            (
                _decode(tiles[b, j, 0, 0, 0])[0],
                (
                    _decode(tiles[b, j, 0, 0, 0])[2] // CELL,
                    _decode(tiles[b, j, 0, 0, 0])[3] // CELL,
                ),
            )
            for j in changed
        }
        assert len(sources) == len(changed)  # distinct cells
        assert len({img for img, _ in sources}) <= 1  # one other image per example
        assert all(img != b for img, _ in sources)
    assert set(counts) == {0, 1, 2}
    # max_intruders=0 is the jigsaw puzzle itself; B = 1 has no other image.
    same, _ = _jit("jigsaw_pp_tiles", max_intruders=0, **kw)(key, x, perms)
    np.testing.assert_array_equal(same, base)
    with pytest.raises(ValueError, match="B >= 2"):
        P.jigsaw_pp_tiles(key, x[:1], perms)
    with pytest.raises(ValueError):
        P.jigsaw_pp_tiles(key, x, perms, max_intruders=10)


def test_jigsaw_pp_all_positions_and_normalized():
    x = np.random.RandomState(4).rand(8, S, S, 3).astype(np.float32)
    tiles, labels = _jit("jigsaw_pp_tiles", max_intruders=9)(
        jax.random.key(0), x, jnp.asarray(PERMS)
    )
    assert tiles.shape == (8, 9, TILE, TILE, 3) and labels.shape == (8,)
    np.testing.assert_allclose(np.std(tiles, axis=(2, 3, 4)), 1.0, atol=1e-4)
