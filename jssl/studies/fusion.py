"""The fusion study (`configs/fusion.py:compare`): attention over frozen pretext encoders
against every single pretext, pretext matching, uniform average and concatenation.

Stage 1 pretrains the K pretext encoders of `config.compare.pretexts` with the one train
loop, each in DIR/encoders/<name> (a finished run is reused, an interrupted one resumes).
Their frozen features of the train, validation and test splits are computed once and
cached in DIR/features/<name>.npz (keyed by the run's experiment and final step).
Stage 2 trains, for every labelled fraction and seed, every variant of
`config.compare.variants` and one linear head per pretext ("single_<name>"), all with the
same head recipe and budget (`config.optimizer`, `config.total_steps`,
`config.batch_size`), on the same class-balanced labelled subset (seeded by the seed, so
the seeds vary the subset, the initialisation and the batch order). Every variant trains
once per learning rate of `config.compare.lrs` and keeps the one with the best validation
accuracy, so no variant is handicapped by one shared rate. "pretext_matching" is the single
pretext with the best validation accuracy of that seed. Nothing is chosen on test.
Each (fraction, seed) is saved in DIR/heads/ when done (its per-sample test attention
weights beside it, `*_weights.npz`), so an interrupted study resumes.

Writes DIR/results.json ("summary": test accuracy mean and std over seeds of every variant,
the negative-transfer check of every fused variant against pretext matching, the mean
attention weight per pretext; "verdict": one line per fraction, which the CLI prints;
"attention_per_class"; "runs": every record), DIR/results.md and DIR/attention.png.
Negative transfer is the mean paired (same seed) difference fused - pretext matching in
test accuracy; "worse beyond noise" means its t-based 95% interval lies below zero
(docs/studies.md rule 5; with 3 seeds that is mean + 4.30 standard errors < 0).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import os
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jssl import checkpoint, io, parallel, plots, train
from jssl.config import experiment_fields, validate
from jssl.data import sources
from jssl.data.features import FeatureBatches, FeatureRows, feature_keys, split_columns
from jssl.data.subsets import few_label_subset
from jssl.errors import ConfigError
from jssl.evaluate import encode_source, extract_features
from jssl.export import load_encoders
from jssl.methods import fusion
from jssl.methods.common import TrainState
from jssl.models.fusion import MODES, WEIGHTED_MODES
from jssl.studies.common import stats, t_interval

__all__ = ["HeadTrainer", "cached_features", "pretrain_encoders", "run", "summarize", "verdict"]

FEATURES_DIR, HEADS_DIR, ENCODERS_DIR = "features", "heads", "encoders"


def _validate(config: ml_collections.ConfigDict) -> None:
    if "compare" not in config:
        raise ConfigError(
            "config.compare: missing; the fusion study needs it (configs/fusion.py:compare)"
        )
    cmp = config.compare
    if not len(cmp.pretexts):
        raise ConfigError("config.compare.pretexts: empty; name at least one pretext config")
    for name, variant in cmp.variants.items():
        if name.startswith("single_") or name == "pretext_matching":
            raise ConfigError(
                f"config.compare.variants.{name}: reserved name (the baselines "
                "are added by the study); rename it"
            )
        if variant.mode not in MODES or variant.mode == "single":
            raise ConfigError(
                f"config.compare.variants.{name}.mode: {variant.mode!r}; choose "
                f"one of {', '.join(m for m in MODES if m != 'single')}"
            )
    if cmp.reference not in cmp.variants:
        raise ConfigError(
            f"config.compare.reference: {cmp.reference!r} is not a variant; "
            f"choose one of {', '.join(cmp.variants)}"
        )
    if not cmp.seeds or not all(isinstance(s, int) for s in cmp.seeds):
        raise ConfigError(f"config.compare.seeds: {tuple(cmp.seeds)!r}; give integer seeds")
    if not cmp.lrs or not all(lr > 0 for lr in cmp.lrs):
        raise ConfigError(
            f"config.compare.lrs: {tuple(cmp.lrs)!r}; give positive learning "
            "rates (each variant keeps the best on validation)"
        )
    if not cmp.fractions or not all(0.0 < f <= 1.0 for f in cmp.fractions):
        raise ConfigError(
            f"config.compare.fractions: {tuple(cmp.fractions)!r}; give fractions in (0, 1]"
        )


# --- Stage 1: the pretext encoders ------------------------------------------------------


def pretrain_encoders(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Train (or reuse, or resume) every pretext of config.compare.pretexts; returns
    {name: {"workdir", "final_step", "eval", "train_time_s", "reused"}}."""
    out = {}
    for name, pc in config.compare.pretexts.items():
        wd = os.path.join(workdir, ENCODERS_DIR, name)
        checkpoint.check_workdir(wd, pc)  # a different experiment there: ConfigError
        results = train.finished_results(wd, pc)
        reused = results is not None
        if not reused:
            results = train.train_and_evaluate(pc, wd)
        out[name] = {
            "workdir": wd,
            "final_step": results["final_step"],
            "eval": results.get("eval", {}),
            "train_time_s": results.get("train_time_s"),
            "reused": reused,
        }
    return out


