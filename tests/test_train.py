"""The train loop end to end on the smoke preset: outputs, 1 vs 8 devices, exact resume."""

import contextlib
import glob
import io
import json
import os
import signal
import struct
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from tensorboardX.proto import event_pb2

from jssl import config as jc
from jssl import train
from jssl.checkpoint import restore_host
from jssl.metric_writer import MetricWriter
from tests.shared import copy_run, read_metrics, smoke
from tests.test_config import ROOT


@pytest.mark.parametrize("name", ["barlow_twins", "simclr"])
def test_smoke_run_outputs(shared_run, name):
    c, workdir = shared_run(name)
    with open(os.path.join(workdir, "results.json")) as f:
        results = json.load(f)
    rows = read_metrics(workdir)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert all(np.isfinite(r["loss"]) and r["grad_norm"] > 0 for r in rows)
    assert results["final_step"] == 4 and results["resumed_from_step"] == 0
    assert results["train_step_compilations"] == 1  # no recompilation after step 1
    for key in ("eval", "random_init_eval") if c.eval.random_init_baseline else ("eval",):
        ev = results[key]
        assert 0.0 <= ev["knn_accuracy"] <= 1.0 and 0.0 <= ev["linear_accuracy"] <= 1.0
        assert ev["num_test"] == c.eval.max_examples
    assert any(
        f.startswith("events.out.tfevents")
        for f in os.listdir(os.path.join(workdir, "tensorboard"))
    )
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "4"]
    with open(os.path.join(workdir, "config.json")) as f:
        assert jc.from_nested(json.load(f)) == c


def test_eval_every_writes_evaluations_during_training(tmp_path):
    """eval_every > 0: an evaluation every eval_every steps (not at the last, which the end of
    the run evaluates), each a row of eval.jsonl with the accuracies."""
    c = smoke(total_steps=4, eval_every=2, checkpoint_every=4, log_every=2)
    workdir = str(tmp_path / "evals")
    results = train.train_and_evaluate(c, workdir)
    rows = read_metrics(workdir, "eval.jsonl")
    assert [r["step"] for r in rows] == [2, 4]  # step 2 during training, step 4 at the end
    assert all(0 <= r["eval/knn_accuracy"] <= 1 for r in rows)
    assert rows[-1]["eval/knn_accuracy"] == results["eval"]["knn_accuracy"]


def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_checkpoint(tmp_path):
    """A learning rate far too large: the loss becomes non-finite; the run stops at the first
    logged step that shows it, with one line naming the step and the fix, and the
    checkpoints written before it are kept."""
    c = smoke(total_steps=40, log_every=1, checkpoint_every=1)
    c.optimizer.lr = 1e12
    workdir = str(tmp_path / "nan")
    with pytest.raises(
        FloatingPointError,
        match=r"(loss|grad_norm|param_norm) is (nan|inf|-inf) at step (\d+) \(the first "
        r"non-finite of loss, grad_norm, param_norm\); lower config\.optimizer\.lr",
    ) as e:
        train.train_and_evaluate(c, workdir)
    assert "\n" not in str(e.value)
    step = int(str(e.value).split("at step ")[1].split()[0])
    assert 1 < step < 40
    kept = sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit())
    assert kept and kept[-1] == step - 1  # the failing step wrote nothing
    assert not os.path.exists(os.path.join(workdir, "results.json"))


