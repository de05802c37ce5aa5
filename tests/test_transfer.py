"""Knowledge transfer by clustering: the student method, the teachers, and the study's
stages (resume from saved output, deterministic pseudo-labels, a student that sees the
teacher only through its pseudo-labels)."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jssl import checkpoint, methods, parallel, teachers, train
from jssl import config as jc
from jssl.data import sources
from jssl.data.subsets import PseudoLabelSource, source_labels
from jssl.methods import transfer
from jssl.studies import common, layer_probes
from jssl.studies import transfer as study
from tests.test_config import load


def _digits(c, size=8):
    """The 8x8 digits (1,438 training images): the fastest real data set."""
    c.data.name = "digits_embedded"
    c.data.image_size = size
    for view in ("view1", "view2"):
        c.augment[view].crop_size = size
    c.eval.max_examples = 128
    c.eval.batch_size = 128
    c.eval.knn_k = 5
    c.eval.linear_max_steps = 10
    c.eval.linear_weight_decays = (0.0,)
    c.progress = False
    if "plots" in c:
        c.plots = False
    return c


def _study_config(teacher_specs: dict, steps: int = 3):
    c = _digits(load("transfer", "smoke"))
    c.model.num_filters = 4
    c.model.projector_hidden_dims = (16,)
    c.batch_size = 32
    c.total_steps = c.checkpoint_every = steps
    c.log_every = 1
    c.transfer.num_clusters = 8
    c.teachers = ml_collections.ConfigDict(teacher_specs)
    c.clustering.max_iter = 10
    c.report.clusters_shown, c.report.images_per_cluster = 3, 4
    return c


def _hog_teacher():
    return teachers.teacher_config(
        "hog",
        hog=ml_collections.ConfigDict(
            dict(
                orientations=9,
                pixels_per_cell=(2, 2),
                cells_per_block=(2, 2),
                block_norm="L2-Hys",
                transform_sqrt=False,
            )
        ),
    )


def _mtimes(root):
    return {
        os.path.join(d, f): os.stat(os.path.join(d, f)).st_mtime_ns
        for d, _, files in os.walk(root)
        for f in files
    }


@pytest.mark.parametrize(
    "preset", ["", "smoke", "cifar10", "compare", "compare_mnist", "compare_smoke"]
)
def test_presets_are_valid(preset):
    c = load("transfer", preset)
    assert c.study == "transfer" and c.method == "transfer"
    study._validate(c, num_train=10**6, num_devices=8)
    student = study.student_config(c, "/x/labels.npy")
    assert not any(
        k in student for k in ("study", "teachers", "clustering", "baselines", "compare")
    )
    assert len(c.compare.seeds) == (5 if preset in ("compare", "compare_mnist") else 1)
    assert c.compare.tune_seed not in c.compare.seeds
    assert student.model.backbone.startswith("alexnet")
    for spec in c.teachers.values():  # a student of another architecture than its teacher
        if spec.kind == "config":
            assert spec.run.model.backbone != student.model.backbone


def test_compare_runs_on_mnistm_with_its_normalisation_everywhere():
    """compare and compare_smoke: the student, the teacher's run and both direct baselines
    read mnistm_embedded normalised with its statistics; a teacher left on MNIST's is
    refused at start."""
    for preset in ("compare", "compare_smoke"):
        c = load("transfer", preset)
        assert c.data.name == "mnistm_embedded"
        assert set(c.teachers) == {"jigsaw_pp", "hog"} and c.compare.paper_teacher == "jigsaw_pp"
        runs = [study.student_config(c), study.teacher_run_config(c, c.teachers.jigsaw_pp)]
        runs += [
            study.direct_config(c, "jigsaw_pp", arm, seed=0, lr=0.1) for arm in study.DIRECT_ARMS
        ]
        for run in runs:
            assert run.data.name == "mnistm_embedded"
            for view in ("view1", "view2"):
                assert tuple(run.augment[view].mean) == jc.MNISTM_MEAN
                assert tuple(run.augment[view].std) == jc.MNISTM_STD
    assert load("transfer", "compare_mnist").data.name == "mnist_embedded"
    c = load("transfer", "compare")
    c.teachers.jigsaw_pp.run.augment.view1.mean = jc.MNIST_MEAN
    with pytest.raises(jc.ConfigError, match=r"teachers\.jigsaw_pp\.run\.augment\.view1: normal"):
        study._validate(c, num_train=4000, num_devices=8)


def test_direct_baselines_at_equal_student_and_equal_total_steps():
    c = load("transfer", "compare")
    teacher_steps = c.teachers.jigsaw_pp.run.total_steps
    same = study.direct_config(c, "jigsaw_pp", "student_steps", seed=3, lr=0.3)
    total = study.direct_config(c, "jigsaw_pp", "total_steps", seed=3, lr=0.3)
    assert same.total_steps == c.total_steps
    assert total.total_steps == teacher_steps + c.total_steps
    assert same.seed == total.seed == 3 and same.optimizer.lr == total.optimizer.lr == 0.3
    assert same.model.backbone == total.model.backbone == c.model.backbone
    assert same.model.num_filters == c.model.num_filters and same.loss.name == "jigsaw_pp"
    b = study.budgets(c)
    student = b["student <- jigsaw_pp"]
    equal_total = b["student on jigsaw_pp pretext, equal total steps"]
    assert student["updates"] == c.total_steps and student["teacher_updates"] == teacher_steps
    assert equal_total["updates"] == student["total_updates"] == teacher_steps + c.total_steps
    assert equal_total["images"] == total.total_steps * total.batch_size
    assert b["student on jigsaw_pp pretext"]["updates"] == c.total_steps
    assert b["student <- hog"]["teacher_updates"] == 0  # HOG trains nothing
    with pytest.raises(jc.ConfigError, match="direct baseline arm 'both'"):
        study.direct_config(c, "jigsaw_pp", "both", seed=0, lr=0.1)


def test_tuning_plan_and_k_sweep(tmp_path):
    c = load("transfer", "compare")
    plan = study.tuning_plan(c)
    assert [a["arm"] for a in plan] == [
        "student <- hog",
        "student <- jigsaw_pp",
        "direct jigsaw_pp student_steps",
        "direct jigsaw_pp total_steps",
    ]
    assert all(a["tuned"] and a["grid"] == [0.03, 0.1, 0.3] for a in plan)  # same size
    assert study.sweep_ks(c, "jigsaw_pp") == [50, 10, 200]  # the main k first
    assert study.sweep_ks(c, "hog") == [50]  # the other teacher at the main k only
    smoke = load("transfer", "compare_smoke")
    assert not any(a["tuned"] for a in study.tuning_plan(smoke))
    assert study.sweep_ks(smoke, "jigsaw_pp") == [10, 5]
    # A grid of one value: the value itself, no run.
    tuning = study._tune(smoke, str(tmp_path), {}, 0.1, None)
    assert {t["chosen"] for t in tuning.values()} == {0.1}
    assert all(t["scores"] == {} for t in tuning.values())
    assert not os.listdir(tmp_path)


def test_compare_config_errors():
    for field, value, match in (
        ("tune_seed", 2, "compare.tune_seed: 2 is also a test seed"),
        ("lrs", (), "compare.lrs: must be positive"),
        ("paper_teacher", "sift", "compare.paper_teacher: 'sift' is not one of"),
        ("num_clusters", (1,), r"compare.num_clusters: 1 must be an integer in \[2, 4000\]"),
        ("probe_fraction", 0.0, "compare.probe_fraction: 0.0 is not in"),
        ("probe_layers", (), "compare.probe_layers: distinct module paths"),
        ("probe_layers", ("Conv_9",), "compare.probe_layers: 'Conv_9' is no module of"),
    ):
        c = load("transfer", "compare")
        c.compare[field] = value
        with pytest.raises(jc.ConfigError, match=match):
            study._validate(c, num_train=4000, num_devices=8)


def test_few_label_probe_subsets():
    """1% of the training split, class-balanced and drawn with the seed; the validation
    subset no larger than the labelled set."""
    c = load("transfer", "compare")
    train = sources.config_source(c, c.eval.train_split)
    val = sources.config_source(c, c.eval.val_split)
    rows = layer_probes.labelled_rows(c, 0.01, seed=0)
    labels = source_labels(train)[rows]
    assert len(rows) == pytest.approx(0.01 * len(train), rel=0.2)
    assert np.bincount(labels, minlength=10).min() >= 1
    assert not np.array_equal(rows, layer_probes.labelled_rows(c, 0.01, seed=1))
    vfrac = layer_probes.val_fraction(c, 0.01)
    for seed in (0, 1):
        v = layer_probes._val_source(c, vfrac, seed)
        assert 0 < len(v) <= len(layer_probes.labelled_rows(c, 0.01, seed=seed))
        assert len(v) < len(val)


def test_claims_are_paired_verdict_lines():
    c = load("transfer", "compare_smoke")
    c.compare.seeds = (0, 1, 2)

    def row(name, values):
        return {"run": name, study.METRIC + "_values": values}

    rows = [
        row("student <- jigsaw_pp", [0.5, 0.6, 0.55]),
        row("student on jigsaw_pp pretext, equal total steps", [0.4, 0.5, 0.45]),
        row("student on jigsaw_pp pretext", [0.6, 0.7, 0.65]),
        row("student random init", [0.5, 0.6, 0.56]),
        row("student <- hog", [0.3, 0.2, 0.25]),
    ]
    diffs, lines = study._claims(rows, c)
    assert len(lines) == 4 and all(
        x.startswith("Verdict: student <- jigsaw_pp beats") for x in lines
    )
    assert "equal total steps (12 updates)" in lines[0] and ": holds (" in lines[0]
    assert "equal student steps (6 updates)" in lines[1] and ": does not hold (" in lines[1]
    assert "random-init" in lines[2] and "inconclusive" in lines[2]
    assert "student <- hog" in lines[3] and ": holds (" in lines[3]
    assert diffs["student <- jigsaw_pp - student <- hog"]["values"] == pytest.approx(
        [0.2, 0.4, 0.3]
    )


def test_study_config_errors():
    c = load("transfer", "smoke")
    c.transfer.num_clusters = 5000
    with pytest.raises(jc.ConfigError, match="num_clusters: 5000 clusters for 4000"):
        study._validate(c, num_train=4000, num_devices=8)
    c = load("transfer", "smoke")
    c.teachers.jigsaw_pp.kind = "sift"
    with pytest.raises(jc.ConfigError, match=r"teachers\.jigsaw_pp\.kind: 'sift'"):
        study._validate(c, num_train=4000, num_devices=8)
    c = load("transfer", "smoke")
    c.baselines.pretext = ("nope",)
    with pytest.raises(jc.ConfigError, match="baselines.pretext: 'nope'"):
        study._validate(c, num_train=4000, num_devices=8)
    for bad in ((), (0, 0), (1, -1), (0.5,)):
        c = load("transfer", "smoke")
        c.compare.seeds = bad
        with pytest.raises(jc.ConfigError, match="compare.seeds: must be distinct"):
            study._validate(c, num_train=4000, num_devices=8)


def test_student_trains_on_the_pseudo_labels():
    """The labels in the batch are the targets: other labels, other loss; parameters move."""
    c = study.student_config(_digits(load("transfer", "smoke")))
    c.transfer.num_clusters = 10
    jc.validate(c, 8)
    mesh = parallel.make_mesh()
    repl, data = parallel.replicated(mesh), parallel.batch_sharding(mesh)
    method = methods.build(c, methods.DataInfo(10, (8, 8, 1)), mesh)
    state = jax.jit(method.init, out_shardings=repl)(jax.random.PRNGKey(0))
    assert set(state.params) == {"backbone", "head"}
    step = jax.jit(method.train_step, in_shardings=(repl, data), out_shardings=(repl, repl))
    images, _ = sources.get_source("digits_embedded", "train").read(np.arange(c.batch_size))
    losses = []
    for labels in (np.zeros(c.batch_size), np.arange(c.batch_size) % 10):
        batch = jax.device_put({"image": images, "label": labels.astype(np.int32)}, data)
        new, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
        assert np.isfinite(losses[-1]) and float(metrics["grad_norm"]) > 0
    assert abs(losses[0] - losses[1]) > 1e-3
    assert not np.array_equal(
        jax.tree_util.tree_leaves(new.params)[0], jax.tree_util.tree_leaves(state.params)[0]
    )


def test_pseudo_label_source_and_errors(tmp_path):
    src = sources.get_source("digits_embedded", "train")
    labels = np.arange(len(src)) % 7
    relabelled = PseudoLabelSource(src, labels, 7)
    idx = np.array([5, 0, 3])
    images, got = relabelled.read(idx)
    np.testing.assert_array_equal(images, src.read(idx)[0])
    np.testing.assert_array_equal(got, labels[idx])
    path = str(tmp_path / "labels.npy")
    np.save(path, labels[:-1])
    with pytest.raises(jc.ConfigError, match=rf"pseudo_labels: .* need \({len(src)},\)"):
        transfer.load_pseudo_labels(path, len(src), 7)
    np.save(path, labels)
    with pytest.raises(jc.ConfigError, match="do not fit transfer.num_clusters=5"):
        transfer.load_pseudo_labels(path, len(src), 5)
    with pytest.raises(jc.ConfigError, match="pseudo_labels: no file given"):
        transfer.load_pseudo_labels(None, len(src), 7)


@pytest.mark.slow
def test_study_runs_and_resumes_each_stage(tmp_path):
    """HOG teacher -> k-means -> a student per seed: outputs, then a rerun reuses every
    stage, and lost students are retrained alone, to the same numbers."""
    c = _study_config({"hog": _hog_teacher()})
    c.compare.seeds = (0, 1)
    wd = str(tmp_path / "study")
    out = study.run(c, wd)
    for name in (
        "results.json",
        "results.md",
        "clusters.png",
        "features/hog.npy",
        "clusters/hog-k8/labels.npy",
        "students/hog-k8-s0/results.json",
        "students/hog-k8-s1/results.json",
    ):
        assert os.path.exists(os.path.join(wd, name)), name
    # The student row: the mean, sample std and values of the two seeds' own results.
    per_seed = [
        json.load(open(os.path.join(wd, f"students/hog-k8-s{s}/results.json"))) for s in (0, 1)
    ]
    row = next(r for r in out["rows"] if r["run"] == "student <- hog")
    lin = [r["eval"]["linear_accuracy"] for r in per_seed]
    assert row["linear_accuracy_values"] == lin
    assert row["linear_accuracy"] == pytest.approx(np.mean(lin))
    assert row["linear_accuracy_std"] == pytest.approx(np.std(lin, ddof=1))
    rand = next(r for r in out["rows"] if r["run"] == "student random init")
    assert rand["linear_accuracy_values"] == [
        r["random_init_eval"]["linear_accuracy"] for r in per_seed
    ]
    assert per_seed[0]["random_init_eval"] != per_seed[1]["random_init_eval"]  # 2 inits
    labels = np.load(os.path.join(wd, "clusters/hog-k8/labels.npy"))
    assert labels.shape == (1438,) and set(np.unique(labels)) == set(range(8))
    summary = out["summary"]
    for key in (
        "teacher hog/linear_accuracy",
        "student <- hog/linear_accuracy",
        "student <- hog/knn_accuracy",
        "student random init/linear_accuracy",
    ):
        assert 0.0 <= summary[key] <= 1.0, key
    assert summary["teacher hog/linear_accuracy"] > 0.5  # HOG separates digits well
    assert 0.0 < out["teachers"]["hog"]["clusters"]["nmi"] <= 1.0
    with open(os.path.join(wd, "results.json")) as f:
        assert json.load(f)["summary"] == summary

    before = _mtimes(wd)
    again = study.run(c, wd)
    assert again["summary"] == summary
    after = _mtimes(wd)
    stages = [p for p in before if "/features/" in p or "/clusters/" in p or "/students/" in p]
    assert stages and all(after[p] == before[p] for p in stages)

    shutil.rmtree(os.path.join(wd, "students"))
    third = study.run(c, wd)
    assert third["summary"] == summary  # the same student, retrained from the saved labels
    assert all(_mtimes(wd)[p] == before[p] for p in stages if "/students/" not in p)

    c.clustering.max_iter = 11  # other clustering inputs for the same k: refused, untouched
    with pytest.raises(jc.ConfigError, match="made from other inputs"):
        study.run(c, wd)
    assert (
        _mtimes(wd)[os.path.join(wd, "clusters/hog-k8/labels.npy")]
        == before[os.path.join(wd, "clusters/hog-k8/labels.npy")]
    )


@pytest.mark.slow
def test_compare_smoke_end_to_end(tmp_path):
    """The compare path at smoke size: teachers, the k sweep, both direct-baseline arms, the
    random-init student, per-layer few-label probes, budgets, tuning, verdicts."""
    c = load("transfer", "compare_smoke")
    wd = str(tmp_path / "cmp")
    out = study.run(c, wd)
    with open(os.path.join(wd, "results.json")) as f:
        saved = json.load(f)
    assert saved["seeds"] == [0]
    assert {"command", "devices", "platform", "commit", "uncommitted_changes"} <= set(
        saved["provenance"]
    )
    assert len(saved["verdict"]) == 4 and all(v.startswith("Verdict:") for v in saved["verdict"])
    rows = {r["run"]: r for r in saved["rows"]}
    for name in (
        "student <- jigsaw_pp",
        "student <- jigsaw_pp (k=5)",
        "student <- hog",
        "student on jigsaw_pp pretext",
        "student on jigsaw_pp pretext, equal total steps",
        "student random init",
    ):
        r = rows[name]
        assert set(r["probe_layers"]) == {
            "BatchNorm_0",
            "BatchNorm_1",
            "BatchNorm_2",
            "BatchNorm_3",
            "BatchNorm_4",
            "pooled",
        }
        assert r["probe_best_layer_values"][0] in r["probe_layers"]
        assert r["probe_num_val"][0] <= r["probe_num_labelled"][0]
        assert 0 <= r[study.METRIC] <= 1 and "budget" in r
    assert rows["student on jigsaw_pp pretext, equal total steps"]["budget"]["updates"] == 12
    assert set(saved["tuning"]["arms"]) == {
        "student <- hog",
        "student <- jigsaw_pp",
        "direct jigsaw_pp student_steps",
        "direct jigsaw_pp total_steps",
    }
    assert not os.path.exists(os.path.join(wd, "tune"))  # grids of one value: no tuning runs
    with open(os.path.join(wd, "pretext", "jigsaw_pp-total-s0", "results.json")) as f:
        assert json.load(f)["final_step"] == 12
    assert "Verdict:" in open(os.path.join(wd, "results.md")).read()
    assert out["summary"] == saved["summary"]


@pytest.mark.slow
def test_tuning_chooses_the_lr_on_validation(tmp_path):
    """A grid of two learning rates: two tuning runs on the tuning seed, scored by the
    few-label probe's validation accuracy; the seeds then run at the chosen value."""
    c = _study_config({"hog": _hog_teacher()})
    c.compare.lrs = (0.05, 0.2)
    wd = str(tmp_path / "study")
    out = study.run(c, wd)
    t = out["tuning"]["arms"]["student <- hog"]
    assert t["seed"] == c.compare.tune_seed and t["grid"] == [0.05, 0.2]
    for lr in ("0.05", "0.2"):
        run_dir = os.path.join(wd, "tune", "students", f"hog-k8-lr{lr}-s{c.compare.tune_seed}")
        assert os.path.exists(os.path.join(run_dir, "results.json"))
        with open(
            os.path.join(wd, "probes", os.path.relpath(run_dir, wd).replace(os.sep, "__") + ".json")
        ) as f:
            assert t["scores"][lr] == json.load(f)["probes"]["best_val_accuracy"]
    assert t["chosen"] == common.choose({"0.05": 0.05, "0.2": 0.2}, t["scores"])[1]
    row = next(r for r in out["rows"] if r["run"] == "student <- hog")
    assert row["lr"] == t["chosen"]
    with open(os.path.join(wd, "students", "hog-k8-s0", "config.json")) as f:
        assert json.load(f)["optimizer"]["lr"] == t["chosen"]


