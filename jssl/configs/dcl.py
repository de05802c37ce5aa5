"""Decoupled contrastive learning, DCL (Yeh et al. 2022); DCLW with --config.loss.sigma=0.5.

solo-learn has no DCL: the cifar10 preset is SimCLR's solo-learn recipe with the DCL loss
(the DCL paper's setting is SimCLR's with the positive term decoupled).

  python -m jssl.main --config configs/dcl.py --workdir runs/dcl             # embedded MNIST
  python -m jssl.main --config configs/dcl.py:smoke --workdir /tmp/dcl       # seconds
  python -m jssl.main --config configs/dcl.py:cifar10 --workdir runs/dcl_c10 # paper setting
"""

from ml_collections import config_dict

from jssl import config as jc

# The pretext zoo (jssl.config.zoo, launch/results_table.py); solo-learn publishes no
# CIFAR-10 number for it.
ZOO = {}


def get_config(preset: str = ""):
    c = jc.pretrain_config()
    c.loss.name = "dcl"
    c.loss.temperature = 0.1
    c.loss.sigma = config_dict.placeholder(float)  # None: DCL; a value: DCLW's vMF weighting
    c.model.projector_hidden_dims = (2048,)
    c.model.projector_dim = 256
    c.model.projector_bn = False
    c.optimizer.name = "lars"
    c.optimizer.lr = 0.4
    c.optimizer.weight_decay = 1e-4
    c.optimizer.trust_coefficient = 0.02

    if preset == "":
        jc.embedded_preset(c)
        c.model.projector_hidden_dims = (512,)
        c.model.projector_dim = 128
    elif preset == "smoke":
        jc.smoke_preset(c)
    elif preset == "cifar10":
        jc.cifar10_preset(c)
        jc.solo_cifar_augment(c, "symmetric")
    else:
        raise jc.unknown_preset("configs/dcl.py", preset)
    return c
