"""The fusion study (`configs/fusion.py:compare`): attention over frozen pretext encoders
(Yao et al. 2022) against every single pretext, pretext matching, a uniform average and
concatenation, with the controls that make selection visible (docs/studies.md).

For every seed of `config.compare.seeds` (a replicate: the seed trains its own encoders,
draws its own labelled subset, validation subset, head initialisations and batch orders):

Stage 1 pretrains the K pretext encoders of `config.compare.pretexts` with the one train
loop, each seeded by the seed, in DIR/encoders/s<seed>/<name> (a finished run is reused,
an interrupted one resumes). The controls of `config.compare.controls` join them:
"random_init" (the architecture of the named pretext at a seeded random initialisation,
`jssl.export.random_encoder`, never trained), "<name>_copy" (a duplicate of the named
pretext's encoder: the same features twice) and "noise" (Gaussian features of the same
width, independent of the images: useless by construction). Their frozen features of the
train, validation and test splits are computed once and cached in
DIR/features/s<seed>/<name>.npz (keyed by the encoder and the splits).

Stage 2 trains, for every labelled fraction, every head of the replicate on the same
seeded class-balanced labelled subset, all with one recipe and budget (`config.optimizer`,
`config.total_steps`, `config.batch_size`): the fused variants of
`config.compare.variants` over all K inputs, one linear probe per input ("single_<name>";
the duplicate has none, it equals its original's), and with `compare.leave_one_out` the
reference variant without each input in turn ("loo_<name>"). Every head trains once per
learning rate of `config.compare.lrs` (one grid for every head) and keeps the one with the
best validation accuracy (`common.choose`, the first on ties); with `compare.small_val`
the validation set is a seeded class-balanced subset of the validation split as large as
the labelled subset (docs/studies.md rule 4). "pretext_matching" is the single pretext
(never a control) with the best validation accuracy. Nothing is chosen on test.
Each (seed, fraction) is saved in DIR/heads/ when done (with its per-sample test weights,
`*_weights.npz`), so an interrupted study resumes.

The claims, per fraction, paired by seed with t-based 95% intervals (docs/studies.md):
the reference beats pretext matching (the paper's "no negative transfer", and more); it
beats the uniform average over the same projections (`compare.uniform`: what the
attention adds); it gives the noise and the random-init encoder less than 1/K of the
weight, and does not double-count the duplicate (the pair's total weight over the
original's weight in the head without the copy, R, is nearer 1 than 2). The selection
claims need identifiable weights (the reference's projections tied: jssl/models/fusion.py)
and weights that moved: their relative spread over the inputs (std / mean) must reach
`compare.min_relative_spread`, or the selection verdicts read "inconclusive".

Writes DIR/results.json ("seeds", "provenance", "summary", "verdict" lines, "tuning",
"runs", "encoders", "budgets"), DIR/results.md and DIR/attention.png.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import math
import os
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jssl import checkpoint, export, io, parallel, plots, train
from jssl.config import experiment_fields, validate
from jssl.data import sources
from jssl.data.features import FeatureBatches, FeatureRows, feature_keys, split_columns
from jssl.data.subsets import few_label_subset
from jssl.errors import ConfigError
from jssl.evaluate import encode_source, extract_features
from jssl.methods import fusion
from jssl.methods.common import TrainState
from jssl.models.fusion import ATTENTION_MODES, MODES, PROJECTIONS, WEIGHTED_MODES
from jssl.studies.common import check_seeds, choose, paired, provenance, stats, t_interval
from jssl.studies.common import verdict as claim_verdict

__all__ = [
    "HeadTrainer",
    "arms",
    "cached_features",
    "inputs",
    "pretrain_encoders",
    "run",
    "summarize",
    "verdicts",
]

FEATURES_DIR, HEADS_DIR, ENCODERS_DIR = "features", "heads", "encoders"
RANDOM_INIT, NOISE = "random_init", "noise"
NOISE_SALT = 0x6E6F6973  # folds the noise control's generator off the seed


def _variant_field(v, field: str, default):
    return v[field] if field in v else default


def _validate(config: ml_collections.ConfigDict) -> None:
    if "compare" not in config:
        raise ConfigError(
            "config.compare: missing; the fusion study needs it (configs/fusion.py:compare)"
        )
    cmp = config.compare
    if not len(cmp.pretexts):
        raise ConfigError("config.compare.pretexts: empty; name at least one pretext config")
    reserved = {RANDOM_INIT, NOISE} | {f"{n}_copy" for n in cmp.pretexts}
    for name in cmp.pretexts:
        if name in reserved:
            raise ConfigError(
                f"config.compare.pretexts.{name}: the name of a control; rename the pretext"
            )
    for name, variant in cmp.variants.items():
        where = f"config.compare.variants.{name}"
        if name.startswith(("single_", "loo_", "pretexts_")) or name == "pretext_matching":
            raise ConfigError(
                f"{where}: reserved name (the baselines are added by the study); rename it"
            )
        if variant.mode not in MODES or variant.mode == "single":
            raise ConfigError(
                f"{where}.mode: {variant.mode!r}; choose one of "
                f"{', '.join(m for m in MODES if m != 'single')}"
            )
        if _variant_field(variant, "projection", "free") not in PROJECTIONS:
            raise ConfigError(
                f"{where}.projection: {variant.projection!r}; choose one of "
                f"{', '.join(PROJECTIONS)}"
            )
        if not isinstance(_variant_field(variant, "normalize", False), bool):
            raise ConfigError(f"{where}.normalize: must be True or False")
        if not _variant_field(variant, "entropy_weight", 0.0) >= 0:
            raise ConfigError(f"{where}.entropy_weight: must be >= 0")
    if cmp.reference not in cmp.variants:
        raise ConfigError(
            f"config.compare.reference: {cmp.reference!r} is not a variant; "
            f"choose one of {', '.join(cmp.variants)}"
        )
    if cmp.variants[cmp.reference].mode not in ATTENTION_MODES:
        raise ConfigError(
            f"config.compare.reference: {cmp.reference!r} has mode "
            f"{cmp.variants[cmp.reference].mode!r}; the selection checks need attention "
            f"weights: choose a variant of mode {' or '.join(ATTENTION_MODES)}"
        )
    uniform = cmp.get("uniform", "")
    if uniform and (uniform not in cmp.variants or cmp.variants[uniform].mode != "average"):
        raise ConfigError(
            f"config.compare.uniform: {uniform!r} is not a variant of mode 'average'; "
            "name one, or '' for none"
        )
    controls = cmp.get("controls", ml_collections.ConfigDict())
    for field in ("random_init", "duplicate"):
        value = controls.get(field, "")
        if value and value not in cmp.pretexts:
            raise ConfigError(
                f"config.compare.controls.{field}: {value!r} is not a pretext; choose one of "
                f"{', '.join(cmp.pretexts)}, or '' for none"
            )
    if not isinstance(controls.get("noise", False), bool):
        raise ConfigError("config.compare.controls.noise: must be True or False")
    for field in ("leave_one_out", "small_val"):
        if not isinstance(cmp.get(field, False), bool):
            raise ConfigError(f"config.compare.{field}: must be True or False")
    if not cmp.get("min_relative_spread", 0.0) >= 0:
        raise ConfigError("config.compare.min_relative_spread: must be >= 0")
    check_seeds(cmp.seeds)
    if not cmp.lrs or not all(lr > 0 for lr in cmp.lrs):
        raise ConfigError(
            f"config.compare.lrs: {tuple(cmp.lrs)!r}; give positive learning "
            "rates (each head keeps the best on validation)"
        )
    if not cmp.fractions or not all(0.0 < f <= 1.0 for f in cmp.fractions):
        raise ConfigError(
            f"config.compare.fractions: {tuple(cmp.fractions)!r}; give fractions in (0, 1]"
        )


# --- Stage 1: the encoders and the controls ----------------------------------------------


def pretrain_encoders(config: ml_collections.ConfigDict, workdir: str, seed: int) -> dict:
    """Train (or reuse, or resume) every pretext of config.compare.pretexts with `seed` in
    DIR/encoders/s<seed>/<name>; returns {name: {"workdir", "final_step", "eval",
    "train_time_s", "reused"}}."""
    out = {}
    for name, pretext in config.compare.pretexts.items():
        pc = copy.deepcopy(pretext)
        pc.seed = int(seed)
        wd = os.path.join(workdir, ENCODERS_DIR, f"s{seed}", name)
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


def inputs(config: ml_collections.ConfigDict, workdir: str, seed: int, info: dict) -> list:
    """The K inputs of one replicate, in order: the pretexts, then the controls of
    `config.compare.controls` ("random_init", "<name>_copy", "noise"). Each is {"name",
    "kind" (pretext | random_init | copy | noise), "path" (None for noise), "of" (the
    original of a copy)}. The random-init encoder file is written here when missing."""
    cmp = config.compare
    out = [
        {
            "name": n,
            "kind": "pretext",
            "path": info[n]["workdir"],
            "of": None,
            "final_step": info[n]["final_step"],
        }
        for n in cmp.pretexts
    ]
    controls = cmp.get("controls", ml_collections.ConfigDict())
    if controls.get("random_init", ""):
        path = os.path.join(workdir, ENCODERS_DIR, f"s{seed}", f"{RANDOM_INIT}.msgpack")
        if not os.path.exists(path) and jax.process_index() == 0:
            export.random_encoder(cmp.pretexts[controls.random_init], path, seed=seed)
        out.append({"name": RANDOM_INIT, "kind": RANDOM_INIT, "path": path, "of": None})
    if controls.get("duplicate", ""):
        original = controls.duplicate
        out.append(
            {
                "name": f"{original}_copy",
                "kind": "copy",
                "path": info[original]["workdir"],
                "of": original,
                "final_step": info[original]["final_step"],
            }
        )
    if controls.get("noise", False):
        out.append({"name": NOISE, "kind": NOISE, "path": None, "of": None})
    return out


def _splits(config) -> dict:
    return {
        "train": config.data.train_split,
        "val": config.eval.val_split,
        "test": config.eval.test_split,
    }


def _cache_key(path: str, final_step, config) -> str:
    """What the cached features of the encoder at `path` depend on: its experiment and final
    checkpoint (a workdir) or its bytes (an encoder file), and the splits."""
    if os.path.isdir(path):
        with open(os.path.join(path, checkpoint.EXPERIMENT_FILE), "rb") as f:
            text = f.read()
        text += repr(final_step).encode()
    else:
        with open(path, "rb") as f:
            text = f.read()
    splits = (config.data.name, tuple(_splits(config).values()))
    return hashlib.sha256(text + repr(splits).encode()).hexdigest()


def cached_features(config, entries: list, workdir: str, seed: int, mesh) -> tuple[dict, dict]:
    """({"train" | "val" | "test": (K feature arrays, labels)}, {name: cache key}): every
    input's frozen features, from DIR/features/s<seed>/<name>.npz when its key matches,
    computed and saved otherwise; a copy reuses its original's arrays, and the noise control
    draws N(0, 1) features of the first encoder's width from a generator seeded by (seed,
    NOISE_SALT, split)."""
    splits = _splits(config)
    folder = os.path.join(workdir, FEATURES_DIR, f"s{seed}")
    os.makedirs(folder, exist_ok=True)
    stored_by_name, keys = {}, {}
    for e in entries:
        if e["kind"] in ("copy", NOISE):
            continue
        path = os.path.join(folder, f"{e['name']}.npz")
        key = _cache_key(e["path"], e.get("final_step"), config)
        stored = None
        if os.path.exists(path):
            with np.load(path) as z:
                if str(z["key"]) == key:
                    stored = {k: z[k] for k in z.files}
        if stored is None:
            encoders = export.load_encoders((e["path"],), (e["name"],))
            stored = {"key": np.asarray(key)}
            for s, split in splits.items():
                (x,), y = encode_source(
                    encoders.modules,
                    encoders.variables,
                    sources.config_source(config, split),
                    batch_size=config.eval.batch_size,
                    mesh=mesh,
                )
                stored[s], stored[f"{s}_labels"] = x, y
            if jax.process_index() == 0:
                io.save_npz(path, **stored)
        stored_by_name[e["name"]], keys[e["name"]] = stored, key
    first = next(iter(stored_by_name.values()))
    out = {}
    for i, s in enumerate(splits):
        arrays = []
        for e in entries:
            if e["kind"] == "copy":
                arrays.append(stored_by_name[e["of"]][s])
            elif e["kind"] == NOISE:
                rng = np.random.default_rng([int(seed), NOISE_SALT, i])
                arrays.append(rng.standard_normal(first[s].shape).astype(np.float32))
            else:
                arrays.append(stored_by_name[e["name"]][s])
        out[s] = (arrays, first[f"{s}_labels"].astype(np.int32))
    return out, keys


# --- Stage 2: the heads ---------------------------------------------------------------------


class HeadTrainer:
    """One fusion head configuration trained on cached features over `mesh`, compiled once
    and reused for every seed and labelled subset (the study's heads, same budget each).

    The steps go through the train loop's `train.run_steps` (transfer guard, finite-loss
    check, logging cadence). Why not `train.train_and_evaluate`, with its workdir,
    checkpoints and evaluation per head: a head trains in about a second on cached
    features, the study trains (heads x learning rates x fractions x seeds) of them, and
    it saves every (seed, fraction) record as it completes, so an interrupted study resumes
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


