"""k-means (jssl.cluster) against scikit-learn, across meshes, and its memory/reduction
contract: same inertia and labels from the same initial centres, sharded equals
unsharded, empty clusters re-seeded as scikit-learn does, no N x K distance array."""

import jax
import numpy as np
import pytest
import sklearn.cluster as sklearn_cluster  # a test dependency: missing is a failure, not a skip

from jssl import cluster, parallel


def _blobs(n=600, d=8, centers=12, spread=1.0, seed=0, ids=False):
    rng = np.random.default_rng(seed)
    means = 4.0 * rng.standard_normal((centers, d))
    blob = rng.integers(0, centers, n)
    x = (means[blob] + spread * rng.standard_normal((n, d)) + 3.0).astype(np.float32)
    return (x, blob) if ids else x  # off-centre (+3): the centring must be undone


def _init(x, k, seed=1):
    return x[np.sort(np.random.default_rng(seed).choice(len(x), k, replace=False))].copy()


def _sklearn(x, init, **kw):
    return sklearn_cluster.KMeans(len(init), init=init, n_init=1, algorithm="lloyd", **kw).fit(x)


@pytest.mark.parametrize("tol", [0.0, 1e-4])
def test_lloyd_matches_sklearn_from_same_init(tol):
    x = _blobs(spread=2.0)  # overlapping blobs: many iterations before convergence
    init = _init(x, 12)
    ours = cluster.kmeans(x, 12, init=init, max_iter=50, tol=tol, chunk_size=32)
    ref = _sklearn(x, init, max_iter=50, tol=tol)
    assert ours.n_iter == ref.n_iter_ > 2
    np.testing.assert_array_equal(ours.labels, ref.labels_)
    np.testing.assert_allclose(ours.centers, ref.cluster_centers_, rtol=0, atol=2e-5)
    np.testing.assert_allclose(ours.inertia, ref.inertia_, rtol=1e-5)
    # Before the last update the inertia only decreases (Lloyd's monotonicity).
    assert all(b <= a * (1 + 1e-6) for a, b in zip(ours.inertia_history, ours.inertia_history[1:]))


def test_fixed_iterations_match_sklearn():
    x = _blobs(n=1000, d=16, centers=30, spread=3.0, seed=2)
    init = _init(x, 20, seed=3)
    for iters in (1, 3):
        ours = cluster.kmeans(x, 20, init=init, max_iter=iters, tol=0.0)
        ref = _sklearn(x, init, max_iter=iters, tol=0.0)
        assert ours.n_iter == iters
        np.testing.assert_allclose(ours.inertia, ref.inertia_, rtol=1e-5)
        np.testing.assert_array_equal(ours.labels, ref.labels_)


def test_empty_clusters_are_reseeded_like_sklearn():
    """Duplicate initial centres leave clusters empty (ties go to the lower index): both
    implementations give them the points farthest from their centres."""
    x = _blobs(n=400, d=4, centers=6, spread=1.0, seed=4)
    init = _init(x, 8, seed=5)
    init[5] = init[2]
    init[7] = init[2]
    ours = cluster.kmeans(x, 8, init=init, max_iter=30, tol=0.0)
    ref = _sklearn(x, init, max_iter=30, tol=0.0)
    assert np.bincount(ours.labels, minlength=8).min() > 0
    np.testing.assert_allclose(ours.inertia, ref.inertia_, rtol=1e-5)
    np.testing.assert_array_equal(ours.labels, ref.labels_)


def test_sharded_equals_unsharded():
    x = _blobs(n=1001, d=8, centers=10, spread=1.5, seed=6)  # not a multiple of 8
    one, eight = parallel.make_mesh(jax.devices()[:1]), parallel.make_mesh()
    assert eight.size == 8
    centers1, idx1 = cluster.kmeans_plusplus(x, 10, seed=3, mesh=one)
    _, idx8 = cluster.kmeans_plusplus(x, 10, seed=3, mesh=eight)
    np.testing.assert_array_equal(idx1, idx8)
    np.testing.assert_array_equal(centers1, x[idx1])
    a = cluster.kmeans(x, 10, init=centers1, max_iter=20, tol=0.0, mesh=one)
    b = cluster.kmeans(x, 10, init=centers1, max_iter=20, tol=0.0, mesh=eight)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_allclose(a.centers, b.centers, rtol=0, atol=1e-5)
    np.testing.assert_allclose(a.inertia, b.inertia, rtol=1e-6)
    assert a.n_iter == b.n_iter


