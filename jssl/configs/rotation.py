"""Rotation prediction (Gidaris, Singh & Komodakis 2018): 4-way classification of
0/90/180/270-degree rotations of every image. solo-learn has no rotation pretext: the cifar10
preset is our choice (solo-learn's schedule, SGD as in the paper, mild crops).

  # embedded MNIST
  python -m jssl.main --config configs/rotation.py --workdir runs/rotation
  python -m jssl.main --config configs/rotation.py:smoke --workdir /tmp/rotation       # seconds
  # paper setting
  python -m jssl.main --config configs/rotation.py:cifar10 --workdir runs/rotation_c10
"""

from jssl import config as jc
from jssl.methods.puzzle import puzzle_config

# The pretext zoo (jssl.config.zoo, launch/results_table.py); solo-learn publishes no
# CIFAR-10 number for it.
ZOO = {}


def get_config(preset: str = ""):
    c = jc.base_config()
    c.method = "puzzle"
    c.loss.name = "rotation"
    c.puzzle = puzzle_config()
    c.model.projector_hidden_dims = ()  # a linear head on the features
    c.optimizer.name = "sgd"
    c.optimizer.lr = 0.1
    c.optimizer.weight_decay = 5e-4  # the paper's SGD setting

    if preset == "":
        jc.embedded_preset(c)
        c.batch_size = 32  # x 4 rotations: 128 images per step, as two views of 64
    elif preset == "smoke":
        jc.smoke_preset(c)
        c.batch_size = 16
    elif preset == "cifar10":
        jc.cifar10_preset(c)
        jc.one_view(
            c,
            jc.view_config(
                crop_size=32, crop_scale=(0.5, 1.0), color_jitter_prob=0.0, grayscale_prob=0.0
            ),
        )
    else:
        raise jc.unknown_preset("configs/rotation.py", preset)
    return c
