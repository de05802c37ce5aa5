"""Knowledge transfer by clustering (Noroozi, Vinjimoor, Favaro & Pirsiavash, CVPR 2018):
a teacher's features of the whole training set -> k-means -> pseudo-labels -> a student of
another architecture trained from scratch to classify them -> linear probe and k-NN of the
student (jssl/studies/transfer.py runs the stages, each resuming from its saved output).

  # embedded MNIST
  python -m jssl.main --config configs/transfer.py --workdir runs/transfer
  python -m jssl.main --config configs/transfer.py:smoke --workdir /tmp/transfer       # seconds
  python -m jssl.main --config configs/transfer.py:cifar10 --workdir runs/transfer_c10 # paper-like
  python -m jssl.main --config configs/transfer.py:compare --workdir runs/transfer_cmp # the study
      # under docs/studies.md on mnistm_embedded (below); compare_mnist: the same on MNIST
      # digits (where HOG is a strong teacher); compare_smoke: the same path in minutes
  --config.transfer.num_clusters=100   --config.teachers.jigsaw_pp.layer=BasicBlock_5

The paper: a Jigsaw++ teacher (AlexNet or VGG16), k = 2000 on ImageNet's 1.28M images,
an AlexNet student, PASCAL VOC and ImageNet linear probes (per layer). Here: a ResNet-18
teacher trained on Jigsaw++ (its config embedded as `teachers.<name>.run`), the
AlexNet-style student, and k scaled to the data: 50 clusters of about 80 images on the
embedded 4,000, 500 of 100 on CIFAR-10's 50,000 (the paper has 640 per cluster, and finds k
barely matters past 1000).

`compare` (jssl/studies/transfer.py): the colour digits over photographs (mnistm_embedded,
applied to the student, the teacher's run and the direct baselines alike), teachers Jigsaw++
(the paper's) and HOG; the student on Jigsaw++ directly at the student's steps and at the
teacher's + the student's steps; the random-init student; a k sweep (10, 50, 200) for
Jigsaw++; every arm's lr chosen on validation over (0.03, 0.1, 0.3) on tuning seed 100;
5 seeds; per-layer linear probes at 1% labels. Fields of `config.compare`: seeds,
tune_seed, lrs, paper_teacher, num_clusters (the k sweep), probe_fraction, probe_layers.
Expected cost: 36 min alone on the 2-core machine (measured at fb3d5f9: docs/transfer.md),
about 95 min when it shares the machine with another job (the per-run times are in
jssl/studies/transfer.py).
"""

import ml_collections

from jssl import config as jc
from jssl.methods.transfer import transfer_config
from jssl.teachers import teacher_config

# The compare budgets (measured per-run times: jssl/studies/transfer.py docstring).
STUDENT_WIDTH = 16  # alexnet_cifar width of the students and the direct baselines
STUDENT_STEPS = 150  # student steps (and the equal-student-steps direct baseline's)
TEACHER_STEPS = 200  # the Jigsaw++ teacher's steps (equal total: TEACHER + STUDENT steps)

PRESETS = ("smoke", "cifar10", "compare", "compare_mnist", "compare_smoke")


def _sibling_config(name: str, preset: str = ""):
    """The config of configs/<name>.py at `preset` (a sibling file of this one)."""
    return jc.load_file(name, preset)


