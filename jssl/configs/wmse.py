"""W-MSE (Ermolov et al. 2021), solo-learn's CIFAR recipe.

python -m jssl.main --config configs/wmse.py --workdir runs/wmse             # embedded MNIST
python -m jssl.main --config configs/wmse.py:smoke --workdir /tmp/wmse       # seconds
python -m jssl.main --config configs/wmse.py:cifar10 --workdir runs/wmse_c10 # paper setting
"""

from jssl import config as jc

# The pretext zoo (jssl.config.zoo, launch/results_table.py): solo-learn's published CIFAR-10
# top-1 (ResNet-18, 1000 epochs) as the reference column.
ZOO = {"reference": 88.67}


def get_config(preset: str = ""):
    c = jc.pretrain_config()
    c.loss.name = "wmse"
    c.loss.eps = 0.0
    # solo-learn cifar/wmse.yaml: projector 1024 -> 64 (W-MSE whitens a low-dimensional z).
    c.model.projector_hidden_dims = (1024,)
    c.model.projector_dim = 64
    c.optimizer.name = "adamw"  # solo-learn: Adam with L2 1e-6 (AdamW here: decoupled)
    c.optimizer.lr = 2e-3
    c.optimizer.scale_lr_with_batch = False
    c.optimizer.weight_decay = 1e-6

    if preset == "":
        jc.embedded_preset(c)
        c.model.projector_hidden_dims = (512,)
        c.model.projector_dim = 32
    elif preset == "smoke":
        jc.smoke_preset(c)
        c.model.projector_dim = 8
    elif preset == "cifar10":
        jc.cifar10_preset(c)
        jc.solo_cifar_augment(c, "symmetric", crop_scale=(0.2, 1.0), blur_prob=0.0)
    else:
        raise jc.unknown_preset("configs/wmse.py", preset)
    return c
