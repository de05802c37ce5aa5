"""Host-side batching: a deterministic function of (seed, step), each host its own slice.

The training stream walks through one seeded permutation of the split per epoch; the
batch for step s is positions [s*B, (s+1)*B) of that stream. It depends on nothing but the
seed and the step, so a resumed run reads exactly the batches an uninterrupted run would.
Every process computes the same global indices; process p of P reads only the rows its
devices hold (`parallel.process_rows`: rows [p*B/P, (p+1)*B/P) on the usual mesh) and
`jax.make_array_from_process_local_data` assembles the global array. Images stay uint8
until they are on the device (augmentation happens there).

With a `cropper` (`jssl.data.crops.HostCropper`, for sources of encoded images of varying
size), a batch is {"crops": one uint8 (B, S_v, S_v, 3) array per view, "label"}: each
view's random resized crop cut on the host from the original image, its window a function
of (seed, step, example index, view), so resume and any process count read the same crops.
"""

from __future__ import annotations

import concurrent.futures
import functools
from typing import Iterator

import numpy as np

from jssl import parallel
from jssl.data.crops import CropSpec, HostCropper
from jssl.data.subsets import is_encoded
from jssl.errors import ConfigError

__all__ = ["batch_indices", "crop_specs", "TrainBatches", "JointBatches"]


@functools.lru_cache(maxsize=4)
def _epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


def batch_indices(
    step: int,
    *,
    batch_size: int,
    num_examples: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
) -> np.ndarray:
    """Example indices of this process's slice of the global batch at `step`."""
    per_process = batch_size // process_count
    start = step * batch_size + process_index * per_process
    positions = np.arange(start, start + per_process, dtype=np.int64)
    epochs, offsets = np.divmod(positions, num_examples)
    out = np.empty(per_process, dtype=np.int64)
    for epoch in np.unique(epochs):  # at most a few epochs per batch
        sel = epochs == epoch
        out[sel] = _epoch_permutation(seed, int(epoch), num_examples)[offsets[sel]]
    return out


def crop_specs(config, source, views) -> list[CropSpec] | None:
    """The host crops `config.data.crop_on` asks for: one `CropSpec` per view of `views`
    (the method's `host_views`), or None when the views are cropped on the device. "auto"
    crops on the host when the source's images vary in size and the method takes host
    crops; "host" insists (ConfigError, one line, for a source of decoded arrays)."""
    mode = config.data.crop_on
    variable = bool(getattr(source, "variable_size", False))
    if mode == "device" or (mode == "auto" and not (variable and views)):
        return None
    if not is_encoded(source):
        raise ConfigError(
            f"config.data.crop_on: 'host' needs stored image files (TFDS images of varying "
            f"size such as imagenet2012, or an image folder); {config.data.name} is read as "
            "decoded arrays; set 'device' or 'auto'"
        )
    return [CropSpec(int(v.crop_size), tuple(float(x) for x in v.crop_scale)) for v in views]


class TrainBatches:
    """Global training batches {"image": uint8, "label": int32} (or {"crops", "label"} with
    a host `cropper`), read ahead in a thread."""

    def __init__(
        self,
        source,
        *,
        batch_size: int,
        seed: int,
        mesh,
        prefetch: int = 2,
        cropper: HostCropper | None = None,
    ):
        self.source = source
        self.batch_size = batch_size
        self.seed = seed
        self.mesh = mesh
        self.prefetch = prefetch
        self.cropper = cropper

    @functools.cached_property
    def rows(self) -> np.ndarray:
        """The rows of every global batch that this process reads (its devices' rows)."""
        return parallel.process_rows(self.mesh, self.batch_size)

    def host_batch(self, step: int) -> dict:
        idx = batch_indices(
            step, batch_size=self.batch_size, num_examples=len(self.source), seed=self.seed
        )[self.rows]
        if self.cropper is not None:
            datas, labels = self.source.read_encoded(idx)
            crops = tuple(self.cropper(datas, idx, step))
            return {"crops": crops, "label": labels.astype(np.int32)}
        images, labels = self.source.read(idx)
        return {"image": images, "label": labels.astype(np.int32)}

    def __call__(self, start_step: int, end_step: int) -> Iterator[dict]:
        """Batches for steps start_step .. end_step - 1: read `prefetch` steps ahead on a
        host thread, and placed on the devices one step ahead, so that the transfer of
        batch k + 1 is under way while step k runs (the consumer dispatches step k
        asynchronously right after receiving batch k)."""
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            pending = [
                pool.submit(self.host_batch, s)
                for s in range(start_step, min(end_step, start_step + self.prefetch))
            ]
            next_step = start_step + len(pending)
            placed = None
            while pending:
                host = pending.pop(0).result()
                if next_step < end_step:
                    pending.append(pool.submit(self.host_batch, next_step))
                    next_step += 1
                ahead = parallel.to_global(host, self.mesh)
                if placed is not None:
                    yield placed
                placed = ahead
            if placed is not None:
                yield placed


class JointBatches(TrainBatches):
    """Two streams per step for joint SSL + supervised training (Functional Knowledge
    Transfer): {"image", "label"} from the unlabelled stream and {"labelled_image",
    "labelled_label"} from the labelled one, of their own batch sizes, each a function of
    (seed, step) through its own seeded permutation."""

    def __init__(
        self,
        unlabelled,
        labelled,
        *,
        batch_size: int,
        labelled_batch_size: int,
        seed: int,
        mesh,
        prefetch: int = 2,
    ):
        super().__init__(unlabelled, batch_size=batch_size, seed=seed, mesh=mesh, prefetch=prefetch)
        # A different seed for the second stream, so the two never walk in lockstep.
        self.labelled = TrainBatches(
            labelled, batch_size=labelled_batch_size, seed=seed + 1_000_003, mesh=mesh
        )

    def host_batch(self, step: int) -> dict:
        batch = super().host_batch(step)
        labelled = self.labelled.host_batch(step)
        batch["labelled_image"] = labelled["image"]
        batch["labelled_label"] = labelled["label"]
        return batch
