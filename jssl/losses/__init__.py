"""Self-supervised objectives as pure functions of arrays (layer 1: no Flax, no config).

Every loss takes raw embeddings or logits of the *global* batch and returns a float32
scalar mean. Inside the sharded train step the batch axis is split over devices; because the
losses are written on the whole batch, XLA inserts the collectives (cross-device negatives,
the Barlow Twins cross-correlation, the Sinkhorn sums over samples) and the value equals the
single-device one. Never call collectives here.

Conventions follow the original papers by default; keyword arguments reproduce the peers'
(solo-learn, lightly) and the official codes' variants where they differ (docs/methods.md,
section 1).
The implementations live in private modules, re-exported here:

  _contrastive     nt_xent, dcl, moco, mocov3, nnclr, nearest_neighbour
  _redundancy      barlow_twins, vicreg, wmse
  _bootstrap       byol, simsiam
  _clustering      sinkhorn_knopp, swav, dino, dino_center,
                   dino_teacher_temp
  _classification  rotation, jigsaw, jigsaw_pp
  _mae             mae, patchify, unpatchify, random_masking (He et al. 2022)
  _common          l2_normalize, at_least_f32 (half precision up, float64 kept)
"""

from jssl.losses._bootstrap import byol, simsiam
from jssl.losses._classification import jigsaw, jigsaw_pp, rotation
from jssl.losses._clustering import dino, dino_center, dino_teacher_temp, sinkhorn_knopp, swav
from jssl.losses._common import _at_least_f32 as at_least_f32
from jssl.losses._common import l2_normalize
from jssl.losses._contrastive import dcl, moco, mocov3, nearest_neighbour, nnclr, nt_xent
from jssl.losses._mae import mae, patchify, random_masking, unpatchify
from jssl.losses._redundancy import barlow_twins, vicreg, wmse

__all__ = [
    "barlow_twins",
    "byol",
    "dcl",
    "dino",
    "dino_center",
    "dino_teacher_temp",
    "jigsaw",
    "jigsaw_pp",
    "l2_normalize",
    "at_least_f32",
    "mae",
    "patchify",
    "unpatchify",
    "random_masking",
    "moco",
    "mocov3",
    "nearest_neighbour",
    "nnclr",
    "nt_xent",
    "rotation",
    "simsiam",
    "sinkhorn_knopp",
    "swav",
    "vicreg",
    "wmse",
]
