"""Cached features as a data source: rows of K concatenated feature arrays.

Frozen encoders do not change, so their features of a labelled subset can be computed once
and served instead of images (the fusion heads train on them). `FeatureRows` is a source
whose "images" are such rows, so features take the same host-to-device paths as images
(`pipeline.TrainBatches`, `evaluate.extract_features`), each process reading the rows its
devices hold; `FeatureBatches` splits each global batch back into K arrays.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from jssl.data.pipeline import TrainBatches
from jssl.data.subsets import check_indices

__all__ = ["FeatureRows", "FeatureBatches", "split_columns", "feature_keys"]


def split_columns(widths: Sequence[int], rows):
    """(B, sum F_k) rows -> the K feature arrays (NumPy or JAX) of `widths`."""
    ends = np.cumsum(widths).tolist()
    return [rows[:, end - w : end] for w, end in zip(widths, ends)]


def feature_keys(k: int) -> list[str]:
    """The batch keys of the K feature arrays: "feature_0" ... "feature_{K-1}"."""
    return [f"feature_{i}" for i in range(k)]


class FeatureRows:
    """A source whose examples are rows of K concatenated (N, F_k) feature arrays."""

    def __init__(self, features: Sequence[np.ndarray], labels: np.ndarray):
        self.widths = tuple(int(np.shape(x)[1]) for x in features)
        self.rows = np.concatenate([np.asarray(x, np.float32) for x in features], axis=1)
        self.labels = np.asarray(labels, np.int32)
        if len(self.rows) != len(self.labels) or not len(self.labels):
            raise ValueError(
                f"FeatureRows: {len(self.rows)} feature rows for {len(self.labels)} labels"
            )
        self.num_classes = int(self.labels.max()) + 1
        self.name, self.split = "features", ""

    def __len__(self) -> int:
        return len(self.labels)

    def read(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        idx = check_indices(indices, len(self), self.name)
        return self.rows[idx], self.labels[idx]


class FeatureBatches(TrainBatches):
    """Global batches {"feature_0" ... "feature_{K-1}", "label"} of cached features: the
    rows `TrainBatches` would read from a source of the same examples in the same order
    (same seed, same batch size), so cached and uncached runs see the same examples."""

    def __init__(
        self,
        features: Sequence[np.ndarray],
        labels: np.ndarray,
        *,
        batch_size: int,
        seed: int,
        mesh,
        prefetch: int = 2,
    ):
        super().__init__(
            FeatureRows(features, labels),
            batch_size=batch_size,
            seed=seed,
            mesh=mesh,
            prefetch=prefetch,
        )

    def host_batch(self, step: int) -> dict:
        batch = super().host_batch(step)
        rows = batch.pop("image")
        parts = split_columns(self.source.widths, rows)
        batch.update(
            {key: np.ascontiguousarray(x) for key, x in zip(feature_keys(len(parts)), parts)}
        )
        return batch
