"""k-means in JAX: k-means++ seeding and Lloyd iterations with the data sharded over a mesh.

Built for the cluster pseudo-labels of knowledge transfer (Noroozi et al. 2018, docs/methods.md
section 5): N in the millions, K in the thousands, on one host or an accelerator pod.

* The points live on the mesh's "data" axis (padded to a multiple of devices x chunk; the
  padding is masked everywhere). Each Lloyd iteration is one `shard_map`: every device
  assigns its points chunk by chunk and forms partial per-cluster sums, counts, squared
  distances and label changes, packed into ONE (K, D + 3) array reduced with ONE `psum`.
  `shard_map` is on purpose here (docs/design.md: "only where a per-device computation is
  wanted"): the per-device partial sums are the algorithm, and a global-array jit would
  gather the labels or the scatter.
* Distances are ||x||^2 - 2 x.c + ||c||^2 for `chunk_size` points at a time inside a
  `lax.scan`: at most chunk_size x K distances exist at once per device, never N x K.
* On a CPU host XLA shows one device, which runs on one core: start Python with
  `XLA_FLAGS=--xla_force_host_platform_device_count=<cores>` to shard the points over
  every core (`python -m jssl.bench --method kmeans` does).
  The data are centred first (as scikit-learn does), which keeps this expansion accurate.
* Empty clusters get the points farthest from their centres (scikit-learn's rule), so a
  run never ends with fewer than K non-empty clusters while there are K distinct points.
* Deterministic: the same data, K, seed and init give the same centres and labels on every
  run; on another number of devices only the float summation order of the partial sums
  differs.

References: Lloyd, "Least squares quantization in PCM", 1982; Arthur & Vassilvitskii,
"k-means++: The Advantages of Careful Seeding", SODA 2007 (with the greedy local trials of
scikit-learn's `_kmeans_plusplus`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

__all__ = ["KMeansResult", "kmeans", "kmeans_plusplus", "assign", "default_chunk_size"]

_AXIS = "data"  # jssl.parallel.DATA_AXIS (not imported: this module sits below the loop)
# One (group, chunk) distance block stays in the core's cache: about 32K distances (128
# KiB), at most 1024 centres x 64 points (256 KiB). Measured on the 2-core AMD EPYC (512 KiB
# L2 per core), assignment pass at N = 100k, K = 512: 512 centres x 64 points 0.086 s, 128 x
# 256 (the previous blocking) 0.097 s; N = 200k, K = 1000: 1000 x 64 0.333 s, 128 x 256 0.382.
_GROUP = 1024
_BLOCK = 1 << 15
_MIN_CHUNK = 64


@dataclasses.dataclass(frozen=True)
class KMeansResult:
    """centers (K, D) float32; labels (N,) int32 (index of the nearest centre); inertia:
    sum of squared distances of the points to their centres (float); n_iter: Lloyd
    iterations run; inertia_history: the inertia before each iteration's update."""

    centers: np.ndarray
    labels: np.ndarray
    inertia: float
    n_iter: int
    inertia_history: tuple[float, ...] = ()


