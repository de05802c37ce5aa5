"""The command line: every user mistake is one line on stderr, exit status 2, no work done."""
import os
import subprocess
import sys

import pytest

from tests.test_config import ROOT

SMOKE = "configs/barlow_twins.py:smoke"


def run_cli(*args, timeout=240):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "jssl.main", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def assert_one_line_error(done, *needles):
    err = done.stderr.strip()
    assert done.returncode == 2, (done.returncode, err)
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("jssl: error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.mark.parametrize("args,needles", [
    (["--config", SMOKE, "--config.no_such_field=1"], ["--config.no_such_field", "no field"]),
    (["--config", SMOKE, "--config.loss.lamb=1"], ["--config.loss.lamb", "did you mean 'lambd'"]),
    (["--config", SMOKE, "--bogus_flag=1"], ["unknown flag --bogus_flag"]),
    (["--config", SMOKE, "--config.batch_size=abc"], ["batch_size"]),
    (["--config", "configs/no_such_method.py"], ["config file configs/no_such_method.py not found"]),
    (["--config", "configs/barlow_twins.py:nope"], ["unknown preset 'nope'", "smoke"]),
    (["--config", SMOKE, "--config.batch_size=30"], ["config.batch_size", "not divisible by the 8 devices"]),
    (["--config", SMOKE, "--config.total_steps=0"], ["config.total_steps", "positive"]),
    (["--config", "configs/barlow_twins.py", "--config.model.stem=imagenet"],
     ["config.data.image_size", "too small for resnet18", "at least 32"]),
    (["--config", SMOKE, "--config.data.name=no_such_data"], ["no_such_data"]),
    (["--config", SMOKE, "--config.model.backbone=resnet19"], ["config.model.backbone", "resnet19"]),
    (["--config", SMOKE], ["--workdir"]),
])
def test_bad_config_is_one_line(tmp_path, args, needles):
    if "--workdir" not in needles:
        args = [*args, "--workdir", str(tmp_path / "w")]
    done = run_cli(*args)
    assert_one_line_error(done, *needles)
    assert not os.path.exists(tmp_path / "w")  # nothing written


def test_workdir_is_a_file(tmp_path):
    path = tmp_path / "afile"
    path.write_text("mine")
    assert_one_line_error(run_cli("--config", SMOKE, "--workdir", str(path)), "is a file")
    assert path.read_text() == "mine"


def test_workdir_not_writable():
    assert_one_line_error(run_cli("--config", SMOKE, "--workdir", "/proc/jssl-test-run"),
                          "not writable")


def test_smoke_run_then_other_experiment_refused(tmp_path):
    workdir = str(tmp_path / "run")
    done = run_cli("--config", SMOKE, "--workdir", workdir)
    assert done.returncode == 0, done.stderr
    assert os.path.exists(os.path.join(workdir, "results.json"))
    listing = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
    done = run_cli("--config", SMOKE, "--workdir", workdir, "--config.loss.lambd=0.5")
    assert_one_line_error(done, "different experiment", "loss.lambd")
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == listing
    # --mode=eval re-runs the evaluation of the finished run.
    done = run_cli("--config", SMOKE, "--workdir", workdir, "--mode=eval")
    assert done.returncode == 0, done.stderr
    assert '"knn_accuracy"' in done.stdout
