"""The knowledge-transfer study (configs/transfer.py): Noroozi et al., CVPR 2018, under the
study rules of docs/studies.md.

`python -m jssl.main --config configs/transfer.py:compare --workdir DIR` (any preset: the
same code path). For every teacher of `config.teachers`, four stages, each saved in DIR and
reused when its output is complete (an interrupted study resumes at the first missing stage):

1. teacher   kind "config": its run is trained in DIR/teachers/<name> (the one train loop;
             a finished run is reused, an interrupted one resumes); "checkpoint": an
             existing run or exported encoder; "hog": nothing to train.
2. features  the teacher's features of the whole `config.data.train_split`, L2-normalised
             (`config.clustering.normalize`): DIR/features/<name>.npy.
3. clusters  k-means (`jssl.cluster`, seeded) at k = `config.transfer.num_clusters` (the
             main k) and, for the paper's teacher (`compare.paper_teacher`), at every k of
             `compare.num_clusters` (the k sweep): DIR/clusters/<name>-k<k>/ with
             labels.npy (the pseudo-labels), centers.npy.
4. student   the student (`config.model`, method "transfer") trained from scratch on the
             pseudo-labels in DIR/students/<name>-k<k>-s<seed> for every seed of
             `compare.seeds`, then evaluated (k-NN, linear probe on every real label).

Stages 2 and 3 write their arrays first and a JSON record last (atomically): the record
names the inputs that produced them, so a changed input is refused (one line), and an
array without its record is recomputed. The controls, per seed:

* the direct baselines (docs/studies.md rule 2), for each teacher of
  `config.baselines.pretext`: its pretext on the student's architecture, once for the
  student's steps (DIR/pretext/<name>-s<seed>, "student on <name> pretext") and once for
  the teacher's + the student's steps (DIR/pretext/<name>-total-s<seed>, "... equal total
  steps"), each its own row; every arm's budget (updates, images) is in `budgets`;
* the random-init student (the first teacher's student run of each seed evaluates it as
  the train loop does, and DIR/random_init/s<seed>.msgpack holds it for the probes).

Tuning (rule 3), on seed `compare.tune_seed` (outside the test seeds): the learning rate of
every arm of `tuning_plan` (each teacher's student at the main k, both direct-baseline arms)
over `compare.lrs`, the same grid for all; the sweep's other k take the paper teacher's
choice. A grid of one value runs nothing.

The metric (fixed before any run): the few-label linear probe of
jssl/studies/layer_probes.py on every layer of `compare.probe_layers`, trained on a
class-balanced `compare.probe_fraction` of `eval.train_split` drawn with the run's seed,
weight decay and layer chosen on a validation subset no larger than the labelled set
(rules 4 and 5); its test accuracy at the chosen layer is what the tuning (on the
validation accuracy) and the verdicts (paired by seed, t-based 95% intervals) use. The
claims, each a `Verdict:` line: the paper teacher's student beats its pretext trained
directly at equal total steps, and at equal student steps; beats the random-init student;
beats each other teacher's student (the paper's HOG is its weakest teacher). DIR/probes/
caches the probes.

Writes DIR/results.json ("seeds", "provenance" (recorded before training), "budgets",
"tuning", "rows" with per-seed values and per-layer probes, "difference", "verdict"),
DIR/results.md and DIR/clusters.png (the images nearest to the centres of the largest
clusters of each teacher).

Cost of `compare` (5 seeds, k sweep 10/50/200 for Jigsaw++, lr grids of 3 on 4 arms: one
teacher, 26 student runs, 16 direct-baseline runs, 47 probe sets): per-run times measured on the
2-core machine while it was shared (load 3-5): the ResNet-18 w16 Jigsaw++ teacher 4.4 s
per step (200 steps: about 16 min with its evaluation); a student (alexnet_cifar w16, 150
steps) 83 s with its evaluation; a direct baseline 81 s at 150 steps, about 170 s at 350;
a probe set 25 s for the first (compilations), about 3-8 s after; so about 95 min there
(26 x 83 + 8 x 81 + 8 x 170 + 16 min + 47 probe sets). Alone on the 2 cores (fb3d5f9):
the teacher 155 s, a student 23-25 s of training, a direct baseline 38 s at 150 steps and
78 s at 350, the whole study 2,164 s (36 min).
`compare_smoke`: 170 s on the same shared machine.

The student's config holds no teacher field: it sees the teacher only through the
pseudo-label file (`config.transfer.pseudo_labels`).
"""

from __future__ import annotations

import copy
import json
import os
import re
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jssl import checkpoint, cluster, evaluate, hog, io, models, parallel, teachers, train
from jssl.config import validate
from jssl.data import sources
from jssl.data.subsets import source_labels
from jssl.errors import ConfigError
from jssl.methods import transfer
from jssl.studies import layer_probes
from jssl.studies.common import (
    check_seeds,
    choose,
    paired,
    provenance,
    run_all,
    stats,
)
from jssl.studies.common import (
    verdict as verdict_line,
)
from jssl.studies.transfer_report import (
    METRIC,
    _row,
    nmi,
    plot_clusters,
    purity,
    verdict,
    write_markdown,
)

