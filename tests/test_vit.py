"""Vision Transformer backbones (jssl.models.vit): shapes, position-embedding resampling,
stochastic depth, the registry and config fields, and a real (small) training run."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jssl import config as jc
from jssl import export, methods, models, train
from jssl.models.vit import resample_posemb
from tests.shared import read_metrics, smoke


def _init(module, size, seed=0):
    x = jnp.asarray(np.random.default_rng(seed).normal(size=(2, size, size, 3)), jnp.float32)
    return module.init(jax.random.PRNGKey(seed), x, train=False), x


@pytest.mark.parametrize("pool", ["token", "gap"])
def test_vit_features_and_parameters(pool):
    vit = models.build_backbone("vit_smoke", patch_size=4, pool=pool)
    variables, x = _init(vit, 16)
    out = vit.apply(variables, x, train=False)
    assert out.shape == (2, vit.num_features) == (2, 32) and out.dtype == jnp.float32
    p = variables["params"]
    assert p["patch_embed"].shape == (4, 4, 3, 32)
    # A class token has a position of its own; 16 / 4 = 4 x 4 patches.
    assert p["pos_embed"].shape == (1, 16 + (pool == "token"), 32)
    assert ("cls_token" in p) == (pool == "token")
    assert ("norm" in p) == (pool == "token") and ("fc_norm" in p) == (pool == "gap")
    # The features depend on every image separately (no mixing across the batch).
    single = vit.apply(variables, x[:1], train=False)
    np.testing.assert_allclose(single, out[:1], rtol=1e-5, atol=1e-6)


def test_vit_sizes_are_the_papers():
    for name, (width, depth, heads) in {
        "vit_tiny": (192, 12, 3),
        "vit_small": (384, 12, 6),
        "vit_base": (768, 12, 12),
        "vit_large": (1024, 24, 16),
    }.items():
        vit = models.build_backbone(name)
        assert (vit.width, vit.depth, vit.num_heads, vit.mlp_dim) == (
            width,
            depth,
            heads,
            4 * width,
        )
        assert models.num_features(name) == width


def test_position_embeddings_are_resampled_for_other_sizes():
    """A model initialised on 16 px images takes 8 px and 24 px ones (multi-crop, evaluation
    at another size) with its position embeddings resampled bicubically; on its own size
    nothing is resampled."""
    vit = models.build_backbone("vit_smoke", patch_size=4)
    variables, _ = _init(vit, 16)
    for size in (8, 24):
        x = jnp.ones((2, size, size, 3))
        assert vit.apply(variables, x, train=False).shape == (2, 32)
    pos = variables["params"]["pos_embed"][:, 1:]
    assert resample_posemb(pos, (4, 4)) is pos
    # Bicubic resampling of a linear ramp stays a ramp inside (checked at the centre).
    ramp = jnp.broadcast_to(jnp.arange(4.0)[None, :, None], (4, 4, 1)).reshape(1, 16, 1)
    up = resample_posemb(ramp, (8, 8)).reshape(8, 8)
    assert np.all(np.diff(np.asarray(up[4, 2:6])) > 0)
    with pytest.raises(ValueError, match="not a square grid"):
        resample_posemb(jnp.zeros((1, 15, 4)), (4, 4))


def test_stochastic_depth_drops_whole_examples_in_training_only():
    vit = models.build_backbone("vit_smoke", patch_size=4, drop_path=0.5)
    variables, x = _init(vit, 16)
    evaluation = vit.apply(variables, x, train=False)
    np.testing.assert_array_equal(evaluation, vit.apply(variables, x, train=False))
    rngs = {"dropout": jax.random.PRNGKey(1)}
    a = vit.apply(variables, x, train=True, rngs=rngs)
    b = vit.apply(variables, x, train=True, rngs={"dropout": jax.random.PRNGKey(2)})
    assert np.max(np.abs(np.asarray(a) - np.asarray(b))) > 1e-4
    with pytest.raises(Exception, match="dropout"):
        vit.apply(variables, x, train=True)  # training with drop_path needs the stream


def test_vit_config_fields_are_validated():
    c = smoke("simclr")
    c.model.backbone, c.model.patch_size = "vit_smoke", 5
    with pytest.raises(
        jc.ConfigError,
        match=r"config\.data\.image_size: 16 is not a multiple of model\.patch_size=5",
    ):
        jc.validate(c, num_devices=8)
    c.model.patch_size, c.model.pool = 4, "cls"
    with pytest.raises(jc.ConfigError, match=r"config\.model\.pool: must be 'token' or 'gap'"):
        jc.validate(c, num_devices=8)
    c.model.pool, c.model.drop_path = "token", 1.0
    with pytest.raises(jc.ConfigError, match=r"config\.model\.drop_path: must be in \[0, 1\)"):
        jc.validate(c, num_devices=8)
    # A view the method feeds to the backbone is checked too (methods.validate).
    c.model.drop_path, c.augment.view2.crop_size = 0.0, 10
    with pytest.raises(
        jc.ConfigError, match=r"config\.augment\.view2\.crop_size: 10 is not a multiple of"
    ):
        methods.validate(c)


def test_simclr_trains_a_vit(tmp_path):
    """A real (small) run: SimCLR on a ViT through the one train loop, 8 devices: the loss
    goes down and every backbone parameter moves."""
    c = smoke("simclr", total_steps=30, log_every=1, checkpoint_every=30)
    c.model.backbone, c.model.patch_size, c.model.pool = "vit_smoke", 4, "gap"
    c.optimizer.name, c.optimizer.lr = "adamw", 1e-3
    c.optimizer.weight_decay = 0.05
    workdir = str(tmp_path / "vit")
    results = train.train_and_evaluate(c, workdir)
    losses = [r["loss"] for r in read_metrics(workdir)]
    assert np.mean(losses[-5:]) < np.mean(losses[:5]), losses
    assert results["train_step_compilations"] == 1
    from jssl.checkpoint import restore_host

    _, tree = restore_host(workdir)
    run = train._Run(c, workdir)
    initial = run.init_fn(run.rng)
    moved = jax.tree_util.tree_map(
        lambda a, b: float(np.max(np.abs(np.asarray(a) - np.asarray(b)))),
        tree["params"]["backbone"],
        jax.device_get(initial.params["backbone"]),
    )
    assert all(v > 0 for v in jax.tree_util.tree_leaves(moved)), moved

    # The exported encoder keeps the ViT's own fields (patch size, pooling): the run's
    # features from the workdir and from the file.
    images = np.random.default_rng(0).integers(0, 256, (4, 16, 16, 1), dtype=np.uint8)
    module, variables = export.load_encoder(workdir)
    want = np.asarray(module.apply(variables, images))
    out = str(tmp_path / "vit.msgpack")
    export.export_encoder(workdir, out)
    module2, variables2 = export.load_encoder(out)
    assert (module2.backbone.patch_size, module2.backbone.pool) == (4, "gap")
    np.testing.assert_array_equal(np.asarray(module2.apply(variables2, images)), want)


def test_bfloat16_computation_stays_close_to_float32():
    """dtype=bfloat16 computes the blocks in bfloat16 with float32 parameters (as the
    ResNets): the same parameters give features within bfloat16 rounding of float32's."""
    f32 = models.build_backbone("vit_smoke", patch_size=4)
    variables, x = _init(f32, 16)
    bf16 = models.build_backbone("vit_smoke", patch_size=4, dtype=jnp.bfloat16)
    a = np.asarray(f32.apply(variables, x, train=False))
    b = bf16.apply(variables, x, train=False)
    assert b.dtype == jnp.float32  # features come out in float32
    assert {x.dtype for x in jax.tree_util.tree_leaves(variables)} == {jnp.dtype("float32")}
    scale = np.max(np.abs(a))
    assert 0 < np.max(np.abs(np.asarray(b) - a)) <= 0.05 * scale


