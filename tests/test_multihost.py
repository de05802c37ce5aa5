"""Multi-process runs on one machine: two processes x 4 simulated CPU devices on 127.0.0.1.

The two processes (started with launch/local_multiprocess.sh, as a user would) form one
8-device mesh; each reads only its rows of every batch. They must compute what one process
with 8 devices computes, write metrics once, checkpoint collectively, and resume.
"""

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from jssl import checkpoint, parallel, train
from jssl import config as jc
from tests.shared import read_metrics, smoke
from tests.test_config import ROOT

SCRIPT = os.path.join(ROOT, "launch", "local_multiprocess.sh")
OVERRIDES = {"total_steps": 4, "log_every": 1, "checkpoint_every": 2, "plots": False}


def launch(args, logdir, timeout=540):
    """Two processes of `python -m jssl.main <args>`, 4 CPU devices each."""
    env = dict(os.environ, PYTHON=sys.executable, PYTHONUNBUFFERED="1")
    return subprocess.run(
        ["bash", SCRIPT, "-n", "2", "--cpu-devices", "4", "--logdir", str(logdir), "--", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def summary(stdout):
    """The JSON summary process 0 prints (among gloo's "[Gloo] Rank ..." lines, which its
    threads may interleave)."""
    return json.JSONDecoder().raw_decode(stdout[stdout.index('{\n "workdir"') :])[0]


def cli_args(name, workdir, **overrides):
    flat = {**OVERRIDES, "eval.random_init_baseline": False, **overrides}
    return [
        "--config",
        f"configs/{name}.py:smoke",
        "--workdir",
        str(workdir),
        *(f"--config.{k}={v}" for k, v in flat.items()),
    ]


@pytest.fixture(scope="module")
def two_process_runs(tmp_path_factory):
    """{name: workdir} of one 2-process run per method (Barlow Twins with plots)."""
    base = tmp_path_factory.mktemp("multihost")
    out = {}
    for name in ("barlow_twins", "simclr"):
        workdir = base / name
        extra = {"plots": True} if name == "barlow_twins" else {}
        done = launch(cli_args(name, workdir, **extra), base / f"{name}-logs")
        assert done.returncode == 0, done.stderr[-3000:]
        # Only process 0 prints the summary; process 1's log holds none.
        assert summary(done.stdout)["final_step"] == 4
        assert '"final_step"' not in (base / f"{name}-logs" / "process_1.log").read_text()
        out[name] = str(workdir)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", ["barlow_twins", "simclr"])
def test_two_processes_equal_one_process(two_process_runs, shared_run, name):
    workdir = two_process_runs[name]
    c, one = shared_run(name)  # the same config (OVERRIDES) on one process, 8 devices
    assert {k: c[k] for k in ("total_steps", "log_every", "checkpoint_every")} == {
        k: OVERRIDES[k] for k in ("total_steps", "log_every", "checkpoint_every")
    }
    with open(os.path.join(one, train.RESULTS_FILE)) as f:
        r1 = json.load(f)
    rows1, rows2 = read_metrics(one), read_metrics(workdir)
    assert [r["step"] for r in rows2] == [1, 2, 3, 4]  # written once, by process 0
    l1, l2 = [r["loss"] for r in rows1], [r["loss"] for r in rows2]
    # The same global-batch step: the first updates agree to float32 rounding (a process
    # reading the wrong rows, or per-process statistics, would differ at the percent level);
    # later steps as loose as 1 vs 8 devices in one process (test_train: Barlow Twins
    # amplifies reduction-order rounding; measured 5e-4 at step 3 here).
    np.testing.assert_allclose(l2[:2], l1[:2], rtol=1e-5)
    np.testing.assert_allclose(l2, l1, rtol=2e-3)
    with open(os.path.join(workdir, train.RESULTS_FILE)) as f:
        r2 = json.load(f)
    assert r2["final_step"] == 4
    assert r2["eval"]["knn_accuracy"] == pytest.approx(r1["eval"]["knn_accuracy"], abs=0.02)
    assert r2["eval"]["linear_accuracy"] == pytest.approx(r1["eval"]["linear_accuracy"], abs=0.03)
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "4"]
    for png in ("curves.png", "lr.png", "features.png"):
        if name == "barlow_twins":  # plots: test features gathered from both processes
            assert os.path.getsize(os.path.join(workdir, png)) > 10_000, png
        else:  # config.plots=False
            assert not os.path.exists(os.path.join(workdir, png)), png


@pytest.mark.slow
def test_two_process_run_resumes_from_its_checkpoint(two_process_runs, tmp_path):
    full = two_process_runs["barlow_twins"]
    part = tmp_path / "part"
    shutil.copytree(full, part)
    shutil.rmtree(part / "checkpoints" / "4")  # as if killed after the step-2 checkpoint
    done = launch(cli_args("barlow_twins", part, plots=False), tmp_path / "logs")
    assert done.returncode == 0, done.stderr[-3000:]
    with open(part / train.RESULTS_FILE) as f:
        assert json.load(f)["resumed_from_step"] == 2
    want, got = read_metrics(full), read_metrics(str(part))
    assert [r["step"] for r in got] == [1, 2, 3, 4]
    assert [r["loss"] for r in got] == [r["loss"] for r in want]  # same layout: bit-exact


@pytest.mark.slow
def test_eval_mode_without_config_reads_the_runs_config(two_process_runs, tmp_path, capsys):
    """`--mode=eval --workdir DIR`, no --config: the run's own config (config.json), here on
    one process with 8 devices, re-evaluates the checkpoint the two processes wrote."""
    from jssl import main

    workdir = str(tmp_path / "run")
    shutil.copytree(two_process_runs["simclr"], workdir)
    with open(os.path.join(workdir, train.RESULTS_FILE)) as f:
        before = json.load(f)
    assert main.main(["jssl.main", "--mode=eval", "--workdir", workdir]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["final_step"] == 4
    # The same evaluation settings (eval.max_examples=256 of the smoke preset, not the
    # base default 0 = whole splits) on the same weights: the same numbers.
    assert printed["eval"]["num_test"] == 256
    assert printed["eval"] == pytest.approx(before["eval"])


def test_saved_config_without_config_json(tmp_path):
    """A run without config.json (written before it existed): experiment.json over
    base_config's defaults, which fill the run-control fields."""
    c = smoke("barlow_twins")
    c.eval.knn_k = 7  # run-control: not in experiment.json, so it comes back as the default
    workdir = tmp_path / "old"
    workdir.mkdir()
    with open(workdir / "experiment.json", "w") as f:
        json.dump(jc.experiment_fields(c), f)
    got = checkpoint.saved_config(str(workdir))
    assert jc.experiment_fields(got) == json.loads(json.dumps(jc.experiment_fields(c)))
    assert got.eval.to_dict() == jc.base_config().eval.to_dict()
    assert got.plots is True and got.log_every == jc.base_config().log_every
    assert got.model.projector_hidden_dims == (32,)  # tuples, as in the config files
    assert got.loss.lambd == c.loss.lambd  # method fields absent from base_config
    jc.validate(got, num_devices=8)
    with pytest.raises(jc.ConfigError, match="holds no jssl run"):
        checkpoint.saved_config(str(tmp_path / "nothing"))


def test_process_rows_cover_the_batch_in_order():
    mesh = parallel.make_mesh()
    np.testing.assert_array_equal(parallel.process_rows(mesh, 32), np.arange(32))
    one = parallel.make_mesh(jax.devices()[:1])
    np.testing.assert_array_equal(parallel.process_rows(one, 8), np.arange(8))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(num_processes=2), "--coordinator_address, --process_id missing"),
        (
            dict(coordinator_address="127.0.0.1:1", num_processes=2, process_id=2),
            r"--process_id must be in \[0, 2\)",
        ),
        (dict(coordinator_address="localhost", num_processes=2, process_id=0), "not host:port"),
        (dict(coordinator_address="127.0.0.1:1", num_processes=0, process_id=0), ">= 1"),
    ],
)
def test_distributed_flags_are_checked_before_start(kwargs, match):
    kwargs = {"coordinator_address": None, "num_processes": None, "process_id": None, **kwargs}
    with pytest.raises(ValueError, match=match):
        parallel.initialize_distributed(**kwargs)


