"""Losses against independent NumPy references, finite differences and the 8-device mesh."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P
from jax.test_util import check_grads

from jssl import losses


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
    got = jax.jit(lambda a, b: losses.barlow_twins(a, b, lambd=lambd, scale=scale,
                                                   unbiased=unbiased, eps=eps))(z1, z2)
    np.testing.assert_allclose(got, barlow_reference(z1, z2, lambd, scale, unbiased, eps), rtol=2e-5)


def test_barlow_twins_hand_computed():
    # Identical, already standardised 1-D views: C = [[1]] -> loss 0.
    z = np.array([[1.0], [-1.0]], np.float32)
    assert float(losses.barlow_twins(z, z, eps=0.0)) == pytest.approx(0.0, abs=1e-6)
    # Anti-correlated: C = [[-1]] -> (1 - (-1))^2 = 4.
    assert float(losses.barlow_twins(z, -z, eps=0.0)) == pytest.approx(4.0, rel=1e-6)
    # Two dims, z2 swaps them: diag 0, off-diag 1 -> 2 + 2 * lambd.
    z1 = np.array([[1.0, 1.0], [-1.0, -1.0], [1.0, -1.0], [-1.0, 1.0]], np.float32)
    z2 = z1[:, ::-1].copy()  # C = [[0, 1], [1, 0]]
    assert float(losses.barlow_twins(z1, z2, lambd=0.5, eps=0.0)) == pytest.approx(2 + 2 * 0.5, rel=1e-6)


def test_barlow_twins_unbiased_is_torch_std_convention():
    """unbiased=True, eps=0: (z - mean) / z.std(0) with the N-1 std (MetaMask's code)."""
    z1, z2 = _rand((8, 4), 2), _rand((8, 4), 3)
    a = (z1 - z1.mean(0)) / z1.std(0, ddof=1)
    b = (z2 - z2.mean(0)) / z2.std(0, ddof=1)
    c = a.T @ b / 8
    want = np.sum((1 - np.diag(c)) ** 2) + 0.0051 * (np.sum(c ** 2) - np.sum(np.diag(c) ** 2))
    np.testing.assert_allclose(losses.barlow_twins(z1, z2, unbiased=True, eps=0.0), want, rtol=1e-5)


def test_barlow_twins_gradients_match_finite_differences():
    with jax.enable_x64(True):
        z1 = jnp.asarray(_rand((6, 3), 4), jnp.float64)
        z2 = jnp.asarray(_rand((6, 3), 5), jnp.float64)
        check_grads(lambda a, b: losses.barlow_twins(a, b, lambd=0.3), (z1, z2), order=1,
                    modes=["rev"], atol=1e-6, rtol=1e-6)


def test_barlow_twins_shape_errors():
    with pytest.raises(ValueError, match="same shape"):
        losses.barlow_twins(jnp.zeros((4, 3)), jnp.zeros((4, 2)))
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        losses.barlow_twins(jnp.zeros((4,)), jnp.zeros((4,)))


# --- NT-Xent --------------------------------------------------------------------------


def nt_xent_reference(views, temperature, labels=None):
    """Anchor by anchor, in float64, straight from the definition."""
    z = np.concatenate([np.float64(v) for v in views])
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
    got = jax.jit(lambda a, b: losses.nt_xent(a, b, temperature=temperature))(z1, z2)
    np.testing.assert_allclose(got, nt_xent_reference([z1, z2], temperature), rtol=1e-5)


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
    np.testing.assert_allclose(losses.nt_xent(z1, z2, temperature=0.2), want, rtol=1e-5)


def test_nt_xent_multi_view_and_supcon():
    views = [_rand((6, 4), s) for s in (10, 11, 12)]
    np.testing.assert_allclose(losses.nt_xent(*views, temperature=0.3),
                               nt_xent_reference(views, 0.3), rtol=1e-5)
    labels = np.array([0, 1, 0, 2, 1, 0])
    np.testing.assert_allclose(losses.nt_xent(*views[:2], temperature=0.3, labels=jnp.asarray(labels)),
                               nt_xent_reference(views[:2], 0.3, labels), rtol=1e-5)
    # With all labels distinct, SupCon is SimCLR.
    np.testing.assert_allclose(losses.nt_xent(*views[:2], labels=jnp.arange(6) + 3),
                               losses.nt_xent(*views[:2]), rtol=1e-6)


def test_nt_xent_finite_at_small_temperature():
    z1, z2 = _rand((32, 16), 13), _rand((32, 16), 14)
    loss, grads = jax.value_and_grad(lambda a: losses.nt_xent(a, z2, temperature=0.01))(z1)
    assert np.isfinite(loss) and np.all(np.isfinite(grads))
    # exp(1/0.01) overflows float32; the reference in float64 does not.
    np.testing.assert_allclose(loss, nt_xent_reference([z1, z2], 0.01), rtol=1e-4)


def test_nt_xent_gradients_match_finite_differences():
    with jax.enable_x64(True):
        z1 = jnp.asarray(_rand((5, 3), 15), jnp.float64)
        z2 = jnp.asarray(_rand((5, 3), 16), jnp.float64)
        check_grads(lambda a, b: losses.nt_xent(a, b, temperature=0.5), (z1, z2), order=1,
                    modes=["rev"], atol=1e-6, rtol=1e-6)


def test_nt_xent_errors():
    with pytest.raises(ValueError, match="at least 2 views"):
        losses.nt_xent(jnp.zeros((4, 3)))
    with pytest.raises(ValueError, match="labels must have shape"):
        losses.nt_xent(jnp.ones((4, 3)), jnp.ones((4, 3)), labels=jnp.zeros((3,), jnp.int32))


# --- Global-batch semantics: the same value with the batch split over 8 devices --------


@pytest.mark.parametrize("loss_fn", [
    lambda a, b: losses.barlow_twins(a, b),
    lambda a, b: losses.nt_xent(a, b, temperature=0.1),
], ids=["barlow_twins", "nt_xent"])
def test_loss_on_sharded_global_batch(loss_fn):
    assert jax.device_count() == 8
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    z1, z2 = _rand((32, 8), 17), _rand((32, 8), 18)
    sharding = NamedSharding(mesh, P("data"))
    a, b = jax.device_put(z1, sharding), jax.device_put(z2, sharding)
    assert len(a.addressable_shards) == 8 and a.addressable_shards[0].data.shape == (4, 8)
    sharded = jax.jit(loss_fn)(a, b)
    one = jax.devices()[0]
    single = jax.jit(loss_fn)(jax.device_put(z1, one), jax.device_put(z2, one))
    np.testing.assert_allclose(sharded, single, rtol=1e-5)
