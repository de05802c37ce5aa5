"""Image-folder data sets on disk: ``data.name=folder:<path>``.

The layout is the one torchvision's ImageFolder and the paper data sets on Kaggle use, one
sub-folder per class holding image files (PNG, JPEG, BMP, GIF, TIFF, WebP; read with
Pillow). Two forms:

* **Split folders**: ``<path>/<split>/<class>/<image>`` (e.g. Intel Image's
  ``seg_train`` / ``seg_test``). Each sub-folder of `path` whose entries are all folders
  is a split, named as on disk; ``a+b`` joins splits.
* **One folder of classes**: ``<path>/<class>/<image>``. It is split once, stratified by
  class with a fixed seed, exactly as the embedded sets: ``test`` 20% and ``validation``
  10% of every class, ``train`` the rest, and ``train+validation``.

Any split may be sliced by percent as in TFDS, ``train[:90%]`` and ``train[90%:]``; the
slice is taken over a fixed seeded permutation of the split (not over the class-sorted file
order), so a slice holds every class in about its share and complementary slices are
disjoint.

Classes are the sorted sub-folder names (label = index), the same for every split: a split
that lacks a class still numbers the others as the full list does. `read` returns images
at one size: the common size when every image of the data set has the same one (read from
the file headers only), else the centre `image_size` square of each (`DEFAULT_SIZE` unless
given: the shorter side resized with an antialiasing filter to floor(image_size /
crop_pct), then the centre square; the config passes data.image_size and data.crop_pct).
Channels: 3 (RGB), or 1 when every image is grayscale. Splits up to `PRELOAD_BYTES` are
decoded once into memory; larger ones are decoded per batch. `read_encoded` hands out the
files themselves, for crops cut on the host from the original images
(`jssl.data.crops`); `variable_size` says whether the sizes differ.
"""

from __future__ import annotations

import functools
import math
import os
import re

import numpy as np

from jssl.data.subsets import check_indices, stratified_split
from jssl.errors import DataError

__all__ = ["FolderSource", "folder_source", "IMAGE_EXTENSIONS", "DEFAULT_SIZE"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
DEFAULT_SIZE = 224
PRELOAD_BYTES = 2 << 30
_SPLIT_SEED = 20240521  # fixed: the same files form each split on every run and machine
_SLICE = re.compile(r"^(?P<base>[^\[\]]+)(?P<slice>\[(?P<lo>\d+)?%?:(?P<hi>\d+)?%?\])?$")


def _subdirs(path: str) -> list[str]:
    return sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith("."))


def _images_in(path: str) -> list[str]:
    return sorted(
        e.name
        for e in os.scandir(path)
        if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS)
    )


@functools.cache
def _layout(root: str) -> tuple[tuple[str, ...], dict[str, tuple[tuple[str, int], ...]]]:
    """(class names, {split: ((file, label), ...)}) of the folder data set at `root`."""
    if not os.path.isdir(root):
        raise DataError(
            f"data.name folder:{root}: no such folder; give a folder of class "
            "sub-folders (or of split folders of class sub-folders)"
        )
    top = _subdirs(root)
    if not top:
        raise DataError(f"data.name folder:{root}: no class sub-folders in it")
    # Split folders: every entry of the sub-folder is itself a folder (of a class).
    nested = [
        d for d in top if not _images_in(os.path.join(root, d)) and _subdirs(os.path.join(root, d))
    ]
    if nested and len(nested) == len(top):
        classes = sorted({c for s in top for c in _subdirs(os.path.join(root, s))})
        index = {c: i for i, c in enumerate(classes)}
        splits = {}
        for s in top:
            files = []
            for c in _subdirs(os.path.join(root, s)):
                files += [
                    (os.path.join(root, s, c, f), index[c])
                    for f in _images_in(os.path.join(root, s, c))
                ]
            splits[s] = tuple(files)
    else:
        classes = top
        files = [
            (os.path.join(root, c, f), i)
            for i, c in enumerate(classes)
            for f in _images_in(os.path.join(root, c))
        ]
        labels = np.array([label for _, label in files], np.int64)
        parts = stratified_split(labels, _SPLIT_SEED)
        splits = {k: tuple(files[i] for i in v) for k, v in parts.items()}
    if not any(splits.values()):
        raise DataError(
            f"data.name folder:{root}: no image files ({', '.join(IMAGE_EXTENSIONS)}) "
            "in its class sub-folders"
        )
    return tuple(classes), splits


def _select(root: str, split: str, splits: dict) -> tuple[tuple[str, int], ...]:
    files: list[tuple[str, int]] = []
    for part in split.split("+"):
        m = _SLICE.match(part.strip())
        if not m or m.group("base") not in splits:
            available = sorted(splits) + (
                ["train+validation"] if {"train", "validation"} <= set(splits) else []
            )
            raise DataError(
                f"data split {split!r} of folder:{root}: unknown; available: "
                f"{', '.join(available)} (optionally sliced, e.g. train[:90%])"
            )
        chosen = splits[m.group("base")]
        if m.group("slice"):  # a percent slice over a fixed permutation of the split
            n = len(chosen)
            bound = lambda text, default: (  # noqa: E731
                default
                if not text
                else int(  # noqa: E731
                    np.floor(min(max(int(text), 0), 100) / 100 * n + 0.5)
                )
            )
            order = np.random.default_rng(_SPLIT_SEED + 1).permutation(n)
            chosen = tuple(
                chosen[i] for i in sorted(order[bound(m.group("lo"), 0) : bound(m.group("hi"), n)])
            )
        files += list(chosen)
    return tuple(files)