def _cache_key(encoder_dir: str, final_step: int, config) -> str:
    with open(os.path.join(encoder_dir, checkpoint.EXPERIMENT_FILE), "rb") as f:
        text = f.read()
    splits = (
        config.data.name,
        config.data.train_split,
        config.eval.val_split,
        config.eval.test_split,
    )
    return hashlib.sha256(text + repr((final_step, splits)).encode()).hexdigest()


def cached_features(config, encoders, info: dict, workdir: str, mesh) -> dict:
    """{"train" | "val" | "test": (K feature arrays, labels)}: each encoder's frozen features,
    from DIR/features/<name>.npz when its key matches, computed and saved otherwise."""
    splits = {
        "train": config.data.train_split,
        "val": config.eval.val_split,
        "test": config.eval.test_split,
    }
    os.makedirs(os.path.join(workdir, FEATURES_DIR), exist_ok=True)
    per_split = {s: [] for s in splits}
    labels = {}
    for i, name in enumerate(encoders.names):
        path = os.path.join(workdir, FEATURES_DIR, f"{name}.npz")
        key = _cache_key(info[name]["workdir"], info[name]["final_step"], config)
        stored = None
        if os.path.exists(path):
            with np.load(path) as z:
                if str(z["key"]) == key:
                    stored = {k: z[k] for k in z.files}
        if stored is None:
            stored = {"key": np.asarray(key)}
            for s, split in splits.items():
                src = sources.config_source(config, split)
                (x,), y = encode_source(
                    encoders.modules[i : i + 1],
                    encoders.variables[i : i + 1],
                    src,
                    batch_size=config.eval.batch_size,
                    mesh=mesh,
                )
                stored[s], stored[f"{s}_labels"] = x, y
            if jax.process_index() == 0:
                io.save_npz(path, **stored)
        for s in splits:
            per_split[s].append(stored[s])
            labels[s] = stored[f"{s}_labels"]
    return {s: (per_split[s], labels[s].astype(np.int32)) for s in splits}


# --- Stage 2: every variant, fraction and seed -------------------------------------------


