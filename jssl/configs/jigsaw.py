"""Jigsaw puzzles (Noroozi & Favaro 2016): classify which of P maximal-Hamming-distance
permutations shuffled the 3x3 tiles of a crop; a siamese tile encoder (the backbone, weights
shared over the tiles), features concatenated, an MLP head. solo-learn has no jigsaw: the
cifar10 preset is our choice (the paper's 1000 permutations, solo-learn's schedule).

  python -m jssl.main --config configs/jigsaw.py --workdir runs/jigsaw             # embedded MNIST
  python -m jssl.main --config configs/jigsaw.py:smoke --workdir /tmp/jigsaw       # seconds
  python -m jssl.main --config configs/jigsaw.py:cifar10 --workdir runs/jigsaw_c10 # paper setting
"""

from jssl import config as jc
from jssl.methods.puzzle import puzzle_config

# The pretext zoo (jssl.config.zoo, launch/results_table.py); solo-learn publishes no
# CIFAR-10 number for it.
ZOO = {}


def get_config(preset: str = ""):
    c = jc.base_config()
    c.method = "puzzle"
    c.loss.name = "jigsaw"
    c.puzzle = puzzle_config(num_permutations=1000)
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
        raise jc.unknown_preset("configs/jigsaw.py", preset)
    return c
