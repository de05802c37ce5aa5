"""MAE as a method (jssl/methods/mae.py, models.MAEDecoder): the encoder sees the visible
patches only, the mask follows the step's key, a real (small) run learns, bad configs are
one-line errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jssl import config as jc
from jssl import losses, methods, models, train
from jssl.methods import mae
from tests.shared import read_metrics


def _smoke(**fields):
    c = jc.load_file("mae", "smoke")
    c.eval.random_init_baseline = False
    for k, v in fields.items():
        c[k] = v
    return c


def _built(c):
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
    method = methods.build(c, methods.DataInfo(10, (16, 16, 1)), mesh)
    return method, method.init(jax.random.PRNGKey(0))


def test_the_encoder_sees_the_visible_patches_only():
    """Changing the pixels of removed patches changes the reconstruction target but not
    the encoder's tokens; changing a visible patch changes them."""
    c = _smoke()
    s = mae.setup(c)
    method, state = _built(c)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 16, 16, 3)), jnp.float32)
    ids_keep, mask, _ = losses.random_masking(jax.random.PRNGKey(3), 2, 16, 0.75)
    variables = {"params": state.params}

    def tokens(images):
        return s.model.apply(
            variables,
            images,
            ids_keep,
            None,
            method=lambda m, a, k, _: m.backbone(a, train=False, ids_keep=k, return_tokens=True),
        )

    base = tokens(x)
    assert base.shape == (2, 1 + 4, 32)  # the class token and the 4 visible patches
    patches = np.asarray(losses.patchify(x, 4))
    hidden = patches.copy()
    hidden[np.asarray(mask) == 1] += 3.0
    changed = losses.unpatchify(jnp.asarray(hidden), 4, 16, 16)
    np.testing.assert_allclose(tokens(changed), base, atol=1e-6)
    visible = patches.copy()
    visible[np.asarray(mask) == 0] += 3.0
    assert np.max(np.abs(tokens(losses.unpatchify(jnp.asarray(visible), 4, 16, 16)) - base)) > 1e-3


def test_the_mask_is_a_function_of_seed_and_step():
    c = _smoke()
    method, state = _built(c)
    batch = {"image": np.zeros((8, 16, 16, 1), np.uint8), "label": np.zeros(8, np.int32)}
    a = method.make_inputs(state, batch)
    b = method.make_inputs(state, batch)
    np.testing.assert_array_equal(a["mask"], b["mask"])
    assert a["ids_keep"].shape == (8, 4) and float(a["mask"].sum()) == 8 * 12
    later = method.make_inputs(state.replace(step=state.step + 1), batch)
    assert np.any(np.asarray(later["mask"]) != np.asarray(a["mask"]))


def test_decoder_positions_are_the_official_sine_cosine():
    emb = models.sincos_posemb(8, (2, 3))[0]
    assert emb.shape == (1 + 6, 8) and not emb[0].any()  # a zero row for the class token
    for index, (row, col) in enumerate((r, c) for r in range(2) for c in range(3)):
        omega = 1.0 / 10000 ** (np.arange(2) / 2)
        want = np.concatenate(
            [np.sin(col * omega), np.cos(col * omega), np.sin(row * omega), np.cos(row * omega)]
        )
        np.testing.assert_allclose(emb[1 + index], want, rtol=1e-6, atol=1e-7)


def test_mae_configs_are_checked():
    c = _smoke()
    c.model.backbone = "resnet18"
    with pytest.raises(
        jc.ConfigError, match=r"config\.model\.backbone: MAE masks patches of a ViT"
    ):
        methods.validate(c)
    c = _smoke()
    c.model.pool = "gap"
    with pytest.raises(jc.ConfigError, match=r"config\.model\.pool"):
        methods.validate(c)
    c = _smoke()
    c.mae.mask_ratio = 1.0
    with pytest.raises(jc.ConfigError, match=r"config\.mae\.mask_ratio"):
        methods.validate(c)
    c = _smoke()
    c.model.projector_dim = 16
    with pytest.raises(jc.ConfigError, match=r"config\.model\.projector_dim: the mae method never"):
        methods.validate(c)


def test_mae_learns_on_eight_devices(tmp_path):
    """A real (small) run through the one train loop: the reconstruction loss goes down,
    every encoder and decoder parameter moves, one compilation."""
    c = _smoke(total_steps=40, log_every=1, checkpoint_every=40)
    workdir = str(tmp_path / "mae")
    results = train.train_and_evaluate(c, workdir)
    rows = read_metrics(workdir)
    losses_ = [r["loss"] for r in rows]
    assert np.mean(losses_[-5:]) < 0.9 * np.mean(losses_[:5]), losses_
    assert results["train_step_compilations"] == 1
    from jssl.checkpoint import restore_host

    _, tree = restore_host(workdir)
    run = train._Run(c, workdir)
    initial = jax.device_get(run.init_fn(run.rng).params)
    moved = jax.tree_util.tree_map(
        lambda a, b: float(np.max(np.abs(np.asarray(a) - np.asarray(b)))), tree["params"], initial
    )
    assert all(v > 0 for v in jax.tree_util.tree_leaves(moved)), moved


def test_stochastic_depth_is_driven_by_mae_and_refused_elsewhere():
    """model.drop_path reaches MAE's encoder in training (another loss than without it,
    from the same state and batch); a method that does not hand the model a dropout
    stream refuses it in one line."""
    batch = {"image": np.full((8, 16, 16, 1), 128, np.uint8), "label": np.zeros(8, np.int32)}
    out = {}
    for rate in (0.0, 0.5):
        c = _smoke()
        c.model.drop_path = rate
        method, state = _built(c)
        _, metrics = method.update(state, method.make_inputs(state, batch))
        out[rate] = float(metrics["loss"])
    assert np.isfinite(out[0.5]) and out[0.5] != out[0.0]
    c = jc.load_file("fkt", "smoke")
    c.model.backbone, c.model.patch_size, c.model.drop_path = "vit_smoke", 4, 0.1
    with pytest.raises(
        jc.ConfigError,
        match=r"config\.model\.drop_path: the joint method .*pretrain, mae, finetune",
    ):
        methods.validate(c)
