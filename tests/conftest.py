"""Test set-up: 8 simulated CPU devices, so every run exercises sharding.

XLA reads the flag when jax initialises its backend, so it is set here, before any test
module imports jax. Compilation dominates the suite's time (many tests build the same
smoke step, and the CLI tests start fresh processes), so compiled executables go to a
persistent cache shared by the test processes and their subprocesses (environment
variables, so that those inherit them). The cache is keyed on the program, the jax version
and the flags: a hit is the same executable, never a different result.
"""
import os
import tempfile

_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
    os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), "jssl-tests-xla-cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")

import jax  # noqa: E402

jax.config.update("jax_threefry_partitionable", True)
