"""BYOL (Grill et al. 2020), solo-learn's CIFAR recipe.

python -m jssl.main --config configs/byol.py --workdir runs/byol             # embedded MNIST
python -m jssl.main --config configs/byol.py:smoke --workdir /tmp/byol       # seconds
python -m jssl.main --config configs/byol.py:cifar10 --workdir runs/byol_c10 # paper setting
"""

from jssl import config as jc

# The pretext zoo (jssl.config.zoo, launch/results_table.py): solo-learn's published CIFAR-10
# top-1 (ResNet-18, 1000 epochs) as the reference column.
ZOO = {"reference": 92.58}


PRESETS = (*jc.PRESETS, "imagenet", "imagenette")


def get_config(preset: str = ""):
    c = jc.pretrain_config()
    c.loss.name = "byol"
    # solo-learn cifar/byol.yaml: projector 4096 -> 256, predictor 4096 -> 256.
    c.model.projector_hidden_dims = (4096,)
    c.model.projector_dim = 256
    c.model.predictor_hidden_dims = (4096,)
    c.model.predictor_dim = 256
    c.ema.base_momentum = 0.99
    c.ema.final_momentum = 1.0
    c.optimizer.name = "lars"
    c.optimizer.lr = 1.0
    c.optimizer.weight_decay = 1e-5
    c.optimizer.trust_coefficient = 0.02

    if preset == "":
        jc.embedded_preset(c, solarize_second_view=0.2)
        c.model.projector_hidden_dims = c.model.predictor_hidden_dims = (512,)
        c.model.projector_dim = c.model.predictor_dim = 128
    elif preset == "smoke":
        jc.smoke_preset(c)
        c.model.predictor_hidden_dims = (32,)
        c.model.predictor_dim = 16
    elif preset == "cifar10":
        jc.cifar10_preset(c)
        jc.solo_cifar_augment(c, "asymmetric")
    elif preset in ("imagenet", "imagenette"):
        # solo-learn imagenet/byol.yaml (68.63% online linear, 100 epochs): batch 2048, LARS
        # lr 0.45 x batch / 256, weight decay 1e-6, tau 0.99 -> 1, BYOL's augmentations.
        jc.resnet50_preset(c, preset, batch_size=2048, epochs=100)
        jc.imagenet_views(c, "asymmetric")
        c.optimizer.lr, c.optimizer.weight_decay = 0.45, 1e-6
    else:
        raise jc.unknown_preset("configs/byol.py", preset, PRESETS)
    return c