__all__ = [
    "run",
    "student_config",
    "pretext_config",
    "direct_config",
    "teacher_run_config",
    "tuning_plan",
    "budgets",
    "sweep_ks",
    "nmi",
    "purity",
]

# The direct baselines: the teacher's pretext on the student's architecture for the
# student's steps, and for the teacher's + the student's steps (docs/studies.md rule 2).
DIRECT_ARMS = ("student_steps", "total_steps")
# What the tuning selects on and the verdicts compare: the few-label linear probe at the
# layer chosen on validation (jssl/studies/layer_probes.py).
SELECT = "probe_best_val_accuracy"

_STUDY_FIELDS = ("study", "teachers", "clustering", "baselines", "report", "compare")
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


# --- Configs of the runs ----------------------------------------------------------------


def student_config(
    config: ml_collections.ConfigDict, pseudo_labels: str | None = None, num_clusters: int = 0
):
    """The student's run config: the study config without its study fields, with
    `transfer.pseudo_labels` set (and `transfer.num_clusters`, when given)."""
    c = ml_collections.ConfigDict(
        {k: copy.deepcopy(v) for k, v in config.items() if k not in _STUDY_FIELDS}
    )
    c.transfer.pseudo_labels = pseudo_labels
    if num_clusters:
        c.transfer.num_clusters = int(num_clusters)
    return c


def teacher_run_config(config, spec) -> ml_collections.ConfigDict:
    """A kind-"config" teacher's run config, on the study's data and run controls."""
    c = copy.deepcopy(spec.run)
    c.data.name, c.data.data_dir = config.data.name, config.data.data_dir
    c.progress, c.eval = config.progress, copy.deepcopy(config.eval)
    if "plots" in config and "plots" in c:
        c.plots = config.plots
    c.eval.random_init_baseline = False
    return c


def pretext_config(config, spec) -> ml_collections.ConfigDict:
    """The teacher's pretext run on the student's architecture (the direct baseline)."""
    c = teacher_run_config(config, spec)
    for field in ("backbone", "num_filters", "stem", "conv_impl"):
        c.model[field] = config.model[field]
    return c


