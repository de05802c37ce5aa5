"""Test set-up: 8 simulated CPU devices, so every run exercises sharding.

XLA reads the flags when jax initialises its backend, so they are set here, before any test
module imports jax (environment variables: the tests' subprocesses inherit them).
Compilation dominates the suite's time: the tiny test programs run in milliseconds and
compile in seconds. So (1) LLVM optimises the generated machine code less
(`--xla_backend_optimization_level=0`: a quarter less compile time on the smoke train
step). The HLO is the same and no floating-point rewrite is allowed at any level, so the
numbers are the same: tests/test_train.py runs a smoke step with XLA's default flags in a
subprocess and compares. (XLA's other quick path, `--xla_cpu_use_fusion_emitters=false`,
cuts another third but computes some sharded gathers wrongly: tests/test_augment.py's
sharded-vs-unsharded augmentation caught it, so it is not used.) (2) Compiled executables
go to a persistent cache shared by the test processes and their subprocesses. The cache
is keyed on the program, the jax version and the flags: a hit is the same executable,
never a different result. (3) A scheduler flag that keeps cached executables with
several collectives from deadlocking (below).
"""

import os
import tempfile

_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
    _flags += " --xla_force_host_platform_device_count=8"
if "xla_backend_optimization_level" not in _flags:
    _flags += " --xla_backend_optimization_level=0"
if "xla_cpu_enable_concurrency_optimized_scheduler" not in _flags:
    # XLA:CPU's concurrency-optimized scheduler lets independent collectives run in any
    # order; an executable loaded from the persistent cache then deadlocks when two of its
    # all-gathers meet in different orders on different devices (jax 0.10.2: the MoCo v3
    # and NNCLR smoke steps hang on their second load). The plain scheduler keeps them in
    # program order.
    _flags += " --xla_cpu_enable_concurrency_optimized_scheduler=false"
os.environ["XLA_FLAGS"] = _flags.strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "jssl-tests-xla-cache")
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")

import jax  # noqa: E402

jax.config.update("jax_threefry_partitionable", True)


import pytest  # noqa: E402

from tests.shared import build_shared  # noqa: E402


@pytest.fixture(scope="session")
def shared_run(tmp_path_factory, worker_id):
    """`shared_run(name) -> (config, workdir)` of a finished run of tests/shared.py's
    SHARED_RUNS, built once per session in a directory every xdist worker shares."""
    base = tmp_path_factory.getbasetemp()
    root = str((base.parent if worker_id != "master" else base) / "shared-runs")
    return lambda name: build_shared(root, name)


def pytest_collection_modifyitems(items):
    """The notebooks (nbmake items) are end-to-end runs: in the slow tier."""
    for item in items:
        if str(item.fspath).endswith(".ipynb"):
            item.add_marker(pytest.mark.slow)
