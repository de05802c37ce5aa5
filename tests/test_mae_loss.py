"""The MAE pieces (jssl.losses.mae, patchify, random_masking) against an independent NumPy
reference written from the official code's definitions, and their gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jssl import losses


def _reference_loss(pred, target, mask, norm_pix_loss):
    """Per patch, in plain loops: (x - mean) / sqrt(unbiased var + 1e-6), squared error
    averaged over the patch's values, then over the removed patches."""
    total, count = 0.0, 0.0
    for n in range(pred.shape[0]):
        for i in range(pred.shape[1]):
            t = target[n, i].astype(np.float64)
            if norm_pix_loss:
                t = (t - t.mean()) / np.sqrt(t.var(ddof=1) + 1e-6)
            err = np.mean((pred[n, i].astype(np.float64) - t) ** 2)
            total += err * mask[n, i]
            count += mask[n, i]
    return total / count


@pytest.mark.parametrize("norm_pix_loss", [True, False])
def test_mae_loss_matches_the_reference(norm_pix_loss):
    rng = np.random.default_rng(0)
    pred = rng.normal(size=(3, 8, 12)).astype(np.float32)
    target = rng.normal(loc=2.0, scale=3.0, size=(3, 8, 12)).astype(np.float32)
    mask = (rng.random((3, 8)) < 0.75).astype(np.float32)
    got = float(losses.mae(pred, target, mask, norm_pix_loss=norm_pix_loss))
    want = _reference_loss(pred, target, mask, norm_pix_loss)
    assert got == pytest.approx(want, rel=1e-5)
    # Kept patches do not count: changing their prediction changes nothing.
    moved = pred.copy()
    moved[mask == 0] += 5.0
    assert float(losses.mae(moved, target, mask, norm_pix_loss=norm_pix_loss)) == pytest.approx(got)


def test_mae_gradient_matches_finite_differences():
    rng = np.random.default_rng(1)
    pred = rng.normal(size=(2, 4, 6))
    target = rng.normal(size=(2, 4, 6))
    mask = np.array([[1, 0, 1, 1], [0, 1, 1, 0]], np.float64)
    with jax.enable_x64(True):
        f = lambda p: losses.mae(jnp.asarray(p), jnp.asarray(target), jnp.asarray(mask))  # noqa: E731
        g = np.asarray(jax.grad(f)(pred))
        eps = 1e-6
        num = np.zeros_like(pred)
        for idx in np.ndindex(pred.shape):
            d = np.zeros_like(pred)
            d[idx] = eps
            num[idx] = (float(f(pred + d)) - float(f(pred - d))) / (2 * eps)
    np.testing.assert_allclose(g, num, rtol=1e-6, atol=1e-9)
    assert np.all(g[mask == 0] == 0)


def test_patchify_is_the_official_order_and_unpatchify_inverts_it():
    images = np.arange(2 * 8 * 4 * 3, dtype=np.float32).reshape(2, 8, 4, 3)
    patches = np.asarray(losses.patchify(images, 2))
    assert patches.shape == (2, 8, 12)  # (8 / 2) * (4 / 2) patches of 2 * 2 * 3 values
    # Patch 3 is row 1, column 1 of the 4 x 2 grid: pixels (2:4, 2:4), flattened (p, q, c).
    np.testing.assert_array_equal(patches[0, 3], images[0, 2:4, 2:4].reshape(-1))
    np.testing.assert_array_equal(np.asarray(losses.unpatchify(patches, 2, 8, 4)), images)
    with pytest.raises(ValueError, match="whole number"):
        losses.patchify(images, 3)


def test_random_masking_keeps_a_quarter_and_is_a_function_of_the_key():
    key = jax.random.PRNGKey(0)
    ids_keep, mask, ids_restore = losses.random_masking(key, 4, 16, 0.75)
    assert ids_keep.shape == (4, 4) and mask.shape == (4, 16)
    np.testing.assert_array_equal(np.asarray(mask).sum(1), [12, 12, 12, 12])
    # The kept ids are exactly the unmasked patches; ids_restore inverts the shuffle.
    for n in range(4):
        assert sorted(np.asarray(ids_keep[n])) == sorted(np.flatnonzero(np.asarray(mask[n]) == 0))
        shuffle = np.argsort(np.asarray(ids_restore[n]))
        np.testing.assert_array_equal(shuffle[:4], np.asarray(ids_keep[n]))
    again = losses.random_masking(key, 4, 16, 0.75)
    np.testing.assert_array_equal(np.asarray(again[1]), np.asarray(mask))
    other = losses.random_masking(jax.random.PRNGKey(1), 4, 16, 0.75)[1]
    assert np.any(np.asarray(other) != np.asarray(mask))
    # Different examples get different masks.
    assert len({tuple(np.asarray(m)) for m in mask}) > 1
    with pytest.raises(ValueError, match="mask_ratio"):
        losses.random_masking(key, 1, 4, 1.0)
