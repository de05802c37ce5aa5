"""Config presets and validation: each user mistake is one ConfigError naming the field."""
import importlib.util
import os

import pytest

from jssl import config as jc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = ["simclr", "mocov2", "mocov3", "byol", "simsiam", "barlow_twins", "vicreg", "swav", "dino",
           "wmse", "dcl", "supcon", "rotation", "jigsaw", "jigsaw_pp"]


def load(name, preset=""):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(preset)


@pytest.mark.parametrize("name", CONFIGS + ["fkt"])
@pytest.mark.parametrize("preset", ["", "smoke", "cifar10"])
def test_presets_are_valid(name, preset):
    c = load(name, preset)
    jc.validate(c, num_devices=8)
    for field in ("batch_size", "total_steps", "log_every", "checkpoint_every", "eval_every",
                  "seed", "dtype"):
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


def test_unknown_preset():
    with pytest.raises(jc.ConfigError, match="unknown preset 'nope'.*smoke"):
        load("barlow_twins", "nope")


def _bad(mutate, match, num_devices=8, known=None):
    c = load("barlow_twins", "smoke")
    with c.unlocked():
        mutate(c)
    with pytest.raises(jc.ConfigError, match=match) as e:
        jc.validate(c, num_devices=num_devices, known=known)
    assert "\n" not in str(e.value)


def test_validation_errors_name_the_field():
    _bad(lambda c: setattr(c, "batch_size", 30), r"config\.batch_size: 30 is not divisible by the 8 devices")
    _bad(lambda c: setattr(c, "total_steps", 0), r"config\.total_steps: must be a positive integer")
    _bad(lambda c: setattr(c, "total_steps", -5), r"config\.total_steps")
    _bad(lambda c: setattr(c, "dtype", "float16"), r"config\.dtype")
    _bad(lambda c: setattr(c.optimizer, "lr", -1.0), r"config\.optimizer\.lr")
    _bad(lambda c: setattr(c.optimizer, "warmup_steps", 100), r"config\.optimizer\.warmup_steps")

    def small_image(c):
        c.model.backbone, c.model.stem = "resnet18", "imagenet"
        c.data.image_size = c.augment.view1.crop_size = c.augment.view2.crop_size = 16
    _bad(small_image, r"config\.data\.image_size: 16 is too small for resnet18 with the imagenet stem; use at least 32")
    _bad(lambda c: setattr(c.augment.view2, "crop_size", 20), r"config\.augment\.view2\.crop_size")
    _bad(lambda c: setattr(c.model, "backbone", "resnet19"), r"config\.model\.backbone: unknown value 'resnet19'; choose one of convnet, resnet18",
         known={"model.backbone": ["resnet18", "convnet"]})

    def drop(c):
        del c.eval["knn_k"]
    _bad(drop, r"config\.eval\.knn_k: missing")


def test_experiment_fields_ignore_run_control():
    a, b = load("barlow_twins"), load("barlow_twins")
    b.log_every, b.checkpoint_every, b.eval.knn_k = 7, 11, 3
    assert jc.experiment_fields(a) == jc.experiment_fields(b)
    b.loss.lambd = 0.01
    assert jc.experiment_fields(a) != jc.experiment_fields(b)