def _head_config(config, variant) -> ml_collections.ConfigDict:
    c = copy.deepcopy(config)
    c.fusion.mode = variant["mode"]
    c.fusion.entropy_weight = float(variant.get("entropy_weight", 0.0))
    c.fusion.projection = variant.get("projection", "free")
    c.fusion.normalize = bool(variant.get("normalize", False))
    c.fusion.single_index = 0
    return c


def arms(config: ml_collections.ConfigDict, entries: list) -> dict:
    """{arm: {"variant": {mode, entropy_weight, projection, normalize}, "inputs": [indices
    into `entries`]}}: the fused variants over all K inputs; when there are controls, each
    fused variant over the pretexts alone ("pretexts_<variant>", the paper's setting);
    "single_<name>" over each input but a copy; and with `compare.leave_one_out`
    "loo_<name>": the reference without that input."""
    cmp = config.compare
    out = {}
    everything = list(range(len(entries)))
    for name, v in cmp.variants.items():
        out[name] = {"variant": _variant_dict(v), "inputs": everything}
    pretexts = [i for i, e in enumerate(entries) if e["kind"] == "pretext"]
    if len(pretexts) < len(entries):  # controls among the inputs: also the paper's setting
        for name, v in cmp.variants.items():
            out[f"pretexts_{name}"] = {"variant": _variant_dict(v), "inputs": pretexts}
    for i, e in enumerate(entries):
        if e["kind"] != "copy":
            out[f"single_{e['name']}"] = {"variant": {"mode": "single"}, "inputs": [i]}
    if cmp.get("leave_one_out", False) and len(entries) > 1:
        for i, e in enumerate(entries):
            out[f"loo_{e['name']}"] = {
                "variant": _variant_dict(cmp.variants[cmp.reference]),
                "inputs": [j for j in everything if j != i],
            }
    return out


