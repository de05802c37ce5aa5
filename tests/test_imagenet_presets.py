"""The `imagenet` (ResNet-50, ImageNet-1k) and `imagenette` (one accelerator) presets of the
seven ResNet recipes: their recipe fields, and a smoke run of each at tiny sizes on mock
TFDS data of real JPEGs of several sizes, the views cut on the host."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from jssl import config as jc
from jssl import methods, parallel, train
from jssl.data import pipeline, sources
from jssl.data.crops import HostCropper
from tests.shared import mock_jpeg_tfds

# file -> (global batch, epochs, large crop scale, small crops) of its imagenet preset.
RECIPES = {
    "simclr": (4096, 100, (0.08, 1.0), 0),
    "byol": (2048, 100, (0.08, 1.0), 0),
    "barlow_twins": (256, 100, (0.08, 1.0), 0),
    "vicreg": (2048, 1000, (0.08, 1.0), 0),
    "mocov3": (4096, 100, (0.2, 1.0), 0),
    "swav": (4096, 800, (0.14, 1.0), 6),
    "dino": (512, 100, (0.14, 1.0), 8),
}


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_imagenet_preset_fields(name):
    batch, epochs, scale, small = RECIPES[name]
    c = jc.load_file(name, "imagenet")
    steps = jc.IMAGENET_TRAIN_IMAGES // batch
    assert c.data.name == "imagenet2012" and c.data.crop_on == "auto"
    assert (c.model.backbone, c.model.stem, c.model.num_filters) == ("resnet50", "imagenet", 64)
    assert c.batch_size == batch and c.total_steps == epochs * steps
    assert c.optimizer.warmup_steps == 10 * steps
    assert c.data.image_size == c.augment.view1.crop_size == c.augment.view2.crop_size == 224
    assert tuple(c.augment.view1.crop_scale) == scale and c.augment.num_small_crops == small
    if small:
        assert c.augment.small_view.crop_size == 96
        assert tuple(c.augment.small_view.crop_scale) == (0.05, 0.14)
    assert tuple(c.augment.view1.mean) == jc.IMAGENET_MEAN
    assert c.eval.test_split == "validation" and c.online_probe.enabled
    with mock_jpeg_tfds(num_examples=batch, num_classes=1000):
        train.setup(c, "/nonexistent/never/written")  # every check of the full-size run
    nette = jc.load_file(name, "imagenette")
    assert nette.data.name == "imagenette" and nette.model.backbone == "resnet18"
    assert nette.batch_size == 256 and nette.total_steps == 200 * (9469 // 256)
    assert nette.augment.num_small_crops == small and nette.loss.to_dict() == c.loss.to_dict()


def _tiny(c):
    """The preset at test sizes: 32 px (16 px small crops, at most 2 of them), the small
    ConvNet (the ResNet-50 and its stem compile for 30 s on this CPU; the full-size preset
    is validated without compiling by `test_imagenet_preset_fields`), small heads, 2 steps,
    a quick evaluation. The recipe's losses, optimizer, schedules and augmentation stay."""
    c.data.image_size = c.augment.view1.crop_size = c.augment.view2.crop_size = 32
    c.augment.small_view.crop_size = 16
    c.augment.num_small_crops = min(2, c.augment.num_small_crops)
    c.data.workers = 2
    c.model.backbone, c.model.num_filters = "convnet", 8
    hidden = len(c.model.projector_hidden_dims)
    c.model.projector_hidden_dims, c.model.projector_dim = (32,) * hidden, 16
    if c.model.predictor_dim:
        c.model.predictor_hidden_dims, c.model.predictor_dim = (32,), 16
    if c.model.num_prototypes:
        c.model.num_prototypes, c.model.freeze_prototypes_steps = 32, 1
    c.batch_size, c.total_steps, c.log_every, c.checkpoint_every = 16, 2, 1, 2
    c.optimizer.warmup_steps = 1
    c.eval.max_examples, c.eval.knn_k, c.eval.batch_size = 32, 5, 16
    c.eval.linear_max_steps = 10
    c.eval.random_init_baseline = False
    c.progress = False
    return c


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_imagenet_preset_steps_on_mock_jpegs(name):
    """Two steps of the preset's method on host-cut crops of mock imagenet2012 JPEGs: the
    loss is finite, every parameter group moves, the step compiles once. (The loop, its
    evaluation and resume on host crops are tested in test_encoded.py.)"""
    c = _tiny(jc.load_file(name, "imagenet"))
    with mock_jpeg_tfds(num_examples=40, num_classes=1000):
        source = sources.config_source(c, c.data.train_split)
        mesh = parallel.make_mesh()
        method = methods.build(c, methods.DataInfo(source.num_classes, source.image_shape), mesh)
        specs = pipeline.crop_specs(c, source, method.host_views)
        assert source.variable_size and len(specs) == 2 + c.augment.num_small_crops
        cropper = HostCropper(specs, seed=c.seed, workers=2)
        stream = pipeline.TrainBatches(
            source, batch_size=c.batch_size, seed=c.seed, mesh=mesh, cropper=cropper
        )
        repl, data = parallel.replicated(mesh), parallel.batch_sharding(mesh)
        step = jax.jit(method.train_step, in_shardings=(repl, data), out_shardings=(repl, repl))
        state = jax.jit(method.init, out_shardings=repl)(jax.random.PRNGKey(0))
        first = state
        losses = []
        for batch in stream(0, 2):
            assert [x.shape[1] for x in batch["crops"]] == [s.size for s in specs]
            state, metrics = step(state, batch)
            losses.append(float(metrics["loss"]))
        cropper.close()
    assert np.isfinite(losses).all() and step._cache_size() == 1
    moved = jax.tree_util.tree_map(
        lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))), first.params, state.params
    )
    assert moved["backbone"] and all(jax.tree_util.tree_leaves(moved["backbone"]))


def test_imagenette_preset_validates_on_mock_jpegs(tmp_path):
    c = _tiny(jc.load_file("byol", "imagenette"))
    with mock_jpeg_tfds(num_examples=40, num_classes=10):
        train.setup(c, str(tmp_path / "nette"))
        assert sources.config_source(c, "train").num_classes == 10
