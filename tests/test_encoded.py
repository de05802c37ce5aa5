"""Encoded images of varying size (issue 18's input path): TFDS sets read undecoded, image
folders of mixed sizes, crops cut on the host inside the training stream, and the
evaluation view (Resize + CenterCrop)."""

from __future__ import annotations

import io
import json
import os

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from jssl import augment, parallel, train
from jssl.data import pipeline
from jssl.data.crops import CropSpec, HostCropper, decode_center, decode_crops, window_rng
from jssl.data.encoded import EncodedSource
from jssl.data.sources import get_source
from jssl.errors import ConfigError
from jssl.methods.common import TrainState, batch_views, make_views
from tests.shared import (
    JPEG_SIZES,
    jpeg_bytes,
    jpeg_record,
    mock_jpeg_tfds,
    read_metrics,
    smoke,
    write_jpeg_folder,
)


def _reference_center(data: bytes, size: int, crop_pct: float) -> np.ndarray:
    """torchvision's Resize(floor(size / crop_pct)) + CenterCrop(size) on a PIL image, in
    two steps (resize, then crop), as torchvision does it."""
    img = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = img.size
    short = int(size / crop_pct)
    new = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
    img = img.resize(new, Image.Resampling.BILINEAR)
    left, top = int(round((new[0] - size) / 2)), int(round((new[1] - size) / 2))
    return np.asarray(img.crop((left, top, left + size, top + size)))


@pytest.mark.parametrize("hw", [(40, 60), (90, 30), (600, 800)])
def test_decode_center_is_resize_then_center_crop(hw):
    data = jpeg_bytes(3, *hw)
    got = decode_center(data, 24, 0.875)
    ref = _reference_center(data, 24, 0.875)
    assert got.shape == ref.shape == (24, 24, 3) and got.dtype == np.uint8
    # One resize of the window against resize-then-crop (and, at 600 x 800, a reduced
    # JPEG decode): the same picture up to resampling, a few levels of 255.
    diff = np.abs(got.astype(int) - ref.astype(int))
    assert diff.mean() < 4, diff.mean()
    # crop_pct 1: the whole centre square of the shorter side.
    full = decode_center(data, 24, 1.0)
    assert np.abs(full.astype(int) - _reference_center(data, 24, 1.0).astype(int)).mean() < 4


# --- TFDS: a set prepared on disk with JPEG images of several sizes (no TensorFlow). ---


class JsslJpegTestSet(tfds.core.GeneratorBasedBuilder):
    """12 train + 6 validation JPEGs of the `JPEG_SIZES`, encoded as stored by TFDS."""

    __module__ = "jssl_test_encoded"  # see JsslTinyTestSet in test_sources.py
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(encoding_format="jpeg"),
                    "label": tfds.features.ClassLabel(names=["a", "b", "c"]),
                }
            ),
        )

    def _split_generators(self, dl_manager):
        return {
            "train": self._generate_examples(range(12)),
            "validation": self._generate_examples(range(100, 106)),
        }

    def _generate_examples(self, keys):
        for k in keys:
            yield k, {"image": io.BytesIO(jpeg_record(k, 3)["image"]), "label": k % 3}


@pytest.fixture(scope="module")
def jpeg_dir(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("tfds_jpeg"))
    JsslJpegTestSet(data_dir=root, file_format="array_record").download_and_prepare()
    return root


def test_tfds_images_of_varying_size_are_read_undecoded(jpeg_dir):
    src = get_source(
        "jssl_jpeg_test_set", "train", data_dir=jpeg_dir, image_size=20, crop_pct=0.875
    )
    assert isinstance(src, EncodedSource) and src.variable_size
    assert len(src) == 12 and src.num_classes == 3 and src.class_names == ("a", "b", "c")
    assert src.image_shape == (20, 20, 3)
    datas, labels = src.read_encoded(np.arange(12))
    # TFDS shuffles the records on disk: match each to the JPEG it was written from.
    by_bytes = {jpeg_record(k, 3)["image"]: k for k in range(12)}
    keys = [by_bytes[d] for d in datas]  # the stored bytes, untouched
    assert sorted(keys) == list(range(12))
    np.testing.assert_array_equal(labels, [k % 3 for k in keys])
    sizes = {Image.open(io.BytesIO(d)).size for d in datas}
    assert len(sizes) == len(JPEG_SIZES)  # the original sizes reach the host crops
    images, labels2 = src.read(np.array([3, 0, 3]))
    assert images.shape == (3, 20, 20, 3) and images.dtype == np.uint8
    np.testing.assert_array_equal(images[1], decode_center(datas[0], 20, 0.875))
    np.testing.assert_array_equal(images[0], images[2])
    np.testing.assert_array_equal(labels2, labels[[3, 0, 3]])
    sliced = get_source("jssl_jpeg_test_set", "train[:50%]", data_dir=jpeg_dir, image_size=20)
    assert len(sliced) == 6