def direct_config(config, name: str, arm: str, *, seed: int, lr: float):
    """The direct baseline of teacher `name` in `arm` (DIRECT_ARMS): its pretext on the
    student's architecture for the student's steps ("student_steps") or for the teacher's
    plus the student's steps ("total_steps"), at `seed` and learning rate `lr`."""
    if arm not in DIRECT_ARMS:
        raise ConfigError(f"direct baseline arm {arm!r}: choose one of {', '.join(DIRECT_ARMS)}")
    spec = config.teachers[name]
    c = pretext_config(config, spec)
    steps = int(config.total_steps)
    if arm == "total_steps":
        steps += int(spec.run.total_steps)
    c.total_steps = steps
    c.optimizer.warmup_steps = min(int(c.optimizer.warmup_steps), steps // 10)
    c.checkpoint_every = min(int(c.checkpoint_every), steps)
    c.seed = int(seed)
    c.optimizer.lr = float(lr)
    return c


def sweep_ks(config, name: str) -> list[int]:
    """The k of the students of teacher `name`: `transfer.num_clusters` first, then (for the
    paper's teacher) the other values of `compare.num_clusters`."""
    k = int(config.transfer.num_clusters)
    if name != _paper_teacher(config):
        return [k]
    return [k] + [int(x) for x in dict.fromkeys(config.compare.num_clusters) if int(x) != k]


def _paper_teacher(config) -> str:
    return config.compare.paper_teacher or next(iter(config.teachers))


def tuning_plan(config) -> list[dict]:
    """The arms tuned on validation, each over `compare.lrs` (grids of the same size):
    the student of every teacher (at `transfer.num_clusters`; the sweep's other k take the
    paper teacher's choice) and both arms of every direct baseline. A grid of one value
    has nothing to choose: the arm then lists no runs."""
    lrs = [float(v) for v in config.compare.lrs]
    arms = [
        {"arm": f"student <- {name}", "kind": "student", "teacher": name}
        for name in config.teachers
    ]
    arms += [
        {"arm": f"direct {name} {arm}", "kind": arm, "teacher": name}
        for name in config.baselines.pretext
        for arm in DIRECT_ARMS
    ]
    for a in arms:
        a["grid"] = lrs
        a["tuned"] = len(lrs) > 1
    return arms


def budgets(config) -> dict:
    """Each arm's budget (docs/studies.md rule 2): optimizer updates and training images
    (steps x batch size); a student's with and without its teacher's (a HOG teacher trains
    nothing; the feature pass over the training split for k-means is not counted)."""
    s, b = int(config.total_steps), int(config.batch_size)
    out = {}
    for name, spec in config.teachers.items():
        t = tb = 0
        if spec.kind == "config":
            t, tb = int(spec.run.total_steps), int(spec.run.batch_size)
        out[f"student <- {name}"] = {
            "updates": s,
            "images": s * b,
            "teacher_updates": t,
            "teacher_images": t * tb,
            "total_updates": s + t,
            "total_images": s * b + t * tb,
        }
    for name in config.baselines.pretext:
        for arm in DIRECT_ARMS:
            c = direct_config(config, name, arm, seed=0, lr=float(config.optimizer.lr))
            n, nb = int(c.total_steps), int(c.batch_size)
            out[_direct_row(name, arm)] = {
                "updates": n,
                "images": n * nb,
                "teacher_updates": 0,
                "teacher_images": 0,
                "total_updates": n,
                "total_images": n * nb,
            }
    out["student random init"] = {k: 0 for k in next(iter(out.values()))}
    return out


def _direct_row(name: str, arm: str) -> str:
    if arm == "student_steps":
        return f"student on {name} pretext"  # the name of the first studies' row
    return f"student on {name} pretext, equal total steps"


# --- Checks before any work -------------------------------------------------------------


def _validate(config: ml_collections.ConfigDict, num_train: int, num_devices: int) -> None:
    for group in _STUDY_FIELDS[1:]:
        if group not in config:
            raise ConfigError(
                f"config.{group}: missing; the transfer study needs it (configs/transfer.py)"
            )
    if not len(config.teachers):
        raise ConfigError("config.teachers: empty; name at least one teacher")
    mean, std = tuple(config.augment.view1.mean), tuple(config.augment.view1.std)
    for name, spec in config.teachers.items():
        where = f"config.teachers.{name}"
        if not _NAME.match(name):
            raise ConfigError(
                f"{where}: the name is a directory name; use letters, digits, '_', '-' and '.'"
            )
        if spec.kind not in teachers.TEACHER_KINDS:
            raise ConfigError(
                f"{where}.kind: {spec.kind!r}; choose one of {', '.join(teachers.TEACHER_KINDS)}"
            )
        if spec.kind == "config":
            if not isinstance(spec.run, ml_collections.ConfigDict):
                raise ConfigError(
                    f"{where}.run: a teacher of kind 'config' needs the "
                    "teacher's config (e.g. configs/jigsaw_pp.py's)"
                )
            run = teacher_run_config(config, spec)
            validate(run, num_devices, known=train.known_names(run))
            for view in ("view1", "view2"):
                v = run.augment[view]
                if (tuple(v.mean), tuple(v.std)) != (mean, std):
                    raise ConfigError(
                        f"{where}.run.augment.{view}: normalised with mean {tuple(v.mean)} "
                        f"and std {tuple(v.std)}, the study's data ({config.data.name}) with "
                        f"{mean} and {std}; apply the same data preset to the teacher's run "
                        "(e.g. jssl.config.mnistm_preset)"
                    )
        elif spec.kind == "checkpoint" and not (spec.path and os.path.exists(spec.path)):
            raise ConfigError(f"{where}.path: {spec.path!r} is not a jssl workdir or encoder file")
        elif spec.kind == "hog":
            try:
                hog.hog_num_features(
                    (64, 64),
                    orientations=spec.hog.orientations,
                    pixels_per_cell=tuple(spec.hog.pixels_per_cell),
                    cells_per_block=tuple(spec.hog.cells_per_block),
                )
                if spec.hog.block_norm not in hog.BLOCK_NORMS:
                    raise ValueError(f"block_norm must be one of {', '.join(hog.BLOCK_NORMS)}")
            except ValueError as e:
                raise ConfigError(f"{where}.hog: {e}") from None
    cl = config.clustering
    checks = (
        (isinstance(cl.max_iter, int) and cl.max_iter >= 1, "max_iter", "an integer >= 1"),
        (cl.tol >= 0, "tol", ">= 0"),
        (isinstance(cl.normalize, bool), "normalize", "True or False"),
        (isinstance(cl.seed, int), "seed", "an integer"),
        (
            isinstance(cl.init_sample_size, int) and cl.init_sample_size >= 0,
            "init_sample_size",
            "an integer >= 0 (0: all points)",
        ),
        (
            isinstance(cl.feature_batch_size, int) and cl.feature_batch_size >= 1,
            "feature_batch_size",
            "a positive integer",
        ),
    )
    for ok, field, need in checks:
        if not ok:
            raise ConfigError(f"config.clustering.{field}: must be {need}, got {cl[field]!r}")
    k = config.transfer.num_clusters
    if isinstance(k, int) and k > num_train:
        raise ConfigError(
            f"config.transfer.num_clusters: {k} clusters for {num_train} training images; lower it"
        )
    if cl.init_sample_size and cl.init_sample_size < k:
        raise ConfigError(
            f"config.clustering.init_sample_size: {cl.init_sample_size} is fewer "
            f"than the {k} clusters"
        )
    for name in config.baselines.pretext:
        if name not in config.teachers or config.teachers[name].kind != "config":
            raise ConfigError(
                f"config.baselines.pretext: {name!r} is not a teacher of kind 'config'"
            )
        for arm in DIRECT_ARMS:
            validate(
                direct_config(config, name, arm, seed=0, lr=float(config.optimizer.lr)),
                num_devices,
                known=train.known_names(config.teachers[name].run),
            )
    for field in ("clusters_shown", "images_per_cluster"):
        if not (isinstance(config.report[field], int) and config.report[field] >= 1):
            raise ConfigError(f"config.report.{field}: must be a positive integer")
    _validate_compare(config, num_train)
    seeds = config.compare.get("seeds")
    if (
        not isinstance(seeds, (tuple, list))
        or not seeds
        or not all(isinstance(x, int) and x >= 0 for x in seeds)
        or len(set(seeds)) != len(seeds)
    ):
        raise ConfigError(
            f"config.compare.seeds: must be distinct non-negative integers, "
            f"e.g. (0, 1, 2), got {seeds!r}"
        )
    student = student_config(config)
    validate(student, num_devices, known=train.known_names(student))
    transfer.validate(student)


def _validate_compare(config, num_train: int) -> None:
    cmp = config.compare
    for field in (
        "tune_seed",
        "lrs",
        "paper_teacher",
        "num_clusters",
        "probe_fraction",
        "probe_layers",
    ):
        if field not in cmp:
            raise ConfigError(f"config.compare.{field}: missing (configs/transfer.py sets it)")
    if cmp.tune_seed in tuple(cmp.seeds):
        raise ConfigError(
            f"config.compare.tune_seed: {cmp.tune_seed} is also a test seed; "
            "tune on a seed outside config.compare.seeds"
        )
    lrs = tuple(cmp.lrs)
    if not lrs or not all(isinstance(v, (int, float)) and v > 0 for v in lrs):
        raise ConfigError(f"config.compare.lrs: must be positive numbers, got {lrs!r}")
    if cmp.paper_teacher and cmp.paper_teacher not in config.teachers:
        raise ConfigError(
            f"config.compare.paper_teacher: {cmp.paper_teacher!r} is not one of "
            f"config.teachers ({', '.join(config.teachers)}); '' = the first"
        )
    for k in tuple(cmp.num_clusters):
        if not (isinstance(k, int) and not isinstance(k, bool) and 2 <= k <= num_train):
            raise ConfigError(
                f"config.compare.num_clusters: {k!r} must be an integer in [2, {num_train}]"
            )
    if not 0 < cmp.probe_fraction <= 1:
        raise ConfigError(f"config.compare.probe_fraction: {cmp.probe_fraction} is not in (0, 1]")
    layers = tuple(cmp.probe_layers)
    if not layers or not all(isinstance(x, str) for x in layers) or len(set(layers)) != len(layers):
        raise ConfigError(
            "config.compare.probe_layers: distinct module paths of the student's backbone "
            f"('' = its pooled output), got {layers!r}"
        )
    known = _backbone_modules(config)
    for layer in layers:
        path = tuple(p for p in layer.split("/") if p)
        if path[:1] == ("backbone",):
            path = path[1:]
        if path and "/".join(path) not in known:
            raise ConfigError(
                f"config.compare.probe_layers: {layer!r} is no module of the student's "
                f"{config.model.backbone}; choose among {', '.join(sorted(known))} or ''"
            )


def _backbone_modules(config) -> set[str]:
    """The module paths of the student's backbone (shapes only: nothing is computed)."""
    net = models.backbone_from_config(config.model, jnp.float32)
    size = int(config.data.image_size)
    x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)

    def captured(x):
        v = models.init_variables(net, jax.random.PRNGKey(0), x, train=False)
        _, st = net.apply(v, x, train=False, mutable=["intermediates"], capture_intermediates=True)
        return st["intermediates"]

    paths = set()

    def walk(tree, prefix=()):
        for key, value in tree.items():
            if key == "__call__":
                paths.add("/".join(prefix))
            elif isinstance(value, dict):
                walk(value, prefix + (key,))

    walk(jax.eval_shape(captured, x))
    paths.discard("")
    return paths


