"""Attention gating over frozen pretext encoders (jssl/models/fusion.py, jssl/methods/fusion.py,
jssl/studies/fusion.py): frozen means frozen (values and HLO), attention weights, K = 1 is a
linear probe, clear errors for bad encoders, 1 vs 8 devices, the study end to end."""

import copy
import json
import os
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jssl import checkpoint, evaluate, export, methods, parallel, train
from jssl import config as jc
from jssl.config import ConfigError
from jssl.data import sources
from jssl.methods import fusion
from jssl.models.fusion import FusionHead
from jssl.studies import fusion as study
from tests.shared import smoke
from tests.test_config import load


@pytest.fixture(scope="module")
def encoders(tmp_path_factory, shared_run):
    """Stage 1 of the study on two tiny pretexts of different widths (rotation: 16
    features, SimCLR: 32), a few steps each: (study config, study workdir, encoder paths).
    The SimCLR encoder is the shared smoke run, copied where stage 1 finds it finished."""
    root = str(tmp_path_factory.mktemp("fusion") / "study")
    c = load("fusion", "compare")
    c.data.name = "mnist_embedded"  # the smoke encoders' data (compare's is mnistm_embedded)
    rot = smoke("rotation", total_steps=3, checkpoint_every=3, log_every=3)
    rot.model.num_filters = 4
    rot.eval.max_examples, rot.eval.linear_max_steps = 128, 5
    sim, sim_dir = shared_run("simclr")
    shutil.copytree(sim_dir, os.path.join(root, study.ENCODERS_DIR, "s0", "simclr"))
    sim.seed = 0
    c.compare.pretexts = {"rotation": rot, "simclr": sim}
    info = study.pretrain_encoders(c, root, 0)
    return c, root, tuple(info[n]["workdir"] for n in ("rotation", "simclr"))


@pytest.fixture(scope="module")
def val_features(encoders):
    """The two encoders' features of the validation split: (Encoders, features, labels)."""
    enc = export.load_encoders(encoders[2])
    feats, labels = evaluate.encode_source(
        enc.modules,
        enc.variables,
        sources.get_source("mnist_embedded", "validation"),
        batch_size=250,
        mesh=parallel.make_mesh(),
    )
    return enc, feats, labels


def _config(paths, **fields):
    c = load("fusion", "smoke")
    c.fusion.encoders = tuple(paths)
    for k, v in fields.items():
        c.fusion[k] = v
    return c


def _info():
    return methods.DataInfo(10, (28, 28, 1))


def _build(c, devices=None):
    return methods.build(c, _info(), parallel.make_mesh(devices))


def _images(n=16, split="train"):
    images, labels = sources.get_source("mnist_embedded", split).read(np.arange(n))
    return images, labels.astype(np.int32)


# --- The head ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["task_query", "input_query"])
def test_attention_weights_sum_to_one_and_respond_to_the_input(mode):
    head = FusionHead(num_classes=10, mode=mode, dim=8)
    rng = np.random.default_rng(0)
    feats = [jnp.asarray(rng.normal(size=(32, w)), jnp.float32) for w in (5, 7, 3)]
    variables = head.init(jax.random.PRNGKey(0), feats)
    # The query starts at zero: uniform weights, the "average" head.
    np.testing.assert_allclose(head.apply(variables, feats)["weights"], 1 / 3, rtol=1e-6)
    # A query that has learned something (random here) weighs every input differently.
    params = dict(variables["params"])
    if mode == "task_query":
        params["query"] = np.random.default_rng(1).standard_normal(params["query"].shape)
    else:
        params["query"] = {
            **params["query"],
            "kernel": np.random.default_rng(1).standard_normal(params["query"]["kernel"].shape),
        }
    variables = {"params": params}
    w = np.asarray(head.apply(variables, feats)["weights"])
    assert w.shape == (32, 3) and np.all(w > 0)
    np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-6)
    assert np.std(w, axis=0).max() > 1e-2  # different inputs, different weights
    # Changing one example's features changes its weights, and only its weights.
    moved = [f.at[0].multiply(-3.0) for f in feats]
    w2 = np.asarray(head.apply(variables, moved)["weights"])
    assert np.abs(w2[0] - w[0]).max() > 1e-3
    np.testing.assert_allclose(w2[1:], w[1:], atol=1e-7)


