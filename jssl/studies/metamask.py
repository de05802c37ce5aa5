"""MetaMask against the same network without the mask (docs/methods.md section 3).

`python -m jssl.main --config configs/metamask.py:compare --workdir DIR` trains, for each seed
of `config.compare.seeds`, on the same data, model, losses, optimiser and step budget:

* **metamask**: the method as configured (`metamask.enabled = True`, `metamask.mode`);
* **no_mask**: `metamask.enabled = False`: no mask and no meta update, the baseline.

Reported: the k-NN (masked features for MetaMask) and linear-probe test accuracies, mean ±
sample std over seeds, and the per-seed difference. Plots: the learned mask values sorted
(from each MetaMask run's final checkpoint) and the mask's quantiles over training (the
`mask_q*` metrics every run logs at `log_every`). Every run is a sub-workdir of DIR, reused
when its results.json exists, so an interrupted study resumes. Writes DIR/results.json,
DIR/results.md, DIR/mask_sorted.png and DIR/mask_over_training.png.
"""

from __future__ import annotations

import json
import os
import time

import ml_collections
import numpy as np

from jssl import io, plots
from jssl.checkpoint import restore_host
from jssl.errors import ConfigError
from jssl.methods.metamask import mask_values
from jssl.metric_writer import METRICS_FILE
from jssl.studies.common import run_all, stats
from jssl.train import RESULTS_FILE

__all__ = ["ARMS", "run", "sub_configs"]

ARMS = ("metamask", "no_mask")
KEYS = ("knn_accuracy", "linear_accuracy", "linear_val_accuracy")


def sub_configs(config: ml_collections.ConfigDict, workdir: str) -> list[dict]:
    """Every run of the study, in order: dicts with arm, seed, workdir and config."""
    seeds = tuple(config.compare.seeds)
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ConfigError(
            f"config.compare.seeds: must be a non-empty tuple of integers, got {seeds!r}"
        )
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"config.compare.seeds: {seeds!r} repeats a seed")
    base = ml_collections.ConfigDict(config.to_dict())  # unlocked deep copy
    del base["study"]
    del base["compare"]
    runs = []
    for seed in seeds:
        for arm in ARMS:
            c = ml_collections.ConfigDict(base.to_dict())
            c.seed = seed
            c.metamask.enabled = arm == "metamask"
            runs.append(
                {
                    "arm": arm,
                    "seed": seed,
                    "config": c,
                    "workdir": os.path.join(workdir, f"{arm}_s{seed}"),
                }
            )
    return runs


def _cell(s: dict) -> str:
    return f"{100 * s['mean']:.2f} ± {100 * s['std']:.2f}"


def final_mask(workdir: str, config: ml_collections.ConfigDict) -> np.ndarray | None:
    """The mask M of the latest checkpoint in `workdir` (None: the run has no mask)."""
    _, tree = restore_host(workdir)
    return mask_values(tree, config)


def mask_history(workdir: str) -> dict[str, list[float]]:
    """{"step": [...], "mask_q00": [...], ...}: the mask quantiles the run logged."""
    out: dict[str, list[float]] = {}
    path = os.path.join(workdir, METRICS_FILE)
    if not os.path.exists(path):
        return out
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    rows = [r for r in rows if "mask_q50" in r]
    for key in ["step"] + sorted(k for k in (rows[0] if rows else {}) if k.startswith("mask_q")):
        out[key] = [r[key] for r in rows]
    return out


def _plot_sorted(masks: dict[int, np.ndarray], init: float, path: str) -> str | None:
    if not masks or not plots.available():
        return None
    fig = plots.figure(5.5, 3.5, dpi=120)
    ax = fig.subplots()
    for seed, m in sorted(masks.items()):
        ax.plot(np.sort(m)[::-1], label=f"seed {seed}")
    ax.axhline(init, color="gray", ls="--", lw=1, label=f"initial ({init:g})")
    ax.set_xlabel("feature dimension (sorted by mask value)")
    ax.set_ylabel("mask value M")
    ax.set_title("Learned MetaMask mask at the end of training")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path)
    return path


