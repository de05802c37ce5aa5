"""Functional Knowledge Transfer (jssl/methods/joint.py): where the gradients go, lambda = 0,
the labelled subset, 1 vs 8 devices, and a run end to end."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jssl import config as jc
from jssl import methods, parallel, train
from jssl.data import sources
from jssl.data.subsets import labelled_split, source_labels
from jssl.methods import joint
from tests.test_config import load


def _smoke(**joint_fields):
    c = load("fkt", "smoke")
    for k, v in joint_fields.items():
        c.joint[k] = v
    return c


def _info(c):
    return methods.DataInfo(10, (c.data.image_size,) * 2 + (1,))


def _batch(c, seed=0):
    rng = np.random.default_rng(seed)
    s = c.data.image_size
    n, m = c.batch_size, c.joint.labelled_batch_size
    return {
        "image": rng.integers(0, 256, (n, s, s, 1), dtype=np.uint8),
        "label": np.zeros((n,), np.int32),
        "labelled_image": rng.integers(0, 256, (m, s, s, 1), dtype=np.uint8),
        "labelled_label": rng.integers(0, 10, (m,)).astype(np.int32),
    }


def _norms(tree):
    return {
        k: float(sum(jnp.sum(jnp.square(x)) for x in jax.tree_util.tree_leaves(v)))
        for k, v in tree.items()
    }


def test_gradients_of_each_term_reach_the_right_parameters():
    """CE reaches backbone and classifier, not the projector; L_SSL reaches backbone and
    projector, not the classifier."""
    c = _smoke()
    s = joint.setup(c, _info(c))
    state = joint.init(s, jax.random.PRNGKey(0))
    inputs = joint.make_inputs(s, state, _batch(c))
    # Both terms' gradients from one compiled Jacobian (row 0: CE, row 1: L_SSL).
    jac = jax.jit(
        jax.jacrev(lambda p: jnp.stack(joint.loss_terms(s, p, state.batch_stats, inputs)[:2]))
    )(state.params)
    ce_grads = jax.tree_util.tree_map(lambda g: g[0], jac)
    ssl_grads = jax.tree_util.tree_map(lambda g: g[1], jac)
    ce, ssl = _norms(ce_grads), _norms(ssl_grads)
    assert ce["backbone"] > 0 and ce["classifier"] > 0 and ce["projector"] == 0
    assert ssl["backbone"] > 0 and ssl["projector"] > 0 and ssl["classifier"] == 0


def test_one_step_is_ce_plus_lambda_ssl():
    c = _smoke(ssl_weight=0.5)
    method = methods.build(c, _info(c))
    state = method.init(jax.random.PRNGKey(0))
    _, m = jax.jit(method.train_step)(state, _batch(c))
    np.testing.assert_allclose(m["loss"], m["ce_loss"] + 0.5 * m["ssl_loss"], rtol=1e-6)
    assert m["ssl_loss"] > 0 and m["ce_loss"] > 0


def test_lambda_zero_is_supervised_training():
    """ssl_weight = 0 gives the same steps as a supervised-only objective: loss = CE, the
    projector never moves, and the unlabelled images do not matter."""
    c = _smoke(ssl_weight=0.0)
    c.optimizer.weight_decay = 0.0
    method = methods.build(c, _info(c))
    step = jax.jit(method.train_step)
    state0 = method.init(jax.random.PRNGKey(0))
    b1, b2 = _batch(c, 0), _batch(c, 0)
    b2["image"] = 255 - b2["image"]  # different unlabelled images, same labelled batch
    s1, m1 = step(state0, b1)
    s2, m2 = step(state0, b2)
    assert float(m1["loss"]) == float(m1["ce_loss"]) and float(m1["ssl_loss"]) == 0.0
    for a, b in zip(jax.tree_util.tree_leaves(s1.params), jax.tree_util.tree_leaves(s2.params)):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(
        jax.tree_util.tree_leaves(state0.params["projector"]),
        jax.tree_util.tree_leaves(s1.params["projector"]),
    ):
        np.testing.assert_array_equal(a, b)


def test_labelled_subset_deterministic_balanced_and_disjoint_from_validation():
    train_src = sources.get_source("mnist_embedded", "train")
    lab, unl = labelled_split(train_src, 0.1, seed=0)
    lab2, _ = labelled_split(train_src, 0.1, seed=0)
    np.testing.assert_array_equal(lab, lab2)
    assert not np.array_equal(lab, labelled_split(train_src, 0.1, seed=1)[0])
    labels = source_labels(train_src)
    counts = np.bincount(labels[lab], minlength=10)
    expect = np.floor(0.1 * np.bincount(labels, minlength=10) + 0.5)
    np.testing.assert_array_equal(counts, expect)  # class-balanced: 10% of every class
    assert np.intersect1d(lab, unl).size == 0 and len(lab) + len(unl) == len(train_src)
    # The subset indexes the train split, which shares no example with validation.
    train_ids = sources.embedded_split_indices("mnist_embedded", "train")
    val_ids = sources.embedded_split_indices("mnist_embedded", "validation")
    assert np.intersect1d(train_ids[lab], val_ids).size == 0
    _, everything = labelled_split(train_src, 1.0, seed=0)
    assert len(everything) == len(train_src)  # 100% labelled: SSL on the whole split


def test_training_on_the_validation_split_is_refused():
    c = _smoke()
    c.data.train_split = c.eval.val_split
    with pytest.raises(jc.ConfigError, match="config.data.train_split"):
        methods.build(c, _info(c))


def _losses(c, devices):
    mesh = parallel.make_mesh(devices)
    repl, data = parallel.replicated(mesh), parallel.batch_sharding(mesh)
    method = methods.build(c, _info(c))
    state = jax.jit(method.init, out_shardings=repl)(jax.random.PRNGKey(0))
    src = sources.get_source(c.data.name, c.data.train_split)
    stream = method.batches(src, mesh)
    step = jax.jit(method.train_step, in_shardings=(repl, data), out_shardings=(repl, repl))
    out = []
    for batch in stream(0, 2):
        assert batch["labelled_image"].shape[0] == c.joint.labelled_batch_size
        state, m = step(state, batch)
        out.append(float(m["loss"]))
    return out


def test_one_device_equals_eight():
    c = _smoke()
    np.testing.assert_allclose(_losses(c, jax.devices()[:1]), _losses(c, jax.devices()), rtol=2e-4)


@pytest.mark.slow
def test_smoke_run_reports_classifier_accuracy(tmp_path):
    c = _smoke()
    c.eval.random_init_baseline = False
    results = train.train_and_evaluate(c, str(tmp_path / "fkt"))
    ev = results["eval"]
    assert 0 <= ev["classifier_accuracy"] <= 1 and 0 <= ev["classifier_val_accuracy"] <= 1
    assert "knn_accuracy" in ev and results["train_step_compilations"] == 1


# --- The comparison study (configs/fkt.py:compare, jssl/studies/fkt.py) -------------------


def test_compare_runs_differ_only_where_the_arms_do(tmp_path):
    from jssl.config import experiment_fields
    from jssl.studies import fkt

    c = load("fkt", "compare")
    assert tuple(c.compare.seeds) == (0, 1, 2, 3, 4) and c.compare.tune_seed == 100
    values = {"lr": 0.1, "ssl_weight": 1.0, "pretrain_lr": 0.1, "weight_decay": 5e-4}
    kw = dict(seed=1, fraction=0.01, vfrac=0.08)
    wd = str(tmp_path)
    arm = {
        a: fkt.arm_configs(c, wd, a, values=values, **kw)
        for a in ("functional_updates", "functional_passes", "representational", "supervised")
    }
    pre, rep = arm["representational"]
    fu = experiment_fields(arm["functional_updates"][0]["config"])
    fp = experiment_fields(arm["functional_passes"][0]["config"])
    sup = experiment_fields(arm["supervised"][0]["config"])
    rep_f = experiment_fields(rep["config"])
    diff = lambda a, b: {k for k in set(a) | set(b) if a.get(k) != b.get(k)}  # noqa: E731
    n = c.total_steps
    # Equal optimizer updates (2N) against equal image passes (N joint steps).
    assert (fu["total_steps"], fp["total_steps"], rep_f["total_steps"]) == (2 * n, n, n)
    assert diff(fu, fp) == {"total_steps"}
    assert diff(fu, sup) == {"joint.ssl_weight"} and sup["joint.ssl_weight"] == 0.0
    assert diff(sup, rep_f) == {"model.init_from", "total_steps"}
    assert rep["needs"] == rep_f["model.init_from"] == pre["workdir"]
    # The labelled subset and the validation subset are drawn with the seed.
    ev = arm["functional_updates"][0]["config"].eval  # run control: not in experiment_fields
    assert fu["joint.subset_seed"] == ev.val_subset_seed == fu["seed"] == 1
    assert ev.val_fraction == 0.08 and fu["joint.ssl_on"] == "unlabelled"
    p = experiment_fields(pre["config"])
    assert p["method"] == "pretrain" and p["data.train_split"] == c.eval.train_split
    assert p["total_steps"] == n
    for k in (
        "model.backbone",
        "model.num_filters",
        "loss.name",
        "loss.temperature",
        "optimizer.lr",
        "augment.view1.crop_scale",
        "model.projector_dim",
    ):
        assert p[k] == fu[k], k
    assert not any(k.startswith(("study", "compare")) for k in fu)
    # The paper's setting: every label, the pretext on the labelled batch (a full batch).
    paper = experiment_fields(
        fkt.arm_configs(
            c, wd, "functional_updates", values=values, seed=1, fraction=1.0, vfrac=1.0
        )[0]["config"]
    )
    assert paper["joint.ssl_on"] == "labelled"
    assert paper["joint.labelled_batch_size"] == paper["batch_size"]
    # Every arm's lr over the same grid (representational: both stages'); the optional
    # second grids (lambda, fine-tuning lr, weight decay) are all given or all empty.
    for a in fkt.ARMS:
        defaults, grids = fkt.tuning_plan(c, a)
        assert len(grids) == 1 and grids[0][1] == (0.03, 0.1, 0.3) and defaults["lr"] == 0.1
    assert fkt.tuning_plan(c, "representational")[1][0][0] == ("lr", "pretrain_lr")
    c2 = load("fkt", "compare")
    c2.compare.ssl_weights, c2.compare.finetune_lrs = (0.3, 1.0, 3.0), (0.03, 0.1, 0.3)
    c2.compare.weight_decays = (5e-5, 5e-4, 5e-3)
    assert [g[0] for g in fkt.tuning_plan(c2, "supervised")[1]] == [("lr",), ("weight_decay",)]
    c2.compare.weight_decays = ()
    with pytest.raises(jc.ConfigError, match="second grids must be of the same size"):
        fkt.run(c2, str(tmp_path / "y"))
    # A validation set no larger than the labelled set: 1% of 3,500 is 35 (here 40:
    # one per class at least, rounded per class), 40 of the 500 validation images.
    assert fkt.val_fraction(c, 0.01) == pytest.approx(40 / 500)
    assert fkt.val_fraction(c, 1.0) == 1.0
    c.model.init_from = str(tmp_path)
    with pytest.raises(jc.ConfigError, match="init_from"):
        fkt.run(c, str(tmp_path / "x"))


@pytest.mark.slow
def test_compare_smoke_writes_table_plot_and_resumes(tmp_path):
    import json
    import os

    from jssl.studies import fkt

    c = load("fkt", "compare_smoke")
    # The fkt notebook's run (30 steps: the preset's 4 leave the classifiers at chance).
    c.total_steps, c.checkpoint_every, c.log_every = 30, 30, 10
    workdir = str(tmp_path / "cmp")
    out = fkt.run(c, workdir)
    for name in ("results.json", "results.md", "accuracy_vs_fraction.png"):
        assert os.path.getsize(os.path.join(workdir, name)) > 100, name
    with open(os.path.join(workdir, "results.json")) as f:
        saved = json.load(f)
    assert set(saved["summary"]) == set(fkt.ARMS) and saved["seeds"] == [0]
    acc = saved["summary"]["functional_updates"]["0.1"]["classifier_accuracy"]
    assert len(acc["values"]) == 1 and 0 <= acc["mean"] <= 1
    for arm in fkt.ARMS:  # 30 steps: every arm's classifier above chance (10 classes)
        assert saved["summary"][arm]["0.1"]["classifier_accuracy"]["mean"] > 0.1, arm
    assert len(out["verdict"]) == 2 and all(v.startswith("Verdict: ") for v in out["verdict"])
    assert "random_init" in saved and saved["provenance"]["devices"] >= 1
    # The representational run fine-tuned the pretraining run's backbone: its results differ
    # from supervised (same seed, same subset, lambda = 0, different initialisation).
    runs = {os.path.basename(k): v for k, v in saved["runs"].items()}
    rep = next(v for k, v in runs.items() if k.startswith("representational_"))["eval"]
    sup = next(v for k, v in runs.items() if k.startswith("supervised_"))["eval"]
    assert rep != sup
    # A second invocation reuses every finished run (nothing retrained).
    mtimes = {
        d: os.path.getmtime(os.path.join(workdir, d, "results.json"))
        for d in os.listdir(workdir)
        if os.path.isdir(os.path.join(workdir, d))
    }
    assert len(mtimes) == 5  # pretraining + 4 arms; grids of one value: no tuning runs
    fkt.run(c, workdir)
    assert mtimes == {d: os.path.getmtime(os.path.join(workdir, d, "results.json")) for d in mtimes}