# --- Stage records ----------------------------------------------------------------------


def _is_main() -> bool:
    """Process 0 writes the study's files (every process computes the same arrays)."""
    return jax.process_index() == 0


def _record(path: str, inputs: dict) -> dict | None:
    """The stage record at `path` if it exists and was made from `inputs`; None if absent;
    ConfigError if it was made from other inputs."""
    if not os.path.exists(path):
        return None
    record = io.read_json(path)
    if record.get("inputs") != json.loads(json.dumps(inputs)):
        raise ConfigError(
            f"{path} was made from other inputs than this config's (a changed "
            "teacher, data or clustering field); use a new --workdir"
        )
    return record


def _finished_run(config, workdir: str) -> dict:
    """Train `config` in `workdir` unless it finished there (`train.finished_results`)."""
    checkpoint.check_workdir(workdir, config)  # another experiment there: ConfigError
    return train.finished_results(workdir, config) or train.train_and_evaluate(config, workdir)


# --- Stages ------------------------------------------------------------------------------


def _teacher(config, name: str, spec, workdir: str, mesh) -> dict:
    """Stage 1: the teacher's description: its own evaluation, the identity of its
    features, and "load", which builds the `Teacher` (only called when features are due)."""
    if spec.kind == "hog":
        kw = {
            k: (tuple(v) if isinstance(v, (list, tuple)) else v)
            for k, v in spec.hog.to_dict().items()
        }

        def load():
            return teachers.hog_teacher(name=name, **kw)

        path = os.path.join(workdir, "teachers", name, "eval.json")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        inputs = {
            "hog": kw,
            "normalize": config.clustering.normalize,
            "data": config.data.name,
            "eval": config.eval.to_dict(),
        }
        record = None
        if os.path.exists(path):  # only an evaluation: redone when its inputs changed
            record = io.read_json(path)
            if record.get("inputs") != json.loads(json.dumps(inputs)):
                record = None
        if record is None:  # HOG trains nothing: evaluate its features as a run would be
            embed = teachers.sharded_features(load(), mesh, normalize=config.clustering.normalize)
            record = {
                "inputs": inputs,
                "eval": evaluate.evaluate_encoder(None, embed, 0.0, config, mesh),
            }
            if _is_main():
                io.write_json(path, record)
        return {
            "kind": "hog",
            "architecture": "HOG",
            "pretext": "none",
            "eval": record["eval"],
            "identity": {"kind": "hog", "hog": kw},
            "load": load,
        }
    if spec.kind == "config":
        run_config = teacher_run_config(config, spec)
        source = os.path.join(workdir, "teachers", name)
        results = _finished_run(run_config, source)
        info = {
            "kind": "config",
            "workdir": source,
            "eval": results.get("eval", {}),
            "final_step": results.get("final_step"),
            "train_time_s": results.get("train_time_s"),
            "architecture": f"{run_config.model.backbone} (w{run_config.model.num_filters})",
            "pretext": run_config.loss.name,
        }
    else:
        source = spec.path
        info = {
            "kind": "checkpoint",
            "path": spec.path,
            "eval": {},
            "architecture": "?",
            "pretext": "?",
            "final_step": _checkpoint_version(source),
        }
        if os.path.isdir(source):
            run_config = checkpoint.saved_config(source)
            info["architecture"] = f"{run_config.model.backbone} (w{run_config.model.num_filters})"
            info["pretext"] = run_config.get("loss", {}).get("name", "?")

    def load():
        return teachers.checkpoint_teacher(source, layer=spec.layer, name=name)

    info["identity"] = {
        "kind": spec.kind,
        "source": os.path.abspath(source),
        "layer": spec.layer,
        "step": info.get("final_step"),
    }
    info["load"] = load
    return info


