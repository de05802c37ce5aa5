"""The knowledge-transfer study (configs/transfer.py): Noroozi et al., CVPR 2018.

For every teacher of `config.teachers`, four stages, each saved in DIR and reused when
its output is complete (an interrupted study resumes at the first missing stage):

1. teacher   kind "config": its run is trained in DIR/teachers/<name> (the one train loop;
             a finished run is reused, an interrupted one resumes); "checkpoint": an
             existing run or exported encoder; "hog": nothing to train.
2. features  the teacher's features of the whole `config.data.train_split`, L2-normalised
             (`config.clustering.normalize`): DIR/features/<name>.npy.
3. clusters  k-means (`jssl.cluster`, k = `config.transfer.num_clusters`, seeded):
             DIR/clusters/<name>-k<k>/ with labels.npy (the pseudo-labels), centers.npy.
4. student   the student (`config.model`, method "transfer") trained from scratch on the
             pseudo-labels in DIR/students/<name>-k<k>-s<seed> for every seed of
             `config.compare.seeds`, then evaluated (k-NN, linear probe on the real labels).

Stages 2 and 3 write their arrays first and a JSON record last (atomically): the record
names the inputs that produced them, so a changed input is refused (one line), and an
array without its record is recomputed. With `config.baselines.pretext`, the student's
architecture is also trained on those teachers' pretexts directly
(DIR/pretext/<name>-s<seed>); the first teacher's student run of each seed also evaluates
the student at its random initialisation. The seeds vary the student-side runs (their
initialisation, batches and augmentation); the teachers and the clusters are made once.
Writes DIR/results.json ("summary": means over the seeds; "rows": mean, sample std and
per-seed values), DIR/results.md and DIR/clusters.png (the images nearest to the centres
of the largest clusters of each teacher).

The student's config holds no teacher field: it sees the teacher only through the
pseudo-label file (`config.transfer.pseudo_labels`).
"""

from __future__ import annotations

import copy
import json
import os
import re
import sys

import jax
import ml_collections
import numpy as np

from jssl import checkpoint, cluster, evaluate, hog, io, parallel, plots, teachers, train
from jssl.config import validate
from jssl.data import sources
from jssl.data.subsets import source_labels
from jssl.errors import ConfigError
from jssl.methods import transfer
from jssl.studies.common import paired, stats

__all__ = ["run", "student_config", "pretext_config", "teacher_run_config", "nmi", "purity"]

_STUDY_FIELDS = ("study", "teachers", "clustering", "baselines", "report", "compare")
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


# --- Configs of the runs ----------------------------------------------------------------


def student_config(config: ml_collections.ConfigDict, pseudo_labels: str | None = None):
    """The student's run config: the study config without its study fields, with
    `transfer.pseudo_labels` set."""
    c = ml_collections.ConfigDict(
        {k: copy.deepcopy(v) for k, v in config.items() if k not in _STUDY_FIELDS}
    )
    c.transfer.pseudo_labels = pseudo_labels
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


# --- Checks before any work -------------------------------------------------------------


def _validate(config: ml_collections.ConfigDict, num_train: int, num_devices: int) -> None:
    for group in _STUDY_FIELDS[1:]:
        if group not in config:
            raise ConfigError(
                f"config.{group}: missing; the transfer study needs it (configs/transfer.py)"
            )
    if not len(config.teachers):
        raise ConfigError("config.teachers: empty; name at least one teacher")
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
        validate(
            pretext_config(config, config.teachers[name]),
            num_devices,
            known=train.known_names(config.teachers[name].run),
        )
    for field in ("clusters_shown", "images_per_cluster"):
        if not (isinstance(config.report[field], int) and config.report[field] >= 1):
            raise ConfigError(f"config.report.{field}: must be a positive integer")
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
    config, name: str, feats: np.ndarray, feature_inputs: dict, true_labels, workdir: str, mesh
) -> dict:
    """Stage 3: k-means of the features; the pseudo-labels file and cluster statistics."""
    cl, k = config.clustering, config.transfer.num_clusters
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


def nmi(a: np.ndarray, b: np.ndarray) -> float:
    """Normalised mutual information of two labellings (arithmetic-mean normalisation,
    scikit-learn's default); 1.0 when both are constant."""
    _, a = np.unique(a, return_inverse=True)
    _, b = np.unique(b, return_inverse=True)
    joint = np.zeros((a.max() + 1, b.max() + 1))
    np.add.at(joint, (a, b), 1.0)
    p = joint / joint.sum()
    pa, pb = p.sum(1), p.sum(0)
    nz = p > 0
    mi = float(np.sum(p[nz] * np.log(p[nz] / np.outer(pa, pb)[nz])))
    ha, hb = (float(-np.sum(q[q > 0] * np.log(q[q > 0]))) for q in (pa, pb))
    if ha == 0.0 and hb == 0.0:
        return 1.0
    return mi / max((ha + hb) / 2.0, 1e-300)


