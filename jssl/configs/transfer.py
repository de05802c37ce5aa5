"""Knowledge transfer by clustering (Noroozi, Vinjimoor, Favaro & Pirsiavash, CVPR 2018):
a teacher's features of the whole training set -> k-means -> pseudo-labels -> a student of
another architecture trained from scratch to classify them -> linear probe and k-NN of the
student (jssl/studies/transfer.py runs the stages, each resuming from its saved output).

  # embedded MNIST
  python -m jssl.main --config configs/transfer.py --workdir runs/transfer
  python -m jssl.main --config configs/transfer.py:smoke --workdir /tmp/transfer       # seconds
  python -m jssl.main --config configs/transfer.py:cifar10 --workdir runs/transfer_c10 # paper-like
  python -m jssl.main --config configs/transfer.py:compare --workdir runs/transfer_cmp # the table
  --config.transfer.num_clusters=100   --config.teachers.jigsaw_pp.layer=BasicBlock_5

The paper: a Jigsaw++ teacher (AlexNet or VGG16), k = 2000 on ImageNet's 1.28M images,
an AlexNet student, PASCAL VOC and ImageNet linear probes. Here: a ResNet-18 teacher
trained on Jigsaw++ (its config embedded as `teachers.<name>.run`), the AlexNet-style
student, and k scaled to the data: 50 clusters of about 80 images on the embedded 4,000,
500 of 100 on CIFAR-10's 50,000 (the paper has 640 per cluster, and finds k barely
matters past 1000). `compare` adds a Jigsaw teacher and a HOG teacher, the student trained
on each pretext directly, and (from the first student run of each seed) the student at
random initialisation; its student-side runs repeat for 3 seeds (`compare.seeds`; the
teachers and their clusters are made once).
"""

import ml_collections

from jssl import config as jc
from jssl.methods.transfer import transfer_config
from jssl.teachers import teacher_config

PRESETS = ("smoke", "cifar10", "compare")


def _sibling_config(name: str, preset: str = ""):
    """The config of configs/<name>.py at `preset` (a sibling file of this one)."""
    return jc.load_file(name, preset)


def _pretext_teacher(name: str, preset: str = "", steps: int = 0):
    run = _sibling_config(name, preset)
    if steps:
        run.total_steps = steps
        run.optimizer.warmup_steps = min(run.optimizer.warmup_steps, steps // 10)
        run.checkpoint_every = min(run.checkpoint_every, steps)
    run.eval.random_init_baseline = False  # the student's random init is the baseline
    return teacher_config("config", run=run)


def _study_fields(c, teachers: dict, pretext_baselines=(), seeds=(0,)) -> None:
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
    # directly (the paper's "Jigsaw++ on AlexNet" beside "clustered Jigsaw++ -> AlexNet").
    c.baselines = ml_collections.ConfigDict(dict(pretext=tuple(pretext_baselines)))
    c.report = ml_collections.ConfigDict(dict(clusters_shown=8, images_per_cluster=10))
    # Seeds of the student-side runs (students, pretext baselines, random init); the
    # teachers and their clusters are made once.
    c.compare = ml_collections.ConfigDict(dict(seeds=tuple(seeds)))


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

    if preset in ("", "compare"):
        jc.embedded_preset(c)
        c.model.backbone = "alexnet_cifar"
        c.model.num_filters = 32
        c.transfer.num_clusters = 50
        if preset == "":
            _study_fields(c, {"jigsaw_pp": _pretext_teacher("jigsaw_pp")})
        else:
            # Shorter budgets: seven training runs in one command on a CPU.
            c.total_steps = 300
            c.optimizer.warmup_steps = 15
            _study_fields(
                c,
                {
                    "jigsaw": _pretext_teacher("jigsaw", steps=300),
                    "jigsaw_pp": _pretext_teacher("jigsaw_pp", steps=300),
                    "hog": teacher_config("hog"),
                },
                pretext_baselines=("jigsaw", "jigsaw_pp"),
                seeds=(0, 1, 2),
            )
    elif preset == "smoke":
        jc.smoke_preset(c)
        c.model.backbone = "alexnet_tiny"
        c.model.num_filters = 8
        c.model.projector_hidden_dims = (32,)
        c.transfer.num_clusters = 10
        c.plots = False
        teacher = _pretext_teacher("jigsaw_pp", "smoke")
        teacher.run.plots = False
        _study_fields(c, {"jigsaw_pp": teacher})
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
