"""Supervised contrastive learning, SupCon (Khosla et al. 2020): NT-Xent with all same-label
samples as positives (uses the data set's labels), solo-learn's CIFAR recipe.

  python -m jssl.main --config configs/supcon.py --workdir runs/supcon             # embedded MNIST
  python -m jssl.main --config configs/supcon.py:smoke --workdir /tmp/supcon       # seconds
  python -m jssl.main --config configs/supcon.py:cifar10 --workdir runs/supcon_c10 # paper setting
"""

from jssl import config as jc

# The pretext zoo (jssl.config.zoo, launch/results_table.py): solo-learn's published CIFAR-10
# top-1 (ResNet-18, 1000 epochs) as the reference column.
ZOO = {"reference": 93.82, "note": "uses the labels"}


def get_config(preset: str = ""):
    c = jc.pretrain_config()
    c.loss.name = "supcon"
    c.loss.temperature = 0.2
    c.model.projector_hidden_dims = (2048,)
    c.model.projector_dim = 256
    c.model.projector_bn = False
    c.optimizer.name = "sgd"  # solo-learn cifar/supcon.yaml
    c.optimizer.lr = 0.4
    c.optimizer.weight_decay = 1e-5

    if preset == "":
        jc.embedded_preset(c)
        c.model.projector_hidden_dims = (512,)
        c.model.projector_dim = 128
    elif preset == "smoke":
        jc.smoke_preset(c)
    elif preset == "cifar10":
        jc.cifar10_preset(c)
        c.optimizer.exclude_bias_and_norm = False  # solo-learn's SGD decays every parameter
        jc.solo_cifar_augment(c, "symmetric")
    else:
        raise jc.unknown_preset("configs/supcon.py", preset)
    return c
