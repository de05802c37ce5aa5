"""Backbones and heads: widths, stems, BatchNorm modes, bfloat16, init, tapped vs XLA convs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jssl import models
from jssl.models.conv import Conv
from jssl.models.resnet import conv_init


def init(net, x):
    # models.init_variables: the non-partitionable threefry, which compiles the conv
    # kernels' draws about 10x faster on CPU (see there).
    return jax.jit(lambda x: models.init_variables(net, jax.random.PRNGKey(0), x, train=False))(x)


def shapes_of(net, x):
    """Output and per-module intermediate shapes, traced without compiling."""

    def run(x):
        variables = net.init(jax.random.PRNGKey(0), x, train=False)
        return net.apply(
            variables, x, train=False, capture_intermediates=True, mutable=["intermediates"]
        )

    return jax.eval_shape(run, x)


@pytest.mark.parametrize(
    "name,features", [("resnet18_tiny", 64), ("resnet50_tiny", 128), ("convnet_tiny", 32)]
)
def test_feature_widths_of_tiny_backbones(name, features):
    net = models.build_backbone(name, conv_impl="xla")
    out, _ = shapes_of(net, jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32))
    assert out.shape == (2, features) and out.dtype == jnp.float32
    assert net.num_features == models.num_features(name) == features


def test_standard_widths():
    assert models.num_features("resnet18") == models.num_features("resnet34") == 512
    assert models.num_features("resnet50") == 2048
    assert models.num_features("convnet") == 128
    assert models.num_features("resnet18", num_filters=16) == 128


def test_stems():
    def blocks(stem, size):
        net = models.build_backbone("resnet18_tiny", stem=stem, conv_impl="xla")
        _, state = shapes_of(net, jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32))
        inter = state["intermediates"]
        return [inter[f"BasicBlock_{i}"]["__call__"][0].shape for i in range(4)]

    # CIFAR stem keeps the resolution: 32 -> 32 (first stage) -> 4 x 4 before the pool.
    assert blocks("cifar", 32) == [(1, 32, 32, 8), (1, 16, 16, 16), (1, 8, 8, 32), (1, 4, 4, 64)]
    # ImageNet stem (7x7/2 conv, 3x3/2 max-pool) divides by 4: 64 -> 16, 2 x 2 at the end.
    assert blocks("imagenet", 64) == [(1, 16, 16, 8), (1, 8, 8, 16), (1, 4, 4, 32), (1, 2, 2, 64)]
    params = init(
        models.build_backbone("resnet18_tiny", stem="imagenet", conv_impl="xla"),
        jnp.ones((1, 16, 16, 3)),
    )["params"]
    assert params["Conv_0"]["kernel"].shape == (7, 7, 3, 8)


def test_batchnorm_updates_running_stats_only_in_train_mode():
    net = models.build_backbone("resnet18_tiny", conv_impl="xla")
    x = np.random.default_rng(1).standard_normal((4, 8, 8, 3)).astype(np.float32) * 3 + 1
    variables = init(net, x)
    train = jax.jit(
        lambda v, x: net.apply(
            v, x, train=True, capture_intermediates=True, mutable=["batch_stats", "intermediates"]
        )
    )
    _, updates = train(variables, x)
    old, new = variables["batch_stats"], updates["batch_stats"]
    changed = jax.tree_util.tree_map(lambda a, b: bool(jnp.any(a != b)), old, new)
    assert all(jax.tree_util.tree_leaves(changed))
    # PyTorch's momentum 0.1: running = 0.9 running + 0.1 batch (stem BN, from its conv output).
    stem_out = updates["intermediates"]["Conv_0"]["__call__"][0]
    np.testing.assert_allclose(
        new["BatchNorm_0"]["mean"], 0.1 * stem_out.mean((0, 1, 2)), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(
        new["BatchNorm_0"]["var"], 0.9 + 0.1 * stem_out.var((0, 1, 2)), rtol=1e-5
    )
    # Eval mode: stats unchanged even when mutable, and outputs independent of the batch.
    evaluate = jax.jit(lambda v, x: net.apply(v, x, train=False, mutable=["batch_stats"]))
    four, same = evaluate(variables, x)
    for a, b in zip(jax.tree_util.tree_leaves(same), jax.tree_util.tree_leaves(old)):
        np.testing.assert_array_equal(a, b)
    one, _ = evaluate(variables, x[:1])
    np.testing.assert_allclose(one, four[:1], rtol=1e-5, atol=1e-6)


def test_bfloat16_compute_float32_params_and_outputs():
    net = models.build_backbone("resnet18_tiny", dtype=jnp.bfloat16, conv_impl="tapped")
    out, state = shapes_of(net, jax.ShapeDtypeStruct((2, 16, 16, 3), jnp.float32))
    assert out.dtype == jnp.float32
    assert state["intermediates"]["Conv_0"]["__call__"][0].dtype == jnp.bfloat16
    params = jax.eval_shape(
        lambda x: net.init(jax.random.PRNGKey(0), x, train=False),
        jax.ShapeDtypeStruct((2, 16, 16, 3), jnp.float32),
    )["params"]
    assert {p.dtype for p in jax.tree_util.tree_leaves(params)} == {jnp.dtype(jnp.float32)}
    proj = models.Projector(hidden_dims=(16,), out_dim=8, dtype=jnp.bfloat16)
    z = jax.eval_shape(
        lambda h: proj.init_with_output(jax.random.PRNGKey(0), h, train=False)[0], out
    )
    assert z.dtype == jnp.float32


def test_kaiming_fan_out_init_and_zero_init_residual():
    w = conv_init(jax.random.PRNGKey(0), (3, 3, 64, 128))
    np.testing.assert_allclose(float(jnp.std(w)), np.sqrt(2.0 / (3 * 3 * 128)), rtol=0.03)
    assert float(jnp.max(jnp.abs(w))) > 3.5 * np.sqrt(2.0 / (3 * 3 * 128))  # not truncated
    x = jnp.ones((1, 8, 8, 3))
    for zero in (False, True):
        net = models.build_backbone("resnet18_tiny", zero_init_residual=zero, conv_impl="xla")
        params = init(net, x)["params"]
        last_bn = params["BasicBlock_0"]["BatchNorm_1"]["scale"]
        assert bool(jnp.all(last_bn == (0.0 if zero else 1.0)))
        assert bool(jnp.all(params["BasicBlock_0"]["BatchNorm_0"]["scale"] == 1.0))


def test_projector_layout_and_values():
    proj = models.Projector(hidden_dims=(32, 16), out_dim=8)
    x = np.random.default_rng(1).standard_normal((5, 10)).astype(np.float32)
    variables = proj.init(jax.random.PRNGKey(0), x, train=False)
    params = variables["params"]
    assert params["Dense_0"]["kernel"].shape == (10, 32) and "bias" not in params["Dense_0"]
    assert params["Dense_1"]["kernel"].shape == (32, 16) and "bias" not in params["Dense_1"]
    assert params["Dense_2"]["kernel"].shape == (16, 8) and "bias" in params["Dense_2"]
    assert set(params) == {"Dense_0", "Dense_1", "Dense_2", "BatchNorm_0", "BatchNorm_1"}
    # Train mode: Linear - BN (batch statistics, eps 1e-5) - ReLU per hidden layer, then Linear.
    z, _ = proj.apply(variables, x, train=True, mutable=["batch_stats"])
    h = np.asarray(x, np.float64)
    for i in range(2):
        h = h @ np.asarray(params[f"Dense_{i}"]["kernel"])
        h = np.maximum((h - h.mean(0)) / np.sqrt(h.var(0) + 1e-5), 0.0)
    want = h @ np.asarray(params["Dense_2"]["kernel"]) + np.asarray(params["Dense_2"]["bias"])
    np.testing.assert_allclose(z, want, rtol=1e-4, atol=1e-5)

    plain = models.Projector(hidden_dims=(32,), out_dim=8, use_bn=False, last_bias=False)
    p = plain.init(jax.random.PRNGKey(0), x, train=False)["params"]
    assert (
        set(p) == {"Dense_0", "Dense_1"} and "bias" in p["Dense_0"] and "bias" not in p["Dense_1"]
    )
    last = models.Projector(hidden_dims=(32,), out_dim=8, last_bn=True)
    v = last.init(jax.random.PRNGKey(0), x, train=False)
    assert set(v["params"]) == {"Dense_0", "Dense_1", "BatchNorm_0"}  # final BN has no affine
    z, _ = last.apply(v, x, train=True, mutable=["batch_stats"])
    np.testing.assert_allclose(z.mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(z.var(0), 1.0, rtol=1e-3)


def test_classifier_is_linear():
    clf = models.Classifier(num_classes=3)
    x = np.random.default_rng(1).standard_normal((4, 6)).astype(np.float32)
    params = clf.init(jax.random.PRNGKey(0), x)["params"]
    want = np.asarray(x) @ np.asarray(params["Dense_0"]["kernel"]) + np.asarray(
        params["Dense_0"]["bias"]
    )
    np.testing.assert_allclose(clf.apply({"params": params}, x), want, rtol=1e-5, atol=1e-6)


def test_bad_names_and_fields():
    with pytest.raises(ValueError, match="unknown backbone 'resnet19'; choose one of resnet18, "):
        models.build_backbone("resnet19")
    with pytest.raises(ValueError, match="has no field 'stem'"):
        models.build_backbone("convnet", stem="cifar")
    with pytest.raises(ValueError, match="conv_impl must be one of auto, xla, tapped"):
        models.build_backbone("resnet18", conv_impl="cudnn")
    with pytest.raises(ValueError, match="stem must be 'cifar' or 'imagenet'"):
        shapes_of(
            models.build_backbone("resnet18_tiny", stem="tiny"),
            jax.ShapeDtypeStruct((1, 8, 8, 3), jnp.float32),
        )


def test_conv_impl_selects_the_module():
    assert models.build_backbone("resnet18", conv_impl="tapped").conv is Conv
    assert models.build_backbone("resnet18", conv_impl="xla").conv is not Conv
    assert models.build_backbone("resnet18").conv is (
        Conv if jax.default_backend() == "cpu" else models.conv_module("xla")
    )


def test_tapped_backbone_equals_xla_backbone_sharded():
    x = np.random.default_rng(2).standard_normal((8, 16, 16, 3)).astype(np.float32)
    nets = {
        impl: models.build_backbone("resnet18_tiny", conv_impl=impl) for impl in ("xla", "tapped")
    }
    variables = init(nets["xla"], x)
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    xs = jax.device_put(x, NamedSharding(mesh, P("data")))

    def loss(net):
        def f(params):
            out, _ = net.apply(
                {"params": params, "batch_stats": variables["batch_stats"]},
                xs,
                train=True,
                mutable=["batch_stats"],
            )
            return jnp.sum(jnp.sin(out))

        return jax.jit(jax.value_and_grad(f))

    (la, ga), (lb, gb) = (loss(nets[k])(variables["params"]) for k in ("xla", "tapped"))
    np.testing.assert_allclose(la, lb, rtol=1e-5)
    leaves_a, leaves_b = jax.tree_util.tree_leaves(ga), jax.tree_util.tree_leaves(gb)
    assert len(leaves_a) == len(leaves_b) > 0
    for a, b in zip(leaves_a, leaves_b):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * float(jnp.max(jnp.abs(a))) + 1e-7)