def test_rows_and_verdict_pair_the_seeds():
    """Rows over seeds: mean and sample std; the verdict's differences are paired by seed."""
    ev = lambda lin: {"linear_accuracy": lin, "knn_accuracy": lin - 0.1}  # noqa: E731
    student = study._row(
        "student <- a", "student", "x", "a's 8 clusters", [ev(0.90), ev(0.80), ev(0.95)]
    )
    direct = study._row(
        "student on a pretext", "baseline", "x", "a", [ev(0.85), ev(0.82), ev(0.90)]
    )
    rand = study._row("student random init", "baseline", "x", "nothing", [ev(0.5)] * 3)
    assert student["linear_accuracy"] == pytest.approx(0.8833333)
    assert student["linear_accuracy_std"] == pytest.approx(np.std([0.9, 0.8, 0.95], ddof=1))
    assert student["knn_accuracy_values"] == pytest.approx([0.8, 0.7, 0.85])
    text = study.verdict([student, direct, rand])
    # paired differences +5, -2, +5 points: mean 2.67, std 4.04, higher in 2 of 3
    assert "+2.7 ± 4.0, higher in 2 of 3 seeds vs the pretext directly" in text
    assert "+38.3 ± 7.6, higher in 3 of 3 seeds vs random init" in text
    one = study._row("student <- a", "student", "x", "c", ev(0.9))
    assert one["linear_accuracy_std"] is None and one["linear_accuracy_values"] == [0.9]
    assert (
        study.verdict([one, study._row("student random init", "baseline", "x", "n", ev(0.5))])
        == "student <- a: linear 90.0% (+40.0 vs random init)"
    )


