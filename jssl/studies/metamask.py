"""MetaMask against the pretext alone and against a random mask (docs/methods.md section 3),
under the study rules of docs/studies.md.

`python -m jssl.main --config configs/metamask.py:compare --workdir DIR` runs three stages,
every run a sub-workdir of DIR (a finished run is reused, so an interrupted study resumes):

1. **Tuning** on seed `compare.tune_seed` (not one of the test seeds), each arm over a grid
   of the same size, scored by the k-NN on the validation split (the paper's metric):
   the pretext alone (`no_mask`) over `compare.network_lrs`, then MetaMask over
   `compare.mask_lrs` at the network learning rate chosen for the pretext.
2. For each seed of `compare.seeds`, at the chosen values:
   * **metamask**: the learned mask (`metamask.mode`, exact by default);
   * **no_mask**: Barlow Twins + NT-Xent alone (`metamask.enabled = False`), which also
     evaluates a randomly initialised encoder of the same architecture (**random_init**);
3. * **random_mask**: a fixed mask (`metamask.learn = False`) whose logits are drawn at
     random with the spread (standard deviation over dimensions) of that seed's learned
     logits: is it *which* dimensions the mask weights, or only that it is not uniform?

The manipulation check: the learned mask's relative spread, std / mean of M over the feature
dimensions at the end of training. Below `compare.min_relative_spread` the mask did not move
and the verdicts say "inconclusive". Reported: k-NN (masked features for the masked arms)
and linear-probe test accuracies, mean ± std and the 95% t-interval of each paired
difference; the linear probe standardises every feature, so a positive per-dimension mask
drops out of it: its column shows what the mask did to the network's training, never the
mask itself. Writes DIR/results.json (with `seeds`, the grids, the choices and the
provenance), DIR/results.md, DIR/mask_sorted.png and DIR/mask_over_training.png.
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
from jssl.studies.common import (
    check_seeds,
    choose,
    fmt_diff,
    paired,
    provenance,
    run_all,
    run_base,
    stats,
    verdict,
)
from jssl.train import RESULTS_FILE

__all__ = ["ARMS", "run", "sub_configs", "tuning_configs"]

ARMS = ("metamask", "no_mask", "random_mask", "random_init")
KEYS = ("knn_accuracy", "linear_accuracy", "knn_val_accuracy", "linear_val_accuracy")
SELECT = "knn_val_accuracy"


def _check(config: ml_collections.ConfigDict) -> tuple:
    cmp = config.compare
    seeds = check_seeds(cmp.seeds)
    if cmp.tune_seed in seeds:
        raise ConfigError(
            f"config.compare.tune_seed: {cmp.tune_seed} is also a test seed; "
            "tune on a seed outside config.compare.seeds"
        )
    for field in ("network_lrs", "mask_lrs"):
        grid = tuple(cmp[field])
        if not grid or not all(isinstance(v, (int, float)) and v > 0 for v in grid):
            raise ConfigError(f"config.compare.{field}: must be positive numbers, got {grid!r}")
    if len(cmp.network_lrs) != len(cmp.mask_lrs):
        raise ConfigError(
            "config.compare.network_lrs, mask_lrs: the arms' grids must have the same size "
            f"(docs/studies.md rule 3), got {len(cmp.network_lrs)} and {len(cmp.mask_lrs)}"
        )
    if not 0 < cmp.min_relative_spread < 1:
        raise ConfigError(
            f"config.compare.min_relative_spread: must be in (0, 1), got {cmp.min_relative_spread}"
        )
    return seeds


def _run(base, workdir, name, *, seed, arm, network_lr, mask_lr=None, init_std=0.0, **extra):
    c = ml_collections.ConfigDict(base.to_dict())
    c.seed = int(seed)
    c.optimizer.lr = float(network_lr)
    c.metamask.enabled = arm != "no_mask"
    if mask_lr is not None:
        c.metamask.lr = float(mask_lr)
    if arm == "random_mask":
        c.metamask.learn = False
        c.metamask.init_std = float(init_std)
    if arm == "no_mask":
        c.eval.random_init_baseline = bool(extra.pop("random_init", False))
    return {
        "arm": arm,
        "seed": int(seed),
        "config": c,
        "workdir": os.path.join(workdir, name),
        **extra,
    }


def tuning_configs(config, workdir: str, chosen_network_lr: float | None = None) -> list[dict]:
    """The tuning runs: the pretext alone over `network_lrs`, then (once its learning rate
    is chosen) MetaMask over `mask_lrs`."""
    _check(config)
    cmp, base = config.compare, run_base(config)
    runs = [
        _run(
            base,
            workdir,
            f"tune/no_mask_lr{lr:g}",
            seed=cmp.tune_seed,
            arm="no_mask",
            network_lr=lr,
            value=float(lr),
        )
        for lr in cmp.network_lrs
    ]
    if chosen_network_lr is not None:
        runs += [
            _run(
                base,
                workdir,
                f"tune/metamask_nlr{chosen_network_lr:g}_mlr{mlr:g}",
                seed=cmp.tune_seed,
                arm="metamask",
                network_lr=chosen_network_lr,
                mask_lr=mlr,
                value=float(mlr),
            )
            for mlr in cmp.mask_lrs
        ]
    return runs


def sub_configs(
    config, workdir: str, network_lr: float, mask_lr: float, spreads: dict | None = None
) -> list[dict]:
    """The test runs at the chosen values: metamask and no_mask per seed, and (once the
    learned logits' spreads {seed: std} are known) random_mask per seed."""
    seeds = _check(config)
    base = run_base(config)
    runs = []
    for seed in seeds:
        runs.append(
            _run(
                base,
                workdir,
                f"metamask_s{seed}",
                seed=seed,
                arm="metamask",
                network_lr=network_lr,
                mask_lr=mask_lr,
            )
        )
        runs.append(
            _run(
                base,
                workdir,
                f"no_mask_s{seed}",
                seed=seed,
                arm="no_mask",
                network_lr=network_lr,
                random_init=True,
            )
        )
    if spreads is not None:
        for seed in seeds:
            runs.append(
                _run(
                    base,
                    workdir,
                    f"random_mask_s{seed}",
                    seed=seed,
                    arm="random_mask",
                    network_lr=network_lr,
                    init_std=spreads[seed],
                )
            )
    return runs


def final_mask(workdir: str, config: ml_collections.ConfigDict) -> np.ndarray | None:
    """The mask M of the latest checkpoint in `workdir` (None: the run has no mask)."""
    _, tree = restore_host(workdir)
    return mask_values(tree, config)


def final_logits(workdir: str) -> np.ndarray:
    """The mask logits m of the latest checkpoint in `workdir`."""
    _, tree = restore_host(workdir)
    return np.asarray(tree["extras"]["mask_logits"], np.float64)


def mask_history(workdir: str) -> dict[str, list[float]]:
    """{"step": [...], "mask_q00": [...], ..., "mask_mean", "mask_std"}: what the run logged."""
    out: dict[str, list[float]] = {}
    path = os.path.join(workdir, METRICS_FILE)
    if not os.path.exists(path):
        return out
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    rows = [r for r in rows if "mask_q50" in r]
    keys = sorted(k for k in (rows[0] if rows else {}) if k.startswith("mask_q"))
    for key in ["step", "mask_mean", "mask_std"] + keys:
        out[key] = [r[key] for r in rows if key in r]
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


def _plot_history(histories: dict[int, dict], threshold: float, path: str) -> str | None:
    histories = {s: h for s, h in histories.items() if h.get("step")}
    if not histories or not plots.available(warn=False):
        return None
    fig = plots.figure(5.5, 3.5, dpi=120)
    ax = fig.subplots()
    for seed, h in sorted(histories.items()):
        rel = [s / m for s, m in zip(h["mask_std"], h["mask_mean"])]
        ax.plot(h["step"], rel, label=f"seed {seed}")
    ax.axhline(threshold, color="gray", ls="--", lw=1, label=f"threshold ({threshold:g})")
    ax.set_xlabel("training step")
    ax.set_ylabel("std / mean of M over dimensions")
    ax.set_title("Manipulation check: the mask's relative spread")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path)
    return path


