"""Config presets and validation: each user mistake is one ConfigError naming the field."""

import os

import pytest

from jssl import config as jc
from jssl import methods

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The pretext zoo: every shipped config that declares ZOO (a new method's config joins it).
CONFIGS = sorted({jc.split_row(row)[0] for row in jc.zoo()})
load = jc.load_file


def test_the_zoo_is_derived_from_the_configs():
    assert {"simclr", "barlow_twins", "nnclr", "jigsaw_pp", "rotation"} <= set(CONFIGS)
    assert not {"fkt", "metamask", "fusion", "transfer"} & set(CONFIGS)  # not zoo rows
    assert jc.zoo()["nnclr"] == {"reference": 91.88}
    assert jc.zoo()["supcon"]["note"] == "uses the labels"
    # The files live in the package (configs/ is a link), so any installation finds them.
    assert os.path.realpath(os.path.join(ROOT, "configs")) == os.path.realpath(jc.CONFIG_DIR)
    assert jc.config_file("simclr").startswith(jc.CONFIG_DIR)
    with pytest.raises(
        jc.ConfigError, match="no config file configs/nope.py; choose one of barlow_twins, byol"
    ):
        jc.config_file("nope")


@pytest.mark.parametrize("name", CONFIGS + ["fkt", "metamask", "transfer"])
@pytest.mark.parametrize("preset", ["", "smoke", "cifar10"])
def test_presets_are_valid(name, preset):
    c = load(name, preset)
    jc.validate(c, num_devices=8)
    methods.validate(c)
    for field in (
        "batch_size",
        "total_steps",
        "log_every",
        "checkpoint_every",
        "eval_every",
        "seed",
        "dtype",
    ):
        assert field in c
    assert c.data.name and c.model.backbone


def test_cifar10_preset_is_solo_learn_recipe():
    c = load("barlow_twins", "cifar10")
    assert (c.data.name, c.model.backbone, c.model.stem) == ("cifar10", "resnet18", "cifar")
    assert c.batch_size == 256 and c.optimizer.name == "lars" and c.optimizer.lr == 0.3
    assert c.loss.lambd == 0.0051 and c.loss.scale == 0.1
    assert c.augment.view1.solarize_prob == 0.0 and c.augment.view2.solarize_prob == 0.2
    s = load("simclr", "cifar10")
    assert s.loss.temperature == 0.2 and s.model.projector_dim == 256 and s.optimizer.lr == 0.4


def test_unknown_preset_lists_the_files_presets():
    with pytest.raises(jc.ConfigError, match="unknown preset 'nope'.*smoke"):
        load("barlow_twins", "nope")
    with pytest.raises(jc.ConfigError, match="choose one of smoke, compare, compare_smoke, or no"):
        load("fusion", "cifar10")


def test_config_group_refuses_unknown_fields():
    group = jc.config_group("demo_config", {"a": 1, "b": 2}, {"b": 3})
    assert group.to_dict() == {"a": 1, "b": 3}
    with pytest.raises(KeyError, match="demo_config: unknown field 'c'; fields: a, b"):
        jc.config_group("demo_config", {"a": 1, "b": 2}, {"c": 3})
    with pytest.raises(KeyError, match="view_config: unknown field 'size'"):
        jc.view_config(size=3)


def _method_error(name, mutate, match):
    c = load(name, "smoke")
    with c.unlocked():
        mutate(c)
    with pytest.raises(jc.ConfigError, match=match) as e:
        methods.validate(c)
    assert "\n" not in str(e.value)


def test_fields_a_method_never_reads_are_refused():
    """A value set where the method never looks would be silently ignored: refused instead."""
    _method_error(
        "jigsaw",
        lambda c: setattr(c, "queue_size", 64),
        r"config\.queue_size: the puzzle method never reads it \(got 64\); set 0",
    )
    _method_error(
        "rotation",
        lambda c: setattr(c.ema, "base_momentum", 0.99),
        r"config\.ema\.base_momentum: the puzzle method never reads it",
    )
    _method_error(
        "transfer",
        lambda c: setattr(c.augment.view2, "solarize_prob", 0.2),
        r"config\.augment\.view2: the transfer method never reads it .*set it equal "
        r"to augment\.view1",
    )
    _method_error(
        "transfer",
        lambda c: setattr(c, "queue_size", 64),
        r"config\.queue_size: the transfer method never reads it",
    )
    _method_error(
        "fkt",
        lambda c: setattr(c.model, "num_prototypes", 8),
        r"config\.model\.num_prototypes: the joint method never reads it",
    )
    # Pretrain: method state that the objective does not use.
    _method_error(
        "simclr",
        lambda c: setattr(c.ema, "base_momentum", 0.99),
        r"config\.ema\.base_momentum: loss 'nt_xent' has no target; set it to 0",
    )
    _method_error(
        "simclr",
        lambda c: setattr(c, "queue_size", 64),
        r"config\.queue_size: loss 'nt_xent' has no queue",
    )


def test_queue_rules_belong_to_their_objective():
    """MoCo writes the keys of both views per step, NNCLR the first view's projections: the
    queue must hold whole steps of each (the rule lives with the pretext, not in
    jssl.config.validate)."""
    _method_error(
        "mocov2",
        lambda c: setattr(c, "queue_size", 96),
        r"config\.queue_size: 96 is not a multiple of 64 \(each step enqueues the keys "
        r"of both views\); use 64",
    )
    _method_error(
        "nnclr",
        lambda c: setattr(c, "queue_size", 48),
        r"config\.queue_size: 48 is not a multiple of 32 \(each step enqueues the "
        r"first view's projections\); use 32",
    )
    c = load("nnclr", "smoke")
    c.queue_size = 96  # 3 steps of 32 rows: fine for NNCLR (not for MoCo)
    jc.validate(c, num_devices=8)
    methods.validate(c)


def _bad(mutate, match, num_devices=8, known=None):
    c = load("barlow_twins", "smoke")
    with c.unlocked():
        mutate(c)
    with pytest.raises(jc.ConfigError, match=match) as e:
        jc.validate(c, num_devices=num_devices, known=known)
    assert "\n" not in str(e.value)


def test_validation_errors_name_the_field():
    _bad(
        lambda c: setattr(c, "batch_size", 30),
        r"config\.batch_size: 30 is not divisible by the 8 devices",
    )
    _bad(lambda c: setattr(c, "total_steps", 0), r"config\.total_steps: must be a positive integer")
    _bad(lambda c: setattr(c, "total_steps", -5), r"config\.total_steps")
    _bad(lambda c: setattr(c, "dtype", "float16"), r"config\.dtype")
    _bad(  # the suite runs without 64-bit jax
        lambda c: setattr(c, "dtype", "float64"),
        r"config\.dtype: float64 needs 64-bit jax: set JAX_ENABLE_X64=1",
    )
    _bad(lambda c: setattr(c.optimizer, "lr", -1.0), r"config\.optimizer\.lr")
    _bad(lambda c: setattr(c.optimizer, "b2", 1.0), r"config\.optimizer\.b2: must be in \(0, 1\)")
    _bad(lambda c: setattr(c.optimizer, "warmup_steps", 100), r"config\.optimizer\.warmup_steps")

    def small_image(c):
        c.model.backbone, c.model.stem = "resnet18", "imagenet"
        c.data.image_size = c.augment.view1.crop_size = c.augment.view2.crop_size = 16

    _bad(
        small_image,
        r"config\.data\.image_size: 16 is too small for resnet18 with the imagenet stem; "
        r"use at least 32",
    )
    _bad(lambda c: setattr(c.augment.view2, "crop_size", 20), r"config\.augment\.view2\.crop_size")
    _bad(
        lambda c: setattr(c.model, "backbone", "resnet19"),
        r"config\.model\.backbone: unknown value 'resnet19'; choose one of convnet, resnet18",
        known={"model.backbone": ["resnet18", "convnet"]},
    )

    def drop(c):
        del c.eval["knn_k"]

    _bad(drop, r"config\.eval\.knn_k: missing")


def test_experiment_fields_ignore_run_control():
    a, b = load("barlow_twins"), load("barlow_twins")
    b.log_every, b.checkpoint_every, b.eval.knn_k = 7, 11, 3
    assert jc.experiment_fields(a) == jc.experiment_fields(b)
    b.loss.lambd = 0.01
    assert jc.experiment_fields(a) != jc.experiment_fields(b)


def test_barlow_twins_mnistm_preset_is_the_default_on_the_colour_digits():
    """configs/barlow_twins.py:mnistm (the calibration run of README "Data") is the
    embedded default with `mnistm_preset` applied, nothing else."""
    got = load("barlow_twins", "mnistm")
    want = load("barlow_twins", "")
    jc.mnistm_preset(want)
    assert got.to_dict() == want.to_dict()
    assert got.data.name == "mnistm_embedded" and got.augment.view1.mean == jc.MNISTM_MEAN
    jc.validate(got, num_devices=8)
