"""The command line: every user mistake is one line on stderr, exit status 2, no work done.

Most cases call `jssl.main.main(argv)` in this process (the same code path as the command,
without starting an interpreter and JAX per case); a few run the real command in a
subprocess, where the exit status and the absence of a traceback are the process's own.
"""

import contextlib
import io
import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest

from jssl import main as cli
from tests.shared import copy_run
from tests.test_config import ROOT

SMOKE = "configs/barlow_twins.py:smoke"


def run_cli(*args, timeout=240):
    """The real command in a subprocess: (returncode, stdout, stderr)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run(
        [sys.executable, "-m", "jssl.main", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def main_in_process(*args):
    """`jssl.main.main` in this process, from the repository root as the command is run:
    the same returncode / stdout / stderr as `run_cli` gives."""
    out, err = io.StringIO(), io.StringIO()
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = cli.main(["jssl.main", *args])
            except SystemExit as e:
                code = e.code
    finally:
        os.chdir(cwd)
    return SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())


def assert_one_line_error(done, *needles):
    err = done.stderr.strip()
    assert done.returncode == 2, (done.returncode, err)
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("jssl: error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.mark.parametrize(
    "args,needles",
    [
        (["--config", SMOKE, "--config.no_such_field=1"], ["--config.no_such_field", "no field"]),
        (
            ["--config", SMOKE, "--config.loss.lamb=1"],
            ["--config.loss.lamb", "did you mean 'lambd'"],
        ),
        (["--config", SMOKE, "--bogus_flag=1"], ["unknown flag --bogus_flag"]),
        (["--config", SMOKE, "--config.batch_size=abc"], ["batch_size"]),
        (
            ["--config", "configs/no_such_method.py"],
            ["config file configs/no_such_method.py not found"],
        ),
        (["--config", "configs/barlow_twins.py:nope"], ["unknown preset 'nope'", "smoke"]),
        (
            ["--config", SMOKE, "--config.batch_size=30"],
            ["config.batch_size", "not divisible by the 8 devices"],
        ),
        (["--config", SMOKE, "--config.total_steps=0"], ["config.total_steps", "positive"]),
        (
            ["--config", "configs/barlow_twins.py", "--config.model.stem=imagenet"],
            ["config.data.image_size", "too small for resnet18", "at least 32"],
        ),
        (["--config", SMOKE, "--config.data.name=no_such_data"], ["no_such_data"]),
        (
            ["--config", SMOKE, "--config.model.backbone=resnet19"],
            ["config.model.backbone", "resnet19"],
        ),
        (["--config", SMOKE], ["--workdir"]),
        # Checked before any work (they used to fail in the data thread or after training).
        (["--config", SMOKE, "--config.seed=-1"], ["config.seed", "integer >= 0"]),
        (["--config", SMOKE, "--config.eval.max_examples=-5"], ["config.eval.max_examples"]),
        (["--config", SMOKE, "--config.eval.linear_max_steps=0"], ["eval.linear_max_steps"]),
        (
            ["--config", SMOKE, "--config.eval.linear_weight_decays=()"],
            ["config.eval.linear_weight_decays", "non-empty"],
        ),
        (
            ["--config", SMOKE, "--config.eval.knn_k=100000"],
            ["config.eval.knn_k", "larger than the k-NN bank", "use at most"],
        ),
    ],
)
def test_bad_config_is_one_line(tmp_path, args, needles):
    if "--workdir" not in needles:
        args = [*args, "--workdir", str(tmp_path / "w")]
    done = main_in_process(*args)
    assert_one_line_error(done, *needles)
    assert not os.path.exists(tmp_path / "w")  # nothing written


def test_bad_config_in_a_real_process_is_one_line(tmp_path):
    """The command as a user runs it: exit status 2, one line, no traceback, nothing
    written (absl, jax and the config loader print nothing else)."""
    done = run_cli("--config", SMOKE, "--workdir", str(tmp_path / "w"), "--config.loss.lamb=1")
    assert_one_line_error(done, "--config.loss.lamb", "did you mean 'lambd'")
    done = run_cli("--config", SMOKE, "--workdir", str(tmp_path / "w"), "--config.batch_size=30")
    assert_one_line_error(done, "config.batch_size", "not divisible by the 8 devices")
    assert not os.path.exists(tmp_path / "w")


def test_workdir_is_a_file(tmp_path):
    path = tmp_path / "afile"
    path.write_text("mine")
    assert_one_line_error(main_in_process("--config", SMOKE, "--workdir", str(path)), "is a file")
    assert path.read_text() == "mine"


def test_workdir_not_writable():
    assert_one_line_error(
        main_in_process("--config", SMOKE, "--workdir", "/proc/jssl-test-run"), "not writable"
    )


def test_finished_run_then_other_experiment_refused_then_eval(shared_run, tmp_path):
    """On a finished run (the shared smoke run's copy): another experiment is refused
    without touching the checkpoints, and --mode=eval re-evaluates it, printing the
    results and keeping its numbers."""
    c, shared = shared_run("simclr")
    workdir = copy_run(shared, tmp_path / "run")
    config = "configs/simclr.py:smoke"
    run_fields = [
        "--config.total_steps=4",
        "--config.log_every=1",
        "--config.checkpoint_every=2",
        "--config.eval.random_init_baseline=False",
    ]
    listing = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
    done = main_in_process(
        "--config", config, "--workdir", workdir, *run_fields, "--config.loss.temperature=0.5"
    )
    assert_one_line_error(done, "different experiment", "loss.temperature")
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == listing
    with open(os.path.join(workdir, "results.json")) as f:
        before = json.load(f)
    done = main_in_process("--config", config, "--workdir", workdir, *run_fields, "--mode=eval")
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)
    assert printed["final_step"] == 4
    assert printed["eval"] == pytest.approx(before["eval"])


def test_a_study_config_goes_to_its_study(tmp_path, monkeypatch):
    """`--config` with a `study` field is run by `jssl.studies.run` (whose studies are
    tested end to end in their own files), with the overrides applied; the summary and
    verdict are printed; --mode=eval on a study is refused in one line."""
    from jssl import studies

    calls = []

    def fake_run(config, workdir):
        calls.append((config.study, config.total_steps, workdir))
        return {"verdict": ["MetaMask - no mask: +0.0 points"]}

    monkeypatch.setattr(studies, "run", fake_run)
    workdir = str(tmp_path / "study")
    done = main_in_process(
        "--config",
        "configs/metamask.py:compare_smoke",
        "--workdir",
        workdir,
        "--config.total_steps=2",
    )
    assert done.returncode == 0, done.stderr
    assert calls == [("metamask", 2, workdir)]
    assert json.loads(done.stdout) == {
        "workdir": workdir,
        "study": "metamask",
        "verdict": ["MetaMask - no mask: +0.0 points"],
    }
    assert_one_line_error(
        main_in_process(
            "--config", "configs/metamask.py:compare_smoke", "--workdir", workdir, "--mode=eval"
        ),
        "--mode=eval evaluates one run",
    )
    assert len(calls) == 1


def test_ctrl_c_outside_the_training_loop_is_one_line(monkeypatch, tmp_path):
    """Ctrl-C while compiling, evaluating or reading data (outside the loop's handler):
    one line and status 130, no KeyboardInterrupt traceback."""
    from jssl import train

    def interrupted(config, workdir):
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "train_and_evaluate", interrupted)
    done = main_in_process("--config", SMOKE, "--workdir", str(tmp_path / "w"))
    err = done.stderr.strip()
    assert done.returncode == 130 and "Traceback" not in err, (done.returncode, err)
    assert err.splitlines() == [
        "jssl: error: interrupted; the last checkpoint is kept: run the same command to resume"
    ]
