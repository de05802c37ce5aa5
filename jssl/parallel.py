"""Multi-process start-up, mesh, shardings and host <-> global array helpers.

One 1-D mesh over every device of every host, axis "data": batches are split over it and
the TrainState is replicated. This is the role `pmap` played; with `jax.jit` over global
arrays, losses and BatchNorm statistics are computed on the global batch and XLA inserts
the collectives.

Several processes (hosts, or several processes on one machine) form one mesh after
`initialize_distributed`: every process runs the same program on the same global arrays,
each holding only the rows of a batch that its own devices hold (`process_rows`).
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

__all__ = [
    "initialize_distributed",
    "detected_cluster",
    "sync_processes",
    "jit",
    "make_mesh",
    "batch_sharding",
    "replicated",
    "process_rows",
    "to_global",
    "to_host",
]

DATA_AXIS = "data"


def detected_cluster() -> str | None:
    """The multi-process environment this process was started in, or None.

    Only environments that start several processes of one job are taken: a Cloud TPU VM
    (a single host or a pod slice; JAX reads the workers from the TPU metadata) and a SLURM
    job step with more than one task (srun; one process per GPU, JAX's convention). A
    single-task SLURM job, or a plain machine, runs as one process with every local device.
    """
    if int(os.environ.get("SLURM_NTASKS", "1") or 1) > 1 and all(
        v in os.environ
        for v in ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_PROCID", "SLURM_LOCALID")
    ):
        return "slurm"
    try:  # JAX's own detection of Cloud TPU VMs (no network query off a TPU VM)
        # JAX's own detection has no public API: a private import, guarded.
        from jax._src.clusters import cloud_tpu_cluster as tpu
    except ImportError:  # pragma: no cover - a jax without it: give the flags instead
        return None
    for env in (tpu.GceTpuCluster, tpu.GkeTpuCluster):
        if env.is_env_present():
            return "tpu"
    return None


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> int:
    """Start `jax.distributed` (before any JAX computation); return the process count.

    With all three arguments, they are used as given and every local device of this
    process joins the mesh (no cluster auto-detection, so no device is hidden). With none,
    the environment decides (`detected_cluster`): on a TPU VM or in a multi-task SLURM step
    JAX reads the coordinator, process count and id from it; elsewhere nothing is started
    (one process). Anything in between raises ValueError (one line).
    """
    given = {
        "--coordinator_address": coordinator_address,
        "--num_processes": num_processes,
        "--process_id": process_id,
    }
    if all(v is None for v in given.values()):
        if detected_cluster() is None:
            return 1
        jax.distributed.initialize()
        return jax.process_count()
    missing = [name for name, v in given.items() if v is None]
    if missing:
        raise ValueError(
            f"{', '.join(missing)} missing: give --coordinator_address, "
            "--num_processes and --process_id together (or none of them on a TPU "
            "VM or under srun, where they are read from the environment)"
        )
    host, _, port = coordinator_address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(
            f"--coordinator_address {coordinator_address!r} is not host:port, e.g. "
            "10.0.0.2:12355 (the address of process 0)"
        )
    if num_processes < 1:
        raise ValueError(f"--num_processes must be >= 1, got {num_processes}")
    if not 0 <= process_id < num_processes:
        raise ValueError(
            f"--process_id must be in [0, {num_processes}) for --num_processes="
            f"{num_processes}, got {process_id}"
        )
    jax.distributed.initialize(
        coordinator_address, num_processes, process_id, cluster_detection_method="deactivate"
    )
    return jax.process_count()


_barriers = 0  # every process passes the same barriers in the same order


def sync_processes(name: str) -> None:
    """Wait until every process gets here (the coordination service's barrier, which waits
    up to 30 minutes); nothing with one process."""
    global _barriers
    if jax.process_count() == 1:
        return
    from jax._src import distributed  # the coordination service's client (no public handle)

    _barriers += 1
    distributed.global_state.client.wait_at_barrier(f"jssl_{_barriers}_{name}", 30 * 60 * 1000)


class jit:
    """`jax.jit(fun, **kwargs)` that, in multi-process runs, compiles every new input
    signature ahead of time and waits for all processes before its first execution.

    On CPU, processes exchange data through gloo, which fails a program's first collective
    when one process reaches it 30 s after another (measured: "Gloo context initialization
    failed ... timed out"; later executions wait as long as needed). Compilation alone
    skews processes by more than that: JAX's persistent compilation cache serves only
    process 0 (it writes entries from process 0, and the other processes' keys differ),
    so process 0 loads in a second what the others compile for a minute. The barrier costs
    milliseconds, once per signature, on every backend.
    """

    def __init__(self, fun, **kwargs):
        self._jit = jax.jit(fun, **kwargs)
        self._seen: set = set()

    def __call__(self, *args):
        if jax.process_count() > 1:
            leaves, tree = jax.tree_util.tree_flatten(args)
            key = (
                tree,
                tuple(
                    (
                        np.shape(x),
                        getattr(x, "dtype", type(x)),
                        getattr(x, "sharding", None),
                        getattr(x, "weak_type", None),
                    )
                    for x in leaves
                ),
            )
            if key not in self._seen:
                self._jit.lower(*args).compile()  # the call below reuses this executable
                sync_processes("compiled")
                self._seen.add(key)
        return self._jit(*args)

    def lower(self, *args, **kwargs):
        return self._jit.lower(*args, **kwargs)

    def _cache_size(self) -> int:
        return self._jit._cache_size()


def make_mesh(devices=None) -> Mesh:
    """A 1-D mesh named "data" over `devices` (default: all devices of all processes)."""
    devices = jax.devices() if devices is None else list(devices)
    # Auto axes: the compiler chooses intermediate shardings (Explicit, the new default,
    # rejects reshapes that split the sharded batch axis, e.g. per-example key splits).
    return jax.make_mesh(
        (len(devices),), (DATA_AXIS,), devices=devices, axis_types=(jax.sharding.AxisType.Auto,)
    )


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def process_rows(mesh: Mesh, batch_size: int) -> np.ndarray:
    """Rows of a global batch of `batch_size` (sharded on "data") that this process's devices
    hold, ascending: the rows this process reads, in the order `to_global` expects.

    On the mesh over `jax.devices()` (ordered by process) process p of P holds the
    contiguous rows [p*B/P, (p+1)*B/P); any other device order is followed as it is.
    """
    index_map = batch_sharding(mesh).addressable_devices_indices_map((batch_size,))
    rows = set()
    for (index,) in index_map.values():
        rows.update(range(*index.indices(batch_size)))
    return np.array(sorted(rows), dtype=np.int64)


def to_global(local_batch: dict, mesh: Mesh) -> dict:
    """This process's rows of a batch (numpy, `process_rows` order; a dict whose values are
    arrays or tuples of arrays, such as the host-cut crops of each view) -> global arrays
    sharded on "data" (`jax.make_array_from_process_local_data`)."""
    sharding = batch_sharding(mesh)
    return jax.tree_util.tree_map(
        lambda v: jax.make_array_from_process_local_data(sharding, np.asarray(v)), local_batch
    )


def to_host(x: jax.Array) -> np.ndarray:
    """A (possibly multi-host) global array as one numpy array on every process."""
    if jax.process_count() == 1:
        return np.asarray(jax.device_get(x))
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
