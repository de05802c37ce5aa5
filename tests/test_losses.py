"""Losses against independent NumPy references, finite differences and the 8-device mesh."""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from jax.test_util import check_grads

from jssl import losses


class _JittedLosses:
    """`jssl.losses` with every function jitted, hyperparameters static.

    Eager calls dispatch (and compile) op by op, which is several times slower on the
    8-device CPU backend than one compile per call; the checks raise at trace time all the
    same.
    """

    def __getattr__(self, name):
        fn = getattr(losses, name)
        static = [
            p.name
            for p in inspect.signature(fn).parameters.values()
            if p.kind == p.KEYWORD_ONLY and p.name != "labels"
        ]
        jitted = jax.jit(fn, static_argnames=static)
        setattr(self, name, jitted)
        return jitted


L = _JittedLosses()


def _rand(shape, seed):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


# --- Barlow Twins ---------------------------------------------------------------------


def barlow_reference(z1, z2, lambd, scale, unbiased, eps):
    """Written from the paper's pseudo-code, in float64 with explicit loops over C."""
    z1, z2 = np.float64(z1), np.float64(z2)
    n, d = z1.shape
    ddof = 1 if unbiased else 0
    a = (z1 - z1.mean(0)) / np.sqrt(z1.var(0, ddof=ddof) + eps)
    b = (z2 - z2.mean(0)) / np.sqrt(z2.var(0, ddof=ddof) + eps)
    c = a.T @ b / n
    loss = 0.0
    for i in range(d):
        for j in range(d):
            loss += (1 - c[i, i]) ** 2 if i == j else lambd * c[i, j] ** 2
    return scale * loss


@pytest.mark.parametrize("unbiased,eps", [(False, 1e-5), (True, 0.0)])
@pytest.mark.parametrize("lambd,scale", [(0.0051, 1.0), (0.005, 0.1)])
def test_barlow_twins_matches_reference(unbiased, eps, lambd, scale):
    z1, z2 = _rand((16, 6), 0), _rand((16, 6), 1)
    got = jax.jit(
        lambda a, b: L.barlow_twins(a, b, lambd=lambd, scale=scale, unbiased=unbiased, eps=eps)
    )(z1, z2)
    want = barlow_reference(z1, z2, lambd, scale, unbiased, eps)
    np.testing.assert_allclose(got, want, rtol=2e-5)


def test_barlow_twins_hand_computed():
    # Identical, already standardised 1-D views: C = [[1]] -> loss 0.
    z = np.array([[1.0], [-1.0]], np.float32)
    assert float(L.barlow_twins(z, z, eps=0.0)) == pytest.approx(0.0, abs=1e-6)
    # Anti-correlated: C = [[-1]] -> (1 - (-1))^2 = 4.
    assert float(L.barlow_twins(z, -z, eps=0.0)) == pytest.approx(4.0, rel=1e-6)
    # Two dims, z2 swaps them: diag 0, off-diag 1 -> 2 + 2 * lambd.
    z1 = np.array([[1.0, 1.0], [-1.0, -1.0], [1.0, -1.0], [-1.0, 1.0]], np.float32)
    z2 = z1[:, ::-1].copy()  # C = [[0, 1], [1, 0]]
    assert float(L.barlow_twins(z1, z2, lambd=0.5, eps=0.0)) == pytest.approx(2 + 2 * 0.5, rel=1e-6)


def test_barlow_twins_unbiased_is_torch_std_convention():
    """unbiased=True, eps=0: (z - mean) / z.std(0) with the N-1 std (MetaMask's code)."""
    z1, z2 = _rand((8, 4), 2), _rand((8, 4), 3)
    a = (z1 - z1.mean(0)) / z1.std(0, ddof=1)
    b = (z2 - z2.mean(0)) / z2.std(0, ddof=1)
    c = a.T @ b / 8
    want = np.sum((1 - np.diag(c)) ** 2) + 0.0051 * (np.sum(c**2) - np.sum(np.diag(c) ** 2))
    np.testing.assert_allclose(L.barlow_twins(z1, z2, unbiased=True, eps=0.0), want, rtol=1e-5)


def test_barlow_twins_gradients_match_finite_differences():
    with jax.enable_x64(True):
        z1 = jnp.asarray(_rand((6, 3), 4), jnp.float64)
        z2 = jnp.asarray(_rand((6, 3), 5), jnp.float64)
        check_grads(
            lambda a, b: L.barlow_twins(a, b, lambd=0.3),
            (z1, z2),
            order=1,
            modes=["rev"],
            atol=1e-6,
            rtol=1e-6,
        )


def test_barlow_twins_shape_errors():
    with pytest.raises(ValueError, match="same shape"):
        L.barlow_twins(jnp.zeros((4, 3)), jnp.zeros((4, 2)))
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        L.barlow_twins(jnp.zeros((4,)), jnp.zeros((4,)))


# --- NT-Xent --------------------------------------------------------------------------


def nt_xent_reference(views, temperature, labels=None, normalize=True):
    """Anchor by anchor, in float64, straight from the definition."""
    z = np.concatenate([np.float64(v) for v in views])
    if normalize:
        z = z / np.linalg.norm(z, axis=1, keepdims=True)
    n = views[0].shape[0]
    ids = np.tile(np.arange(n) if labels is None else labels, len(views))
    total = 0.0
    for i in range(len(z)):
        sims = np.exp(z @ z[i] / temperature)
        pos = sum(sims[j] for j in range(len(z)) if j != i and ids[j] == ids[i])
        den = sum(sims[j] for j in range(len(z)) if j != i)
        total += -np.log(pos / den)
    return total / len(z)


@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_nt_xent_two_views_matches_reference(temperature):
    z1, z2 = _rand((8, 5), 6), _rand((8, 5), 7)
    got = jax.jit(lambda a, b: L.nt_xent(a, b, temperature=temperature))(z1, z2)
    np.testing.assert_allclose(got, nt_xent_reference([z1, z2], temperature), rtol=1e-5)