def test_kmeans_plusplus_seeding():
    """One seed per well-separated blob, deterministic per seed, points of x; potential
    close to scikit-learn's k-means++ on average."""
    x, blob = _blobs(n=800, d=6, centers=8, spread=0.05, seed=7, ids=True)
    c0, i0 = cluster.kmeans_plusplus(x, 8, seed=0)
    _, i1 = cluster.kmeans_plusplus(x, 8, seed=0)
    _, i2 = cluster.kmeans_plusplus(x, 8, seed=1)
    np.testing.assert_array_equal(i0, i1)
    assert not np.array_equal(i0, i2)
    np.testing.assert_array_equal(c0, x[i0])
    assert sorted(blob[i0]) == list(range(8))  # every blob got exactly one centre
    y = _blobs(n=600, d=8, centers=40, spread=1.0, seed=8)  # harder: potentials compare
    ours = np.mean(
        [cluster.assign(y, cluster.kmeans_plusplus(y, 15, seed=s)[0])[1].sum() for s in range(4)]
    )
    ref = np.mean(
        [
            ((y[:, None] - sklearn_cluster.kmeans_plusplus(y, 15, random_state=s)[0]) ** 2)
            .sum(-1)
            .min(1)
            .sum()
            for s in range(4)
        ]
    )
    assert ours < 1.25 * ref