def test_divergence_between_logging_steps_never_reaches_a_checkpoint(tmp_path, capsys):
    """The issue's case: parameters turn non-finite while the loss is still finite, between
    two logging steps. Checked on the device every step, the run stops at the next
    checkpoint step without saving it; every checkpoint kept is finite. The suggested fix
    then works on the same workdir: another seed is still refused, a lower learning rate
    restarts from the last kept checkpoint after a one-line notice and finishes."""
    c = smoke(total_steps=12, log_every=12, checkpoint_every=3)
    c.optimizer.lr = 1e6
    workdir = str(tmp_path / "diverged")
    with pytest.raises(FloatingPointError, match=r"is (nan|inf|-inf) at step") as e:
        train.train_and_evaluate(c, workdir)
    first = int(str(e.value).split("at step ")[1].split()[0])
    kept = sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit())
    assert all(k < first for k in kept), (kept, str(e.value))
    for k in kept:
        _, tree = restore_host(workdir, k)
        leaves = jax.tree_util.tree_leaves(tree["params"])
        assert all(np.isfinite(np.asarray(x)).all() for x in leaves), k
    assert not os.path.exists(os.path.join(workdir, "results.json"))
    assert os.path.exists(os.path.join(workdir, "diverged.json"))

    other = smoke(total_steps=12, log_every=12, checkpoint_every=3, seed=5)
    other.optimizer.lr = 1e6
    with pytest.raises(train.ConfigError, match=r"different experiment \(seed: .*stopped by"):
        train.train_and_evaluate(other, workdir)
    clip = smoke(total_steps=12, log_every=12, checkpoint_every=3)
    clip.optimizer.lr, clip.optimizer.clip_grad_norm = 0.1, 1.0  # another optimizer tree
    with pytest.raises(train.ConfigError, match="clipping not switched on or off"):
        train.train_and_evaluate(clip, workdir)

    capsys.readouterr()
    c.optimizer.lr = 0.1
    results = train.train_and_evaluate(c, workdir)
    err = capsys.readouterr().err
    notice = [line for line in err.splitlines() if "stopped by divergence" in line]
    assert len(notice) == 1 and "optimizer.lr: 1000000.0 -> 0.1" in notice[0], err
    assert f"at step {first}" in notice[0]
    assert results["resumed_from_step"] == (kept[-1] if kept else 0)
    assert results["final_step"] == 12 and np.isfinite(results["eval"]["linear_accuracy"])
    assert not os.path.exists(os.path.join(workdir, "diverged.json"))
    with open(os.path.join(workdir, "experiment.json")) as f:
        assert json.load(f)["optimizer.lr"] == 0.1


def test_keep_checkpoints_prunes_the_oldest(tmp_path):
    c = smoke(total_steps=4, checkpoint_every=1, keep_checkpoints=2, log_every=4)
    workdir = str(tmp_path / "keep")
    train.train_and_evaluate(c, workdir)
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["3", "4"]


def test_loss_decreases_and_parameters_change(tmp_path):
    """A real (small) run learns: the loss goes down, every parameter moves, and the linear
    probe beats the same network at its random initialisation. The run is the quickstart
    notebook's (Barlow Twins smoke, 100 steps), which asserts the same; here over 2 seeds."""
    for seed in (0, 1):
        c = jc.load_file("barlow_twins", "smoke")
        c.total_steps, c.checkpoint_every, c.log_every, c.seed = 100, 100, 5, seed
        workdir = str(tmp_path / f"learn{seed}")
        results = train.train_and_evaluate(c, workdir)
        losses = [r["loss"] for r in read_metrics(workdir)]
        # Per-step losses are noisy (new views every step): the last 5 logged against the
        # first 5.
        assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5]), losses
        assert results["eval"]["linear_accuracy"] > results["random_init_eval"]["linear_accuracy"]

    from jssl import checkpoint

    run = train._Run(c, workdir)
    state = checkpoint.Checkpointer(workdir, c, keep=2).restore(run.abstract)
    initial = run.init_fn(run.rng)
    moved = jax.tree_util.tree_map(
        lambda a, b: float(np.max(np.abs(np.asarray(a) - np.asarray(b)))),
        state.params,
        initial.params,
    )
    assert all(v > 0 for v in jax.tree_util.tree_leaves(moved))