def test_nt_xent_raw_projections():
    """normalize=False (FKT's official code): raw dot products, not cosine similarities."""
    z1, z2 = 0.3 * _rand((6, 4), 8), 0.3 * _rand((6, 4), 9)
    got = jax.jit(lambda a, b: L.nt_xent(a, b, temperature=0.5, normalize=False))(z1, z2)
    np.testing.assert_allclose(got, nt_xent_reference([z1, z2], 0.5, normalize=False), rtol=1e-5)
    assert not np.isclose(got, L.nt_xent(z1, z2, temperature=0.5))


def test_nt_xent_equals_simclr_cross_entropy_form():
    """The classic formulation: 2N-way softmax cross-entropy, target the other view."""
    z1, z2 = _rand((6, 4), 8), _rand((6, 4), 9)
    z = np.concatenate([z1, z2])
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    logits = z @ z.T / 0.2
    np.fill_diagonal(logits, -np.inf)
    targets = np.concatenate([np.arange(6, 12), np.arange(6)])
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    want = -logp[np.arange(12), targets].mean()
    np.testing.assert_allclose(L.nt_xent(z1, z2, temperature=0.2), want, rtol=1e-5)


def test_nt_xent_multi_view_and_supcon():
    views = [_rand((6, 4), s) for s in (10, 11, 12)]
    np.testing.assert_allclose(
        L.nt_xent(*views, temperature=0.3), nt_xent_reference(views, 0.3), rtol=1e-5
    )
    labels = np.array([0, 1, 0, 2, 1, 0])
    np.testing.assert_allclose(
        L.nt_xent(*views[:2], temperature=0.3, labels=jnp.asarray(labels)),
        nt_xent_reference(views[:2], 0.3, labels),
        rtol=1e-5,
    )
    # With all labels distinct, SupCon is SimCLR.
    np.testing.assert_allclose(
        L.nt_xent(*views[:2], labels=jnp.arange(6) + 3), L.nt_xent(*views[:2]), rtol=1e-6
    )


def test_nt_xent_finite_at_small_temperature():
    z1, z2 = _rand((32, 16), 13), _rand((32, 16), 14)
    loss, grads = jax.value_and_grad(lambda a: L.nt_xent(a, z2, temperature=0.01))(z1)
    assert np.isfinite(loss) and np.all(np.isfinite(grads))
    # exp(1/0.01) overflows float32; the reference in float64 does not.
    np.testing.assert_allclose(loss, nt_xent_reference([z1, z2], 0.01), rtol=1e-4)


def test_nt_xent_gradients_match_finite_differences():
    with jax.enable_x64(True):
        z1 = jnp.asarray(_rand((5, 3), 15), jnp.float64)
        z2 = jnp.asarray(_rand((5, 3), 16), jnp.float64)
        check_grads(
            lambda a, b: L.nt_xent(a, b, temperature=0.5),
            (z1, z2),
            order=1,
            modes=["rev"],
            atol=1e-6,
            rtol=1e-6,
        )


def test_nt_xent_errors():
    with pytest.raises(ValueError, match="at least 2 views"):
        L.nt_xent(jnp.zeros((4, 3)))
    with pytest.raises(ValueError, match="labels must have shape"):
        L.nt_xent(jnp.ones((4, 3)), jnp.ones((4, 3)), labels=jnp.zeros((3,), jnp.int32))


def _unit_rows(x):
    x = np.float64(x)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _grad_check_x64(fn, *args):
    """Reverse-mode gradient against finite differences, in float64."""
    with jax.enable_x64(True):
        args = tuple(jnp.asarray(a, jnp.float64) for a in args)
        check_grads(fn, args, order=1, modes=["rev"], atol=1e-6, rtol=1e-6)


# --- DCL / DCLW -----------------------------------------------------------------------


def dcl_reference(z1, z2, temperature, sigma=None):
    """Eq. 6 of Yeh et al., anchor by anchor, mean of the two directions, float64."""
    u, v = _unit_rows(z1), _unit_rows(z2)
    n = len(u)
    if sigma is None:
        w = np.ones(n)
    else:
        e = np.array([np.exp(np.dot(u[i], v[i]) / sigma) for i in range(n)])
        w = 2 - e / e.mean()
    total = 0.0
    for a, b in ((u, v), (v, u)):
        for i in range(n):
            neg = sum(
                np.exp(np.dot(a[i], a[k]) / temperature) + np.exp(np.dot(a[i], b[k]) / temperature)
                for k in range(n)
                if k != i
            )
            total += -w[i] * np.dot(a[i], b[i]) / temperature + np.log(neg)
    return total / (2 * n)


@pytest.mark.parametrize("sigma", [None, 0.5])
@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_dcl_matches_reference(temperature, sigma):
    z1, z2 = _rand((8, 5), 20), _rand((8, 5), 21)
    got = jax.jit(lambda a, b: L.dcl(a, b, temperature=temperature, sigma=sigma))(z1, z2)
    np.testing.assert_allclose(got, dcl_reference(z1, z2, temperature, sigma), rtol=1e-5)


def test_dcl_hand_computed():
    # Orthonormal rows, identical views, T = 1: positive 1, 2(N - 1) negatives of similarity 0.
    n = 4
    z = np.eye(n, dtype=np.float32) * 3.0
    want = -1.0 + np.log(2 * (n - 1))
    assert float(L.dcl(z, z, temperature=1.0)) == pytest.approx(want, rel=1e-6)
    # Equal positive similarities -> uniform softmax -> every DCLW weight is 2 - 1 = 1.
    assert float(L.dcl(z, z, temperature=1.0, sigma=0.5)) == pytest.approx(want, rel=1e-6)