def _checkpoint_version(path: str):
    """What identifies the weights at `path`: a workdir's latest checkpoint step, or an
    exported file's size and modification time."""
    if os.path.isdir(path):
        ckpt_dir = os.path.join(path, checkpoint.CHECKPOINT_DIR)
        steps = (
            [int(n) for n in os.listdir(ckpt_dir) if n.isdigit()] if os.path.isdir(ckpt_dir) else []
        )
        return max(steps, default=None)
    stat = os.stat(path)
    return f"{stat.st_size}:{stat.st_mtime_ns}"


def _features(config, name: str, info: dict, source, workdir: str, mesh):
    """Stage 2: (N, F) features of the training split (DIR/features/<name>.npy) and the
    inputs that identify them. The teacher is loaded only when they are not saved yet."""
    os.makedirs(os.path.join(workdir, "features"), exist_ok=True)
    path = os.path.join(workdir, "features", f"{name}.npy")
    inputs = {
        "teacher": info["identity"],
        "data": config.data.name,
        "split": config.data.train_split,
        "normalize": config.clustering.normalize,
    }
    record = _record(path[:-4] + ".json", inputs)
    if record is not None and os.path.exists(path):
        return np.load(path), inputs
    feats = teachers.extract_features(
        info["load"](),
        source,
        mesh=mesh,
        batch_size=config.clustering.feature_batch_size,
        normalize=config.clustering.normalize,
    )
    if _is_main():
        io.save_npy(path, feats)
        io.write_json(path[:-4] + ".json", {"inputs": inputs, "shape": feats.shape})
    return feats, inputs