def _variant_dict(v) -> dict:
    return {
        "mode": v.mode,
        "entropy_weight": float(_variant_field(v, "entropy_weight", 0.0)),
        "projection": _variant_field(v, "projection", "free"),
        "normalize": bool(_variant_field(v, "normalize", False)),
    }


class _Trainers:
    """HeadTrainers built on first use, one per (head variant, learning rate, input widths):
    the compiled steps are shared by every arm, seed and fraction that need them."""

    def __init__(self, config, num_classes: int, mesh):
        self.config, self.num_classes, self.mesh, self._cache = config, num_classes, mesh, {}

    def get(self, variant: dict, lr: float, widths: tuple) -> HeadTrainer:
        key = (json.dumps(variant, sort_keys=True), float(lr), tuple(widths))
        if key not in self._cache:
            c = _head_config(self.config, variant)
            c.optimizer.lr = float(lr)
            self._cache[key] = HeadTrainer(c, self.num_classes, widths, self.mesh)
        return self._cache[key]


def _accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.argmax(logits, axis=1) == labels))


def _run_replicate(
    trainers: _Trainers, all_arms: dict, entries: list, feats, fraction, seed, config
) -> tuple[dict, dict]:
    """Every arm on one labelled subset (and its validation subset): each learning rate
    trained, the best on validation kept (first on ties), its test accuracy and weights
    recorded. Returns (record, {arm: per-sample test weights})."""
    cmp = config.compare
    num_classes = trainers.num_classes
    train_x, train_y = feats["train"]
    (val_x, val_y), (test_x, test_y) = feats["val"], feats["test"]
    subset = few_label_subset(train_y, fraction, seed=seed, num_classes=num_classes)
    if cmp.get("small_val", False):
        vrows = few_label_subset(
            val_y, min(1.0, len(subset) / len(val_y)), seed=seed, num_classes=num_classes
        )
    else:
        vrows = np.arange(len(val_y))
    names = [e["name"] for e in entries]
    record = {"num_labelled": int(len(subset)), "num_val": int(len(vrows)), "arms": {}}
    samples = {}
    grid = {f"{lr:g}": float(lr) for lr in cmp.lrs}
    for arm, spec in all_arms.items():
        idx = spec["inputs"]
        widths = tuple(train_x[i].shape[1] for i in idx)
        x = [train_x[i][subset] for i in idx]
        t = time.perf_counter()
        fits, scores = {}, {}
        for label, lr in grid.items():
            trainer = trainers.get(spec["variant"], lr, widths)
            state, history = trainer.fit(x, train_y[subset], seed=seed)
            scores[label] = _accuracy(
                trainer.outputs(state, [val_x[i][vrows] for i in idx])["logits"], val_y[vrows]
            )
            fits[label] = (trainer, state, history)
        label, lr = choose(grid, scores)  # on validation, never on test
        trainer, state, history = fits[label]
        out = trainer.outputs(state, [test_x[i] for i in idx])
        r = {
            "inputs": [names[i] for i in idx],
            "lr": lr,
            "val_accuracy": scores[label],
            "val_accuracy_per_lr": scores,
            "test_accuracy": _accuracy(out["logits"], test_y),
            "train_time_s": time.perf_counter() - t,
            "final_loss": history[-1]["loss"],
            "final_train_accuracy": history[-1]["train_accuracy"],
        }
        if out["weights"] is not None:
            r["mean_weights"] = np.mean(out["weights"], axis=0).tolist()
            samples[arm] = out["weights"]
        record["arms"][arm] = r
    singles = {
        f"single_{e['name']}": record["arms"][f"single_{e['name']}"]
        for e in entries
        if e["kind"] == "pretext"
    }
    chosen = max(singles, key=lambda n: (singles[n]["val_accuracy"], -list(singles).index(n)))
    record["arms"]["pretext_matching"] = {**singles[chosen], "chosen": chosen[len("single_") :]}
    return record, samples


