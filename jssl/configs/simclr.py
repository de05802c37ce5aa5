"""SimCLR (Chen et al. 2020), solo-learn's CIFAR recipe.

python -m jssl.main --config configs/simclr.py --workdir runs/simclr            # embedded MNIST
python -m jssl.main --config configs/simclr.py:smoke --workdir /tmp/simclr      # seconds
python -m jssl.main --config configs/simclr.py:cifar10 --workdir runs/simclr_c10
"""

from jssl import config as jc

# The pretext zoo (jssl.config.zoo, launch/results_table.py): solo-learn's published CIFAR-10
# top-1 (ResNet-18, 1000 epochs) as the reference column.
ZOO = {"reference": 90.74}


PRESETS = (*jc.PRESETS, "imagenet", "imagenette")


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
    elif preset in ("imagenet", "imagenette"):
        # google-research/simclr v1 (README's ImageNet command): batch 4096, 100 epochs,
        # LARS lr 0.3 x batch / 256, weight decay 1e-6, T = 0.1, projector 2048 -> 128 with
        # BatchNorm (its output BN affine-free here), jitter strength 1.0, blur 0.5.
        jc.resnet50_preset(c, preset, batch_size=4096, epochs=100)
        jc.imagenet_views(c, "simclr")
        c.loss.temperature = 0.1
        c.model.projector_hidden_dims, c.model.projector_dim = (2048,), 128
        c.model.projector_bn = c.model.projector_last_bn = True
        c.optimizer.lr, c.optimizer.weight_decay = 0.3, 1e-6
    else:
        raise jc.unknown_preset("configs/simclr.py", preset, PRESETS)
    return c
