"""A damaged newest checkpoint: the run restores the next older one, moves the damaged one
aside (`<step>.damaged`, nothing deleted) and continues exactly as if uninterrupted."""

import glob
import os
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from jssl import checkpoint, train
from jssl.errors import ConfigError
from tests.shared import copy_run, read_metrics
from tests.test_config import ROOT

# Files of an orbax step directory (checkpoints/<step>/) and what is done to them: each
# makes the restore fail (measured: damage to the other files, such as the commit markers
# or _CHECKPOINT_METADATA, still restores the same arrays).
# Not in the list: the process-local copies under default/ocdbt.process_0/d/. Whether the
# restore reads them depends on how far orbax's merge into default/d/ got when the step was
# written (CI at 9ff3c38 restored step 4 through them truncated once in several runs); the
# array data is damaged through default/d/ instead.
DAMAGES = [
    ("default/d/*", "truncate"),  # the array data
    ("default/d/*", "delete"),
    ("default/manifest.ocdbt", "delete"),
    ("default/_METADATA", "truncate"),  # the tree structure
    ("default/array_metadatas/process_0", "truncate"),
]


def _damage(step_dir: str, pattern: str, how: str) -> None:
    files = glob.glob(os.path.join(step_dir, pattern))
    assert files, f"no {pattern} in {step_dir}: orbax's layout changed, update DAMAGES"
    for f in files:
        if how == "delete":
            os.remove(f)
        else:
            size = os.path.getsize(f)
            with open(f, "r+b") as fh:
                fh.truncate(size // 2)


@pytest.mark.parametrize("pattern,how", DAMAGES)
def test_each_kind_of_damage_falls_back_to_the_older_checkpoint(shared_run, tmp_path, pattern, how):
    c, full = shared_run("simclr")  # checkpoints at steps 2 and 4
    workdir = copy_run(full, tmp_path / "run")
    _damage(os.path.join(workdir, "checkpoints", "4"), pattern, how)
    run = train._Run(c, workdir, None)
    ckpt = checkpoint.Checkpointer(workdir, c, keep=c.keep_checkpoints)
    lines = []
    state, step = ckpt.restore_latest(run.abstract, say=lines.append)
    ckpt.close()
    assert step == 2 and int(state.step) == 2
    assert len(lines) == 1 and "\n" not in lines[0], lines
    assert lines[0].startswith(f"jssl: checkpoint {os.path.join(workdir, 'checkpoints', '4')}")
    assert "does not restore" in lines[0] and "4.damaged" in lines[0]
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "4.damaged"]


def test_the_run_continues_exactly_from_the_older_checkpoint(shared_run, tmp_path, capfd):
    c, full = shared_run("simclr")
    want = read_metrics(full)
    workdir = copy_run(full, tmp_path / "run")
    _damage(os.path.join(workdir, "checkpoints", "4"), "default/d/*", "truncate")
    resumed = train.train_and_evaluate(c, workdir)
    err = capfd.readouterr().err
    assert "checkpoints/4 does not restore" in err and "Traceback" not in err
    assert resumed["resumed_from_step"] == 2
    got = read_metrics(workdir)
    assert [r["step"] for r in got] == [1, 2, 3, 4]
    for a, b in zip(want, got):
        assert a["loss"] == b["loss"] and a["grad_norm"] == b["grad_norm"], (a, b)
    # The damaged step stays beside the new step 4 for inspection.
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "4", "4.damaged"]


def test_when_no_checkpoint_restores(shared_run, tmp_path):
    c, full = shared_run("simclr")
    workdir = copy_run(full, tmp_path / "run")
    for step in ("2", "4"):
        _damage(os.path.join(workdir, "checkpoints", step), "default/d/*", "delete")
    run = train._Run(c, workdir, None)
    ckpt = checkpoint.Checkpointer(workdir, c, keep=c.keep_checkpoints)
    lines = []
    assert ckpt.restore_latest(run.abstract, say=lines.append) == (None, None)
    ckpt.close()
    assert len(lines) == 3 and lines[-1].startswith("jssl: no checkpoint in"), lines
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2.damaged", "4.damaged"]
    # --mode=eval has nothing to evaluate: one line, nothing more moved or deleted.
    with pytest.raises(ConfigError, match="holds no checkpoint of this experiment"):
        train.evaluate_workdir(c, workdir)


# The command line, killed (SIGKILL) right after it hands checkpoint 4 to orbax's
# asynchronous save: the background write is under way when the process dies.
_KILLED_IN_SAVE = """
import os, signal, sys
from jssl import checkpoint, main
save = checkpoint.Checkpointer.save
def save_then_die(self, step, state):
    save(self, step, state)
    if step == 4:
        os.kill(os.getpid(), signal.SIGKILL)
checkpoint.Checkpointer.save = save_then_die
sys.exit(main.main(["jssl"] + sys.argv[1:]))
"""


def test_kill_during_an_asynchronous_save_then_resume_is_exact(shared_run, tmp_path):
    """Whatever the kill left of step 4 (nothing, orbax's temporary directory, or the
    complete step), the same command continues exactly as the uninterrupted run, with each
    step once in metrics.jsonl and no temporary directory left."""
    c, full = shared_run("simclr")
    workdir = str(tmp_path / "killed")
    flags = [
        "--config=configs/simclr.py:smoke",
        f"--workdir={workdir}",
        *(
            f"--config.{k}={v}"
            for k, v in {
                "total_steps": 4,
                "log_every": 1,
                "checkpoint_every": 2,
                "eval.random_init_baseline": False,
                "progress": False,
            }.items()
        ),
    ]
    done = subprocess.run(
        [sys.executable, "-c", _KILLED_IN_SAVE, *flags],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr[-3000:]
    assert not os.path.exists(os.path.join(workdir, "results.json"))
    left = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
    assert "2" in left, left

    resumed = train.train_and_evaluate(c, workdir)
    assert resumed["resumed_from_step"] in (2, 4), (resumed, left)
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "4"], left
    got, want = read_metrics(workdir), read_metrics(full)
    assert [r["step"] for r in got] == [1, 2, 3, 4]
    for a, b in zip(want, got):
        assert a["loss"] == b["loss"] and a["grad_norm"] == b["grad_norm"], (a, b)
    _, tree = checkpoint.restore_host(workdir, 4)
    _, ref = checkpoint.restore_host(full, 4)
    for a, b in zip(jax.tree_util.tree_leaves(tree), jax.tree_util.tree_leaves(ref)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
