"""The host pipeline: batches are a function of (seed, step), hosts read disjoint slices."""

import jax
import numpy as np
import pytest

from jssl import parallel
from jssl.data import pipeline


class ArraySource:
    """A minimal in-memory source (the interface of jssl.data.sources)."""

    def __init__(self, n=50, hw=4):
        rng = np.random.default_rng(0)
        self.images = rng.integers(0, 256, size=(n, hw, hw, 1), dtype=np.uint8)
        self.labels = np.arange(n) % 10
        self.num_classes, self.image_shape = 10, (hw, hw, 1)
        self.reads = []

    def __len__(self):
        return len(self.images)

    def read(self, idx):
        self.reads.append(np.asarray(idx))
        return self.images[idx], self.labels[idx]


def test_each_epoch_is_a_permutation():
    n, b = 50, 10
    seen = np.concatenate(
        [pipeline.batch_indices(s, batch_size=b, num_examples=n, seed=3) for s in range(5)]
    )
    assert sorted(seen.tolist()) == list(range(n))
    second = np.concatenate(
        [pipeline.batch_indices(s, batch_size=b, num_examples=n, seed=3) for s in range(5, 10)]
    )
    assert sorted(second.tolist()) == list(range(n))
    assert not np.array_equal(seen, second)  # a new order each epoch


def test_batches_straddle_epochs_and_depend_only_on_seed_and_step():
    n, b = 50, 16  # 50 is not a multiple of 16: step 3 spans epochs 0 and 1
    stream = np.concatenate(
        [pipeline.batch_indices(s, batch_size=b, num_examples=n, seed=1) for s in range(7)]
    )
    assert sorted(stream[:n].tolist()) == list(range(n))
    again = pipeline.batch_indices(3, batch_size=b, num_examples=n, seed=1)
    np.testing.assert_array_equal(again, stream[48:64])
    other = pipeline.batch_indices(3, batch_size=b, num_examples=n, seed=2)
    assert not np.array_equal(other, again)


def test_process_slices_partition_the_global_batch():
    full = pipeline.batch_indices(4, batch_size=12, num_examples=50, seed=0)
    parts = [
        pipeline.batch_indices(
            4, batch_size=12, num_examples=50, seed=0, process_index=p, process_count=3
        )
        for p in range(3)
    ]
    np.testing.assert_array_equal(np.concatenate(parts), full)


def test_train_batches_are_global_uint8_arrays_on_the_mesh():
    src = ArraySource()
    mesh = parallel.make_mesh()
    batches = list(pipeline.TrainBatches(src, batch_size=16, seed=0, mesh=mesh)(2, 5))
    assert len(batches) == 3
    image = batches[0]["image"]
    assert image.dtype == np.uint8 and image.shape == (16, 4, 4, 1)
    assert image.sharding.spec == parallel.batch_sharding(mesh).spec
    assert len(image.addressable_shards) == jax.device_count() == 8
    idx = pipeline.batch_indices(2, batch_size=16, num_examples=50, seed=0)
    np.testing.assert_array_equal(np.asarray(image), src.images[idx])
    np.testing.assert_array_equal(np.asarray(batches[0]["label"]), src.labels[idx])
    # Read ahead, never more than asked for.
    assert len(src.reads) == 3


@pytest.mark.parametrize("start", [0, 3])
def test_resumed_stream_equals_uninterrupted(start):
    src = ArraySource()
    mesh = parallel.make_mesh()
    make = pipeline.TrainBatches(src, batch_size=8, seed=5, mesh=mesh)
    full = [np.asarray(b["image"]) for b in make(0, 6)]
    resumed = [np.asarray(b["image"]) for b in make(start, 6)]
    for a, b in zip(full[start:], resumed):
        np.testing.assert_array_equal(a, b)


def test_the_next_batch_is_on_the_devices_before_the_current_one_is_handed_out(monkeypatch):
    """When the loop receives batch k (and dispatches step k), batch k + 1 has already
    been placed on the devices: its transfer overlaps the step. The last batch comes too."""
    src = ArraySource()
    mesh = parallel.make_mesh()
    placed = []
    to_global = parallel.to_global

    def recording(host, mesh):
        placed.append(host["label"].copy())
        return to_global(host, mesh)

    monkeypatch.setattr(parallel, "to_global", recording)
    stream = pipeline.TrainBatches(src, batch_size=8, seed=1, mesh=mesh)(0, 3)
    got = []
    for batch in stream:
        got.append(np.asarray(batch["label"]))
        assert len(placed) == min(len(got) + 1, 3), (len(got), len(placed))
    assert len(got) == 3
    for a, b in zip(got, placed):
        np.testing.assert_array_equal(a, b)