class HeadTrainer:
    """One fusion head configuration trained on cached features over `mesh`, compiled once
    and reused for every seed and labelled subset (the study's variants, same budget each).

    The steps go through the train loop's `train.run_steps` (transfer guard, finite-loss
    check, logging cadence). Why not `train.train_and_evaluate`, with its workdir,
    checkpoints and evaluation per head: a head trains in well under a second on cached
    features, the study trains (variants x learning rates x fractions x seeds) of them, and
    it saves every (fraction, seed) record as it completes, so an interrupted study resumes
    at that grain; per-head checkpoints and evaluation passes would cost more than the heads.
    """

    def __init__(
        self, config: ml_collections.ConfigDict, num_classes: int, widths: Sequence[int], mesh
    ):
        self.config, self.mesh, self.k = config, mesh, len(widths)
        self.setup = fusion.setup(config, num_classes, widths)
        repl, data = parallel.replicated(mesh), parallel.batch_sharding(mesh)
        self._init = jax.jit(functools.partial(fusion.head_init, self.setup), out_shardings=repl)
        keys = feature_keys(self.k)
        self._step = parallel.jit(
            lambda s, b: fusion.update(self.setup, s, ([b[key] for key in keys], b["label"])),
            in_shardings=(repl, data),
            out_shardings=(repl, repl),
            donate_argnums=0,
        )
        self._packed = None  # the jitted outputs, built on first use

    def fit(
        self, features: Sequence[np.ndarray], labels: np.ndarray, *, seed: int
    ) -> tuple[TrainState, list[dict]]:
        """Train on (features, labels) for config.total_steps batches of config.batch_size;
        the head's initialisation and batch order follow `seed`. Returns the state and the
        metrics of every config.log_every-th step."""
        c = self.config
        mean, std = fusion.feature_stats(features)
        state = self._init(jax.random.PRNGKey(seed), mean, std)
        stream = FeatureBatches(
            features, labels, batch_size=c.batch_size, seed=seed, mesh=self.mesh
        )
        history: list[dict] = []
        state = train.run_steps(
            self._step,
            state,
            stream,
            start_step=0,
            end_step=c.total_steps,
            log_every=c.log_every,
            on_log=lambda step, m: history.append({"step": step, **m}),
        )
        return state, history

    def outputs(self, state: TrainState, features: Sequence[np.ndarray]) -> dict:
        """{"logits" (N, C), "weights" (N, K), None for concat/single} of every row, host
        arrays (through `evaluate.extract_features`, the path image features take)."""
        rows = FeatureRows(features, np.zeros(len(features[0]), np.int32))
        weighted = self.config.fusion.mode in WEIGHTED_MODES
        if self._packed is None:
            widths = rows.widths

            def packed(state, x):  # logits and weights in one (B, C [+ K]) array
                out = fusion.outputs(self.setup, state, split_columns(widths, x))
                return jnp.concatenate(
                    [out["logits"]] + ([out["weights"]] if weighted else []), axis=1
                )

            repl, data = parallel.replicated(self.mesh), parallel.batch_sharding(self.mesh)
            self._packed = jax.jit(packed, in_shardings=(repl, data), out_shardings=data)
        out, _ = extract_features(self._packed, state, rows, batch_size=len(rows), mesh=self.mesh)
        c = out.shape[1] - (self.k if weighted else 0)
        return {"logits": out[:, :c], "weights": out[:, c:] if weighted else None}


def _variants(config, names) -> dict:
    """{variant name: head config} for the fused variants and one single per pretext."""
    out = {}
    for name, v in config.compare.variants.items():
        c = copy.deepcopy(config)
        c.fusion.mode, c.fusion.entropy_weight = v.mode, float(v.entropy_weight)
        out[name] = c
    for i, name in enumerate(names):
        c = copy.deepcopy(config)
        c.fusion.mode, c.fusion.single_index, c.fusion.entropy_weight = "single", i, 0.0
        out[f"single_{name}"] = c
    return out


def _accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.argmax(logits, axis=1) == labels))


def _class_weights(weights: np.ndarray, labels: np.ndarray, num_classes: int) -> list:
    return [
        np.mean(weights[labels == c], axis=0).tolist()
        if np.any(labels == c)
        else [float("nan")] * weights.shape[1]
        for c in range(num_classes)
    ]