def test_dcl_is_below_nt_xent():
    """Removing the positive from the denominator can only lower every anchor's loss."""
    z1, z2 = _rand((8, 5), 22), _rand((8, 5), 23)
    assert float(L.dcl(z1, z2, temperature=0.2)) < float(L.nt_xent(z1, z2, temperature=0.2))


def test_dcl_gradients():
    z1, z2 = _rand((5, 3), 24), _rand((5, 3), 25)
    _grad_check_x64(lambda a, b: L.dcl(a, b, temperature=0.5), z1, z2)


def test_dclw_weights_are_constants():
    """DCLW's gradient is DCL's with the vMF weights frozen (stop-gradient, as lightly)."""
    z1, z2 = jnp.asarray(_rand((6, 4), 26)), jnp.asarray(_rand((6, 4), 27))
    t, sigma = 0.5, 0.5

    def with_frozen_weights(a, b, w):
        u, v = L.l2_normalize(a), L.l2_normalize(b)
        mask = ~np.eye(6, dtype=bool)
        out = 0.0
        for x, y in ((u, v), (v, u)):
            pos = jnp.sum(x * y, axis=1) / t
            neg = jnp.log(
                jnp.sum(jnp.where(mask, jnp.exp(x @ x.T / t), 0.0), axis=1)
                + jnp.sum(jnp.where(mask, jnp.exp(x @ y.T / t), 0.0), axis=1)
            )
            out = out + jnp.mean(-w * pos + neg)
        return out / 2

    cos = np.sum(_unit_rows(z1) * _unit_rows(z2), axis=1)
    w = jnp.asarray(2 - 6 * np.exp(cos / sigma) / np.exp(cos / sigma).sum(), jnp.float32)
    got = jax.grad(lambda a, b: L.dcl(a, b, temperature=t, sigma=sigma), argnums=(0, 1))(z1, z2)
    want = jax.jit(jax.grad(with_frozen_weights, argnums=(0, 1)))(z1, z2, w)
    for g, h in zip(got, want):
        np.testing.assert_allclose(g, h, rtol=1e-4, atol=1e-6)


def test_dcl_errors():
    with pytest.raises(ValueError, match="same shape"):
        L.dcl(jnp.zeros((4, 3)), jnp.zeros((5, 3)))


# --- MoCo v2 / v3 -----------------------------------------------------------------------


def moco_reference(q, k, queue, temperature, normalize):
    q, k, queue = np.float64(q), np.float64(k), np.float64(queue)
    if normalize:
        q, k = _unit_rows(q), _unit_rows(k)
    total = 0.0
    for i in range(len(q)):
        pos = np.exp(np.dot(q[i], k[i]) / temperature)
        neg = sum(np.exp(np.dot(q[i], queue[j]) / temperature) for j in range(len(queue)))
        total += -np.log(pos / (pos + neg))
    return total / len(q)


@pytest.mark.parametrize("normalize", [True, False])
def test_moco_matches_reference(normalize):
    q, k = _rand((8, 5), 30), _rand((8, 5), 31)
    queue = _unit_rows(_rand((12, 5), 32)).astype(np.float32)
    scale = 1.0 if normalize else 0.3  # keep the raw logits moderate
    q, k = q * scale, k * scale
    got = L.moco(q, k, queue, temperature=0.2, normalize=normalize)
    np.testing.assert_allclose(got, moco_reference(q, k, queue, 0.2, normalize), rtol=1e-5)


def test_moco_hand_computed_and_normalize_flag():
    e1 = np.array([[1.0, 0.0]], np.float32)
    # Positive similarity 1, one negative at -1, T = 1: -log(e / (e + 1/e)) = log(1 + e^-2).
    want = np.log1p(np.exp(-2))
    assert float(L.moco(e1, e1, -e1, temperature=1.0)) == pytest.approx(want, rel=1e-6)
    # normalize=True is invariant to the scale of q and k; normalize=False is not.
    assert float(L.moco(5 * e1, 2 * e1, -e1, temperature=1.0)) == pytest.approx(want, rel=1e-6)
    # Raw: positive 1.5 * 2 = 3, negative -1.5 -> log(1 + e^-4.5).
    assert float(L.moco(1.5 * e1, 2 * e1, -e1, temperature=1.0, normalize=False)) == pytest.approx(
        np.log1p(np.exp(-4.5)), rel=1e-5
    )


def test_moco_targets_get_no_gradient():
    q, k, queue = _rand((6, 4), 33), _rand((6, 4), 34), _rand((10, 4), 35)
    gq, gk, gqueue = jax.grad(L.moco, argnums=(0, 1, 2))(q, k, queue)
    assert np.any(gq != 0)
    assert np.all(gk == 0) and np.all(gqueue == 0)


def test_moco_gradients():
    k, queue = _rand((5, 3), 36), _unit_rows(_rand((7, 3), 37))
    with jax.enable_x64(True):
        kk, qq = jnp.asarray(k, jnp.float64), jnp.asarray(queue, jnp.float64)
        q0 = jnp.asarray(_rand((5, 3), 38), jnp.float64)
        check_grads(
            lambda q: L.moco(q, kk, qq, temperature=0.5),
            (q0,),
            order=1,
            modes=["rev"],
            atol=1e-6,
            rtol=1e-6,
        )


def test_moco_errors():
    with pytest.raises(ValueError, match=r"queue must have shape \(K, 4\)"):
        L.moco(jnp.ones((2, 4)), jnp.ones((2, 4)), jnp.ones((8, 3)))
    with pytest.raises(ValueError, match="queue must have shape"):
        L.moco(jnp.ones((2, 4)), jnp.ones((2, 4)), jnp.ones((8,)))


def mocov3_reference(q, k, temperature):
    q, k = _unit_rows(q), _unit_rows(k)
    total = 0.0
    for i in range(len(q)):
        logits = [np.dot(q[i], k[j]) / temperature for j in range(len(k))]
        total += -(logits[i] - np.log(sum(np.exp(x) for x in logits)))
    return 2 * temperature * total / len(q)