def default_chunk_size(k: int) -> int:
    """Points per chunk: blocks of about 32K distances (group x chunk), chunk in [64, 4096]
    (64 for K >= 512)."""
    per_group = _groups(max(int(k), 1))[1]
    return int(min(4096, max(_MIN_CHUNK, (_BLOCK // per_group) // 8 * 8)))


# --------------------------------------------------------------------------- data layout


@dataclasses.dataclass(frozen=True)
class _Sharded:
    """Centred points on the mesh: x (N_pad, D) float32, P("data")."""

    x: jax.Array
    mean: np.ndarray  # (D,) the mean that was subtracted
    n: int  # real points; rows >= n are zero padding
    chunk: int
    mesh: Mesh


def _mesh(mesh: Mesh | None) -> Mesh:
    if mesh is not None:
        if _AXIS not in mesh.axis_names:
            raise ValueError(
                f"mesh must have a {_AXIS!r} axis (jssl.parallel.make_mesh), got "
                f"axes {mesh.axis_names}"
            )
        return mesh
    devices = jax.devices()
    return jax.make_mesh(
        (len(devices),), (_AXIS,), devices=devices, axis_types=(jax.sharding.AxisType.Auto,)
    )


def _check_points(x) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"x must be a non-empty (N, D) array of points, got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.number):
        raise ValueError(f"x must hold numbers, got dtype {x.dtype}")
    return x


def _put(
    x: np.ndarray, mesh: Mesh | None, chunk_size: int | None, k: int, mean: np.ndarray | None = None
) -> _Sharded:
    """Centre x (by its mean, or `mean`), pad it and place it on the mesh's data axis."""
    mesh = _mesh(mesh)
    n, d = x.shape
    devices = mesh.size
    chunk = int(chunk_size or default_chunk_size(k))
    if chunk < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    per_device = -(-n // devices)
    chunk = min(chunk, -(-per_device // 8) * 8)  # no chunk larger than a device's points
    n_pad = -(-n // (devices * chunk)) * devices * chunk
    if mean is None:  # accumulated in float64, applied in float32 (as scikit-learn)
        mean = np.mean(x, axis=0, dtype=np.float64)
    mean = np.asarray(mean, np.float32)
    sharding = NamedSharding(mesh, P(_AXIS))

    def rows(index):  # one device's block of the padded, centred array, built on demand
        start, stop, _ = index[0].indices(n_pad)
        block = np.zeros((stop - start, d), np.float32)
        real = max(0, min(stop, n) - start)
        if real:
            np.subtract(x[start : start + real], mean, out=block[:real], casting="unsafe")
        return block

    xs = jax.make_array_from_callback((n_pad, d), sharding, rows)
    return _Sharded(x=xs, mean=mean, n=n, chunk=chunk, mesh=mesh)


def _valid(n_local: int, n: int) -> jax.Array:
    """(n_local,) mask of this device's rows that are real points (inside shard_map)."""
    start = lax.axis_index(_AXIS) * n_local
    return start + jnp.arange(n_local) < n


# --------------------------------------------------------------------------- assignment


def _groups(k: int) -> tuple[int, int]:
    """(number of groups, centres per group): groups of at most _GROUP centres."""
    g = -(-k // _GROUP)
    return g, -(-k // g)


def _nearest(x: jax.Array, centers: jax.Array, chunk: int):
    """Nearest centre of each row of x (n_local, D), chunk rows at a time.

    Returns labels (n_local,) int32 (the lowest index on ties, as np.argmin) and exact
    squared distances ||x - c_label||^2.

    Within a chunk the centres are taken a group of at most 1024 at a time (a scan, unrolled
    for up to 16 groups): one (group, chunk) GEMM block of ||c||^2 - 2 c.x, its minimum
    over the group and the first index reaching it, then a running (minimum, index) over
    the groups. The block (about 32K floats, `default_chunk_size`) stays in cache between
    the GEMM and the two reductions; with a (K, chunk) block too large for the cache,
    memory traffic of the index pass cost a third of the iteration (measured on CPU).
    Scores are (centres, points), so both reductions run down the rows with the points in
    the vector lanes, and the index is a plain min of where(score == min, index, big),
    which XLA vectorises (a variadic argmin is a scalar loop). Padding centres of the last
    group score +inf.
    """
    k, d = centers.shape
    num_groups, per_group = _groups(k)
    pad = num_groups * per_group - k
    cc = jnp.sum(centers * centers, axis=1)
    cc = jnp.concatenate([cc, jnp.full((pad,), jnp.inf, cc.dtype)])
    grouped = jnp.concatenate([centers, jnp.zeros((pad, d), centers.dtype)])
    grouped = grouped.reshape(num_groups, per_group, d)
    cc = cc.reshape(num_groups, per_group, 1)
    ids = jnp.arange(per_group, dtype=jnp.int32)[:, None]

    def block(xc):
        xt = xc.T  # (D, chunk): one transpose per chunk, shared by the groups

        def group(carry, inputs):
            best, labels = carry
            c, cg, offset = inputs
            # ||x||^2 is the same for every centre of a point: the argmin needs ||c||^2 - 2 c.x.
            scores = cg - 2.0 * (c @ xt)  # (group, chunk)
            low = jnp.min(scores, axis=0)
            first = jnp.min(jnp.where(scores == low[None, :], ids, per_group), axis=0)
            better = low < best  # strict: ties keep the earlier group (lowest index)
            return (jnp.where(better, low, best), jnp.where(better, offset + first, labels)), None

        # Derived from xc so that the carry has xc's (per-device) type inside shard_map.
        zero = jnp.zeros_like(xc[:, 0])
        init = (zero + jnp.inf, zero.astype(jnp.int32))
        offsets = jnp.arange(num_groups, dtype=jnp.int32) * per_group
        (_, labels), _ = lax.scan(group, init, (grouped, cc, offsets), unroll=min(num_groups, 16))
        # NaN scores (NaN inputs) match nothing: clamp so the gather stays in range.
        labels = jnp.minimum(labels, k - 1)
        # The exact distance (no cancellation) costs O(chunk x D), nothing beside the GEMM.
        diff = xc - jnp.take(centers, labels, axis=0)
        return labels, jnp.sum(diff * diff, axis=1)

    n_local = x.shape[0]
    labels, dist = lax.map(block, x.reshape(-1, chunk, d))
    return labels.reshape(n_local), dist.reshape(n_local)


@functools.lru_cache(maxsize=16)
def _step_fn(mesh: Mesh, n: int, k: int, chunk: int):
    """One Lloyd E-step + partial M-step on every device and one psum:
    (x, centers, old_labels) -> (stats (K, D+3), labels, dist)."""

    def local(x, centers, old_labels):
        n_local = x.shape[0]
        valid = _valid(n_local, n)
        labels, dist = _nearest(x, centers, chunk)
        w = valid.astype(jnp.float32)
        seg = jnp.where(valid, labels, k)  # padding goes to segment k: dropped
        changed = (labels != old_labels).astype(jnp.float32) * w
        # Padding rows are zero and go to segment k (dropped): no mask on x needed.
        sums = jax.ops.segment_sum(x, seg, num_segments=k)
        extra = jax.ops.segment_sum(jnp.stack([w, dist * w, changed], axis=1), seg, num_segments=k)
        stats = jnp.concatenate([sums, extra], axis=1)  # (K, D + 3): sums, n, inertia, changed
        stats = lax.psum(stats, _AXIS)  # the one reduction of the iteration
        labels = jnp.where(valid, labels, -1)
        return stats, labels, jnp.where(valid, dist, -1.0)

    spec = P(_AXIS)
    fn = jax.shard_map(local, mesh=mesh, in_specs=(spec, P(), spec), out_specs=(P(), spec, spec))
    return jax.jit(fn)


@functools.lru_cache(maxsize=16)
def _assign_fn(mesh: Mesh, n: int, chunk: int):
    def local(x, centers):
        valid = _valid(x.shape[0], n)
        labels, dist = _nearest(x, centers, chunk)
        return jnp.where(valid, labels, -1), jnp.where(valid, dist, 0.0)

    spec = P(_AXIS)
    return jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(spec, P()), out_specs=(spec, spec)))


def _host(a: jax.Array) -> np.ndarray:
    """A global array on the host of every process."""
    if jax.process_count() == 1:
        return np.asarray(jax.device_get(a))
    if a.sharding.is_fully_replicated:
        return np.asarray(a.addressable_data(0))
    return np.asarray(multihost_utils.process_allgather(a, tiled=True))


def assign(
    x, centers, *, mesh: Mesh | None = None, chunk_size: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centre of every point: labels (N,) int32 and squared distances (N,) float32.

    x: (N, D) points; centers: (K, D). Sharded over `mesh` (default: all devices) and
    chunked as in `kmeans` (ties go to the lower centre index).
    """
    x = _check_points(x)
    centers = np.asarray(centers, np.float32)
    if centers.ndim != 2 or centers.shape[1] != x.shape[1]:
        raise ValueError(f"centers must be (K, {x.shape[1]}), got shape {centers.shape}")
    data = _put(x, mesh, chunk_size, centers.shape[0])
    c = jnp.asarray(centers - data.mean)
    labels, dist = _assign_fn(data.mesh, data.n, data.chunk)(data.x, c)
    return _host(labels)[: data.n], _host(dist)[: data.n]


# --------------------------------------------------------------------------- k-means++


@functools.lru_cache(maxsize=16)
def _plusplus_fn(mesh: Mesh, n: int, k: int, trials: int):
    """Greedy k-means++ over the sharded points, one fori_loop step per centre."""

    def local(x, key):
        n_local = x.shape[0]
        sq = jnp.sum(x * x, axis=1)
        valid = _valid(n_local, n)
        start = lax.axis_index(_AXIS) * n_local

        def fetch(g):  # rows g (T,) of the global array, replicated on every device
            mine = (g >= start) & (g < start + n_local)
            rows = jnp.take(x, jnp.clip(g - start, 0, n_local - 1), axis=0)
            return lax.psum(jnp.where(mine[:, None], rows, 0.0), _AXIS)

        def sq_dist(c):  # (T, D) -> (n_local, T), clipped at 0 as scikit-learn does
            # x @ c.T, not c @ x.T: the latter would copy the transposed points every step.
            cc = jnp.sum(c * c, axis=1)
            return jnp.maximum(sq[:, None] - 2.0 * (x @ c.T) + cc[None, :], 0.0)

        first = jax.random.randint(jax.random.fold_in(key, 0), (1,), 0, n)
        closest = jnp.where(valid, sq_dist(fetch(first))[:, 0], 0.0)
        chosen = jnp.zeros((k,), jnp.int32).at[0].set(first[0])

        def body(i, carry):
            chosen, closest = carry
            pot = lax.psum(jnp.sum(closest), _AXIS)
            u = jax.random.uniform(jax.random.fold_in(key, i), (trials,)) * pot
            # Global inverse-CDF sampling without gathering: the candidate's index is the
            # number of points whose cumulative potential is below u (np.searchsorted).
            offsets = jnp.cumsum(lax.all_gather(jnp.sum(closest), _AXIS))
            offset = jnp.where(lax.axis_index(_AXIS) > 0, offsets[lax.axis_index(_AXIS) - 1], 0.0)
            cum = jnp.cumsum(closest) + offset
            below = jnp.sum(valid[:, None] & (cum[:, None] < u[None, :]), axis=0)
            g = jnp.minimum(lax.psum(below, _AXIS), n - 1)
            cand = fetch(g)
            new = jnp.where(valid[:, None], jnp.minimum(closest[:, None], sq_dist(cand)), 0.0)
            pots = lax.psum(jnp.sum(new, axis=0), _AXIS)
            best = jnp.argmin(pots)
            return chosen.at[i].set(g[best]), new[:, best]

        chosen, _ = lax.fori_loop(1, k, body, (chosen, closest))
        return chosen

    spec = P(_AXIS)
    return jax.jit(
        jax.shard_map(local, mesh=mesh, in_specs=(spec, P()), out_specs=P(), check_vma=False)
    )


def _plusplus(data: _Sharded, k: int, seed: int, trials: int | None) -> np.ndarray:
    """Row indices (k,) of the k-means++ centres among data's points."""
    trials = int(trials or 2 + int(math.log(k)))
    fn = _plusplus_fn(data.mesh, data.n, k, trials)
    # The draws must not depend on the process-wide threefry setting: fixed here.
    with jax.threefry_partitionable(True):
        chosen = fn(data.x, jax.random.PRNGKey(seed))
    return _host(chosen).astype(np.int64)


def kmeans_plusplus(
    x, k: int, *, seed: int = 0, n_local_trials: int | None = None, mesh: Mesh | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """k-means++ seeding (Arthur & Vassilvitskii 2007) with greedy local trials.

    The first centre is a uniformly drawn point; each next one is the best (lowest
    potential) of `n_local_trials` (default 2 + floor(ln k), scikit-learn's choice)
    candidates drawn with probability proportional to the squared distance to the nearest
    centre so far. Deterministic per `seed`; the points stay sharded over `mesh`.

    Args:
      x: (N, D) points, N >= k. k: number of centres.
    Returns:
      centres (k, D) float32 (copies of points) and their row indices (k,) in x.
    """
    x = _check_points(x)
    _check_k(k, x.shape[0])
    indices = _plusplus(_put(x, mesh, None, k), k, seed, n_local_trials)
    return np.asarray(x[indices], np.float32), indices


# --------------------------------------------------------------------------- Lloyd


def _check_k(k, n: int) -> None:
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if k > n:
        raise ValueError(f"k={k} is larger than the {n} points; lower k")


@functools.lru_cache(maxsize=16)
def _farthest_fn(count: int):
    return jax.jit(lambda dist: lax.top_k(dist, count))


def _relocate(
    data: _Sharded, sums: np.ndarray, counts: np.ndarray, labels: jax.Array, dist: jax.Array
) -> None:
    """Give each empty cluster one of the points farthest from their centres (in place).

    scikit-learn's rule (`_relocate_empty_clusters_dense`): the n_empty farthest points,
    the farthest to the lowest empty index, each moved out of its old cluster's sums.
    """
    empty = np.flatnonzero(counts == 0)
    count = 1 << math.ceil(math.log2(len(empty)))  # few distinct compilations
    _, far = _farthest_fn(min(count, data.x.shape[0]))(dist)
    far = _host(far)[: len(empty)]
    points = _host(data.x[jnp.asarray(far)])
    old = _host(labels[jnp.asarray(far)])
    for e, p, o in zip(empty, points, old):
        sums[o] -= p
        counts[o] -= 1
        sums[e] = p
        counts[e] = 1


def kmeans(
    x,
    k: int,
    *,
    seed: int = 0,
    init: str | np.ndarray = "k-means++",
    max_iter: int = 100,
    tol: float = 1e-4,
    mesh: Mesh | None = None,
    chunk_size: int | None = None,
    init_sample_size: int | None = None,
    callback: Callable[[int, float], None] | None = None,
) -> KMeansResult:
    """k-means (Lloyd's algorithm) on (N, D) points, sharded over `mesh`.

    Follows scikit-learn's `KMeans(algorithm="lloyd")` step for step, so that both reach
    the same inertia from the same initial centres: each iteration assigns every point to
    its nearest centre and moves each centre to the mean of its points (empty clusters
    take the farthest points); it stops after `max_iter` iterations, when no label changed
    (strict convergence), or when the summed squared centre shift is <= tol x (mean
    per-feature variance of x). A final assignment makes the labels match the centres.

    Args:
      x: (N, D) points (any float dtype; computed in float32). k: clusters (<= N).
      seed: seeds k-means++ (and its subsample).
      init: "k-means++", "random" (k distinct points drawn uniformly) or a (k, D) array.
      max_iter: at most this many Lloyd iterations (>= 1).
      tol: relative centre-shift tolerance (0: run until strict convergence or max_iter).
      mesh: a mesh with a "data" axis (default: every device); the points are sharded on it.
      chunk_size: points per distance block (default `default_chunk_size(k)`).
      init_sample_size: run k-means++ on this many points drawn without replacement
        (seeded) instead of all of them: seeding costs O(N K D) sequential work, which
        dominates for millions of points. None: all points.
      callback: called as callback(iteration, inertia) after each iteration (on the host).
    Returns:
      KMeansResult (centers, labels, inertia, n_iter, inertia_history).
    """
    x = _check_points(x)
    n, d = x.shape
    _check_k(k, n)
    if not isinstance(max_iter, (int, np.integer)) or max_iter < 1:
        raise ValueError(f"max_iter must be a positive integer, got {max_iter!r}")
    if not tol >= 0:
        raise ValueError(f"tol must be >= 0, got {tol!r}")
    data = _put(x, mesh, chunk_size, k)

    # --- Initial centres (centred like the data). ---
    if isinstance(init, str):
        if init == "k-means++":
            if init_sample_size and init_sample_size < n:
                if init_sample_size < k:
                    raise ValueError(f"init_sample_size={init_sample_size} is smaller than k={k}")
                rows = np.sort(
                    np.random.default_rng([seed, 1]).choice(n, init_sample_size, replace=False)
                )
                sample = _put(x[rows], data.mesh, None, k, mean=data.mean)
                indices = rows[_plusplus(sample, k, seed, None)]
            else:
                indices = _plusplus(data, k, seed, None)
            centers = np.asarray(x[indices], np.float32) - data.mean
        elif init == "random":
            rows = np.random.default_rng([seed, 2]).choice(n, k, replace=False)
            centers = np.asarray(x[np.sort(rows)], np.float32) - data.mean
        else:
            raise ValueError(f"init must be 'k-means++', 'random' or a (k, D) array, got {init!r}")
    else:
        centers = np.asarray(init, np.float32)
        if centers.shape != (k, d):
            raise ValueError(f"init must have shape ({k}, {d}), got {centers.shape}")
        centers = centers - data.mean
    tol_abs = float(np.mean(np.var(x, axis=0, dtype=np.float64))) * tol if tol else 0.0

    # --- Lloyd iterations: one sharded step (one psum) and a K x D update per iteration. ---
    step = _step_fn(data.mesh, data.n, k, data.chunk)
    centers = np.asarray(centers, np.float32)
    labels = jax.device_put(
        jnp.full((data.x.shape[0],), -1, jnp.int32), NamedSharding(data.mesh, P(_AXIS))
    )
    history = []
    n_iter, strict = 0, False
    for it in range(max_iter):
        stats, new_labels, dist = step(data.x, jnp.asarray(centers), labels)
        stats = _host(stats)
        sums, counts = stats[:, :d].copy(), stats[:, d].copy()
        inertia, changed = float(np.sum(stats[:, d + 1])), float(np.sum(stats[:, d + 2]))
        if np.any(counts == 0):
            _relocate(data, sums, counts, new_labels, dist)
        new_centers = np.where(
            counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], centers
        ).astype(np.float32)
        shift = float(np.sum((new_centers - centers) ** 2, dtype=np.float64))
        centers, labels, n_iter = new_centers, new_labels, it + 1
        history.append(inertia)
        if callback is not None:
            callback(it, inertia)
        if changed == 0:
            strict = True
            break
        if shift <= tol_abs:
            break
    # With strict convergence the new centres are the old ones (same members, same sums):
    # the last assignment already matches them (scikit-learn skips this step too).
    if not strict:  # one more assignment, so that the labels match the final centres
        labels, dist = _assign_fn(data.mesh, data.n, data.chunk)(data.x, jnp.asarray(centers))
    labels, dist = _host(labels)[:n], np.maximum(_host(dist)[:n], 0.0)
    return KMeansResult(
        centers=centers + data.mean,
        labels=labels.astype(np.int32),
        inertia=float(np.sum(dist, dtype=np.float64)),
        n_iter=n_iter,
        inertia_history=tuple(history),
    )
