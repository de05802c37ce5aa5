"""The study rules in code (docs/studies.md): t-intervals, choice on validation, verdicts,
provenance; the validation subset a few-label user would have (eval.val_fraction); the
controls the studies need (metamask.learn / init_std, joint.ssl_on)."""

from __future__ import annotations

import math
import os

import jax
import numpy as np
import pytest

from jssl import config as jc
from jssl import evaluate, train
from jssl.studies import common


def test_t_interval_against_the_t_table():
    # n = 5: t(0.975, 4) = 2.7764 (table); mean 3, sd sqrt(2.5).
    lo, hi = common.t_interval([1.0, 2.0, 3.0, 4.0, 5.0])
    half = 2.7764451 * math.sqrt(2.5) / math.sqrt(5)
    assert (lo, hi) == pytest.approx((3 - half, 3 + half), rel=1e-6)
    # n = 3: t(0.975, 2) = 4.3027, the value the review quoted.
    lo, hi = common.t_interval([0.0, 1.0, 2.0])
    assert hi - 1.0 == pytest.approx(4.3026527 / math.sqrt(3), rel=1e-6)
    assert all(math.isnan(v) for v in common.t_interval([1.0]))


def test_paired_and_verdicts():
    d = common.paired([0.5, 0.6, 0.7], [0.4, 0.45, 0.5])
    assert d["values"] == pytest.approx([0.1, 0.15, 0.2]) and d["higher"] == 3
    assert d["ci"] == pytest.approx(list(common.t_interval([0.1, 0.15, 0.2])))
    assert ": holds (" in common.verdict("A beats B", d)
    worse = common.paired([0.4, 0.45, 0.5], [0.5, 0.6, 0.7])
    assert ": does not hold (" in common.verdict("A beats B", worse)
    mixed = common.paired([0.5, 0.4, 0.6], [0.45, 0.5, 0.55])
    assert ": inconclusive at this scale (the 95% interval contains 0" in common.verdict(
        "A beats B", mixed
    )
    # A failed manipulation check overrides any interval.
    line = common.verdict("A beats B", d, blocked="the mask did not move")
    assert line.startswith("Verdict: A beats B: inconclusive") and "did not move" in line
    one = common.paired([0.5], [0.4])
    assert "fewer than 2 seeds" in common.verdict("A beats B", one)
    assert "[no interval]" in common.fmt_diff(one)
    with pytest.raises(ValueError, match="equally long"):
        common.paired([0.1], [0.1, 0.2])


def test_choose_takes_the_best_validation_score_first_on_ties():
    grid = {"0.1": 0.1, "1": 1.0, "10": 10.0}
    assert common.choose(grid, {"0.1": 0.3, "1": 0.5, "10": 0.4}) == ("1", 1.0)
    assert common.choose(grid, {"0.1": 0.5, "1": 0.5, "10": 0.4}) == ("0.1", 0.1)


def test_seeds_and_provenance():
    assert common.check_seeds((3, 1)) == (3, 1)
    for bad, match in (((), "non-empty"), ((1, 1), "repeats"), ((1.5,), "integers")):
        with pytest.raises(jc.ConfigError, match=match):
            common.check_seeds(bad)
    p = common.provenance()
    assert p["devices"] == jax.device_count() and p["command"].startswith("python")
    assert p["commit"] is None or len(p["commit"]) == 40


def test_val_fraction_is_a_seeded_class_balanced_subset():
    c = jc.load_file("barlow_twins", "smoke")
    whole = evaluate.split_source(c, c.eval.val_split, "val")
    assert len(whole) == 500
    c.eval.val_fraction = 0.08
    a = evaluate.split_source(c, c.eval.val_split, "val")
    labels = a.read(np.arange(len(a)))[1]
    assert len(a) == 40 and np.bincount(labels, minlength=10).tolist() == [4] * 10
    c.eval.val_subset_seed = 1
    b = evaluate.split_source(c, c.eval.val_split, "val")
    assert not np.array_equal(a.indices, b.indices)  # another subset for another seed
    # The other evaluation roles are untouched, even on the same split.
    assert len(evaluate.split_source(c, c.eval.test_split, "test")) == 1000
    assert len(evaluate.split_source(c, c.eval.val_split, "train")) == 500
    for bad in (0.0, 1.5):
        c.eval.val_fraction = bad
        with pytest.raises(jc.ConfigError, match=r"eval.val_fraction: must be in \(0, 1\]"):
            jc.validate(c, num_devices=1, known=train.known_names(c))