@pytest.mark.parametrize("temperature", [0.2, 1.0])
def test_mocov3_matches_reference(temperature):
    q, k = _rand((8, 5), 40), _rand((8, 5), 41)
    got = jax.jit(lambda a, b: L.mocov3(a, b, temperature=temperature))(q, k)
    np.testing.assert_allclose(got, mocov3_reference(q, k, temperature), rtol=1e-5)


def test_mocov3_hand_computed():
    n, t = 4, 0.5
    z = np.eye(n, dtype=np.float32)
    want = 2 * t * np.log1p((n - 1) * np.exp(-1 / t))  # -log(e^{1/T} / (e^{1/T} + (N-1)))
    assert float(L.mocov3(z, 2 * z, temperature=t)) == pytest.approx(want, rel=1e-5)


def test_mocov3_key_gets_no_gradient_and_query_gradient_is_right():
    gq, gk = jax.grad(L.mocov3, argnums=(0, 1))(_rand((6, 4), 42), _rand((6, 4), 43))
    assert np.any(gq != 0) and np.all(gk == 0)
    k = _rand((5, 3), 44)
    with jax.enable_x64(True):
        kk = jnp.asarray(k, jnp.float64)
        q0 = jnp.asarray(_rand((5, 3), 45), jnp.float64)
        check_grads(
            lambda q: L.mocov3(q, kk, temperature=0.5),
            (q0,),
            order=1,
            modes=["rev"],
            atol=1e-6,
            rtol=1e-6,
        )


# --- NNCLR -------------------------------------------------------------------------------


def nnclr_reference(p, nn, temperature):
    p, nn = _unit_rows(p), _unit_rows(nn)
    total = 0.0
    for i in range(len(p)):
        logits = [np.dot(nn[i], p[k]) / temperature for k in range(len(p))]
        total += np.log(sum(np.exp(x) for x in logits)) - logits[i]
    return total / len(p)


@pytest.mark.parametrize("temperature", [0.1, 1.0])
def test_nnclr_matches_reference(temperature):
    p, nn = _rand((8, 5), 46), _rand((8, 5), 47)
    got = jax.jit(lambda a, b: L.nnclr(a, b, temperature=temperature))(p, nn)
    np.testing.assert_allclose(got, nnclr_reference(p, nn, temperature), rtol=1e-5)


def test_nearest_neighbour_is_the_most_cosine_similar_support_row():
    support = _unit_rows(_rand((12, 4), 48)).astype(np.float32)
    z = _rand((6, 4), 49) * np.arange(1, 7, dtype=np.float32)[:, None]  # scale is irrelevant
    got = np.asarray(L.nearest_neighbour(z, support))
    cos = _unit_rows(z) @ support.T
    np.testing.assert_array_equal(got, support[np.argmax(cos, axis=1)])
    # A support row itself (any positive scale) finds itself.
    np.testing.assert_array_equal(
        np.asarray(L.nearest_neighbour(3 * support[[4, 7]], support)), support[[4, 7]]
    )
    with pytest.raises(ValueError, match=r"support must have shape \(K, 4\)"):
        L.nearest_neighbour(z, support[:, :3])


def test_nnclr_neighbours_get_no_gradient_and_prediction_gradient_is_right():
    support = _unit_rows(_rand((10, 4), 50)).astype(np.float32)

    def loss(p, z):  # the positives looked up from z: no gradient may reach z
        return L.nnclr(p, L.nearest_neighbour(z, support), temperature=0.2)

    gp, gz = jax.jit(jax.grad(loss, argnums=(0, 1)))(_rand((6, 4), 51), _rand((6, 4), 52))
    assert np.any(np.asarray(gp) != 0) and np.all(np.asarray(gz) == 0)
    with jax.enable_x64(True):
        nn = jnp.asarray(_rand((5, 3), 53), jnp.float64)
        p0 = jnp.asarray(_rand((5, 3), 54), jnp.float64)
        check_grads(
            lambda p: L.nnclr(p, nn, temperature=0.5),
            (p0,),
            order=1,
            modes=["rev"],
            atol=1e-6,
            rtol=1e-6,
        )


# --- VICReg ------------------------------------------------------------------------------


def vicreg_reference(z1, z2, sim_w, var_w, cov_w, eps, reduction):
    z1, z2 = np.float64(z1), np.float64(z2)
    n, d = z1.shape
    invariance = sum((z1[i, j] - z2[i, j]) ** 2 for i in range(n) for j in range(d)) / (n * d)
    var_terms, cov_terms = [], []
    for z in (z1, z2):
        m = [sum(z[i, j] for i in range(n)) / n for j in range(d)]
        cov = np.zeros((d, d))
        for a in range(d):
            for b in range(d):
                cov[a, b] = sum((z[i, a] - m[a]) * (z[i, b] - m[b]) for i in range(n)) / (n - 1)
        var_terms.append(sum(max(0.0, 1 - np.sqrt(cov[j, j] + eps)) for j in range(d)) / d)
        cov_terms.append(sum(cov[a, b] ** 2 for a in range(d) for b in range(d) if a != b) / d)
    variance = sum(var_terms) / (2 if reduction == "mean" else 1)
    return sim_w * invariance + var_w * variance + cov_w * sum(cov_terms)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("scale", [0.5, 2.0])  # std below / above the hinge's 1
