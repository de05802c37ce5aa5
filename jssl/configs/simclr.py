"""SimCLR (Chen et al. 2020), solo-learn's CIFAR recipe.

python -m jssl.main --config configs/simclr.py --workdir runs/simclr            # embedded MNIST
python -m jssl.main --config configs/simclr.py:smoke --workdir /tmp/simclr      # seconds
python -m jssl.main --config configs/simclr.py:cifar10 --workdir runs/simclr_c10
"""

from jssl import config as jc

# The pretext zoo (jssl.config.zoo, launch/results_table.py): solo-learn's published CIFAR-10
# top-1 (ResNet-18, 1000 epochs) as the reference column.
ZOO = {"reference": 90.74}


def get_config(preset: str = ""):
    c = jc.pretrain_config()
    c.loss.name = "nt_xent"
    c.loss.temperature = 0.2  # solo-learn cifar/simclr.yaml
    # solo-learn's SimCLR projector: Linear-ReLU-Linear, no BatchNorm.
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
        raise jc.unknown_preset("configs/simclr.py", preset)
    return c
