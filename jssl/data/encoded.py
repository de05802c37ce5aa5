"""Sources of encoded images of varying size (JPEG/PNG bytes): ImageNet and its kin.

Such a source answers two reads:

* ``read_encoded(indices) -> (list of bytes, labels int32)``: the stored files, for the
  training stream's host crops (`jssl.data.crops.HostCropper`: each view a random resized
  crop of the original image, cut while decoding);
* ``read(indices) -> (uint8 (n, S, S, 3), labels)``: the evaluation view of every image,
  `crops.decode_center` (Resize(floor(S / crop_pct)) + CenterCrop(S), S =
  ``data.image_size``), decoded over a thread pool, so evaluation, BatchNorm calibration
  and plots read these sets as they read any fixed-size one.

``variable_size`` tells the training loop that a crop on the device would only see this
centre view, not the original (`data.crop_on`). ``encoded_reader()`` is the small picklable
object behind ``read_encoded`` that the loader's worker processes take with them
(`jssl.data.pipeline`; image folders and subsets have one too).
"""

from __future__ import annotations

import functools
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import numpy as np

from jssl.data.crops import decode_many, default_workers
from jssl.data.subsets import check_indices, is_encoded

__all__ = ["EncodedSource", "EncodedReader", "is_encoded"]


class EncodedReader(Protocol):
    """Picklable: `read_encoded(indices)` -> (list of bytes, labels int32) for checked
    indices, and `len()`."""

    def __len__(self) -> int: ...

    def read_encoded(self, indices: np.ndarray) -> tuple[list[bytes], np.ndarray]: ...


class EncodedSource:
    """One split of encoded images read through `reader` (an `EncodedReader`: the stored
    records); the rest is shared by every such source."""

    variable_size = True

    def __init__(
        self,
        name: str,
        split: str,
        reader: EncodedReader,
        *,
        num_classes: int,
        class_names: tuple[str, ...] | None,
        image_size: int,
        crop_pct: float,
        workers: int = 0,
    ):
        self.name, self.split = name, split
        self.num_classes, self.class_names = int(num_classes), class_names
        self.image_size, self.crop_pct = int(image_size), float(crop_pct)
        self.workers = int(workers) or default_workers()
        self._reader = reader

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.image_size, self.image_size, 3)

    def __len__(self) -> int:
        return len(self._reader)

    def encoded_reader(self) -> EncodedReader:
        return self._reader

    @functools.cached_property
    def _pool(self) -> ThreadPoolExecutor | None:
        return ThreadPoolExecutor(self.workers) if self.workers > 1 else None

    def read_encoded(self, indices: np.ndarray) -> tuple[list[bytes], np.ndarray]:
        idx = check_indices(indices, len(self), f"{self.name}:{self.split}")
        datas, labels = self._reader.read_encoded(idx)
        return list(datas), np.asarray(labels, np.int32).reshape(idx.size)

    def read(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        datas, labels = self.read_encoded(indices)
        return decode_many(datas, self.image_size, self.crop_pct, self._pool), labels

    def __repr__(self) -> str:
        return f"EncodedSource({self.name!r}, {self.split!r}, n={len(self)})"
