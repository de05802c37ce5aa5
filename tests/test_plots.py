"""End-of-run plots: PNG files with the right content, TensorBoard images, optional extras."""

import glob
import json
import os
import sys

import ml_collections
import numpy as np
import pytest

from jssl import config as jc
from jssl import optim, plots, train
from jssl.metric_writer import EVAL_FILE, MetricWriter
from tests.shared import smoke

TAB10 = [(31, 119, 180), (255, 127, 14), (44, 160, 44)]  # matplotlib's first three classes


def _workdir(tmp_path, config):
    """A workdir with the logs of a short run: loss 2 -> 1 over 10 steps, two evaluations."""
    workdir = str(tmp_path / "run")
    writer = MetricWriter(workdir)
    schedule = optim.learning_rate_schedule(
        config.optimizer, total_steps=config.total_steps, batch_size=config.batch_size
    )
    for step in range(1, 11):
        writer.write(step, {"loss": 2.0 - step / 10, "lr": float(schedule(step - 1))})
    writer.write(5, {"eval/knn_accuracy": 0.3, "eval/linear_accuracy": 0.4}, file=EVAL_FILE)
    writer.write(10, {"eval/knn_accuracy": 0.5, "eval/linear_accuracy": 0.7}, file=EVAL_FILE)
    return workdir, writer


def _clusters(n_per_class=60, dim=32, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(3), n_per_class)
    centres = rng.normal(size=(3, dim)) * 5
    return centres[labels] + rng.normal(size=(len(labels), dim)), labels


def _pixels(path):
    import matplotlib.image

    return (matplotlib.image.imread(path)[..., :3] * 255).round().astype(np.uint8)


def _has_colour(img, rgb, atol=2):
    return bool(np.any(np.all(np.abs(img.astype(int) - rgb) <= atol, axis=-1)))


def test_write_plots_pngs_and_tensorboard_images(tmp_path):
    c = smoke(total_steps=10)
    c.optimizer.warmup_steps = 3
    workdir, writer = _workdir(tmp_path, c)
    features, labels = _clusters()
    written = plots.write_plots(
        workdir, c, features=features, labels=labels, writer=writer, step=10
    )
    writer.close()
    assert [os.path.basename(p) for p in written] == list(plots.PLOT_FILES)
    for path in written:
        img = _pixels(path)
        assert img.shape[0] >= 300 and img.shape[1] >= 500, (path, img.shape)
        assert img.std() > 10 and len(np.unique(img.reshape(-1, 3), axis=0)) > 50, path
    # Every class of the feature picture has its own colour.
    feature_img = _pixels(os.path.join(workdir, "features.png"))
    assert all(_has_colour(feature_img, rgb) for rgb in TAB10)
    # The same pictures in TensorBoard's Images tab (PNG-encoded image summaries).
    (events,) = glob.glob(os.path.join(workdir, "tensorboard", "events.out.tfevents.*"))
    data = open(events, "rb").read()
    for name in ("curves", "lr", "features"):
        assert f"plots/{name}".encode() in data
    assert data.count(b"\x89PNG") >= 3


def test_figures_plot_the_logged_series_and_the_schedule(tmp_path):
    c = smoke(total_steps=10)
    c.optimizer.warmup_steps = 3
    workdir, writer = _workdir(tmp_path, c)
    writer.close()
    metrics = plots._read_jsonl(os.path.join(workdir, "metrics.jsonl"))
    evals = plots._read_jsonl(os.path.join(workdir, EVAL_FILE))
    loss_ax, acc_ax = plots.curves_figure(metrics, evals).axes
    (loss,) = loss_ax.lines
    np.testing.assert_allclose(loss.get_xdata(), np.arange(1, 11))
    np.testing.assert_allclose(loss.get_ydata(), 2.0 - np.arange(1, 11) / 10)
    acc = {line.get_label(): line.get_ydata().tolist() for line in acc_ax.lines}
    assert acc == {"knn_accuracy": [0.3, 0.5], "linear_accuracy": [0.4, 0.7]}

    (ax,) = plots.lr_figure(c, metrics).axes
    curve, logged = ax.lines
    schedule = optim.learning_rate_schedule(c.optimizer, total_steps=10, batch_size=c.batch_size)
    np.testing.assert_allclose(curve.get_xdata(), np.arange(11))
    np.testing.assert_allclose(
        curve.get_ydata(), [float(schedule(s)) for s in range(11)], rtol=1e-6
    )
    assert curve.get_ydata()[0] == 0 and np.argmax(curve.get_ydata()) == 3  # warm-up, peak
    # Logged rates sit on the schedule (the step's metrics report the rate of its update).
    np.testing.assert_allclose(
        logged.get_ydata(),
        np.interp(logged.get_xdata(), curve.get_xdata(), curve.get_ydata()),
        rtol=1e-6,
    )


def test_missing_extras_are_one_warning_line(tmp_path, monkeypatch, capsys):
    c = smoke(total_steps=10)
    workdir, writer = _workdir(tmp_path, c)
    writer.close()
    features, labels = _clusters(n_per_class=10)
    for name in ("sklearn", "sklearn.manifold"):
        monkeypatch.setitem(sys.modules, name, None)  # import fails
    written = plots.write_plots(workdir, c, features=features, labels=labels)
    assert [os.path.basename(p) for p in written] == ["curves.png", "lr.png"]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("jssl: warning: scikit-learn is not installed")

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    os.remove(os.path.join(workdir, "curves.png"))
    assert plots.write_plots(workdir, c) == []
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "matplotlib is not installed" in err[0]
    assert not os.path.exists(os.path.join(workdir, "curves.png"))


def test_plots_is_run_control():
    a, b = smoke(plots=True), smoke(plots=False)
    assert jc.experiment_fields(a) == jc.experiment_fields(b)
    loose = b.to_dict()
    loose["plots"] = "yes"  # e.g. from a hand-written config
    with pytest.raises(jc.ConfigError, match="config.plots: must be True or False"):
        jc.validate(ml_collections.ConfigDict(loose), num_devices=8)


def test_a_run_writes_its_plots(shared_run):
    """The train loop on the smoke preset (the shared Barlow Twins run, plots=True): the
    three PNGs and their TensorBoard images."""
    _, workdir = shared_run("barlow_twins")
    with open(os.path.join(workdir, "results.json")) as f:
        results = json.load(f)
    for name in plots.PLOT_FILES:
        assert os.path.getsize(os.path.join(workdir, name)) > 10_000, name
    with open(os.path.join(workdir, train.CONFIG_FILE)) as f:
        assert json.load(f)["plots"] is True
    (events,) = glob.glob(os.path.join(workdir, "tensorboard", "events.out.tfevents.*"))
    assert b"plots/features" in open(events, "rb").read()
    # The feature picture shows the test split's classes (the embedded MNIST: 10).
    assert (
        sum(_has_colour(_pixels(os.path.join(workdir, "features.png")), rgb) for rgb in TAB10) == 3
    )
    assert results["final_step"] == 4
