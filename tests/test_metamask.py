"""MetaMask: the hypergradient against finite differences (float64), the modes against each
other, BatchNorm statistics untouched by the meta passes, training, 1 vs 8 devices, exact
resume of the mask and its optimizer state, and the comparison study."""

import functools
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jssl import config as jc
from jssl import methods, parallel, train
from jssl.checkpoint import restore_host
from jssl.data import pipeline, sources
from jssl.methods import metamask
from jssl.methods.metamask import mask_hypergradient
from tests.test_config import load

LR, MOMENTUM, WD = 0.3, 0.9, 0.05


# --- The hypergradient on a small problem with pytree params and mask ----------------------


def _problem():
    """(loss_fn, params, mask, velocity): a two-layer net whose hidden units are masked, with
    a mask term that also scales a bias, so d theta'/dm is far from zero."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(6, 3)))
    y = jnp.asarray(rng.normal(size=(6, 2)))
    params = {
        "w1": jnp.asarray(rng.normal(size=(3, 4))),
        "b1": jnp.asarray(rng.normal(size=(4,))),
        "w2": jnp.asarray(rng.normal(size=(4, 2)) * 0.5),
    }
    mask = {"m": jnp.asarray(rng.normal(size=(4,))), "s": jnp.asarray(0.3)}
    velocity = jax.tree_util.tree_map(lambda p: 0.1 * jnp.ones_like(p), params)

    def loss_fn(p, m):
        h = jnp.tanh(x @ p["w1"] + m["s"] * p["b1"]) * jax.nn.sigmoid(m["m"])
        return jnp.mean(jnp.sum((h @ p["w2"] - y) ** 2, axis=1))

    return loss_fn, params, mask, velocity


def _unrolled(loss_fn, params, mask, velocity):
    """theta'(m), written independently of the library: torch SGD with momentum and wd."""
    g = jax.grad(loss_fn)(params, mask)
    return {k: params[k] - LR * (MOMENTUM * velocity[k] + g[k] + WD * params[k]) for k in params}


def _hyper(mode):
    loss_fn, params, mask, velocity = _problem()
    return jax.jit(
        functools.partial(
            mask_hypergradient, loss_fn, lr=LR, momentum=MOMENTUM, weight_decay=WD, mode=mode
        )
    )(params, mask, velocity)


def _flat(tree):
    return np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(tree)])


def test_exact_equals_finite_differences_of_the_unrolled_objective():
    with jax.enable_x64(True):
        loss_fn, params, mask, velocity = _problem()
        assert params["w1"].dtype == jnp.float64

        @jax.jit
        def unrolled_objective(m):
            return loss_fn(_unrolled(loss_fn, params, m, velocity), m)

        def objective(m):
            return float(unrolled_objective(m))

        leaves, treedef = jax.tree_util.tree_flatten(mask)

        def shifted(i, j, d):  # the mask with element j of leaf i moved by d
            ls = [np.array(x, np.float64) for x in leaves]
            ls[i].reshape(-1)[j] += d
            return jax.tree_util.tree_unflatten(treedef, [jnp.asarray(x) for x in ls])

        eps = 1e-6
        numeric = [
            (objective(shifted(i, j, eps)) - objective(shifted(i, j, -eps))) / (2 * eps)
            for i, leaf in enumerate(leaves)
            for j in range(np.size(leaf))
        ]
        exact = _hyper("exact")
        assert jax.tree_util.tree_structure(exact) == treedef
        np.testing.assert_allclose(_flat(exact), numeric, rtol=1e-6, atol=1e-9)


def test_first_order_is_the_partial_derivative_at_the_stepped_params():
    with jax.enable_x64(True):
        loss_fn, params, mask, velocity = _problem()
        new = _unrolled(loss_fn, params, mask, velocity)
        partial = jax.grad(loss_fn, argnums=1)(new, mask)
        first = _hyper("first_order")
        np.testing.assert_allclose(_flat(first), _flat(partial), rtol=1e-12, atol=1e-14)
        # The second-order term matters on this problem: exact differs from first order.
        gap = np.abs(_flat(_hyper("exact")) - _flat(first))
        assert gap.max() > 1e-2 * np.abs(_flat(first)).max()