def _cell(s: dict) -> str:
    return f"{100 * s['mean']:.2f} ± {100 * s['std']:.2f}"


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Run (or resume) the tuning and every arm for every seed; write table, plots, JSON."""
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise ConfigError(f"--workdir {workdir} is a file, not a directory; choose a new path")
    seeds = _check(config)
    cmp = config.compare
    os.makedirs(workdir, exist_ok=True)
    start = time.perf_counter()
    prov = provenance()  # the code that runs: recorded before anything trains

    def label(r):
        return f"{r['arm']} seed {r['seed']}" + (f" ({r['workdir']})" if "value" in r else "")

    # 1. Tuning, on validation (a grid of one value has nothing to choose: no runs).
    def tuned(runs):
        grid = {f"{r['value']:g}": r["value"] for r in runs}
        if len(grid) == 1:
            return grid, {}, next(iter(grid.values()))
        res = run_all(runs, label)
        scores = {f"{r['value']:g}": res[r["workdir"]]["eval"][SELECT] for r in runs}
        return grid, scores, choose(grid, scores)[1]

    grid_n, scores_n, network_lr = tuned(tuning_configs(config, workdir))
    mm_tune = [r for r in tuning_configs(config, workdir, network_lr) if r["arm"] == "metamask"]
    grid_m, scores_m, mask_lr = tuned(mm_tune)
    tuning = {
        "seed": int(cmp.tune_seed),
        "score": SELECT,
        "network_lr": {"grid": list(grid_n.values()), "scores": scores_n, "chosen": network_lr},
        "mask_lr": {"grid": list(grid_m.values()), "scores": scores_m, "chosen": mask_lr},
    }

    # 2. metamask and no_mask per seed; 3. random_mask with each seed's learned spread.
    runs = sub_configs(config, workdir, network_lr, mask_lr)
    results = run_all(runs, label)
    logits = {r["seed"]: final_logits(r["workdir"]) for r in runs if r["arm"] == "metamask"}
    spreads = {s: float(v.std()) for s, v in logits.items()}
    runs = sub_configs(config, workdir, network_lr, mask_lr, spreads)
    results = run_all(runs, label)

    def values(arm, key):
        if arm == "random_init":
            return [
                results[r["workdir"]]["random_init_eval"][key]
                for r in runs
                if r["arm"] == "no_mask"
            ]
        return [results[r["workdir"]]["eval"][key] for r in runs if r["arm"] == arm]

    summary = {arm: {k: stats(values(arm, k)) for k in KEYS} for arm in ARMS}

    # The manipulation check.
    learned = {
        r["seed"]: final_mask(r["workdir"], r["config"]) for r in runs if r["arm"] == "metamask"
    }
    random_masks = {
        r["seed"]: final_mask(r["workdir"], r["config"]) for r in runs if r["arm"] == "random_mask"
    }
    rel = {s: float(m.std() / m.mean()) for s, m in learned.items()}
    threshold = float(cmp.min_relative_spread)
    moved = min(rel.values()) >= threshold
    blocked = (
        None
        if moved
        else (
            f"the mask did not move: relative spread {min(rel.values()):.4f} < {threshold:g} "
            "in at least one seed"
        )
    )
    histories = {r["seed"]: mask_history(r["workdir"]) for r in runs if r["arm"] == "metamask"}

    diffs = {
        f"{a}-{b}": {
            k: paired(values(a, k), values(b, k)) for k in ("knn_accuracy", "linear_accuracy")
        }
        for a, b in (
            ("metamask", "no_mask"),
            ("metamask", "random_mask"),
            ("random_mask", "no_mask"),
            ("no_mask", "random_init"),
        )
    }
    verdicts = [
        verdict(
            "MetaMask's learned mask improves the pretext's k-NN accuracy (metamask - no_mask)",
            diffs["metamask-no_mask"]["knn_accuracy"],
            blocked=blocked,
        ),
        verdict(
            "the learned mask beats a random mask of the same spread on k-NN (metamask - "
            "random_mask)",
            diffs["metamask-random_mask"]["knn_accuracy"],
            blocked=blocked,
        ),
    ]

    init = 0.5 if config.metamask.sigmoid else 1.0
    lines = [
        "| arm | k-NN test acc. % | linear probe test acc. % | k-NN val acc. % |",
        "|---|---|---|---|",
    ]
    for arm in ARMS:
        s = summary[arm]
        lines.append(
            f"| {arm} | {_cell(s['knn_accuracy'])} | {_cell(s['linear_accuracy'])} | "
            f"{_cell(s['knn_val_accuracy'])} |"
        )
    lines += ["", "Paired differences (A - B), mean and 95% t-interval over seeds:", ""]
    for name, d in diffs.items():
        lines.append(
            f"- {name}: k-NN {fmt_diff(d['knn_accuracy'])}; linear {fmt_diff(d['linear_accuracy'])}"
        )
    lines += [
        "",
        f"Manipulation check: relative spread std/mean of the learned M per seed "
        f"(threshold {threshold:g}): "
        + ", ".join(f"seed {s}: {v:.4f}" for s, v in sorted(rel.items()))
        + ("." if moved else " -- the mask did not move."),
    ]
    for s in sorted(learned):
        m = learned[s]
        lines.append(
            f"- seed {s}: learned M mean {m.mean():.4f}, min {m.min():.4f}, max "
            f"{m.max():.4f}, std {m.std():.4f}; random M std "
            f"{random_masks[s].std():.4f}"
        )
    lines += (
        [
            "",
            f"Tuning (seed {cmp.tune_seed}, k-NN on validation): network lr "
            + ", ".join(f"{k}: {100 * v:.1f}%" for k, v in scores_n.items())
            + f" -> {network_lr:g}; mask lr "
            + ", ".join(f"{k}: {100 * v:.1f}%" for k, v in scores_m.items())
            + f" -> {mask_lr:g}.",
            "",
            f"{len(seeds)} seeds ({', '.join(map(str, seeds))}), mean ± sample std; "
            f"{int(config.total_steps)} steps per run, batch {int(config.batch_size)}; data "
            f"{config.data.name}, backbone {config.model.backbone} (width "
            f"{config.model.num_filters}); hypergradient mode {config.metamask.mode}; k-NN "
            f"k={int(config.eval.knn_k)} (T={config.eval.knn_temperature:g}) on masked features "
            "for the masked arms.",
            "",
        ]
        + verdicts
        + [""]
    )
    table = "\n".join(lines) + "\n"
    io.write_text(os.path.join(workdir, "results.md"), table)
    made = [
        p
        for p in (
            _plot_sorted(learned, init, os.path.join(workdir, "mask_sorted.png")),
            _plot_history(histories, threshold, os.path.join(workdir, "mask_over_training.png")),
        )
        if p
    ]
    out = {
        "study": "metamask",
        "seeds": list(seeds),
        "tuning": tuning,
        "summary": summary,
        "difference": diffs,
        "manipulation_check": {
            "relative_spread": {str(s): v for s, v in rel.items()},
            "threshold": threshold,
            "moved": moved,
        },
        "verdict": verdicts,
        "mask": {
            str(s): {
                "mean": float(m.mean()),
                "min": float(m.min()),
                "max": float(m.max()),
                "std": float(m.std()),
                "logit_std": spreads[s],
                "sorted": [float(x) for x in np.sort(m)[::-1]],
            }
            for s, m in learned.items()
        },
        "mask_history": {str(s): h for s, h in histories.items()},
        "plots": made,
        "provenance": prov,
        "runs": {
            r["workdir"]: {
                "arm": r["arm"],
                "seed": r["seed"],
                "eval": results[r["workdir"]]["eval"],
                "train_time_s": results[r["workdir"]].get("train_time_s"),
            }
            for r in runs
        },
        "train_time_s": {
            arm: sum(
                results[r["workdir"]].get("train_time_s") or 0.0 for r in runs if r["arm"] == arm
            )
            for arm in ("metamask", "no_mask", "random_mask")
        },
        "wall_s_this_invocation": time.perf_counter() - start,
    }
    io.write_json(os.path.join(workdir, RESULTS_FILE), out)
    print(table)
    return out
