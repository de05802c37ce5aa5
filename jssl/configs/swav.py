"""SwAV (Caron et al. 2020), solo-learn's CIFAR recipe.

python -m jssl.main --config configs/swav.py --workdir runs/swav             # embedded MNIST
python -m jssl.main --config configs/swav.py:smoke --workdir /tmp/swav       # seconds
python -m jssl.main --config configs/swav.py:cifar10 --workdir runs/swav_c10 # paper setting
"""

from jssl import config as jc

# The pretext zoo (jssl.config.zoo, launch/results_table.py): solo-learn's published CIFAR-10
# top-1 (ResNet-18, 1000 epochs) as the reference column.
ZOO = {"reference": 89.17}


PRESETS = (*jc.PRESETS, "imagenet", "imagenette")


def get_config(preset: str = ""):
    c = jc.pretrain_config()
    c.loss.name = "swav"
    c.loss.temperature = 0.1
    c.loss.sinkhorn_iters = 3
    c.loss.epsilon = 0.05
    c.loss.num_large_crops = 2
    # solo-learn cifar/swav.yaml: projector 2048 -> 128, 3000 prototypes.
    c.model.projector_hidden_dims = (2048,)
    c.model.projector_dim = 128
    c.model.num_prototypes = 3000
    c.optimizer.name = "lars"
    c.optimizer.lr = 0.6
    c.optimizer.weight_decay = 1e-6
    c.optimizer.trust_coefficient = 0.02

    if preset == "":
        jc.embedded_preset(c)
        c.model.projector_hidden_dims = (512,)
        c.model.projector_dim = 64
        c.model.num_prototypes = 100
        c.model.freeze_prototypes_steps = 25
    elif preset == "smoke":
        jc.smoke_preset(c)
        c.model.num_prototypes = 20
        c.augment.num_small_crops = 2  # exercises multi-crop
        c.augment.small_view = jc.view_config(
            **{**c.augment.view1.to_dict(), "crop_size": 8, "crop_scale": (0.05, 0.3)}
        )
    elif preset == "cifar10":
        jc.cifar10_preset(c)
        jc.solo_cifar_augment(c, "symmetric")
        c.model.freeze_prototypes_steps = 2 * (50000 // 256)  # 2 epochs
    elif preset in ("imagenet", "imagenette"):
        # facebookresearch/swav scripts/swav_800ep_pretrain.sh (75.3%): batch 4096, 800
        # epochs, LARS (LARC) lr 4.8 at 4096 (0.3 x batch / 256 here), weight decay 1e-6 on
        # every parameter, multi-crop 2 x 224 (scale 0.14-1) + 6 x 96 (0.05-0.14), jitter
        # strength 1.0 and blur 0.5 in every crop, 3000 prototypes frozen for the first
        # epoch (313 steps at 4096), no queue.
        steps = jc.resnet50_preset(c, preset, batch_size=4096, epochs=800)
        jc.imagenet_views(c, "simclr", crop_scale=(0.14, 1.0), num_small=6)
        c.optimizer.lr = 0.3
        c.optimizer.exclude_bias_and_norm = False
        c.model.freeze_prototypes_steps = steps
    else:
        raise jc.unknown_preset("configs/swav.py", preset, PRESETS)
    return c