def test_assign_is_nearest_centre():
    x = _blobs(n=300, d=5, seed=9)
    centers = _init(x, 7, seed=10) + 0.1
    labels, dist = cluster.assign(x, centers, chunk_size=16)
    brute = ((x[:, None, :].astype(np.float64) - centers[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(labels, brute.argmin(1))
    np.testing.assert_allclose(dist, brute.min(1), rtol=1e-5, atol=1e-5)


def test_assign_over_several_centre_groups_keeps_the_lowest_index_on_ties(monkeypatch):
    """Centres in groups of at most _GROUP (here 7: groups 0-6, 7-13, 14-19 and one padding
    centre): the nearest centre over every group, ties to the lowest index within a group
    and across groups, as np.argmin. Integer data with mean 0 (assign centres the points by
    their mean): every distance is exact in float32, so the ties are exact."""
    monkeypatch.setattr(cluster, "_GROUP", 7)
    # Uncached, so that no program is built from, or kept for, the real _GROUP.
    monkeypatch.setattr(cluster, "_assign_fn", cluster._assign_fn.__wrapped__)
    rng = np.random.default_rng(3)
    half = rng.integers(-4, 5, size=(250, 3)).astype(np.float32)
    x = np.concatenate([half, -half])
    centers = rng.integers(-4, 5, size=(20, 3)).astype(np.float32)
    centers[13] = centers[2]  # a tie across groups
    centers[5] = centers[4]  # a tie within a group
    centers[19] = centers[15]  # a tie within the padded last group
    assert cluster._groups(20) == (3, 7)
    labels, dist = cluster.assign(x, centers, chunk_size=32)
    brute = ((x[:, None, :].astype(np.float64) - centers[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(labels, brute.argmin(1))
    np.testing.assert_array_equal(dist, brute.min(1))
    hit = set(labels.tolist())
    assert {2, 4, 15} <= hit and not {13, 5, 19} & hit  # the ties were met and resolved


def _max_intermediate(jaxpr) -> int:
    from jax.extend import core

    biggest = 0
    for eqn in jaxpr.eqns:
        for v in eqn.outvars:
            biggest = max(biggest, int(np.prod(getattr(v.aval, "shape", ()), dtype=np.int64)))
        for sub in core.jaxprs_in_params(eqn.params):
            biggest = max(biggest, _max_intermediate(sub))
    return biggest


def _count(jaxpr, prefix: str) -> int:
    """Equations whose primitive name starts with `prefix` ("psum": psum, psum_invariant)."""
    from jax.extend import core

    n = 0
    for eqn in jaxpr.eqns:
        n += eqn.primitive.name.startswith(prefix)
        for sub in core.jaxprs_in_params(eqn.params):
            n += _count(sub, prefix)
    return n


def test_step_is_chunked_with_one_reduction():
    """No array of the Lloyd step is as large as N x K (chunks of 64 points), and the
    per-device partial sums meet in exactly one psum."""
    n, d, k, chunk = 4096, 8, 64, 64
    x = np.random.default_rng(0).standard_normal((n, d)).astype(np.float32)
    data = cluster._put(x, None, chunk, k)
    step = cluster._step_fn(data.mesh, data.n, k, data.chunk)
    labels = jax.numpy.full((n,), -1, jax.numpy.int32)
    jaxpr = jax.make_jaxpr(step)(data.x, jax.numpy.zeros((k, d)), labels).jaxpr
    assert _max_intermediate(jaxpr) < n * k // 8
    assert _max_intermediate(jaxpr) >= chunk * k  # the distance block itself is there
    assert _count(jaxpr, "psum") == 1
    assert _count(jaxpr, "all_gather") == _count(jaxpr, "all_to_all") == 0
    # And the chunk size changes nothing.
    a = cluster.kmeans(x, k, init=x[:k], max_iter=3, tol=0.0, chunk_size=16)
    b = cluster.kmeans(x, k, init=x[:k], max_iter=3, tol=0.0, chunk_size=512)
    np.testing.assert_array_equal(a.labels, b.labels)


def test_input_errors():
    x = _blobs(n=50)
    with pytest.raises(ValueError, match="k=60 is larger than the 50 points"):
        cluster.kmeans(x, 60)
    with pytest.raises(ValueError, match=r"init must have shape \(5, 8\)"):
        cluster.kmeans(x, 5, init=x[:4])
    with pytest.raises(ValueError, match=r"x must be a non-empty \(N, D\) array"):
        cluster.kmeans(x[0], 2)
    with pytest.raises(ValueError, match="max_iter"):
        cluster.kmeans(x, 2, max_iter=0)


def test_bench_kmeans_reports_both_libraries(monkeypatch):
    """`python -m jssl.bench --method kmeans` at a tiny size: one record with jssl's and
    scikit-learn's time, rate and inertia from the same initial centres, and scikit-learn's
    own rounding spread (a shifted copy of the data)."""
    import argparse

    from jssl import bench_kmeans

    monkeypatch.setattr(bench_kmeans, "IDLE_S", 0.0)  # the pause only matters for timings
    out = bench_kmeans.bench(argparse.Namespace(n=3000, d=8, k=16, iters=3, seed=0, gemm_size=256))
    for key in ("s_per_iter", "inertia", "sklearn_s_per_iter", "sklearn_inertia"):
        assert out[key] > 0, key
    assert out["n_iter"] == out["sklearn_n_iter"] == 3
    assert abs(out["inertia_rel_diff_vs_sklearn"]) < 1e-3
    # 3 passes + the final assignment, 2 N K D flops each.
    rate = 2 * 3000 * 16 * 8 * 4 / (out["s_per_iter"] * 3) / 1e9
    assert out["gflop_per_s"] == pytest.approx(rate, rel=0.05, abs=0.06)
    assert out["idle_s"] == 0.0
    assert abs(out["sklearn_inertia_shifted"] / out["sklearn_inertia"] - 1) < 1e-3
    assert out["sklearn_rounding_rel_diff"] == pytest.approx(
        out["sklearn_inertia_shifted"] / out["sklearn_inertia"] - 1, rel=1e-2, abs=1e-9
    )
    if "faiss_inertia" in out:
        assert abs(out["faiss_inertia"] / out["sklearn_inertia"] - 1) < 0.05
        assert out["speedup_vs_faiss"] == pytest.approx(
            out["faiss_s_per_iter"] / out["s_per_iter"], rel=0.01
        )
        # faiss with the labels of its final centres: their distances sum to its inertia.
        assert out["faiss_labels_inertia"] == pytest.approx(out["faiss_inertia"], rel=1e-4)
        assert out["speedup_vs_faiss_labels"] == pytest.approx(
            out["faiss_labels_s_per_iter"] / out["s_per_iter"], rel=0.01
        )
    # The GEMM ceiling: the faster of the two 256^3 products, and jssl's 4 passes at it.
    assert out["gemm_size"] == 256
    assert (
        out["gemm_ceiling_gflop_per_s"]
        == max(out["gemm_numpy_gflop_per_s"], out["gemm_xla_gflop_per_s"])
        > 0
    )
    best = 2 * 3000 * 16 * 8 * 4 / (out["gemm_ceiling_gflop_per_s"] * 1e9) / 3
    assert out["speedup_bound_vs_sklearn"] == pytest.approx(
        out["sklearn_s_per_iter"] / best, rel=0.01
    )
