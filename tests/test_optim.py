"""Optimizers and schedules from the config (jssl.optim): linear LR scaling with the batch,
warm-up + cosine, the weight-decay / LARS masks, clipping, against hand computations."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from jssl import config as jc
from jssl import optim


def _opt(**fields):
    o = ml_collections.ConfigDict(jc.base_config().optimizer.to_dict())
    for k, v in fields.items():
        o[k] = v
    return o


def test_schedule_scales_with_batch_and_warms_up_then_decays():
    o = _opt(lr=0.3, warmup_steps=10, schedule="cosine")
    s = optim.learning_rate_schedule(o, total_steps=110, batch_size=512)
    peak = 0.3 * 512 / 256
    np.testing.assert_allclose([s(0), s(5), s(10)], [0.0, peak / 2, peak], rtol=1e-6)
    # Cosine over the 100 steps after the warm-up: half way is half the peak, the end is 0.
    np.testing.assert_allclose([s(60), s(110)], [peak / 2, 0.0], rtol=1e-5, atol=1e-7)
    flat = optim.learning_rate_schedule(
        _opt(lr=0.3, scale_lr_with_batch=False, schedule="constant"),
        total_steps=100,
        batch_size=512,
    )
    assert float(flat(0)) == float(flat(99)) == pytest.approx(0.3)


def test_decay_mask_is_weights_only():
    params = {
        "conv": {"kernel": jnp.ones((3, 3, 2, 4)), "bias": jnp.ones(4)},
        "bn": {"scale": jnp.ones(4), "bias": jnp.ones(4)},
        "dense": {"kernel": jnp.ones((4, 2))},
    }
    mask = optim.decay_mask(params)
    assert mask == {
        "conv": {"kernel": True, "bias": False},
        "bn": {"scale": False, "bias": False},
        "dense": {"kernel": True},
    }


def _step(o, params, grads, total_steps=10, batch_size=256):
    tx, _ = optim.build_optimizer(o, total_steps=total_steps, batch_size=batch_size)
    updates, _ = tx.update(grads, tx.init(params), params)
    return jax.tree_util.tree_map(np.asarray, updates)


def test_sgd_decays_weights_but_not_biases_when_masked():
    params = {"w": jnp.full((2, 2), 2.0), "b": jnp.full((2,), 2.0)}
    grads = {"w": jnp.zeros((2, 2)), "b": jnp.zeros((2,))}
    o = _opt(
        name="sgd",
        lr=0.1,
        weight_decay=0.5,
        momentum=0.9,
        schedule="constant",
        scale_lr_with_batch=False,
    )
    up = _step(o, params, grads)
    np.testing.assert_allclose(up["w"], -0.1 * 0.5 * 2.0)  # -lr * wd * w
    np.testing.assert_allclose(up["b"], 0.0)  # excluded from weight decay
    o.exclude_bias_and_norm = False
    np.testing.assert_allclose(_step(o, params, grads)["b"], -0.1 * 0.5 * 2.0)


def test_lars_trust_ratio_on_weights_only():
    """LARS (You et al. 2017): the update of a weight is lr * eta * ||w|| / ||g + wd w||
    times (g + wd w); biases get plain momentum SGD."""
    w, g = np.array([[3.0, 4.0]]), np.array([[0.6, 0.8]])  # ||w|| = 5, ||g|| = 1
    params = {"w": jnp.asarray(w), "b": jnp.asarray([1.0])}
    grads = {"w": jnp.asarray(g), "b": jnp.asarray([0.5])}
    o = _opt(
        name="lars",
        lr=0.2,
        weight_decay=0.0,
        momentum=0.9,
        trust_coefficient=0.02,
        schedule="constant",
        scale_lr_with_batch=False,
    )
    up = _step(o, params, grads)
    np.testing.assert_allclose(up["w"], -0.2 * 0.02 * 5.0 / 1.0 * g, rtol=1e-5)
    np.testing.assert_allclose(up["b"], [-0.2 * 0.5], rtol=1e-6)


def test_adamw_and_clipping():
    params = {"w": jnp.ones((2,))}
    grads = {"w": jnp.asarray([30.0, 40.0])}  # norm 50
    o = _opt(
        name="adamw", lr=0.01, weight_decay=0.0, schedule="constant", scale_lr_with_batch=False
    )
    np.testing.assert_allclose(_step(o, params, grads)["w"], [-0.01, -0.01], rtol=1e-4)
    # Clipping happens before the optimizer: SGD sees the gradient scaled to norm 5.
    o = _opt(
        name="sgd",
        lr=1.0,
        weight_decay=0.0,
        momentum=0.0,
        schedule="constant",
        scale_lr_with_batch=False,
        clip_grad_norm=5.0,
    )
    np.testing.assert_allclose(_step(o, params, grads)["w"], [-3.0, -4.0], rtol=1e-5)
    with pytest.raises(ValueError, match="config.optimizer.name: unknown optimizer 'adam'"):
        optim.build_optimizer(_opt(name="adam"), total_steps=10, batch_size=256)


def test_adamw_second_moment_decay_is_the_configs():
    """optimizer.b2 reaches AdamW: after two steps of gradients g1, g2 the bias-corrected
    second moment is ((1 - b2) (b2 g1^2 + g2^2)) / (1 - b2^2); with b2 = 0.5 and g1 = 2,
    g2 = 0 that is 4/3, so the second update is -lr * m_hat / sqrt(4/3) with
    m_hat = 0.9 * 0.1 * 2 / (1 - 0.81)."""
    o = _opt(
        name="adamw", lr=1.0, weight_decay=0.0, schedule="constant", scale_lr_with_batch=False,
        b2=0.5,
    )  # fmt: skip
    tx, _ = optim.build_optimizer(o, total_steps=10, batch_size=256)
    params = {"w": jnp.zeros((1,))}
    state = tx.init(params)
    _, state = tx.update({"w": jnp.asarray([2.0])}, state, params)
    update, _ = tx.update({"w": jnp.asarray([0.0])}, state, params)
    m_hat = 0.9 * 0.1 * 2.0 / (1 - 0.9**2)
    np.testing.assert_allclose(update["w"], [-m_hat / np.sqrt(4.0 / 3.0)], rtol=1e-5)


def test_optax_chain_is_what_the_config_asks():
    tx, schedule = optim.build_optimizer(_opt(name="sgd"), total_steps=10, batch_size=256)
    assert isinstance(tx, optax.GradientTransformation) and callable(schedule)
