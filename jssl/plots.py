"""End-of-run pictures: PNG files in the workdir, the same images in TensorBoard.

    curves.png    training loss by step (metrics.jsonl) and evaluation accuracies (eval.jsonl)
    lr.png        the learning-rate schedule of config.optimizer, with the logged values
    features.png  t-SNE of the frozen features of (at most 500) test images, coloured by class

matplotlib (and scikit-learn for the t-SNE) are optional: `pip install 'jssl[plots]'`. Without
them a run prints one warning line and writes no plots; nothing else changes. The train loop
calls `write_plots` on process 0 only (`config.plots`, default True). Figures are drawn with
matplotlib's object API on an Agg canvas: no pyplot, no global backend switch.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

from jssl import io, paths
from jssl.metric_writer import EVAL_FILE, METRICS_FILE
from jssl.optim import learning_rate_schedule

__all__ = [
    "available",
    "can_embed",
    "figure",
    "curves_figure",
    "lr_figure",
    "features_figure",
    "write_plots",
    "PLOT_FILES",
    "MAX_POINTS",
]

PLOT_FILES = ("curves.png", "lr.png", "features.png")
MAX_POINTS = 500  # t-SNE points: a few seconds on a CPU


def _warn(message: str) -> None:
    print(f"jssl: warning: {message}", file=sys.stderr)


def available(*, warn: bool = True) -> bool:
    """True when matplotlib can be imported (else one warning line, when `warn`)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        if warn:
            _warn("matplotlib is not installed: no plots (pip install 'jssl[plots]')")
        return False
    return True


def can_embed(*, warn: bool = True) -> bool:
    """True when scikit-learn (t-SNE) can be imported (else one warning line, when `warn`)."""
    try:
        import sklearn.manifold  # noqa: F401
    except ImportError:
        if warn:
            _warn("scikit-learn is not installed: no features.png (pip install 'jssl[plots]')")
        return False
    return True


