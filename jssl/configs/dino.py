"""DINO (Caron et al. 2021), solo-learn's CIFAR recipe.

python -m jssl.main --config configs/dino.py --workdir runs/dino             # embedded MNIST
python -m jssl.main --config configs/dino.py:smoke --workdir /tmp/dino       # seconds
python -m jssl.main --config configs/dino.py:cifar10 --workdir runs/dino_c10 # paper setting
"""

from jssl import config as jc

# The pretext zoo (jssl.config.zoo, launch/results_table.py): solo-learn's published CIFAR-10
# top-1 (ResNet-18, 1000 epochs) as the reference column.
ZOO = {"reference": 89.52}


def get_config(preset: str = ""):
    c = jc.base_config()
    c.method = "pretrain"
    c.loss.name = "dino"
    c.loss.student_temp = 0.1
    c.loss.teacher_temp = 0.04
    c.loss.center_momentum = 0.9
    # DINO head: 3-layer GELU MLP (2048) to a 256-d bottleneck, L2-normalised, then a
    # weight-normalised linear layer to 4096 prototypes (solo-learn cifar/dino.yaml).
    c.model.projector_hidden_dims = (2048, 2048)
    c.model.projector_dim = 256
    c.model.projector_bn = False
    c.model.projector_activation = "gelu"
    c.model.num_prototypes = 4096
    c.model.normalize_prototypes = True
    c.ema.base_momentum = 0.9995
    c.ema.final_momentum = 1.0
    c.optimizer.name = "lars"
    c.optimizer.lr = 0.3
    c.optimizer.weight_decay = 1e-6
    c.optimizer.trust_coefficient = 0.02

    if preset == "":
        jc.embedded_preset(c)
        c.model.projector_hidden_dims = (512, 512)
        c.model.projector_dim = 128
        c.model.num_prototypes = 1024
        c.ema.base_momentum = 0.99  # 500 steps: a slower teacher would barely move
    elif preset == "smoke":
        jc.smoke_preset(c)
        c.model.num_prototypes = 32
        c.ema.base_momentum = 0.99
        c.augment.num_small_crops = 2  # exercises multi-crop
        c.augment.small_view = jc.view_config(
            **{**c.augment.view1.to_dict(), "crop_size": 8, "crop_scale": (0.05, 0.3)}
        )
    elif preset == "cifar10":
        jc.cifar10_preset(c)
        jc.solo_cifar_augment(c, "asymmetric")
        # solo-learn's warm-up teacher epochs default to 0: the teacher runs at 0.07 all
        # along; its last layer is frozen for the first epoch (freeze_last_layer 1).
        c.loss.teacher_temp = 0.07
        c.model.freeze_prototypes_steps = 50000 // 256
    else:
        raise jc.unknown_preset("configs/dino.py", preset)
    return c