def _clusters(
    config,
    name: str,
    feats: np.ndarray,
    feature_inputs: dict,
    true_labels,
    workdir: str,
    mesh,
    k: int = 0,
) -> dict:
    """Stage 3: k-means of the features (k: `transfer.num_clusters` unless given); the
    pseudo-labels file and cluster statistics."""
    cl, k = config.clustering, int(k or config.transfer.num_clusters)
    out_dir = os.path.join(workdir, "clusters", f"{name}-k{k}")
    os.makedirs(out_dir, exist_ok=True)
    labels_path = os.path.join(out_dir, "labels.npy")
    inputs = {
        "features": feature_inputs,
        "k": k,
        "max_iter": cl.max_iter,
        "tol": cl.tol,
        "seed": cl.seed,
        "init_sample_size": cl.init_sample_size,
    }
    record = _record(os.path.join(out_dir, "clusters.json"), inputs)
    if record is None or not os.path.exists(labels_path):
        result = cluster.kmeans(
            feats,
            k,
            seed=cl.seed,
            max_iter=cl.max_iter,
            tol=cl.tol,
            mesh=mesh,
            init_sample_size=cl.init_sample_size or None,
        )
        if _is_main():
            io.save_npy(os.path.join(out_dir, "centers.npy"), result.centers)
            io.save_npy(labels_path, result.labels.astype(np.int32))
        sizes = np.bincount(result.labels, minlength=k)
        record = {
            "inputs": inputs,
            "inertia": result.inertia,
            "n_iter": result.n_iter,
            "size_min": int(sizes.min()),
            "size_max": int(sizes.max()),
            "nmi": nmi(true_labels, result.labels),
            "purity": purity(true_labels, result.labels),
        }
        if _is_main():
            io.write_json(os.path.join(out_dir, "clusters.json"), record)
        parallel.sync_processes(
            "transfer-clusters"
        )  # the students read labels.npy on every process
    record["labels_path"] = labels_path
    record["dir"] = out_dir
    return record


# --- The study ------------------------------------------------------------------------------


def _student_run(config, workdir, name, labels_path, k, seed, lr, *, tune=False) -> dict:
    c = student_config(config, os.path.abspath(labels_path), num_clusters=k)
    c.seed, c.optimizer.lr = int(seed), float(lr)
    c.eval.random_init_baseline = False
    sub = f"{name}-k{k}-lr{lr:g}-s{seed}" if tune else f"{name}-k{k}-s{seed}"
    return {
        "arm": f"student <- {name}",
        "teacher": name,
        "k": int(k),
        "seed": int(seed),
        "lr": float(lr),
        "config": c,
        "workdir": os.path.join(workdir, "tune" if tune else "", "students", sub),
    }


def _direct_run(config, workdir, name, arm, seed, lr, *, tune=False) -> dict:
    c = direct_config(config, name, arm, seed=seed, lr=lr)
    tag = name if arm == "student_steps" else f"{name}-total"
    sub = f"{tag}-lr{lr:g}-s{seed}" if tune else f"{tag}-s{seed}"
    return {
        "arm": _direct_row(name, arm),
        "teacher": name,
        "k": None,
        "seed": int(seed),
        "lr": float(lr),
        "config": c,
        "workdir": os.path.join(workdir, "tune" if tune else "", "pretext", sub),
    }


def _label(r) -> str:
    k = "" if r["k"] is None else f" k={r['k']}"
    return f"{r['arm']}{k} lr={r['lr']:g} seed {r['seed']}"


def _probes(config, workdir: str, path: str, seed: int, vfrac: float, mesh) -> dict:
    """The few-label probes of every `compare.probe_layers` layer of the encoder at `path`
    (cached in DIR/probes/)."""
    rel = os.path.relpath(os.path.abspath(path), os.path.abspath(workdir))
    return layer_probes.layer_probes(
        config,
        path,
        seed=seed,
        layers=tuple(config.compare.probe_layers),
        fraction=float(config.compare.probe_fraction),
        vfrac=vfrac,
        mesh=mesh,
        out=os.path.join(workdir, "probes", rel.replace(os.sep, "__") + ".json"),
    )


def _tune(config, workdir, labels: dict, vfrac: float, mesh) -> dict:
    """Every arm of `tuning_plan` on seed `compare.tune_seed`: {arm: {"grid", "scores"
    (validation, per value), "chosen", "score"}}; a grid of one value runs nothing."""
    seed, k = int(config.compare.tune_seed), int(config.transfer.num_clusters)
    out = {}
    for a in tuning_plan(config):
        grid = a["grid"]
        entry = {"grid": grid, "scores": {}, "chosen": grid[0], "score": SELECT, "seed": None}
        if a["tuned"]:
            if a["kind"] == "student":
                runs = [
                    _student_run(
                        config,
                        workdir,
                        a["teacher"],
                        labels[(a["teacher"], k)],
                        k,
                        seed,
                        lr,
                        tune=True,
                    )
                    for lr in grid
                ]
            else:
                runs = [
                    _direct_run(config, workdir, a["teacher"], a["kind"], seed, lr, tune=True)
                    for lr in grid
                ]
            run_all(runs, _label)
            entry["scores"] = {
                f"{r['lr']:g}": _probes(config, workdir, r["workdir"], seed, vfrac, mesh)[
                    "best_val_accuracy"
                ]
                for r in runs
            }
            entry["chosen"] = choose({f"{v:g}": v for v in grid}, entry["scores"])[1]
            entry["seed"] = seed
        out[a["arm"]] = entry
    return out


def _time_fields(results: list[dict]) -> dict:
    """A row's training wall time on this machine (rule 2): per seed and the mean."""
    times = [r.get("train_time_s") for r in results]
    known = [t for t in times if t is not None]
    return {
        "train_time_s": sum(known) / len(known) if known else None,
        "train_time_s_values": times,
    }