def _jacobian(head, variables, x):
    return np.asarray(jax.jacobian(lambda v: head.apply(variables, [v[None]])["logits"][0])(x))


@pytest.mark.parametrize("mode", ["task_query", "input_query", "average", "concat", "single"])
def test_one_encoder_is_a_linear_probe(mode):
    """K = 1: the weight is exactly 1 and the logits an affine map of the features (the
    same Jacobian everywhere), which for task_query is W_project W_value W_classifier."""
    head = FusionHead(num_classes=4, mode=mode, dim=6)
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(9, 5)), jnp.float32)
    variables = head.init(jax.random.PRNGKey(3), [x])
    out = head.apply(variables, [x])
    if out["weights"] is not None:
        np.testing.assert_array_equal(np.asarray(out["weights"]), 1.0)
    j0, j1 = _jacobian(head, variables, x[0]), _jacobian(head, variables, x[1] * 5)
    np.testing.assert_allclose(j0, j1, rtol=1e-5, atol=1e-6)
    bias = head.apply(variables, [jnp.zeros((1, 5))])["logits"]
    np.testing.assert_allclose(out["logits"], x @ j0.T + bias, rtol=1e-4, atol=1e-5)
    if mode == "task_query":
        p = variables["params"]
        composed = p["project_0"]["kernel"] @ p["value"]["kernel"] @ p["classifier"]["kernel"]
        np.testing.assert_allclose(j0.T, composed, rtol=1e-4, atol=1e-6)


def test_se_gate_is_input_dependent_even_for_one_encoder():
    """The counter-example the affine check above must catch: channel gates depend on x."""
    head = FusionHead(num_classes=4, mode="se_gate", dim=6, se_reduction=2)
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 5)), jnp.float32)
    variables = head.init(jax.random.PRNGKey(3), [x])
    assert np.abs(_jacobian(head, variables, x[0]) - _jacobian(head, variables, x[1])).max() > 1e-4


def _with_query(variables, mode, seed=1):
    params = dict(variables["params"])
    if mode == "task_query":
        params["query"] = np.random.default_rng(seed).standard_normal(params["query"].shape)
    else:
        params["query"] = {
            **params["query"],
            "kernel": np.random.default_rng(seed).standard_normal(params["query"]["kernel"].shape),
        }
    return {"params": params}


@pytest.mark.parametrize("mode", ["task_query", "input_query"])
def test_tied_projection_makes_the_weights_identifiable(mode):
    """Tied: one projection for every input, so two identical inputs get exactly equal
    weights whatever the (learned) query; free projections give the same inputs different
    weights (their W_k differ), which is why free weights do not show selection."""
    rng = np.random.default_rng(0)
    x, y = (jnp.asarray(rng.normal(size=(16, 6)), jnp.float32) for _ in range(2))
    feats = [x, y, x]  # the third input duplicates the first
    tied = FusionHead(num_classes=4, mode=mode, dim=8, projection="tied")
    v = tied.init(jax.random.PRNGKey(0), feats)
    assert "project" in v["params"] and not any(k.startswith("project_") for k in v["params"])
    w = np.asarray(tied.apply(_with_query(v, mode), feats)["weights"])
    np.testing.assert_allclose(w[:, 0], w[:, 2], rtol=1e-6)
    assert np.abs(w[:, 0] - w[:, 1]).max() > 1e-3  # the query does tell x from y
    free = FusionHead(num_classes=4, mode=mode, dim=8)
    vf = free.init(jax.random.PRNGKey(0), feats)
    wf = np.asarray(free.apply(_with_query(vf, mode), feats)["weights"])
    assert np.abs(wf[:, 0] - wf[:, 2]).max() > 1e-3
    with pytest.raises(ValueError, match="one feature width"):
        tied.init(jax.random.PRNGKey(0), [x, jnp.zeros((16, 5))])