def test_pseudo_labels_are_deterministic(tmp_path):
    """Features and k-means of two independent runs give bit-identical pseudo-labels."""
    c = _study_config({"hog": _hog_teacher()})
    mesh = parallel.make_mesh()
    src = sources.get_source(c.data.name, c.data.train_split)
    truth = np.asarray(src.read(np.arange(len(src)))[1])
    out = []
    for run in ("a", "b"):
        wd = str(tmp_path / run)
        info = study._teacher(c, "hog", c.teachers.hog, wd, mesh)
        feats, inputs = study._features(c, "hog", info, src, wd, mesh)
        out.append(study._clusters(c, "hog", feats, inputs, truth, wd, mesh))
    a, b = (np.load(o["labels_path"]) for o in out)
    np.testing.assert_array_equal(a, b)
    assert len(np.unique(a)) == 8
    c.clustering.seed = 1  # another seed: other k-means++ centres, other labels
    feats, inputs = study._features(c, "hog", info, src, str(tmp_path / "a"), mesh)
    other = study._clusters(c, "hog", feats, inputs, truth, str(tmp_path / "c"), mesh)
    assert not np.array_equal(np.load(other["labels_path"]), a)


def _teacher_run(tmp_path) -> str:
    """A jssl run to act as the teacher: SimCLR on the digits, ConvNet, two steps."""
    c = _digits(load("simclr", "smoke"))
    c.total_steps = c.checkpoint_every = 2
    c.eval.random_init_baseline = False
    wd = str(tmp_path / "teacher")
    train.train_and_evaluate(c, wd)
    return wd


