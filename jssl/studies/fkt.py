"""Functional vs representational knowledge transfer (Chhipa et al. 2023), under the study
rules of docs/studies.md.

`python -m jssl.main --config configs/fkt.py:compare --workdir DIR` runs, for each labelled
fraction f of `compare.fractions` (N = `total_steps`):

* **representational**: SSL pretraining alone for N steps (`method=pretrain` on the whole
  training split, labels unused), then full fine-tuning of every layer for N steps on the
  labelled subset (the joint method with lambda = 0 and `model.init_from` = the pretraining
  run): 2N optimizer updates;
* **functional_updates**: the joint method (CE + lambda * L_SSL through one backbone) for 2N
  steps: as many optimizer updates as representational;
* **functional_passes**: the joint method for N steps: as many image passes as
  representational (N unlabelled batches through the pretext and N labelled batches
  through the classifier in both);
* **supervised**: lambda = 0 from scratch for 2N steps.

At f = 1 the functional arms put the pretext on the labelled batch itself
(`joint.ssl_on = "labelled"`): the paper's setting, every label, the SSL loss on the same
images as the cross-entropy. Below 1 the pretext reads the unlabelled rest of the split.

Tuning, per fraction, on seed `compare.tune_seed` (outside the test seeds) and its own
labelled subset, scored by the classifier's validation accuracy on a validation set no
larger than the labelled set (`eval.val_fraction`, docs/studies.md rule 4), grids of the
same size for every arm (`tuning_plan`): first the learning rate over `compare.lrs`
(representational: both stages'); then, when given (all three or none, of one size),
functional arms lambda (`compare.ssl_weights`), representational the fine-tuning lr
(`compare.finetune_lrs`), supervised the weight decay (`compare.weight_decays`), each at
the first grid's choice. A grid of one value runs nothing.

Then every arm at its chosen values for each seed of `compare.seeds`, the labelled subset
drawn with the seed (`joint.subset_seed = seed`), and the validation subset too. Reported:
the classifier's test accuracy (nothing selected on test), the frozen backbone's k-NN and
linear probe, a random-init encoder's, the budgets (updates, images, wall time), paired
differences with 95% t-intervals and a Verdict line per claim. Every run is a sub-workdir
of DIR, reused when finished, so an interrupted study resumes. Writes DIR/results.json,
DIR/results.md and DIR/accuracy_vs_fraction.png.
"""

from __future__ import annotations

import os
import time

import ml_collections

from jssl import io, plots
from jssl.data import sources
from jssl.data.subsets import few_label_subset, source_labels
from jssl.errors import ConfigError
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

__all__ = ["ARMS", "run", "arm_configs", "tuning_plan", "val_fraction"]

ARMS = ("functional_updates", "functional_passes", "representational", "supervised")
KEYS = ("classifier_accuracy", "classifier_val_accuracy", "knn_accuracy", "linear_accuracy")
SELECT = "classifier_val_accuracy"


def _check(config) -> tuple:
    cmp = config.compare
    seeds = check_seeds(cmp.seeds)
    if cmp.tune_seed in seeds:
        raise ConfigError(
            f"config.compare.tune_seed: {cmp.tune_seed} is also a test seed; "
            "tune on a seed outside config.compare.seeds"
        )
    if config.model.get("init_from"):
        raise ConfigError(
            "config.model.init_from: the comparison starts every arm from scratch "
            "(the pretraining run is the representational arm's init); unset it"
        )
    for f in cmp.fractions:
        if not 0 < f <= 1:
            raise ConfigError(f"config.compare.fractions: {f} is not in (0, 1]")
    if not tuple(cmp.lrs):
        raise ConfigError("config.compare.lrs: must name at least one learning rate")
    sizes = {len(tuple(cmp[k])) for k in SECOND_GRIDS}
    if len(sizes) != 1:
        raise ConfigError(
            "config.compare.ssl_weights, finetune_lrs, weight_decays: the arms' second grids "
            "must be of the same size (docs/studies.md rule 3), or all empty (not tuned)"
        )
    return seeds


def val_fraction(config, fraction: float) -> float:
    """The fraction of the validation split that holds as many examples as the labelled
    subset at `fraction` (at most all of it): docs/studies.md rule 4."""
    train = sources.config_source(config, config.eval.train_split)
    val = sources.config_source(config, config.eval.val_split)
    n = len(few_label_subset(source_labels(train), fraction, seed=0, num_classes=train.num_classes))
    return min(1.0, n / len(val))


def _pretrain(base, workdir, *, seed, lr, steps):
    c = ml_collections.ConfigDict(base.to_dict())
    c.method = "pretrain"
    del c["joint"]
    c.data.train_split = base.eval.train_split  # the whole training split, labels unused
    c.seed = int(seed)
    c.optimizer.lr = float(lr)
    c.total_steps = int(steps)
    c.checkpoint_every = min(c.checkpoint_every, steps)
    return {
        "arm": "pretrain",
        "seed": int(seed),
        "config": c,
        "needs": None,
        "workdir": os.path.join(workdir, f"pretrain_lr{lr:g}_s{seed}"),
    }