def test_vicreg_matches_reference(reduction, scale):
    z1, z2 = scale * _rand((8, 5), 50), scale * _rand((8, 5), 51)
    got = jax.jit(lambda a, b: L.vicreg(a, b, variance_reduction=reduction))(z1, z2)
    want = vicreg_reference(z1, z2, 25.0, 25.0, 1.0, 1e-4, reduction)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    got = L.vicreg(
        z1,
        z2,
        sim_weight=1.0,
        var_weight=2.0,
        cov_weight=3.0,
        eps=1e-2,
        variance_reduction=reduction,
    )
    want = vicreg_reference(z1, z2, 1.0, 2.0, 3.0, 1e-2, reduction)
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_vicreg_hand_computed():
    # Identical views, orthogonal zero-mean columns with unbiased variance 4: every term is 0.
    c = np.sqrt(3.0)
    z = c * np.array([[1, 1], [1, -1], [-1, 1], [-1, -1]], np.float32)
    assert float(L.vicreg(z, z)) == pytest.approx(0.0, abs=1e-6)
    # Collapsed (all zero) views: only the hinge, 1 - sqrt(1e-4) = 0.99 per view.
    zero = np.zeros((4, 3), np.float32)
    assert float(L.vicreg(zero, zero)) == pytest.approx(25 * 0.99, rel=1e-6)
    summed = L.vicreg(zero, zero, variance_reduction="sum")
    assert float(summed) == pytest.approx(25 * 1.98, rel=1e-6)


def test_vicreg_gradients_and_errors():
    _grad_check_x64(lambda a, b: L.vicreg(a, b), 0.5 * _rand((6, 3), 52), 0.5 * _rand((6, 3), 53))
    with pytest.raises(ValueError, match="variance_reduction must be 'mean' or 'sum', got 'avg'"):
        L.vicreg(jnp.ones((4, 3)), jnp.ones((4, 3)), variance_reduction="avg")
    with pytest.raises(ValueError, match="N >= 2"):
        L.vicreg(jnp.ones((1, 3)), jnp.ones((1, 3)))


# --- W-MSE -------------------------------------------------------------------------------


def wmse_reference(z1, z2, eps):
    """Whiten each view with the inverse Cholesky factor, then normalised MSE, float64."""
    whitened = []
    for z in (np.float64(z1), np.float64(z2)):
        n, d = z.shape
        c = z - z.mean(0)
        cov = c.T @ c / (n - 1)
        chol = np.linalg.cholesky((1 - eps) * cov + eps * np.eye(d))
        whitened.append((np.linalg.inv(chol) @ c.T).T)
    a, b = _unit_rows(whitened[0]), _unit_rows(whitened[1])
    return sum(np.sum((a[i] - b[i]) ** 2) for i in range(len(a))) / len(a)


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_wmse_matches_reference(eps):
    z1, z2 = _rand((16, 4), 60), _rand((16, 4), 61)
    got = jax.jit(lambda a, b: L.wmse(a, b, eps=eps))(z1, z2)
    np.testing.assert_allclose(got, wmse_reference(z1, z2, eps), rtol=1e-4)


def test_wmse_hand_computed():
    z = _rand((12, 3), 62)
    # Whitening removes shifts and any upper-triangular map with a positive diagonal
    # (z U has Cholesky factor U^T L), so these views whiten to the same points: loss 0.
    u = np.array([[2.0, 0.5, -1.0], [0.0, 0.3, 2.0], [0.0, 0.0, 4.0]], np.float32)
    assert float(L.wmse(z, z @ u + 1.0)) == pytest.approx(0.0, abs=1e-5)
    # Negated view: whitened vectors are opposite, cos = -1 -> 4.
    assert float(L.wmse(z, -z)) == pytest.approx(4.0, rel=1e-5)


def test_wmse_gradients_and_errors():
    _grad_check_x64(lambda a, b: L.wmse(a, b), _rand((8, 3), 63), _rand((8, 3), 64))
    with pytest.raises(ValueError, match="N > D"):
        L.wmse(jnp.ones((4, 4)), jnp.ones((4, 4)))
    assert np.isfinite(L.wmse(_rand((4, 6), 65), _rand((4, 6), 66), eps=0.5))


# --- BYOL / SimSiam ----------------------------------------------------------------------


def cosine_reference(p, z):
    return [
        np.dot(p[i], z[i]) / (np.linalg.norm(p[i]) * np.linalg.norm(z[i])) for i in range(len(p))
    ]


def test_byol_and_simsiam_match_reference():
    p, z = _rand((8, 5), 70), _rand((8, 5), 71)
    cos = np.mean(cosine_reference(np.float64(p), np.float64(z)))
    np.testing.assert_allclose(jax.jit(L.byol)(p, z), 2 - 2 * cos, rtol=1e-5)
    np.testing.assert_allclose(jax.jit(L.simsiam)(p, z), -cos, rtol=1e-5)


def test_byol_and_simsiam_hand_computed():
    p = _rand((4, 3), 72)
    assert float(L.byol(p, 3 * p)) == pytest.approx(0.0, abs=1e-6)
    assert float(L.byol(p, -p)) == pytest.approx(4.0, rel=1e-6)
    assert float(L.simsiam(p, 3 * p)) == pytest.approx(-1.0, rel=1e-6)
    assert float(L.simsiam(p, -p)) == pytest.approx(1.0, rel=1e-6)
    e = np.eye(2, dtype=np.float32)
    assert float(L.byol(e, e[::-1].copy())) == pytest.approx(2.0, rel=1e-6)  # orthogonal


@pytest.mark.parametrize("loss_fn", [L.byol, L.simsiam], ids=["byol", "simsiam"])
def test_bootstrap_target_gets_no_gradient(loss_fn):
    p, z = _rand((6, 4), 73), _rand((6, 4), 74)
    gp, gz = jax.grad(loss_fn, argnums=(0, 1))(p, z)
    assert np.any(gp != 0) and np.all(gz == 0)
    zz = _rand((5, 3), 75)
    with jax.enable_x64(True):
        z64 = jnp.asarray(zz, jnp.float64)
        check_grads(
            lambda a: loss_fn(a, z64),
            (jnp.asarray(_rand((5, 3), 76), jnp.float64),),
            order=1,
            modes=["rev"],
            atol=1e-6,
            rtol=1e-6,
        )