def _heads_key(config, feature_keys_: dict, all_arms: dict) -> str:
    """What a (seed, fraction) record depends on: the study's fields but the seeds and
    fractions (a record is one of each), its inputs' features and its heads."""
    skip = ("compare.pretexts", "compare.seeds", "compare.fractions")
    fields = {k: v for k, v in experiment_fields(config).items() if not k.startswith(skip)}
    return hashlib.sha256(
        json.dumps([fields, feature_keys_, all_arms], sort_keys=True, default=str).encode()
    ).hexdigest()


# --- Summary, verdicts and report -------------------------------------------------------------


def _with_ci(values: list[float]) -> dict:
    lo, hi = t_interval(values)
    return {**stats(values), "ci": [lo, hi]}


def _relative_spread(weights: Sequence[float]) -> float:
    """std / mean of one head's mean weights over its inputs (0: uniform)."""
    w = np.asarray(weights, np.float64)
    return float(w.std() / w.mean())


def summarize(runs: dict, entries: list, config) -> dict:
    """Per fraction: test (and validation) accuracy of every arm over the seeds with t
    intervals; paired differences of every fused variant against pretext matching and of
    the reference against the uniform average; the mean weight of every input per weighted
    arm; the manipulation check; the selection checks (noise, random init, duplicate); the
    leave-one-out differences. `runs`: {fraction: {seed: record}}."""
    cmp = config.compare
    names = [e["name"] for e in entries]
    k = len(names)
    ref, uniform = cmp.reference, cmp.get("uniform", "")
    threshold = float(cmp.get("min_relative_spread", 0.0))
    out = {"reference": ref, "uniform": uniform, "inputs": names, "fractions": {}}
    for fraction, by_seed in runs.items():
        seeds = sorted(by_seed)
        recs = [by_seed[s]["arms"] for s in seeds]

        def test(arm, recs=recs):
            return [r[arm]["test_accuracy"] for r in recs]

        acc = {
            a: {"test": _with_ci(test(a)), "val": stats([r[a]["val_accuracy"] for r in recs])}
            for a in recs[0]
        }
        fused = [a for a in recs[0] if a in cmp.variants or a.startswith("pretexts_")]
        vs_matching = {v: paired(test(v), test("pretext_matching")) for v in fused}
        weights = {}
        for a in recs[0]:
            if "mean_weights" in recs[0][a]:
                inputs_a = recs[0][a]["inputs"]
                weights[a] = {
                    n: stats([r[a]["mean_weights"][j] for r in recs])
                    for j, n in enumerate(inputs_a)
                }
        spreads = [_relative_spread(r[ref]["mean_weights"]) for r in recs]
        manipulation = {
            "relative_spread_per_seed": spreads,
            "relative_spread_mean": float(np.mean(spreads)),
            "threshold": threshold,
            "passed": bool(np.mean(spreads) >= threshold),
        }
        selection = {}
        ref_w = [r[ref]["mean_weights"] for r in recs]
        for e in entries:
            if e["kind"] in (NOISE, RANDOM_INIT):
                j = names.index(e["name"])
                selection[e["name"]] = paired([1.0 / k] * len(recs), [w[j] for w in ref_w])
            if e["kind"] == "copy" and f"loo_{e['name']}" in recs[0]:
                j, o = names.index(e["name"]), names.index(e["of"])
                # In the head without the copy, the original sits at its own index (the
                # copy comes after every pretext).
                ratio = [
                    (r[ref]["mean_weights"][o] + r[ref]["mean_weights"][j])
                    / r[f"loo_{e['name']}"]["mean_weights"][o]
                    for r in recs
                ]
                selection["duplicate"] = {
                    "name": e["name"],
                    "of": e["of"],
                    "ratio": stats(ratio),
                    "claim": paired([1.5] * len(recs), ratio),
                }
        loo = {n: paired(test(ref), test(f"loo_{n}")) for n in names if f"loo_{n}" in recs[0]}
        out["fractions"][str(fraction)] = {
            "accuracy": acc,
            "pretext_matching_chosen": [r["pretext_matching"]["chosen"] for r in recs],
            "vs_pretext_matching": vs_matching,
            # {"": over every input, "pretexts_": over the pretexts alone}
            "reference_vs_uniform": {
                p: paired(test(p + ref), test(p + uniform))
                for p in ("", "pretexts_")
                if uniform and p + ref in recs[0] and p + uniform in recs[0]
            }
            or None,
            "weights": weights,
            "manipulation_check": manipulation,
            "selection": selection,
            "leave_one_out": loo,
            "num_labelled": [by_seed[s]["num_labelled"] for s in seeds],
            "num_val": [by_seed[s]["num_val"] for s in seeds],
        }
    return out


