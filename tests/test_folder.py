"""The image-folder source (`data.name=folder:<path>`), on small folders of PNGs written here."""

import os

import numpy as np
import pytest
from PIL import Image

from jssl.data import folder, sources
from jssl.data.sources import DataError, get_source

CLASSES = ("cat", "dog", "frog")


def _write(path, array):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path)


def _image(rng, h=12, w=12, c=3):
    shape = (h, w, c) if c == 3 else (h, w)
    return rng.integers(0, 256, shape, dtype=np.uint8)


@pytest.fixture()
def classes_dir(tmp_path):
    """<root>/<class>/<i>.png: 10 RGB images per class, with their pixels kept for checks."""
    rng = np.random.default_rng(0)
    root = tmp_path / "flat"
    pixels = {}
    for c in CLASSES:
        for i in range(10):
            arr = _image(rng)
            path = str(root / c / f"{i:02d}.png")
            _write(path, arr)
            pixels[path] = arr
    (root / "cat" / "notes.txt").write_text("not an image")
    return str(root), pixels


def test_one_folder_of_classes_is_split_like_the_embedded_sets(classes_dir):
    root, pixels = classes_dir
    name = f"folder:{root}"
    splits = {s: get_source(name, s) for s in ("train", "validation", "test", "train+validation")}
    train, val, test = splits["train"], splits["validation"], splits["test"]
    assert (len(train), len(val), len(test)) == (21, 3, 6)  # per class: 7 / 1 / 2
    assert len(splits["train+validation"]) == 24
    for src in splits.values():
        assert src.num_classes == 3 and src.class_names == CLASSES
        assert src.image_shape == (12, 12, 3)
    for src, per_class in ((train, 7), (val, 1), (test, 2)):
        np.testing.assert_array_equal(
            np.bincount(src.read(np.arange(len(src)))[1]), [per_class] * 3
        )
    files = [set(p for p, _ in s._files) for s in (train, val, test)]
    assert not (files[0] & files[1] or files[0] & files[2] or files[1] & files[2])
    assert set.union(*files) == set(pixels)
    # Pixels and labels are the files' own.
    images, labels = test.read(np.arange(len(test)))
    for (path, label), img, lab in zip(test._files, images, labels):
        np.testing.assert_array_equal(img, pixels[path])
        assert CLASSES[lab] == os.path.basename(os.path.dirname(path))
    # Deterministic: a second build (cache cleared) picks the same files.
    folder._layout.cache_clear()
    folder._cached.cache_clear()
    again = get_source(name, "test")
    assert again._files == test._files


def test_split_folders_slices_and_grayscale(tmp_path):
    rng = np.random.default_rng(1)
    root = tmp_path / "intel"
    for split, n in (("seg_train", 8), ("seg_test", 3)):
        for c in CLASSES[:2] if split == "seg_test" else CLASSES:
            for i in range(n):
                _write(str(root / split / c / f"{i}.png"), _image(rng, 9, 9, 1))
    name = f"folder:{root}"
    train, test = get_source(name, "seg_train"), get_source(name, "seg_test")
    assert (len(train), len(test)) == (24, 6) and train.image_shape == (9, 9, 1)
    # Labels follow the full class list even where a split lacks a class.
    assert test.num_classes == 3 and set(test.labels) == {0, 1}
    head, tail = get_source(name, "seg_train[:75%]"), get_source(name, "seg_train[75%:]")
    assert (len(head), len(tail)) == (18, 6)
    assert not set(head._files) & set(tail._files)
    assert set(head._files) | set(tail._files) == set(train._files)
    assert len(set(tail.labels)) > 1  # a slice of a permutation, not of the class-sorted list
    assert len(get_source(name, "seg_train+seg_test")) == 30
    with pytest.raises(DataError, match="seg_test, seg_train"):
        get_source(name, "validation")


def test_mixed_sizes_are_resized_to_the_default_square(tmp_path):
    rng = np.random.default_rng(2)
    root = tmp_path / "mixed"
    _write(str(root / "a" / "wide.png"), _image(rng, 20, 40))
    _write(str(root / "a" / "tall.png"), _image(rng, 50, 30))
    _write(str(root / "b" / "small.png"), _image(rng, 10, 10))
    src = get_source(f"folder:{root}", "train+validation+test")
    assert src.image_shape == (folder.DEFAULT_SIZE, folder.DEFAULT_SIZE, 3)
    images, _ = src.read(np.arange(len(src)))
    assert images.shape == (3, folder.DEFAULT_SIZE, folder.DEFAULT_SIZE, 3)
    # A constant image stays constant through resize + centre crop.
    _write(str(root / "b" / "flat.png"), np.full((30, 60, 3), 77, np.uint8))
    folder._layout.cache_clear(), folder._storage.cache_clear(), folder._cached.cache_clear()
    src = get_source(f"folder:{root}", "train+validation+test")
    flat = [i for i, (p, _) in enumerate(src._files) if p.endswith("flat.png")][0]
    assert np.all(src.read(np.array([flat]))[0] == 77)


def test_lazy_reads_match_preloaded(classes_dir, monkeypatch):
    root, _ = classes_dir
    preloaded = folder.FolderSource(root, "train")
    monkeypatch.setattr(folder, "PRELOAD_BYTES", 0)
    lazy = folder.FolderSource(root, "train")
    assert lazy._images is None and preloaded._images is not None
    idx = np.array([5, 0, 5, 20])
    for a, b in zip(lazy.read(idx), preloaded.read(idx)):
        np.testing.assert_array_equal(a, b)


def test_folder_errors_are_one_line(tmp_path):
    with pytest.raises(DataError, match="no such folder"):
        get_source(f"folder:{tmp_path / 'missing'}", "train")
    with pytest.raises(DataError, match="give the path"):
        get_source("folder:", "train")
    os.makedirs(tmp_path / "empty" / "a")
    with pytest.raises(DataError, match="no image files"):
        get_source(f"folder:{tmp_path / 'empty'}", "train")
    bad = tmp_path / "bad"
    os.makedirs(bad / "a")
    (bad / "a" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="broken.png"):
        get_source(f"folder:{bad}", "train")
    for e in (DataError,):
        assert issubclass(e, ValueError)
    assert sources.DataError is DataError


def test_training_runs_on_a_folder(classes_dir, tmp_path):
    """A smoke pretraining run and its evaluation read the folder end to end."""
    from jssl import train
    from tests.shared import smoke

    root, _ = classes_dir
    c = smoke("simclr", total_steps=2, batch_size=16)
    c.data.name = f"folder:{root}"
    c.data.image_size = 12
    for v in (c.augment.view1, c.augment.view2):
        v.crop_size = 12
    results = train.train_and_evaluate(c, str(tmp_path / "run"))
    assert results["final_step"] == 2
    assert results["eval"]["num_test"] == 6 and 0 <= results["eval"]["knn_accuracy"] <= 1