def _probe_fields(probes: list[dict]) -> dict:
    """A row's few-label probe columns from its per-seed probe results."""
    layers = list(probes[0]["layers"])
    best = [p["best_test_accuracy"] for p in probes]
    st = stats(best)
    return {
        "probe_layers": {
            name: stats([p["layers"][name]["test_accuracy"] for p in probes]) for name in layers
        },
        METRIC: st["mean"],
        METRIC + "_std": st["std"] if len(best) > 1 else None,
        METRIC + "_values": best,
        "probe_best_layer_values": [p["best_layer"] for p in probes],
        SELECT + "_values": [p["best_val_accuracy"] for p in probes],
        "probe_num_labelled": [p["num_labelled"] for p in probes],
        "probe_num_val": [p["num_val"] for p in probes],
    }


def _claims(rows: list, config) -> tuple[dict, list]:
    """The paired differences and Verdict lines of the claims about the paper's teacher."""
    by_run = {r["run"]: r for r in rows}
    p = _paper_teacher(config)
    student = by_run.get(f"student <- {p}")
    pairs = []
    if p in config.baselines.pretext:
        b = budgets(config)
        total = b[_direct_row(p, "total_steps")]["updates"]
        pairs.append(
            (
                _direct_row(p, "total_steps"),
                f"student <- {p} beats the student trained on the {p} pretext directly at "
                f"equal total steps ({total} updates)",
            )
        )
        pairs.append(
            (
                _direct_row(p, "student_steps"),
                f"student <- {p} beats the student trained on the {p} pretext directly at "
                f"equal student steps ({int(config.total_steps)} updates)",
            )
        )
    pairs.append(("student random init", f"student <- {p} beats the random-init student"))
    for name, spec in config.teachers.items():
        if name != p:
            note = " (the paper's weakest teacher)" if spec.kind == "hog" else ""
            pairs.append((f"student <- {name}", f"student <- {p} beats student <- {name}{note}"))
    diffs, lines = {}, []
    for other, claim in pairs:
        if student is None or other not in by_run:
            continue
        d = paired(student[METRIC + "_values"], by_run[other][METRIC + "_values"])
        diffs[f"student <- {p} - {other}"] = d
        lines.append(verdict_line(claim + " (1%-label probe, layer chosen on validation)", d))
    return diffs, lines


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Run (or resume) every stage for every teacher, the tuning, the students, the
    baselines and their probes, and the report."""
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise ConfigError(f"--workdir {workdir} is a file, not a directory; choose a new path")
    source = sources.config_source(config, config.data.train_split)
    _validate(config, len(source), jax.device_count())
    seeds = list(check_seeds(config.compare.seeds))
    os.makedirs(workdir, exist_ok=True)
    start = time.perf_counter()
    prov = provenance()  # the code that runs: recorded before anything trains
    mesh = parallel.make_mesh()
    true_labels = source_labels(source)
    k_main = int(config.transfer.num_clusters)
    student_arch = f"{config.model.backbone} (w{config.model.num_filters})"
    fraction = float(config.compare.probe_fraction)
    vfrac = layer_probes.val_fraction(config, fraction)

    # 1-3. Teachers, their features, their clusters at every k.
    rows, teachers_out, panels, labels, cluster_stats = [], {}, [], {}, {}
    keys = ("inertia", "n_iter", "size_min", "size_max", "nmi", "purity")
    for name, spec in config.teachers.items():
        info = _teacher(config, name, spec, workdir, mesh)
        feats, feature_inputs = _features(config, name, info, source, workdir, mesh)
        for k in sweep_ks(config, name):
            cl = _clusters(config, name, feats, feature_inputs, true_labels, workdir, mesh, k=k)
            labels[(name, k)] = cl["labels_path"]
            cluster_stats[(name, k)] = {key: cl[key] for key in keys}
            if k == k_main:
                centers = np.load(os.path.join(cl["dir"], "centers.npy"))
                panels.append((name, feats, np.load(cl["labels_path"]), centers))
        rows.append(
            _row(
                f"teacher {name}",
                "teacher",
                info["architecture"],
                "HOG (no training)"
                if spec.kind == "hog"
                else f"{info.get('pretext', '?')} pretext",
                info["eval"],
                cluster_stats[(name, k_main)],
            )
        )
        teachers_out[name] = {
            **{key: v for key, v in info.items() if key != "load"},
            "clusters": cluster_stats[(name, k_main)],
            "clusters_by_k": {str(k): cluster_stats[(name, k)] for k in sweep_ks(config, name)},
        }

    # 4. The learning rates, chosen on validation (tuning seed).
    tuning = _tune(config, workdir, labels, vfrac, mesh)

    # 5. Every arm for every seed at the chosen values; random init; the probes.
    first = next(iter(config.teachers))
    runs, results, probes, random_probes, random_eval = [], {}, {}, {}, {}
    for seed in seeds:
        these = []
        for name in config.teachers:
            lr = tuning[f"student <- {name}"]["chosen"]
            for k in sweep_ks(config, name):
                r = _student_run(config, workdir, name, labels[(name, k)], k, seed, lr)
                if name == first and k == k_main:  # one random-init evaluation per seed
                    r["config"].eval.random_init_baseline = True
                these.append(r)
        for name in config.baselines.pretext:
            for arm in DIRECT_ARMS:
                lr = tuning[f"direct {name} {arm}"]["chosen"]
                these.append(_direct_run(config, workdir, name, arm, seed, lr))
        results.update(run_all(these, _label))
        runs += these
        for r in these:
            probes[r["workdir"]] = _probes(config, workdir, r["workdir"], seed, vfrac, mesh)
        rand = these[0]
        random_eval[seed] = results[rand["workdir"]].get("random_init_eval")
        path = layer_probes.random_init_encoder(
            rand["config"], os.path.join(workdir, "random_init", f"s{seed}.msgpack"), mesh
        )
        random_probes[seed] = _probes(config, workdir, path, seed, vfrac, mesh)

    # The table.
    b = budgets(config)

    def arm_rows(arm, k=None):
        return [r for r in runs if r["arm"] == arm and r["k"] == k]

    for name in config.teachers:
        for k in sweep_ks(config, name):
            these = arm_rows(f"student <- {name}", k)
            label = f"student <- {name}" + ("" if k == k_main else f" (k={k})")
            extra = {
                "k": k,
                "lr": tuning[f"student <- {name}"]["chosen"],
                "budget": b[f"student <- {name}"],
                "teacher_train_time_s": teachers_out[name].get("train_time_s"),
                **_time_fields([results[r["workdir"]] for r in these]),
                **cluster_stats[(name, k)],
                **_probe_fields([probes[r["workdir"]] for r in these]),
            }
            evals = [results[r["workdir"]].get("eval") for r in these]
            rows.append(
                _row(label, "student", student_arch, f"{name}'s {k} clusters", evals, extra)
            )
    for name in config.baselines.pretext:
        for arm in DIRECT_ARMS:
            these = arm_rows(_direct_row(name, arm))
            steps = int(these[0]["config"].total_steps)
            extra = {
                "lr": tuning[f"direct {name} {arm}"]["chosen"],
                "budget": b[_direct_row(name, arm)],
                **_time_fields([results[r["workdir"]] for r in these]),
                **_probe_fields([probes[r["workdir"]] for r in these]),
            }
            rows.append(
                _row(
                    _direct_row(name, arm),
                    "baseline",
                    student_arch,
                    f"{these[0]['config'].loss.name} pretext directly, {steps} steps",
                    [results[r["workdir"]].get("eval") for r in these],
                    extra,
                )
            )
    rows.append(
        _row(
            "student random init",
            "baseline",
            student_arch,
            "nothing (random)",
            [random_eval.get(seed) for seed in seeds],
            {
                "budget": b["student random init"],
                **_probe_fields([random_probes[s] for s in seeds]),
            },
        )
    )

    summary = {}
    for r in rows:
        for metric in ("knn_accuracy", "linear_accuracy", METRIC):
            if r.get(metric) is not None:
                summary[f"{r['run']}/{metric}"] = r[metric]
    diffs, verdicts = _claims(rows, config)
    results_out = {
        "study": "transfer",
        "summary": summary,
        "rows": rows,
        "teachers": teachers_out,
        "data": f"{config.data.name}:{config.data.train_split}",
        "num_clusters": k_main,
        "num_clusters_sweep": {name: sweep_ks(config, name) for name in config.teachers},
        "paper_teacher": _paper_teacher(config),
        "student_architecture": student_arch,
        "knn_k": config.eval.knn_k,
        "seeds": seeds,
        "metric": METRIC,
        "probe": {
            "fraction": fraction,
            "val_fraction": vfrac,
            "layers": [layer_probes.layer_name(x) for x in config.compare.probe_layers],
            "selection": "the layer with the best validation accuracy (first on ties)",
        },
        "tuning": {"seed": int(config.compare.tune_seed), "score": SELECT, "arms": tuning},
        "budgets": b,
        "difference": diffs,
        "verdict": verdicts,
        "full_label_comparison": verdict(rows),
        "provenance": prov,
        "workdir": workdir,
        "wall_s_this_invocation": time.perf_counter() - start,
    }
    if _is_main():
        io.write_json(os.path.join(workdir, train.RESULTS_FILE), results_out)
        write_markdown(os.path.join(workdir, "results.md"), results_out)
        try:
            plot_clusters(
                os.path.join(workdir, "clusters.png"),
                panels,
                source,
                clusters_shown=min(config.report.clusters_shown, k_main),
                images_per_cluster=config.report.images_per_cluster,
            )
        except ImportError:
            print(
                "jssl: warning: matplotlib is not installed: no clusters.png "
                "(pip install 'jssl[plots]')",
                file=sys.stderr,
            )
    return results_out