@pytest.mark.slow
def test_checkpoint_teacher_layers_and_an_isolated_student(tmp_path):
    teacher_dir = _teacher_run(tmp_path)
    layers = teachers.encoder_layers(teacher_dir, (8, 8, 1))
    assert "backbone/Conv_1" in layers and "backbone/BatchNorm_2" in layers
    images, _ = sources.get_source("digits_embedded", "train").read(np.arange(16))
    full = jax.jit(teachers.checkpoint_teacher(teacher_dir).features)(images)
    conv1 = jax.jit(teachers.checkpoint_teacher(teacher_dir, layer="Conv_1").features)(images)
    assert full.shape == (16, 32) and conv1.shape == (16, 16)  # ConvNet w8: 4f and 2f
    with pytest.raises(jc.ConfigError, match="teacher layer 'Conv_9'"):
        teachers.checkpoint_teacher(teacher_dir, layer="Conv_9").features(jnp.asarray(images))

    spec = teachers.teacher_config("checkpoint", path=teacher_dir, layer="Conv_1")
    c = _study_config({"simclr": spec})
    wd = str(tmp_path / "study")
    out = study.run(c, wd)
    student_dir = os.path.join(wd, "students", "simclr-k8-s0")
    with open(os.path.join(student_dir, checkpoint.EXPERIMENT_FILE)) as f:
        fields = json.load(f)
    assert not any(teacher_dir in str(v) or k.startswith("teachers") for k, v in fields.items())
    # The student's weights are its own modules, none equal to a teacher tensor.
    _, student = checkpoint.restore_host(student_dir, None)
    _, teacher = checkpoint.restore_host(teacher_dir, None)
    assert set(student["params"]) == {"backbone", "head"}
    teacher_leaves = jax.tree_util.tree_leaves(teacher["params"])
    for leaf in jax.tree_util.tree_leaves(student["params"]):
        assert not any(
            np.shape(leaf) == np.shape(t) and np.array_equal(leaf, t) for t in teacher_leaves
        )
    # Without the teacher at all, the pseudo-labels alone reproduce the same student.
    shutil.rmtree(teacher_dir)
    labels = os.path.join(wd, "clusters", "simclr-k8", "labels.npy")
    alone = study.student_config(c, os.path.abspath(labels))
    alone.eval.random_init_baseline = False
    again = train.train_and_evaluate(alone, str(tmp_path / "student_again"))
    _, student2 = checkpoint.restore_host(str(tmp_path / "student_again"), None)
    for a, b in zip(
        jax.tree_util.tree_leaves(student["params"]), jax.tree_util.tree_leaves(student2["params"])
    ):
        np.testing.assert_array_equal(a, b)
    row = next(r for r in out["rows"] if r["run"] == "student <- simclr")
    assert row["linear_accuracy"] == again["eval"]["linear_accuracy"]


@pytest.mark.parametrize("name,size", [("alexnet", 63), ("alexnet_cifar", 28), ("alexnet_tiny", 8)])
def test_alexnet_backbones(name, size):
    from jssl import models

    net = models.build_backbone(name, num_filters=4)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, size, size, 3)), jnp.float32)
    variables = jax.jit(lambda r, x: models.init_variables(net, r, x, train=False))(
        jax.random.PRNGKey(0), x
    )
    out = jax.jit(lambda v, x: net.apply(v, x, train=False))(variables, x)
    assert out.shape == (2, net.num_features) == (2, 16)
    convs = [v["kernel"].shape for k, v in sorted(variables["params"].items()) if "Conv" in k]
    assert [s[-1] for s in convs] == [4, 12, 24, 16, 16]  # widths f x (1, 3, 6, 4, 4)
    assert convs[0][:2] == ((11, 11) if name == "alexnet" else (5, 5))
