"""Index checks and subsets of a data source: fixed stratified splits, seeded few-label
subsets, a source restricted to some of its examples, and all labels of a source.

Everything here is host-side NumPy: the results index a data source, not a device array,
and the same arguments give the same indices on every host.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from jssl.errors import DataError

__all__ = [
    "check_indices",
    "is_encoded",
    "check_num_classes",
    "stratified_split",
    "few_label_subset",
    "labelled_split",
    "SubsetSource",
    "PseudoLabelSource",
    "source_labels",
]

TEST_FRACTION, VALIDATION_FRACTION = 0.2, 0.1


def check_indices(indices: Any, n: int, where: str) -> np.ndarray:
    """`indices` as int64 after checking they are a 1-D integer array in [0, n) (DataError
    naming `where` otherwise)."""
    idx = np.asarray(indices)
    if idx.ndim != 1 or not (idx.size == 0 or np.issubdtype(idx.dtype, np.integer)):
        raise DataError(
            f"indices for {where}: need a 1-D integer array, got shape {idx.shape} "
            f"dtype {idx.dtype}; pass e.g. np.arange(n)"
        )
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        bad = int(idx.min()) if idx.min() < 0 else int(idx.max())
        raise DataError(
            f"indices for {where}: index {bad} is out of range for {n} examples; "
            f"use indices in 0..{n - 1}"
        )
    return idx.astype(np.int64, copy=False)


def stratified_split(labels: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """{"train", "validation", "test"}: sorted indices of a fixed split of `labels`, the same
    fractions of every class: round(0.2 n_c) test, round(0.1 n_c) validation, the rest train
    (half rounds up). The data sets without an official split (the embedded sets, image
    folders of classes) are split by this once, with a seed that no run seed changes."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {"train": [], "validation": [], "test": []}
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        n_test = int(np.floor(TEST_FRACTION * members.size + 0.5))
        n_val = int(np.floor(VALIDATION_FRACTION * members.size + 0.5))
        parts["test"].append(members[:n_test])
        parts["validation"].append(members[n_test : n_test + n_val])
        parts["train"].append(members[n_test + n_val :])
    empty = np.zeros((0,), np.int64)
    return {k: np.sort(np.concatenate(v)) if v else empty for k, v in parts.items()}


def check_num_classes(num_classes) -> None:
    if not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")


def few_label_subset(labels, fraction: float, *, seed: int, num_classes: int) -> np.ndarray:
    """Sorted indices of a seeded, class-balanced `fraction` of `labels`.

    Every class present contributes max(1, round(fraction * its count)) examples (half
    rounds up), drawn without replacement by numpy's generator seeded with `seed`: the same
    arguments give the same indices on every host. A class absent from `labels` contributes
    nothing. fraction=1 returns every index. Used for 1% / 10% few-label evaluation.
    """
    check_num_classes(num_classes)
    labels = np.asarray(labels)
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if labels.ndim != 1 or labels.size == 0:
        raise ValueError(
            f"labels must be a non-empty 1-D array of class ids, got shape {labels.shape}"
        )
    if (
        not np.issubdtype(labels.dtype, np.integer)
        or labels.min() < 0
        or labels.max() >= num_classes
    ):
        raise ValueError(
            f"labels must be integer class ids in [0, {num_classes}), got "
            f"{labels.dtype} in [{labels.min()}, {labels.max()}]; check num_classes"
        )
    order = np.random.default_rng(seed).permutation(len(labels))
    order = order[np.argsort(labels[order], kind="stable")]  # grouped by class, random within
    counts = np.bincount(labels, minlength=num_classes)
    take = np.where(counts > 0, np.maximum(1, np.floor(fraction * counts + 0.5)), 0)
    rank = np.arange(len(labels)) - np.repeat(np.cumsum(counts) - counts, counts)
    return np.sort(order[rank < np.repeat(take, counts)])