@pytest.mark.parametrize("name", ["barlow_twins", "simclr"])
def test_one_device_equals_eight(shared_run, tmp_path, name):
    c, eight = shared_run(name)  # the 8-device run
    c = jc.from_nested(c.to_dict())
    c.plots, c.eval.random_init_baseline = False, False
    r1 = train.train_and_evaluate(c, str(tmp_path / "one"), devices=jax.devices()[:1])
    with open(os.path.join(eight, "results.json")) as f:
        r8 = json.load(f)
    l1 = [r["loss"] for r in read_metrics(str(tmp_path / "one"))]
    l8 = [r["loss"] for r in read_metrics(eight)]
    # Same global-batch step: the updates agree to float32 rounding (per-device BatchNorm
    # statistics or losses would differ at the percent level at once). What differs is
    # rounding only (test_float64_one_device_equals_eight: 1e-15 in float64): XLA compiles
    # the batch of 256 on one device and of 32 on eight differently, a third of the views'
    # pixels differ in the last bit, and the steps carry that on. Measured over these four
    # steps (under the tests' XLA flags): at most 4.2e-7 relative with LARS, 6e-6 with SGD.
    np.testing.assert_allclose(l1, l8, rtol=1e-5)
    # The online probe's global-batch step too (its loss: mean over the global batch).
    p1 = [r["online/linear_loss"] for r in read_metrics(str(tmp_path / "one"))]
    p8 = [r["online/linear_loss"] for r in read_metrics(eight)]
    np.testing.assert_allclose(p1, p8, rtol=1e-5)
    assert r1["eval"]["knn_accuracy"] == pytest.approx(r8["eval"]["knn_accuracy"], abs=0.02)


_FLOAT64_RUNS = """
import json, shutil, sys
import jax, numpy as np
from jssl import train
from jssl.checkpoint import restore_host
from tests.shared import read_metrics, smoke
out = {}
for n in (1, 8):
    c = smoke("barlow_twins", total_steps=4, log_every=1, checkpoint_every=4, plots=False,
              dtype="float64", **{"optimizer.name": sys.argv[2], "eval.max_examples": 64})
    workdir = f"{sys.argv[1]}/{n}"
    train.train_and_evaluate(c, workdir, devices=jax.devices()[:n])
    _, tree = restore_host(workdir)
    out[n] = ([r["loss"] for r in read_metrics(workdir)], jax.tree_util.tree_leaves(tree["params"]))
print(json.dumps({
    "loss1": out[1][0], "loss8": out[8][0],
    "dtypes": sorted({str(np.asarray(x).dtype) for x in out[1][1]}),
    "param_diff": max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
                      for a, b in zip(out[1][1], out[8][1])),
}))
"""


