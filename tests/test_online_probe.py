"""The online linear probe (config.online_probe): a linear classifier on the stop-gradient
backbone features of the training crops, with its own optimizer, alongside the pretext."""

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jssl import config as jc
from jssl import evaluate, methods, train
from jssl.methods import common, pretrain
from tests.shared import read_metrics, smoke


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_a_probe_step_is_sgd_momentum_on_the_mean_cross_entropy_of_the_crops():
    """Two steps against NumPy: gradient (softmax - onehot) / B per crop, averaged over the
    crops; weight decay on the kernel only; PyTorch's momentum; the cosine learning rate."""
    c = jc.pretrain_config()
    c.total_steps = 10
    c.online_probe.lr, c.online_probe.momentum, c.online_probe.weight_decay = 0.5, 0.9, 0.01
    tx = common.online_probe_tx(c)
    rng = np.random.default_rng(0)
    feats = [rng.standard_normal((8, 5)).astype(np.float32) for _ in range(2)]
    labels = rng.integers(0, 3, 8).astype(np.int32)
    probe = common.online_probe_init(tx, 5, 3)
    step = jax.jit(lambda p, f, y: common.online_probe_update(tx, p, f, y))

    w, b = np.zeros((5, 3)), np.zeros(3)
    vw, vb = np.zeros_like(w), np.zeros_like(b)
    onehot = np.eye(3)[labels]
    for t in range(2):
        probe, metrics = step(probe, [jnp.asarray(f) for f in feats], jnp.asarray(labels))
        gw, gb, losses, accs = 0.0, 0.0, [], []
        for f in feats:
            p = _softmax(f @ w + b)
            gw, gb = gw + f.T @ (p - onehot) / 8 / 2, gb + (p - onehot).mean(0) / 2
            losses.append(-np.mean(np.log(p[np.arange(8), labels])))
            accs.append(np.mean(p.argmax(1) == labels))
        gw = gw + 0.01 * w
        lr = 0.5 * 0.5 * (1 + math.cos(math.pi * t / 10))
        vw, vb = 0.9 * vw + gw, 0.9 * vb + gb
        w, b = w - lr * vw, b - lr * vb
        np.testing.assert_allclose(metrics["online/linear_loss"], np.mean(losses), rtol=1e-5)
        np.testing.assert_allclose(metrics["online/linear_acc"], np.mean(accs), rtol=1e-6)
        np.testing.assert_allclose(probe["params"]["kernel"], w, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(probe["params"]["bias"], b, rtol=1e-5, atol=1e-7)
    assert np.abs(w).max() > 0.01  # it moved


def test_the_probe_never_changes_the_pretext_training():
    """Probe on or off, two steps: parameters, BatchNorm statistics, optimizer state and
    the other method state are bit-identical; the probe itself moves."""
    c = smoke("byol")  # a momentum target in extras too
    states = {}
    for classes in (0, 10):
        s = pretrain.setup(c, num_classes=classes)
        assert s.probe == bool(classes)
        step = jax.jit(lambda st, b, s=s: pretrain.update(s, st, pretrain.make_inputs(s, st, b)))
        state = pretrain.init(s, jax.random.PRNGKey(0))
        rng = np.random.default_rng(1)
        for _ in range(2):
            batch = {
                "image": jnp.asarray(rng.integers(0, 256, (32, 16, 16, 3), dtype=np.uint8)),
                "label": jnp.asarray(rng.integers(0, 10, 32).astype(np.int32)),
            }
            state, metrics = step(state, batch)
        states[classes] = (state, metrics)
    (off, m_off), (on, m_on) = states[0], states[10]
    assert "online_probe" not in off.extras and "online/linear_acc" not in m_off
    probe = on.extras.pop("online_probe")
    for a, b in zip(jax.tree_util.tree_leaves(off), jax.tree_util.tree_leaves(on)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert m_on["loss"] == m_off["loss"] and m_on["grad_norm"] == m_off["grad_norm"]
    assert np.abs(np.asarray(probe["params"]["kernel"])).max() > 0
    assert 0.0 <= float(m_on["online/linear_acc"]) <= 1.0


def test_a_real_run_trains_the_probe_and_reports_it(tmp_path):
    """Embedded digits, 40 steps on the train split: the probe learns (test accuracy well
    above the 10% of chance), every logged step has its train figures, the evaluation its
    test and validation figures (the validation split is not pretrained on here), the step
    compiles once, and a run stopped at step 20 resumes to the same probe metrics."""
    c = smoke(
        "barlow_twins",
        total_steps=40,
        log_every=5,
        checkpoint_every=20,
        keep_checkpoints=3,
        **{"data.train_split": "train", "online_probe.lr": 1.0},
    )
    workdir = str(tmp_path / "run")
    results = train.train_and_evaluate(c, workdir)
    ev = results["eval"]
    assert ev["online/linear_acc"] > 0.2, ev  # 256 test digits; chance 0.1 +- 0.02
    assert ev["online/linear_val_acc"] > 0.2, ev
    assert results["train_step_compilations"] == 1
    rows = read_metrics(workdir)
    assert all(0.0 <= r["online/linear_acc"] <= 1.0 for r in rows)
    assert rows[-1]["online/linear_loss"] < rows[0]["online/linear_loss"]
    evals = read_metrics(workdir, "eval.jsonl")
    assert evals[-1]["eval/online/linear_acc"] == ev["online/linear_acc"]

    import shutil

    shutil.rmtree(os.path.join(workdir, "checkpoints", "40"))
    os.remove(os.path.join(workdir, "results.json"))
    again = train.train_and_evaluate(c, workdir)
    assert again["resumed_from_step"] == 20
    assert again["eval"]["online/linear_acc"] == ev["online/linear_acc"]
    resumed = read_metrics(workdir)
    for a, b in zip(rows, resumed):
        assert a["online/linear_loss"] == b["online/linear_loss"], (a, b)


def test_the_validation_figure_is_left_out_when_the_probe_trained_on_it(shared_run):
    """The embedded default pretrains on train+validation: the probe saw the validation
    labels, so only the test figure is reported; the random-init baseline has none."""
    c, workdir = shared_run("barlow_twins")
    assert c.data.train_split == "train+validation"
    results = train.finished_results(workdir, c)
    assert "online/linear_acc" in results["eval"]
    assert "online/linear_val_acc" not in results["eval"]
    assert "online/linear_acc" not in results["random_init_eval"]
    assert "online/linear_acc" in read_metrics(workdir)[0]
    assert evaluate.split_names("train+validation[:50%]") == {"train", "validation"}
    assert evaluate.split_names("validation") == {"validation"}


def test_on_in_every_pretrain_config_and_refused_elsewhere():
    for name in jc.shipped_configs():
        c = jc.load_file(name)
        assert c.online_probe.enabled == (c.method == "pretrain"), name
    c = smoke("rotation", **{"online_probe.enabled": True})
    with pytest.raises(jc.ConfigError, match=r"^config\.online_probe\.enabled: the puzzle"):
        methods.validate(c)
    for field, value in (("lr", 0.0), ("momentum", 1.0), ("weight_decay", -1.0)):
        c = smoke("simclr", **{f"online_probe.{field}": value})
        with pytest.raises(jc.ConfigError, match=rf"^config\.online_probe\.{field}: "):
            jc.validate(c, num_devices=8)