def test_cluster_detection(monkeypatch):
    for var in (
        "SLURM_JOB_ID",
        "SLURM_STEP_NODELIST",
        "SLURM_PROCID",
        "SLURM_LOCALID",
        "SLURM_NTASKS",
    ):
        monkeypatch.delenv(var, raising=False)
    assert parallel.detected_cluster() is None
    assert parallel.initialize_distributed() == 1  # nothing to start: one process
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    monkeypatch.setenv("SLURM_STEP_NODELIST", "node[01-02]")
    monkeypatch.setenv("SLURM_PROCID", "0")
    monkeypatch.setenv("SLURM_LOCALID", "0")
    monkeypatch.setenv("SLURM_NTASKS", "1")  # a single-task job: one process, all devices
    assert parallel.detected_cluster() is None
    monkeypatch.setenv("SLURM_NTASKS", "16")
    assert parallel.detected_cluster() == "slurm"


def test_cli_distributed_flag_error_is_one_line(tmp_path):
    from tests.test_cli import assert_one_line_error, run_cli

    done = run_cli(
        "--config",
        "configs/barlow_twins.py:smoke",
        "--workdir",
        str(tmp_path / "w"),
        "--num_processes=2",
        "--process_id=0",
    )
    assert_one_line_error(done, "--coordinator_address missing")
    assert not os.path.exists(tmp_path / "w")


def test_local_multiprocess_script_rejects_bad_arguments(tmp_path):
    for args, needle in (
        (["-n", "0", "--", "--workdir", "w"], "-n must be a positive integer"),
        (["-n", "2"], "no jssl arguments"),
    ):
        done = subprocess.run(
            ["bash", SCRIPT, *args], cwd=ROOT, capture_output=True, text=True, timeout=30
        )
        assert done.returncode == 2 and needle in done.stderr, done.stderr