def test_exact_on_the_network_equals_grad_through_the_unrolled_step():
    """The exact hypergradient of the real network (tapped CPU convolutions, the tangent pass
    through XLA's) equals jax.grad of the unrolled objective, reverse over reverse through
    the tapped convolutions: an independent construction of the same number."""
    c = load("metamask", "smoke")
    s = metamask.setup(c)
    state = jax.jit(functools.partial(metamask.init, s))(jax.random.PRNGKey(0))
    size = c.data.image_size
    images = np.random.default_rng(0).integers(0, 256, (8, size, size, 3), dtype=np.uint8)
    views = metamask.make_inputs(s, state, {"image": jnp.asarray(images)})
    net, _ = metamask.network_update(s, state, views)
    p = metamask.meta_problem(s, net, views)
    loss_fn, velocity = p["loss_fn"], p["velocity"]
    wd = jax.tree_util.tree_map(lambda _: p["weight_decay"], net.params)
    if not isinstance(p["weight_decay"], float):  # one value per parameter already
        wd = p["weight_decay"]
    logits = net.extras["mask_logits"] + jnp.linspace(-1.0, 1.0, net.extras["mask_logits"].size)
    opt = c.optimizer

    @jax.jit
    def reference(m):
        def unrolled(m):
            g = jax.grad(loss_fn)(net.params, m)
            return jax.tree_util.tree_map(
                lambda q, v, gi, lam: q - LR * (opt.momentum * v + gi + lam * q),
                net.params,
                velocity,
                g,
                wd,
            )

        return jax.grad(lambda m: loss_fn(unrolled(m), m))(m)

    def ours(mode, tangent):
        return jax.jit(
            lambda m: mask_hypergradient(
                loss_fn,
                net.params,
                m,
                velocity,
                lr=LR,
                momentum=opt.momentum,
                weight_decay=wd,
                mode=mode,
                tangent_loss_fn=tangent,
            )
        )(logits)

    ref = np.asarray(reference(logits))
    exact = np.asarray(ours("exact", p["tangent_loss_fn"]))
    first = np.asarray(ours("first_order", None))
    scale = np.abs(ref).max()
    np.testing.assert_allclose(exact, ref, atol=1e-4 * scale)
    assert np.abs(first - ref).max() > 1e-2 * scale  # the second-order term is not negligible
    # The tapped convolution has no forward-mode rule: without the XLA twin, jvp refuses.
    with pytest.raises(TypeError, match="forward-mode"):
        ours("exact", None)


@pytest.mark.parametrize("x64", [True, False])
def test_finite_difference_mode_is_close_to_exact(x64):
    with jax.enable_x64(x64):
        exact, fd, first = (_flat(_hyper(m)) for m in ("exact", "finite_difference", "first_order"))
        scale = np.abs(exact).max()
        fd_err = np.abs(fd - exact).max()
        assert fd_err < (1e-4 if x64 else 1e-3) * scale, (fd, exact)
        # ... and much closer to exact than the first-order approximation is.
        assert fd_err < 0.02 * np.abs(first - exact).max()


def test_jit_pytrees_weight_decay_and_velocity():
    loss_fn, params, mask, velocity = _problem()
    for mode in metamask.MODES:
        f = jax.jit(
            functools.partial(
                mask_hypergradient, loss_fn, momentum=MOMENTUM, weight_decay=WD, mode=mode
            )
        )
        got = f(params, mask, velocity, lr=jnp.float32(LR))  # a traced learning rate
        np.testing.assert_allclose(_flat(got), _flat(_hyper(mode)), rtol=2e-5, atol=1e-6)
    # Eagerly, without jit, too.
    eager = mask_hypergradient(
        loss_fn,
        params,
        mask,
        velocity,
        lr=LR,
        momentum=MOMENTUM,
        weight_decay=WD,
        mode="first_order",
    )
    np.testing.assert_allclose(_flat(eager), _flat(_hyper("first_order")), rtol=2e-5, atol=1e-6)
    # weight decay per leaf (a pytree like params) equals the scalar when all leaves agree,
    # and a different per-leaf value changes the result; so does the velocity.
    per_leaf = jax.tree_util.tree_map(lambda _: WD, params)
    f = jax.jit(functools.partial(mask_hypergradient, loss_fn, lr=LR, momentum=MOMENTUM))
    a = f(params, mask, velocity, weight_decay=per_leaf)
    np.testing.assert_allclose(_flat(a), _flat(_hyper("exact")), rtol=1e-6)
    b = f(params, mask, velocity, weight_decay={**per_leaf, "w1": 0.0})
    c = f(params, mask, jax.tree_util.tree_map(jnp.zeros_like, velocity), weight_decay=WD)
    assert not np.allclose(_flat(a), _flat(b)) and not np.allclose(_flat(a), _flat(c))
    with pytest.raises(ValueError, match="mode must be one of"):
        mask_hypergradient(
            loss_fn,
            params,
            mask,
            velocity,
            lr=LR,
            momentum=MOMENTUM,
            weight_decay=WD,
            mode="second_order",
        )


