"""DINO's ViT recipe (issue 19): the teacher temperature warm-up, the cosine weight decay,
the last layer frozen for the first steps, stochastic depth in the online network only,
the presets; and the ViT methods (DINO, MoCo v3, MAE) on 1 vs 8 devices."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jssl import config as jc
from jssl import losses, methods, optim
from jssl.methods import pretrain
from tests.test_methods import _changed, _run


def test_teacher_temperature_warms_up_linearly_then_stays():
    temps = [
        float(
            losses.dino_teacher_temp(
                k, teacher_temp=0.07, warmup_teacher_temp=0.04, warmup_steps=10
            )
        )
        for k in (0, 5, 10, 20)
    ]
    np.testing.assert_allclose(temps, [0.04, 0.055, 0.07, 0.07], rtol=1e-6)
    no_warmup = losses.dino_teacher_temp(
        3, teacher_temp=0.07, warmup_teacher_temp=0.04, warmup_steps=0
    )
    assert float(no_warmup) == pytest.approx(0.07)


def _opt(**fields):
    opt = jc.base_config().optimizer
    opt.update(fields)
    return opt


def test_weight_decay_follows_a_cosine_from_start_to_final():
    opt = _opt(name="adamw", weight_decay=0.04, final_weight_decay=0.4)
    wd = optim.weight_decay_schedule(opt, total_steps=100)
    np.testing.assert_allclose(
        [float(wd(k)) for k in (0, 50, 100, 150)], [0.04, 0.22, 0.4, 0.4], rtol=1e-5
    )
    assert optim.weight_decay_schedule(_opt(weight_decay=0.05), total_steps=100) == 0.05


@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_the_scheduled_decay_is_what_the_optimizer_applies(name):
    """With zero gradients, AdamW's and SGD's step is the decoupled decay alone:
    p_{k+1} = p_k (1 - lr_k wd_k) on kernels (for SGD with momentum, the decay term goes
    through the momentum buffer), biases untouched."""
    opt = _opt(
        name=name,
        lr=0.5,
        scale_lr_with_batch=False,
        weight_decay=0.1,
        final_weight_decay=0.3,
        warmup_steps=0,
        schedule="constant",
        momentum=0.0,
    )
    tx, lr = optim.build_optimizer(opt, total_steps=4, batch_size=256)
    params = {"kernel": jnp.full((2, 3), 2.0), "bias": jnp.ones((3,))}
    state = tx.init(params)
    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    kernel = 2.0
    for k in range(4):
        updates, state = tx.update(zeros, state, params)
        params = optax.apply_updates(params, updates)
        wd = 0.3 + (0.1 - 0.3) * 0.5 * (1 + np.cos(np.pi * k / 4))
        kernel *= 1 - 0.5 * wd
        np.testing.assert_allclose(params["kernel"], kernel, rtol=1e-6)
        np.testing.assert_array_equal(params["bias"], 1.0)


def test_lars_refuses_a_weight_decay_schedule():
    c = jc.load_file("dino", "smoke")
    c.optimizer.final_weight_decay = 0.4
    with pytest.raises(jc.ConfigError, match=r"config\.optimizer\.final_weight_decay: .*'lars'"):
        jc.validate(c, num_devices=8)


def test_dino_vit_recipe_in_a_short_run():
    """smoke_vit (ViT, AdamW, wd 0.04 -> 0.4, clip 3, drop path 0.1, 2 + 2 crops): the
    teacher temperature goes 0.04 -> 0.07 over the first 2 steps, the last layer (the
    prototypes) stays bit-identical while frozen (2 steps, AdamW's decay included) and moves
    after, the teacher follows the student."""
    c = jc.load_file("dino", "smoke_vit")
    assert c.loss.warmup_teacher_temp_steps == 2 and c.model.freeze_prototypes_steps == 2
    states, logs = _run(c, 4)
    np.testing.assert_allclose(
        [m["teacher_temp"] for m in logs], [0.04, 0.055, 0.07, 0.07], rtol=1e-6
    )
    assert all(np.isfinite(m["loss"]) for m in logs)
    protos = [s.params["prototypes"] for s in states]
    for a in protos[1:3]:
        for x, y in zip(jax.tree_util.tree_leaves(protos[0]), jax.tree_util.tree_leaves(a)):
            np.testing.assert_array_equal(x, y)
    assert _changed(protos[2], protos[3])
    assert _changed(states[0].params["backbone"], states[1].params["backbone"])
    assert _changed(states[0].extras["target"]["params"], states[-1].extras["target"]["params"])


def test_stochastic_depth_drops_in_the_student_only():
    c = jc.load_file("dino", "smoke_vit")
    s = pretrain.setup(c)
    assert s.model.backbone.drop_path == 0.1 and s.target_model.backbone.drop_path == 0.0
    # The online network's loss depends on the drop-path draw: rate 0 gives another loss.
    (_, logs_drop) = _run(c, 1)
    c0 = jc.load_file("dino", "smoke_vit")
    c0.model.drop_path = 0.0
    (_, logs_none) = _run(c0, 1)
    assert abs(float(logs_drop[0]["loss"]) - float(logs_none[0]["loss"])) > 1e-4


def test_dino_teacher_temperature_fields_are_checked():
    c = jc.load_file("dino", "smoke_vit")
    c.loss.warmup_teacher_temp_steps = -1
    with pytest.raises(jc.ConfigError, match=r"config\.loss\.warmup_teacher_temp_steps"):
        methods.validate(c)
    c.loss.warmup_teacher_temp_steps, c.loss.warmup_teacher_temp = 2, 0.0
    with pytest.raises(jc.ConfigError, match=r"config\.loss\.warmup_teacher_temp: .*e\.g\. 0\.04"):
        methods.validate(c)


def test_imagenet_vit_preset_is_the_papers_vit_s16_recipe():
    c = jc.load_file("dino", "imagenet_vit")
    jc.validate(c, num_devices=8)
    methods.validate(c)
    steps_per_epoch = 1281167 // 1024
    assert (c.data.name, c.data.image_size, c.batch_size) == ("imagenet2012", 224, 1024)
    assert (c.model.backbone, c.model.patch_size, c.model.drop_path) == ("vit_small", 16, 0.1)
    assert c.total_steps == 100 * steps_per_epoch
    o = c.optimizer
    assert (o.name, o.lr, o.scale_lr_with_batch, o.clip_grad_norm) == ("adamw", 5e-4, True, 3.0)
    assert (o.weight_decay, o.final_weight_decay, o.warmup_steps) == (
        0.04,
        0.4,
        10 * steps_per_epoch,
    )
    assert (c.loss.warmup_teacher_temp, c.loss.teacher_temp) == (0.04, 0.07)
    assert c.loss.warmup_teacher_temp_steps == 30 * steps_per_epoch
    assert (c.ema.base_momentum, c.ema.final_momentum) == (0.996, 1.0)
    assert c.model.freeze_prototypes_steps == steps_per_epoch
    assert (c.model.num_prototypes, c.model.projector_dim) == (65536, 256)
    a = c.augment
    assert (a.view1.crop_size, a.num_small_crops, a.small_view.crop_size) == (224, 10, 96)
    assert tuple(a.view1.crop_scale) == (0.4, 1.0) and tuple(a.small_view.crop_scale) == (0.05, 0.4)
    assert (a.view1.blur_prob, a.view2.blur_prob, a.view2.solarize_prob) == (1.0, 0.1, 0.2)


@pytest.mark.parametrize("preset", ["cifar10_vit", "vit"])
def test_dino_vit_presets_are_valid(preset):
    c = jc.load_file("dino", preset)
    jc.validate(c, num_devices=8)
    methods.validate(c)
    assert c.optimizer.final_weight_decay == 0.4 and c.model.backbone.startswith("vit")


@pytest.mark.parametrize(
    "name,preset", [("dino", "smoke_vit"), ("mocov3", "smoke_vit"), ("mae", "smoke")]
)
def test_vit_methods_one_device_equals_eight(name, preset):
    """DINO (drop path and multi-crop), MoCo v3 (frozen patch embedding) and MAE (random
    masking) on a ViT: the same losses on 1 and on 8 devices."""
    c = jc.load_file(name, preset)
    _, logs1 = _run(c, 2, devices=jax.devices()[:1])
    _, logs8 = _run(c, 2)
    np.testing.assert_allclose(
        [m["loss"] for m in logs1], [m["loss"] for m in logs8], rtol=2e-4, atol=1e-5
    )


def test_the_dropout_stream_is_apart_from_the_split_keys():
    """JAX's fold_in(k, i) equals split(k, n)[i]: the stochastic-depth key must not be one
    of the keys the views, masks and mixing take from the step's key."""
    from jssl.methods.common import TrainState, dropout_key, step_key

    state = TrainState(
        step=jnp.asarray(7), params={}, batch_stats={}, opt_state=(), rng=jax.random.PRNGKey(1)
    )
    assert np.array_equal(
        jax.random.fold_in(step_key(state), 1), jax.random.split(step_key(state), 4)[1]
    )
    keys = np.asarray(jax.random.split(step_key(state), 64))
    assert not np.any(np.all(keys == np.asarray(dropout_key(state)), axis=1))
