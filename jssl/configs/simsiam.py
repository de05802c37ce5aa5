"""SimSiam (Chen & He 2021), solo-learn's CIFAR recipe.

python -m jssl.main --config configs/simsiam.py --workdir runs/simsiam             # embedded MNIST
python -m jssl.main --config configs/simsiam.py:smoke --workdir /tmp/simsiam       # seconds
python -m jssl.main --config configs/simsiam.py:cifar10 --workdir runs/simsiam_c10 # paper setting
"""

from jssl import config as jc

# The pretext zoo (jssl.config.zoo, launch/results_table.py): solo-learn's published CIFAR-10
# top-1 (ResNet-18, 1000 epochs) as the reference column.
ZOO = {"reference": 90.51}


def get_config(preset: str = ""):
    c = jc.pretrain_config()
    c.loss.name = "simsiam"
    # solo-learn cifar/simsiam.yaml: projector 2048 -> 2048 with a final BN, predictor 512.
    c.model.projector_hidden_dims = (2048, 2048)
    c.model.projector_dim = 2048
    c.model.projector_last_bn = True
    c.model.predictor_hidden_dims = (512,)
    c.model.predictor_dim = 2048
    c.optimizer.name = "sgd"
    c.optimizer.lr = 0.5
    c.optimizer.weight_decay = 1e-5

    if preset == "":
        jc.embedded_preset(c)
        c.model.projector_hidden_dims = (512, 512)
        c.model.projector_dim = c.model.predictor_dim = 512
        c.model.predictor_hidden_dims = (128,)
    elif preset == "smoke":
        jc.smoke_preset(c)
        c.model.predictor_hidden_dims = (8,)
        c.model.predictor_dim = 16
    elif preset == "cifar10":
        jc.cifar10_preset(c)
        c.optimizer.exclude_bias_and_norm = False  # solo-learn's SGD decays every parameter
        jc.solo_cifar_augment(c, "symmetric_weak")
    else:
        raise jc.unknown_preset("configs/simsiam.py", preset)
    return c