def source_labels(source, chunk: int = 4096) -> np.ndarray:
    """All labels of a source, in order: its `labels` attribute when it has one, else read
    in chunks (host memory then holds one chunk of images at a time)."""
    labels = getattr(source, "labels", None)
    if labels is not None:
        return np.asarray(labels).astype(np.int64)
    # A source of encoded images hands out its labels with the undecoded files.
    read = source.read_encoded if is_encoded(source) else source.read
    out = []
    for start in range(0, len(source), chunk):
        _, y = read(np.arange(start, min(start + chunk, len(source))))
        out.append(np.asarray(y))
    return np.concatenate(out).astype(np.int64)


def labelled_split(source, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(labelled, unlabelled) indices of `source`: a seeded class-balanced `fraction`
    (`few_label_subset`), and the rest (all of it when the rest is empty)."""
    labels = source_labels(source)
    labelled = few_label_subset(labels, fraction, seed=seed, num_classes=source.num_classes)
    rest = np.setdiff1d(np.arange(len(labels)), labelled)
    return labelled, (rest if rest.size else np.arange(len(labels)))


class SubsetSource:
    """The examples `indices` of `source`, as a source of their own (position i reads
    `source[indices[i]]`)."""

    def __init__(self, source, indices):
        self.source = source
        self.indices = np.asarray(indices, dtype=np.int64)
        if self.indices.ndim != 1 or self.indices.size == 0:
            raise ValueError("SubsetSource needs a non-empty 1-D array of indices")
        if self.indices.min() < 0 or self.indices.max() >= len(source):
            raise ValueError(f"SubsetSource indices must be in [0, {len(source)})")
        self.num_classes = source.num_classes
        self.name = getattr(source, "name", "source")
        self.split = getattr(source, "split", "")
        self.class_names = getattr(source, "class_names", None)
        self.variable_size = bool(getattr(source, "variable_size", False))
        if is_encoded(source):  # forward the encoded reads of an encoded source only
            self.read_encoded = self._read_encoded
            self.encoded_reader = self._encoded_reader

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.source.image_shape

    def __len__(self) -> int:
        return len(self.indices)

    def read(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.source.read(self.indices[check_indices(indices, len(self), self.name)])

    def _read_encoded(self, indices: np.ndarray) -> tuple[list[bytes], np.ndarray]:
        return self.source.read_encoded(self.indices[check_indices(indices, len(self), self.name)])

    def _encoded_reader(self):
        return SubsetReader(self.source.encoded_reader(), self.indices)


class SubsetReader:
    """The encoded reader of a subset (picklable): position i reads reader[indices[i]]."""

    def __init__(self, reader, indices: np.ndarray):
        self.reader, self.indices = reader, indices

    def __len__(self) -> int:
        return len(self.indices)

    def read_encoded(self, indices: np.ndarray) -> tuple[list[bytes], np.ndarray]:
        return self.reader.read_encoded(self.indices[np.asarray(indices, np.int64)])


def is_encoded(source) -> bool:
    """Whether `source` hands out its stored image files (`read_encoded`), as the sources
    of `jssl.data.encoded` and image folders do, for crops cut on the host."""
    return callable(getattr(source, "read_encoded", None))


class PseudoLabelSource:
    """`source` with its labels replaced by `labels` (position i reads source[i] with
    label labels[i]); the images are untouched. The cluster-transfer student's stream."""

    def __init__(self, source, labels: np.ndarray, num_classes: int):
        labels = np.asarray(labels)
        if labels.shape != (len(source),):
            raise ValueError(
                f"pseudo-labels must have shape ({len(source)},), one per example "
                f"of the training split, got {labels.shape}"
            )
        self.source = source
        self.labels = labels.astype(np.int32)
        self.num_classes = int(num_classes)
        self.name = getattr(source, "name", "source")
        self.split = getattr(source, "split", "")
        self.class_names = None

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.source.image_shape

    def __len__(self) -> int:
        return len(self.source)

    def read(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        idx = check_indices(indices, len(self), self.name)
        images, _ = self.source.read(idx)
        return images, self.labels[idx]