def _run_seed(trainers, feats, fraction, seed, num_classes) -> tuple[dict, dict]:
    """Every variant on one labelled subset: each learning rate of its trainers trained,
    the one with the best validation accuracy kept (first on ties), its test accuracy and
    weights recorded. `trainers`: {variant: {lr: HeadTrainer}}."""
    train_x, train_y = feats["train"]
    (val_x, val_y), (test_x, test_y) = feats["val"], feats["test"]
    subset = few_label_subset(train_y, fraction, seed=seed, num_classes=num_classes)
    x, y = [f[subset] for f in train_x], train_y[subset]
    record = {"num_labelled": len(subset), "variants": {}}
    samples = {}  # per-sample test weights of the weighted variants
    for name, by_lr in trainers.items():
        t = time.perf_counter()
        fits = {}
        for lr, trainer in by_lr.items():
            state, history = trainer.fit(x, y, seed=seed)
            fits[lr] = (_accuracy(trainer.outputs(state, val_x)["logits"], val_y), state, history)
        lr = max(fits, key=lambda k: fits[k][0])  # chosen on validation, never on test
        val_accuracy, state, history = fits[lr]
        out = by_lr[lr].outputs(state, test_x)
        r = {
            "lr": lr,
            "val_accuracy": val_accuracy,
            "val_accuracy_per_lr": {str(k): v[0] for k, v in fits.items()},
            "test_accuracy": _accuracy(out["logits"], test_y),
            "train_time_s": time.perf_counter() - t,
            "final_loss": history[-1]["loss"],
            "final_train_accuracy": history[-1]["train_accuracy"],
        }
        if out["weights"] is not None:
            r["mean_weights"] = np.mean(out["weights"], axis=0).tolist()
            r["class_weights"] = _class_weights(out["weights"], test_y, num_classes)
            samples[name] = out["weights"]
        record["variants"][name] = r
    singles = {n: r for n, r in record["variants"].items() if n.startswith("single_")}
    chosen = max(singles, key=lambda n: singles[n]["val_accuracy"])  # first on ties
    record["variants"]["pretext_matching"] = {**singles[chosen], "chosen": chosen[7:]}
    return record, samples


def _heads_key(config, names) -> str:
    fields = {
        k: v for k, v in experiment_fields(config).items() if not k.startswith("compare.pretexts")
    }
    return hashlib.sha256(
        json.dumps([fields, list(names)], sort_keys=True, default=str).encode()
    ).hexdigest()


# --- Summary and report ------------------------------------------------------------------


def summarize(runs: dict, names, fused: list[str], reference: str) -> tuple[dict, dict]:
    """(summary, attention per class): accuracy mean/std over seeds, negative transfer (fused
    - pretext matching, paired by seed) and mean attention weights, per fraction; and the
    mean weight per class and pretext. `runs`: {fraction: {seed: record}}."""
    summary = {"reference": reference, "pretexts": list(names), "fractions": {}}
    attention_per_class = {}
    for fraction, by_seed in runs.items():
        seeds = sorted(by_seed)
        variants = list(by_seed[seeds[0]]["variants"])
        acc = {
            v: {
                "test": stats([by_seed[s]["variants"][v]["test_accuracy"] for s in seeds]),
                "val": stats([by_seed[s]["variants"][v]["val_accuracy"] for s in seeds]),
            }
            for v in variants
        }
        matching = [by_seed[s]["variants"]["pretext_matching"]["test_accuracy"] for s in seeds]
        transfer = {}
        for v in fused:
            d = np.asarray([by_seed[s]["variants"][v]["test_accuracy"] for s in seeds]) - matching
            # One seed: no spread to judge the difference by (diff_se None, neither flag).
            # "Beyond noise": the t-based 95% interval excludes 0 (docs/studies.md rule 5).
            se = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else None
            lo, hi = t_interval(d.tolist()) if se is not None else (None, None)
            transfer[v] = {
                "diff_mean": float(d.mean()),
                "diff_se": se,
                "diff_ci95": None if se is None else [lo, hi],
                "diff_per_seed": d.tolist(),
                "worse_beyond_noise": se is not None and bool(hi < 0),
                "better_beyond_noise": se is not None and bool(lo > 0),
            }
        weights, per_class = {}, {}
        for v in variants:
            recs = [by_seed[s]["variants"][v] for s in seeds]
            if "mean_weights" in recs[0]:
                mean = np.mean([r["mean_weights"] for r in recs], axis=0)
                weights[v] = dict(zip(names, mean.tolist()))
                rows = np.nanmean([r["class_weights"] for r in recs], axis=0)
                per_class[v] = [dict(zip(names, row)) for row in rows.tolist()]
        best_fused = max(fused, key=lambda v: acc[v]["val"]["mean"])
        summary["fractions"][str(fraction)] = {
            "accuracy": acc,
            "pretext_matching_chosen": [
                by_seed[s]["variants"]["pretext_matching"]["chosen"] for s in seeds
            ],
            "negative_transfer": transfer,
            "reference_minus_best_single": transfer[reference]["diff_mean"],
            "best_fused_on_val": best_fused,
            "best_fused_on_val_minus_best_single": transfer[best_fused]["diff_mean"],
            "attention": weights,  # mean weight per pretext on the test split
            "num_labelled": [by_seed[s]["num_labelled"] for s in seeds],
        }
        # [class] -> {pretext: mean weight}; kept out of the (printed) summary.
        attention_per_class[str(fraction)] = per_class
    return summary, attention_per_class