def test_metamask_fixed_and_random_masks():
    from jssl.methods import metamask

    c = jc.load_file("metamask", "smoke")
    c.metamask.init_std = 2.0
    s = metamask.setup(c)
    state = metamask.init(s, jax.random.PRNGKey(0))
    logits = np.asarray(state.extras["mask_logits"])
    assert logits.std() == pytest.approx(2.0, rel=0.35) and abs(logits.mean()) < 1.0
    again = metamask.init(s, jax.random.PRNGKey(0))
    np.testing.assert_array_equal(logits, np.asarray(again.extras["mask_logits"]))
    # The network's initialisation is that of the same seed without the random mask.
    plain = metamask.init(metamask.setup(jc.load_file("metamask", "smoke")), jax.random.PRNGKey(0))
    for a, b in zip(
        jax.tree_util.tree_leaves(state.params), jax.tree_util.tree_leaves(plain.params)
    ):
        np.testing.assert_array_equal(a, b)
    bad = jc.load_file("metamask", "smoke")
    bad.metamask.init_std = -1.0
    with pytest.raises(jc.ConfigError, match="metamask.init_std: must be a number >= 0"):
        metamask.validate(bad)


def test_joint_ssl_on_labelled_reads_the_labelled_images():
    from jssl.methods import joint
    from jssl.methods.common import DataInfo

    c = jc.load_file("fkt", "smoke")
    c.joint.ssl_on = "labelled"
    s = joint.setup(c, DataInfo(num_classes=10, image_shape=(16, 16, 3)))
    state = joint.init(s, jax.random.PRNGKey(0))
    size = c.data.image_size
    rng = np.random.default_rng(0)
    labelled = rng.integers(0, 256, (4, size, size, 3), dtype=np.uint8)
    batch = {
        "image": np.zeros((8, size, size, 3), np.uint8),
        "labelled_image": labelled,
        "labelled_label": np.arange(4),
    }
    views = joint.make_inputs(s, state, batch)["views"]
    assert len(views) == 2 and views[0].shape[0] == 4  # the labelled batch's 4 images
    c.joint.ssl_on = "unlabelled"
    s2 = joint.setup(c, DataInfo(num_classes=10, image_shape=(16, 16, 3)))
    assert joint.make_inputs(s2, state, batch)["views"][0].shape[0] == 8
    c.joint.ssl_on = "both"
    with pytest.raises(jc.ConfigError, match="joint.ssl_on: must be one of unlabelled, labelled"):
        joint.validate(c)


def test_studies_refuse_a_tuning_seed_among_the_test_seeds(tmp_path):
    from jssl.studies import fkt, metamask

    c = jc.load_file("metamask", "compare")
    c.compare.tune_seed = 2
    with pytest.raises(jc.ConfigError, match="compare.tune_seed: 2 is also a test seed"):
        metamask.tuning_configs(c, str(tmp_path))
    c = jc.load_file("metamask", "compare")
    c.compare.mask_lrs = (1.0,)
    with pytest.raises(jc.ConfigError, match="the same size"):
        metamask.tuning_configs(c, str(tmp_path))
    c = jc.load_file("fkt", "compare")
    c.compare.tune_seed = 0
    with pytest.raises(jc.ConfigError, match="compare.tune_seed: 0 is also a test seed"):
        fkt.run(c, os.path.join(str(tmp_path), "fkt"))