def _joint(
    base, workdir, name, *, arm, seed, fraction, vfrac, steps, lr, lam=1.0, wd=None, init_from=None
):
    c = ml_collections.ConfigDict(base.to_dict())
    c.seed = int(seed)
    c.joint.subset_seed = int(seed)
    c.joint.labelled_fraction = float(fraction)
    c.joint.ssl_weight = float(lam) if arm.startswith("functional") else 0.0
    if fraction == 1:  # the paper: the pretext on the labelled batch, a full batch of it
        c.joint.ssl_on = "labelled"
        c.joint.labelled_batch_size = c.batch_size
    else:
        c.joint.ssl_on = "unlabelled"
    c.optimizer.lr = float(lr)
    if wd is not None:
        c.optimizer.weight_decay = float(wd)
    c.total_steps = int(steps)
    c.checkpoint_every = min(c.checkpoint_every, steps)
    c.eval.val_fraction = float(vfrac)
    c.eval.val_subset_seed = int(seed)
    if init_from:
        c.model.init_from = init_from
    return {
        "arm": arm,
        "seed": int(seed),
        "fraction": float(fraction),
        "config": c,
        "needs": init_from,
        "workdir": os.path.join(workdir, name),
    }


def arm_configs(config, workdir, arm, *, seed, fraction, vfrac, values, prefix=""):
    """The runs of one arm at one seed and fraction with hyperparameters `values` (dict:
    lr, and ssl_weight / pretrain_lr / weight_decay by arm): a list ending with the arm's
    run (representational: its pretraining run first)."""
    base = run_base(config)
    n = int(config.total_steps)
    tag = f"{prefix}{arm}_f{fraction:g}_" + "_".join(f"{k}{v:g}" for k, v in values.items())
    kw = dict(arm=arm, seed=seed, fraction=fraction, vfrac=vfrac, lr=values["lr"])
    if arm == "functional_updates":
        return [
            _joint(base, workdir, f"{tag}_s{seed}", steps=2 * n, lam=values["ssl_weight"], **kw)
        ]
    if arm == "functional_passes":
        return [_joint(base, workdir, f"{tag}_s{seed}", steps=n, lam=values["ssl_weight"], **kw)]
    if arm == "supervised":
        return [
            _joint(base, workdir, f"{tag}_s{seed}", steps=2 * n, wd=values["weight_decay"], **kw)
        ]
    if arm == "representational":
        pre = _pretrain(
            base,
            os.path.join(workdir, prefix.rstrip("/")) if prefix else workdir,
            seed=seed,
            lr=values["pretrain_lr"],
            steps=n,
        )
        return [
            pre,
            _joint(base, workdir, f"{tag}_s{seed}", steps=n, init_from=pre["workdir"], **kw),
        ]
    raise ConfigError(f"config.compare: unknown arm {arm!r}; choose from {', '.join(ARMS)}")


SECOND_GRIDS = ("ssl_weights", "finetune_lrs", "weight_decays")


