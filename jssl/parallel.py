"""Mesh, shardings and host <-> global array helpers.

One 1-D mesh over every device of every host, axis "data": batches are split over it and
the TrainState is replicated. This is the role `pmap` played; with `jax.jit` over global
arrays, losses and BatchNorm statistics are computed on the global batch and XLA inserts
the collectives.
"""
from __future__ import annotations

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

__all__ = ["make_mesh", "batch_sharding", "replicated", "to_global", "to_host"]

DATA_AXIS = "data"


def make_mesh(devices=None) -> Mesh:
    """A 1-D mesh named "data" over `devices` (default: all devices of all processes)."""
    devices = jax.devices() if devices is None else list(devices)
    # Auto axes: the compiler chooses intermediate shardings (Explicit, the new default,
    # rejects reshapes that split the sharded batch axis, e.g. per-example key splits).
    return jax.make_mesh((len(devices),), (DATA_AXIS,), devices=devices,
                         axis_types=(jax.sharding.AxisType.Auto,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def to_global(local_batch: dict, mesh: Mesh) -> dict:
    """This process's slice of a batch (numpy) -> global arrays sharded on "data"."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
            for k, v in local_batch.items()}


def to_host(x: jax.Array) -> np.ndarray:
    """A (possibly multi-host) global array as one numpy array on every process."""
    if jax.process_count() == 1:
        return np.asarray(jax.device_get(x))
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