def verdict(summary: dict) -> list[str]:
    """One line per fraction: the reference and the best fused variant (chosen on
    validation) against pretext matching, paired by seed, and whether that is noise."""
    lines = []
    for f, s in summary["fractions"].items():
        parts = []
        for label, v in (
            ("reference", summary["reference"]),
            ("best on validation", s["best_fused_on_val"]),
        ):
            t = s["negative_transfer"][v]
            judged = _judged(t).replace(
                "worse beyond noise", "worse beyond noise: negative transfer"
            )
            parts.append(f"{label} {v} {_diff(t)} points ({judged})")
        chosen = sorted(set(s["pretext_matching_chosen"]))
        lines.append(
            f"{100 * float(f):g}% labels, fused - pretext matching "
            f"({'/'.join(chosen)}): " + "; ".join(parts)
        )
    return lines


def _judged(t: dict) -> str:
    if t["diff_se"] is None:
        return "noise unknown: 1 seed"
    return (
        "worse beyond noise"
        if t["worse_beyond_noise"]
        else "better beyond noise"
        if t["better_beyond_noise"]
        else "within noise"
    )


def _diff(t: dict) -> str:
    if t["diff_se"] is None:
        return f"{100 * t['diff_mean']:+.1f}"
    lo, hi = t["diff_ci95"]
    return f"{100 * t['diff_mean']:+.1f} [95% t-interval {100 * lo:+.1f}, {100 * hi:+.1f}]"


def _pct(ms: dict) -> str:
    return f"{100 * ms['mean']:.1f} ± {100 * ms['std']:.1f}"


