"""NNCLR (Dwibedi et al. 2021, arXiv 2104.14548), solo-learn's CIFAR recipe: each view's
positive is its nearest neighbour in a support queue of earlier projections.

  python -m jssl.main --config configs/nnclr.py --workdir runs/nnclr             # embedded MNIST
  python -m jssl.main --config configs/nnclr.py:smoke --workdir /tmp/nnclr       # seconds
  python -m jssl.main --config configs/nnclr.py:cifar10 --workdir runs/nnclr_c10 # paper setting
"""

from jssl import config as jc

# The pretext zoo (jssl.config.zoo, launch/results_table.py): solo-learn's published CIFAR-10
# top-1 (ResNet-18, 1000 epochs) as the reference column.
ZOO = {"reference": 91.88}


def get_config(preset: str = ""):
    c = jc.pretrain_config()
    c.loss.name = "nnclr"
    c.loss.temperature = 0.2  # solo-learn cifar/nnclr.yaml (the paper: 0.1)
    # solo-learn's NNCLR: projector 2048-2048-256 with BN after every layer (its last BN is
    # affine; jssl's last_bn is affine-free), predictor 4096 -> 256, support queue 65536.
    c.model.projector_hidden_dims = (2048, 2048)
    c.model.projector_dim = 256
    c.model.projector_last_bn = True
    c.model.predictor_hidden_dims = (4096,)
    c.model.predictor_dim = 256
    c.queue_size = 65536
    c.optimizer.name = "lars"
    c.optimizer.lr = 0.4
    c.optimizer.weight_decay = 1e-5
    c.optimizer.trust_coefficient = 0.02

    if preset == "":
        jc.embedded_preset(c, solarize_second_view=0.2)
        c.model.projector_hidden_dims = (512, 512)
        c.model.projector_dim = c.model.predictor_dim = 128
        c.model.predictor_hidden_dims = (512,)
        c.queue_size = 1024  # 16 steps of 64; the 4,000 training images fill it 4 times
    elif preset == "smoke":
        jc.smoke_preset(c)
        c.model.predictor_hidden_dims = (32,)
        c.model.predictor_dim = 16
        c.queue_size = 64
    elif preset == "cifar10":
        jc.cifar10_preset(c)
        jc.solo_cifar_augment(c, "asymmetric")
    else:
        raise jc.unknown_preset("configs/nnclr.py", preset)
    return c
