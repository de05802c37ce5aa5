"""Full fine-tuning (configs/finetune.py): Mixup / CutMix and label smoothing against hand
computations, layer-wise learning-rate decay, the encoder loaded from a pretraining run,
learning on 8 devices, 1 vs 8 devices, exact resume, one-line errors."""

import os
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jssl import augment, methods, models, train
from jssl import config as jc
from jssl.checkpoint import restore_host
from jssl.methods import finetune
from tests.shared import read_metrics, smoke
from tests.test_methods import _run


def test_label_smoothing_targets():
    got = np.asarray(augment.smooth_labels(jnp.array([2, 0]), 4, 0.1))
    want = np.full((2, 4), 0.025)
    want[0, 2] = want[1, 0] = 0.925
    np.testing.assert_allclose(got, want, rtol=1e-6)
    np.testing.assert_array_equal(augment.smooth_labels(jnp.array([1]), 3), [[0.0, 1.0, 0.0]])


def _batch(n=6, size=8):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(n, size, size, 3)), jnp.float32)
    y = augment.smooth_labels(jnp.arange(n) % 3, 3)
    return x, y


def test_mixup_is_a_convex_combination_with_the_reversed_batch():
    x, y = _batch()
    out, t, lam = augment.mix_batch(jax.random.PRNGKey(3), x, y, mixup_alpha=0.8)
    lam = float(lam)
    assert 0.0 < lam < 1.0
    np.testing.assert_allclose(out, lam * x + (1 - lam) * x[::-1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(t, lam * y + (1 - lam) * y[::-1], rtol=1e-6)
    np.testing.assert_allclose(np.sum(t, axis=1), 1.0, rtol=1e-6)


def test_cutmix_pastes_a_box_whose_area_is_one_minus_lambda():
    x, y = _batch(size=16)
    seen = set()
    for seed in range(8):
        out, t, lam = augment.mix_batch(jax.random.PRNGKey(seed), x, y, cutmix_alpha=1.0)
        out, xs, rev = np.asarray(out), np.asarray(x), np.asarray(x)[::-1]
        from_rev = np.all(out == rev, axis=-1) & ~np.all(xs == rev, axis=-1)
        assert np.all((out == xs) | (out == rev))  # every pixel from one of the two
        # The same box in every example; its area is 1 - lam (lam corrected to the box).
        np.testing.assert_array_equal(from_rev[0], from_rev[1])
        np.testing.assert_allclose(1 - float(lam), from_rev[0].mean(), atol=1e-6)
        np.testing.assert_allclose(t, float(lam) * y + (1 - float(lam)) * y[::-1], rtol=1e-6)
        seen.add(round(float(lam), 4))
    assert len(seen) > 4  # lam is drawn, not fixed


def test_mixing_switches_and_can_be_off():
    x, y = _batch()
    modes = set()
    for seed in range(16):
        out, _, lam = augment.mix_batch(
            jax.random.PRNGKey(seed), x, y, mixup_alpha=0.8, cutmix_alpha=1.0
        )
        rev = np.asarray(x)[::-1]
        boxed = np.all((np.asarray(out) == np.asarray(x)) | (np.asarray(out) == rev))
        modes.add("cutmix" if boxed else "mixup")
    assert modes == {"cutmix", "mixup"}
    out, t, lam = augment.mix_batch(jax.random.PRNGKey(0), x, y, mixup_alpha=0.8, prob=0.0)
    np.testing.assert_array_equal(out, x)
    np.testing.assert_array_equal(t, y)
    assert float(lam) == 1.0
    out, _, _ = augment.mix_batch(jax.random.PRNGKey(0), x, y)
    assert out is x


def test_layer_decay_scales_each_vit_layers_update():
    """decay^(L - l): the classifier and final norm 1, block i decay^(depth - i), the
    embeddings decay^(depth + 1); the same SGD step unscaled divided by the scaled one
    gives exactly these factors."""
    vit = models.build_backbone("vit_smoke", patch_size=4)
    scale = finetune.layer_scales(vit, 0.5)
    depth = vit.depth
    assert scale(("classifier", "Dense_0", "kernel")) == 1.0
    assert scale(("backbone", "norm", "scale")) == 1.0
    assert scale(("backbone", f"blocks_{depth - 1}", "x")) == 0.5
    assert scale(("backbone", "blocks_0", "x")) == 0.5**depth
    for name in ("patch_embed", "cls_token", "pos_embed"):
        assert scale(("backbone", name)) == 0.5 ** (depth + 1)
    assert finetune.layer_scales(vit, 1.0) is None

    c = smoke("finetune")
    c.model.backbone, c.model.patch_size, c.finetune.layer_decay = "vit_smoke", 4, 0.5
    c.optimizer.name, c.optimizer.weight_decay, c.optimizer.momentum = "sgd", 0.0, 0.0
    s = finetune.setup(c, methods.DataInfo(10, (16, 16, 1)))
    state = finetune.init(s, jax.random.PRNGKey(0))
    grads = jax.tree_util.tree_map(jnp.ones_like, state.params)
    scaled, _ = s.tx.update(grads, s.tx.init(state.params), state.params)
    plain = optax.sgd(s.schedule)
    unscaled, _ = plain.update(grads, plain.init(state.params), state.params)
    ratios = jax.tree_util.tree_map_with_path(
        lambda path, a, b: (tuple(k.key for k in path), float(np.mean(a / b))), scaled, unscaled
    )
    for path, ratio in jax.tree_util.tree_leaves(ratios, is_leaf=lambda x: isinstance(x, tuple)):
        assert ratio == pytest.approx(scale(path), rel=1e-6), path


def test_finetune_fields_are_checked():
    def error(match, **fields):
        c = smoke("finetune")
        for k, v in fields.items():
            c.finetune[k] = v
        with pytest.raises(jc.ConfigError, match=match):
            methods.validate(c)

    error(r"config\.finetune\.layer_decay: backbone 'convnet' has no layers", layer_decay=0.65)
    error(r"config\.finetune\.labelled_fraction: must be in \(0, 1\]", labelled_fraction=0.0)
    error(r"config\.finetune\.label_smoothing", label_smoothing=1.0)
    error(r"config\.finetune\.mixup_alpha", mixup_alpha=-1.0)
    error(r"config\.finetune\.switch_prob", switch_prob=2.0)
    c = smoke("finetune")
    c.data.train_split = c.eval.val_split
    with pytest.raises(jc.ConfigError, match=r"config\.data\.train_split: .*validation split"):
        methods.validate(c)


@pytest.mark.parametrize("preset", ["", "vit", "cifar10", "imagenet_mae"])
def test_finetune_presets_are_valid(preset):
    c = jc.load_file("finetune", preset)
    jc.validate(c, num_devices=8)
    methods.validate(c)
    if preset == "imagenet_mae":
        f, o = c.finetune, c.optimizer
        assert (f.layer_decay, f.mixup_alpha, f.cutmix_alpha, f.label_smoothing) == (
            0.65,
            0.8,
            1.0,
            0.1,
        )
        assert (o.name, o.lr, o.weight_decay, c.batch_size, c.model.drop_path) == (
            "adamw",
            5e-4,
            0.05,
            1024,
            0.1,
        )


def test_one_device_equals_eight():
    """Mixup's partner is the reversed global batch: the same losses on 1 and 8 devices."""
    c = smoke("finetune")
    _, logs1 = _run(c, 2, devices=jax.devices()[:1])
    _, logs8 = _run(c, 2)
    np.testing.assert_allclose(
        [m["loss"] for m in logs1], [m["loss"] for m in logs8], rtol=2e-4, atol=1e-5
    )
    assert [float(m["mix_lambda"]) for m in logs1] == [float(m["mix_lambda"]) for m in logs8]


def test_finetunes_a_pretrained_encoder_and_resumes_exactly(shared_run, tmp_path):
    """The encoder of a pretraining run is the starting point (bit for bit); a real small
    run lowers the loss, moves every parameter and beats chance with its own classifier;
    a run stopped at its step-10 checkpoint resumes to the same metrics."""
    _, pretrained = shared_run("simclr")
    c = smoke(
        "finetune",
        total_steps=40,
        log_every=1,
        checkpoint_every=10,
        keep_checkpoints=5,
        **{"model.init_from": pretrained},
    )
    c.finetune.mixup_alpha = c.finetune.cutmix_alpha = 0.0  # a plain loss curve
    c.optimizer.lr = 0.05  # 40 steps
    workdir = str(tmp_path / "ft")
    results = train.train_and_evaluate(c, workdir)
    rows = read_metrics(workdir)
    losses = [r["loss"] for r in rows]
    assert np.mean(losses[-5:]) < 0.85 * np.mean(losses[:5]), losses
    assert results["eval"]["classifier_accuracy"] > 0.3  # 10 classes
    assert results["train_step_compilations"] == 1

    run = train._Run(c, workdir)
    start = jax.device_get(run.init_fn(run.rng))
    _, source = restore_host(pretrained)
    for a, b in zip(
        jax.tree_util.tree_leaves(start.params["backbone"]),
        jax.tree_util.tree_leaves(source["params"]["backbone"]),
    ):
        np.testing.assert_array_equal(a, b)
    _, tree = restore_host(workdir)
    moved = jax.tree_util.tree_map(
        lambda a, b: float(np.max(np.abs(np.asarray(a) - np.asarray(b)))),
        tree["params"],
        start.params,
    )
    assert all(v > 0 for v in jax.tree_util.tree_leaves(moved)), moved

    part = str(tmp_path / "part")
    shutil.copytree(workdir, part)
    for step in ("20", "30", "40"):
        shutil.rmtree(os.path.join(part, "checkpoints", step))
    resumed = train.train_and_evaluate(c, part)
    assert resumed["resumed_from_step"] == 10
    got = read_metrics(part)
    assert [r["step"] for r in got] == list(range(1, 41))
    for a, b in zip(rows, got):
        assert a["loss"] == b["loss"] and a["grad_norm"] == b["grad_norm"], (a, b)
    assert resumed["eval"] == results["eval"]


class _Flat(nn.Module):
    """A stand-in backbone: the image's pixels as features."""

    @nn.compact
    def __call__(self, x, train):
        return x.reshape(x.shape[0], -1)


@pytest.mark.parametrize("head_batchnorm", [True, False])
def test_the_head_batchnorm_standardises_the_features(head_batchnorm):
    """With `finetune.head_batchnorm`, the train-mode logits do not change when each feature
    is scaled and shifted (BatchNorm without affine parameters before the classifier);
    without it they do."""
    model = finetune.FinetuneModel(_Flat(), models.Classifier(3), head_batchnorm=head_batchnorm)
    x = jax.random.normal(jax.random.PRNGKey(0), (16, 2, 2, 1))
    variables = model.init(jax.random.PRNGKey(1), x, train=False)
    scale = jnp.linspace(0.5, 3.0, 4).reshape(1, 2, 2, 1)

    def logits(images):
        out, _ = model.apply(variables, images, train=True, mutable=["batch_stats"])
        return np.asarray(out)

    same = np.allclose(logits(x), logits(x * scale + 5.0), rtol=1e-3, atol=1e-3)
    assert same == head_batchnorm
    assert ("batch_stats" in variables) == head_batchnorm