def test_float64_one_device_equals_eight(tmp_path, optimizer="sgd"):
    """The 1-vs-8 differences of float32 Barlow Twins are rounding, not semantics: the same
    pair of runs in float64 (`dtype="float64"`: parameters, views, computation and
    optimizer state) agrees to 1e-12 in every step's loss and in every final parameter.
    With SGD, whose float32 drift is the larger; LARS measured the same (1e-15)."""
    env = dict(os.environ, JAX_ENABLE_X64="1")
    done = subprocess.run(
        [sys.executable, "-c", _FLOAT64_RUNS, str(tmp_path), optimizer],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["dtypes"] == ["float64"]
    assert len(got["loss1"]) == 4
    np.testing.assert_allclose(got["loss1"], got["loss8"], rtol=1e-12)
    assert got["param_diff"] < 1e-12, got["param_diff"]


def test_resume_is_bit_exact_and_compiles_the_step_once(shared_run, tmp_path):
    c, full = shared_run("simclr")
    want = read_metrics(full)
    # An interrupted run: the same run, stopped after its step-2 checkpoint was written.
    part = copy_run(full, tmp_path / "part")
    import shutil

    shutil.rmtree(os.path.join(part, "checkpoints", "4"))
    resumed = train.train_and_evaluate(c, part)
    assert resumed["resumed_from_step"] == 2
    assert resumed["train_step_compilations"] == 1  # the restored state: no second compile
    got = read_metrics(part)
    assert [r["step"] for r in got] == [1, 2, 3, 4]
    for a, b in zip(want, got):
        assert a["loss"] == b["loss"] and a["grad_norm"] == b["grad_norm"], (a, b)
        assert a["online/linear_loss"] == b["online/linear_loss"], (a, b)


def test_a_run_of_an_older_version_is_the_same_experiment(shared_run, tmp_path):
    """A field a newer jssl adds (here the ViT fields) is absent from an older run's
    experiment.json: at its default it is no change, and the run resumes; at another value
    it is a different experiment."""
    c, full = shared_run("simclr")
    workdir = copy_run(full, tmp_path / "older")
    path = os.path.join(workdir, "experiment.json")
    with open(path) as f:
        fields = json.load(f)
    del fields["model.patch_size"], fields["model.pool"]
    with open(path, "w") as f:
        json.dump(fields, f)
    assert train.train_and_evaluate(c, workdir)["resumed_from_step"] == 4
    other = jc.from_nested(c.to_dict())
    other.model.pool = "gap"
    with pytest.raises(jc.ConfigError, match=r"model\.pool: '<absent>' -> 'gap'"):
        train.train_and_evaluate(other, workdir)


def test_finished_run_is_not_retrained(shared_run, tmp_path):
    c, workdir = shared_run("simclr")
    again = train.train_and_evaluate(c, copy_run(workdir, tmp_path / "done"))
    assert again["resumed_from_step"] == 4 and again["train_step_compilations"] == 0


def test_other_experiment_in_workdir_is_refused_and_untouched(shared_run, tmp_path):
    _, shared = shared_run("barlow_twins")
    workdir = copy_run(shared, tmp_path / "exp")
    before = {
        os.path.join(d, f): os.stat(os.path.join(d, f)).st_mtime_ns
        for d, _, files in os.walk(workdir)
        for f in files
    }
    other = jc.from_nested(shared_run("barlow_twins")[0].to_dict())
    other.loss.lambd = 0.02
    with pytest.raises(
        jc.ConfigError, match=r"holds a different experiment \(loss\.lambd: 0\.0051 -> 0\.02\)"
    ):
        train.train_and_evaluate(other, workdir)
    after = {
        os.path.join(d, f): os.stat(os.path.join(d, f)).st_mtime_ns
        for d, _, files in os.walk(workdir)
        for f in files
    }
    assert before == after


def _cli(*args, **kw):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [sys.executable, "-m", "jssl.main", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def _wait_for_rows(work: str, rows: int, p) -> None:
    """Until metrics.jsonl has `rows` lines (training under way) or the process ended."""
    path = os.path.join(work, "metrics.jsonl")
    deadline = time.time() + 300
    while time.time() < deadline and p.poll() is None:
        if os.path.exists(path):
            with open(path) as f:
                if len(f.readlines()) >= rows:
                    return
        time.sleep(0.01)
    raise AssertionError(f"{work}: no {rows} metrics rows (exit {p.poll()})")


@pytest.mark.slow
def test_kill_9_sigterm_and_ctrl_c_then_resume_is_exact(tmp_path):
    """kill -9 during training (possibly mid-checkpoint), then SIGTERM, then Ctrl-C (SIGINT),
    each followed by the same command: the same losses as uninterrupted, every step once in
    metrics.jsonl. SIGTERM and SIGINT end the run after the current step with a checkpoint
    of that step, one line and exit status 75. (The uninterrupted reference runs in this
    process: the same program on the same 8 devices as the command line's.)"""
    total = 40
    fields = {"total_steps": total, "log_every": 1, "checkpoint_every": 4}
    common = [
        "--config",
        "configs/barlow_twins.py:smoke",
        "--config.eval.random_init_baseline=False",
        *(f"--config.{k}={v}" for k, v in fields.items()),
    ]
    ref = str(tmp_path / "ref")
    train.train_and_evaluate(smoke(**fields), ref)
    want = read_metrics(ref)

    work = str(tmp_path / "interrupted")
    p = _cli(*common, "--workdir", work)
    _wait_for_rows(work, 6, p)  # past the step-4 checkpoint
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert len(read_metrics(work)) < total
    for sig, rows in ((signal.SIGTERM, 16), (signal.SIGINT, 26)):
        p = _cli(*common, "--workdir", work)
        _wait_for_rows(work, rows, p)
        p.send_signal(sig)
        code = p.wait(timeout=300)
        err = p.stderr.read()
        assert code == 75, (code, err)
        assert "Traceback" not in err, err
        line = [ln for ln in err.splitlines() if ln.startswith("jssl: ")][-1]
        assert line.startswith(f"jssl: stopped by {sig.name} after step "), line
        stopped = int(line.split("after step ")[1].split()[0])
        assert rows <= stopped < total and "run the same command to resume" in line
        assert str(stopped) in os.listdir(os.path.join(work, "checkpoints"))
        steps = [r["step"] for r in read_metrics(work)]
        assert steps == list(range(1, stopped + 1)), steps  # each step once, none lost
    p = _cli(*common, "--workdir", work)
    assert p.wait(timeout=300) == 0, p.stderr.read()
    got = read_metrics(work)
    assert [r["step"] for r in got] == list(range(1, total + 1))
    assert [r["loss"] for r in got] == [r["loss"] for r in want]


_ONE_STEP = """
import jax, numpy as np
from jssl import config as jc, methods, parallel
c = jc.load_file("simclr", "smoke")
mesh = parallel.make_mesh()
repl, data = parallel.replicated(mesh), parallel.batch_sharding(mesh)
method = methods.build(c, methods.DataInfo(10, (16, 16, 1)), mesh)
state = jax.jit(method.init, out_shardings=repl)(jax.random.PRNGKey(0))
rng = np.random.default_rng(0)
batch = jax.device_put({"image": rng.integers(0, 256, (32, 16, 16, 1), dtype=np.uint8),
                        "label": np.zeros(32, np.int32)}, data)
step = jax.jit(method.train_step, in_shardings=(repl, data), out_shardings=(repl, repl))
state, metrics = step(state, batch)
leaves = jax.tree_util.tree_leaves(state.params)
print(float(metrics["loss"]), float(metrics["grad_norm"]),
      float(sum(np.sum(np.asarray(x, np.float64)) for x in leaves)))
"""


def test_the_test_xla_flags_keep_the_numbers():
    """The suite compiles with less LLVM optimisation (tests/conftest.py); a sharded train
    step (augmentation included) under XLA's default flags, in a subprocess, gives the same
    loss, gradient norm and parameters as here, to float32 rounding."""
    assert "xla_backend_optimization_level=0" in os.environ["XLA_FLAGS"]
    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", PYTHONUNBUFFERED="1"
    )
    done = subprocess.run(
        [sys.executable, "-c", _ONE_STEP],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    default = [float(x) for x in done.stdout.split()]
    namespace = {}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(_ONE_STEP, namespace)
    here = [float(x) for x in out.getvalue().split()]
    np.testing.assert_allclose(here, default, rtol=1e-6)


def test_bfloat16_run(tmp_path):
    """dtype=bfloat16: the model computes in bfloat16, parameters and losses stay float32."""
    c = smoke(dtype="bfloat16", total_steps=4, log_every=2, checkpoint_every=4)
    workdir = str(tmp_path / "bf16")
    results = train.train_and_evaluate(c, workdir)
    assert all(np.isfinite(r["loss"]) for r in read_metrics(workdir))
    run = train._Run(c, workdir)
    assert all(x.dtype == np.float32 for x in jax.tree_util.tree_leaves(run.abstract.params))
    assert results["eval"]["knn_accuracy"] > 0.0


def test_results_record_the_environment_and_eval_keeps_the_training_record(shared_run, tmp_path):
    c, full = shared_run("simclr")
    results = json.load(open(os.path.join(full, "results.json")))
    env = results["environment"]
    assert env["devices"] == jax.device_count() and env["processes"] == 1
    assert env["backend"] == "cpu" and env["jax"] == jax.__version__
    for key in ("device_kind", "jaxlib", "flax", "optax", "jssl", "commit"):
        assert key in env, key
    workdir = copy_run(full, tmp_path / "again")
    again = train.evaluate_workdir(c, workdir)
    for key in train.TRAINING_RECORD:  # --mode=eval replaces the evaluation only
        assert again[key] == results[key], key
    assert again["eval"]["knn_accuracy"] == results["eval"]["knn_accuracy"]
    assert (
        json.load(open(os.path.join(workdir, "results.json")))["train_time_s"]
        == (results["train_time_s"])
    )


def test_a_start_without_a_checkpoint_does_not_own_the_workdir(tmp_path):
    """A start that failed before its first checkpoint (here: another experiment's files,
    metrics rows and no checkpoint) does not block a corrected command."""
    workdir = tmp_path / "failed"
    workdir.mkdir()
    (workdir / "experiment.json").write_text(json.dumps({"loss.lambd": 0.5}))
    (workdir / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 9.0}) + "\n")
    c = smoke(total_steps=2, log_every=1, checkpoint_every=2)
    out = train.train_and_evaluate(c, str(workdir))
    assert out["resumed_from_step"] == 0 and out["final_step"] == 2
    assert [r["step"] for r in read_metrics(str(workdir))] == [1, 2]
    assert json.load(open(workdir / "experiment.json"))["total_steps"] == 2


