"""Jigsaw++ (Noroozi, Vinjimoor, Favaro & Pirsiavash 2018): the jigsaw pretext with 0-2
tiles replaced by tiles of other images, the label unchanged (docs/methods.md section 5).
solo-learn has no Jigsaw++: the cifar10 preset is our choice (1000 permutations).

  # embedded MNIST
  python -m jssl.main --config configs/jigsaw_pp.py --workdir runs/jigsaw_pp
  python -m jssl.main --config configs/jigsaw_pp.py:smoke --workdir /tmp/jigsaw_pp       # seconds
  # paper setting
  python -m jssl.main --config configs/jigsaw_pp.py:cifar10 --workdir runs/jigsaw_pp_c10
"""

from jssl import config as jc
from jssl.methods.puzzle import puzzle_config

# The pretext zoo (jssl.config.zoo, launch/results_table.py); solo-learn publishes no
# CIFAR-10 number for it.
ZOO = {}


def get_config(preset: str = ""):
    c = jc.base_config()
    c.method = "puzzle"
    c.loss.name = "jigsaw_pp"
    c.puzzle = puzzle_config(num_permutations=1000)
    c.puzzle.max_intruders = 2
    # Head on the 9 concatenated tile features (the paper: fc7 4096 on 9 x 512).
    c.model.projector_hidden_dims = (4096,)
    c.optimizer.name = "sgd"
    c.optimizer.lr = 0.1
    c.optimizer.weight_decay = 5e-4

    if preset == "":
        jc.embedded_preset(c)
        c.puzzle.num_permutations = 100
        c.puzzle.input_size = 48  # 16-px cells, 12-px tiles (the ResNet needs >= 8)
        c.model.projector_hidden_dims = (512,)
    elif preset == "smoke":
        jc.smoke_preset(c)
        c.batch_size = 16
        c.puzzle.num_permutations = 10
        c.puzzle.input_size = 24  # 8-px cells, 6-px tiles for the test ConvNet
        c.model.projector_hidden_dims = (32,)
    elif preset == "cifar10":
        jc.cifar10_preset(c)
        c.puzzle.input_size = 96  # 32-px cells, 24-px tiles
        jc.one_view(
            c,
            jc.view_config(
                crop_size=32, crop_scale=(0.5, 1.0), color_jitter_prob=0.0, grayscale_prob=0.0
            ),
        )
    else:
        raise jc.unknown_preset("configs/jigsaw_pp.py", preset)
    return c
