"""Barlow Twins (Zbontar et al. 2021), solo-learn's CIFAR recipe.

python -m jssl.main --config configs/barlow_twins.py --workdir runs/barlow          # embedded MNIST
python -m jssl.main --config configs/barlow_twins.py:smoke --workdir /tmp/bt       # seconds
python -m jssl.main --config configs/barlow_twins.py:cifar10 --workdir runs/bt_c10 # paper setting
python -m jssl.main --config configs/barlow_twins.py:mnistm --workdir runs/bt_mnistm # harder set
"""

from jssl import config as jc

# The pretext zoo (jssl.config.zoo, launch/results_table.py): solo-learn's published CIFAR-10
# top-1 (ResNet-18, 1000 epochs) as the reference column.
ZOO = {"reference": 92.1}
PRESETS = ("smoke", "cifar10", "mnistm", "imagenet", "imagenette")


def get_config(preset: str = ""):
    c = jc.pretrain_config()
    c.loss.name = "barlow_twins"
    c.loss.lambd = 0.0051  # solo-learn cifar/barlow.yaml (the paper: 0.0051)
    c.loss.scale = 0.1  # solo-learn's scale_loss for CIFAR
    c.loss.unbiased = False
    c.loss.eps = 1e-5
    c.model.projector_hidden_dims = (2048, 2048)
    c.model.projector_dim = 2048
    c.model.projector_bn = True
    c.optimizer.name = "lars"
    c.optimizer.lr = 0.3
    c.optimizer.weight_decay = 1e-4
    c.optimizer.trust_coefficient = 0.02

    if preset in ("", "mnistm"):
        jc.embedded_preset(c, solarize_second_view=0.2)
        c.model.projector_hidden_dims = (512, 512)
        c.model.projector_dim = 512
        if preset == "mnistm":  # the default on the colour digits (README "Data")
            jc.mnistm_preset(c)
    elif preset == "smoke":
        jc.smoke_preset(c)
    elif preset == "cifar10":
        jc.cifar10_preset(c)
        jc.solo_cifar_augment(c, "asymmetric")
    elif preset in ("imagenet", "imagenette"):
        # solo-learn imagenet/barlow.yaml (67.18% online linear, 100 epochs): batch 256, LARS
        # lr 0.8 x batch / 256, weight decay 1.5e-6, projector 4096 x 3, lambda 0.0051, loss
        # scale 0.048, BYOL's augmentations.
        jc.resnet50_preset(c, preset, batch_size=256, epochs=100)
        jc.imagenet_views(c, "asymmetric")
        c.loss.scale = 0.048
        c.model.projector_hidden_dims, c.model.projector_dim = (4096, 4096), 4096
        c.optimizer.lr, c.optimizer.weight_decay = 0.8, 1.5e-6
    else:
        raise jc.unknown_preset("configs/barlow_twins.py", preset, PRESETS)
    return c
