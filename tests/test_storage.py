"""Checkpoints that cannot be written: a full disk or a failed write is one line naming the
directory and the free space, no orbax temporary directory is left behind, and what was
saved before is intact (the same command resumes once there is room)."""

import glob
import os
import subprocess
import sys

import pytest

from jssl import paths, train
from jssl.errors import StorageError
from tests.shared import read_metrics, smoke
from tests.test_config import ROOT


def _steps(workdir):
    names = os.listdir(os.path.join(workdir, "checkpoints"))
    assert not [n for n in names if "tmp" in n], names  # no orbax temporary directory
    return sorted(int(n) for n in names if n.isdigit())


def test_a_checkpoint_that_does_not_fit_is_refused_before_writing(tmp_path, monkeypatch):
    """The disk fills between checkpoints 2 and 4: checkpoint 4 is refused before orbax
    writes anything, in one line with the sizes; checkpoint 2 is intact and the same
    command resumes from it once there is room."""
    c = smoke(total_steps=6, checkpoint_every=2, log_every=2)
    workdir = str(tmp_path / "full")
    calls = []

    def free(path):  # room for the first checkpoint only
        calls.append(path)
        return 10**12 if len(calls) == 1 else 1000

    monkeypatch.setattr(paths, "free_bytes", free)
    with pytest.raises(StorageError) as e:
        train.train_and_evaluate(c, workdir)
    message = str(e.value)
    assert "\n" not in message
    assert message.startswith(
        f"not enough space for checkpoint 4 in {os.path.join(workdir, 'checkpoints')}: "
        "it needs about "
    ), message
    assert (
        "0.0 MiB free here; free some space and run the same command (it resumes from "
        "checkpoint 2)" in message
    )
    assert _steps(workdir) == [2]

    monkeypatch.setattr(paths, "free_bytes", lambda path: 10**12)
    results = train.train_and_evaluate(c, workdir)
    assert results["resumed_from_step"] == 2 and results["final_step"] == 6
    assert [r["step"] for r in read_metrics(workdir)] == [2, 4, 6]


# A run whose files may not grow beyond 20 kB (RLIMIT_FSIZE): orbax's array files are
# larger, so the first checkpoint's write fails inside orbax's background threads, as a
# disk that fills during a save would make it (EFBIG here, ENOSPC there: the same path).
_LIMITED = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))
from jssl import main
sys.exit(main.main(["jssl"] + sys.argv[1:]))
"""


def test_a_failed_write_is_one_line_and_leaves_no_temporary_checkpoint(tmp_path):
    workdir = str(tmp_path / "efbig")
    flags = [
        "--config=configs/barlow_twins.py:smoke",
        f"--workdir={workdir}",
        "--config.total_steps=4",
        "--config.checkpoint_every=2",
        "--config.log_every=2",
        "--config.progress=False",
        "--config.eval.random_init_baseline=False",
    ]
    # No compilation cache: its files would meet the limit too.
    env = dict(os.environ, JAX_ENABLE_COMPILATION_CACHE="false")
    done = subprocess.run(
        [sys.executable, "-c", _LIMITED, *flags],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    # The last line of jssl's (orbax's writer threads may have logged the failure before it).
    ours = [line for line in done.stderr.splitlines() if line.startswith("jssl: ")]
    assert done.returncode == 74 and len(ours) == 1, done.stderr[-3000:]
    last = ours[0]
    assert last.startswith(
        f"jssl: error: writing a checkpoint in {os.path.join(workdir, 'checkpoints')} failed ("
    ), last
    assert "File too large" in last and "MiB free there" in last, last
    assert last.endswith("free some space and run the same command (no checkpoint is kept)")
    assert _steps(workdir) == []
    assert not glob.glob(os.path.join(workdir, "**", "*orbax-checkpoint-tmp*"), recursive=True)

    # Room again: the same command runs to the end.
    done = subprocess.run(
        [sys.executable, "-m", "jssl.main", *flags],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert _steps(workdir) == [2, 4]


def test_a_checkpoint_directory_that_cannot_be_written_is_refused_before_any_work(tmp_path):
    c = smoke(total_steps=2)
    workdir = tmp_path / "blocked"
    workdir.mkdir()
    (workdir / "checkpoints").write_text("not a directory")
    with pytest.raises(
        train.ConfigError, match=rf"^{workdir / 'checkpoints'} is a file, not a directory"
    ):
        train.train_and_evaluate(c, str(workdir))
    assert sorted(os.listdir(workdir)) == ["checkpoints"]
