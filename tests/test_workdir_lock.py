"""One run per workdir: a second start is refused while the first lives; a lock left by a
killed run is taken over with a line that says so."""

import os
import signal
import subprocess
import sys

import pytest

from jssl import checkpoint, train
from jssl.errors import ConfigError
from tests.shared import smoke
from tests.test_config import ROOT

_HOLDER = """
import sys, time
from jssl.checkpoint import WorkdirLock
lock = WorkdirLock(sys.argv[1]).acquire()
print("ready", flush=True)
time.sleep(600)
"""


def _holder(workdir: str) -> subprocess.Popen:
    """Another process (no JAX started) that holds the workdir's lock until killed."""
    p = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, workdir],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert p.stdout.readline().strip() == "ready"
    return p


def test_a_second_run_is_refused_then_a_stale_lock_is_taken_over(tmp_path):
    workdir = str(tmp_path / "w")
    holder = _holder(workdir)
    try:
        with pytest.raises(ConfigError) as e:
            train.train_and_evaluate(smoke(total_steps=2), workdir)
        message = str(e.value)
        assert "\n" not in message and "is in use by another run" in message
        assert f"pid {holder.pid}," in message and "host " in message and "started " in message
        assert os.listdir(workdir) == [checkpoint.LOCK_FILE]  # nothing else written
        # --mode=eval takes the same lock: also refused while the holder lives.
        with pytest.raises(ConfigError, match="is in use by another run"):
            checkpoint.WorkdirLock(workdir).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # The holder was killed: its lock file is left, not locked; the next run takes it over.
    lines = []
    lock = checkpoint.WorkdirLock(workdir, say=lines.append).acquire()
    assert len(lines) == 1 and "left by a run that is gone" in lines[0], lines
    assert f"pid {holder.pid}," in lines[0]
    lock.release()
    # Released cleanly: the next start says nothing.
    lines.clear()
    checkpoint.WorkdirLock(workdir, say=lines.append).acquire().release()
    assert lines == []
