"""The tapped convolution (jssl.models.conv) against XLA's convolution and its autodiff."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jssl.models.conv import Conv, conv2d


def reference(x, w, stride, padding):
    if isinstance(stride, int):
        stride = (stride, stride)
    if isinstance(padding, int):
        padding = ((padding, padding), (padding, padding))
    return lax.conv_general_dilated(
        x, w, stride, padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def _normal(seed, shape):
    """Gaussian test data from NumPy (an eager jax.random draw compiles a program per shape)."""
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def value_and_grads(fn, x, w, r):
    """f(x, w) and the gradients of sum(f(x, w) * r): a linear loss, so dx and dW are the
    transposed convolutions of r themselves."""
    return jax.jit(
        lambda x, w: (fn(x, w), *jax.grad(lambda x, w: jnp.sum(fn(x, w) * r), (0, 1))(x, w))
    )(x, w)


def assert_close(got, want, rtol=1e-5):
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * float(jnp.max(jnp.abs(want))))


# (N, H, W, Cin, Cout, kernel, stride, padding): ResNet's 3x3/1 and 3x3/2 with padding 1,
# 1x1/2 shortcuts, the 7x7/2 ImageNet stem, odd and non-square sizes, 'SAME', asymmetric pads.
CASES = [
    (2, 9, 9, 3, 5, 3, 1, 1),
    (2, 10, 10, 6, 8, 3, 2, 1),
    (2, 11, 11, 4, 6, 1, 2, 0),
    (3, 8, 8, 4, 4, 1, 1, 0),
    (1, 17, 17, 3, 4, 7, 2, 3),
    (2, 7, 9, 3, 4, 3, 2, "SAME"),
    (2, 9, 7, 3, 4, 3, (1, 2), ((0, 1), (2, 1))),
]


@pytest.mark.parametrize("n,h,w,cin,cout,k,stride,padding", CASES)
def test_forward_and_gradients_equal_xla(n, h, w, cin, cout, k, stride, padding):
    seed = k * 10 + cin
    x = _normal(seed, (n, h, w, cin))
    wt = _normal(seed + 1, (k, k, cin, cout))
    pads = (
        padding
        if not isinstance(padding, str)
        else lax.padtype_to_pads((h, w), (k, k), (stride, stride), padding)
    )
    r = _normal(seed + 2, reference(x, wt, stride, pads).shape)
    got = value_and_grads(lambda x, w: conv2d(x, w, stride=stride, padding=padding), x, wt, r)
    want = value_and_grads(lambda x, w: reference(x, w, stride, pads), x, wt, r)
    for name, a, b in zip(("y", "dx", "dw"), got, want):
        assert a.shape == b.shape, name
        assert_close(a, b)


def test_gradients_with_batch_sharded_over_devices():
    assert jax.device_count() == 8
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    x = _normal(0, (16, 8, 8, 4))
    w = _normal(1, (3, 3, 4, 6))
    r = _normal(2, (16, 4, 4, 6))
    xs, rs = (jax.device_put(a, NamedSharding(mesh, P("data"))) for a in (x, r))
    got = value_and_grads(lambda x, w: conv2d(x, w, stride=2, padding=1), xs, w, rs)
    want = value_and_grads(lambda x, w: reference(x, w, 2, 1), x, w, r)
    assert got[0].sharding.spec == P("data")
    for a, b in zip(got, want):
        assert_close(a, b)


def test_weight_gradient_uses_the_custom_rule():
    x, w = jnp.ones((2, 6, 6, 3)), jnp.ones((3, 3, 3, 4))
    jaxpr = str(jax.make_jaxpr(jax.grad(lambda w: jnp.sum(conv2d(x, w, padding=1))))(w))
    assert "optimization_barrier" in jaxpr  # the tapped weight gradient, not XLA's
    xla = str(jax.make_jaxpr(jax.grad(lambda w: jnp.sum(reference(x, w, 1, 1))))(w))
    assert "optimization_barrier" not in xla


def test_bfloat16_forward_and_backward():
    x = _normal(0, (2, 8, 8, 8))
    w = _normal(1, (3, 3, 8, 8)) * 0.2
    r = _normal(2, (2, 8, 8, 8))
    bf = jnp.bfloat16
    got = value_and_grads(
        lambda x, w: conv2d(x, w, padding=1).astype(jnp.float32), x.astype(bf), w.astype(bf), r
    )
    want = value_and_grads(lambda x, w: reference(x, w, 1, 1), x, w, r)
    assert got[0].dtype == jnp.float32 and got[1].dtype == got[2].dtype == bf
    for a, b in zip(got, want):
        assert np.all(np.isfinite(np.asarray(a, np.float32)))
        assert_close(np.asarray(a, np.float32), b, rtol=3e-2)


def test_module_is_a_drop_in_for_nn_conv():
    x = _normal(0, (2, 9, 9, 3))
    for kw in (dict(), dict(strides=2, padding=1, use_bias=False), dict(padding="VALID")):
        ours, flax_conv = Conv(5, (3, 3), **kw), nn.Conv(5, (3, 3), **kw)
        p_ours = ours.init(jax.random.PRNGKey(3), x)
        p_flax = flax_conv.init(jax.random.PRNGKey(3), x)
        assert jax.tree_util.tree_structure(p_ours) == jax.tree_util.tree_structure(p_flax)
        for a, b in zip(jax.tree_util.tree_leaves(p_ours), jax.tree_util.tree_leaves(p_flax)):
            np.testing.assert_array_equal(a, b)  # same names, shapes and initial values
        assert_close(ours.apply(p_ours, x), flax_conv.apply(p_flax, x))


def test_forward_mode_twin_is_the_same_convolution():
    """Conv(custom_vjp=False) (models.conv_module(forward_mode=True)): bit-identical values
    and gradients to the tapped module, and jax.jvp works through it (the tapped module's
    custom reverse rule refuses forward mode)."""
    x = _normal(0, (2, 9, 9, 3))
    tapped, twin = Conv(5, (3, 3), strides=2), Conv(5, (3, 3), strides=2, custom_vjp=False)
    params = tapped.init(jax.random.PRNGKey(3), x)
    np.testing.assert_array_equal(tapped.apply(params, x), twin.apply(params, x))
    tangent = jax.tree_util.tree_map(lambda p: jnp.ones_like(p), params)
    _, dot = jax.jvp(lambda p: twin.apply(p, x), (params,), (tangent,))
    _, want = jax.jvp(lambda p: nn.Conv(5, (3, 3), strides=2).apply(p, x), (params,), (tangent,))
    assert_close(dot, want)
    with pytest.raises(TypeError, match="forward-mode"):
        jax.jvp(lambda p: tapped.apply(p, x), (params,), (tangent,))
    g_tapped = jax.grad(lambda p: jnp.sum(tapped.apply(p, x) ** 2))(params)
    g_twin = jax.grad(lambda p: jnp.sum(twin.apply(p, x) ** 2))(params)
    for a, b in zip(jax.tree_util.tree_leaves(g_tapped), jax.tree_util.tree_leaves(g_twin)):
        assert_close(a, b)


def test_module_dtype_and_bad_arguments():
    x = jnp.ones((1, 6, 6, 3))
    conv = Conv(4, (3, 3), dtype=jnp.bfloat16)
    params = conv.init(jax.random.PRNGKey(0), x)
    assert params["params"]["kernel"].dtype == jnp.float32
    assert conv.apply(params, x).dtype == jnp.bfloat16
    with pytest.raises(ValueError, match="padding"):
        conv2d(x, jnp.ones((3, 3, 3, 4)), padding=-1)
    with pytest.raises(ValueError, match="stride"):
        conv2d(x, jnp.ones((3, 3, 3, 4)), stride=0)
    with pytest.raises(ValueError, match="w \\(kh, kw, C, D\\)"):
        conv2d(x, jnp.ones((3, 3, 2, 4)))
