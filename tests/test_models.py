"""Backbones and heads: shapes, stems, BatchNorm modes, bfloat16, tapped vs XLA convolutions."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.sharding import NamedSharding, PartitionSpec as P

from jssl import models
from jssl.models.conv import conv2d


def init_apply(module, x, train=False):
    variables = module.init(jax.random.PRNGKey(0), x, train=False)
    out = module.apply(variables, x, train=train, mutable=["batch_stats"] if train else False)
    return variables, out


@pytest.mark.parametrize("name,filters,features", [
    ("resnet18", 4, 32), ("resnet50", 4, 128), ("convnet", 8, 32)])
def test_feature_widths(name, filters, features):
    net = models.build_backbone(name, num_filters=filters, conv_impl="xla")
    _, out = init_apply(net, jnp.ones((2, 32, 32, 3)))
    assert out.shape == (2, features) and out.dtype == jnp.float32
    assert net.num_features == features


def test_standard_widths():
    assert models.build_backbone("resnet18").num_features == 512
    assert models.build_backbone("resnet50").num_features == 2048


def _shape_before_pool(stem, size):
    net = models.build_backbone("resnet18", num_filters=4, stem=stem, conv_impl="xla")
    x = jnp.ones((1, size, size, 3))
    variables = net.init(jax.random.PRNGKey(0), x, train=False)
    _, state = net.apply(variables, x, train=False, capture_intermediates=True,
                         mutable=["intermediates"])
    last_block = state["intermediates"]["BasicBlock_7"]["__call__"][0]
    return last_block.shape


def test_stems():
    assert _shape_before_pool("cifar", 32) == (1, 4, 4, 32)  # 32 / 8
    assert _shape_before_pool("imagenet", 64) == (1, 2, 2, 32)  # 64 / 32
    with pytest.raises(ValueError, match="stem"):
        init_apply(models.build_backbone("resnet18", stem="tiny", num_filters=4), jnp.ones((1, 8, 8, 3)))


def test_batchnorm_statistics_change_only_in_train_mode():
    net = models.build_backbone("resnet18", num_filters=4, conv_impl="xla")
    x = jax.random.normal(jax.random.PRNGKey(1), (4, 16, 16, 3)) * 3 + 1
    variables = net.init(jax.random.PRNGKey(0), x, train=False)
    _, updates = net.apply(variables, x, train=True, mutable=["batch_stats"])
    changed = jax.tree_util.tree_map(lambda a, b: bool(jnp.any(a != b)),
                                     variables["batch_stats"], updates["batch_stats"])
    assert all(jax.tree_util.tree_leaves(changed))
    # Eval mode uses the running statistics: the output does not depend on the batch.
    one = net.apply(variables, x[:1], train=False)
    four = net.apply(variables, x, train=False)
    np.testing.assert_allclose(one, four[:1], rtol=1e-5, atol=1e-6)


def test_bfloat16_compute_float32_params_and_outputs():
    net = models.build_backbone("resnet18", num_filters=4, dtype=jnp.bfloat16, conv_impl="xla")
    variables, out = init_apply(net, jnp.ones((2, 16, 16, 3)))
    assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(variables["params"]))
    assert out.dtype == jnp.float32
    proj = models.Projector(hidden_dims=(16,), out_dim=8, dtype=jnp.bfloat16)
    pv = proj.init(jax.random.PRNGKey(0), out, train=False)
    assert proj.apply(pv, out, train=False).dtype == jnp.float32


def test_projector_layout():
    proj = models.Projector(hidden_dims=(32, 16), out_dim=8, use_bn=True)
    params = proj.init(jax.random.PRNGKey(0), jnp.ones((4, 10)), train=False)["params"]
    assert params["Dense_0"]["kernel"].shape == (10, 32) and "bias" not in params["Dense_0"]
    assert params["Dense_1"]["kernel"].shape == (32, 16)
    assert params["Dense_2"]["kernel"].shape == (16, 8) and "bias" in params["Dense_2"]
    assert set(params) == {"Dense_0", "Dense_1", "Dense_2", "BatchNorm_0", "BatchNorm_1"}
    plain = models.Projector(hidden_dims=(32,), out_dim=8, use_bn=False)
    params = plain.init(jax.random.PRNGKey(0), jnp.ones((4, 10)), train=False)["params"]
    assert set(params) == {"Dense_0", "Dense_1"} and "bias" in params["Dense_0"]


def test_unknown_backbone():
    with pytest.raises(ValueError, match="unknown backbone 'resnet19'; choose one of convnet, resnet18"):
        models.build_backbone("resnet19")


# --- The tapped convolution against XLA's ---------------------------------------------


@pytest.mark.parametrize("n,size,cin,cout,k,stride,pad", [
    (2, 9, 3, 5, 3, 1, 1), (2, 10, 6, 8, 3, 2, 1), (2, 11, 4, 6, 1, 2, 0), (1, 17, 3, 4, 7, 2, 3),
    (3, 8, 4, 4, 1, 1, 0)])
def test_tapped_conv_matches_xla(n, size, cin, cout, k, stride, pad):
    x = jax.random.normal(jax.random.PRNGKey(0), (n, size, size, cin))
    w = jax.random.normal(jax.random.PRNGKey(1), (k, k, cin, cout))

    def xla(x, w):
        return lax.conv_general_dilated(x, w, (stride, stride), ((pad, pad), (pad, pad)),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))

    def loss(f):
        return lambda x, w: jnp.sum(jnp.sin(f(x, w)))

    np.testing.assert_allclose(conv2d(x, w, stride, pad), xla(x, w), rtol=1e-5, atol=1e-5)
    got = jax.jit(jax.grad(loss(lambda x, w: conv2d(x, w, stride, pad)), (0, 1)))(x, w)
    want = jax.grad(loss(xla), (0, 1))(x, w)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(b))))


def test_tapped_backbone_equals_xla_backbone_sharded():
    x = jax.random.normal(jax.random.PRNGKey(2), (8, 16, 16, 3))
    nets = {impl: models.build_backbone("resnet18", num_filters=4, conv_impl=impl)
            for impl in ("xla", "tapped")}
    variables = nets["xla"].init(jax.random.PRNGKey(0), x, train=False)
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    xs = jax.device_put(x, NamedSharding(mesh, P("data")))

    def loss(net):
        def f(params):
            out, _ = net.apply({"params": params, "batch_stats": variables["batch_stats"]}, xs,
                               train=True, mutable=["batch_stats"])
            return jnp.sum(out ** 2)
        return jax.jit(jax.value_and_grad(f))

    (la, ga), (lb, gb) = loss(nets["xla"])(variables["params"]), loss(nets["tapped"])(variables["params"])
    np.testing.assert_allclose(la, lb, rtol=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves(ga), jax.tree_util.tree_leaves(gb)):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)


def test_tapped_conv_bfloat16():
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 4)).astype(jnp.bfloat16)
    w = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 4, 4)).astype(jnp.bfloat16)
    dx, dw = jax.grad(lambda x, w: jnp.sum(conv2d(x, w, 1, 1).astype(jnp.float32)), (0, 1))(x, w)
    assert dx.dtype == dw.dtype == jnp.bfloat16
    ref = jax.grad(lambda w: jnp.sum(conv2d(x.astype(jnp.float32), w, 1, 1)))(w.astype(jnp.float32))
    np.testing.assert_allclose(dw.astype(jnp.float32), ref, rtol=5e-2, atol=5e-2)
