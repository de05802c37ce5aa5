"""k-means benchmark: `python -m jssl.bench --method kmeans --n 200000 --d 128 --k 1000`.

jssl's `cluster.kmeans`, scikit-learn's `KMeans(algorithm="lloyd")` and, when it is
installed, faiss-cpu's `Kmeans` run on the same data from the same initial centres (k
distinct points drawn with --seed) for the same --iters Lloyd iterations (tol 0), one
after the other, `REPEATS` times alternately (the machines are shared and noisy: only
numbers measured together mean anything); the median wall time of each is reported. Each
timed call starts after `IDLE_S` seconds of sleep: scikit-learn's and faiss's OpenMP and BLAS
worker threads keep spinning for a while after a call returns, and without the pause they
took cores from whichever library ran next (measured: jssl 0.149 s/iter right after
scikit-learn, 0.117 s/iter after a 2 s pause, n = 100k, k = 512; scikit-learn 0.145 and
0.135).

jssl shards the points over the devices, one CPU device per core (`--cpu-devices`, default
every core: on a CPU host XLA otherwise shows one device, run by one core), while
scikit-learn and faiss use one thread per core: the same cores for all three.

`s_per_iter` is a whole call's wall time (placing the data, the iterations, the final
assignment) divided by the iterations it ran, for every library alike; jssl's compilation
is done by an untimed warm-up call first. `inertia` is each result's sum of squared
distances of the points to their nearest final centre, recomputed the same way (float64
sums of jssl's exact distances) for every library. The data: a mixture of k Gaussians whose
means are 0.5-scaled standard normals, in unit noise: overlapping clusters, so that
Lloyd's algorithm does not converge within a few iterations.

`sklearn_rounding_rel_diff` measures how far rounding alone moves the result: scikit-learn
once more (untimed) on x + 1e-3 from init + 1e-3, a shift its own centring removes exactly
in exact arithmetic, so only float32 rounding differs. On overlapping clusters a few
near-tied points change cluster after the first assignment and Lloyd's iterations amplify
them: a gap between two libraries below this spread is rounding, not a different
algorithm. `gflop_per_s` (and the same per library): the assignment's 2 N K D flops per
pass over the wall time, n_iter + 1 passes for jssl and scikit-learn (both end with an
assignment to the final centres), `iters` for faiss (which does not).

faiss's `Kmeans.train` returns centres only; each faiss call is timed twice: `train` alone
(`faiss_s_per_iter`), and `train` followed by the search for each point's nearest final
centre (`faiss_labels_s_per_iter`), the labels that jssl's and scikit-learn's calls return
(their n_iter + 1 passes); `speedup_vs_faiss_labels` compares with the latter.

`gemm_ceiling_gflop_per_s` bounds what any of them could do on this machine: the faster of
NumPy's BLAS sgemm (one thread per core) and XLA's dot sharded over the devices, on a
square float32 product (`--gemm-size`, 4096 by default; cache-friendly: the best rate a
GEMM reaches here), measured in the same run after the same pause.
`speedup_bound_vs_sklearn` (and `_vs_faiss`) is the speedup jssl would have if its whole
call, n_iter + 1 passes, ran at that ceiling with nothing else: no Lloyd implementation
doing the same 2 N K D flops per pass goes faster.
"""

from __future__ import annotations

import os
import statistics
import time

import jax
import numpy as np

from jssl import cluster, parallel

__all__ = ["bench", "make_data"]

REPEATS = 3
IDLE_S = 2.0  # sleep before each timed call: the previous library's threads stop spinning
ROUNDING_SHIFT = 1e-3


def make_data(n: int, d: int, k: int, seed: int):
    """(x (n, d) float32, initial centres (k, d) float32: k distinct rows of x)."""
    rng = np.random.default_rng(seed)
    means = 0.5 * rng.standard_normal((k, d), dtype=np.float32)
    x = means[rng.integers(0, k, n)] + rng.standard_normal((n, d), dtype=np.float32)
    init = x[np.sort(rng.choice(n, k, replace=False))].copy()
    return x, init


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def _flop(n: int, d: int, k: int, passes: int) -> float:
    """FLOPs of `passes` assignment passes of 2 N K D each."""
    return 2.0 * n * k * d * passes


def _rate(n: int, d: int, k: int, passes: int, seconds: float) -> float:
    """GFLOP/s of `passes` assignment passes."""
    return round(_flop(n, d, k, passes) / seconds / 1e9, 1)


def _rel(a: float, b: float) -> float:
    return float(f"{(a - b) / b:.3g}")


def _median_time(fn, repeats: int = REPEATS) -> float:
    fn()  # warm-up (compilation, thread pools)
    times = []
    for _ in range(repeats):
        time.sleep(IDLE_S)
        times.append(_timed(fn)[0])
    return statistics.median(times)