# --- Sinkhorn-Knopp and SwAV ----------------------------------------------------------


def sinkhorn_reference(scores, epsilon, iters):
    """The official SwAV procedure, literally, in float64 (single process)."""
    q = np.exp(np.float64(scores) / epsilon).T
    k, n = q.shape
    q /= q.sum()
    for _ in range(iters):
        q /= q.sum(axis=1, keepdims=True)
        q /= k
        q /= q.sum(axis=0, keepdims=True)
        q /= n
    return (q * n).T


@pytest.mark.parametrize("iters", [1, 3])
def test_sinkhorn_matches_reference(iters):
    scores = _unit_rows(_rand((8, 5), 80)) @ _unit_rows(_rand((6, 5), 81)).T  # cosines
    got = jax.jit(lambda s: L.sinkhorn_knopp(s, iters=iters))(scores.astype(np.float32))
    np.testing.assert_allclose(got, sinkhorn_reference(scores, 0.05, iters), rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(np.sum(got, axis=1), 1.0, rtol=1e-5)


def test_sinkhorn_equal_partition_and_perfect_assignment():
    scores = _rand((12, 4), 82)
    q = np.asarray(L.sinkhorn_knopp(scores, epsilon=1.0, iters=200))
    np.testing.assert_allclose(q.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(q.sum(axis=0), 12 / 4, rtol=1e-4)  # every prototype gets N/K
    # One distinct best prototype per sample and N = K: the assignment is the permutation.
    perm = np.array([2, 0, 3, 1])
    q = L.sinkhorn_knopp(np.eye(4, dtype=np.float32)[perm])
    np.testing.assert_allclose(q, np.eye(4)[perm], atol=1e-6)


def test_sinkhorn_stable_on_large_scores_and_no_gradient():
    scores = 50.0 * _rand((16, 8), 83)  # scores / epsilon ~ 1000: exp overflows even float64
    q = L.sinkhorn_knopp(scores)
    assert np.all(np.isfinite(q)) and q.dtype == jnp.float32
    np.testing.assert_allclose(np.sum(q, axis=1), 1.0, rtol=1e-5)
    moderate = 4.0 * _rand((16, 8), 84)  # / 0.05 = 80: near float32's exp limit
    np.testing.assert_allclose(
        L.sinkhorn_knopp(moderate), sinkhorn_reference(moderate, 0.05, 3), rtol=1e-3, atol=1e-6
    )
    g = jax.grad(lambda s: jnp.sum(L.sinkhorn_knopp(s) * jnp.arange(8.0)))(_rand((16, 8), 85))
    assert np.all(g == 0)


def test_sinkhorn_errors():
    with pytest.raises(ValueError, match="iters must be >= 1"):
        L.sinkhorn_knopp(jnp.ones((4, 3)), iters=0)
    with pytest.raises(ValueError, match=r"scores must have shape \(N, D\)"):
        L.sinkhorn_knopp(jnp.ones((4,)))


def swav_reference(scores, temperature, iters, epsilon, num_large):
    """The official loop: codes from each large crop, predicted by every other crop."""
    n_crops = len(scores)
    loss = 0.0
    for i in range(num_large):
        q = sinkhorn_reference(scores[i], epsilon, iters)
        sub = 0.0
        for v in range(n_crops):
            if v == i:
                continue
            x = np.float64(scores[v]) / temperature
            log_p = x - np.log(np.exp(x).sum(axis=1, keepdims=True))
            sub -= np.mean(np.sum(q * log_p, axis=1))
        loss += sub / (n_crops - 1)
    return loss / num_large


def _swav_scores(num_crops, seed, n=8, k=6):
    protos = _unit_rows(_rand((k, 5), seed))
    return [
        (_unit_rows(_rand((n, 5), seed + 1 + c)) @ protos.T).astype(np.float32)
        for c in range(num_crops)
    ]


@pytest.mark.parametrize("num_crops,num_large", [(2, 2), (4, 2), (3, 1)])
def test_swav_matches_reference(num_crops, num_large):
    scores = _swav_scores(num_crops, 90)
    got = jax.jit(lambda s: L.swav(s, num_large_crops=num_large))(scores)
    np.testing.assert_allclose(got, swav_reference(scores, 0.1, 3, 0.05, num_large), rtol=1e-4)


def test_swav_gradient_treats_codes_as_constants():
    """d/ds_v = sum over the large crops i != v of (softmax(s_v / T) - q_i) / (T N), averaged."""
    scores, t, n = _swav_scores(3, 95), 0.1, 8
    grads = jax.grad(lambda s: L.swav(s, temperature=t, num_large_crops=2))(scores)
    codes = [sinkhorn_reference(scores[i], 0.05, 3) for i in range(2)]
    for v in range(3):
        x = np.float64(scores[v]) / t
        p = np.exp(x - x.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        want = sum((p - codes[i]) / (t * n) for i in range(2) if i != v) / (2 * 2)
        np.testing.assert_allclose(grads[v], want, rtol=1e-3, atol=1e-6)


def test_swav_stable_and_errors():
    scores = [100.0 * s for s in _swav_scores(4, 97)]
    loss, grads = jax.value_and_grad(L.swav)(scores)
    assert np.isfinite(loss) and all(np.all(np.isfinite(g)) for g in grads)
    with pytest.raises(ValueError, match="num_large_crops must be in"):
        L.swav(_swav_scores(2, 98), num_large_crops=3)
    with pytest.raises(ValueError, match="at least 2 crops"):
        L.swav(_swav_scores(1, 99))
    with pytest.raises(TypeError, match="list of"):
        L.swav(jnp.ones((4, 3)))


# --- DINO --------------------------------------------------------------------------------


def _softmax64(x):
    x = np.float64(x)
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def dino_reference(student, teacher, center, student_temp, teacher_temp):
    total, terms = 0.0, 0
    for t_idx, t in enumerate(teacher):
        p_t = _softmax64((np.float64(t) - np.float64(center)) / teacher_temp)
        for s_idx, s in enumerate(student):
            if s_idx == t_idx:
                continue
            log_p_s = np.log(_softmax64(np.float64(s) / student_temp))
            total += np.mean([-np.sum(p_t[i] * log_p_s[i]) for i in range(len(s))])
            terms += 1
    return total / terms


def _dino_inputs(num_student, num_teacher, seed, n=8, k=6):
    student = [_rand((n, k), seed + c) for c in range(num_student)]
    teacher = [_rand((n, k), seed + 50 + c) for c in range(num_teacher)]
    return student, teacher, 0.1 * _rand((1, k), seed + 99)


@pytest.mark.parametrize("num_student,num_teacher", [(2, 2), (4, 2), (3, 1)])
def test_dino_matches_reference(num_student, num_teacher):
    student, teacher, center = _dino_inputs(num_student, num_teacher, 100)
    got = jax.jit(L.dino)(student, teacher, center)
    np.testing.assert_allclose(got, dino_reference(student, teacher, center, 0.1, 0.04), rtol=1e-5)
    got = L.dino(student, teacher, center[0], student_temp=0.2, teacher_temp=0.07)
    np.testing.assert_allclose(got, dino_reference(student, teacher, center, 0.2, 0.07), rtol=1e-5)


def test_dino_hand_computed():
    # Uniform teacher (constant logits) and uniform student: cross-entropy log K.
    k = 5
    s, t = [np.zeros((3, k), np.float32)] * 2, [np.ones((3, k), np.float32)] * 2
    assert float(L.dino(s, t, np.zeros((k,), np.float32))) == pytest.approx(np.log(k), rel=1e-6)


def test_dino_teacher_and_center_get_no_gradient_and_student_gradient_is_right():
    student, teacher, center = _dino_inputs(3, 2, 110)
    gs, gt, gc = jax.grad(L.dino, argnums=(0, 1, 2))(student, teacher, center)
    assert all(np.any(g != 0) for g in gs)
    assert all(np.all(g == 0) for g in gt) and np.all(gc == 0)
    with jax.enable_x64(True):
        t64 = [jnp.asarray(t, jnp.float64) for t in teacher]
        c64 = jnp.asarray(center, jnp.float64)
        check_grads(
            lambda *s: L.dino(list(s), t64, c64, student_temp=0.5, teacher_temp=0.3),
            tuple(jnp.asarray(s, jnp.float64) for s in student),
            order=1,
            modes=["rev"],
            atol=1e-6,
            rtol=1e-6,
        )


def test_dino_stable_and_errors():
    student, teacher, center = _dino_inputs(4, 2, 120)
    loss = L.dino([100 * s for s in student], [100 * t for t in teacher], center)
    assert np.isfinite(loss)
    with pytest.raises(ValueError, match=r"center must have shape \(6,\) or \(1, 6\)"):
        L.dino(student, teacher, np.zeros((6, 1), np.float32))
    with pytest.raises(ValueError, match="teacher must hold at most"):
        L.dino(student[:2], student[:3], center)


def test_dino_center_update():
    _, teacher, center = _dino_inputs(2, 2, 130)
    want = 0.9 * np.float64(center) + 0.1 * np.mean(np.concatenate(teacher), axis=0, keepdims=True)
    got = jax.jit(L.dino_center)(center, teacher)
    assert got.shape == (1, 6)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    got = L.dino_center(center[0], np.concatenate(teacher), momentum=0.9)
    assert got.shape == (6,)
    np.testing.assert_allclose(got, want[0], rtol=1e-5)
    g = jax.grad(lambda t: jnp.sum(L.dino_center(center, t)))(teacher)
    assert all(np.all(x == 0) for x in g)


# --- Rotation / jigsaw -------------------------------------------------------------------


def classification_reference(logits, labels):
    logits = np.float64(logits)
    total = 0.0
    for i in range(len(logits)):
        total += -(logits[i, labels[i]] - np.log(np.sum(np.exp(logits[i]))))
    return total / len(logits)


@pytest.mark.parametrize("name,classes", [("rotation", 4), ("jigsaw", 30), ("jigsaw_pp", 30)])
def test_classification_matches_reference(name, classes):
    loss_fn = getattr(L, name)
    logits = 3 * _rand((8, classes), 140)
    labels = np.random.default_rng(141).integers(0, classes, size=8).astype(np.int32)
    want = classification_reference(logits, labels)
    np.testing.assert_allclose(loss_fn(logits, labels), want, rtol=1e-5)
    # Uniform logits: log(number of classes).
    uniform = loss_fn(np.zeros((8, classes), np.float32), labels)
    assert float(uniform) == pytest.approx(np.log(classes), rel=1e-6)
    if name == "jigsaw_pp":
        return  # the same cross-entropy as jigsaw: its gradient is checked there
    with jax.enable_x64(True):
        check_grads(
            lambda x: loss_fn(x, jnp.asarray(labels)),
            (jnp.asarray(logits, jnp.float64),),
            order=1,
            modes=["rev"],
            atol=1e-6,
            rtol=1e-6,
        )


def test_classification_errors():
    with pytest.raises(ValueError, match=r"logits must have shape \(N, 4\)"):
        L.rotation(jnp.zeros((3, 5)), jnp.zeros((3,), jnp.int32))
    with pytest.raises(ValueError, match=r"labels must have shape \(3,\)"):
        L.jigsaw(jnp.zeros((3, 5)), jnp.zeros((4,), jnp.int32))
    with pytest.raises(ValueError, match="labels must be integers"):
        L.jigsaw_pp(jnp.zeros((3, 5)), jnp.zeros((3,)))


# --- Every loss: float32 out of bfloat16 in; finite at extreme temperatures -------------


def _two_view_cases():
    return {
        "barlow_twins": L.barlow_twins,
        "nt_xent": lambda a, b: L.nt_xent(a, b),
        "dcl": lambda a, b: L.dcl(a, b, sigma=0.5),
        "moco": lambda a, b: L.moco(a, b, L.l2_normalize(b[::-1].astype(jnp.float32))),
        "mocov3": L.mocov3,
        "nnclr": L.nnclr,
        "vicreg": L.vicreg,
        "wmse": L.wmse,
        "byol": L.byol,
        "swav": lambda a, b: L.swav([a, b]),
        "dino": lambda a, b: L.dino([a, b], [b, a], jnp.zeros((a.shape[1],))),
    }


@pytest.mark.parametrize("name", sorted(_two_view_cases()))
def test_bfloat16_inputs_give_float32(name):
    loss_fn = _two_view_cases()[name]
    z1, z2 = _rand((16, 4), 150), _rand((16, 4), 151)
    lo = loss_fn(jnp.asarray(z1, jnp.bfloat16), jnp.asarray(z2, jnp.bfloat16))
    assert lo.dtype == jnp.float32 and lo.shape == ()
    # Same value as float32 on the bfloat16-rounded inputs: the maths runs in float32.
    r1 = np.asarray(jnp.asarray(z1, jnp.bfloat16), np.float32)
    r2 = np.asarray(jnp.asarray(z2, jnp.bfloat16), np.float32)
    np.testing.assert_allclose(lo, loss_fn(r1, r2), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "loss_fn",
    [
        lambda a, b: L.dcl(a, b, temperature=0.01),
        lambda a, b: L.dcl(a, b, temperature=0.01, sigma=0.01),
        lambda a, b: L.moco(a, b, L.l2_normalize(b[::-1]), temperature=0.01),
        lambda a, b: L.mocov3(a, b, temperature=0.01),
        lambda a, b: L.nnclr(a, b, temperature=0.01),
    ],
    ids=["dcl", "dclw", "moco", "mocov3", "nnclr"],
)
def test_contrastive_finite_at_small_temperature(loss_fn):
    z1, z2 = 1e3 * _rand((32, 16), 160), 1e3 * _rand((32, 16), 161)
    loss, grads = jax.value_and_grad(loss_fn)(z1, z2)
    assert np.isfinite(loss) and np.all(np.isfinite(grads))


# --- Docstring examples -------------------------------------------------------------------


def test_docstring_examples():
    import doctest
    import importlib

    for name in ("_contrastive", "_bootstrap"):
        module = importlib.import_module(f"jssl.losses.{name}")
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert result.failed == 0 and result.attempted > 0, name


# --- Global-batch semantics: the same value with the batch split over 8 devices --------


def _global_batch_cases():
    """name -> (loss of (batch-sharded args, replicated args), batch args, replicated args)."""
    z1, z2 = _rand((32, 8), 17), _rand((32, 8), 18)
    crops = [_rand((32, 6), 170 + c) for c in range(4)]
    labels = np.random.default_rng(171).integers(0, 4, size=32).astype(np.int32)
    queue = _unit_rows(_rand((20, 8), 172)).astype(np.float32)
    center = 0.1 * _rand((1, 6), 173)
    return {
        "barlow_twins": (lambda b, r: L.barlow_twins(*b), (z1, z2), ()),
        "nt_xent": (lambda b, r: L.nt_xent(*b, temperature=0.1), (z1, z2), ()),
        "nt_xent_supcon": (
            lambda b, r: L.nt_xent(b[0], b[1], labels=b[2] % 3),
            (z1, z2, labels),
            (),
        ),
        "dclw": (lambda b, r: L.dcl(*b, sigma=0.5), (z1, z2), ()),
        "moco": (lambda b, r: L.moco(b[0], b[1], r[0]), (z1, z2), (queue,)),
        "mocov3": (lambda b, r: L.mocov3(*b), (z1, z2), ()),
        "nnclr": (lambda b, r: L.nnclr(b[0], L.nearest_neighbour(b[1], r[0])), (z1, z2), (queue,)),
        "vicreg": (lambda b, r: L.vicreg(*b), (z1, z2), ()),
        "wmse": (lambda b, r: L.wmse(*b), (z1, z2), ()),
        "byol": (lambda b, r: L.byol(*b), (z1, z2), ()),
        "simsiam": (lambda b, r: L.simsiam(*b), (z1, z2), ()),
        "sinkhorn_knopp": (lambda b, r: L.sinkhorn_knopp(b[0]), (crops[0],), ()),
        "swav": (lambda b, r: L.swav(list(b)), tuple(crops), ()),
        "dino": (lambda b, r: L.dino(list(b), list(b[:2]), r[0]), tuple(crops), (center,)),
        "dino_center": (lambda b, r: L.dino_center(r[0], list(b[:2])), tuple(crops), (center,)),
        "rotation": (lambda b, r: L.rotation(b[0][:, :4], b[1]), (crops[0], labels), ()),
    }


@pytest.mark.parametrize("name", sorted(_global_batch_cases()))
def test_loss_on_sharded_global_batch(name):
    assert jax.device_count() == 8
    loss_fn, batch, replicated = _global_batch_cases()[name]
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    sharded_batch = [jax.device_put(x, NamedSharding(mesh, P("data"))) for x in batch]
    sharded_rep = [jax.device_put(x, NamedSharding(mesh, P())) for x in replicated]
    a = sharded_batch[0]
    assert len(a.addressable_shards) == 8 and a.addressable_shards[0].data.shape[0] == 4
    sharded = jax.jit(loss_fn)(sharded_batch, sharded_rep)
    one = jax.devices()[0]
    single = jax.jit(loss_fn)(
        [jax.device_put(x, one) for x in batch], [jax.device_put(x, one) for x in replicated]
    )
    np.testing.assert_allclose(sharded, single, rtol=1e-5, atol=1e-7)