def figure(width: float, height: float, *, dpi: int = 100):
    """A matplotlib Figure (constrained layout) on its own Agg canvas: no pyplot, so drawing
    it never switches the global backend (a notebook's inline plots keep working). Raises
    ImportError without matplotlib (check `available()` first)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _read_jsonl(path: str) -> list[dict]:
    if not paths.exists(path):
        return []
    rows = []
    with paths.open_file(path) as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a kill: the rest is still good
                continue
    return rows


def _series(rows: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    pts = [
        (r["step"], r[key])
        for r in rows
        if isinstance(r.get(key), (int, float)) and np.isfinite(r[key])
    ]
    steps, values = zip(*pts) if pts else ((), ())
    return np.asarray(steps), np.asarray(values, dtype=float)


def curves_figure(metrics: list[dict], evals: list[dict]):
    """Left: every loss term of metrics.jsonl by step; right: every accuracy of eval.jsonl."""
    fig = figure(10, 4)
    ax_loss, ax_acc = fig.subplots(1, 2)
    loss_keys = sorted({k for r in metrics for k in r if k == "loss" or k.endswith("_loss")})
    for key in loss_keys:
        steps, values = _series(metrics, key)
        ax_loss.plot(steps, values, marker="." if len(steps) < 50 else None, label=key)
    ax_loss.set(xlabel="step", ylabel="loss", title="training loss")
    if loss_keys:
        ax_loss.legend(fontsize="small")
    acc_keys = sorted({k for r in evals for k in r if k.endswith("accuracy")})
    for key in acc_keys:
        steps, values = _series(evals, key)
        ax_acc.plot(steps, values, marker="o", label=key.removeprefix("eval/"))
    ax_acc.set(xlabel="step", ylabel="accuracy", title="evaluation (frozen features)")
    if acc_keys:
        ax_acc.legend(fontsize="small")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
    return fig


def lr_figure(config, metrics: list[dict]):
    """The schedule `jssl.optim.learning_rate_schedule` builds from config.optimizer over the
    whole run (line) and the learning rates the run logged (dots)."""
    schedule = learning_rate_schedule(
        config.optimizer, total_steps=config.total_steps, batch_size=config.batch_size
    )
    steps = np.unique(
        np.linspace(0, config.total_steps, min(config.total_steps + 1, 1000), dtype=np.int64)
    )
    fig = figure(6, 4)
    ax = fig.subplots()
    ax.plot(
        steps,
        np.asarray(schedule(steps)),  # optax schedules take arrays of steps
        label=f"{config.optimizer.schedule} schedule ({config.optimizer.name})",
    )
    logged_steps, logged = _series(metrics, "lr")
    if len(logged_steps):
        # The step's metrics report the rate used by that update, i.e. at step - 1.
        ax.plot(logged_steps - 1, logged, ".", label="logged")
    ax.set(xlabel="step", ylabel="learning rate", title="learning-rate schedule")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return fig


def features_figure(
    features: np.ndarray,
    labels: np.ndarray,
    *,
    seed: int = 0,
    max_points: int = MAX_POINTS,
    title: str = "test features",
):
    """t-SNE (scikit-learn) of at most `max_points` L2-normalised feature rows (the k-NN's
    cosine geometry), one colour per class."""
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits  # a scikit-learn dependency

    features = np.asarray(features, np.float32)
    labels = np.asarray(labels)
    if len(features) > max_points:
        keep = np.sort(np.random.default_rng(seed).choice(len(features), max_points, replace=False))
        features, labels = features[keep], labels[keep]
    x = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    if x.shape[1] > 50:  # the usual PCA step before t-SNE: faster, and denoised
        x = x - x.mean(axis=0)
        x = x @ np.linalg.svd(x, full_matrices=False)[2][:50].T
    perplexity = float(min(30.0, max(2.0, (len(x) - 1) / 3)))
    # One thread: for a few hundred points OpenMP threads only spin against the run's own
    # (measured on 2 busy cores: 4.6 s with one thread, 31 s with two).
    with threadpool_limits(1):
        xy = TSNE(
            n_components=2, perplexity=perplexity, init="pca", random_state=seed, max_iter=500
        ).fit_transform(x)
    fig = figure(6, 5.5)
    ax = fig.subplots()
    classes = np.unique(labels)
    if len(classes) <= 20:  # one qualitative colour per class, with a legend
        import matplotlib

        cmap = matplotlib.colormaps["tab10" if len(classes) <= 10 else "tab20"]
        for i, c in enumerate(classes):
            sel = labels == c
            ax.scatter(xy[sel, 0], xy[sel, 1], color=cmap(i), s=8, label=str(c))
        ax.legend(
            title="class",
            fontsize="small",
            markerscale=2,
            loc="center left",
            bbox_to_anchor=(1.0, 0.5),
        )
    else:
        points = ax.scatter(xy[:, 0], xy[:, 1], c=labels, cmap="viridis", s=8)
        fig.colorbar(points, ax=ax, label="class")
    ax.set(title=f"t-SNE of {len(x)} {title}", xticks=[], yticks=[])
    return fig


def _save(fig, path: str) -> np.ndarray:
    """Write `fig` to `path` (atomically) and return its pixels (H, W, 3) uint8."""
    io.write_with(path, lambda tmp: fig.savefig(tmp, format="png"))
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def write_plots(
    workdir: str, config, *, features=None, labels=None, writer=None, step: int = 0
) -> list[str]:
    """Write curves.png, lr.png and (given features and labels) features.png into `workdir`,
    and each as an image to `writer` (a jssl MetricWriter; TensorBoard "plots/<name>").

    Reads metrics.jsonl and eval.jsonl from the workdir. Returns the paths written; without
    matplotlib, one warning line and [].
    """
    if not available():
        return []
    metrics = _read_jsonl(os.path.join(workdir, METRICS_FILE))
    evals = _read_jsonl(os.path.join(workdir, EVAL_FILE))
    figures = {
        "curves": lambda: curves_figure(metrics, evals),
        "lr": lambda: lr_figure(config, metrics),
    }
    if features is not None and labels is not None and can_embed():
        figures["features"] = lambda: features_figure(features, labels, seed=config.seed)
    written = []
    for name, make in figures.items():
        path = os.path.join(workdir, f"{name}.png")
        pixels = _save(make(), path)
        written.append(path)
        if writer is not None:
            writer.write_image(step, f"plots/{name}", pixels)
    return written
