"""VICReg (Bardes, Ponce & LeCun 2022), solo-learn's CIFAR recipe.

python -m jssl.main --config configs/vicreg.py --workdir runs/vicreg             # embedded MNIST
python -m jssl.main --config configs/vicreg.py:smoke --workdir /tmp/vicreg       # seconds
python -m jssl.main --config configs/vicreg.py:cifar10 --workdir runs/vicreg_c10 # paper setting
"""

from jssl import config as jc

# The pretext zoo (jssl.config.zoo, launch/results_table.py): solo-learn's published CIFAR-10
# top-1 (ResNet-18, 1000 epochs) as the reference column.
ZOO = {"reference": 92.07}


PRESETS = (*jc.PRESETS, "imagenet", "imagenette")


def get_config(preset: str = ""):
    c = jc.pretrain_config()
    c.loss.name = "vicreg"
    c.loss.sim_weight = 25.0
    c.loss.var_weight = 25.0
    c.loss.cov_weight = 1.0
    c.loss.eps = 1e-4
    c.loss.variance_reduction = "mean"  # the paper's code; "sum" is solo-learn's
    c.model.projector_hidden_dims = (2048, 2048)
    c.model.projector_dim = 2048
    c.optimizer.name = "lars"
    c.optimizer.lr = 0.3
    c.optimizer.weight_decay = 1e-4
    c.optimizer.trust_coefficient = 0.02

    if preset == "":
        jc.embedded_preset(c, solarize_second_view=0.1)
        c.model.projector_hidden_dims = (512, 512)
        c.model.projector_dim = 512
    elif preset == "smoke":
        jc.smoke_preset(c)
    elif preset == "cifar10":
        jc.cifar10_preset(c)
        jc.solo_cifar_augment(c, "asymmetric", crop_scale=(0.2, 1.0), solarize_prob=0.1)
    elif preset in ("imagenet", "imagenette"):
        # facebookresearch/vicreg (73.2%): batch 2048, 1000 epochs, LARS lr 0.2 x batch /
        # 256, weight decay 1e-6, expander 8192 x 3, coefficients 25 / 25 / 1, BYOL's
        # augmentations.
        jc.resnet50_preset(c, preset, batch_size=2048, epochs=1000)
        jc.imagenet_views(c, "asymmetric")
        c.model.projector_hidden_dims, c.model.projector_dim = (8192, 8192), 8192
        c.optimizer.lr, c.optimizer.weight_decay = 0.2, 1e-6
    else:
        raise jc.unknown_preset("configs/vicreg.py", preset, PRESETS)
    return c