def test_raising_total_steps_extends_a_finished_run(shared_run, tmp_path, capfd):
    c, full = shared_run("simclr")  # 4 steps, checkpoints at 2 and 4
    workdir = copy_run(full, tmp_path / "longer")
    longer = jc.from_nested(c.to_dict())
    longer.total_steps = 6
    out = train.train_and_evaluate(longer, workdir)
    err = capfd.readouterr().err
    assert "jssl: extending the run in" in err and "total_steps=4 to 6" in err
    assert out["resumed_from_step"] == 4 and out["final_step"] == 6
    rows = read_metrics(workdir)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert rows[:4] == read_metrics(full)  # the first four steps are the original run's
    assert json.load(open(os.path.join(workdir, "experiment.json")))["total_steps"] == 6
    shorter = jc.from_nested(c.to_dict())
    shorter.total_steps = 3  # fewer steps, or any other field: still another experiment
    with pytest.raises(jc.ConfigError, match=r"total_steps: 6 -> 3.*only total_steps may grow"):
        train.train_and_evaluate(shorter, workdir)


def _events(path: str):
    """The Event protos of a TensorBoard event file (TFRecord framing, no TensorFlow)."""
    data, out, i = open(path, "rb").read(), [], 0
    while i < len(data):
        (n,) = struct.unpack("<Q", data[i : i + 8])
        event = event_pb2.Event()
        event.ParseFromString(data[i + 12 : i + 12 + n])
        out.append(event)
        i += 12 + n + 4
    return out


def test_tensorboard_hides_the_steps_a_resumed_run_redoes(tmp_path):
    """After a resume from step 2, TensorBoard is told to purge the old events from step 3
    on (a SessionLog START at step 3), so no step is shown twice."""
    workdir = str(tmp_path)
    first = MetricWriter(workdir)
    for step in (1, 2, 3, 4):
        first.write(step, {"loss": float(step)})
    first.close()
    time.sleep(1.1)  # event file names carry the second they were opened in
    resumed = MetricWriter(workdir, resume_step=2)
    for step in (3, 4):
        resumed.write(step, {"loss": 10.0 + step})
    resumed.close()
    files = sorted(glob.glob(os.path.join(workdir, "tensorboard", "events.out.tfevents.*")))
    assert len(files) == 2
    starts = [
        e.step
        for e in _events(files[1])
        if e.HasField("session_log") and e.session_log.status == e.session_log.START
    ]
    assert starts == [3]
    assert not any(e.HasField("session_log") for e in _events(files[0]))
    assert [r["step"] for r in read_metrics(workdir)] == [1, 2, 3, 4]