def tuning_plan(config, arm) -> tuple[dict, list]:
    """(defaults, grids) of an arm: the values it starts from and the grids it is tuned
    over in turn, each (names, values) with `names` set to the grid's value (each grid at
    the choices before it). First the learning rate, `compare.lrs` (representational: both
    stages'); then, when given (all three or none, of one size), functional arms lambda
    (`compare.ssl_weights`), representational the fine-tuning lr (`compare.finetune_lrs`),
    supervised the weight decay (`compare.weight_decays`)."""
    cmp = config.compare
    lrs = tuple(float(v) for v in cmp.lrs)
    defaults = {"lr": lrs[len(lrs) // 2]}
    if arm.startswith("functional"):
        defaults["ssl_weight"] = float(config.joint.ssl_weight)
        grids = [(("lr",), lrs), (("ssl_weight",), tuple(cmp.ssl_weights))]
    elif arm == "representational":
        defaults["pretrain_lr"] = defaults["lr"]
        grids = [(("lr", "pretrain_lr"), lrs), (("lr",), tuple(cmp.finetune_lrs))]
    else:
        defaults["weight_decay"] = float(config.optimizer.weight_decay)
        grids = [(("lr",), lrs), (("weight_decay",), tuple(cmp.weight_decays))]
    return defaults, [(names, tuple(float(v) for v in g)) for names, g in grids if g]


def _label(r):
    f = r.get("fraction")
    return r["arm"] + ("" if f is None else f" fraction {f:g}") + f" seed {r['seed']}"


def _tune(config, workdir, arm, fraction, vfrac) -> dict:
    """Tune `arm` at `fraction` on validation: {"chosen": values, "grids": [...]}; a grid of
    one value has nothing to choose and runs nothing."""
    seed = int(config.compare.tune_seed)
    values, grids = tuning_plan(config, arm)
    log = []
    for names, grid in grids:
        if len(grid) == 1:
            values.update({n: grid[0] for n in names})
            log.append(
                {"name": "+".join(names), "grid": list(grid), "scores": {}, "chosen": grid[0]}
            )
            continue
        runs, last = [], {}
        for v in grid:
            vals = {**values, **{n: v for n in names}}
            rs = arm_configs(
                config,
                workdir,
                arm,
                seed=seed,
                fraction=fraction,
                vfrac=vfrac,
                values=dict(sorted(vals.items())),
                prefix="tune/",
            )
            runs += rs
            last[f"{v:g}"] = rs[-1]["workdir"]
        res = run_all(runs, _label)
        scores = {k: res[w]["eval"][SELECT] for k, w in last.items()}
        _, chosen = choose({f"{v:g}": v for v in grid}, scores)
        values.update({n: chosen for n in names})
        log.append(
            {"name": "+".join(names), "grid": list(grid), "scores": scores, "chosen": chosen}
        )
    return {"chosen": dict(sorted(values.items())), "grids": log}


def _cell(s: dict) -> str:
    return f"{100 * s['mean']:.1f} ± {100 * s['std']:.1f}"


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
    ax.legend(fontsize=8)
    fig.savefig(path)
    return path


def _budget(arm, config, fraction) -> dict:
    n = int(config.total_steps)
    b = int(config.batch_size)
    bl = b if fraction == 1 else int(config.joint.labelled_batch_size)
    if arm == "functional_updates":
        return {"updates": 2 * n, "ssl_images": 2 * n * b, "labelled_images": 2 * n * bl}
    if arm == "functional_passes":
        return {"updates": n, "ssl_images": n * b, "labelled_images": n * bl}
    if arm == "representational":
        return {"updates": 2 * n, "ssl_images": n * b, "labelled_images": n * bl}
    return {"updates": 2 * n, "ssl_images": 0, "labelled_images": 2 * n * bl}


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Tune every arm per fraction on validation, run every arm x fraction x seed at its
    chosen values; write the table, the plot and results.json."""
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise ConfigError(f"--workdir {workdir} is a file, not a directory; choose a new path")
    seeds = _check(config)
    cmp = config.compare
    os.makedirs(workdir, exist_ok=True)
    start = time.perf_counter()
    prov = provenance()
    fractions = [float(f) for f in cmp.fractions]
    vfracs = {f: val_fraction(config, f) for f in fractions}

    # Fraction by fraction: tune every arm, then run the seeds (an interrupted study has
    # whole fractions done first).
    tuning, runs, results = {}, [], {}
    for i, f in enumerate(fractions):
        tuning[f"{f:g}"] = {arm: _tune(config, workdir, arm, f, vfracs[f]) for arm in ARMS}
        these = []
        for seed in seeds:
            for arm in ARMS:
                for r in arm_configs(
                    config,
                    workdir,
                    arm,
                    seed=seed,
                    fraction=f,
                    vfrac=vfracs[f],
                    values=tuning[f"{f:g}"][arm]["chosen"],
                ):
                    if r["workdir"] not in {x["workdir"] for x in runs + these}:
                        these.append(r)
            if i == 0:  # one random-init evaluation per seed (its first supervised run)
                next(r for r in these if r["arm"] == "supervised" and r["seed"] == seed)[
                    "config"
                ].eval.random_init_baseline = True
        results.update(run_all(these, _label))
        runs += these

    def arm_runs(arm, f):
        return [r for r in runs if r["arm"] == arm and r.get("fraction") == f]

    summary = {
        arm: {
            f"{f:g}": {
                k: stats([results[r["workdir"]]["eval"][k] for r in arm_runs(arm, f)]) for k in KEYS
            }
            for f in fractions
        }
        for arm in ARMS
    }
    random_init = {
        k: stats(
            [
                results[r["workdir"]]["random_init_eval"][k]
                for r in runs
                if r["config"].eval.random_init_baseline
            ]
        )
        for k in ("knn_accuracy", "linear_accuracy")
    }

    def vals(arm, f):
        return [results[r["workdir"]]["eval"]["classifier_accuracy"] for r in arm_runs(arm, f)]

    diffs, verdicts = {}, []
    for f in fractions:
        key = f"{f:g}"
        diffs[key] = {
            f"{a}-{b}": paired(vals(a, f), vals(b, f))
            for a, b in (
                ("functional_updates", "representational"),
                ("functional_passes", "representational"),
                ("representational", "supervised"),
                ("functional_updates", "supervised"),
            )
        }
        setting = "the paper's setting, every label" if f == 1 else f"{100 * f:g}% labels"
        for arm in ("functional_updates", "functional_passes"):
            match = "optimizer updates" if arm.endswith("updates") else "image passes"
            verdicts.append(
                verdict(
                    f"functional beats representational transfer at equal {match} ({setting})",
                    diffs[key][f"{arm}-representational"],
                )
            )

    train_time = {
        arm: sum(results[r["workdir"]].get("train_time_s") or 0.0 for r in runs if r["arm"] == arm)
        / len(seeds)
        for arm in ARMS + ("pretrain",)
    }
    n_lab = {
        f: round(vfracs[f] * len(sources.config_source(config, config.eval.val_split)))
        for f in fractions
    }
    lines = [
        "| labelled fraction | " + " | ".join(f"{a} test acc. %" for a in ARMS) + " |",
        "|---|" + "---|" * len(ARMS),
    ]
    for f in fractions:
        lines.append(
            f"| {f:g} | "
            + " | ".join(_cell(summary[a][f"{f:g}"]["classifier_accuracy"]) for a in ARMS)
            + " |"
        )
    lines += [
        "",
        "Frozen backbone, k-NN / linear-probe test accuracy % (probes on all training labels):",
        "",
        "| labelled fraction | " + " | ".join(ARMS) + " |",
        "|---|" + "---|" * len(ARMS),
    ]
    for f in fractions:
        lines.append(
            f"| {f:g} | "
            + " | ".join(
                f"{_cell(summary[a][f'{f:g}']['knn_accuracy'])} / "
                f"{_cell(summary[a][f'{f:g}']['linear_accuracy'])}"
                for a in ARMS
            )
            + " |"
        )
    lines += [
        "",
        f"Random-init encoder (same architecture, untrained): k-NN "
        f"{_cell(random_init['knn_accuracy'])}, linear probe "
        f"{_cell(random_init['linear_accuracy'])}.",
        "",
        "Paired differences of the classifier's test accuracy (A - B), mean and 95% "
        "t-interval over seeds:",
        "",
    ]
    for key, ds in diffs.items():
        for name, d in ds.items():
            lines.append(f"- fraction {key}, {name}: {fmt_diff(d)}")
    lines += [
        "",
        "Budgets per run (N = total_steps; images: pretext batches x batch size, "
        "labelled batches x labelled batch size; mean training wall time per seed, "
        "all fractions):",
        "",
    ]
    for f in fractions:
        for arm in ARMS:
            b = _budget(arm, config, f)
            lines.append(
                f"- fraction {f:g}, {arm}: {b['updates']} updates, {b['ssl_images']} pretext "
                f"images, {b['labelled_images']} labelled images"
            )
    lines.append(
        "- training wall time per seed, all fractions: "
        + ", ".join(f"{a} {t:.0f} s" for a, t in train_time.items())
    )
    lines += [
        "",
        "Chosen on validation (tuning seed "
        f"{cmp.tune_seed}; validation examples per fraction: "
        + ", ".join(f"{f:g}: {n_lab[f]}" for f in fractions)
        + "):",
        "",
    ]
    for key, by_arm in tuning.items():
        for arm, t in by_arm.items():
            lines.append(
                f"- fraction {key}, {arm}: "
                + ", ".join(f"{k}={v:g}" for k, v in t["chosen"].items())
                + " ("
                + "; ".join(
                    f"{g['name']}: "
                    + ", ".join(f"{k} {100 * s:.1f}%" for k, s in g["scores"].items())
                    for g in t["grids"]
                    if g["scores"]
                )
                + ")"
            )
    lines += [
        "",
        f"{len(seeds)} seeds ({', '.join(map(str, seeds))}), each with its own "
        f"labelled subset, mean ± sample std; N = {int(config.total_steps)}; data "
        f"{config.data.name}, backbone {config.model.backbone} (width "
        f"{config.model.num_filters}), pretext {config.loss.name}.",
        "",
    ]
    lines += verdicts + [""]
    table = "\n".join(lines) + "\n"
    io.write_text(os.path.join(workdir, "results.md"), table)
    plot = _plot(summary, fractions, os.path.join(workdir, "accuracy_vs_fraction.png"))
    out = {
        "study": "fkt",
        "seeds": list(seeds),
        "tuning": tuning,
        "validation_fraction": {f"{f:g}": v for f, v in vfracs.items()},
        "summary": summary,
        "random_init": random_init,
        "difference": diffs,
        "verdict": verdicts,
        "budgets": {f"{f:g}": {a: _budget(a, config, f) for a in ARMS} for f in fractions},
        "train_time_s_per_seed": train_time,
        "plot": plot,
        "provenance": prov,
        "runs": {
            r["workdir"]: {
                "arm": r["arm"],
                "fraction": r.get("fraction"),
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