# --- Config ---------------------------------------------------------------------------------


def test_presets():
    for preset in ("", "smoke", "cifar10", "compare", "compare_smoke"):
        c = load("metamask", preset)
        jc.validate(c, num_devices=8, known=train.known_names(c))
        metamask.validate(c)
    c = load("metamask", "cifar10")
    assert (c.batch_size, c.total_steps, c.data.name) == (512, 800 * (50000 // 512), "cifar10")
    assert (c.optimizer.name, c.optimizer.lr, c.optimizer.momentum, c.optimizer.weight_decay) == (
        "sgd",
        1e-3,
        0.9,
        5e-4,
    )
    assert (c.metamask.lr, c.metamask.momentum, c.metamask.weight_decay) == (1e-3, 0.9, 5e-4)
    assert (c.loss.temperature, c.loss.contrastive_weight, c.loss.lambd) == (0.07, 10.0, 5e-3)
    assert tuple(c.model.projector_hidden_dims) + (c.model.projector_dim,) == (2048,) * 3
    assert tuple(c.model.contrastive_hidden_dims) + (c.model.contrastive_dim,) == (2048, 256)
    assert c.eval.knn_k == 5 and c.metamask.mode == "exact"
    cmp = load("metamask", "compare")
    assert tuple(cmp.compare.seeds) == (0, 1, 2, 3, 4) and cmp.compare.tune_seed not in (
        0,
        1,
        2,
        3,
        4,
    )
    assert len(cmp.compare.network_lrs) == len(cmp.compare.mask_lrs) == 3
    assert cmp.data.name == "mnistm_embedded" and cmp.metamask.mode == "exact"
    with pytest.raises(jc.ConfigError, match="unknown preset 'nope'"):
        load("metamask", "nope")


@pytest.mark.parametrize(
    "field,value,match",
    [
        ("metamask.mode", "second_order", r"config\.metamask\.mode: unknown mode"),
        ("metamask.lr", 0.0, r"config\.metamask\.lr: must be a positive"),
        ("optimizer.name", "lars", r"config\.optimizer\.name: MetaMask's virtual step is SGD"),
        ("loss.name", "barlow_twins", r"config\.loss\.name: MetaMask trains"),
        ("loss.temperature", 0.0, r"config\.loss\.temperature"),
    ],
)
def test_bad_config_is_one_line_naming_the_field(field, value, match):
    c = load("metamask", "smoke")
    group, name = field.split(".")
    c[group][name] = value
    with pytest.raises(jc.ConfigError, match=match) as e:
        metamask.build(c, methods.DataInfo(10, (16, 16, 1)))
    assert "\n" not in str(e.value)


# --- The method -----------------------------------------------------------------------------


def _smoke(**overrides):
    c = load("metamask", "smoke")
    c.total_steps, c.log_every, c.checkpoint_every = 4, 1, 2
    c.keep_checkpoints = 3
    c.eval.random_init_baseline = False
    for k, v in overrides.items():
        group, name = k.split(".")
        c[group][name] = v
    return c


def _metrics(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def eight(tmp_path_factory):
    """The smoke run on 8 devices (exact mode), shared by the tests below."""
    c = _smoke()
    workdir = str(tmp_path_factory.mktemp("metamask") / "eight")
    return c, workdir, train.train_and_evaluate(c, workdir)


def test_training_moves_network_and_mask(eight):
    c, workdir, results = eight
    rows = _metrics(workdir)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for r in rows:
        assert np.isfinite(r["loss"]) and r["grad_norm"] > 0 and r["hypergrad_norm"] > 0
        assert r["loss"] == pytest.approx(r["bt_loss"] + 10.0 * r["nt_xent_loss"], rel=1e-5)
        assert r["mask_min"] <= r["mask_q50"] <= r["mask_max"] and r["mask_lr"] > 0
    assert results["train_step_compilations"] == 1
    assert 0 <= results["eval"]["knn_accuracy"] <= 1 and results["eval"]["knn_k"] == 5
    _, first = restore_host(workdir, step=2)
    _, last = restore_host(workdir, step=4)
    m0 = np.full(first["extras"]["mask_logits"].shape, 0.5)
    m2, m4 = metamask.mask_values(first, c), metamask.mask_values(last, c)
    assert m4.shape == (4 * c.model.num_filters,)  # one value per backbone feature
    assert not np.array_equal(m2, m0) and not np.array_equal(m4, m2)
    assert rows[-1]["mask_max"] == pytest.approx(m4.max(), rel=1e-6)
    assert any(
        not np.array_equal(a, b)
        for a, b in zip(
            jax.tree_util.tree_leaves(first["params"]), jax.tree_util.tree_leaves(last["params"])
        )
    )


def test_embed_is_masked_features(eight):
    from jssl import checkpoint

    c, workdir, _ = eight
    run = train._Run(c, workdir)
    ckpt = checkpoint.Checkpointer(workdir, c, keep=3)
    state = ckpt.restore(run.abstract)
    ckpt.close()
    images = np.random.default_rng(0).integers(0, 256, (8, 28, 28, 1), dtype=np.uint8)
    masked = np.asarray(run.embed_fn(state, images))
    # sigmoid(+inf) = 1 exactly: the same network's features without the mask.
    ones = jnp.full_like(state.extras["mask_logits"], jnp.inf)
    plain = np.asarray(
        run.embed_fn(state.replace(extras={**state.extras, "mask_logits": ones}), images)
    )
    mask = metamask.mask_values(state, c)
    assert np.abs(mask - 0.5).max() > 0
    np.testing.assert_allclose(masked, plain * mask, rtol=1e-6, atol=1e-7)


def test_one_device_equals_eight_and_meta_passes_keep_batchnorm_statistics(eight):
    """The train loop's batches on a 1-device mesh, stepped by hand: per step, (a) the whole
    step's BatchNorm statistics are exactly those of its network update alone, although the
    meta passes run the network in train mode (they never write the statistics), and (b) the
    losses and the mask follow the 8-device run of the train loop (global-batch semantics)."""
    c, workdir, _ = eight
    mesh = parallel.make_mesh(jax.devices()[:1])
    repl, data = parallel.replicated(mesh), parallel.batch_sharding(mesh)
    source = sources.get_source(c.data.name, c.data.train_split)
    s = metamask.setup(c)

    def step(state, batch):
        views = metamask.make_inputs(s, state, batch)
        net, _ = metamask.network_update(s, state, views)
        full, metrics = metamask.update(s, state, views)
        return full, net, metrics

    step = jax.jit(step, in_shardings=(repl, data), out_shardings=repl)
    state = jax.jit(functools.partial(metamask.init, s), out_shardings=repl)(
        jax.random.PRNGKey(c.seed)
    )
    batches = pipeline.TrainBatches(source, batch_size=c.batch_size, seed=c.seed, mesh=mesh)
    losses = []
    for batch in batches(0, c.total_steps):
        new, net, metrics = step(state, batch)
        before = jax.tree_util.tree_leaves(state.batch_stats)
        stats_net = jax.tree_util.tree_leaves(net.batch_stats)
        assert any(not np.array_equal(a, b) for a, b in zip(before, stats_net))  # net wrote
        for a, b in zip(stats_net, jax.tree_util.tree_leaves(new.batch_stats)):
            np.testing.assert_array_equal(a, b)
        for a, b in zip(
            jax.tree_util.tree_leaves(net.params), jax.tree_util.tree_leaves(new.params)
        ):
            np.testing.assert_array_equal(a, b)  # the meta update moves the mask only
        assert not np.array_equal(new.extras["mask_logits"], state.extras["mask_logits"])
        losses.append(float(metrics["loss"]))
        state = new
    l8 = [r["loss"] for r in _metrics(workdir)]
    # As for Barlow Twins alone (tests/test_train.py): float32 rounding, amplified by the
    # per-dimension standardisation after the first steps.
    np.testing.assert_allclose(losses[:2], l8[:2], rtol=1e-5)
    np.testing.assert_allclose(losses, l8, rtol=2e-3)
    m8 = restore_host(workdir)[1]["extras"]["mask_logits"]
    m1 = np.asarray(state.extras["mask_logits"])
    assert np.abs(m8).max() > 0
    np.testing.assert_allclose(m1, m8, rtol=0.05, atol=0.01 * np.abs(m8).max())


def test_resume_is_exact(eight, tmp_path):
    c, workdir, _ = eight
    part = str(tmp_path / "part")
    shutil.copytree(workdir, part)
    shutil.rmtree(os.path.join(part, "checkpoints", "4"))
    os.remove(os.path.join(part, "results.json"))
    resumed = train.train_and_evaluate(c, part)
    assert resumed["resumed_from_step"] == 2
    for a, b in zip(_metrics(workdir), _metrics(part)):
        assert a["step"] == b["step"]
        assert a["loss"] == b["loss"] and a["mask_max"] == b["mask_max"], (a, b)
    want, got = restore_host(workdir)[1], restore_host(part)[1]
    for a, b in zip(
        jax.tree_util.tree_leaves(want["extras"]), jax.tree_util.tree_leaves(got["extras"])
    ):
        np.testing.assert_array_equal(a, b)  # mask logits, momentum and schedule count


# --- The study --------------------------------------------------------------------------------


def test_study_runs_differ_only_where_the_arms_do(tmp_path):
    from jssl.config import experiment_fields
    from jssl.studies import metamask as study

    c = load("metamask", "compare")
    tune = study.tuning_configs(c, str(tmp_path))
    assert [r["arm"] for r in tune] == ["no_mask"] * 3 and {r["seed"] for r in tune} == {100}
    tune = study.tuning_configs(c, str(tmp_path), chosen_network_lr=1e-3)
    mm = [r for r in tune if r["arm"] == "metamask"]
    assert [r["config"].metamask.lr for r in mm] == [0.1, 1.0, 10.0]
    assert {r["config"].optimizer.lr for r in mm} == {1e-3}
    runs = study.sub_configs(c, str(tmp_path), 1e-3, 1.0, {s: 0.5 for s in c.compare.seeds})
    assert len(runs) == 3 * 5
    by = {(r["arm"], r["seed"]): experiment_fields(r["config"]) for r in runs}
    diff = lambda a, b: {k for k in set(a) | set(b) if a.get(k) != b.get(k)}  # noqa: E731
    # (eval fields are run control; the mask lr is unused without a mask)
    assert diff(by["metamask", 3], by["no_mask", 3]) == {"metamask.enabled", "metamask.lr"}
    # (the random mask is never updated: its mask lr is left at the config's)
    assert diff(by["metamask", 3], by["random_mask", 3]) == {
        "metamask.learn",
        "metamask.init_std",
        "metamask.lr",
    }
    assert by["random_mask", 3]["metamask.init_std"] == 0.5
    assert by["metamask", 3]["metamask.lr"] == 1.0 and by["no_mask", 3]["optimizer.lr"] == 1e-3


@pytest.mark.slow
def test_study_writes_table_and_plots(eight, tmp_path):
    """The study on one seed (grids of one value: no tuning runs); its MetaMask arm is the
    finished smoke run (reused, as an interrupted study reuses its finished runs), the
    no-mask and random-mask arms train here."""
    from jssl import studies

    shutil.copytree(eight[1], tmp_path / "metamask_s0")
    c = load("metamask", "compare_smoke")
    c.log_every, c.checkpoint_every = 1, 2
    out = studies.run(c, str(tmp_path))
    assert set(out["summary"]) == {"metamask", "no_mask", "random_mask", "random_init"}
    for arm in out["summary"]:
        assert 0 <= out["summary"][arm]["knn_accuracy"]["mean"] <= 1
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["seeds"] == [0] and saved["provenance"]["devices"] == jax.device_count()
    assert len(saved["mask"]["0"]["sorted"]) == 4 * c.model.num_filters
    assert saved["mask_history"]["0"]["step"] == [1, 2, 3, 4]
    assert not os.path.exists(tmp_path / "tune")  # nothing to choose from grids of one
    assert all(v.startswith("Verdict: ") for v in out["verdict"]) and len(out["verdict"]) == 2
    md = (tmp_path / "results.md").read_text()
    assert "| metamask |" in md and "| random_mask |" in md and "Manipulation check" in md
    for png in ("mask_sorted.png", "mask_over_training.png"):
        data = (tmp_path / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    # The no-mask arm trained without a mask; the random mask kept its random start (the
    # same logits as a fresh init of that config: never updated) with the learned spread.
    assert restore_host(str(tmp_path / "no_mask_s0"))[1]["extras"] == {}
    rm = restore_host(str(tmp_path / "random_mask_s0"))[1]["extras"]["mask_logits"]
    learned = restore_host(str(tmp_path / "metamask_s0"))[1]["extras"]["mask_logits"]
    assert np.std(rm) > 0 and saved["mask"]["0"]["logit_std"] == pytest.approx(np.std(learned))
    rcfg = load("metamask", "compare_smoke")
    rcfg.metamask.learn, rcfg.metamask.init_std = False, float(np.std(learned))
    fresh = metamask.init(metamask.setup(rcfg), jax.random.PRNGKey(rcfg.seed))
    np.testing.assert_allclose(rm, np.asarray(fresh.extras["mask_logits"]), rtol=1e-6)
    before = os.stat(tmp_path / "metamask_s0" / "results.json").st_mtime_ns
    studies.run(c, str(tmp_path))
    assert os.stat(tmp_path / "metamask_s0" / "results.json").st_mtime_ns == before