def verdicts(summary: dict) -> list[str]:
    """The `Verdict:` lines, per fraction: the reference against pretext matching and
    against the uniform average (test accuracy), and the selection claims (weights; blocked
    when the manipulation check failed)."""
    ref, uniform = summary["reference"], summary["uniform"]
    k = len(summary["inputs"])
    lines = []
    for f, s in summary["fractions"].items():
        pct = f"{100 * float(f):g}% labels"
        settings = [("over every input (controls included)", "")]
        if f"pretexts_{ref}" in s["vs_pretext_matching"]:
            settings.insert(0, ("over the pretexts alone (the paper's setting)", "pretexts_"))
        for where, prefix in settings:
            lines.append(
                claim_verdict(
                    f"{pct}: {ref} {where} beats pretext matching",
                    s["vs_pretext_matching"][prefix + ref],
                )
            )
            d = s["reference_vs_uniform"].get(prefix) if s["reference_vs_uniform"] else None
            if d is not None:
                lines.append(
                    claim_verdict(f"{pct}: {ref} {where} beats the uniform average {uniform}", d)
                )
        m = s["manipulation_check"]
        blocked = (
            None
            if m["passed"]
            else f"the weights did not move: relative spread {m['relative_spread_mean']:.3f} "
            f"< {m['threshold']}"
        )
        for name, d in s["selection"].items():
            if name == "duplicate":
                lines.append(
                    claim_verdict(
                        f"{pct}: {ref} does not double-count the duplicate {d['name']} "
                        f"(A = 1.5, B = R, the pair's weight over {d['of']}'s weight without "
                        f"the copy; R = {d['ratio']['mean']:.2f})",
                        d["claim"],
                        blocked=blocked,
                        scale=1.0,
                        unit="",
                    )
                )
            else:
                lines.append(
                    claim_verdict(
                        f"{pct}: {ref} gives {name} less than 1/K of the weight "
                        f"(A = 1/{k}, B = its weight, in points of weight)",
                        d,
                        blocked=blocked,
                    )
                )
    return lines