def _plot_history(histories: dict[int, dict], path: str) -> str | None:
    histories = {s: h for s, h in histories.items() if h.get("step")}
    if not histories or not plots.available(warn=False):
        return None
    from matplotlib import colormaps  # optional (the plots extra): imported once available

    fig = plots.figure(4.5 * len(histories), 3.5, dpi=120)
    axes = fig.subplots(1, len(histories), squeeze=False, sharey=True)
    for ax, (seed, h) in zip(axes[0], sorted(histories.items())):
        keys = sorted(k for k in h if k.startswith("mask_q"))
        colors = colormaps["viridis"](np.linspace(0, 1, len(keys)))
        for key, color in zip(keys, colors):
            q = int(key[len("mask_q") :])
            ax.plot(
                h["step"],
                h[key],
                color=color,
                label={0: "min", 50: "median", 100: "max"}.get(q, f"{q}%"),
            )
        ax.set_xlabel("training step")
        ax.set_title(f"seed {seed}")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("mask value quantiles")
    axes[0][-1].legend(fontsize=7, loc="best")
    fig.suptitle("MetaMask mask over training (quantiles over feature dimensions)")
    fig.savefig(path)
    return path


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Run (or resume) both arms for every seed; write the table and the plots."""
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise ConfigError(f"--workdir {workdir} is a file, not a directory; choose a new path")
    runs = sub_configs(config, workdir)
    os.makedirs(workdir, exist_ok=True)
    start = time.perf_counter()
    results = run_all(runs, lambda r: f"{r['arm']} seed {r['seed']}")

    seeds = list(config.compare.seeds)
    summary = {
        arm: {
            key: stats([results[r["workdir"]]["eval"][key] for r in runs if r["arm"] == arm])
            for key in KEYS
        }
        for arm in ARMS
    }
    diffs = {
        key: stats(
            [
                summary["metamask"][key]["values"][i] - summary["no_mask"][key]["values"][i]
                for i in range(len(seeds))
            ]
        )
        for key in ("knn_accuracy", "linear_accuracy")
    }
    masks, histories = {}, {}
    for r in runs:
        if r["arm"] == "metamask":
            masks[r["seed"]] = final_mask(r["workdir"], r["config"])
            histories[r["seed"]] = mask_history(r["workdir"])
    masks = {s: m for s, m in masks.items() if m is not None}
    init = 0.5 if config.metamask.sigmoid else 1.0
    mask_summary = {
        str(s): {
            "mean": float(m.mean()),
            "min": float(m.min()),
            "max": float(m.max()),
            "std": float(m.std()),
            "sorted": [float(x) for x in np.sort(m)[::-1]],
        }
        for s, m in masks.items()
    }

    mm = config.metamask
    lines = [
        "| arm | k-NN test acc. % | linear probe test acc. % | linear probe val acc. % |",
        "|---|---|---|---|",
    ]
    for arm in ARMS:
        s = summary[arm]
        lines.append(
            f"| {arm} | {_cell(s['knn_accuracy'])} | {_cell(s['linear_accuracy'])} | "
            f"{_cell(s['linear_val_accuracy'])} |"
        )
    for key, name in (("knn_accuracy", "k-NN"), ("linear_accuracy", "linear probe")):
        d = diffs[key]
        better = sum(x > 0 for x in d["values"])
        lines.append("")
        lines.append(
            f"- {name}: metamask - no_mask = {100 * d['mean']:+.2f} ± "
            f"{100 * d['std']:.2f} points (metamask higher in {better} of "
            f"{len(seeds)} seeds)"
        )
    lines += ["", f"Final mask M per seed (initial value {init:g}):", ""]
    for s, m in sorted(masks.items()):
        lines.append(
            f"- seed {s}: mean {m.mean():.4f}, min {m.min():.4f}, max {m.max():.4f}, "
            f"std {m.std():.4f}"
        )
    lines += [
        "",
        (
            f"{len(seeds)} seeds ({', '.join(map(str, seeds))}), mean ± sample std; "
            f"{int(config.total_steps)} steps per run, batch {int(config.batch_size)}; data "
            f"{config.data.name}, backbone {config.model.backbone} (width "
            f"{config.model.num_filters}); hypergradient mode {mm.mode}, mask lr {mm.lr:g}, "
            f"network lr {config.optimizer.lr:g}; k-NN k={int(config.eval.knn_k)} "
            f"(T={config.eval.knn_temperature:g}) on masked features for metamask."
        ),
        "",
    ]
    table = "\n".join(lines) + "\n"
    io.write_text(os.path.join(workdir, "results.md"), table)
    plots = [
        p
        for p in (
            _plot_sorted(masks, init, os.path.join(workdir, "mask_sorted.png")),
            _plot_history(histories, os.path.join(workdir, "mask_over_training.png")),
        )
        if p
    ]
    out = {
        "study": "metamask",
        "summary": summary,
        "difference": diffs,
        "mask": mask_summary,
        "mask_history": {str(s): h for s, h in histories.items()},
        "plots": plots,
        "runs": {
            r["workdir"]: {
                "arm": r["arm"],
                "seed": r["seed"],
                "eval": results[r["workdir"]]["eval"],
                "train_time_s": results[r["workdir"]].get("train_time_s"),
            }
            for r in runs
        },
        "wall_s_this_invocation": time.perf_counter() - start,
    }
    io.write_json(os.path.join(workdir, RESULTS_FILE), out)
    print(table)
    return out
