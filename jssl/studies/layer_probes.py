"""Few-label linear probes on each layer of an encoder (docs/studies.md rules 4 and 5), for
the knowledge-transfer study (jssl/studies/transfer.py): Noroozi et al. 2018 report a
linear classifier on every convolutional stage of the AlexNet student.

For one encoder (a jssl workdir or an exported encoder file) and one seed:

* the labelled set: a seeded, class-balanced `fraction` of `eval.train_split`
  (`jssl.data.subsets.few_label_subset`, subset seed = the run's seed);
* the validation set: a seeded, class-balanced subset of `eval.val_split` no larger than
  the labelled set (`eval.val_fraction` = `val_fraction(config, fraction)`,
  `eval.val_subset_seed` = the seed: `jssl.evaluate.split_source`);
* per layer, the features of `jssl.teachers.checkpoint_teacher(path, layer=...)` (a feature
  map global-average pooled; "" the encoder's pooled output), all layers in one jitted
  pass, and the linear probe of `jssl.evaluate.linear_probe` (its weight decay chosen on
  the validation subset among `eval.linear_weight_decays`), test accuracy on the whole
  `eval.test_split` (capped by `eval.max_examples` like the runs' evaluation);
* the best layer: the highest validation accuracy (`common.choose`: the first listed layer
  on ties), chosen without the test split.

`random_init_encoder` writes the untrained student of a seed as an encoder file (the
initial weights of that seed's run, BatchNorm statistics calibrated as the train loop's
random-init evaluation does), so the random-init control is probed the same way.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jssl import evaluate, export, io, methods, parallel, teachers
from jssl.checkpoint import CHECKPOINT_DIR
from jssl.data import sources
from jssl.data.subsets import SubsetSource, few_label_subset, source_labels
from jssl.studies.common import choose

__all__ = ["layer_name", "val_fraction", "labelled_rows", "layer_probes", "random_init_encoder"]


def layer_name(layer: str) -> str:
    """The table's name of a probe layer: "pooled" for the encoder's output ("")."""
    return layer or "pooled"


def val_fraction(config, fraction: float) -> float:
    """The fraction of `eval.val_split` that holds as many examples as the labelled subset
    at `fraction` of `eval.train_split` (at most all of it): docs/studies.md rule 4."""
    train = sources.config_source(config, config.eval.train_split)
    val = sources.config_source(config, config.eval.val_split)
    n = len(labelled_rows(config, fraction, seed=0, source=train))
    return min(1.0, n / len(val))


def labelled_rows(config, fraction: float, *, seed: int, source=None) -> np.ndarray:
    """Indices of the seeded class-balanced `fraction` of `eval.train_split`."""
    src = source or sources.config_source(config, config.eval.train_split)
    return few_label_subset(
        source_labels(src), fraction, seed=int(seed), num_classes=src.num_classes
    )


def _val_source(config, vfrac: float, seed: int):
    c = ml_collections.ConfigDict(config.to_dict())
    c.eval.val_fraction = float(vfrac)
    c.eval.val_subset_seed = int(seed)
    return evaluate.split_source(c, c.eval.val_split, "val")


def _identity(path: str):
    """What identifies the weights at `path`: a workdir's latest step, a file's size."""
    if os.path.isdir(path):
        d = os.path.join(path, CHECKPOINT_DIR)
        steps = [int(n) for n in os.listdir(d) if n.isdigit()] if os.path.isdir(d) else []
        return {"path": os.path.abspath(path), "step": max(steps, default=None)}
    stat = os.stat(path)
    return {"path": os.path.abspath(path), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def layer_probes(
    config, path: str, *, seed: int, layers, fraction: float, vfrac: float, mesh, out: str
) -> dict:
    """The probes of every layer of the encoder at `path` (see the module docstring), cached
    in the JSON file `out` (recomputed when its inputs differ). Returns {"layers": {name:
    {"test_accuracy", "val_accuracy", "weight_decay", "dim"}}, "best_layer",
    "best_test_accuracy", "best_val_accuracy", "num_labelled", "num_val", "num_test"}."""
    ev = config.eval
    inputs = {
        "encoder": _identity(path),
        "layers": list(layers),
        "fraction": float(fraction),
        "val_fraction": float(vfrac),
        "seed": int(seed),
        "data": config.data.name,
        "splits": [ev.train_split, ev.val_split, ev.test_split],
        "weight_decays": [float(w) for w in ev.linear_weight_decays],
        "max_steps": int(ev.linear_max_steps),
        "max_examples": int(ev.max_examples),
    }
    if os.path.exists(out):
        record = io.read_json(out)
        if record.get("inputs") == json.loads(json.dumps(inputs)):
            return record["probes"]
    train_src = sources.config_source(config, ev.train_split)
    labelled = SubsetSource(train_src, labelled_rows(config, fraction, seed=seed, source=train_src))
    val = _val_source(config, vfrac, seed)
    test = evaluate.split_source(config, ev.test_split, "test")

    per_layer = [teachers.checkpoint_teacher(path, layer=layer) for layer in layers]
    shape = jax.ShapeDtypeStruct((1, *train_src.image_shape), jnp.uint8)
    dims = [int(jax.eval_shape(t.features, shape).shape[1]) for t in per_layer]

    def features(images):  # every layer in one pass: one compilation per encoder
        return jnp.concatenate([t.features(images) for t in per_layer], axis=1)

    fn = teachers.sharded_features(teachers.Teacher("layers", features), mesh, normalize=False)
    feats = {}
    for key, src, cap in (("train", labelled, 0), ("val", val, 0), ("test", test, ev.max_examples)):
        feats[key] = evaluate.extract_features(
            fn, jnp.zeros(()), src, batch_size=ev.batch_size, mesh=mesh, max_examples=cap
        )
    bounds = np.cumsum([0] + dims)
    result = {}
    for i, layer in enumerate(layers):
        cols = slice(int(bounds[i]), int(bounds[i + 1]))
        p = evaluate.linear_probe(
            feats["train"][0][:, cols],
            feats["train"][1],
            feats["val"][0][:, cols],
            feats["val"][1],
            feats["test"][0][:, cols],
            feats["test"][1],
            num_classes=train_src.num_classes,
            weight_decays=tuple(ev.linear_weight_decays),
            max_steps=ev.linear_max_steps,
        )
        result[layer_name(layer)] = {
            "test_accuracy": float(p["test_accuracy"]),
            "val_accuracy": float(p["val_accuracy"]),
            "weight_decay": float(p["weight_decay"]),
            "dim": dims[i],
        }
    names = [layer_name(layer) for layer in layers]
    best, _ = choose({n: n for n in names}, {n: result[n]["val_accuracy"] for n in names})
    probes = {
        "layers": result,
        "best_layer": best,
        "best_test_accuracy": result[best]["test_accuracy"],
        "best_val_accuracy": result[best]["val_accuracy"],
        "num_labelled": int(len(feats["train"][1])),
        "num_val": int(len(feats["val"][1])),
        "num_test": int(len(feats["test"][1])),
    }
    if jax.process_index() == 0:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        io.write_json(out, {"inputs": inputs, "probes": probes})
    return probes


def random_init_encoder(run_config, path: str, mesh) -> str:
    """Write the encoder of `run_config` at its initialisation (seed `run_config.seed`: the
    weights its training starts from), BatchNorm statistics calibrated on its training split
    (`evaluate.calibrate_batch_stats`, as the train loop's random-init evaluation), to the
    encoder file `path` (reused when it exists with the same config). Returns `path`."""
    record = path + ".json"
    fields = json.loads(json.dumps(run_config.to_dict(), default=str))
    if os.path.exists(path) and os.path.exists(record):
        if io.read_json(record).get("config") == fields:
            return path
    src = sources.config_source(run_config, run_config.data.train_split)
    method = methods.build(
        run_config, methods.DataInfo(num_classes=src.num_classes, image_shape=src.image_shape), mesh
    )
    init = jax.jit(method.init, out_shardings=parallel.replicated(mesh))
    state = init(jax.random.PRNGKey(run_config.seed))
    state = evaluate.calibrate_batch_stats(method, state, src, run_config, mesh)
    host = jax.tree_util.tree_map(np.asarray, jax.device_get(state))
    variables = {"params": {"backbone": host.params["backbone"]}}
    if host.batch_stats and host.batch_stats.get("backbone"):
        variables["batch_stats"] = {"backbone": host.batch_stats["backbone"]}
    if jax.process_index() == 0:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        if os.path.exists(path):  # written for another config (the record said so)
            os.remove(path)
        export.write_encoder(run_config, variables, path)
        io.write_json(record, {"config": fields})
    parallel.sync_processes("transfer-random-init")
    return path
