"""MoCo v3 (Chen, Xie & He 2021), solo-learn's CIFAR recipe.

python -m jssl.main --config configs/mocov3.py --workdir runs/mocov3             # embedded MNIST
python -m jssl.main --config configs/mocov3.py:smoke --workdir /tmp/mocov3       # seconds
python -m jssl.main --config configs/mocov3.py:cifar10 --workdir runs/mocov3_c10 # paper setting
"""

from jssl import config as jc

# The pretext zoo (jssl.config.zoo, launch/results_table.py): solo-learn's published CIFAR-10
# top-1 (ResNet-18, 1000 epochs) as the reference column.
ZOO = {"reference": 93.1}


def get_config(preset: str = ""):
    c = jc.base_config()
    c.method = "pretrain"
    c.loss.name = "mocov3"
    c.loss.temperature = 0.2
    # solo-learn cifar/mocov3.yaml: projector 4096 -> 256, predictor 4096 -> 256.
    c.model.projector_hidden_dims = (4096,)
    c.model.projector_dim = 256
    c.model.projector_last_bn = True
    c.model.predictor_hidden_dims = (4096,)
    c.model.predictor_dim = 256
    c.ema.base_momentum = 0.99
    c.ema.final_momentum = 1.0
    c.optimizer.name = "lars"
    c.optimizer.lr = 0.3
    c.optimizer.weight_decay = 1e-6
    c.optimizer.trust_coefficient = 0.02

    if preset == "":
        jc.embedded_preset(c)
        c.model.projector_hidden_dims = c.model.predictor_hidden_dims = (512,)
        c.model.projector_dim = c.model.predictor_dim = 128
    elif preset == "smoke":
        jc.smoke_preset(c)
        c.model.predictor_hidden_dims = (32,)
        c.model.predictor_dim = 16
    elif preset == "cifar10":
        jc.cifar10_preset(c)
        jc.solo_cifar_augment(c, "asymmetric")
    else:
        raise jc.unknown_preset("configs/mocov3.py", preset)
    return c