def _pretext_teacher(name: str, preset: str = "", steps: int = 0, mnistm: bool = False):
    run = _sibling_config(name, preset)
    if mnistm:  # the study's data: the teacher sees it with mnistm's normalisation
        jc.mnistm_preset(run)
    if steps:
        run.total_steps = steps
        run.optimizer.warmup_steps = min(run.optimizer.warmup_steps, steps // 10)
        run.checkpoint_every = min(run.checkpoint_every, steps)
    run.eval.random_init_baseline = False  # the student's random init is the baseline
    return teacher_config("config", run=run)


def _study_fields(c, teachers: dict, pretext_baselines=(), seeds=(0,), **compare) -> None:
    c.study = "transfer"
    c.teachers = ml_collections.ConfigDict(teachers)
    c.clustering = ml_collections.ConfigDict(
        dict(
            normalize=True,  # L2-normalise the teacher's features before k-means
            max_iter=100,
            tol=1e-4,  # scikit-learn's relative centre-shift tolerance
            seed=0,  # k-means++ seeding
            init_sample_size=0,  # >0: seed k-means++ on this many points (millions of images)
            feature_batch_size=500,
        )
    )
    # Teachers of kind "config" whose pretext also trains the student's architecture
    # directly (the paper's "Jigsaw++ on AlexNet" beside "clustered Jigsaw++ -> AlexNet"),
    # in two arms: for the student's steps, and for the teacher's + the student's steps.
    c.baselines = ml_collections.ConfigDict(dict(pretext=tuple(pretext_baselines)))
    c.report = ml_collections.ConfigDict(dict(clusters_shown=8, images_per_cluster=10))
    # The study rules (docs/studies.md), read by jssl/studies/transfer.py in every preset.
    c.compare = ml_collections.ConfigDict(
        dict(
            # Seeds of the student-side runs (students, pretext baselines, random init, the
            # labelled 1% subsets); the teachers and their clusters are made once.
            seeds=tuple(seeds),
            # The tuning runs' seed (outside `seeds`): the students' and the direct
            # baselines' lr chosen on validation over `lrs` (one value: no tuning runs).
            tune_seed=100,
            lrs=(c.optimizer.lr,),
            # The teacher of the claims (the paper's Jigsaw++; "": the first of
            # config.teachers) and its k sweep: students at each k of `num_clusters` too
            # (the other teachers at transfer.num_clusters only).
            paper_teacher="",
            num_clusters=(),
            # Linear probes on each layer of the student (module paths of the backbone,
            # "" = its pooled output), trained on a seeded class-balanced `probe_fraction`
            # of eval.train_split, regularised on a validation subset as large.
            probe_fraction=0.01,
            probe_layers=(
                "BatchNorm_0",
                "BatchNorm_1",
                "BatchNorm_2",
                "BatchNorm_3",
                "BatchNorm_4",
                "",
            ),
        )
    )
    c.compare.update(compare)


def get_config(preset: str = ""):
    c = jc.base_config()
    c.method = "transfer"
    c.loss.name = "cluster_classification"
    c.transfer = transfer_config()
    # The student: the AlexNet-style backbone and a one-hidden-layer head (the paper's
    # student keeps AlexNet's fc6-fc7; smaller here), SGD as in the paper's Caffe recipe.
    c.model.backbone = "alexnet_cifar"
    c.model.projector_hidden_dims = (512,)
    c.optimizer.name = "sgd"
    c.optimizer.lr = 0.1
    c.optimizer.weight_decay = 5e-4

    if preset in ("", "compare", "compare_mnist"):
        jc.embedded_preset(c)
        c.model.backbone = "alexnet_cifar"
        c.model.num_filters = 32
        c.transfer.num_clusters = 50
        if preset == "":
            _study_fields(c, {"jigsaw_pp": _pretext_teacher("jigsaw_pp")})
        else:
            mnistm = preset == "compare"
            if mnistm:  # the harder embedded set (docs/studies.md rule 7)
                jc.mnistm_preset(c)
            # Budgets for about an hour on 2 CPU cores (jssl/studies/transfer.py docstring).
            c.model.num_filters = STUDENT_WIDTH
            c.total_steps = STUDENT_STEPS
            c.optimizer.warmup_steps = STUDENT_STEPS // 20
            c.checkpoint_every = STUDENT_STEPS
            _study_fields(
                c,
                {
                    "jigsaw_pp": _pretext_teacher("jigsaw_pp", steps=TEACHER_STEPS, mnistm=mnistm),
                    "hog": teacher_config("hog"),
                },
                pretext_baselines=("jigsaw_pp",),
                seeds=(0, 1, 2, 3, 4),
                paper_teacher="jigsaw_pp",
                lrs=(0.03, 0.1, 0.3),
                num_clusters=(10, 50, 200),
            )
    elif preset in ("smoke", "compare_smoke"):
        jc.smoke_preset(c)
        c.model.backbone = "alexnet_tiny"
        c.model.num_filters = 8
        c.model.projector_hidden_dims = (32,)
        c.transfer.num_clusters = 10
        c.plots = False
        if preset == "smoke":
            teacher = _pretext_teacher("jigsaw_pp", "smoke")
            teacher.run.plots = False
            _study_fields(c, {"jigsaw_pp": teacher})
        else:  # the compare path in minutes (170 s on the shared 2-core machine)
            jc.mnistm_preset(c)
            teacher = _pretext_teacher("jigsaw_pp", "smoke", mnistm=True)
            teacher.run.plots = False
            _study_fields(
                c,
                {"jigsaw_pp": teacher, "hog": teacher_config("hog")},
                pretext_baselines=("jigsaw_pp",),
                paper_teacher="jigsaw_pp",
                num_clusters=(5,),
            )
        c.clustering.max_iter = 20
        c.clustering.feature_batch_size = 256
        c.report.clusters_shown, c.report.images_per_cluster = 4, 6
    elif preset == "cifar10":
        jc.cifar10_preset(c, epochs=100)
        jc.one_view(c, jc.view_config(crop_size=32, crop_scale=(0.2, 1.0)))
        c.model.backbone = "alexnet_cifar"
        c.model.num_filters = 64
        c.model.projector_hidden_dims = (1024,)
        c.optimizer.warmup_steps = 0
        c.transfer.num_clusters = 500
        _study_fields(c, {"jigsaw_pp": _pretext_teacher("jigsaw_pp", "cifar10")})
    else:
        raise jc.unknown_preset("configs/transfer.py", preset, PRESETS)
    return c