def _pct(ms: dict) -> str:
    lo, hi = ms.get("ci", (math.nan, math.nan))
    ci = f" [{100 * lo:.1f}, {100 * hi:.1f}]" if math.isfinite(lo) else ""
    return f"{100 * ms['mean']:.1f}{ci}"


def _d(d: dict) -> str:
    lo, hi = d["ci"]
    ci = f" [{100 * lo:+.1f}, {100 * hi:+.1f}]" if math.isfinite(lo) else ""
    return f"{100 * d['mean']:+.1f}{ci}"


def write_markdown(path: str, results: dict) -> None:
    s = results["summary"]
    names = s["inputs"]
    fractions = list(s["fractions"])
    cols = " | ".join(f"{100 * float(f):g}% labels" for f in fractions)
    sep = "|---|" + "---|" * len(fractions)
    lines = [
        "# Attention gating over frozen pretext encoders (jssl fusion study)",
        "",
        f"Data: {results['data']}; seeds {results['seeds']} (each trains its own encoders and "
        "draws its own labelled and validation subsets); heads: "
        f"{results['budgets']['head']}. Accuracy in %, mean [t-based 95% interval] over "
        "seeds; differences paired by seed.",
        "",
        "## Inputs (stage 1)",
        "",
        "| input | kind | steps | train time per seed (s) | k-NN (all labels) | "
        "linear probe (all labels) |",
        "|---|---|---|---|---|---|",
    ]
    for n in names:
        e = results["encoders"][n]
        lines.append(
            f"| {n} | {e['kind']} | {e.get('steps', '-')} | {e.get('train_time_s', '-')} | "
            f"{e.get('knn', '-')} | {e.get('linear', '-')} |"
        )
    lines += ["", "## Test accuracy (validation mean in brackets)", "", f"| head | {cols} |", sep]
    for a in s["fractions"][fractions[0]]["accuracy"]:
        cells = [
            f"{_pct(s['fractions'][f]['accuracy'][a]['test'])} "
            f"({100 * s['fractions'][f]['accuracy'][a]['val']['mean']:.1f})"
            for f in fractions
        ]
        lines.append(f"| {a} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Pretext matching chose, per seed: "
        + "; ".join(
            f"{100 * float(f):g}%: {', '.join(s['fractions'][f]['pretext_matching_chosen'])}"
            for f in fractions
        )
        + ".",
        "",
        "## Fused - pretext matching (test points, paired by seed)",
        "",
        f"| fused variant | {cols} |",
        sep,
    ]
    for v in s["fractions"][fractions[0]]["vs_pretext_matching"]:
        mark = " (reference)" if v == s["reference"] else ""
        lines.append(
            f"| {v}{mark} | "
            + " | ".join(_d(s["fractions"][f]["vs_pretext_matching"][v]) for f in fractions)
            + " |"
        )
    for p in s["fractions"][fractions[0]]["reference_vs_uniform"] or {}:
        lines.append(
            f"| {p}{s['reference']} - {p}{s['uniform']} | "
            + " | ".join(_d(s["fractions"][f]["reference_vs_uniform"][p]) for f in fractions)
            + " |"
        )
    lines += ["", "## Mean weight per input (test split; mean ± sd over seeds)", ""]
    lines += ["| head | labels | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for f in fractions:
        for a, w in s["fractions"][f]["weights"].items():
            if a.startswith("loo_"):
                continue
            cells = [f"{w[n]['mean']:.3f} ± {w[n]['std']:.3f}" if n in w else "-" for n in names]
            lines.append(f"| {a} | {100 * float(f):g}% | " + " | ".join(cells) + " |")
    lines += ["", "## Manipulation check and selection", ""]
    for f in fractions:
        fs = s["fractions"][f]
        m = fs["manipulation_check"]
        lines.append(
            f"- {100 * float(f):g}% labels: relative spread of {s['reference']}'s weights "
            f"(std / mean over the inputs) {m['relative_spread_mean']:.3f} (per seed "
            + ", ".join(f"{x:.3f}" for x in m["relative_spread_per_seed"])
            + f"; threshold {m['threshold']}: {'passed' if m['passed'] else 'failed'})."
        )
        dup = fs["selection"].get("duplicate")
        if dup:
            lines.append(
                f"  Duplicate {dup['name']}: R = (weight of {dup['of']} + its copy) / weight of "
                f"{dup['of']} in the head without the copy = {dup['ratio']['mean']:.2f} ± "
                f"{dup['ratio']['std']:.2f} (1: not double-counted; 2: fully)."
            )
    if any(s["fractions"][f]["leave_one_out"] for f in fractions):
        lines += [
            "",
            f"## Leave one input out: {s['reference']} - {s['reference']} without it (test points)",
            "",
            f"| input left out | {cols} |",
            sep,
        ]
        for n in names:
            if n in s["fractions"][fractions[0]]["leave_one_out"]:
                lines.append(
                    f"| {n} | "
                    + " | ".join(_d(s["fractions"][f]["leave_one_out"][n]) for f in fractions)
                    + " |"
                )
    lines += ["", "## Verdicts"]
    for line in results["verdict"]:  # each its own paragraph, beginning with "Verdict:"
        lines += ["", line]
    t = results["timing"]
    lines += [
        "",
        "Wall time of this invocation (a reused stage costs nothing): encoders "
        f"{t['stage1_s']:.0f} s, features {t['features_s']:.0f} s, heads "
        f"{t['stage2_s']:.0f} s, total {t['total_s']:.0f} s "
        f"({results['provenance']['devices']} {results['provenance']['platform']} device(s)).",
        "",
    ]
    io.write_text(path, "\n".join(lines))


def plot_attention(path: str, summary: dict) -> None:
    """Bar chart: the mean weight of every input for every weighted head over all the
    inputs, one panel per fraction (error bars: sd over seeds)."""
    if not plots.available():
        return
    names = summary["inputs"]
    fractions = list(summary["fractions"])
    fig = plots.figure(5.5 * len(fractions), 3.2, dpi=110)
    axes = fig.subplots(1, len(fractions), squeeze=False)[0]
    for ax, f in zip(axes, fractions):
        heads = [a for a, w in summary["fractions"][f]["weights"].items() if set(w) == set(names)]
        width = 0.8 / max(1, len(heads))
        x = np.arange(len(names))
        for i, a in enumerate(heads):
            w = summary["fractions"][f]["weights"][a]
            ax.bar(
                x + (i - (len(heads) - 1) / 2) * width,
                [w[n]["mean"] for n in names],
                width,
                yerr=[w[n]["std"] for n in names],
                label=a,
            )
        ax.axhline(1.0 / len(names), color="k", lw=0.8, ls="--")
        ax.set_xticks(x, names, rotation=20, fontsize=7)
        ax.set_title(f"{100 * float(f):g}% labels (dashed: 1/K)", fontsize=9)
        ax.set_ylabel("mean weight (se_gate: mean gate)", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0].legend(fontsize=7)
    io.write_with(path, fig.savefig, ".tmp.png")


# --- The study ------------------------------------------------------------------------------


def _encoder_rows(entries: list, infos: dict, config) -> dict:
    """Per input: its kind, steps, train time and full-label k-NN / linear accuracy, as
    mean ± sd over the seeds' encoders (pretexts only)."""
    rows = {}
    for e in entries:
        row = {"kind": e["kind"]}
        if e["kind"] == "pretext":
            per_seed = [infos[s][e["name"]] for s in infos]
            row["steps"] = per_seed[0]["final_step"]
            times = [p["train_time_s"] for p in per_seed if p.get("train_time_s") is not None]
            if times:
                row["train_time_s"] = f"{np.mean(times):.0f}"
            for metric, label in (("knn_accuracy", "knn"), ("linear_accuracy", "linear")):
                values = [p["eval"][metric] for p in per_seed if metric in p.get("eval", {})]
                if values:
                    st = stats(values)
                    row[label] = f"{100 * st['mean']:.1f} ± {100 * st['std']:.1f}"
                    row[f"{label}_values"] = values
        elif e["kind"] == "copy":
            row["of"] = e["of"]
        rows[e["name"]] = row
    return rows


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    start = time.perf_counter()
    _validate(config)
    validate(config, jax.device_count())
    os.makedirs(workdir, exist_ok=True)
    cmp = config.compare
    seeds = check_seeds(cmp.seeds)
    prov = provenance()  # before training: the checkout that ran it
    mesh = parallel.make_mesh()

    head_config = copy.deepcopy(config)
    head_config.fusion.encoders, head_config.fusion.names = (), ()
    stage1 = features_s = stage2 = 0.0
    infos, runs, entries, trainers = {}, {float(f): {} for f in cmp.fractions}, None, None
    os.makedirs(os.path.join(workdir, HEADS_DIR), exist_ok=True)
    for seed in seeds:
        t0 = time.perf_counter()
        infos[seed] = pretrain_encoders(config, workdir, seed)
        entries = inputs(config, workdir, seed, infos[seed])
        t1 = time.perf_counter()
        feats, keys = cached_features(head_config, entries, workdir, seed, mesh)
        t2 = time.perf_counter()
        if trainers is None:
            num_classes = int(max(int(feats[s][1].max()) for s in feats) + 1)
            trainers = _Trainers(head_config, num_classes, mesh)
        all_arms = arms(config, entries)
        key = _heads_key(head_config, keys, all_arms)
        for fraction in runs:
            path = os.path.join(workdir, HEADS_DIR, f"seed{seed}_fraction{fraction:g}.json")
            record = None
            if os.path.exists(path):
                saved = io.read_json(path)
                if saved.get("key") == key:
                    record = saved["record"]
            if record is None:
                record, samples = _run_replicate(
                    trainers, all_arms, entries, feats, fraction, seed, config
                )
                if jax.process_index() == 0:
                    io.save_npz(
                        path[: -len(".json")] + "_weights.npz", labels=feats["test"][1], **samples
                    )
                    io.write_json(path, {"key": key, "record": record}, indent=None)
            runs[fraction][seed] = record
            print(
                f"fusion study: seed {seed}, {100 * fraction:g}% labels: {cmp.reference} "
                f"{100 * record['arms'][cmp.reference]['test_accuracy']:.1f}%, pretext "
                f"matching {100 * record['arms']['pretext_matching']['test_accuracy']:.1f}%",
                flush=True,
            )
        stage1 += t1 - t0
        features_s += t2 - t1
        stage2 += time.perf_counter() - t2

    summary = summarize(runs, entries, config)
    budgets = {
        "head": (
            f"{config.total_steps} steps of batch {config.batch_size} "
            f"({config.total_steps * config.batch_size} examples seen), "
            f"{config.optimizer.name} (weight decay {config.optimizer.weight_decay}), "
            f"the learning rate chosen on validation from {list(cmp.lrs)} for every head"
        ),
        "encoders": {
            n: f"{pc.total_steps} steps of batch {pc.batch_size}" for n, pc in cmp.pretexts.items()
        },
    }
    tuning = {
        str(f): {
            a: [by_seed[s]["arms"][a]["lr"] for s in sorted(by_seed)]
            for a in by_seed[seeds[0]]["arms"]
        }
        for f, by_seed in runs.items()
    }
    feats_sizes = {s: len(feats[s][1]) for s in feats}
    results = {
        "study": "fusion",
        "workdir": workdir,
        "data": f"{config.data.name} (train {feats_sizes['train']}, val "
        f"{feats_sizes['val']}, test {feats_sizes['test']})",
        "seeds": list(seeds),
        "provenance": prov,
        "budgets": budgets,
        "tuning": {"grid": list(cmp.lrs), "chosen_lr_per_seed": tuning},
        "encoders": _encoder_rows(entries, infos, config),
        "encoder_runs": {str(s): infos[s] for s in seeds},
        "runs": {str(f): {str(s): r for s, r in by_seed.items()} for f, by_seed in runs.items()},
        "summary": summary,
        "verdict": verdicts(summary),
    }
    results["timing"] = {
        "stage1_s": stage1,
        "features_s": features_s,
        "stage2_s": stage2,
        "total_s": time.perf_counter() - start,
    }
    if jax.process_index() == 0:
        plot_attention(os.path.join(workdir, "attention.png"), summary)
        write_markdown(os.path.join(workdir, "results.md"), results)
        io.write_json(os.path.join(workdir, train.RESULTS_FILE), results)
    return results