def gemm_ceiling(size: int) -> dict:
    """GFLOP/s of a (size, size) @ (size, size) float32 product: NumPy's BLAS, and XLA's dot
    with the rows sharded over every device (one per core on a CPU host)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    flop = 2.0 * size**3
    numpy_s = _median_time(lambda: a @ b)
    mesh = parallel.make_mesh()
    rows, rep = parallel.batch_sharding(mesh), parallel.replicated(mesh)
    ja, jb = jax.device_put(a, rows), jax.device_put(b, rep)
    dot = jax.jit(lambda u, v: u @ v, out_shardings=rows)
    xla_s = _median_time(lambda: dot(ja, jb).block_until_ready())
    return {
        "gemm_size": size,
        "gemm_numpy_gflop_per_s": round(flop / numpy_s / 1e9, 1),
        "gemm_xla_gflop_per_s": round(flop / xla_s / 1e9, 1),
    }


def bench(args) -> dict:
    n, d, k, iters = args.n, args.d, args.k, args.iters
    x, init = make_data(n, d, k, args.seed)

    def run_jssl():
        return cluster.kmeans(x, k, init=init, max_iter=iters, tol=0.0)

    def inertia(centers):  # the same exact recomputation for every library
        return float(np.sum(cluster.assign(x, centers)[1], dtype=np.float64))

    compile_s, _ = _timed(lambda: cluster.kmeans(x, k, init=init, max_iter=1, tol=0.0))
    runners = {"jssl": run_jssl}

    try:  # the comparisons are optional (the bench extra)
        from sklearn.cluster import KMeans
    except ImportError:
        KMeans = None
    if KMeans is not None:

        def run_sklearn():
            return KMeans(k, init=init, n_init=1, max_iter=iters, tol=0.0, algorithm="lloyd").fit(x)

        runners["sklearn"] = run_sklearn

    try:
        import faiss
    except ImportError:
        faiss = None
    if faiss is not None:
        faiss_train_s: list[float] = []  # train alone; the runner's time includes the search

        def run_faiss():
            start = time.perf_counter()
            # No subsampling (faiss trains on at most 256 points per centroid by default).
            km = faiss.Kmeans(
                d,
                k,
                niter=iters,
                seed=args.seed,
                verbose=False,
                max_points_per_centroid=max(256, -(-n // k) + 1),
            )
            km.train(x, init_centroids=init)
            faiss_train_s.append(time.perf_counter() - start)
            # Then the labels of the final centres, which jssl and scikit-learn return.
            return km, km.index.search(x, 1)

        runners["faiss"] = run_faiss

    times: dict[str, list[float]] = {name: [] for name in runners}
    results = {}
    for _ in range(REPEATS):
        for name, fn in runners.items():
            time.sleep(IDLE_S)
            seconds, results[name] = _timed(fn)
            times[name].append(seconds)

    ours = results["jssl"]
    out = {
        "impl": "jssl",
        "method": "kmeans",
        "n": n,
        "d": d,
        "k": k,
        "iters": iters,
        "seed": args.seed,
        "devices": jax.device_count(),
        "cpu_cores": os.cpu_count(),
        "backend": jax.default_backend(),
        "chunk_size": cluster.default_chunk_size(k),
        "compile_s": round(compile_s, 3),
        "repeats": REPEATS,
        "jax": jax.__version__,
        "n_iter": ours.n_iter,
        "idle_s": IDLE_S,
        "s_per_iter": round(statistics.median(times["jssl"]) / ours.n_iter, 4),
        "gflop_per_s": _rate(n, d, k, ours.n_iter + 1, statistics.median(times["jssl"])),
        "inertia": inertia(ours.centers),
        "inertia_reported": ours.inertia,
    }
    if "sklearn" in results:
        import sklearn

        sk = results["sklearn"]
        out.update(
            sklearn_version=sklearn.__version__,
            sklearn_n_iter=int(sk.n_iter_),
            sklearn_s_per_iter=round(statistics.median(times["sklearn"]) / sk.n_iter_, 4),
            sklearn_gflop_per_s=_rate(
                n, d, k, int(sk.n_iter_), statistics.median(times["sklearn"])
            ),
            sklearn_inertia=inertia(sk.cluster_centers_),
            sklearn_inertia_reported=float(sk.inertia_),
        )
        out["speedup_vs_sklearn"] = round(out["sklearn_s_per_iter"] / out["s_per_iter"], 3)
        out["inertia_rel_diff_vs_sklearn"] = _rel(out["inertia"], out["sklearn_inertia"])
        shift = np.float32(ROUNDING_SHIFT)
        shifted = KMeans(
            k, init=init + shift, n_init=1, max_iter=iters, tol=0.0, algorithm="lloyd"
        ).fit(x + shift)
        out["sklearn_inertia_shifted"] = inertia(shifted.cluster_centers_ - shift)
        out["sklearn_rounding_rel_diff"] = _rel(
            out["sklearn_inertia_shifted"], out["sklearn_inertia"]
        )
    if "faiss" in results:
        fk, found = results["faiss"]
        train_s = statistics.median(faiss_train_s)
        out.update(
            faiss_version=faiss.__version__,
            faiss_s_per_iter=round(train_s / iters, 4),
            faiss_gflop_per_s=_rate(n, d, k, iters, train_s),
            faiss_inertia=inertia(np.asarray(fk.centroids)),
        )
        out["speedup_vs_faiss"] = round(out["faiss_s_per_iter"] / out["s_per_iter"], 3)
        # faiss then assigning the points to its final centres (one more pass, as jssl's and
        # scikit-learn's calls end with).
        out["faiss_labels_s_per_iter"] = round(statistics.median(times["faiss"]) / iters, 4)
        out["faiss_labels_inertia"] = float(np.sum(found[0], dtype=np.float64))
        out["speedup_vs_faiss_labels"] = round(
            out["faiss_labels_s_per_iter"] / out["s_per_iter"], 3
        )

    out.update(gemm_ceiling(args.gemm_size))
    ceiling = max(out["gemm_numpy_gflop_per_s"], out["gemm_xla_gflop_per_s"])
    out["gemm_ceiling_gflop_per_s"] = ceiling
    # jssl's call (n_iter + 1 passes) at the ceiling, per iteration.
    best_s_per_iter = _flop(n, d, k, ours.n_iter + 1) / (ceiling * 1e9) / ours.n_iter
    for lib in ("sklearn", "faiss"):
        if f"{lib}_s_per_iter" in out:
            out[f"speedup_bound_vs_{lib}"] = round(out[f"{lib}_s_per_iter"] / best_s_per_iter, 3)
    return out