def write_markdown(path: str, results: dict) -> None:
    s = results["summary"]
    names = s["pretexts"]
    fractions = list(s["fractions"])
    lines = [
        "# Attention gating over frozen pretext encoders (jssl fusion study)",
        "",
        (
            f"Data: {results['data']}; seeds {results['seeds']}; head budget: "
            f"{results['budget']}. Accuracy in %, mean ± std over seeds; the labelled subset, "
            "the head's initialisation and the batch order vary with the seed."
        ),
        "",
        "## Stage 1: pretext encoders",
        "",
        (
            "| pretext | steps | train time (s) | feature width | k-NN (all labels) | "
            "linear probe (all labels) |"
        ),
        "|---|---|---|---|---|---|",
    ]
    for n in names:
        e = results["encoders"][n]
        ev = e.get("eval", {})
        t = e.get("train_time_s")
        lines.append(
            f"| {n} | {e['final_step']} | {'-' if t is None else f'{t:.0f}'} | "
            f"{e['width']} | {100 * ev.get('knn_accuracy', float('nan')):.1f} | "
            f"{100 * ev.get('linear_accuracy', float('nan')):.1f} |"
        )
    lines += [
        "",
        "## Test accuracy (validation in brackets)",
        "",
        "| variant | " + " | ".join(f"{100 * float(f):g}% labels" for f in fractions) + " |",
        "|---|" + "---|" * len(fractions),
    ]
    variants = list(s["fractions"][fractions[0]]["accuracy"])
    for v in variants:
        cells = [
            f"{_pct(s['fractions'][f]['accuracy'][v]['test'])} "
            f"({_pct(s['fractions'][f]['accuracy'][v]['val'])})"
            for f in fractions
        ]
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Pretext matching chose, per seed: "
        + "; ".join(
            f"{100 * float(f):g}%: {', '.join(s['fractions'][f]['pretext_matching_chosen'])}"
            for f in fractions
        )
        + ".",
        "",
        "## Negative transfer: fused - pretext matching (test, paired by seed)",
        "",
        "| fused variant | " + " | ".join(f"{100 * float(f):g}% labels" for f in fractions) + " |",
        "|---|" + "---|" * len(fractions),
    ]
    for v in s["fractions"][fractions[0]]["negative_transfer"]:
        cells = []
        for f in fractions:
            t = s["fractions"][f]["negative_transfer"][v]
            cells.append(f"{_diff(t)} ({_judged(t)})")
        mark = " (reference)" if v == s["reference"] else ""
        lines.append(f"| {v}{mark} | " + " | ".join(cells) + " |")
    lines += ["", "± is the standard error of the mean paired difference over seeds.", ""]
    lines += [f"- {line}" for line in results["verdict"]]
    lines += [
        "",
        "## Mean weight per pretext (test split, all classes)",
        "",
        "| variant | labels | " + " | ".join(names) + " |",
        "|---|---|" + "---|" * len(names),
    ]
    for f in fractions:
        for v, w in s["fractions"][f]["attention"].items():
            lines.append(
                f"| {v} | {100 * float(f):g}% | " + " | ".join(f"{w[n]:.3f}" for n in names) + " |"
            )
    lines.append("")
    for f in fractions:
        att = s["fractions"][f]["attention"]
        for v in att:
            if v != s["reference"] and not v.startswith("input"):
                continue
            lines += [
                (
                    f"## Mean attention weight per pretext and class: {v}, "
                    f"{100 * float(f):g}% labels (test split)"
                ),
                "",
                "| class | " + " | ".join(names) + " |",
                "|---|" + "---|" * len(names),
            ]
            for c, row in enumerate(results["attention_per_class"][f][v]):
                lines.append(f"| {c} | " + " | ".join(f"{row[n]:.3f}" for n in names) + " |")
            lines.append("| all | " + " | ".join(f"{att[v][n]:.3f}" for n in names) + " |")
            lines.append("")
    t = results["timing"]
    lines += [
        (
            f"Wall time: stage 1 {t['stage1_s']:.0f} s, features {t['features_s']:.0f} s, "
            f"stage 2 {t['stage2_s']:.0f} s, total {t['total_s']:.0f} s."
        ),
        "",
    ]
    io.write_text(path, "\n".join(lines))


def plot_attention(path: str, summary: dict, per_class: dict) -> None:
    """Bar chart: mean weight per pretext for every class (and all classes), one panel per
    (weighted variant, fraction)."""
    if not plots.available():
        return
    names = summary["pretexts"]
    fractions = list(summary["fractions"])
    variants = [v for v in summary["fractions"][fractions[0]]["attention"] if v != "average"]
    if not variants:
        return
    fig = plots.figure(5.5 * len(fractions), 2.8 * len(variants), dpi=110)
    axes = fig.subplots(len(variants), len(fractions), squeeze=False)
    width = 0.8 / len(names)
    for r, v in enumerate(variants):
        for col, f in enumerate(fractions):
            rows = per_class[f][v] + [summary["fractions"][f]["attention"][v]]
            x = np.arange(len(rows))
            ax = axes[r][col]
            for i, n in enumerate(names):
                ax.bar(
                    x + (i - (len(names) - 1) / 2) * width, [row[n] for row in rows], width, label=n
                )
            ax.set_xticks(x, [str(c) for c in range(len(rows) - 1)] + ["all"])
            ax.set_title(f"{v}, {100 * float(f):g}% labels", fontsize=9)
            ax.set_ylabel("mean gate" if v.startswith("se_") else "mean weight", fontsize=8)
            ax.tick_params(labelsize=7)
    axes[0][0].legend(fontsize=7, ncol=len(names))
    axes[-1][0].set_xlabel("class (test split)", fontsize=8)
    io.write_with(path, fig.savefig, ".tmp.png")