def test_mock_imagenet_reads_jpeg_records():
    with mock_jpeg_tfds(num_examples=10, num_classes=1000):
        src = get_source("imagenet2012", "train", image_size=16, crop_pct=0.875)
        assert isinstance(src, EncodedSource) and src.num_classes == 1000
        images, labels = src.read(np.arange(10))
    assert images.shape == (10, 16, 16, 3)
    np.testing.assert_array_equal(labels, np.arange(10))
    np.testing.assert_array_equal(
        images[4], decode_center(jpeg_record(4, 1000)["image"], 16, 0.875)
    )


# --- Image folders ---


def test_folder_of_mixed_sizes_hands_out_its_files(tmp_path):
    root = write_jpeg_folder(tmp_path / "mixed")
    src = get_source(f"folder:{root}", "train+validation", image_size=20, crop_pct=0.875)
    assert src.variable_size and src.image_shape == (20, 20, 3)
    datas, labels = src.read_encoded(np.arange(len(src)))
    files = {}
    for c in range(3):
        for name in os.listdir(os.path.join(root, f"c{c}")):
            with open(os.path.join(root, f"c{c}", name), "rb") as f:
                files[f.read()] = c
    assert all(files[d] == y for d, y in zip(datas, labels))
    images, _ = src.read(np.array([0]))
    np.testing.assert_array_equal(images[0], _reference_folder(datas[0], 20, 0.875))
    # The same folder read at another evaluation size is another source.
    assert get_source(f"folder:{root}", "train", image_size=12).image_shape == (12, 12, 3)


def _reference_folder(data, size, crop_pct):
    return _reference_center(data, size, crop_pct)


def test_folder_of_one_size_is_not_variable(tmp_path):
    root = tmp_path / "same"
    for c in range(2):
        os.makedirs(root / f"c{c}")
        for i in range(5):
            (root / f"c{c}" / f"{i}.jpg").write_bytes(jpeg_bytes(10 * c + i, 30, 30))
    src = get_source(f"folder:{root}", "train", image_size=12)
    assert not src.variable_size and src.image_shape == (30, 30, 3)


# --- The training stream with host crops ---


class _Records:
    """An encoded reader over `jpeg_record`s (picklable, for grain's workers)."""

    def __init__(self, n):
        self.records = [jpeg_record(k, 4) for k in range(n)]

    def __len__(self):
        return len(self.records)

    def read_encoded(self, idx):
        return [self.records[i]["image"] for i in idx], np.array(
            [self.records[i]["label"] for i in idx]
        )


def _encoded_source(n=24):
    return EncodedSource(
        "mock", "train", _Records(n), num_classes=4, class_names=None, image_size=16, crop_pct=1.0
    )


def test_host_crops_are_a_function_of_seed_step_example_view_on_any_mesh():
    src = _encoded_source()
    specs = [CropSpec(16, (0.2, 1.0)), CropSpec(16, (0.2, 1.0)), CropSpec(8, (0.05, 0.3))]
    out = {}
    for n, cropper in (
        (1, HostCropper(specs, seed=5, workers=3)),
        (8, HostCropper(specs, seed=5, workers=1)),
        ("grain", pipeline.GrainCrops(tuple(specs), 5, 2)),  # worker processes
    ):
        mesh = parallel.make_mesh(jax.devices()[: 8 if n == "grain" else n])
        stream = pipeline.TrainBatches(src, batch_size=16, seed=5, mesh=mesh, cropper=cropper)
        out[n] = [jax.tree_util.tree_map(np.asarray, b) for b in stream(2, 5)]
        cropper.close()
    assert len(out["grain"]) == 3
    for a, b, g in zip(out[1], out[8], out["grain"]):
        jax.tree_util.tree_map(np.testing.assert_array_equal, a, g)
        assert set(a) == {"crops", "label"}
        assert [c.shape for c in a["crops"]] == [(16, 16, 16, 3), (16, 16, 16, 3), (16, 8, 8, 3)]
        jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)
    # Batch of step 3 (the second yielded): each crop is decode_crops of its example with the
    # windows of (seed, step, example, view).
    idx = pipeline.batch_indices(3, batch_size=16, num_examples=24, seed=5)
    for row in (0, 7, 15):
        rngs = [window_rng(5, 3, idx[row], v) for v in range(3)]
        want = decode_crops(jpeg_record(int(idx[row]), 4)["image"], specs, rngs)
        for v in range(3):
            np.testing.assert_array_equal(out[1][1]["crops"][v][row], want[v])
        np.testing.assert_array_equal(out[1][1]["label"][row], idx[row] % 4)
    # The two large views of one example differ, and so does the next step's crop.
    assert not np.array_equal(out[1][0]["crops"][0], out[1][0]["crops"][1])
    assert not np.array_equal(out[1][0]["crops"][0], out[1][1]["crops"][0])


