"""The comparison of Chhipa et al. (2023): functional vs representational knowledge transfer.

`python -m jssl.main --config configs/fkt.py:compare --workdir DIR` runs, on the same data,
seeds, model, optimiser and step budget, for each labelled fraction of `config.compare`:

* **functional**: the joint method, `CE + lambda * L_SSL` through one backbone
  (`config.joint.ssl_weight`, the paper's lambda = 1), from a random initialisation (or
  `model.init_from` when the representational arm is left out);
* **representational**: SSL pretraining alone (the same pretext, projector, augmentation and
  optimiser; `method=pretrain` on `eval.train_split`, all of it, without labels, for
  `compare.pretrain_steps`), then full fine-tuning of every layer on the labelled subset
  (the joint method with lambda = 0 and `model.init_from` = the pretraining run);
* **supervised**: the joint method with lambda = 0 from the same initialisation as
  functional.

Each fine-tuning/joint run trains for `total_steps` on the seeded, class-balanced labelled
subset (`joint.subset_seed`: the same images for every seed and arm). Reported: the
classifier's accuracy on `eval.test_split` at the last step (nothing is selected on test;
`classifier_val_accuracy` is reported beside it), and the backbone's k-NN and linear-probe
accuracies. Every run is a sub-workdir of DIR, reused when its results.json exists, so an
interrupted study resumes. Writes DIR/results.json, DIR/results.md and
DIR/accuracy_vs_fraction.png.
"""

from __future__ import annotations

import os
import time

import ml_collections

from jssl import io, plots
from jssl.errors import ConfigError
from jssl.studies.common import run_all, stats
from jssl.train import RESULTS_FILE

__all__ = ["ARMS", "run", "sub_configs"]

ARMS = ("functional", "representational", "supervised")