# --- The study ------------------------------------------------------------------------------


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    start = time.perf_counter()
    _validate(config)
    validate(config, jax.device_count())
    os.makedirs(workdir, exist_ok=True)
    cmp = config.compare

    # Stage 1: the K pretext encoders.
    info = pretrain_encoders(config, workdir)
    names = tuple(info)
    paths = tuple(info[n]["workdir"] for n in names)
    head_config = copy.deepcopy(config)
    head_config.fusion.encoders, head_config.fusion.names = paths, names
    stage1 = time.perf_counter()

    encoders = load_encoders(paths, names)
    mesh = parallel.make_mesh()
    feats = cached_features(head_config, encoders, info, workdir, mesh)
    num_classes = int(max(int(feats[s][1].max()) for s in feats) + 1)
    features_done = time.perf_counter()

    # Stage 2: every variant, on every fraction and seed.
    variant_configs = _variants(head_config, names)
    trainers = {}
    for n, c in variant_configs.items():
        trainers[n] = {}
        for lr in cmp.lrs:
            c_lr = copy.deepcopy(c)
            c_lr.optimizer.lr = float(lr)
            trainers[n][float(lr)] = HeadTrainer(c_lr, num_classes, encoders.widths, mesh)
    key = _heads_key(head_config, names)
    os.makedirs(os.path.join(workdir, HEADS_DIR), exist_ok=True)
    runs: dict = {}
    for fraction in cmp.fractions:
        runs[fraction] = {}
        for seed in cmp.seeds:
            path = os.path.join(workdir, HEADS_DIR, f"fraction{fraction:g}_seed{seed}.json")
            record = None
            if os.path.exists(path):
                saved = io.read_json(path)
                if saved.get("key") == key:
                    record = saved["record"]
            if record is None:
                record, samples = _run_seed(trainers, feats, fraction, seed, num_classes)
                if jax.process_index() == 0:
                    # Per-sample test weights (N_test, K) of every weighted variant.
                    io.save_npz(
                        path[: -len(".json")] + "_weights.npz", labels=feats["test"][1], **samples
                    )
                    io.write_json(path, {"key": key, "record": record}, indent=None)
            runs[fraction][seed] = record
    stage2 = time.perf_counter()

    fused = list(cmp.variants)
    summary, per_class = summarize(runs, names, fused, cmp.reference)
    results = {
        "workdir": workdir,
        "data": f"{config.data.name} (train {len(feats['train'][1])}, val "
        f"{len(feats['val'][1])}, test {len(feats['test'][1])})",
        "seeds": list(cmp.seeds),
        "budget": f"{config.total_steps} steps of batch {config.batch_size}, "
        f"{config.optimizer.name} (weight decay {config.optimizer.weight_decay}), "
        f"learning rate chosen on validation from {list(cmp.lrs)} per variant",
        "encoders": {n: {**info[n], "width": w} for n, w in zip(names, encoders.widths)},
        "runs": {str(f): {str(s): r for s, r in by_seed.items()} for f, by_seed in runs.items()},
        "summary": summary,
        "verdict": verdict(summary),
        "attention_per_class": per_class,
    }
    results["timing"] = {
        "stage1_s": stage1 - start,
        "features_s": features_done - stage1,
        "stage2_s": stage2 - features_done,
    }
    results["timing"]["total_s"] = time.perf_counter() - start
    if jax.process_index() == 0:
        plot_attention(os.path.join(workdir, "attention.png"), summary, per_class)
        write_markdown(os.path.join(workdir, "results.md"), results)
        io.write_json(os.path.join(workdir, train.RESULTS_FILE), results)
    return results