def test_batch_views_on_host_crops_draw_the_same_numbers_as_make_views():
    # A square image and crop_scale (1, 1): the device's crop is the whole image, so both
    # paths must give the same views, op for op, when they use the same keys.
    images = np.random.default_rng(0).integers(0, 256, (6, 12, 12, 3), dtype=np.uint8)
    view = dict(augment.solo_cifar_views("asymmetric", crop_size=12)[0], crop_scale=(1.0, 1.0))
    views = (view, dict(view, solarize_prob=0.5))
    state = TrainState(
        step=np.int32(7), params={}, batch_stats={}, opt_state=(), rng=jax.random.PRNGKey(3)
    )
    device = make_views(state, images, views)
    host = batch_views(state, {"crops": (images, images)}, views)
    for d, h in zip(device, host):
        np.testing.assert_allclose(np.asarray(d), np.asarray(h), atol=2e-5)
    with pytest.raises(ValueError, match="cropped images must be crop_size x crop_size = 12"):
        augment.augment_view(jax.random.PRNGKey(0), images[:, :8, :8], view, cropped=True)


def test_crop_on_chooses_and_refuses_in_one_line():
    c = smoke("simclr")
    views = (c.augment.view1, c.augment.view2)
    fixed, encoded = get_source("digits_embedded", "train"), _encoded_source()
    assert pipeline.crop_specs(c, fixed, views) is None  # auto, fixed size: on the device
    specs = pipeline.crop_specs(c, encoded, views)
    assert specs == [CropSpec(16, tuple(c.augment.view1.crop_scale))] * 2
    assert pipeline.crop_specs(c, encoded, ()) is None  # a method that crops on the device
    c.data.crop_on = "device"
    assert pipeline.crop_specs(c, encoded, views) is None
    c.data.crop_on = "host"
    with pytest.raises(ConfigError, match=r"^config.data.crop_on: 'host' needs stored image"):
        pipeline.crop_specs(c, fixed, views)
    bad = smoke("fkt", **{"data.crop_on": "host"})
    with pytest.raises(ConfigError, match=r"^config.data.crop_on: the joint method crops on"):
        train.setup(bad, "/nonexistent/never/written")
    for field, value in (("crop_on", "gpu"), ("workers", -1), ("crop_pct", 1.5)):
        bad = smoke("simclr", **{f"data.{field}": value})
        with pytest.raises(ConfigError, match=rf"^config.data.{field}: must"):
            train.setup(bad, "/nonexistent/never/written")


def _imagenette_smoke(**overrides):
    c = smoke(
        "simclr",
        **{
            "data.name": "imagenette",
            "data.train_split": "train",
            "data.workers": 2,
            "eval.train_split": "train",
            "eval.val_split": "validation",
            "eval.test_split": "validation",
            "eval.max_examples": 32,
            "eval.knn_k": 5,
            "batch_size": 16,
            "total_steps": 4,
            "log_every": 1,
            "checkpoint_every": 2,
            **overrides,
        },
    )
    return c


def test_pretraining_on_encoded_images_crops_on_the_host_and_resumes_exactly(tmp_path):
    import shutil

    c = _imagenette_smoke()
    with mock_jpeg_tfds(num_examples=40):
        r = train.train_and_evaluate(c, str(tmp_path / "full"))  # 8 devices
        # The same run stopped after its step-2 checkpoint, then resumed.
        shutil.copytree(tmp_path / "full", tmp_path / "part")
        shutil.rmtree(tmp_path / "part" / "checkpoints" / "4")
        r2 = train.train_and_evaluate(c, str(tmp_path / "part"))
        # On one device, decoded in grain's worker processes: the same crops, the same step.
        c1 = _imagenette_smoke(**{"eval.random_init_baseline": False, "data.backend": "grain"})
        train.train_and_evaluate(c1, str(tmp_path / "one"), devices=jax.devices()[:1])
    assert r["train_step_compilations"] == 1 and r2["resumed_from_step"] == 2
    assert r2["train_step_compilations"] == 1
    full, part = read_metrics(tmp_path / "full"), read_metrics(tmp_path / "part")
    assert [m["step"] for m in full] == [1, 2, 3, 4] == [m["step"] for m in part]
    assert np.isfinite([m["loss"] for m in full]).all()
    for a, b in zip(full, part):
        assert a["loss"] == b["loss"] and a["grad_norm"] == b["grad_norm"], (a, b)
    one = read_metrics(tmp_path / "one")
    np.testing.assert_allclose([m["loss"] for m in one], [m["loss"] for m in full], rtol=1e-5)
    assert 0.0 <= r["eval"]["knn_accuracy"] <= 1.0
    assert "online/linear_acc" in r["eval"], sorted(r["eval"])
    with open(tmp_path / "full" / "config.json") as f:
        assert json.load(f)["data"]["crop_on"] == "auto"
