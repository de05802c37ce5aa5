"""MoCo v2 (Chen et al. 2020, arXiv 2003.04297), solo-learn's mocov2plus CIFAR recipe.

python -m jssl.main --config configs/mocov2.py --workdir runs/mocov2             # embedded MNIST
python -m jssl.main --config configs/mocov2.py:smoke --workdir /tmp/mocov2       # seconds
python -m jssl.main --config configs/mocov2.py:cifar10 --workdir runs/mocov2_c10 # paper setting
"""

from jssl import config as jc

# The pretext zoo (jssl.config.zoo, launch/results_table.py): solo-learn's published CIFAR-10
# top-1 (ResNet-18, 1000 epochs) as the reference column.
ZOO = {"reference": 92.94}


def get_config(preset: str = ""):
    c = jc.pretrain_config()
    c.loss.name = "moco"
    c.loss.temperature = 0.2
    c.loss.normalize = True
    # solo-learn cifar/mocov2plus.yaml: projector 2048 -> 256 (no BN), queue 32768.
    c.model.projector_hidden_dims = (2048,)
    c.model.projector_dim = 256
    c.model.projector_bn = False
    c.queue_size = 32768
    c.ema.base_momentum = 0.99
    c.ema.final_momentum = 0.999
    c.optimizer.name = "sgd"
    c.optimizer.lr = 0.3
    c.optimizer.weight_decay = 1e-4

    if preset == "":
        jc.embedded_preset(c)
        c.model.projector_hidden_dims = (512,)
        c.model.projector_dim = 128
        c.queue_size = 2048
    elif preset == "smoke":
        jc.smoke_preset(c)
        c.queue_size = 128
    elif preset == "cifar10":
        jc.cifar10_preset(c)
        c.optimizer.exclude_bias_and_norm = False  # solo-learn's SGD decays every parameter
        jc.solo_cifar_augment(c, "symmetric_weak")
    else:
        raise jc.unknown_preset("configs/mocov2.py", preset)
    return c