def purity(true: np.ndarray, clusters: np.ndarray) -> float:
    """Fraction of examples whose cluster's majority class is their class."""
    _, t = np.unique(true, return_inverse=True)
    _, c = np.unique(clusters, return_inverse=True)
    joint = np.zeros((c.max() + 1, t.max() + 1))
    np.add.at(joint, (c, t), 1.0)
    return float(joint.max(axis=1).sum() / len(true))


# --- Report -------------------------------------------------------------------------------


def _row(
    name: str, role: str, architecture: str, trained_on: str, evals, extra: dict | None = None
) -> dict:
    """One table row from the evaluations of its runs (one dict, or one per seed): for
    each metric the mean, the sample std (None for one run) and the per-run values."""
    evals = [e or {} for e in (evals if isinstance(evals, list) else [evals])]
    row = {"run": name, "role": role, "architecture": architecture, "trained_on": trained_on}
    for metric in ("knn_accuracy", "linear_accuracy"):
        values = [e[metric] for e in evals if e.get(metric) is not None]
        st = stats(values) if values else None
        row[metric] = st["mean"] if st else None
        row[metric + "_std"] = st["std"] if st and len(values) > 1 else None
        row[metric + "_values"] = values
    row.update(extra or {})
    return row


def _pct(v, std=None) -> str:
    if v is None:
        return "-"
    return f"{100 * v:.1f}" + ("" if std is None else f" ± {100 * std:.1f}")


def write_markdown(path: str, results: dict) -> None:
    intro = (
        f"Data: {results['data']}; k = {results['num_clusters']} clusters; student "
        f"{results['student_architecture']}. Accuracies (%) on the test split: k-NN "
        f"(k = {results['knn_k']}) and linear probe on frozen features (weight decay "
        "chosen on validation). NMI / purity: the clusters against the real labels."
    )
    seeds = results.get("seeds", [0])
    intro += (
        f" Student-side runs: {len(seeds)} seed{'s' if len(seeds) > 1 else ''} "
        f"({', '.join(map(str, seeds))})"
        + (
            ", mean ± sample std; the teachers and their clusters are made once."
            if len(seeds) > 1
            else "; the teachers and their clusters are made once."
        )
    )
    lines = [
        "# Knowledge transfer by clustering (Noroozi et al. 2018)",
        "",
        intro,
        "",
        "| run | role | architecture | trained on | k-NN | linear | NMI | purity |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        nmi_s = "-" if r.get("nmi") is None else f"{r['nmi']:.3f}"
        pur_s = "-" if r.get("purity") is None else f"{r['purity']:.3f}"
        lines.append(
            f"| {r['run']} | {r['role']} | {r['architecture']} | {r['trained_on']} | "
            f"{_pct(r['knn_accuracy'], r.get('knn_accuracy_std'))} | "
            f"{_pct(r['linear_accuracy'], r.get('linear_accuracy_std'))} | {nmi_s} | "
            f"{pur_s} |"
        )
    lines += ["", f"Verdict: {results['verdict']}"] if results.get("verdict") else []
    io.write_text(path, "\n".join(lines) + "\n")


def plot_clusters(
    path: str, panels: list, source, *, clusters_shown: int, images_per_cluster: int
) -> None:
    """For each (teacher name, features, labels, centres): the images nearest to the centres
    of its `clusters_shown` largest clusters, one row per cluster."""
    h, w, ch = source.image_shape
    fig = plots.figure(1.0 + 0.5 * images_per_cluster * len(panels), 0.6 + 0.5 * clusters_shown)
    for p, (name, feats, labels, centers) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), p + 1)
        sizes = np.bincount(labels, minlength=len(centers))
        shown = np.argsort(-sizes, kind="stable")[:clusters_shown]
        mosaic = np.full((len(shown) * (h + 1), images_per_cluster * (w + 1), ch), 255, np.uint8)
        for r, c in enumerate(shown):
            members = np.flatnonzero(labels == c)
            dist = np.sum((feats[members] - centers[c]) ** 2, axis=1)
            nearest = members[np.argsort(dist, kind="stable")[:images_per_cluster]]
            images, _ = source.read(nearest)  # nearest first
            for j, img in enumerate(images):
                mosaic[r * (h + 1) : r * (h + 1) + h, j * (w + 1) : j * (w + 1) + w] = img
        ax.imshow(mosaic[..., 0] if ch == 1 else mosaic, cmap="gray" if ch == 1 else None)
        ax.set_title(name, fontsize=9)
        ax.set_yticks([(r + 0.5) * (h + 1) for r in range(len(shown))])
        ax.set_yticklabels([f"{c} ({sizes[c]})" for c in shown], fontsize=6)
        ax.set_xticks([])
    fig.suptitle("images nearest to the centres of the largest clusters (id (size))", fontsize=9)
    fig.savefig(path, dpi=110)


def _difference(a: dict, b: dict) -> str:
    """`a` - `b` in linear-probe points, paired by seed: one number for one seed; mean ± std
    and how many seeds `a` is higher in for several."""
    va, vb = a["linear_accuracy_values"], b["linear_accuracy_values"]
    if len(va) != len(vb) or not va:
        return f"{100 * (a['linear_accuracy'] - b['linear_accuracy']):+.1f}"
    d = paired([100 * x for x in va], [100 * y for y in vb])
    if len(va) == 1:
        return f"{d['mean']:+.1f}"
    return f"{d['mean']:+.1f} ± {d['std']:.1f}, higher in {d['higher']} of {len(va)} seeds"