@pytest.mark.parametrize("preset", ["smoke_vit", "cifar10_vit"])
def test_mocov3_vit_presets_are_valid(preset):
    c = jc.load_file("mocov3", preset)
    jc.validate(c, num_devices=8)
    methods.validate(c)
    assert c.model.freeze_patch_embed and c.optimizer.name == "adamw"


def test_mocov3_on_a_vit_keeps_the_random_patch_embedding(tmp_path):
    """MoCo v3's ViT recipe: the patch embedding stays exactly as initialised (no update,
    no weight decay) while every other parameter trains; a ResNet or another method
    refuses the field in one line."""
    c = jc.load_file("mocov3", "smoke_vit")
    c.total_steps, c.checkpoint_every, c.eval.random_init_baseline = 4, 4, False
    workdir = str(tmp_path / "mocov3")
    train.train_and_evaluate(c, workdir)
    from jssl.checkpoint import restore_host

    _, tree = restore_host(workdir)
    run = train._Run(c, workdir)
    initial = jax.device_get(run.init_fn(run.rng).params["backbone"])
    trained = tree["params"]["backbone"]
    for name in ("patch_embed", "patch_embed_bias"):
        np.testing.assert_array_equal(np.asarray(trained[name]), np.asarray(initial[name]))
    assert np.max(np.abs(np.asarray(trained["pos_embed"]) - np.asarray(initial["pos_embed"]))) > 0
    c.model.backbone = "resnet18"
    with pytest.raises(jc.ConfigError, match=r"config\.model\.freeze_patch_embed"):
        methods.validate(c)
