"""Host-side batching: a deterministic function of (seed, step), each host its own slice.

The training stream walks through one seeded permutation of the split per epoch; the
batch for step s is positions [s*B, (s+1)*B) of that stream. It depends on nothing but the
seed and the step, so a resumed run reads exactly the batches an uninterrupted run would.
Every process computes the same global indices; process p of P reads only the rows its
devices hold (`parallel.process_rows`: rows [p*B/P, (p+1)*B/P) on the usual mesh) and
`jax.make_array_from_process_local_data` assembles the global array. Images stay uint8
until they are on the device (augmentation happens there).

With a `cropper` (for sources of encoded images of varying size), a batch is {"crops": one
uint8 (B, S_v, S_v, 3) array per view, "label"}: each view's random resized crop cut on
the host from the original image, its window a function of (seed, step, example index,
view), so resume and any process count read the same crops. Two croppers give the same
bytes: `HostCropper`'s thread pool (`data.backend="threads"`, the default) and
`GrainCrops`, grain's worker processes (`mp_prefetch`, each worker a whole batch at a
time, the order kept). On a 2-core host the threads' steady throughput was 1.17x grain's
(`python -m jssl.bench --method input --other-backend`); processes may scale further on
hosts of many cores, where the part of each decode that holds the GIL would cap threads:
measure there with the same command.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import itertools
from typing import Iterator

import numpy as np

from jssl import parallel
from jssl.data.crops import CropSpec, HostCropper, decode_crops, window_rng
from jssl.data.subsets import is_encoded
from jssl.errors import ConfigError

__all__ = ["batch_indices", "crop_specs", "GrainCrops", "TrainBatches", "JointBatches"]


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


@dataclasses.dataclass(frozen=True)
class GrainCrops:
    """The host crops of `specs`, cut in `workers` grain worker processes (`TrainBatches`)."""

    specs: tuple
    seed: int
    workers: int

    def close(self) -> None:  # the workers live as long as one `TrainBatches` call
        pass


class _StreamExample:
    """Element i of a grain stream -> row i % L of this process's slice of the batch of
    step i // L (L rows per process): its crops and label. Picklable (grain's workers)."""

    def __init__(self, reader, specs, seed: int, batch_size: int, rows: np.ndarray):
        self.reader, self.specs, self.seed = reader, tuple(specs), int(seed)
        self.batch_size, self.rows = int(batch_size), np.asarray(rows)

    def __call__(self, i) -> dict:
        step, j = divmod(int(i), len(self.rows))
        idx = batch_indices(
            step, batch_size=self.batch_size, num_examples=len(self.reader), seed=self.seed
        )
        example = int(idx[self.rows[j]])
        datas, labels = self.reader.read_encoded(np.array([example]))
        rngs = [window_rng(self.seed, step, example, v) for v in range(len(self.specs))]
        return {"crops": tuple(decode_crops(datas[0], self.specs, rngs)), "label": labels[0]}


def _grain_host_batches(batches: "TrainBatches", start: int, end: int) -> Iterator[dict]:
    """This process's host batches of steps start .. end - 1 through grain's workers."""
    import grain.python as gp
    from absl import flags

    if not flags.FLAGS.is_parsed():  # grain's worker processes read absl flags
        flags.FLAGS.mark_as_parsed()
    c = batches.cropper
    rows = batches.rows
    fn = _StreamExample(
        batches.source.encoded_reader(), c.specs, batches.seed, batches.batch_size, rows
    )
    ds = (
        gp.MapDataset.range(start * len(rows), end * len(rows))
        .map(fn)
        .batch(len(rows), drop_remainder=True)
        .to_iter_dataset()
        .mp_prefetch(gp.MultiprocessingOptions(num_workers=c.workers))
    )
    it = iter(ds)
    try:
        for host in it:
            yield {"crops": tuple(host["crops"]), "label": host["label"].astype(np.int32)}
    finally:
        it.close()


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
        cropper: HostCropper | GrainCrops | None = None,
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
        if isinstance(self.cropper, GrainCrops):
            # islice: the last batch is handed over without waiting for the stream's end
            # (grain's workers shut down when the generator is closed).
            hosts = _grain_host_batches(self, start_step, end_step)
            try:
                yield from self._placed(itertools.islice(hosts, max(0, end_step - start_step)))
            finally:
                hosts.close()
            return
        yield from self._placed(self._read_ahead(start_step, end_step))

    def _read_ahead(self, start_step: int, end_step: int) -> Iterator[dict]:
        """Host batches of steps start_step .. end_step - 1, read `prefetch` steps ahead on a
        host thread."""
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            pending = [
                pool.submit(self.host_batch, s)
                for s in range(start_step, min(end_step, start_step + self.prefetch))
            ]
            next_step = start_step + len(pending)
            while pending:
                host = pending.pop(0).result()
                if next_step < end_step:
                    pending.append(pool.submit(self.host_batch, next_step))
                    next_step += 1
                yield host

    def _placed(self, hosts: Iterator[dict]) -> Iterator[dict]:
        """Host batches placed on the devices one step ahead."""
        placed = None
        for host in hosts:
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