def test_normalized_projection_ignores_the_scale_of_an_input():
    """With `normalize`, every projected input has norm sqrt(d): with zero projection biases
    (so the projection is linear), scaling one input by a positive constant changes
    nothing; without it, the weights and logits move."""
    rng = np.random.default_rng(0)
    feats = [jnp.asarray(rng.normal(size=(8, 6)), jnp.float32) for _ in range(3)]
    scaled = [feats[0] * 7.0, feats[1], feats[2]]
    for normalize in (True, False):
        head = FusionHead(
            num_classes=4, mode="task_query", dim=8, projection="tied", normalize=normalize
        )
        v = _with_query(head.init(jax.random.PRNGKey(0), feats), "task_query")
        v["params"]["project"] = {
            **v["params"]["project"],
            "bias": np.zeros_like(v["params"]["project"]["bias"]),
        }
        a, b = head.apply(v, feats), head.apply(v, scaled)
        if normalize:
            np.testing.assert_allclose(a["weights"], b["weights"], rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(a["logits"], b["logits"], rtol=1e-4, atol=1e-5)
        else:
            assert np.abs(np.asarray(a["weights"]) - np.asarray(b["weights"])).max() > 1e-3


def test_tied_projection_needs_one_width_in_the_config(encoders):
    """Encoders of widths 16 and 32: 'tied' is refused with the field named."""
    _, _, paths = encoders
    widths = export.load_encoders(paths).widths
    assert len(set(widths)) == 2
    c = _config(paths, projection="tied")
    with pytest.raises(ConfigError, match=r"config\.fusion\.projection: 'tied'.*widths differ"):
        fusion.setup(c, 10, widths)
    with pytest.raises(ConfigError, match=r"config\.fusion\.projection: 'shared'"):
        fusion.validate(_config(paths, projection="shared"))


# --- Frozen encoders ---------------------------------------------------------------------


def test_frozen_encoders_do_not_change_in_training(encoders, tmp_path):
    """A run of the train loop without the feature cache (the encoders run in every step):
    the checkpointed encoder variables, BatchNorm statistics included, equal the restored
    ones bit for bit, while the head trained."""
    _, _, paths = encoders
    c = _config(paths, cache_features=False)
    c.total_steps, c.checkpoint_every, c.log_every = 4, 4, 2
    c.optimizer.lr = 1e-2
    c.eval.max_examples = 64
    workdir = str(tmp_path / "fusion")
    results = train.train_and_evaluate(c, workdir)
    assert 0 <= results["eval"]["classifier_accuracy"] <= 1
    _, tree = checkpoint.restore_host(workdir)
    for i, path in enumerate(paths):
        _, want = export.load_encoder(path)
        got = tree["extras"]["encoders"][f"encoder_{i}"]
        assert "batch_stats" in want and jax.tree_util.tree_structure(
            got
        ) == jax.tree_util.tree_structure(want)
        for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
            np.testing.assert_array_equal(a, b)
    widths = export.load_encoders(paths).widths
    initial = fusion.head_init(
        fusion.setup(c, 10, widths), jax.random.PRNGKey(c.seed), [0.0] * 2, [1.0] * 2
    )
    leaves = zip(
        jax.tree_util.tree_leaves(initial.params), jax.tree_util.tree_leaves(tree["params"])
    )
    moved = [np.abs(np.asarray(a) - b).max() for a, b in leaves]
    assert min(moved) > 0  # every head parameter trained


def _count(text, op="stablehlo.convolution"):
    return text.count(op)


def test_no_gradient_of_the_encoders_is_computed(encoders):
    """The lowered train step holds each encoder's forward convolutions once and nothing
    else: no backward convolution. The same count on a step that also differentiates the
    encoders is larger (the check can fail), and `encode` passes no gradient."""
    _, _, paths = encoders
    c = _config(paths, cache_features=False)
    enc = export.load_encoders(paths)
    s = fusion.setup(c, 10, enc.widths)
    method = methods.build(c, _info(), parallel.make_mesh())
    state = method.init(jax.random.PRNGKey(0))
    images, labels = _images(16)
    batch = {"image": images, "label": labels}
    step_text = jax.jit(method.train_step).lower(state, batch).as_text()
    variables = [state.extras["encoders"][f"encoder_{i}"] for i in range(len(enc))]
    forward_text = jax.jit(lambda v, x: fusion.encode(enc, v, x)).lower(variables, images).as_text()
    forward = _count(forward_text)
    assert forward > 0 and _count(step_text) == forward

    def leaky(params, v):  # the encoders as trainable as the head (what must not happen)
        feats = [m.apply(vk, images) for m, vk in zip(enc.modules, v)]
        return fusion.objective(s, params, state, feats, labels)[0]

    leaky_text = jax.jit(jax.grad(leaky, argnums=(0, 1))).lower(state.params, variables).as_text()
    assert _count(leaky_text) > forward
    grads = jax.jit(jax.grad(lambda v: sum(jnp.sum(f) for f in fusion.encode(enc, v, images))))(
        variables
    )
    assert all(float(jnp.abs(g).max()) == 0 for g in jax.tree_util.tree_leaves(grads))


def test_cached_features_give_the_same_steps(encoders):
    _, _, paths = encoders
    mesh = parallel.make_mesh()
    repl, data = parallel.replicated(mesh), parallel.batch_sharding(mesh)
    src = sources.get_source("mnist_embedded", "train")
    losses = {}
    for cache in (True, False):
        method = methods.build(_config(paths, cache_features=cache), _info(), mesh)
        state = jax.jit(method.init, out_shardings=repl)(jax.random.PRNGKey(0))
        step = jax.jit(method.train_step, in_shardings=(repl, data), out_shardings=(repl, repl))
        out = []
        for batch in method.batches(src, mesh)(0, 3):
            assert ("feature_0" in batch) == cache and batch["label"].shape == (32,)
            state, m = step(state, batch)
            out.append(float(m["loss"]))
        losses[cache] = out
    np.testing.assert_allclose(losses[True], losses[False], rtol=1e-5)


def test_missing_or_incompatible_encoder_is_named(encoders, tmp_path):
    _, _, paths = encoders
    missing = str(tmp_path / "no_such_run")
    with pytest.raises(ConfigError, match=r"config\.fusion\.encoders\[1\]: .*no_such_run") as e:
        _build(_config([paths[0], missing]))
    assert "\n" not in str(e.value)
    empty = tmp_path / "not_a_run"
    empty.mkdir()
    with pytest.raises(ConfigError, match=r"encoders\[0\]: .*not_a_run.*experiment\.json"):
        export.load_encoders([str(empty)])
    # A checkpoint that does not fit the config it was saved with (another width).
    bad = str(tmp_path / "edited")
    shutil.copytree(paths[1], bad)
    with open(os.path.join(bad, "config.json")) as f:
        saved = json.load(f)
    saved["model"]["num_filters"] = 2 * saved["model"]["num_filters"]
    with open(os.path.join(bad, "config.json"), "w") as f:
        json.dump(saved, f)
    with pytest.raises(
        ConfigError,
        match=r"encoders\[1\]: .*edited: its checkpoint does not "
        r"fit .*architecture \(\d+,",
    ):
        export.load_encoders([paths[0], bad])
    with pytest.raises(ConfigError, match=r"config\.fusion\.encoders: \(\)"):
        _build(_config([]))


def _fit(paths, val_features, devices, mode):
    enc, feats, labels = val_features
    c = _config(paths, mode=mode)
    c.total_steps, c.log_every = 4, 1
    trainer = study.HeadTrainer(c, 10, enc.widths, parallel.make_mesh(devices))
    state, history = trainer.fit(feats, labels, seed=0)
    return [h["loss"] for h in history], trainer.outputs(state, feats)


@pytest.mark.parametrize("mode", ["task_query", "se_gate"])
def test_one_device_equals_eight(encoders, val_features, mode):
    _, _, paths = encoders
    l1, o1 = _fit(paths, val_features, jax.devices()[:1], mode)
    l8, o8 = _fit(paths, val_features, jax.devices(), mode)
    np.testing.assert_allclose(l1, l8, rtol=1e-5)
    np.testing.assert_allclose(o1["logits"], o8["logits"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(o1["weights"], o8["weights"], rtol=1e-4, atol=1e-6)


# --- Config and study ----------------------------------------------------------------------


def test_presets_and_config_errors():
    for preset in ("", "smoke", "compare", "compare_smoke"):
        c = load("fusion", preset)
        jc.validate(c, num_devices=8)
        assert c.method == "fusion" and c.data.train_split != c.eval.val_split
    assert load("fusion", "compare").study == "fusion"
    # compare_smoke: the study's code path in about a minute (two smoke pretexts).
    quick = load("fusion", "compare_smoke")
    assert quick.study == "fusion" and set(quick.compare.pretexts) == {"rotation", "simclr"}
    assert quick.compare.seeds == (0,) and quick.compare.pretexts.simclr.total_steps == 4
    for pretext in quick.compare.pretexts.values():
        jc.validate(pretext, num_devices=8)
    with pytest.raises(ConfigError, match="unknown preset 'nope'"):
        load("fusion", "nope")
    for fields, match in [
        ({"mode": "max"}, r"config\.fusion\.mode: unknown mode 'max'"),
        ({"mode": "concat", "entropy_weight": 0.1}, r"config\.fusion\.entropy_weight"),
        ({"names": ("a",)}, r"config\.fusion\.names"),
        ({"mode": "single", "single_index": 2}, r"config\.fusion\.single_index"),
        ({"labelled_fraction": 0.0}, r"config\.fusion\.labelled_fraction"),
    ]:
        with pytest.raises(ConfigError, match=match):
            fusion.validate(_config(["a", "b"], **fields))


def _entries():
    return [
        {"name": "a", "kind": "pretext", "path": "A", "of": None},
        {"name": "b", "kind": "pretext", "path": "B", "of": None},
        {"name": "random_init", "kind": "random_init", "path": "R", "of": None},
        {"name": "a_copy", "kind": "copy", "path": "A", "of": "a"},
        {"name": "noise", "kind": "noise", "path": None, "of": None},
    ]


def _study_config():
    c = load("fusion", "compare_smoke")
    c.compare.pretexts = {"a": c.compare.pretexts.rotation, "b": c.compare.pretexts.simclr}
    c.compare.controls.random_init = c.compare.controls.duplicate = "a"
    return c


def test_study_arms_and_config_errors():
    c = _study_config()
    arms = study.arms(c, _entries())
    fused = set(c.compare.variants)
    singles = {"single_a", "single_b", "single_random_init", "single_noise"}  # no copy
    loo = {f"loo_{e['name']}" for e in _entries()}
    paper = {f"pretexts_{v}" for v in fused}  # the fused heads over the pretexts alone
    assert set(arms) == fused | singles | loo | paper
    assert arms["pretexts_task_query_tied"]["inputs"] == [0, 1]
    assert arms["loo_a_copy"]["inputs"] == [0, 1, 2, 4]
    assert arms["loo_a_copy"]["variant"] == arms[c.compare.reference]["variant"]
    assert arms["task_query_tied"]["variant"]["projection"] == "tied"
    assert arms["single_noise"] == {"variant": {"mode": "single"}, "inputs": [4]}
    c.compare.leave_one_out = False
    assert not any(a.startswith("loo_") for a in study.arms(c, _entries()))
    for field, value, match in [
        ("reference", "concat", r"config\.compare\.reference: 'concat' has mode 'concat'"),
        ("uniform", "task_query", r"config\.compare\.uniform: 'task_query' is not a variant"),
        ("controls.duplicate", "jigsaw", r"config\.compare\.controls\.duplicate: 'jigsaw'"),
        ("seeds", (0, 0), r"config\.compare\.seeds: .* repeats"),
        ("lrs", (0.0,), r"config\.compare\.lrs"),
    ]:
        bad = _study_config()
        group, _, leaf = ("compare." + field).rpartition(".")
        target = bad
        for part in group.split("."):
            target = target[part]
        target[leaf] = value
        with pytest.raises(ConfigError, match=match):
            study._validate(bad)
    bad = _study_config()
    bad.compare.variants.loo_x = bad.compare.variants.concat
    with pytest.raises(ConfigError, match=r"variants\.loo_x: reserved name"):
        study._validate(bad)


def _record(weights_ref, weights_loo_copy, acc):
    """A (seed, fraction) record with the arms summarize reads."""
    arms = {a: {"test_accuracy": v, "val_accuracy": v, "inputs": []} for a, v in acc.items()}
    arms["task_query_tied"]["mean_weights"] = weights_ref
    arms["loo_a_copy"]["mean_weights"] = weights_loo_copy
    arms["pretext_matching"]["chosen"] = "a"
    return {"num_labelled": 10, "num_val": 10, "arms": arms}


def test_study_summary_selection_and_verdicts():
    """Hand-made records: the selection checks and the verdicts follow from the weights."""
    c = _study_config()
    acc = {
        a: 0.5
        for a in [
            "task_query_tied",
            "average_tied",
            "pretext_matching",
            "input_query_tied",
            "task_query",
            "concat",
            "loo_a",
            "loo_b",
            "loo_random_init",
            "loo_a_copy",
            "loo_noise",
        ]
    }
    # The reference: noise down-weighted, random init near 1/K, the duplicate pair (a +
    # a_copy = 0.5) against a's 0.4 without the copy: R = 1.25 (< 1.5: not double-counted).
    ref = [
        [0.25, 0.2, 0.2, 0.25, 0.1],
        [0.24, 0.21, 0.19, 0.26, 0.1],
        [0.26, 0.2, 0.21, 0.24, 0.09],
    ]
    loo = [[0.4, 0.3, 0.2, 0.1], [0.4, 0.3, 0.2, 0.1], [0.4, 0.3, 0.2, 0.1]]
    runs = {0.1: {}}
    for s in range(3):
        a = dict(acc, task_query_tied=0.6 + 0.01 * s, pretext_matching=0.5)
        runs[0.1][s] = _record(ref[s], loo[s], a)
    summary = study.summarize(runs, _entries(), c)
    f = summary["fractions"]["0.1"]
    assert f["manipulation_check"]["passed"]
    np.testing.assert_allclose(
        f["selection"]["noise"]["values"], [0.2 - w[4] for w in ref], rtol=1e-9
    )
    np.testing.assert_allclose(
        f["selection"]["duplicate"]["ratio"]["values"], [(w[0] + w[3]) / 0.4 for w in ref]
    )
    lines = study.verdicts(summary)
    assert all(line.startswith("Verdict: 10% labels: ") for line in lines)
    assert "beats pretext matching: holds" in lines[0]
    assert any("gives noise less than 1/K of the weight" in x and ": holds" in x for x in lines)
    assert any("does not double-count" in x and ": holds" in x for x in lines)
    # Uniform weights: the manipulation check fails, the selection verdicts are blocked.
    for s in range(3):
        runs[0.1][s]["arms"]["task_query_tied"]["mean_weights"] = [0.2] * 5
    lines = study.verdicts(study.summarize(runs, _entries(), c))
    blocked = [x for x in lines if "the weights did not move" in x]
    assert len(blocked) == 3 and all("inconclusive at this scale" in x for x in blocked)


def test_noise_control_and_random_encoder(encoders, tmp_path):
    """The random-init control is the architecture at a seeded initialisation (same seed,
    same file; other seed, other weights; never overwritten); the noise features are
    seeded and do not depend on the images."""
    c, _, paths = encoders
    pretext = c.compare.pretexts.simclr
    a = export.random_encoder(pretext, str(tmp_path / "a.msgpack"), seed=3)
    b = export.random_encoder(pretext, str(tmp_path / "b.msgpack"), seed=3)
    other = export.random_encoder(pretext, str(tmp_path / "c.msgpack"), seed=4)
    with open(a, "rb") as fa, open(b, "rb") as fb, open(other, "rb") as fo:
        ta, tb, to = fa.read(), fb.read(), fo.read()
    assert ta == tb and ta != to
    with pytest.raises(ConfigError, match="exists; choose another path"):
        export.random_encoder(pretext, a, seed=5)
    enc = export.load_encoders([a, paths[1]])
    assert enc.widths[0] == enc.widths[1]  # SimCLR's architecture
    trained = jax.tree_util.tree_leaves(enc.variables[1]["params"])
    fresh = jax.tree_util.tree_leaves(enc.variables[0]["params"])
    assert any(np.abs(np.asarray(x) - np.asarray(y)).max() > 1e-3 for x, y in zip(trained, fresh))


@pytest.mark.slow
def test_study_end_to_end(encoders):
    """Two seeds (each trains its own encoders; seed 0's are reused), the three controls,
    leave-one-out; every head's learning rate is the best on validation, pretext matching
    picks among the pretexts only, the duplicate's ratio and the paired differences agree
    with the per-run records, the report is written, and a rerun reuses everything."""
    c, root, _ = encoders
    c = copy.deepcopy(c)
    c.compare.seeds, c.compare.fractions, c.compare.lrs = (0, 1), (0.1,), (3e-3, 3e-2)
    # The fixture's encoders differ in width (16, 32): free projections.
    c.compare.variants = {
        "task_query": c.compare.variants.task_query,
        "average": ml_collections.ConfigDict({"mode": "average"}),
    }
    c.compare.reference, c.compare.uniform = "task_query", "average"
    c.total_steps, c.log_every = 8, 4
    results = study.run(c, root)
    assert results["encoder_runs"]["0"]["simclr"]["reused"]
    with open(os.path.join(root, "results.json")) as f:
        saved = json.load(f)
    assert saved["seeds"] == [0, 1] and saved["provenance"]["devices"] == jax.device_count()
    names = saved["summary"]["inputs"]
    assert names == ["rotation", "simclr", "random_init", "simclr_copy", "noise"]
    s = saved["summary"]["fractions"]["0.1"]
    for seed in ("0", "1"):
        run = saved["runs"]["0.1"][seed]
        assert run["num_val"] <= run["num_labelled"] + 10  # small_val: as many as labelled
        arms = run["arms"]
        pretexts = ["rotation", "simclr"]
        chosen = max(pretexts, key=lambda n: arms[f"single_{n}"]["val_accuracy"])
        assert arms["pretext_matching"]["chosen"] == chosen
        for r in arms.values():
            per_lr = r["val_accuracy_per_lr"]
            assert r["val_accuracy"] == max(per_lr.values()) == per_lr[f"{r['lr']:g}"]
        w = arms["task_query"]["mean_weights"]
        assert len(w) == 5 and abs(sum(w) - 1) < 1e-5
        assert arms["loo_noise"]["inputs"] == names[:4]
        assert arms["pretexts_task_query"]["inputs"] == ["rotation", "simclr"]
    ratio = [
        (r["arms"]["task_query"]["mean_weights"][1] + r["arms"]["task_query"]["mean_weights"][3])
        / r["arms"]["loo_simclr_copy"]["mean_weights"][1]
        for r in saved["runs"]["0.1"].values()
    ]
    np.testing.assert_allclose(s["selection"]["duplicate"]["ratio"]["values"], ratio)
    diffs = [
        r["arms"]["task_query"]["test_accuracy"] - r["arms"]["pretext_matching"]["test_accuracy"]
        for r in saved["runs"]["0.1"].values()
    ]
    assert s["vs_pretext_matching"]["task_query"]["mean"] == pytest.approx(np.mean(diffs))
    with open(os.path.join(root, "attention.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with open(os.path.join(root, "results.md")) as f:
        text = f.read()
    # Over the pretexts alone and over every input: vs pretext matching and vs the
    # average; then noise, random init and the duplicate.
    assert len(saved["verdict"]) == 7
    assert "over the pretexts alone (the paper's setting) beats pretext" in saved["verdict"][0]
    assert all(v.startswith("Verdict: ") and v in text for v in saved["verdict"])
    # Run again: everything is reused, same numbers.
    again = study.run(c, root)
    assert again["summary"] == results["summary"]
