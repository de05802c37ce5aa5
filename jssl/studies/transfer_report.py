"""The knowledge-transfer study's report (jssl/studies/transfer.py): cluster quality
against the labels (NMI, purity), the table rows over seeds, results.md and clusters.png.
"""

from __future__ import annotations

import numpy as np

from jssl import io, plots
from jssl.studies.common import fmt_diff, paired, stats

__all__ = ["METRIC", "nmi", "purity", "write_markdown", "plot_clusters", "verdict"]

# The verdicts' metric: the few-label linear probe's test accuracy at the layer chosen on
# validation (jssl/studies/layer_probes.py).
METRIC = "probe_best_test_accuracy"


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
    seeds = results.get("seeds", [0])
    probe = results["probe"]
    p = results["paper_teacher"]
    lines = [
        "# Knowledge transfer by clustering (Noroozi et al. 2018)",
        "",
        f"Data: {results['data']}; k = {results['num_clusters']} clusters (the k sweep of "
        f"the paper's teacher, {p}: {results['num_clusters_sweep'][p]}); student "
        f"{results['student_architecture']}. Student-side runs: {len(seeds)} seed"
        f"{'s' if len(seeds) > 1 else ''} ({', '.join(map(str, seeds))}), mean ± sample std; "
        "the teachers and their clusters are made once. Accuracies (%) on the test split: "
        f"k-NN (k = {results['knn_k']}) and linear probe on frozen features with every "
        "training label (weight decay chosen on the validation split); the "
        f"{100 * probe['fraction']:g}%-label probe: a linear probe on each layer, trained on "
        "a class-balanced labelled subset drawn with the run's seed, its weight decay and "
        f"the layer chosen on a validation subset as large ({100 * probe['val_fraction']:.1f}% "
        "of the validation split); its test accuracy at the chosen layer is the metric of "
        "the verdicts (fixed before any run). NMI / purity: the clusters against the real "
        "labels. Budget: optimizer updates / training images of the run, and its mean "
        "training wall time on this machine (a student's teacher's in brackets).",
        "",
        "| run | role | k | lr | budget | k-NN | linear | "
        f"{100 * probe['fraction']:g}% probe (chosen layer) | NMI | purity |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        nmi_s = "-" if r.get("nmi") is None else f"{r['nmi']:.3f}"
        pur_s = "-" if r.get("purity") is None else f"{r['purity']:.3f}"
        bud = r.get("budget")
        bud_s = "-"
        if bud:
            bud_s = f"{bud['updates']} / {bud['images']}"
            if r.get("train_time_s") is not None:
                bud_s += f", {r['train_time_s']:.0f} s"
            if bud["teacher_updates"]:
                bud_s += f" (+{bud['teacher_updates']} / {bud['teacher_images']}"
                t = r.get("teacher_train_time_s")
                bud_s += "" if t is None else f", {t:.0f} s"
                bud_s += ")"
        lr = "-" if r.get("lr") is None else f"{r['lr']:g}"
        lines.append(
            f"| {r['run']} | {r['role']} | {r.get('k') or '-'} | {lr} | {bud_s} | "
            f"{_pct(r['knn_accuracy'], r.get('knn_accuracy_std'))} | "
            f"{_pct(r['linear_accuracy'], r.get('linear_accuracy_std'))} | "
            f"{_pct(r.get(METRIC), r.get(METRIC + '_std'))} | {nmi_s} | {pur_s} |"
        )
    layers = probe["layers"]
    lines += [
        "",
        f"{100 * probe['fraction']:g}%-label linear probe per layer of the student, test "
        "accuracy (%) (layers: module outputs before the ReLU, global-average pooled; "
        "pooled: the backbone's output), and the layer each seed chose on validation:",
        "",
        "| run | " + " | ".join(layers) + " | chosen |",
        "|---|" + "---|" * (len(layers) + 1),
    ]
    for r in results["rows"]:
        if "probe_layers" not in r:
            continue
        cells = [_pct(r["probe_layers"][x]["mean"], r["probe_layers"][x]["std"]) for x in layers]
        lines.append(
            f"| {r['run']} | "
            + " | ".join(cells)
            + f" | {', '.join(r['probe_best_layer_values'])} |"
        )
    t = results["tuning"]
    lines += [
        "",
        f"Learning rates chosen on validation (tuning seed {t['seed']}, score: the "
        f"{100 * probe['fraction']:g}%-label probe's validation accuracy at its chosen layer; "
        "a grid of one value is not tuned; the sweep's other k use the k = "
        f"{results['num_clusters']} choice):",
        "",
    ]
    for arm, e in t["arms"].items():
        scores = ", ".join(f"{k} {100 * v:.1f}%" for k, v in e["scores"].items())
        lines.append(
            f"- {arm}: grid {', '.join(f'{v:g}' for v in e['grid'])}, chosen {e['chosen']:g}"
            + (f" ({scores})" if scores else "")
        )
    lines += ["", "Paired differences of the verdict metric (A - B), 95% t-interval:", ""]
    for name, d in results["difference"].items():
        lines.append(f"- {name}: {fmt_diff(d)}")
    if any(t.get("kind") == "hog" for t in results["teachers"].values()):
        lines += [
            "",
            "On digits HOG is a strong teacher: gradient-orientation histograms follow the "
            "strokes that define the class, so its clusters are purer than a pretext "
            "teacher's; in the paper (ImageNet) HOG is the weakest teacher. The claim against "
            "HOG below tests the paper's ranking on a set that favours HOG.",
        ]
    for line in results["verdict"]:  # each its own paragraph, beginning with "Verdict:"
        lines += ["", line]
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