def verdict(rows: list) -> str:
    """One line per student: its linear-probe accuracy against the random-init student and
    the student trained on the same pretext directly (when the study has them), paired by
    seed."""
    by_run = {r["run"]: r for r in rows}
    random = by_run.get("student random init")
    lines = []
    for r in rows:
        if r["role"] != "student" or r["linear_accuracy"] is None:
            continue
        name = r["run"].split("<- ", 1)[1]
        text = f"{r['run']}: linear {_pct(r['linear_accuracy'], r.get('linear_accuracy_std'))}%"
        if random is not None and random["linear_accuracy"] is not None:
            text += f" ({_difference(r, random)} vs random init)"
        direct = by_run.get(f"student on {name} pretext")
        if direct is not None and direct["linear_accuracy"] is not None:
            text += f" ({_difference(r, direct)} vs the pretext directly)"
        lines.append(text)
    return "; ".join(lines)


# --- The study ------------------------------------------------------------------------------


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Run (or resume) every stage for every teacher, the baselines, and the report."""
    source = sources.config_source(config, config.data.train_split)
    _validate(config, len(source), jax.device_count())
    os.makedirs(workdir, exist_ok=True)
    mesh = parallel.make_mesh()
    true_labels = source_labels(source)
    k = config.transfer.num_clusters
    student_arch = f"{config.model.backbone} (w{config.model.num_filters})"

    seeds = [int(x) for x in config.compare.seeds]
    rows, teachers_out, panels, summary = [], {}, [], {}
    random_init = {}  # seed -> the student's evaluation at its random initialisation
    for i, (name, spec) in enumerate(config.teachers.items()):
        info = _teacher(config, name, spec, workdir, mesh)
        feats, feature_inputs = _features(config, name, info, source, workdir, mesh)
        clusters = _clusters(config, name, feats, feature_inputs, true_labels, workdir, mesh)
        evals = []
        for seed in seeds:
            student = student_config(config, os.path.abspath(clusters["labels_path"]))
            student.seed = seed
            if i > 0:  # one random-init evaluation of the student per seed is enough
                student.eval.random_init_baseline = False
            results = _finished_run(
                student, os.path.join(workdir, "students", f"{name}-k{k}-s{seed}")
            )
            if seed not in random_init and results.get("random_init_eval"):
                random_init[seed] = results["random_init_eval"]
            evals.append(results.get("eval"))
        stats = {
            key: clusters[key]
            for key in ("inertia", "n_iter", "size_min", "size_max", "nmi", "purity")
        }
        rows.append(
            _row(
                f"teacher {name}",
                "teacher",
                info["architecture"],
                "HOG (no training)"
                if spec.kind == "hog"
                else f"{info.get('pretext', '?')} pretext",
                info["eval"],
                stats,
            )
        )
        rows.append(
            _row(f"student <- {name}", "student", student_arch, f"{name}'s {k} clusters", evals)
        )
        teachers_out[name] = {
            **{key: v for key, v in info.items() if key != "load"},
            "clusters": stats,
        }
        centers = np.load(os.path.join(clusters["dir"], "centers.npy"))
        panels.append((name, feats, np.load(clusters["labels_path"]), centers))

    for name in config.baselines.pretext:
        spec = config.teachers[name]
        evals = []
        for seed in seeds:
            pc = pretext_config(config, spec)
            pc.seed = seed
            evals.append(
                _finished_run(pc, os.path.join(workdir, "pretext", f"{name}-s{seed}")).get("eval")
            )
        rows.append(
            _row(
                f"student on {name} pretext",
                "baseline",
                student_arch,
                f"{pc.loss.name} pretext directly",
                evals,
            )
        )
    if random_init:
        rows.append(
            _row(
                "student random init",
                "baseline",
                student_arch,
                "nothing (random)",
                [random_init.get(seed) for seed in seeds],
            )
        )

    for r in rows:
        for metric in ("knn_accuracy", "linear_accuracy"):
            if r[metric] is not None:
                summary[f"{r['run']}/{metric}"] = r[metric]
    results = {
        "summary": summary,
        "rows": rows,
        "teachers": teachers_out,
        "data": f"{config.data.name}:{config.data.train_split}",
        "num_clusters": k,
        "student_architecture": student_arch,
        "knn_k": config.eval.knn_k,
        "seeds": seeds,
        "workdir": workdir,
    }
    results["verdict"] = verdict(rows)
    if _is_main():
        io.write_json(os.path.join(workdir, train.RESULTS_FILE), results)
        write_markdown(os.path.join(workdir, "results.md"), results)
        try:
            plot_clusters(
                os.path.join(workdir, "clusters.png"),
                panels,
                source,
                clusters_shown=min(config.report.clusters_shown, k),
                images_per_cluster=config.report.images_per_cluster,
            )
        except ImportError:
            print(
                "jssl: warning: matplotlib is not installed: no clusters.png "
                "(pip install 'jssl[plots]')",
                file=sys.stderr,
            )
    return results
