"""Every zoo config trains: a few sharded steps per config, and the method state
(momentum targets, queues, prototypes, centres) behaves as the papers say."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jssl import config as jc
from jssl import losses, methods, parallel
from jssl.methods import pretrain
from tests.test_config import CONFIGS, load


def _batch(config, n=None, seed=0):
    n = n or config.batch_size
    rng = np.random.default_rng(seed)
    size = config.data.image_size
    images = rng.integers(0, 256, (n, size, size, 1), dtype=np.uint8)
    return {"image": images, "label": rng.integers(0, 10, (n,)).astype(np.int32)}


def _run(config, steps, devices=None, batch_seed=0):
    """`steps` jitted steps over a mesh of `devices`; (states, metrics) after each."""
    jc.validate(config, len(devices or jax.devices()))
    mesh = parallel.make_mesh(devices)
    repl, data = parallel.replicated(mesh), parallel.batch_sharding(mesh)
    method = methods.build(config, methods.DataInfo(10, (config.data.image_size,) * 2 + (1,)), mesh)
    state = jax.jit(method.init, out_shardings=repl)(jax.random.PRNGKey(config.seed))
    step = jax.jit(method.train_step, in_shardings=(repl, data), out_shardings=(repl, repl))
    states, logs = [state], []
    for i in range(steps):
        batch = jax.device_put(_batch(config, seed=batch_seed + i), data)
        state, metrics = step(state, batch)
        states.append(state)
        logs.append(jax.device_get(metrics))
    assert step._cache_size() == 1  # no recompilation after the first step
    return states, logs


def _changed(a, b):
    return any(
        not np.array_equal(x, y)
        for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))
    )


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_trains(name):
    """Three steps of the smoke preset on 8 devices: finite loss, parameters move."""
    c = load(name, "smoke")
    states, logs = _run(c, 3)
    assert all(np.isfinite(m["loss"]) for m in logs), [m["loss"] for m in logs]
    assert all(m["grad_norm"] > 0 for m in logs)
    assert _changed(states[0].params, states[-1].params)
    assert int(states[-1].step) == 3
    extras = states[-1].extras
    if c.ema.base_momentum:
        assert _changed(states[0].extras["target"]["params"], extras["target"]["params"])
    if c.queue_size:
        per_step = {"moco": 2, "nnclr": 1}[c.loss.name] * c.batch_size
        assert int(extras["queue_ptr"]) == (3 * per_step) % c.queue_size


def test_ema_schedule():
    tau = [float(pretrain.ema_momentum(jnp.asarray(s), 100, 0.99, 1.0)) for s in (0, 50, 100)]
    np.testing.assert_allclose(tau, [0.99, 0.995, 1.0], rtol=0, atol=1e-7)


def test_target_is_ema_of_online_and_gets_no_gradient():
    """After a step, target = tau * old target + (1 - tau) * new online, exactly."""
    c = load("byol", "smoke")
    states, logs = _run(c, 2)
    s0, s1, s2 = states
    tau = logs[1]["ema_momentum"]
    expect = jax.tree_util.tree_map(
        lambda t, o: tau * t + (1 - tau) * o, s1.extras["target"]["params"], s2.params
    )
    for a, b in zip(
        jax.tree_util.tree_leaves(expect), jax.tree_util.tree_leaves(s2.extras["target"]["params"])
    ):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    # The target starts as a copy of the online network.
    for a, b in zip(
        jax.tree_util.tree_leaves(s0.params),
        jax.tree_util.tree_leaves(s0.extras["target"]["params"]),
    ):
        np.testing.assert_array_equal(a, b)


def test_moco_queue_holds_the_latest_normalised_keys():
    c = load("mocov2", "smoke")
    states, _ = _run(c, 1)
    queue0, queue1 = states[0].extras["queue"], states[1].extras["queue"]
    n = 2 * c.batch_size
    np.testing.assert_allclose(np.linalg.norm(queue1, axis=1), 1.0, rtol=1e-5)
    # The first 2N rows were overwritten, the rest kept.
    assert not np.allclose(queue0[:n], queue1[:n])
    np.testing.assert_array_equal(queue0[n:], queue1[n:])
    assert int(states[1].extras["queue_ptr"]) == n % c.queue_size


def test_swav_prototypes_stay_unit_norm_and_freeze():
    c = load("swav", "smoke")
    c.model.freeze_prototypes_steps = 1
    states, _ = _run(c, 2)
    for s in states:
        w = np.asarray(s.params["prototypes"]["kernel"])
        np.testing.assert_allclose(np.linalg.norm(w, axis=0), 1.0, rtol=1e-5)
    # Frozen for the first step: only rounding of the renormalisation moves them.
    np.testing.assert_allclose(
        states[0].params["prototypes"]["kernel"],
        states[1].params["prototypes"]["kernel"],
        rtol=1e-6,
        atol=1e-7,
    )
    assert _changed(states[1].params["prototypes"], states[2].params["prototypes"])


def _step_inputs(config, state):
    """The method, and the step's inputs (augmented views) of `_run`'s first batch."""
    method = methods.build(
        config, methods.DataInfo(10, (config.data.image_size,) * 2 + (1,)), parallel.make_mesh()
    )
    return method, jax.jit(method.make_inputs)(state, _batch(config, seed=0))


def test_dino_center_is_ema_of_teacher_logits():
    """centre' = m centre + (1 - m) mean of the teacher's scores of the large crops, the
    teacher being the momentum network before the step (its scores recomputed here)."""
    c = load("dino", "smoke")
    states, _ = _run(c, 1)
    s0, s1 = states
    _, inputs = _step_inputs(c, s0)
    model = pretrain.build_model(c)
    teacher = jax.jit(
        lambda v, x: model.apply(v, x, train=True, predict=False, mutable=["batch_stats"])[0]["s"]
    )
    scores = [teacher(s0.extras["target"], x) for x in inputs["views"][:2]]
    m = c.loss.center_momentum
    assert m < 1 and np.abs(np.asarray(s1.extras["center"])).max() > 0
    want = m * np.asarray(s0.extras["center"]) + (1 - m) * np.mean(
        np.concatenate(scores), axis=0, keepdims=True
    )
    np.testing.assert_allclose(s1.extras["center"], want, rtol=1e-5, atol=1e-6)


def test_nnclr_positives_are_nearest_neighbours_and_z1_is_enqueued():
    c = load("nnclr", "smoke")
    states, _ = _run(c, 1)
    s0, s1 = states
    queue0 = np.asarray(s0.extras["queue"])
    np.testing.assert_allclose(np.linalg.norm(queue0, axis=1), 1.0, rtol=1e-5)
    _, inputs = _step_inputs(c, s0)
    model = pretrain.build_model(c)
    project = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"])[0]["z"])
    z1 = np.asarray(
        project({"params": s0.params, "batch_stats": s0.batch_stats}, inputs["views"][0]),
        np.float64,
    )
    z1n = z1 / np.linalg.norm(z1, axis=1, keepdims=True)
    # The positives: each projection's most cosine-similar row of the old queue.
    np.testing.assert_array_equal(
        np.asarray(losses.nearest_neighbour(z1, queue0)), queue0[np.argmax(z1n @ queue0.T, axis=1)]
    )
    # The first view's normalised projections overwrote the oldest rows; the rest is kept.
    n = c.batch_size
    np.testing.assert_allclose(s1.extras["queue"][:n], z1n, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(s1.extras["queue"][n:], queue0[n:])
    assert int(s1.extras["queue_ptr"]) == n % c.queue_size


@pytest.mark.parametrize("name", ["mocov2", "dino", "jigsaw_pp"])
def test_one_device_equals_eight(name):
    """Global-batch semantics with method state: the same losses on 1 and on 8 devices."""
    c = load(name, "smoke")
    _, logs1 = _run(c, 2, devices=jax.devices()[:1])
    _, logs8 = _run(c, 2)
    np.testing.assert_allclose(
        [m["loss"] for m in logs1], [m["loss"] for m in logs8], rtol=2e-4, atol=1e-5
    )


def test_missing_method_state_is_a_config_error():
    c = load("byol", "smoke")
    c.ema.base_momentum = 0.0
    with pytest.raises(
        jc.ConfigError, match="config.ema.base_momentum: loss 'byol' needs a target"
    ):
        methods.build(c, methods.DataInfo(10, (16, 16, 1)))


def test_puzzle_tile_too_small_is_a_config_error():
    c = load("jigsaw", "smoke")
    c.model.backbone = "resnet18"
    c.puzzle.input_size = 16
    with pytest.raises(jc.ConfigError, match="config.puzzle.tile_size"):
        methods.build(c, methods.DataInfo(10, (16, 16, 1)))


def test_supcon_uses_labels():
    """SupCon's loss depends on the labels of the batch (positives are same-label samples)."""
    c = load("supcon", "smoke")
    mesh = parallel.make_mesh()
    repl, data = parallel.replicated(mesh), parallel.batch_sharding(mesh)
    method = methods.build(c, methods.DataInfo(10, (16, 16, 1)), mesh)
    state = jax.jit(method.init, out_shardings=repl)(jax.random.PRNGKey(0))
    # The step of test_every_config_trains (same jit, same shardings): compiled once.
    step = jax.jit(method.train_step, in_shardings=(repl, data), out_shardings=(repl, repl))
    batch = _batch(c)
    _, m1 = step(state, jax.device_put(batch, data))
    _, m2 = step(state, jax.device_put(dict(batch, label=np.zeros_like(batch["label"])), data))
    assert not np.isclose(float(m1["loss"]), float(m2["loss"]))