@functools.cache
def _storage(root: str) -> tuple[tuple[int, int] | None, int]:
    """((H, W) of every image, or None when the sizes differ; C) (module docstring)."""
    from PIL import Image

    _, splits = _layout(root)
    sizes, gray = set(), True
    for files in splits.values():
        for path, _ in files:
            try:
                with Image.open(path) as im:
                    sizes.add(im.size)
                    gray = gray and im.mode in ("1", "L", "I;16", "I")
            except OSError as e:
                raise DataError(
                    f"data.name folder:{root}: cannot read image {path} ({e}); "
                    "remove or replace the file"
                ) from None
    if len(sizes) == 1:
        w, h = sizes.pop()
        return (h, w), 1 if gray else 3
    return None, 1 if gray else 3


def _decode(path: str, shape: tuple[int, int, int], crop_pct: float = 1.0) -> np.ndarray:
    from PIL import Image

    h, w, c = shape
    with Image.open(path) as im:
        im = im.convert("L" if c == 1 else "RGB")
        if im.size != (w, h):  # shorter side to floor(side / crop_pct), then the centre
            scale = max(
                math.floor(w / crop_pct) / im.size[0], math.floor(h / crop_pct) / im.size[1]
            )
            new = (max(w, round(im.size[0] * scale)), max(h, round(im.size[1] * scale)))
            im = im.resize(new, Image.BILINEAR, reducing_gap=None)
            left, top = (new[0] - w) // 2, (new[1] - h) // 2
            im = im.crop((left, top, left + w, top + h))
        arr = np.asarray(im, np.uint8)
    return arr.reshape(h, w, c)


class FolderSource:
    """One split of an image-folder data set (see the module docstring)."""

    def __init__(
        self, root: str, split: str, image_size: int = DEFAULT_SIZE, crop_pct: float = 1.0
    ):
        self.root = root
        self.name, self.split = f"folder:{root}", split
        classes, splits = _layout(root)
        self.class_names = classes
        self.num_classes = len(classes)
        self._files = _select(root, split, splits)
        if not self._files:
            raise DataError(f"data split {split!r} of folder:{root} holds no images")
        size, channels = _storage(root)
        self.variable_size = size is None
        self._shape = (*(size or (image_size, image_size)), channels)
        self._crop_pct = float(crop_pct) if self.variable_size else 1.0
        self._labels = np.array([label for _, label in self._files], np.int32)
        self._images = None
        if len(self._files) * int(np.prod(self._shape)) <= PRELOAD_BYTES:
            self._images = np.stack(
                [_decode(p, self._shape, self._crop_pct) for p, _ in self._files]
            )
            self._images.flags.writeable = False

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self._shape

    @property
    def labels(self) -> np.ndarray:
        return self._labels

    def __len__(self) -> int:
        return len(self._files)

    def read(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        idx = check_indices(indices, len(self), self.name + ":" + self.split)
        if self._images is not None:
            return self._images[idx], self._labels[idx]
        images = (
            np.stack([_decode(self._files[i][0], self._shape, self._crop_pct) for i in idx])
            if idx.size
            else np.zeros((0,) + self._shape, np.uint8)
        )
        return images, self._labels[idx]

    def read_encoded(self, indices: np.ndarray) -> tuple[list[bytes], np.ndarray]:
        """The image files' bytes, undecoded, and the labels (host crops)."""
        idx = check_indices(indices, len(self), self.name + ":" + self.split)
        return self.encoded_reader().read_encoded(idx)

    def encoded_reader(self) -> FileReader:
        """The picklable reader of the files (no decoded images inside)."""
        return FileReader(tuple(p for p, _ in self._files), self._labels)


class FileReader:
    """Image files by index: their bytes and labels (an `EncodedReader`, picklable)."""

    def __init__(self, paths: tuple[str, ...], labels: np.ndarray):
        self.paths, self.labels = paths, labels

    def __len__(self) -> int:
        return len(self.paths)

    def read_encoded(self, indices: np.ndarray) -> tuple[list[bytes], np.ndarray]:
        datas = []
        for i in indices:
            with open(self.paths[i], "rb") as f:
                datas.append(f.read())
        return datas, self.labels[np.asarray(indices, np.int64)]


def folder_source(
    root: str, split: str, *, image_size: int = DEFAULT_SIZE, crop_pct: float = 1.0
) -> FolderSource:
    """The `split` of the image folder at `root` (`data.name=folder:<root>`); images of
    mixed sizes are read at their centre `image_size` square (module docstring)."""
    root = os.path.abspath(os.path.expanduser(root))
    size, _ = _storage(root)
    if size is not None:  # one size: the view arguments do not matter, share one source
        image_size, crop_pct = DEFAULT_SIZE, 1.0
    return _cached(root, split, int(image_size), float(crop_pct))


@functools.cache
def _cached(root: str, split: str, image_size: int, crop_pct: float) -> FolderSource:
    return FolderSource(root, split, image_size, crop_pct)