def _base(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict(config.to_dict())  # unlocked deep copy
    del c["study"]
    del c["compare"]
    c.eval.random_init_baseline = False
    return c


def _pretrain_config(base: ml_collections.ConfigDict, seed: int, steps: int):
    c = ml_collections.ConfigDict(base.to_dict())
    c.method = "pretrain"
    del c["joint"]
    c.data.train_split = base.eval.train_split  # the whole training split, labels unused
    c.seed = seed
    c.total_steps = steps
    c.checkpoint_every = min(c.checkpoint_every, steps)
    return c


def sub_configs(config: ml_collections.ConfigDict, workdir: str) -> list[dict]:
    """Every run of the study, in order: dicts with arm, fraction, seed, workdir, config,
    and `needs` (the workdir whose checkpoint must exist first, or None)."""
    cmp = config.compare
    if config.model.get("init_from") and "representational" in cmp.arms:
        raise ConfigError(
            "config.model.init_from: the comparison starts every arm from scratch "
            "(the pretraining run is the representational arm's init); unset it "
            "or drop 'representational' from config.compare.arms"
        )
    unknown = set(cmp.arms) - set(ARMS)
    if unknown:
        raise ConfigError(
            f"config.compare.arms: unknown {sorted(unknown)}; choose from {', '.join(ARMS)}"
        )
    for f in cmp.fractions:
        if not 0 < f <= 1:
            raise ConfigError(f"config.compare.fractions: {f} is not in (0, 1]")
    base = _base(config)
    steps = int(cmp.pretrain_steps or base.total_steps)
    runs = []
    for seed in cmp.seeds:
        pre_dir = os.path.join(workdir, f"pretrain_s{seed}")
        if "representational" in cmp.arms:
            runs.append(
                {
                    "arm": "pretrain",
                    "fraction": None,
                    "seed": seed,
                    "workdir": pre_dir,
                    "config": _pretrain_config(base, seed, steps),
                    "needs": None,
                }
            )
        for fraction in cmp.fractions:
            for arm in cmp.arms:
                c = ml_collections.ConfigDict(base.to_dict())
                c.seed = seed
                c.joint.labelled_fraction = float(fraction)
                needs = None
                if arm != "functional":
                    c.joint.ssl_weight = 0.0
                if arm == "representational":
                    c.model.init_from = needs = pre_dir
                runs.append(
                    {
                        "arm": arm,
                        "fraction": float(fraction),
                        "seed": seed,
                        "workdir": os.path.join(workdir, f"{arm}_f{fraction:g}_s{seed}"),
                        "config": c,
                        "needs": needs,
                    }
                )
    return runs


def _cell(s: dict) -> str:
    return f"{100 * s['mean']:.1f} ± {100 * s['std']:.1f}"


def _verdict(summary: dict, fractions) -> list[str]:
    lines = []
    for f in fractions:
        key = f"{f:g}"
        if "functional" not in summary or "representational" not in summary:
            break
        fu = summary["functional"][key]["classifier_accuracy"]
        re = summary["representational"][key]["classifier_accuracy"]
        diffs = [a - b for a, b in zip(fu["values"], re["values"])]
        d = stats(diffs)
        better = sum(x > 0 for x in diffs)
        lines.append(
            f"labelled fraction {f:g}: functional - representational = "
            f"{100 * d['mean']:+.1f} ± {100 * d['std']:.1f} points "
            f"(functional higher in {better} of {len(diffs)} seeds)"
        )
    return lines


def _plot(summary: dict, fractions, path: str) -> str | None:
    if not plots.available():
        return None
    fig = plots.figure(5, 3.5, dpi=120)
    ax = fig.subplots()
    for arm, by_fraction in summary.items():
        xs = [f for f in fractions if f"{f:g}" in by_fraction]
        ms = [100 * by_fraction[f"{f:g}"]["classifier_accuracy"]["mean"] for f in xs]
        ss = [100 * by_fraction[f"{f:g}"]["classifier_accuracy"]["std"] for f in xs]
        ax.errorbar(xs, ms, yerr=ss, marker="o", capsize=3, label=arm)
    ax.set_xscale("log")
    ax.set_xlabel("labelled fraction of the training split")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Functional vs representational transfer")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.savefig(path)
    return path


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Run (or resume) every arm x fraction x seed; write the table and the plot."""
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise ConfigError(f"--workdir {workdir} is a file, not a directory; choose a new path")
    runs = sub_configs(config, workdir)
    os.makedirs(workdir, exist_ok=True)
    start = time.perf_counter()
    results = run_all(
        runs,
        lambda r: (
            r["arm"]
            + ("" if r["fraction"] is None else f" fraction {r['fraction']:g}")
            + f" seed {r['seed']}"
        ),
    )

    cmp = config.compare
    summary: dict = {}
    for arm in cmp.arms:
        summary[arm] = {}
        for f in cmp.fractions:
            rs = [results[r["workdir"]] for r in runs if r["arm"] == arm and r["fraction"] == f]
            summary[arm][f"{f:g}"] = {
                key: stats([x["eval"][key] for x in rs])
                for key in (
                    "classifier_accuracy",
                    "classifier_val_accuracy",
                    "knn_accuracy",
                    "linear_accuracy",
                )
            }
    verdict = _verdict(summary, cmp.fractions)
    pretrain = [results[r["workdir"]] for r in runs if r["arm"] == "pretrain"]

    lines = [
        "| labelled fraction | " + " | ".join(f"{a} test acc. %" for a in cmp.arms) + " |",
        "|---|" + "---|" * len(cmp.arms),
    ]
    for f in cmp.fractions:
        lines.append(
            f"| {f:g} | "
            + " | ".join(_cell(summary[a][f"{f:g}"]["classifier_accuracy"]) for a in cmp.arms)
            + " |"
        )
    lines += [
        "",
        "Backbone k-NN / linear-probe test accuracy % (frozen features):",
        "",
        "| labelled fraction | " + " | ".join(cmp.arms) + " |",
        "|---|" + "---|" * len(cmp.arms),
    ]
    for f in cmp.fractions:
        lines.append(
            f"| {f:g} | "
            + " | ".join(
                f"{_cell(summary[a][f'{f:g}']['knn_accuracy'])} / "
                f"{_cell(summary[a][f'{f:g}']['linear_accuracy'])}"
                for a in cmp.arms
            )
            + " |"
        )
    if pretrain:
        knn = stats([p["eval"]["knn_accuracy"] for p in pretrain])
        lin = stats([p["eval"]["linear_accuracy"] for p in pretrain])
        lines += [
            "",
            f"SSL pretraining alone (representational stage 1): k-NN {_cell(knn)}, "
            f"linear probe {_cell(lin)} (on all training labels).",
        ]
    steps = int(config.total_steps)
    lines += [
        "",
        f"{len(cmp.seeds)} seeds ({', '.join(map(str, cmp.seeds))}), mean ± sample "
        f"std; {steps} steps per run (pretraining: {int(cmp.pretrain_steps or steps)}); "
        f"data {config.data.name}, backbone {config.model.backbone} (width "
        f"{config.model.num_filters}), lambda = {config.joint.ssl_weight:g}.",
        "",
    ]
    lines += [f"- {v}" for v in verdict]
    table = "\n".join(lines) + "\n"
    io.write_text(os.path.join(workdir, "results.md"), table)
    plot = _plot(summary, list(cmp.fractions), os.path.join(workdir, "accuracy_vs_fraction.png"))
    out = {
        "study": "fkt",
        "summary": summary,
        "verdict": verdict,
        "plot": plot,
        "runs": {
            r["workdir"]: {
                "arm": r["arm"],
                "fraction": r["fraction"],
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
